"""A Lucene `query_string` subset for the Elasticsearch emulator (what pySigma's Lucene backend emits).

field:value, field:(a OR b), quoted phrases, wildcards (* ?) with backslash escapes, /regex/,
ranges [a TO b] {a TO b} and >=x, _exists_:field, AND/OR/NOT/&&/||/!, +/- prefixes, parentheses.
Keyword fields match exactly and case-sensitively (as real ECS keyword fields do); `.caseless`
sub-fields and text fields do not.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from typing import Any

from emulators.elastic_store import (
    Doc,
    EsError,
    _coerce,
    _doc_value,
    field_view,
    flatten_source,
    tokens,
)

SPECIAL = set('+-&|!(){}[]^"~*?:\\/ ')


def _error(query: str, reason: str) -> EsError:
    return EsError(
        400, "query_shard_exception", f"Failed to parse query [{query}]",
        caused_by={"type": "parse_exception", "reason": reason},
    )


@dataclass
class Token:
    kind: str  # TERM PHRASE REGEX LP RP COLON AND OR NOT PLUS MINUS RANGE CMP
    text: str = ""
    chars: tuple[tuple[str, bool], ...] = ()  # (char, escaped) for TERM


def _delimited(query: str, start: int, closer: str, keep_escapes: bool, what: str) -> tuple[str, int]:
    """The text between query[start] and the next unescaped `closer`, and the index after it."""
    j, buf = start + 1, []
    while j < len(query) and query[j] != closer:
        if query[j] == "\\" and j + 1 < len(query):
            buf.append(query[j : j + 2] if keep_escapes else query[j + 1])
            j += 2
            continue
        buf.append(query[j])
        j += 1
    if j >= len(query):
        raise _error(query, f"Lexical error: unterminated {what}")
    return "".join(buf), j + 1


def tokenize(query: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    n = len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
            continue
        if c == "(":
            out.append(Token("LP"))
            i += 1
        elif c == ")":
            out.append(Token("RP"))
            i += 1
        elif c == ":":
            out.append(Token("COLON"))
            i += 1
        elif query.startswith("&&", i):
            out.append(Token("AND"))
            i += 2
        elif query.startswith("||", i):
            out.append(Token("OR"))
            i += 2
        elif c == "!":
            out.append(Token("NOT"))
            i += 1
        elif c == "+" and (not out or out[-1].kind != "COLON"):
            out.append(Token("PLUS"))
            i += 1
        elif c == "-" and (not out or out[-1].kind != "COLON"):
            out.append(Token("MINUS"))
            i += 1
        elif c == '"':
            text, i = _delimited(query, i, '"', keep_escapes=False, what="phrase")
            out.append(Token("PHRASE", text))
        elif c == "/" and (not out or out[-1].kind in ("COLON", "LP", "AND", "OR", "NOT")):
            text, i = _delimited(query, i, "/", keep_escapes=True, what="regular expression")
            out.append(Token("REGEX", text))
        elif c in "[{":
            j = query.find("]" if c == "[" else "}", i)
            close = j if j != -1 else -1
            other = query.find("}" if c == "[" else "]", i)
            if close == -1 and other == -1:
                raise _error(query, "Lexical error: unterminated range")
            end = min(x for x in (close, other) if x != -1)
            out.append(Token("RANGE", query[i : end + 1]))
            i = end + 1
        elif c in "<>":
            match = re.match(r"(>=|<=|>|<)([^\s()]+)", query[i:])
            if not match:
                raise _error(query, "Lexical error at a comparison")
            out.append(Token("CMP", match.group(1), ((match.group(2), False),)))
            i += match.end()
        else:
            chars: list[tuple[str, bool]] = []
            while i < n:
                c = query[i]
                if c == "\\" and i + 1 < n:
                    chars.append((query[i + 1], True))
                    i += 2
                    continue
                if c.isspace() or c in '()":' or (c in "[{" and not chars):
                    break
                chars.append((c, False))
                i += 1
            text = "".join(ch for ch, _ in chars)
            unescaped = all(not esc for _, esc in chars)
            if unescaped and text in ("AND", "OR", "NOT"):
                out.append(Token(text))
            else:
                out.append(Token("TERM", text, tuple(chars)))
    return out


class Node:
    def evaluate(self, doc: Doc, default_field: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class BoolNode(Node):
    op: str
    children: list[Node]

    def evaluate(self, doc: Doc, default_field: str) -> bool:
        if self.op == "AND":
            return all(c.evaluate(doc, default_field) for c in self.children)
        return any(c.evaluate(doc, default_field) for c in self.children)


@dataclass
class NotNode(Node):
    child: Node

    def evaluate(self, doc: Doc, default_field: str) -> bool:
        return not self.child.evaluate(doc, default_field)


@dataclass
class FieldNode(Node):
    field: str | None
    inner: Node

    def evaluate(self, doc: Doc, default_field: str) -> bool:
        return self.inner.evaluate(doc, self.field or default_field)


@dataclass
class ValueNode(Node):
    token: Token

    def evaluate(self, doc: Doc, default_field: str) -> bool:
        for path in _fields(doc, default_field):
            if self._one(doc, path):
                return True
        return False

    def _one(self, doc: Doc, path: str) -> bool:
        tok = self.token
        if path == "_exists_":
            return bool(field_view(doc, tok.text).values)
        view = field_view(doc, path)
        if not view.values:
            return False
        insensitive = view.kind in ("caseless", "text")
        if tok.kind == "REGEX":
            regex = re.compile("^(?:" + tok.text + ")$", re.S | (re.I if insensitive else 0))
            return any(regex.match(str(v)) for v in _candidates(view))
        if tok.kind == "RANGE" or tok.kind == "CMP":
            return _range_match(view, path, tok)
        if tok.kind == "PHRASE":
            if view.kind == "text":
                wanted = tokens(tok.text)
                return any(
                    any(tokens(v)[i : i + len(wanted)] == wanted for i in range(len(tokens(v)) - len(wanted) + 1))
                    for v in view.values
                )
            return _exact(view, path, tok.text)
        wildcard = any(ch in "*?" and not esc for ch, esc in tok.chars)
        if wildcard:
            pattern = "".join(
                re.escape(ch) if esc else (".*" if ch == "*" else "." if ch == "?" else re.escape(ch)) for ch, esc in tok.chars
            )
            regex = re.compile("^" + pattern + "$", re.S | (re.I if insensitive else 0))
            return any(regex.match(str(v)) for v in _candidates(view))
        if view.kind == "text":
            return tok.text.lower() in [t for v in view.values for t in tokens(v)]
        return _exact(view, path, tok.text)


def _candidates(view: Any) -> list[str]:
    if view.kind == "text":
        return [t for v in view.values for t in tokens(v)]
    return [str(v) for v in view.values]


def _exact(view: Any, path: str, text: str) -> bool:
    if view.kind in ("numeric", "date", "boolean", "ip"):
        try:
            wanted = _coerce(view.kind, text, path)
        except EsError:
            return False
        return wanted in [_doc_value(view.kind, v) for v in view.values]
    if view.kind == "caseless":
        return text.lower() in [str(v).lower() for v in view.values]
    return text in [str(v) for v in view.values]


def _range_match(view: Any, path: str, tok: Token) -> bool:
    kind = view.kind if view.kind in ("numeric", "date", "ip") else "keyword"

    def bound(text: str) -> Any:
        return None if text == "*" else (_coerce(kind, text, path) if kind != "keyword" else text)

    if tok.kind == "CMP":
        op = {">=": "gte", ">": "gt", "<=": "lte", "<": "lt"}[tok.text]
        checks = [(op, bound(tok.chars[0][0]))]
    else:
        match = re.match(r"^([\[{])\s*(\S+)\s+TO\s+(\S+)\s*([\]}])$", tok.text)
        if not match:
            raise _error(tok.text, "malformed range")
        low, high = bound(match.group(2)), bound(match.group(3))
        checks = [("gte" if match.group(1) == "[" else "gt", low), ("lte" if match.group(4) == "]" else "lt", high)]
    for raw in view.values:
        value = _doc_value(kind, raw) if kind != "keyword" else str(raw)
        if value is None:
            continue
        ok = True
        for op, limit in checks:
            if limit is None:
                continue
            ok = ok and {"gte": value >= limit, "gt": value > limit, "lte": value <= limit, "lt": value < limit}[op]
        if ok:
            return True
    return False


def _fields(doc: Doc, field: str) -> list[str]:
    if field == "_exists_":
        return ["_exists_"]
    if field in ("*", "_all") or any(ch in field for ch in "*?"):
        pattern = "*" if field == "_all" else field
        return [p for p in doc.flat() if fnmatch.fnmatchcase(p, pattern)]
    return [field]


class _Parser:
    def __init__(self, query: str, default_operator: str) -> None:
        self.query = query
        self.tokens = tokenize(query)
        self.pos = 0
        self.default = "AND" if str(default_operator).upper() == "AND" else "OR"

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str | None = None) -> Token:
        tok = self.peek()
        if tok is None or (kind and tok.kind != kind):
            raise _error(self.query, f"Encountered unexpected token at position {self.pos}: expected {kind or 'a term'}")
        self.pos += 1
        return tok

    def parse(self) -> Node:
        node = self.expression()
        if self.peek() is not None:
            raise _error(self.query, f"Encountered \" {self.peek().kind} \" at position {self.pos}")  # type: ignore[union-attr]
        return node

    def expression(self) -> Node:
        ors: list[Node] = [self.conjunction()]
        while True:
            tok = self.peek()
            if tok is None or tok.kind == "RP":
                break
            if tok.kind == "OR":
                self.take()
                ors.append(self.conjunction())
            elif self.default == "OR":
                ors.append(self.conjunction())
            else:
                break
        return ors[0] if len(ors) == 1 else BoolNode("OR", ors)

    def conjunction(self) -> Node:
        ands: list[Node] = [self.unary()]
        while True:
            tok = self.peek()
            if tok is not None and tok.kind == "AND":
                self.take()
                ands.append(self.unary())
            elif tok is not None and self.default == "AND" and tok.kind not in ("RP", "OR"):
                ands.append(self.unary())
            elif tok is not None and tok.kind in ("PLUS", "MINUS"):
                ands.append(self.unary())
            else:
                break
        return ands[0] if len(ands) == 1 else BoolNode("AND", ands)

    def unary(self) -> Node:
        tok = self.peek()
        if tok is not None and tok.kind in ("NOT", "MINUS"):
            self.take()
            return NotNode(self.unary())
        if tok is not None and tok.kind == "PLUS":
            self.take()
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "LP":
            node = self.expression()
            self.take("RP")
            return node
        if tok.kind == "TERM" and self.peek() is not None and self.peek().kind == "COLON":  # type: ignore[union-attr]
            self.take("COLON")
            field = tok.text
            nxt = self.peek()
            if nxt is not None and nxt.kind == "LP":
                self.take("LP")
                inner = self.expression()
                self.take("RP")
                return FieldNode(field, inner)
            if nxt is not None and nxt.kind in ("TERM", "PHRASE", "REGEX", "RANGE", "CMP"):
                return FieldNode(field, ValueNode(self.take()))
            raise _error(self.query, f"field [{field}] has no value")
        if tok.kind in ("TERM", "PHRASE", "REGEX", "RANGE", "CMP"):
            return ValueNode(tok)
        raise _error(self.query, f"Encountered \" {tok.kind} \" where a term was expected")


@functools.lru_cache(maxsize=256)
def parse_lucene(query: str, default_operator: str = "or") -> Node:
    """The query's tree, parsed once per text (a search evaluates it on every document)."""
    if not query.strip():
        return BoolNode("OR", [])
    return _Parser(query, default_operator).parse()
