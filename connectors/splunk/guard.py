"""The read-only SPL guard: it parses the search and checks every command of every sub-pipeline.

Agents hunt with SPL that a model may have written from attacker-controlled log text, so the guard
is a security boundary and works by parsing, not by first words:

* a tokenizer reads the text as splunkd does: double-quoted strings with backslash escapes,
  backtick macros, ```` ``` ```` comments, `|` and `[ ]`; where two readings are possible (a
  backslash before a structural character outside a string, a comment holding quotes or pipes, a
  comment marker inside a string) the search is refused instead of guessed;
* every `[ ... ]` is a pipeline of its own and is walked recursively: subsearches and the bodies of
  `append`, `appendcols`, `appendpipe`, `join`, `union`, `multisearch`, `set`, `foreach` alike.
  The first word of a bracket is a command when it has the shape of one (`[ delete ]` runs
  `delete`), so only search terms start an implicit `search`;
* every command must be on an allowlist (kept as data below); a command it does not know is refused
  like one that writes. Some commands are read-only only in some forms and have a rule of their
  own: `from` / `union` read data models and lookups but not saved searches, `foreach` substitutes
  only field names the search itself lists. `map` stays refused: it runs searches whose text the
  result rows (attacker-controlled data) write;
* macros (`` `name(args)` ``, anywhere outside strings) must be allowlisted by name, and their
  arguments must be plain values: an argument is pasted into the macro's definition, so a pipe or a
  bracket in it would add commands the guard never saw. Macros inside quoted strings are not
  expanded by Splunk and are data.

`inputlookup` is allowed: it reads a lookup and writes nothing (its write twin `outputlookup` is
refused). Refusals raise `QueryRefused` naming what was refused and why; the tool layer records
them in the audit log.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Union

from siemcrew.connectors.base import QueryRefused
from siemcrew.connectors.guardtext import refuse_control_characters, refuse_lookalike

READ_ONLY_COMMANDS = frozenset(
    """
    search where eval fields table rename sort head tail reverse dedup uniq stats eventstats streamstats
    chart timechart top rare bin bucket rex regex spath makemv mvexpand mvcombine nomv fillnull filldown
    convert lookup inputlookup tstats transaction join append appendcols appendpipe union multisearch
    makeresults addinfo addtotals addcoltotals iplocation format return xyseries untable transpose accum
    delta autoregress strcat typer tags geostats foreach fieldsummary contingency correlate rangemap
    extract kv xmlkv xpath multikv erex localize set eventcount metadata from datamodel cluster
    """.split()
)

# Commands refused with a specific reason (anything else off the allowlist is refused generically).
REFUSED_COMMANDS: dict[str, str] = {
    "delete": "deletes indexed events",
    "outputlookup": "writes a lookup",
    "outputcsv": "writes a file on the search head",
    "outputtext": "writes a file on the search head",
    "collect": "writes events into an index",
    "summaryindex": "writes events into an index",
    "tscollect": "writes a tsidx namespace",
    "mcollect": "writes metrics into an index",
    "meventcollect": "writes metrics into an index",
    "sendemail": "sends email",
    "sendalert": "triggers an alert action",
    "script": "runs a script",
    "run": "runs a script",
    "runshellscript": "runs a script",
    "rest": "calls the REST API",
    "map": "runs searches built from result rows (their values are pasted into its search text, which no guard can check)",
    "savedsearch": "runs a saved search whose text is not checked",
    "loadjob": "loads the results of another search or saved search whose text is not checked",
    "dbxquery": "queries an external database",
    "dbxoutput": "writes to an external database",
    "dbxlookup": "queries an external database",
    "curl": "sends HTTP requests",
    "fit": "trains and stores a model",
    "deletemodel": "deletes a stored model",
    "dump": "writes files on the search head",
    "crawl": "crawls the filesystem",
    "outputtelemetry": "sends telemetry",
}

# `from <type>:<name>` and `union <type>:<name>`: the dataset kinds that are data, not searches.
READ_DATASET_TYPES = frozenset({"datamodel", "lookup", "inputlookup"})
REFUSED_DATASET_TYPES = {"savedsearch": "runs a saved search whose text is not checked"}
UNION_OPTIONS = frozenset({"maxtime", "maxout", "timeout"})
# foreach options that would substitute data (values, or names matched by wildcards) into its body,
# or rename the templates so that an innocent-looking word in the body is replaced at run time.
FOREACH_REFUSED_OPTIONS = frozenset({"fieldstr", "matchstr", "matchseg1", "matchseg2", "matchseg3", "itemstr"})
FOREACH_MODES = frozenset({"multifield"})

STRUCTURAL = '|[]"`\\'
MAX_DEPTH = 12
COMMAND_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LEADING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*")
MACRO_CALL = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.:-]*)(?:\((.*)\))?$", re.S)
MACRO_ARG = re.compile(r'^\s*(?:[A-Za-z0-9_.*:@/-]+|"[^"\\|\[\]`$\r\n]*")\s*$')
FIELD_NAME = re.compile(r"^[A-Za-z0-9_.:@-]+$")
COMMENT_FORBIDDEN = set('"|[]`')

TokenKind = Literal["word", "string", "macro", "pipe", "open", "close"]


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Pipeline:
    """Commands split on top-level pipes; `[ ... ]` groups are nested pipelines inside a command."""

    commands: tuple[tuple["Item", ...], ...]
    generating: bool  # the text starts with `|`: its first command is a command, not search terms
    start: int


Item = Union[Token, Pipeline]


def tokenize(text: str) -> list[Token]:
    """SPL text -> tokens; comments are dropped; anything read two ways raises `QueryRefused`."""
    refuse_control_characters(text, "SPL")
    tokens: list[Token] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char.isspace():
            index += 1
        elif text.startswith("```", index):
            index = _comment_end(text, index)
        elif char == '"':
            end = _string_end(text, index)
            tokens.append(Token("string", text[index:end], index, end))
            index = end
        elif char == "`":
            end = text.find("`", index + 1)
            if end == -1:
                raise QueryRefused(f"SPL refused: unbalanced backtick at offset {index}")
            tokens.append(Token("macro", text[index + 1 : end], index, end + 1))
            index = end + 1
        elif char in "|[]":
            kind: TokenKind = "pipe" if char == "|" else "open" if char == "[" else "close"
            tokens.append(Token(kind, char, index, index + 1))
            index += 1
        else:
            end = _word_end(text, index)
            tokens.append(Token("word", text[index:end], index, end))
            index = end
    return tokens


def _word_end(text: str, index: int) -> int:
    while index < len(text) and not text[index].isspace() and text[index] not in '|[]"`':
        char = text[index]
        if char == "\\":
            following = text[index + 1 : index + 2]
            if following and following in STRUCTURAL and following != "\\":
                raise QueryRefused(
                    f"SPL refused: backslash before {following!r} outside a quoted string at offset {index} "
                    "(ambiguous escape: splunkd and the guard could split the search differently)"
                )
            index += 2 if following == "\\" else 1
            continue
        refuse_lookalike(char, STRUCTURAL, "SPL", index)
        index += 1
    return index


def _string_end(text: str, start: int) -> int:
    index = start + 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == '"':
            if "```" in text[start : index + 1]:
                raise QueryRefused(
                    f"SPL refused: comment marker ``` inside the quoted string at offset {start} "
                    "(ambiguous: it could also start a comment)"
                )
            return index + 1
        index += 1
    raise QueryRefused(f"SPL refused: unterminated quoted string at offset {start}")


def _comment_end(text: str, start: int) -> int:
    end = text.find("```", start + 3)
    if end == -1:
        raise QueryRefused(f"SPL refused: unterminated ``` comment at offset {start}")
    body = text[start + 3 : end]
    if COMMENT_FORBIDDEN & set(body):
        raise QueryRefused(
            f"SPL refused: the comment at offset {start} holds quotes, pipes, brackets or backticks "
            "(ambiguous: the guard cannot know how splunkd reads them)"
        )
    before = text[start - 1 : start]
    after = text[end + 3 : end + 4]
    if before and after and not before.isspace() and not after.isspace() and before not in "|[]" and after not in "|[]":
        raise QueryRefused(f"SPL refused: the comment at offset {start} is glued between two words")
    return end + 3


def parse(tokens: list[Token], position: int = 0, depth: int = 0, nested: bool = False) -> tuple[Pipeline, int]:
    """Tokens -> a Pipeline (recursively for `[ ... ]`); returns it and the position after it."""
    start = tokens[position].start if position < len(tokens) else 0
    generating = position < len(tokens) and tokens[position].kind == "pipe"
    if generating:
        position += 1
    commands: list[list[Item]] = [[]]
    while position < len(tokens):
        token = tokens[position]
        if token.kind == "pipe":
            commands.append([])
            position += 1
        elif token.kind == "open":
            if depth >= MAX_DEPTH:
                raise QueryRefused(f"SPL refused: subsearches nested deeper than {MAX_DEPTH}")
            inner, position = parse(tokens, position + 1, depth + 1, nested=True)
            commands[-1].append(inner)
        elif token.kind == "close":
            if not nested:
                raise QueryRefused(f"SPL refused: unbalanced ']' at offset {token.start}")
            return Pipeline(tuple(tuple(c) for c in commands), generating, start), position + 1
        else:
            commands[-1].append(token)
            position += 1
    if nested:
        raise QueryRefused(f"SPL refused: unbalanced '[' (subsearch at offset {start} is never closed)")
    return Pipeline(tuple(tuple(c) for c in commands), generating, start), position


@dataclass(frozen=True)
class SplGuard:
    """Checks SPL text; raises `QueryRefused` with the reason, returns None when the search reads only."""

    allowed_macros: frozenset[str] = frozenset({"notable"})
    allowed_commands: frozenset[str] = READ_ONLY_COMMANDS

    def check(self, spl: str) -> None:
        tokens = tokenize(spl)
        if not tokens:
            raise QueryRefused("SPL refused: the search is empty")
        pipeline, _ = parse(tokens)
        self._check_pipeline(pipeline, in_foreach=False)

    # -- pipelines and commands ---------------------------------------------------------------
    def _check_pipeline(self, pipeline: Pipeline, in_foreach: bool) -> None:
        for position, command in enumerate(pipeline.commands):
            if not command:
                raise QueryRefused(f"SPL refused: empty command between pipes (in the pipeline at offset {pipeline.start})")
            implicit_search = position == 0 and not pipeline.generating and not in_foreach
            name = self._command(command, implicit_search)
            for item in command:
                if isinstance(item, Pipeline):
                    if in_foreach:
                        raise QueryRefused("SPL refused: a subsearch inside a `foreach` body (its output would be pasted into a template)")
                    self._check_pipeline(item, in_foreach=name == "foreach")
                elif item.kind == "macro":
                    self._check_macro(item)

    def _command(self, command: tuple[Item, ...], implicit_search: bool) -> str | None:
        """The command's name once it passed its checks; None for a macro standing as a command."""
        first = command[0]
        if isinstance(first, Token) and first.kind == "macro":
            return None
        name = _command_name(first)
        if name is None or (implicit_search and name == "NOT"):
            if not implicit_search:
                shown = first.text if isinstance(first, Token) else "[...]"
                raise QueryRefused(f"SPL refused: expected a command name, found {shown!r}")
            _refuse_refused_prefix(first)
            return "search"
        lowered = name.lower()
        if lowered in REFUSED_COMMANDS:
            raise QueryRefused(f"SPL refused: `{lowered}` {REFUSED_COMMANDS[lowered]}; siemcrew searches are read-only")
        if lowered not in self.allowed_commands:
            raise QueryRefused(f"SPL refused: `{lowered}` is not on the read-only command allowlist")
        rule = COMMAND_RULES.get(lowered)
        if rule is not None:
            rule(command[1:])
        return lowered

    def _check_macro(self, token: Token) -> None:
        call = MACRO_CALL.match(token.text)
        if call is None:
            raise QueryRefused(f"SPL refused: malformed macro call `{token.text}`")
        name, args = call.group(1), call.group(2)
        if name not in self.allowed_macros:
            raise QueryRefused(
                f"SPL refused: macro `{name}` is not allowed (a macro can expand to any command; "
                f"allowed macros: {', '.join(sorted(self.allowed_macros)) or 'none'})"
            )
        for arg in _split_args(args or ""):
            if not MACRO_ARG.match(arg):
                raise QueryRefused(
                    f"SPL refused: macro `{name}` argument {arg.strip()!r} is not a plain value "
                    "(arguments are pasted into the macro's SPL, so they may not carry pipes, brackets, "
                    "backticks or tokens)"
                )


def _command_name(item: Item) -> str | None:
    """A word (or a quoted word) shaped like a command name, as written."""
    if not isinstance(item, Token):
        return None
    text = _unquote(item.text) if item.kind == "string" else item.text if item.kind == "word" else ""
    return text if COMMAND_NAME.match(text) else None


def _refuse_refused_prefix(item: Item) -> None:
    """Search terms glued to a write command's name (`delete=1`) are refused, not guessed at."""
    if isinstance(item, Token) and item.kind == "word":
        lead = LEADING_NAME.match(item.text)
        if lead and lead.group(0).lower() in REFUSED_COMMANDS:
            raise QueryRefused(
                f"SPL refused: `{lead.group(0).lower()}` {REFUSED_COMMANDS[lead.group(0).lower()]}; "
                f"{item.text!r} starts with it where a command name goes"
            )


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.S)


def _split_args(args: str) -> list[str]:
    """Macro arguments split on commas outside double quotes (a trailing empty one is kept)."""
    if not args.strip():
        return []
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in args:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _words(items: tuple[Item, ...]) -> list[tuple[str, list[Item]]]:
    """Arguments as written: tokens with no space between them form one word (`datamodel:"X"`)."""
    words: list[tuple[str, list[Item]]] = []
    previous_end = -1
    for item in items:
        if isinstance(item, Pipeline):
            words.append(("[...]", [item]))
            previous_end = -1
            continue
        text = _unquote(item.text) if item.kind == "string" else item.text
        if words and item.start == previous_end and words[-1][0] != "[...]":
            words[-1] = (words[-1][0] + text, words[-1][1] + [item])
        else:
            words.append((text, [item]))
        previous_end = item.end
    return words


def _check_dataset(word: str, command: str) -> None:
    kind, colon, name = word.partition(":")
    kind = kind.strip().lower()
    if kind in REFUSED_DATASET_TYPES:
        raise QueryRefused(f"SPL refused: `{command} {word}` {REFUSED_DATASET_TYPES[kind]}")
    if not colon or kind not in READ_DATASET_TYPES or not name.strip():
        raise QueryRefused(
            f"SPL refused: `{command} {word}`: only {', '.join(sorted(READ_DATASET_TYPES))} datasets are read "
            "(a dataset without one of these types may be a saved search)"
        )


def _check_from(args: tuple[Item, ...]) -> None:
    """`from <type>:<name>`: a data model or lookup, never a saved search."""
    words = _words(args)
    if not words:
        raise QueryRefused("SPL refused: `from` without a dataset")
    for word, _ in words:
        _check_dataset(word, "from")


def _check_union(args: tuple[Item, ...]) -> None:
    """`union` of subsearches (walked like any) and datasets (read-only kinds only)."""
    for word, items in _words(args):
        if isinstance(items[0], Pipeline):
            continue
        key, equals, _ = word.partition("=")
        if equals and key.lower() in UNION_OPTIONS:
            continue
        _check_dataset(word, "union")


def _check_foreach(args: tuple[Item, ...]) -> None:
    """`foreach` pastes field names into its body: only names the search lists, in multifield mode."""
    bodies = 0
    for word, items in _words(args):
        if isinstance(items[0], Pipeline):
            bodies += 1
            continue
        key, equals, value = word.partition("=")
        if equals:
            if key.lower() == "mode" and value.lower() in FOREACH_MODES:
                continue
            why = ("renames the templates" if key.lower() in FOREACH_REFUSED_OPTIONS
                   else "substitutes field values or unknown options into the body")
            raise QueryRefused(f"SPL refused: `foreach {word}` {why}")
        if not FIELD_NAME.match(word):
            raise QueryRefused(
                f"SPL refused: `foreach` field {word!r}: only plain field names, no wildcards "
                "(names matched from the data would be pasted into the body)"
            )
    if bodies != 1:
        raise QueryRefused("SPL refused: `foreach` needs exactly one [ ... ] body")


COMMAND_RULES: dict[str, Callable[[tuple[Item, ...]], None]] = {
    "from": _check_from,
    "union": _check_union,
    "foreach": _check_foreach,
}
