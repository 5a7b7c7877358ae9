"""ES|QL and EQL subsets for the Elasticsearch emulator.

ES|QL: FROM (with METADATA), WHERE, EVAL, STATS ... BY, SORT, LIMIT, KEEP, DROP, RENAME; operators
== != < <= > >= =~ LIKE RLIKE IN, IS [NOT] NULL, AND/OR/NOT, + - * /, durations (`7 days`); functions
TO_LOWER, TO_UPPER, TO_STRING, TO_DATETIME, NOW, STARTS_WITH, ENDS_WITH, LENGTH, COALESCE,
MV_COUNT, CONCAT; aggregates COUNT, COUNT_DISTINCT, MIN, MAX, SUM, AVG, VALUES. A comparison or
function on a multi-valued field is null (the row does not match), with a Warning header, as in
Elasticsearch. Unknown columns and functions fail with `verification_exception`.

EQL: `<category> where <condition>` with == != : like like~ in in~ and/or/not, and the usual
string functions; array fields match if any value matches.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from emulators.elastic_store import (
    Doc,
    EsError,
    Index,
    flatten_source,
    in_time,
    infer_type,
    iso_ms,
    matches,
    parse_date,
    wildcard_regex,
)

DEFAULT_LIMIT = 1000
_DURATION_UNITS = {
    "millisecond": 0.001, "second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800,
    "month": 2592000, "year": 31536000,
}
KEYWORDS = {"and", "or", "not", "in", "like", "rlike", "is", "null", "true", "false", "asc", "desc", "nulls",
            "first", "last", "by", "as", "where", "metadata"}


def verification(query: str, offset: int, message: str) -> EsError:
    line = query.count("\n", 0, offset) + 1
    col = offset - (query.rfind("\n", 0, offset) + 1) + 1
    return EsError(400, "verification_exception", f"Found 1 problem\nline {line}:{col}: {message}")


def parsing(query: str, offset: int, message: str) -> EsError:
    line = query.count("\n", 0, offset) + 1
    col = offset - (query.rfind("\n", 0, offset) + 1) + 1
    return EsError(400, "parsing_exception", f"line {line}:{col}: {message}")


# -- tokens ----------------------------------------------------------------------------------
@dataclass
class Tok:
    kind: str  # STR NUM ID OP DUR EOF
    value: Any
    pos: int
    raw: str = ""


_OPS = ["==", "!=", "<=", ">=", "=~", "<", ">", "=", "+", "-", "*", "/", "%", "(", ")", ",", ":", "~", "[", "]"]


def lex(text: str, base: int = 0) -> list[Tok]:
    out: list[Tok] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
            continue
        start = i
        if text.startswith('"""', i):
            end = text.find('"""', i + 3)
            if end == -1:
                raise parsing(text, base + i, "unterminated string")
            out.append(Tok("STR", text[i + 3 : end], base + start))
            i = end + 3
            continue
        if c == '"':
            j, buf = i + 1, []
            while j < len(text) and text[j] != '"':
                if text[j] == "\\" and j + 1 < len(text):
                    buf.append({"n": "\n", "t": "\t", "r": "\r"}.get(text[j + 1], text[j + 1]))
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            if j >= len(text):
                raise parsing(text, base + i, "unterminated string")
            out.append(Tok("STR", "".join(buf), base + start))
            i = j + 1
            continue
        if c == "`":
            j, buf = i + 1, []
            while j < len(text):
                if text.startswith("``", j):
                    buf.append("`")
                    j += 2
                    continue
                if text[j] == "`":
                    break
                buf.append(text[j])
                j += 1
            out.append(Tok("ID", "".join(buf), base + start, "quoted"))
            i = j + 1
            continue
        number = re.match(r"\d+(\.\d+)?", text[i:])
        if number:
            value: Any = float(number.group()) if number.group(1) else int(number.group())
            i += number.end()
            unit = re.match(r"\s+([a-z]+?)s?\b", text[i:], re.I)
            if unit and unit.group(1).lower() in _DURATION_UNITS:
                out.append(Tok("DUR", timedelta(seconds=value * _DURATION_UNITS[unit.group(1).lower()]), base + start))
                i += unit.end()
            else:
                out.append(Tok("NUM", value, base + start))
            continue
        ident = re.match(r"[A-Za-z_@][A-Za-z0-9_.@]*", text[i:])
        if ident:
            out.append(Tok("ID", ident.group(), base + start))
            i += ident.end()
            continue
        for op in _OPS:
            if text.startswith(op, i):
                out.append(Tok("OP", op, base + start))
                i += len(op)
                break
        else:
            raise parsing(text, base + i, f"token recognition error at: '{c}'")
    out.append(Tok("EOF", None, base + len(text)))
    return out


# -- expressions -------------------------------------------------------------------------------
@dataclass
class Expr:
    kind: str  # lit col call op not isnull in like list neg
    value: Any = None
    args: list["Expr"] = field(default_factory=list)
    pos: int = 0
    text: str = ""
    flag: bool = False


class ExprParser:
    def __init__(self, query: str, tokens: list[Tok], eql: bool = False) -> None:
        self.query, self.tokens, self.i, self.eql = query, tokens, 0, eql

    def peek(self, ahead: int = 0) -> Tok:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def word(self, ahead: int = 0) -> str:
        tok = self.peek(ahead)
        return str(tok.value).lower() if tok.kind == "ID" and tok.raw != "quoted" else ""

    def take(self) -> Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def expect_op(self, op: str) -> None:
        tok = self.take()
        if tok.kind != "OP" or tok.value != op:
            raise parsing(self.query, tok.pos, f"mismatched input '{tok.value}' expecting '{op}'")

    def parse(self) -> Expr:
        return self.or_expr()

    def _chain(self, word: str, operand: Callable[[], Expr]) -> Expr:
        left = operand()
        while self.word() == word:
            self.take()
            left = Expr("op", word, [left, operand()])
        return left

    def or_expr(self) -> Expr:
        return self._chain("or", self.and_expr)

    def and_expr(self) -> Expr:
        return self._chain("and", self.not_expr)

    def not_expr(self) -> Expr:
        if self.word() == "not":
            self.take()
            return Expr("not", args=[self.not_expr()])
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.additive()
        tok = self.peek()
        if tok.kind == "OP" and tok.value in ("==", "!=", "<", "<=", ">", ">=", "=~", ":"):
            self.take()
            return Expr("op", tok.value, [left, self.additive()], tok.pos)
        negate = False
        if self.word() == "not" and self.word(1) in ("in", "like", "rlike"):
            self.take()
            negate = True
        word = self.word()
        if word in ("in", "like", "rlike", "regex"):
            self.take()
            insensitive = False
            if self.peek().kind == "OP" and self.peek().value == "~":
                self.take()
                insensitive = True
            if word == "in" or (self.peek().kind == "OP" and self.peek().value == "("):
                self.expect_op("(")
                items = [self.additive()]
                while self.peek().kind == "OP" and self.peek().value == ",":
                    self.take()
                    items.append(self.additive())
                self.expect_op(")")
            else:
                items = [self.additive()]
            node = Expr(word if word != "regex" else "rlike", None, [left, *items], tok.pos, flag=insensitive)
            return Expr("not", args=[node]) if negate else node
        if word == "is":
            self.take()
            negate = self.word() == "not"
            if negate:
                self.take()
            if self.word() != "null":
                raise parsing(self.query, self.peek().pos, "expecting NULL")
            self.take()
            return Expr("isnull", flag=negate, args=[left])
        return left

    def additive(self) -> Expr:
        left = self.multiplicative()
        while self.peek().kind == "OP" and self.peek().value in ("+", "-"):
            op = self.take().value
            left = Expr("op", op, [left, self.multiplicative()])
        return left

    def multiplicative(self) -> Expr:
        left = self.unary()
        while self.peek().kind == "OP" and self.peek().value in ("*", "/", "%"):
            op = self.take().value
            left = Expr("op", op, [left, self.unary()])
        return left

    def unary(self) -> Expr:
        if self.peek().kind == "OP" and self.peek().value == "-":
            self.take()
            return Expr("neg", args=[self.unary()])
        return self.primary()

    def primary(self) -> Expr:
        tok = self.take()
        if tok.kind in ("STR", "NUM", "DUR"):
            return Expr("lit", tok.value, pos=tok.pos)
        if tok.kind == "OP" and tok.value == "(":
            inner = self.or_expr()
            self.expect_op(")")
            return inner
        if tok.kind == "ID":
            word = str(tok.value).lower() if tok.raw != "quoted" else ""
            if word in ("true", "false"):
                return Expr("lit", word == "true", pos=tok.pos)
            if word == "null":
                return Expr("lit", None, pos=tok.pos)
            nxt = self.peek()
            insensitive = False
            if self.eql and nxt.kind == "OP" and nxt.value == "~" and self.peek(1).value == "(":
                self.take()
                insensitive = True
                nxt = self.peek()
            if tok.raw != "quoted" and nxt.kind == "OP" and nxt.value == "(":
                self.take()
                args: list[Expr] = []
                if self.peek().kind == "OP" and self.peek().value == "*":
                    self.take()
                    args.append(Expr("lit", "*"))
                elif not (self.peek().kind == "OP" and self.peek().value == ")"):
                    args.append(self.or_expr())
                    while self.peek().kind == "OP" and self.peek().value == ",":
                        self.take()
                        args.append(self.or_expr())
                self.expect_op(")")
                return Expr("call", str(tok.value).lower(), args, tok.pos, self.query[tok.pos : self.peek(-1).pos + 1], insensitive)
            return Expr("col", str(tok.value), pos=tok.pos)
        raise parsing(self.query, tok.pos, f"extraneous input '{tok.value}'")


# -- evaluation ----------------------------------------------------------------------------------
class Evaluator:
    def __init__(self, query: str, columns: dict[str, str], eql: bool = False) -> None:
        self.query = query
        self.columns = columns
        self.eql = eql
        self.warnings: list[str] = []

    def check(self, expr: Expr) -> None:
        if expr.kind == "col" and expr.value not in self.columns:
            raise verification(self.query, expr.pos, f"Unknown column [{expr.value}]")
        if expr.kind == "call" and expr.value not in FUNCTIONS and expr.value not in AGGREGATES:
            raise verification(self.query, expr.pos, f"Unknown function [{expr.value}]")
        for arg in expr.args:
            self.check(arg)

    def _mv(self, value: Any, expr: Expr) -> Any:
        if isinstance(value, list):
            if len(value) == 1:
                return value[0]
            if self.eql:
                return value
            self.warnings.append(f"Line 1:{expr.pos + 1}: evaluation of [{self.query[expr.pos:expr.pos + 40]}] failed, treating result as null. Only first 20 failures recorded.")
            return None
        return value

    def value(self, expr: Expr, row: dict[str, Any]) -> Any:
        kind = expr.kind
        if kind == "lit":
            return expr.value
        if kind == "col":
            return row.get(expr.value)
        if kind == "not":
            inner = self.value(expr.args[0], row)
            return None if inner is None else not inner
        if kind == "isnull":
            inner = row.get(expr.args[0].value) if expr.args[0].kind == "col" else self.value(expr.args[0], row)
            empty = inner is None or inner == []
            return not empty if expr.flag else empty
        if kind == "neg":
            inner = self._mv(self.value(expr.args[0], row), expr)
            return None if inner is None else -inner
        if kind == "op" and expr.value in ("and", "or"):
            left, right = self.value(expr.args[0], row), self.value(expr.args[1], row)
            if expr.value == "and":
                if left is False or right is False:
                    return False
                return None if left is None or right is None else True
            if left is True or right is True:
                return True
            return None if left is None or right is None else False
        if kind == "call":
            return self.call(expr, row)
        if kind in ("in", "like", "rlike"):
            return self.pattern(expr, row)
        return self.binary(expr, row)

    def _operand(self, expr: Expr, row: dict[str, Any]) -> Any:
        return self._mv(self.value(expr, row), expr)

    def binary(self, expr: Expr, row: dict[str, Any]) -> Any:
        op = expr.value
        left, right = self._operand(expr.args[0], row), self._operand(expr.args[1], row)
        if left is None or right is None:
            return None
        if self.eql and isinstance(left, list):
            return any(self._compare(op, item, right) for item in left)
        return self._compare(op, left, right)

    def _compare(self, op: str, left: Any, right: Any) -> Any:
        if isinstance(left, datetime) and isinstance(right, str):
            right = parse_date(right) or right
        if isinstance(right, datetime) and isinstance(left, str):
            left = parse_date(left) or left
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        if op == "/":
            return None if right == 0 else (left / right if isinstance(left, float) or isinstance(right, float) else left // right)
        if op == "%":
            return None if right == 0 else left % right
        if op == "=~" or (op == ":" and self.eql):
            if op == ":" and isinstance(left, str) and isinstance(right, str) and any(c in right for c in "*?"):
                return bool(wildcard_regex(right, True).match(left))
            return str(left).lower() == str(right).lower()
        if op == ":":
            return str(right).lower() in str(left).lower().split()
        try:
            return {"==": left == right, "!=": left != right, "<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]
        except TypeError:
            return None

    def pattern(self, expr: Expr, row: dict[str, Any]) -> Any:
        subject = self.value(expr.args[0], row)
        subject = subject if (self.eql and isinstance(subject, list)) else self._mv(subject, expr.args[0])
        if subject is None or subject == []:
            return None
        subjects = subject if isinstance(subject, list) else [subject]
        items = [self.value(item, row) for item in expr.args[1:]]
        for value in subjects:
            for item in items:
                if item is None:
                    continue
                if expr.kind == "in":
                    if (expr.flag and str(value).lower() == str(item).lower()) or value == item:
                        return True
                elif expr.kind == "like":
                    if wildcard_regex(str(item), expr.flag).match(str(value)):
                        return True
                elif re.fullmatch(str(item), str(value), re.S | (re.I if expr.flag else 0)):
                    return True
        return False

    def call(self, expr: Expr, row: dict[str, Any]) -> Any:
        name = expr.value
        if name in AGGREGATES:
            raise verification(self.query, expr.pos, f"aggregate function [{expr.text}] is only allowed in STATS")
        fn = FUNCTIONS[name]
        args = [self.value(a, row) for a in expr.args]
        if name in ("coalesce",):
            return next((a for a in args if a not in (None, [])), None)
        if name == "mv_count":
            value = args[0]
            return None if value is None else (len(value) if isinstance(value, list) else 1)
        multi = [a for a in args if isinstance(a, list) and len(a) > 1]
        if multi and self.eql and args and isinstance(args[0], list):
            return any(fn(item, *args[1:], insensitive=expr.flag) for item in args[0])
        args = [self._mv(a, sub) for a, sub in zip(args, expr.args)]
        if any(a is None for a in args) and name != "now":
            return None
        return fn(*args, insensitive=expr.flag)


def _to_datetime(value: Any, **_: Any) -> Any:
    if isinstance(value, datetime):
        return value
    return parse_date(value)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "to_lower": lambda v, **_: str(v).lower(),
    "to_upper": lambda v, **_: str(v).upper(),
    "to_string": lambda v, **_: iso_ms(v) if isinstance(v, datetime) else ("true" if v is True else "false" if v is False else str(v)),
    "to_datetime": _to_datetime,
    "now": lambda **_: datetime.now(timezone.utc),
    "starts_with": lambda v, p, insensitive=False: str(v).lower().startswith(str(p).lower()) if insensitive else str(v).startswith(str(p)),
    "ends_with": lambda v, p, insensitive=False: str(v).lower().endswith(str(p).lower()) if insensitive else str(v).endswith(str(p)),
    "startswith": lambda v, p, insensitive=False: str(v).lower().startswith(str(p).lower()) if insensitive else str(v).startswith(str(p)),
    "endswith": lambda v, p, insensitive=False: str(v).lower().endswith(str(p).lower()) if insensitive else str(v).endswith(str(p)),
    "stringcontains": lambda v, p, insensitive=False: (str(p).lower() in str(v).lower()) if insensitive else (str(p) in str(v)),
    "length": lambda v, **_: len(str(v)),
    "concat": lambda *vs, **_: "".join(str(v) for v in vs),
    "coalesce": lambda *vs, **_: None,
    "mv_count": lambda v, **_: None,
}
AGGREGATES = {"count", "count_distinct", "min", "max", "sum", "avg", "values"}


def _aggregate(name: str, values: list[Any], star: bool, rows: int) -> Any:
    flat: list[Any] = []
    for value in values:
        flat.extend(value if isinstance(value, list) else [value])
    flat = [v for v in flat if v is not None]
    if name == "count":
        return rows if star else len(flat)
    if name == "count_distinct":
        return len({str(v) for v in flat})
    if name == "values":
        return list(dict.fromkeys(flat)) or None
    if not flat:
        return None
    if name == "min":
        return min(flat)
    if name == "max":
        return max(flat)
    if name == "sum":
        return sum(flat)
    return sum(flat) / len(flat)


# -- tables --------------------------------------------------------------------------------------
def _type_name(index_type: str | None) -> str:
    if index_type in ("long", "integer", "short", "byte"):
        return "long" if index_type == "long" else "integer"
    if index_type in ("double", "float", "half_float", "scaled_float"):
        return "double"
    if index_type in ("date", "date_nanos", "ip", "boolean", "text", "keyword"):
        return str(index_type)
    if index_type in ("wildcard", "constant_keyword"):
        return "keyword"
    if index_type == "match_only_text":
        return "text"
    return "keyword"


def _cell(kind: str, values: list[Any]) -> Any:
    converted: list[Any] = []
    for value in values:
        if kind in ("date", "date_nanos"):
            moment = parse_date(value)
            converted.append(moment)
        elif kind in ("long", "integer"):
            try:
                converted.append(int(value))
            except (TypeError, ValueError):
                converted.append(None)
        elif kind == "double":
            try:
                converted.append(float(value))
            except (TypeError, ValueError):
                converted.append(None)
        else:
            converted.append(value)
    converted = [v for v in converted if v is not None]
    if not converted:
        return None
    return converted[0] if len(converted) == 1 else converted


def _output(kind: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_output(kind, v) for v in value]
    if isinstance(value, datetime):
        return iso_ms(value)
    if isinstance(value, timedelta):
        return str(value)
    return value


def _value_type(value: Any) -> str:
    sample = value[0] if isinstance(value, list) and value else value
    if isinstance(sample, datetime):
        return "date"
    return "keyword" if isinstance(sample, str) else _type_name(infer_type(sample))


def _multi_fields(index: Index) -> dict[str, tuple[str, bool]]:
    """Declared multi-fields: path -> (parent, lower-cased?) (`.caseless` has a lowercase normalizer)."""
    out = {}
    for path in index.explicit_types():
        parent = index.multi_field_parent(path)
        if parent is not None:
            out[path] = (parent, path.endswith(".caseless"))
    return out


def _source_table(indices: list[Index], metadata: list[str], docs: list[Doc]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    columns: dict[str, str] = {}
    multi: dict[str, dict[str, tuple[str, bool]]] = {}
    for index in indices:
        for path, kind in index.field_paths().items():
            if kind != "object":
                columns.setdefault(path, _type_name(kind))
        multi[index.name] = _multi_fields(index)
    rows = []
    for doc in docs:
        flat = doc.flat()
        row = {name: _cell(columns[name], values) for name, values in flat.items() if name in columns}  # absent = null
        for path, (parent, lowered) in multi[doc.index.name].items():
            values = flat.get(parent, [])
            row[path] = _cell(columns[path], [str(v).lower() for v in values] if lowered else values)
        meta = {"_id": doc.id, "_index": doc.index.name, "_version": doc.version}
        row.update({m: meta[m] for m in metadata})
        rows.append(row)
    for m in metadata:
        columns[m] = "long" if m == "_version" else "keyword"
    return columns, rows


def _lex(query: str) -> tuple[str, list[bool]]:
    """One pass as Elasticsearch's lexer reads a query: `// line` and `/* block */` comments outside strings
    become spaces (offsets kept), and for each position whether it stands outside a string."""
    out, outside, i, quote = list(query), [True] * len(query), 0, ""
    while i < len(query):
        if query.startswith('"""', i) and quote in ("", '"""'):
            quote = "" if quote else '"""'
            outside[i:i + 3] = [False] * 3
            i += 3
            continue
        c = query[i]
        if quote == '"' and c == "\\":
            outside[i:i + 2] = [False] * len(outside[i:i + 2])
            i += 2
            continue
        if c == '"' and quote in ("", '"'):
            quote = "" if quote else '"'
        elif not quote and query.startswith(("//", "/*"), i):
            closer = "\n" if query.startswith("//", i) else "*/"
            found = query.find(closer, i + 2)
            end = len(query) if found < 0 else found + (0 if closer == "\n" else 2)
            out[i:end] = [" "] * (end - i)
            i = end
            continue
        outside[i] = not quote and c != '"'
        i += 1
    return "".join(out), outside


def split_commands(query: str) -> list[tuple[str, int]]:
    """(command text, offset) split on | outside strings and comments."""
    text, outside = _lex(query)
    parts: list[tuple[str, int]] = []
    start = 0
    for i, c in enumerate(text):
        if c == "|" and outside[i]:
            parts.append((text[start:i], start))
            start = i + 1
    parts.append((text[start:], start))
    return parts


@dataclass
class EsqlResult:
    columns: list[dict[str, str]]
    values: list[list[Any]]
    warnings: list[str]


def run_esql(store: Any, query: str, dsl_filter: dict[str, Any] | None) -> EsqlResult:
    commands = split_commands(query)
    columns: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    limit: int | None = None
    for number, (text, offset) in enumerate(commands):
        stripped = text.strip()
        lead = offset + (len(text) - len(text.lstrip()))
        if not stripped:
            raise parsing(query, lead, "mismatched input '|'")
        word = stripped.split(None, 1)[0].lower()
        rest = stripped[len(word):]
        rest_offset = lead + len(word)
        if number == 0 and word != "from":
            if word == "row":
                raise parsing(query, lead, "ROW is not supported by the emulator")
            raise parsing(query, lead, f"mismatched input '{stripped.split(None, 1)[0]}' expecting {{'from', 'row', 'show'}}")
        if word == "from":
            if number:
                raise parsing(query, lead, "FROM must be the first command")
            meta_match = re.search(r"\bmetadata\b(.*)$", rest, re.I | re.S)
            pattern = rest[: meta_match.start()] if meta_match else rest
            metadata = [m.strip() for m in meta_match.group(1).split(",")] if meta_match else []
            pattern = pattern.strip().replace('"', "")
            try:
                indices = store.resolve(pattern.replace(" ", ""))
            except EsError:
                raise verification(query, rest_offset + 1, f"Unknown index [{pattern.strip()}]") from None
            docs = [doc for index in indices for doc in index.docs.values()]
            if dsl_filter:
                docs = [doc for doc in in_time(docs, dsl_filter) if matches(dsl_filter, doc)]
            columns, rows = _source_table(indices, metadata, docs)
            continue
        tokens = lex(rest, rest_offset)
        evaluator = Evaluator(query, columns)
        if word == "where":
            parser = ExprParser(query, tokens)
            expr = parser.parse()
            _expect_end(query, parser)
            evaluator.check(expr)
            rows = [row for row in rows if evaluator.value(expr, row) is True]
        elif word == "eval":
            for name, expr, _ in _assignments(query, tokens, evaluator):
                for row in rows:
                    row[name] = evaluator.value(expr, row)
                columns[name] = _value_type(rows[0][name]) if rows else "keyword"
                evaluator.columns = columns
        elif word == "stats":
            columns, rows = _stats(query, tokens, evaluator, rows)
        elif word == "sort":
            rows = _sort(query, tokens, evaluator, rows)
        elif word == "limit":
            if len(tokens) != 2 or tokens[0].kind != "NUM":
                raise parsing(query, rest_offset, "LIMIT expects an integer")
            limit = int(tokens[0].value)
            rows = rows[:limit]
        elif word in ("keep", "drop"):
            patterns = [p.strip().strip("`") for p in rest.split(",")]
            chosen: list[str] = []
            for pattern in patterns:
                found = [c for c in columns if fnmatch.fnmatchcase(c, pattern)]
                if not found and not any(ch in pattern for ch in "*?"):
                    raise verification(query, rest_offset + 1, f"Unknown column [{pattern}]")
                chosen.extend(c for c in found if c not in chosen)
            keep = chosen if word == "keep" else [c for c in columns if c not in chosen]
            columns = {c: columns[c] for c in keep}
            rows = [{c: row.get(c) for c in keep} for row in rows]
        elif word == "rename":
            for pair in rest.split(","):
                match = re.match(r"\s*`?([^`\s]+)`?\s+as\s+`?([^`\s]+)`?\s*$", pair, re.I)
                if not match or match.group(1) not in columns:
                    raise verification(query, rest_offset + 1, f"Unknown column [{pair.strip()}]")
                old, new = match.groups()
                columns = {(new if c == old else c): t for c, t in columns.items()}
                for row in rows:
                    row[new] = row.pop(old, None)
        else:
            raise parsing(query, lead, f"mismatched input '{stripped.split(None, 1)[0]}' expecting {{'where', 'eval', 'stats', 'sort', 'limit', 'keep', 'drop', 'rename'}}")
        warnings.extend(evaluator.warnings)
    if limit is None:
        rows = rows[:DEFAULT_LIMIT]
    names = list(columns)
    return EsqlResult(
        columns=[{"name": n, "type": columns[n]} for n in names],
        values=[[_output(columns[n], row.get(n)) for n in names] for row in rows],
        warnings=warnings[:20],
    )


def _expect_end(query: str, parser: ExprParser) -> None:
    tok = parser.peek()
    if tok.kind != "EOF":
        raise parsing(query, tok.pos, f"extraneous input '{tok.value}'")


def _assignments(query: str, tokens: list[Tok], evaluator: Evaluator) -> list[tuple[str, Expr, bool]]:
    parser = ExprParser(query, tokens)
    out: list[tuple[str, Expr, bool]] = []
    while True:
        start = parser.peek()
        named = start.kind == "ID" and parser.peek(1).kind == "OP" and parser.peek(1).value == "="
        if named:
            parser.take()
            parser.take()
        expr = parser.or_expr()
        name = str(start.value) if named else query[start.pos : parser.peek().pos].strip()
        out.append((name, expr, named))
        if parser.peek().kind == "OP" and parser.peek().value == ",":
            parser.take()
            continue
        if parser.word() == "by" or parser.peek().kind == "EOF":
            break
        raise parsing(query, parser.peek().pos, f"extraneous input '{parser.peek().value}'")
    for _, expr, _ in out:
        if expr.kind != "call" or expr.value not in AGGREGATES:
            evaluator.check(expr)
    return out


def _stats(query: str, tokens: list[Tok], evaluator: Evaluator, rows: list[dict[str, Any]]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    aggs = _assignments(query, tokens, evaluator)
    parser = ExprParser(query, tokens)
    # skip to BY
    by: list[Expr] = []
    depth = 0
    for index, tok in enumerate(tokens):
        if tok.kind == "OP" and tok.value == "(":
            depth += 1
        elif tok.kind == "OP" and tok.value == ")":
            depth -= 1
        elif depth == 0 and tok.kind == "ID" and str(tok.value).lower() == "by" and tok.raw != "quoted":
            parser.i = index + 1
            by.append(parser.additive())
            while parser.peek().kind == "OP" and parser.peek().value == ",":
                parser.take()
                by.append(parser.additive())
            _expect_end(query, parser)
            break
    for expr in by:
        evaluator.check(expr)
    for _, expr, _ in aggs:
        if expr.kind != "call" or expr.value not in AGGREGATES:
            raise verification(query, expr.pos, "expected an aggregate function in STATS")
        for arg in expr.args:
            if not (arg.kind == "lit" and arg.value == "*"):
                evaluator.check(arg)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        keys: list[list[Any]] = []
        for expr in by:
            value = evaluator.value(expr, row)
            keys.append(value if isinstance(value, list) else [value])
        import itertools

        for combo in itertools.product(*keys) if by else [()]:
            groups.setdefault(tuple(_hashable(v) for v in combo), []).append(row)
    if not by and not groups:
        groups[()] = []
    columns: dict[str, str] = {}
    out_rows: list[dict[str, Any]] = []
    for key, members in groups.items():
        out: dict[str, Any] = {}
        for name, expr, _ in aggs:
            star = bool(expr.args and expr.args[0].kind == "lit" and expr.args[0].value == "*")
            values = [] if star else [evaluator.value(expr.args[0], m) for m in members] if expr.args else []
            out[name] = _aggregate(expr.value, values, star, len(members))
        for expr, value in zip(by, key):
            out[expr.value if expr.kind == "col" else query[expr.pos : expr.pos + 30]] = value
        out_rows.append(out)
    for name, expr, _ in aggs:
        columns[name] = "long" if expr.value in ("count", "count_distinct") else (
            evaluator.columns.get(expr.args[0].value, "double") if expr.args and expr.args[0].kind == "col" else "double"
        )
        if expr.value == "avg":
            columns[name] = "double"
    for expr in by:
        columns[expr.value] = evaluator.columns.get(expr.value, "keyword")
    return columns, out_rows


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _sort(query: str, tokens: list[Tok], evaluator: Evaluator, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    parser = ExprParser(query, tokens)
    keys: list[tuple[Expr, bool, bool]] = []
    while True:
        expr = parser.additive()
        evaluator.check(expr)
        descending = False
        if parser.word() in ("asc", "desc"):
            descending = parser.take().value.lower() == "desc"
        nulls_first = descending
        if parser.word() == "nulls":
            parser.take()
            nulls_first = str(parser.take().value).lower() == "first"
        keys.append((expr, descending, nulls_first))
        if parser.peek().kind == "OP" and parser.peek().value == ",":
            parser.take()
            continue
        _expect_end(query, parser)
        break
    import functools

    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        for expr, descending, nulls_first in keys:
            x, y = evaluator.value(expr, a), evaluator.value(expr, b)
            if isinstance(x, list):
                x = max(x) if descending else min(x)
            if isinstance(y, list):
                y = max(y) if descending else min(y)
            if x == y:
                continue
            if x is None:
                return -1 if nulls_first else 1
            if y is None:
                return 1 if nulls_first else -1
            result = -1 if x < y else 1
            return -result if descending else result
        return 0

    return sorted(rows, key=functools.cmp_to_key(compare))


# -- EQL ------------------------------------------------------------------------------------------
def run_eql(indices: list[Index], query: str, dsl_filter: dict[str, Any] | None, size: int) -> list[Doc]:
    match = re.match(r"^\s*([A-Za-z_][\w]*|\"[^\"]+\")\s+where\s+(.*)$", query, re.S | re.I)
    if not match:
        if re.match(r"^\s*(sequence|sample)\b", query, re.I):
            raise EsError(400, "illegal_argument_exception", "the emulator supports event queries only, not sequences or samples")
        raise EsError(400, "parsing_exception", f"line 1:1: mismatched input expecting an event query ({query[:40]!r})")
    category = match.group(1).strip('"')
    condition_text = match.group(2)
    offset = match.start(2)
    tokens = lex(condition_text, offset)
    parser = ExprParser(query, tokens, eql=True)
    expr = parser.parse()
    _expect_end(query, parser)
    docs = [doc for index in indices for doc in index.docs.values()]
    if dsl_filter:
        docs = [doc for doc in in_time(docs, dsl_filter) if matches(dsl_filter, doc)]
    columns: dict[str, str] = {}
    for index in indices:
        columns.update({path: "keyword" for path, kind in index.field_paths().items() if kind != "object"})
    multi = {index.name: _multi_fields(index) for index in indices}
    tables = []
    for doc in docs:
        flat = doc.flat()
        row = {k: (v[0] if len(v) == 1 else v) for k, v in flat.items()}
        for path, (parent, lowered) in multi[doc.index.name].items():
            values = [str(v).lower() if lowered else v for v in flat.get(parent, [])]
            if values:
                row[path] = values[0] if len(values) == 1 else values
        tables.append((doc, row))
    evaluator = Evaluator(query, columns, eql=True)
    _check_eql_fields(expr, columns, query)
    selected = []
    for doc, row in tables:
        categories = row.get("event.category")
        categories = categories if isinstance(categories, list) else [categories]
        if category.lower() != "any" and category.lower() not in [str(c).lower() for c in categories if c]:
            continue
        if evaluator.value(expr, row) is True:
            selected.append(doc)
    selected.sort(key=lambda d: (str((d.values("@timestamp") or [""])[0]), d.seq_no))
    return selected[:size]


def _check_eql_fields(expr: Expr, columns: dict[str, str], query: str) -> None:
    if expr.kind == "col" and expr.value not in columns:
        raise EsError(400, "verification_exception", f"Found 1 problem\nline 1:{expr.pos + 1}: Unknown column [{expr.value}]")
    for arg in expr.args:
        _check_eql_fields(arg, columns, query)
