"""A small SPL evaluator for the splunkd emulator: it runs the searches, it does not look them up.

Supported: the search command (field=value with wildcards and backslash escapes, != < > <= >=,
IN, NOT, OR binding tighter than the implicit AND, parentheses, bare terms, earliest/latest;
`index=*` leaves out internal `_` indexes as splunkd does), macros, and the commands where (simple
comparisons), head, sort, fields, table, stats (count/dc/values/min/max/sum ... by), dedup, rename,
reverse, fillnull, regex, makeresults, plus whatever extra commands the emulator registers (the
`notable` macro's incident-review overlay). Anything else is "Unknown search command", as splunkd says.

Search modes, as REST jobs have them: in fast mode (the REST default) events carry only Splunk's
default fields and the fields the search itself names (in any command, or as `rf` required fields);
`| fields *` / `| table *`, smart mode on an event search, and verbose mode return every field.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

Row = dict[str, Any]
Command = Callable[[list[Row], str], list[Row]]


class SplError(Exception):
    """A search splunkd would reject at parse time (HTTP 400 with this message)."""


@dataclass
class SplResult:
    rows: list[Row]
    transforming: bool
    event_count: int


# -- time -------------------------------------------------------------------------------------
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time_arg(value: str | None, now: float) -> float | None:
    """earliest/latest as splunkd takes them: epoch, ISO-8601, `now`, or relative like -24h."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if text == "now":
        return now
    if text in ("0", "-0"):
        return 0.0
    match = re.fullmatch(r"([+-])(\d+)(s|sec|m|min|h|d|w)", text)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        return now + sign * int(match.group(2)) * _UNITS[match.group(3)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SplError(f"Invalid time value '{text}'.") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def render_time(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+00:00"


# -- tokens -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tok:
    kind: str  # word | str | op | lp | rp | comma
    text: str
    quoted: bool = False


_OPS = ("!=", "<=", ">=", "=", "<", ">")


def tokenize(text: str) -> list[Tok]:
    toks: list[Tok] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "(":
            toks.append(Tok("lp", ch))
            i += 1
        elif ch == ")":
            toks.append(Tok("rp", ch))
            i += 1
        elif ch == ",":
            toks.append(Tok("comma", ch))
            i += 1
        elif ch == '"':
            j = i + 1
            buf = []
            while j < len(text) and text[j] != '"':
                if text[j] == "\\" and j + 1 < len(text):
                    buf.append(text[j : j + 2])
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            if j >= len(text):
                raise SplError("Unbalanced quotes.")
            toks.append(Tok("str", "".join(buf), quoted=True))
            i = j + 1
        elif any(text.startswith(op, i) for op in _OPS):
            op = next(op for op in _OPS if text.startswith(op, i))
            toks.append(Tok("op", op))
            i += len(op)
        elif ch == "[":
            raise SplError("Subsearches are not supported by this emulator.")
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in '()",=<>!':
                if text[j] == "\\" and j + 1 < len(text):
                    j += 2
                    continue
                j += 1
            if j == i:
                raise SplError(f"Unexpected character '{ch}'.")
            toks.append(Tok("word", text[i:j]))
            i = j
    return toks


@functools.lru_cache(maxsize=4096)
def pattern(raw: str) -> re.Pattern[str]:
    """A Splunk value pattern: unescaped * is a wildcard; \\\\ \\" \\* are literal; case-insensitive."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw) and raw[i + 1] in '\\"*':
            out.append(re.escape(raw[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "*" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def field_values(row: Row, name: str) -> list[Any]:
    value = row.get(name)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list) else [value]


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def compare(left: Any, op: str, right: str) -> bool:
    a, b = _number(left), _number(right)
    if a is None or b is None:
        a, b = _as_text(left), right  # type: ignore[assignment]
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]  # type: ignore[operator]


# -- search expressions -----------------------------------------------------------------------
Pred = Callable[[Row], bool]


@dataclass
class SearchExpr:
    pred: Pred
    earliest: str | None = None
    latest: str | None = None


class _SearchParser:
    """NOT > OR > implicit AND, as in the search command."""

    def __init__(self, toks: list[Tok]) -> None:
        self.toks = toks
        self.pos = 0
        self.earliest: str | None = None
        self.latest: str | None = None

    def peek(self, offset: int = 0) -> Tok | None:
        index = self.pos + offset
        return self.toks[index] if index < len(self.toks) else None

    def take(self) -> Tok:
        tok = self.peek()
        if tok is None:
            raise SplError("Unexpected end of search.")
        self.pos += 1
        return tok

    def is_kw(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "word" and tok.text == word

    def parse(self) -> SearchExpr:
        pred = self.and_expr()
        if self.peek() is not None:
            raise SplError(f"Unexpected '{self.peek().text}' in search.")  # type: ignore[union-attr]
        return SearchExpr(pred, self.earliest, self.latest)

    def and_expr(self) -> Pred:
        parts: list[Pred] = []
        while self.peek() is not None and self.peek().kind != "rp":  # type: ignore[union-attr]
            if self.is_kw("AND"):
                self.take()
                continue
            parts.append(self.or_expr())
        if not parts:
            return lambda row: True
        return _tagged(lambda row: all(p(row) for p in parts), parts=parts)

    def or_expr(self) -> Pred:
        parts = [self.not_expr()]
        while self.is_kw("OR"):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else _tagged(lambda row: any(p(row) for p in parts), alternatives=parts)

    def not_expr(self) -> Pred:
        if self.is_kw("NOT"):
            self.take()
            inner = self.not_expr()
            return lambda row: not inner(row)
        return self.primary()

    def primary(self) -> Pred:
        tok = self.take()
        if tok.kind == "lp":
            inner = self.and_expr()
            if self.take().kind != "rp":
                raise SplError("Mismatched parentheses.")
            return inner
        nxt = self.peek()
        if tok.kind == "word" and nxt is not None and nxt.kind == "op":
            self.take()
            value = self.take()
            if value.kind not in ("word", "str"):
                raise SplError(f"Expected a value after '{tok.text}{nxt.text}'.")
            return self.comparison(tok.text, nxt.text, value.text)
        if tok.kind == "word" and nxt is not None and nxt.kind == "word" and nxt.text == "IN":
            self.take()
            if self.take().kind != "lp":
                raise SplError("IN must be followed by a parenthesised list.")
            items: list[str] = []
            while True:
                item = self.take()
                if item.kind == "rp":
                    break
                if item.kind == "comma":
                    continue
                items.append(item.text)
            pats = [pattern(item) for item in items]
            name = tok.text
            return _tagged(lambda row: any(p.fullmatch(_as_text(v)) for v in field_values(row, name) for p in pats),
                           match=(name, pats))
        if tok.kind in ("word", "str"):
            term = pattern(tok.text)
            return lambda row: _term_match(row, term)
        raise SplError(f"Unexpected '{tok.text}' in search.")

    def comparison(self, name: str, op: str, raw: str) -> Pred:
        if name in ("earliest", "latest") and op == "=":
            setattr(self, name, raw)
            return lambda row: True
        if op in ("=", "!="):
            pat = pattern(raw)
            if op == "=" and name == "index" and raw.startswith("*"):
                # `index=*` covers the event indexes, not internal ones (_internal, _audit...)
                return lambda row: any(pat.fullmatch(_as_text(v)) and not _as_text(v).startswith("_")
                                       for v in field_values(row, name))
            if op == "=":
                return _tagged(lambda row: any(pat.fullmatch(_as_text(v)) for v in field_values(row, name)),
                               match=(name, [pat]))
            return lambda row: bool(field_values(row, name)) and not any(pat.fullmatch(_as_text(v)) for v in field_values(row, name))
        return lambda row: any(compare(v, op, raw) for v in field_values(row, name))


def _tagged(pred: Pred, **tags: Any) -> Pred:
    """A predicate that also says what it is (an AND's parts, a field's patterns), so the engine can
    narrow the events through its field indexes before testing each one."""
    for key, value in tags.items():
        setattr(pred, key, value)
    return pred


def _term_match(row: Row, term: re.Pattern[str]) -> bool:
    haystack = row.get("_raw")
    if haystack is None:
        haystack = " ".join(_as_text(v) for key, value in row.items() for v in (value if isinstance(value, list) else [value]))
    return term.search(str(haystack)) is not None


def parse_search(text: str) -> SearchExpr:
    return _SearchParser(tokenize(text)).parse()


# -- where (eval-style comparisons, case-sensitive) ---------------------------------------------
def parse_where(text: str) -> Pred:
    toks = tokenize(text)
    pos = 0

    def peek() -> Tok | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> Tok:
        nonlocal pos
        if pos >= len(toks):
            raise SplError("Error in 'where' command: unexpected end.")
        pos += 1
        return toks[pos - 1]

    def chain(operand: Callable[[], Pred], keyword: str) -> Pred:
        """operand (keyword operand)*, left to right: eval's AND binds tighter than OR."""
        parts = [operand()]
        while peek() is not None and peek().text == keyword:  # type: ignore[union-attr]
            take()
            parts.append(operand())
        if len(parts) == 1:
            return parts[0]
        return lambda row: any(p(row) for p in parts) if keyword == "OR" else all(p(row) for p in parts)

    def expr() -> Pred:
        return chain(term, "OR")

    def term() -> Pred:
        return chain(factor, "AND")

    def factor() -> Pred:
        tok = take()
        if tok.text == "NOT":
            inner = factor()
            return lambda row: not inner(row)
        if tok.kind == "lp":
            inner = expr()
            take()
            return inner
        if tok.kind == "word" and tok.text in ("isnull", "isnotnull"):
            take()
            name = take().text
            take()
            present = tok.text == "isnotnull"
            return lambda row: bool(field_values(row, name)) == present
        op = take()
        value = take()
        name = tok.text
        literal = value.text if value.kind == "str" else value.text
        if op.text in ("=", "=="):
            return lambda row: any(_as_text(v) == literal for v in field_values(row, name))
        if op.text == "!=":
            return lambda row: bool(field_values(row, name)) and all(_as_text(v) != literal for v in field_values(row, name))
        return lambda row: any(compare(v, op.text, literal) for v in field_values(row, name))

    pred = expr()
    if peek() is not None:
        raise SplError(f"Error in 'where' command: unexpected '{peek().text}'.")  # type: ignore[union-attr]
    return pred


# -- commands ---------------------------------------------------------------------------------
def _names(args: str) -> list[str]:
    return [name for name in re.split(r"[\s,]+", args.strip()) if name]


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, list):
        value = value[0] if value else None
    number = _number(value)
    if number is not None:
        return (0, number)
    return (1, "" if value is None else str(value).lower())


def cmd_head(rows: list[Row], args: str) -> list[Row]:
    match = re.fullmatch(r"\s*(?:limit=)?(\d+)?\s*", args)
    if not match:
        raise SplError(f"Error in 'head' command: invalid argument '{args.strip()}'.")
    return rows[: int(match.group(1) or 10)]


def cmd_sort(rows: list[Row], args: str) -> list[Row]:
    words = _names(args)
    limit = 10_000
    if words and words[0].isdigit():
        limit = int(words.pop(0)) or len(rows)
    keys: list[tuple[str, bool]] = []
    pending_sign = ""
    for word in words:
        if word in ("+", "-"):
            pending_sign = word
            continue
        sign = pending_sign or ("-" if word.startswith("-") else "+")
        keys.append((word.lstrip("+-"), sign == "-"))
        pending_sign = ""
    ordered = list(rows)
    for name, descending in reversed(keys):
        ordered.sort(key=lambda row: _sort_key(row.get(name)), reverse=descending)
    return ordered[:limit]


def _keeps(names: list[str]) -> Callable[[str], bool]:
    exact = {name for name in names if "*" not in name}
    patterns = [pattern(name) for name in names if "*" in name]
    return lambda key: key in exact or any(p.fullmatch(key) for p in patterns)


def cmd_fields(rows: list[Row], args: str) -> list[Row]:
    """`fields a, b*` keeps those and the internal `_` fields; `fields - a` removes (even internal ones)."""
    text = args.strip()
    remove = text.startswith("-")
    listed = _keeps(_names(text.lstrip("+-")))
    if remove:
        return [{k: v for k, v in row.items() if not listed(k)} for row in rows]
    return [{k: v for k, v in row.items() if listed(k) or k.startswith("_")} for row in rows]


def cmd_fillnull(rows: list[Row], args: str) -> list[Row]:
    match = re.match(r'\s*value=(?:"((?:[^"\\]|\\.)*)"|(\S+))', args)
    value = (match.group(1) if match.group(1) is not None else match.group(2)) if match else "0"
    names = _names(args[match.end():] if match else args)
    if not names:
        names = list(dict.fromkeys(k for row in rows for k in row if not k.startswith("_")))
    return [{**row, **{n: value for n in names if not field_values(row, n)}} for row in rows]


def cmd_regex(rows: list[Row], args: str) -> list[Row]:
    match = re.fullmatch(r'\s*(?:(\w[\w.]*)\s*(!?=)\s*)?"((?:[^"\\]|\\.)*)"\s*', args)
    if not match:
        raise SplError("Error in 'regex' command: expected field=\"regex\".")
    name, op, expression = match.group(1) or "_raw", match.group(2) or "=", match.group(3).replace('\\"', '"')
    try:
        compiled = re.compile(expression)
    except re.error as exc:
        raise SplError(f"Error in 'regex' command: {exc}.") from None
    keep = op == "="
    return [row for row in rows
            if any(compiled.search(_as_text(v)) for v in field_values(row, name)) == keep]


def cmd_table(rows: list[Row], args: str) -> list[Row]:
    names = _names(args)
    if any("*" in name for name in names):
        keep = _keeps(names)
        return [{k: v for k, v in row.items() if keep(k)} for row in rows]
    return [{k: row[k] for k in names if k in row} for row in rows]


def cmd_rename(rows: list[Row], args: str) -> list[Row]:
    pairs = re.findall(r"(\S+)\s+(?:AS|as)\s+(\S+?)(?:,|\s|$)", args)
    if not pairs:
        raise SplError("Error in 'rename' command: expected 'field AS newname'.")
    out = []
    for row in rows:
        new = dict(row)
        for old, name in pairs:
            if old in new:
                new[name] = new.pop(old)
        out.append(new)
    return out


def cmd_dedup(rows: list[Row], args: str) -> list[Row]:
    names = _names(args)
    seen: set[tuple[str, ...]] = set()
    out = []
    for row in rows:
        if any(not field_values(row, n) for n in names):
            continue
        key = tuple(_as_text(field_values(row, n)) for n in names)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def cmd_reverse(rows: list[Row], args: str) -> list[Row]:
    return list(reversed(rows))


_AGG = re.compile(r'\b(count|dc|values|min|max|sum)(?:\(([^)]*)\))?(?:\s+(?:AS|as)\s+(?:"([^"]+)"|(\w+)))?')


def cmd_stats(rows: list[Row], args: str) -> list[Row]:
    parts = re.split(r"\s+(?:by|BY)\s+", args, maxsplit=1)
    head = parts[0]
    by_fields = _names(parts[1]) if len(parts) > 1 else []
    aggs = []
    for match in _AGG.finditer(head):
        func, arg, alias = match.group(1), (match.group(2) or "").strip(), match.group(3) or match.group(4)
        aggs.append((func, arg, alias or (f"{func}({arg})" if arg else func)))
    if not aggs:
        raise SplError("Error in 'stats' command: The argument must be a stats function.")
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        # a multivalue by-field puts the row in one group per value, as stats does
        for key in itertools.product(*[[_as_text(v) for v in field_values(row, n)] for n in by_fields]):
            groups.setdefault(key, []).append(row)
    if not by_fields and not groups:
        groups[()] = []
    out = []
    for key in sorted(groups, key=lambda k: tuple(s.lower() for s in k)):
        members = groups[key]
        result: Row = dict(zip(by_fields, key))
        for func, arg, alias in aggs:
            vals = [v for row in members for v in field_values(row, arg)] if arg else []
            if func == "count":
                result[alias] = str(len(vals) if arg else len(members))
            elif func == "dc":
                result[alias] = str(len({_as_text(v) for v in vals}))
            elif func == "values":
                result[alias] = sorted({_as_text(v) for v in vals})
            elif vals:
                numbers = [_number(v) for v in vals]
                if func == "sum":
                    result[alias] = _as_text(sum(n for n in numbers if n is not None))
                else:
                    pick = min if func == "min" else max
                    result[alias] = _as_text(pick(vals, key=_sort_key))
        out.append(result)
    return out


def cmd_where(rows: list[Row], args: str) -> list[Row]:
    pred = parse_where(args)
    return [row for row in rows if pred(row)]


def cmd_search(rows: list[Row], args: str) -> list[Row]:
    expr = parse_search(args)
    return [row for row in rows if expr.pred(row)]


COMMANDS: dict[str, Command] = {
    "search": cmd_search,
    "where": cmd_where,
    "head": cmd_head,
    "sort": cmd_sort,
    "fields": cmd_fields,
    "table": cmd_table,
    "rename": cmd_rename,
    "dedup": cmd_dedup,
    "reverse": cmd_reverse,
    "stats": cmd_stats,
    "fillnull": cmd_fillnull,
    "regex": cmd_regex,
}
TRANSFORMING = {"stats"}


# -- the engine -------------------------------------------------------------------------------
INDEXED_MAX_VALUES = 2000  # a field with more distinct values is not worth an index


@dataclass
class SplEngine:
    events: list[Row]
    macros: dict[str, str] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    _indexes: dict[str, tuple[int, dict[str, list[int]] | None]] = field(default_factory=dict, repr=False)

    def _index(self, name: str) -> dict[str, list[int]] | None:
        """Event positions by the text of one field (None: too many distinct values); rebuilt when
        events are added."""
        cached = self._indexes.get(name)
        if cached is not None and cached[0] == len(self.events):
            return cached[1]
        index: dict[str, list[int]] | None = {}
        for position, event in enumerate(self.events):
            for value in field_values(event, name):
                index.setdefault(_as_text(value), []).append(position)  # type: ignore[union-attr]
            if len(index) > INDEXED_MAX_VALUES:  # type: ignore[arg-type]
                index = None
                break
        self._indexes[name] = (len(self.events), index)
        return index

    def candidates(self, pred: Pred) -> list[Row]:
        """The events that can satisfy the search, in their original order: narrowed through the
        indexed equalities (an event without the field cannot match one), then tested one by one."""
        positions = self._positions(pred)
        return self.events if positions is None else [self.events[p] for p in sorted(positions)]

    def _positions(self, pred: Pred) -> set[int] | None:
        """A superset of the positions of the events `pred` can match (None: any event)."""
        match = getattr(pred, "match", None)
        if match is not None:
            index = None if match[0] == "index" else self._index(match[0])  # `index=*` has its own rule
            if index is None:
                return None
            return {p for text, found in index.items() if any(pat.fullmatch(text) for pat in match[1]) for p in found}
        if hasattr(pred, "parts"):  # AND: every part's events
            narrowed = [found for found in map(self._positions, pred.parts) if found is not None]
            return set.intersection(*narrowed) if narrowed else None
        if hasattr(pred, "alternatives"):  # OR: any alternative's events, if each one narrows
            found = [self._positions(part) for part in pred.alternatives]
            return None if any(f is None for f in found) else set().union(*found)
        return None

    def expand(self, spl: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.macros:
                raise SplError(f"Error in 'SearchParser': The search specifies a macro '{name}' that cannot be found.")
            return self.macros[name]

        return re.sub(r"`([^`(]+)(?:\([^`]*\))?`", replace, spl)

    def pipeline(self, spl: str) -> list[tuple[str, str]]:
        text = self.expand(spl).strip()
        parts = _split_pipes(text)
        generating = text.startswith("|")
        if generating:
            parts = parts[1:]
        steps: list[tuple[str, str]] = []
        for position, part in enumerate(parts):
            name, _, args = part.strip().partition(" ")
            if position == 0 and not generating:
                if name != "search":
                    name, args = "search", part
            steps.append((name, args))
        for name, _ in steps:
            if name not in COMMANDS and name not in self.commands and name != "makeresults":
                raise SplError(f"Unknown search command '{name}'.")
        return steps

    def run(self, spl: str, earliest: str | None = None, latest: str | None = None, now: float | None = None,
            event_fraction: float = 1.0, level: str | None = None, required: tuple[str, ...] = ()) -> SplResult:
        """`level` is the job's adhoc_search_level (fast when not given, as for REST jobs); `required`
        the `rf` / required_field_list fields."""
        now = time.time() if now is None else now
        steps = self.pipeline(spl)
        kept = self.returned_fields(steps, level, required)
        rows: list[Row]
        transforming = False
        event_count = 0
        first, first_args = steps[0]
        if first == "makeresults":
            count = int((re.search(r"count=(\d+)", first_args) or [None, "1"])[1])
            rows = [{"_time": now} for _ in range(count)]
        else:
            expr = parse_search(first_args)
            start = parse_time_arg(expr.earliest or earliest, now)
            end = parse_time_arg(expr.latest or latest, now)
            rows = [
                dict(event) for event in self.candidates(expr.pred)
                if (start is None or event["_time"] >= start) and (end is None or event["_time"] < end) and expr.pred(event)
            ]
            rows.sort(key=lambda row: row["_time"], reverse=True)
            if kept is not None:
                rows = [{k: v for k, v in row.items() if kept(k)} for row in rows]
            event_count = len(rows)
            if event_fraction < 1.0:
                rows = rows[len(rows) - int(len(rows) * event_fraction):]
        for name, args in steps[1:]:
            if name == "makeresults":
                raise SplError("Error in 'makeresults' command: This command must be the first command of a search.")
            handler = self.commands.get(name) or COMMANDS[name]
            rows = handler(rows, args)
            transforming = transforming or name in TRANSFORMING
        return SplResult(rows=rows, transforming=transforming, event_count=event_count)


    @staticmethod
    def returned_fields(steps: list[tuple[str, str]], level: str | None,
                        required: tuple[str, ...]) -> Callable[[str], bool] | None:
        """Which event fields the search gets (None: all of them)."""
        transforming = any(name in TRANSFORMING for name, _ in steps)
        if level == "verbose" or (level == "smart" and not transforming):
            return None
        names = set(DEFAULT_FIELDS) | set(required)
        for name, args in steps:
            found = referenced_fields(name, args)
            if found is None:
                return None
            names |= found
        if "*" in names:
            return None
        wild = [pattern(n) for n in names if "*" in n]
        return lambda key: key in names or any(p.fullmatch(key) for p in wild)


DEFAULT_FIELDS = ("_time", "_raw", "host", "source", "sourcetype", "index", "splunk_server", "linecount",
                  "_cd", "_bkt", "_si", "_serial", "_indextime", "_sourcetype")
_BY = re.compile(r"\s+(?:by|BY)\s+")


def referenced_fields(command: str, args: str) -> set[str] | None:
    """The fields a command names (None: it reads every field)."""
    if command in ("search", "where"):
        toks = tokenize(args)
        found: set[str] = set()
        for index, tok in enumerate(toks):
            nxt = toks[index + 1] if index + 1 < len(toks) else None
            if tok.kind != "word" or nxt is None:
                continue
            if nxt.kind == "op" or (nxt.kind == "word" and nxt.text == "IN"):
                found.add(tok.text)
            elif tok.text in ("isnull", "isnotnull") and nxt.kind == "lp" and index + 2 < len(toks):
                found.add(toks[index + 2].text)
        return found - {"earliest", "latest"}
    if command in ("fields", "table"):
        text = args.strip()
        return set() if text.startswith("-") else set(_names(text.lstrip("+")))
    if command == "stats":
        head, *by = _BY.split(args, maxsplit=1)
        return {m.group(2).strip() for m in _AGG.finditer(head) if m.group(2)} | set(_names(by[0] if by else ""))
    if command in ("sort", "dedup"):
        return {n.lstrip("+-") for n in _names(args) if not n.isdigit() and n not in ("+", "-")}
    if command == "fillnull":
        return set(_names(re.sub(r'value=("[^"]*"|\S+)', "", args)))
    if command == "rename":
        return {old for old, _ in re.findall(r"(\S+)\s+(?:AS|as)\s+(\S+?)(?:,|\s|$)", args)}
    if command == "regex":
        match = re.match(r"\s*(\w[\w.]*)\s*!?=", args)
        return {match.group(1)} if match else set()
    if command in COMMANDS or command == "makeresults":
        return set()
    return None  # a command the emulator was given (ES's review overlay): it reads every field


def _split_pipes(text: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    in_quote = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and in_quote and i + 1 < len(text):
            buf.append(text[i : i + 2])
            i += 2
            continue
        if ch == '"':
            in_quote = not in_quote
        if ch == "|" and not in_quote:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if in_quote:
        raise SplError("Unbalanced quotes.")
    parts.append("".join(buf))
    return parts


def render_row(row: Row) -> Row:
    """A row as splunkd's JSON output has it: every value a string, multivalue as a list of strings."""
    out: Row = {}
    for key, value in row.items():
        if key == "_time" and isinstance(value, (int, float)):
            out[key] = render_time(float(value))
        elif isinstance(value, list):
            out[key] = [_as_text(v) for v in value]
        elif value is not None:
            out[key] = _as_text(value)
    return out
