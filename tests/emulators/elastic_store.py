"""The data side of the Elasticsearch emulator: indices, field types, and query-DSL evaluation.

Written independently of siemcrew's connector so that the two cannot share a bug. It evaluates what
it is sent over the stored documents (bool/term/terms/range/match/match_phrase/exists/wildcard/
prefix/ids/query_string), sorts (with search_after and the PIT `_shard_doc` tiebreaker) and
aggregates (terms, multi_terms, composite, date_histogram, cardinality, value_count, min, max,
avg, sum). Unknown queries and aggregations fail the way Elasticsearch fails: a 400 with the error
envelope.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import math
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

MAX_RESULT_WINDOW = 10_000
DEFAULT_TRACK_TOTAL = 10_000
TEXT_FIELDS_BY_NAME = {"message", "error.message"}
NUMERIC = {"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float", "unsigned_long"}


class EsError(Exception):
    """An Elasticsearch error answer: status + the error envelope."""

    def __init__(self, status: int, kind: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.kind = kind
        self.reason = reason
        self.extra = extra

    def body(self) -> dict[str, Any]:
        cause = {"type": self.kind, "reason": self.reason, **{k: v for k, v in self.extra.items() if k != "caused_by"}}
        error: dict[str, Any] = {"root_cause": [dict(cause)], **cause}
        if "caused_by" in self.extra:
            error["caused_by"] = self.extra["caused_by"]
        return {"error": error, "status": self.status}


def parsing_error(reason: str) -> EsError:
    return EsError(400, "parsing_exception", reason, line=1, col=1)


def index_missing(name: str) -> EsError:
    return EsError(
        404, "index_not_found_exception", f"no such index [{name}]",
        **{"resource.type": "index_or_alias", "resource.id": name, "index_uuid": "_na_", "index": name},
    )


# -- time -------------------------------------------------------------------------------------
def parse_date(value: Any) -> datetime | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int, float)):
        return _parse_date(value)
    return _parse_date.__wrapped__(value)


@functools.lru_cache(maxsize=65536)
def _parse_date(value: Any) -> datetime | None:
    """parse_date, remembered: a search reads every document's time stamp, again for every query."""
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000.0, tz=timezone.utc)
    text = str(value).strip()
    if not re.match(r"^\d{4}-\d{2}-\d{2}([T ][\d:.,]+)?(Z|[+-]\d{2}:?\d{2})?$", text):
        return None
    text = text.replace(" ", "T")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    match = re.match(r"^(.*\.\d{6})\d+(.*)$", text)  # nanoseconds -> micro
    if match:
        text = match.group(1) + match.group(2)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def epoch_ms(moment: datetime) -> int:
    return int(round(moment.timestamp() * 1000))


def iso_ms(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def date_math(text: str, now: datetime | None = None) -> datetime | None:
    """`now-24h`, `now-15m/m`, `2025-06-01T00:00:00Z||+1d` (the common forms)."""
    now = now or datetime.now(timezone.utc)
    anchor_text, _, math_part = text.partition("||")
    if text.startswith("now"):
        anchor, math_part = now, text[3:]
    else:
        anchor = parse_date(anchor_text)
        if anchor is None:
            return None
    for sign, amount, unit in re.findall(r"([+-])(\d+)(ms|[smhdwMy])", math_part):
        seconds = int(amount) * {"M": 2592000, "y": 31536000}.get(unit, _UNITS.get(unit, 0))
        anchor = anchor + timedelta(seconds=seconds if sign == "+" else -seconds)
    rounding = re.search(r"/([smhdw])$", math_part)
    if rounding:
        step = _UNITS[rounding.group(1)]
        anchor = datetime.fromtimestamp(math.floor(anchor.timestamp() / step) * step, tz=timezone.utc)
    return anchor


def interval_ms(text: str) -> int:
    match = re.match(r"^(\d+)(ms|s|m|h|d)$", str(text))
    if not match:
        raise parsing_error(f"failed to parse setting [date_histogram.fixed_interval] with value [{text}]")
    return int(match.group(1)) * int(_UNITS[match.group(2)] * 1000)


CALENDAR = {"minute": "1m", "1m": "1m", "hour": "1h", "1h": "1h", "day": "1d", "1d": "1d", "week": "7d", "1w": "7d"}


# -- documents and indices ---------------------------------------------------------------------
def leaf_values(node: Any, parts: list[str]) -> list[Any]:
    """Values at a dotted path through nested objects, flat dotted keys and arrays."""
    if not parts:
        if isinstance(node, list):
            out: list[Any] = []
            for item in node:
                out.extend(leaf_values(item, []))
            return out
        return [] if node is None or isinstance(node, dict) else [node]
    if isinstance(node, list):
        collected: list[Any] = []
        for item in node:
            collected.extend(leaf_values(item, parts))
        return collected
    if not isinstance(node, dict):
        return []
    found: list[Any] = []
    for cut in range(1, len(parts) + 1):
        key = ".".join(parts[:cut])
        if key in node:
            found.extend(leaf_values(node[key], parts[cut:]))
    return found


def flatten_source(doc: Any, prefix: str = "") -> dict[str, list[Any]]:
    """Every leaf path of a document with all its values (arrays merged)."""
    out: dict[str, list[Any]] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            for path, values in flatten_source(value, f"{prefix}{key}.").items():
                out.setdefault(path, []).extend(values)
    elif isinstance(doc, list):
        for item in doc:
            for path, values in flatten_source(item, prefix).items():
                out.setdefault(path, []).extend(values)
    elif doc is not None:
        out[prefix[:-1]] = [doc]
    return out


def infer_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str) and parse_date(value) is not None:
        return "date"
    return "keyword"


def mapping_types(properties: dict[str, Any], prefix: str = "") -> dict[str, str]:
    types: dict[str, str] = {}
    for name, spec in (properties or {}).items():
        path = f"{prefix}{name}"
        if "properties" in spec:
            types.update(mapping_types(spec["properties"], path + "."))
        elif spec.get("type") == "object" or spec.get("enabled") is False:
            types[path] = "object"
        else:
            types[path] = spec.get("type", "object")
            for sub, sub_spec in (spec.get("fields") or {}).items():
                types[f"{path}.{sub}"] = sub_spec.get("type", "keyword")
    return types


@dataclass
class Doc:
    index: "Index"
    id: str
    source: dict[str, Any]
    seq_no: int
    version: int = 1
    _flat: dict[str, list[Any]] | None = field(default=None, repr=False, compare=False)
    _times: tuple[int, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def shard_doc(self) -> int:
        return (self.index.ordinal << 32) + self.seq_no

    def flat(self) -> dict[str, list[Any]]:
        """Every leaf path with its values (a document is never changed in place, so this is cached)."""
        if self._flat is None:
            self._flat = flatten_source(self.source)
        return self._flat

    def values(self, path: str) -> list[Any]:
        return self.flat().get(path, [])

    def times_ms(self) -> tuple[int, ...]:
        """`@timestamp` as epoch milliseconds (cached: documents are never changed in place)."""
        if self._times is None:
            self._times = tuple(t for t in (_doc_value("date", v) for v in self.values("@timestamp")) if t is not None)
        return self._times


@dataclass
class Index:
    name: str
    ordinal: int
    mappings: dict[str, Any] = field(default_factory=dict)
    docs: dict[str, Doc] = field(default_factory=dict)
    seq: int = 0
    data_stream: bool = False
    _types: dict[str, str | None] = field(default_factory=dict, repr=False)  # dynamic types, until the next write
    _explicit: dict[str, str] | None = field(default=None, repr=False)
    _views: dict[str, tuple[str, str | None]] = field(default_factory=dict, repr=False)

    @property
    def dynamic(self) -> bool:
        return self.mappings.get("dynamic", True) not in (False, "false", "strict")

    def explicit_types(self) -> dict[str, str]:
        if self._explicit is None:
            self._explicit = mapping_types(self.mappings.get("properties") or {})
        return self._explicit

    def field_type(self, path: str) -> str | None:
        """The type a field has in this index (explicit mapping, else what dynamic mapping made of it).

        Sub-fields (`.keyword`, `.caseless`, ...) exist only where the mapping declares them as
        multi-fields: an ECS `.caseless` is Elastic Defend's, Winlogbeat indices have none.
        """
        explicit = self.explicit_types()
        if path in explicit:
            return explicit[path]
        if not self.dynamic:
            return None
        if path in TEXT_FIELDS_BY_NAME:
            return "text"
        if path not in self._types:
            self._types[path] = None
            for doc in self.docs.values():
                values = leaf_values(doc.source, path.split("."))
                if values:
                    self._types[path] = self.dynamic_type(path, values[0])
                    break
        return self._types[path]

    def view_of(self, path: str) -> tuple[str, str | None]:
        cached = self._views.get(path)
        if cached is None:
            cached = self._views[path] = _view_kind(self, path)
        return cached

    def multi_field_parent(self, path: str) -> str | None:
        """`a.b` when `path` is a multi-field `a.b.<sub>` declared in the mapping, else None."""
        parent, _, _ = path.rpartition(".")
        explicit = self.explicit_types()
        if parent and path in explicit and explicit.get(parent) not in (None, "object"):
            return parent
        return None

    def dynamic_type(self, path: str, value: Any) -> str:
        """Dynamic mapping of a new field: dynamic templates first, then detection by value."""
        kind = infer_type(value)
        if kind == "date" and self.mappings.get("date_detection") is False:
            kind = "keyword"
        mapping_type = {"keyword": "string", "date": "date", "long": "long", "float": "double", "boolean": "boolean"}[kind]
        for template in self.mappings.get("dynamic_templates") or []:
            (_, spec), = template.items()
            if "path_match" in spec and not fnmatch.fnmatchcase(path, spec["path_match"]):
                continue
            if "match" in spec and not fnmatch.fnmatchcase(path.rsplit(".", 1)[-1], spec["match"]):
                continue
            if spec.get("match_mapping_type") not in (None, "*", mapping_type):
                continue
            return str((spec.get("mapping") or {}).get("type", kind))
        return kind

    def field_paths(self) -> dict[str, str]:
        """Every field this index maps: explicit ones (with multi-fields) and those dynamic mapping added."""
        paths = {k: v for k, v in self.explicit_types().items()}
        for doc in self.docs.values():
            for path, values in doc.flat().items():
                if path not in paths and values and self.dynamic:
                    paths[path] = "text" if path in TEXT_FIELDS_BY_NAME else self.dynamic_type(path, values[0])
        return {k: v for k, v in paths.items() if v}

    def put(self, doc_id: str, source: dict[str, Any]) -> tuple[Doc, bool]:
        self.seq += 1
        self._types.clear()
        self._views.clear()
        existing = self.docs.get(doc_id)
        doc = Doc(self, doc_id, source, self.seq, (existing.version + 1) if existing else 1)
        self.docs[doc_id] = doc
        return doc, existing is None


class Store:
    """All indices and aliases, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.indices: dict[str, Index] = {}
        self.aliases: dict[str, list[str]] = {}
        self.data_stream_templates: list[str] = ["logs-*-*", "metrics-*-*", "traces-*-*"]
        self._ordinal = 0

    def create(self, name: str, mappings: dict[str, Any] | None = None, data_stream: bool = False) -> Index:
        with self.lock:
            if name in self.indices or name in self.aliases:
                raise EsError(
                    400, "resource_already_exists_exception", f"index [{name}/{_uuid(name)}] already exists",
                    index=name, index_uuid=_uuid(name),
                )
            if name != name.lower() or name.startswith(("_", "-", "+")) or any(c in name for c in ' "*\\<|,>/?'):
                raise EsError(400, "invalid_index_name_exception", f"Invalid index name [{name}], must be lowercase", index=name)
            self._ordinal += 1
            index = Index(name, self._ordinal, mappings or {}, data_stream=data_stream)
            self.indices[name] = index
            return index

    def for_write(self, name: str, auto_create: bool = True) -> Index:
        with self.lock:
            if name in self.aliases:
                targets = self.aliases[name]
                if len(targets) != 1:
                    raise EsError(400, "illegal_argument_exception", f"no write index is defined for alias [{name}]")
                return self.indices[targets[0]]
            if name in self.indices:
                return self.indices[name]
            if not auto_create:
                raise index_missing(name)
            return self.create(name)

    def resolve(self, expression: str | None, ignore_unavailable: bool = False) -> list[Index]:
        with self.lock:
            names: list[str] = []
            wildcard_seen = False
            for part in [p.strip() for p in (expression or "_all").split(",") if p.strip()]:
                # like Elasticsearch: `-x` excludes only after a wildcard expression, else it is a name
                exclude = part.startswith("-") and wildcard_seen
                pattern = part[1:] if exclude else part
                wildcard_seen = wildcard_seen or any(ch in pattern for ch in "*?") or pattern == "_all"
                if exclude:  # an exclusion filters what earlier patterns found; it never fails
                    names = [n for n in names if not fnmatch.fnmatchcase(n, pattern)
                             and not any(n in self.aliases.get(a, []) for a in self.aliases if fnmatch.fnmatchcase(a, pattern))]
                    continue
                if pattern in ("_all", "*"):
                    matched = [n for n in self.indices if not n.startswith(".")]
                elif any(ch in pattern for ch in "*?"):
                    candidates = list(self.indices) + list(self.aliases)
                    matched = []
                    for candidate in candidates:
                        if candidate.startswith(".") and not pattern.startswith("."):
                            continue
                        if fnmatch.fnmatchcase(candidate, pattern):
                            matched.extend(self.aliases.get(candidate, [candidate]))
                elif pattern in self.aliases:
                    matched = list(self.aliases[pattern])
                elif pattern in self.indices:
                    matched = [pattern]
                elif ignore_unavailable:
                    matched = []
                else:
                    raise index_missing(pattern)
                if exclude:
                    names = [n for n in names if n not in matched]
                else:
                    names.extend(n for n in matched if n not in names)
            return [self.indices[n] for n in names]


def _uuid(name: str) -> str:
    import hashlib

    return hashlib.sha1(name.encode()).hexdigest()[:22]


# -- field access with types ------------------------------------------------------------------
@dataclass
class FieldView:
    kind: str  # keyword | text | caseless | numeric | date | boolean | ip | object | unmapped
    values: list[Any]


def field_view(doc: Doc, path: str) -> FieldView:
    base, kind = doc.index.view_of(path)
    if kind is None:
        return FieldView("unmapped", [])
    return FieldView(kind, doc.values(base))


def _view_kind(index: "Index", path: str) -> tuple[str, str | None]:
    """(the path values are read from, the kind queries see) for a field of an index."""
    base, kind = path, index.field_type(path)
    parent = index.multi_field_parent(path)
    if parent is not None:
        base = parent
        sub = path.rsplit(".", 1)[1]
        kind = "caseless" if sub == "caseless" else "text" if kind in ("text", "match_only_text") else kind
    if kind is None:
        return base, None
    if kind in NUMERIC:
        kind = "numeric"
    elif kind in ("wildcard", "constant_keyword"):
        kind = "keyword"
    elif kind in ("match_only_text",):
        kind = "text"
    elif kind == "date_nanos":
        kind = "date"
    return base, kind


def tokens(text: Any) -> list[str]:
    return re.findall(r"\w+", str(text).lower())


def _coerce(kind: str, value: Any, path: str) -> Any:
    try:
        if kind == "numeric":
            return float(value)
        if kind == "date":
            moment = parse_date(value) if not isinstance(value, str) or not value.startswith("now") else date_math(value)
            if moment is None and isinstance(value, str):
                moment = date_math(value)
            if moment is None:
                raise ValueError(value)
            return epoch_ms(moment)
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            raise ValueError(value)
        if kind == "ip":
            return ipaddress.ip_address(str(value))
    except ValueError:
        raise EsError(
            400, "query_shard_exception", f"failed to create query: For input string: \"{value}\" (field [{path}])"
        ) from None
    return value


def _doc_value(kind: str, value: Any) -> Any:
    try:
        if kind == "numeric":
            return float(value)
        if kind == "date":
            moment = parse_date(value)
            return epoch_ms(moment) if moment else None
        if kind == "boolean":
            return value if isinstance(value, bool) else str(value).lower() == "true"
        if kind == "ip":
            return ipaddress.ip_address(str(value))
    except (ValueError, TypeError):
        return None
    return value


@functools.lru_cache(maxsize=1024)
def wildcard_regex(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
        i += 1
    return re.compile("^" + "".join(out) + "$", re.S | (re.I if case_insensitive else 0))


# -- query DSL ---------------------------------------------------------------------------------
def _field_spec(name: str, body: Any, value_key: str = "value") -> tuple[str, Any, dict[str, Any]]:
    if not isinstance(body, dict) or len([k for k in body if k not in ("boost", "_name")]) != 1:
        raise parsing_error(f"[{name}] query doesn't support multiple fields, found [{', '.join(body) if isinstance(body, dict) else body}]")
    path = next(k for k in body if k not in ("boost", "_name"))
    spec = body[path]
    if isinstance(spec, dict):
        if value_key not in spec and not (name == "wildcard" and "wildcard" in spec):
            raise parsing_error(f"[{name}] query does not support [{', '.join(spec)}]")
        return path, spec.get(value_key, spec.get("wildcard")), spec
    return path, spec, {}


def matches(query: Any, doc: Doc) -> bool:
    return compiled(query)(doc)


def time_window(query: Any) -> tuple[int | None, int | None] | None:
    """The `@timestamp` bounds (epoch ms, inclusive) a query requires at its top level, if any."""
    if isinstance(query, dict) and "range" in query:
        query = {"bool": {"filter": [query]}}
    if not isinstance(query, dict) or not isinstance(query.get("bool"), dict):
        return None
    body = query["bool"]
    low: int | None = None
    high: int | None = None
    found = False
    for key in ("filter", "must"):
        items = body.get(key) or []
        for item in items if isinstance(items, list) else [items]:
            spec = (item.get("range") or {}).get("@timestamp") if isinstance(item, dict) else None
            if not isinstance(spec, dict) or set(spec) - {"gte", "gt", "lte", "lt", "format"}:
                continue
            try:
                lows = [_coerce("date", spec[op], "@timestamp") for op in ("gte", "gt") if spec.get(op) is not None]
                highs = [_coerce("date", spec[op], "@timestamp") for op in ("lte", "lt") if spec.get(op) is not None]
            except EsError:
                return None  # the query itself reports it
            found = True
            low = max([b for b in [low, *lows] if b is not None], default=None)
            high = min([b for b in [high, *highs] if b is not None], default=None)
    return (low, high) if found else None


def in_time(docs: Iterable[Doc], query: Any) -> list[Doc]:
    """The documents a query's top-level `@timestamp` range lets through (order kept), checked on
    cached times before the query itself is evaluated on them: an optimisation with the same answer,
    since a date range only matches documents with a time in it (others index `@timestamp` otherwise
    and are always kept)."""
    window = time_window(query)
    if window is None:
        return list(docs)
    low, high = window
    dated: dict[str, bool] = {}
    out = []
    for doc in docs:
        name = doc.index.name
        if name not in dated:
            dated[name] = doc.index.field_type("@timestamp") in ("date", "date_nanos")
        if not dated[name] or any((low is None or t >= low) and (high is None or t <= high) for t in doc.times_ms()):
            out.append(doc)
    return out


_COMPILED: dict[int, tuple[Any, Any]] = {}


def compiled(query: Any) -> Any:
    """The query as a predicate over documents, parsed once per query object (parse errors raise here)."""
    entry = _COMPILED.get(id(query))
    if entry is not None and entry[0] is query:
        return entry[1]
    predicate = _compile(query)
    if len(_COMPILED) > 4096:
        _COMPILED.clear()
    _COMPILED[id(query)] = (query, predicate)  # the query is kept alive, so its id is not reused
    return predicate


def _compile(query: Any) -> Any:
    if not isinstance(query, dict) or len(query) != 1:
        raise parsing_error("[_na] query malformed, must start with start_object")
    kind, body = next(iter(query.items()))
    if kind == "bool":
        return _compile_bool(body)
    if kind == "term":
        path, value, spec = _field_spec("term", body)
        insensitive = bool(spec.get("case_insensitive"))
        return lambda doc: _equals(field_view(doc, path), path, value, insensitive)
    if kind == "match_all":
        return lambda doc: True
    if kind == "match_none":
        return lambda doc: False
    handler = _QUERIES.get(kind)
    if handler is None:
        raise EsError(
            400, "parsing_exception", f"unknown query [{kind}]", line=1, col=1,
            caused_by={"type": "named_object_not_found_exception", "reason": f"[1:1] unknown field [{kind}]"},
        )
    return lambda doc: handler(body, doc)


def _compile_bool(body: Any) -> Any:
    allowed = {"must", "filter", "should", "must_not", "minimum_should_match", "boost", "_name"}
    if not isinstance(body, dict):
        raise parsing_error("[bool] query malformed")
    for key in body:
        if key not in allowed:
            raise parsing_error(f"[bool] query does not support [{key}]")

    def items(key: str) -> list[Any]:
        value = body.get(key) or []
        return value if isinstance(value, list) else [value]

    def clauses(key: str) -> list[Any]:
        return [_compile(q) for q in items(key)]

    # range clauses (time windows) first: the same answer, and most documents fail there cheaply
    ranges_first = sorted(items("must") + items("filter"), key=lambda q: not (isinstance(q, dict) and "range" in q))
    required, excluded, should = [_compile(q) for q in ranges_first], clauses("must_not"), clauses("should")
    default = 0 if required else 1
    minimum = body.get("minimum_should_match", default)
    minimum = int(str(minimum).rstrip("%")) if not str(minimum).endswith("%") else math.ceil(len(should) * int(str(minimum)[:-1]) / 100)

    def evaluate(doc: Doc) -> bool:
        for q in required:
            if not q(doc):
                return False
        for q in excluded:
            if q(doc):
                return False
        if not should or minimum <= 0:
            return True
        found = 0
        for q in should:  # stop at the minimum (a should clause has no side effects)
            if q(doc):
                found += 1
                if found >= minimum:
                    return True
        return False

    return evaluate


def _bool(body: dict[str, Any], doc: Doc) -> bool:
    return _compile_bool(body)(doc)


def _term(body: Any, doc: Doc) -> bool:
    path, value, spec = _field_spec("term", body)
    insensitive = bool(spec.get("case_insensitive"))
    view = field_view(doc, path)
    return _equals(view, path, value, insensitive)


def _equals(view: FieldView, path: str, value: Any, insensitive: bool) -> bool:
    if insensitive and view.kind in ("numeric", "date", "boolean", "ip"):
        raise EsError(
            400, "query_shard_exception",
            f"failed to create query: Field [{path}] of type [{view.kind}] does not support case insensitive term queries",
        )
    if view.kind == "text":
        return str(value).lower() in [t for v in view.values for t in tokens(v)]
    if view.kind == "caseless":
        return str(value).lower() in [str(v).lower() for v in view.values]
    if view.kind in ("numeric", "date", "boolean", "ip"):
        wanted = _coerce(view.kind, value, path)
        return wanted in [_doc_value(view.kind, v) for v in view.values]
    text = str(value)
    if insensitive:
        return text.lower() in [str(v).lower() for v in view.values]
    return text in [str(v) if not isinstance(v, bool) else str(v).lower() for v in view.values]


def _terms(body: dict[str, Any], doc: Doc) -> bool:
    fields = {k: v for k, v in body.items() if k not in ("boost", "_name")}
    if len(fields) != 1:
        raise parsing_error("[terms] query does not support multiple fields")
    path, values = next(iter(fields.items()))
    if not isinstance(values, list):
        raise parsing_error(f"[terms] query does not support [{path}]")
    view = field_view(doc, path)
    return any(_equals(view, path, value, False) for value in values)


def _range(body: dict[str, Any], doc: Doc) -> bool:
    fields = {k: v for k, v in body.items() if k not in ("boost", "_name")}
    if len(fields) != 1 or not isinstance(next(iter(fields.values())), dict):
        raise parsing_error("[range] query malformed")
    path, spec = next(iter(fields.items()))
    allowed = {"gte", "gt", "lte", "lt", "format", "time_zone", "relation", "boost", "from", "to", "include_lower", "include_upper"}
    unknown = set(spec) - allowed
    if unknown:
        raise parsing_error(f"[range] query does not support [{sorted(unknown)[0]}]")
    view = field_view(doc, path)
    if view.kind in ("unmapped", "object"):
        return False
    kind = view.kind if view.kind in ("numeric", "date", "ip") else "keyword"
    bounds = {op: _coerce(kind, spec[op], path) for op in ("gte", "gt", "lte", "lt") if spec.get(op) is not None}
    for raw in view.values:
        value = _doc_value(kind, raw) if kind != "keyword" else str(raw)
        if value is None:
            continue
        if all(_compare(value, op, bound) for op, bound in bounds.items()):
            return True
    return False


def _compare(value: Any, op: str, bound: Any) -> bool:
    try:
        return {"gte": value >= bound, "gt": value > bound, "lte": value <= bound, "lt": value < bound}[op]
    except TypeError:
        return False


def _exists(body: dict[str, Any], doc: Doc) -> bool:
    if "field" not in body:
        raise parsing_error("[exists] must be provided with a [field]")
    path = body["field"]
    if any(ch in path for ch in "*?"):
        flat = doc.flat()
        return any(fnmatch.fnmatchcase(k, path) and v for k, v in flat.items())
    view = field_view(doc, path)
    return bool([v for v in view.values if v is not None])


def _wildcard(body: dict[str, Any], doc: Doc) -> bool:
    path, pattern, spec = _field_spec("wildcard", body)
    view = field_view(doc, path)
    if view.kind in ("numeric", "date", "boolean", "ip"):
        raise EsError(400, "query_shard_exception", f"Can only use wildcard queries on keyword and text fields - not on [{path}] which is of type [{view.kind}]")
    insensitive = bool(spec.get("case_insensitive")) or view.kind == "caseless"
    regex = wildcard_regex(str(pattern), insensitive)
    values = [t for v in view.values for t in tokens(v)] if view.kind == "text" else [str(v) for v in view.values]
    return any(regex.match(v) for v in values)


def _prefix(body: dict[str, Any], doc: Doc) -> bool:
    path, value, spec = _field_spec("prefix", body)
    escaped = "".join("\\" + c if c in "*?\\" else c for c in str(value))
    return _wildcard({path: {"value": escaped + "*", "case_insensitive": spec.get("case_insensitive", False)}}, doc)


def _match(body: dict[str, Any], doc: Doc, phrase: bool = False) -> bool:
    name = "match_phrase" if phrase else "match"
    path, text, spec = _field_spec(name, body, value_key="query")
    view = field_view(doc, path)
    if view.kind == "text":
        wanted = tokens(text)
        if not wanted:
            return False
        for value in view.values:
            have = tokens(value)
            if phrase:
                n = len(wanted)
                if any(have[i : i + n] == wanted for i in range(len(have) - n + 1)):
                    return True
            elif (spec.get("operator", "or").lower() == "and" and all(w in have for w in wanted)) or (
                spec.get("operator", "or").lower() != "and" and any(w in have for w in wanted)
            ):
                return True
        return False
    if view.kind == "unmapped":
        return False
    return _equals(view, path, text, view.kind == "caseless")


def _ids(body: dict[str, Any], doc: Doc) -> bool:
    return doc.id in [str(v) for v in body.get("values") or []]


def _query_string(body: dict[str, Any], doc: Doc) -> bool:
    if "query" not in body:
        raise parsing_error("[query_string] must be provided with a [query]")
    from emulators.elastic_lucene import parse_lucene  # local import: the Lucene parser is its own module

    node = parse_lucene(str(body["query"]), body.get("default_operator", "or"))
    return node.evaluate(doc, body.get("default_field", "*"))


_QUERIES = {
    "match_all": lambda body, doc: True,
    "match_none": lambda body, doc: False,
    "bool": _bool,
    "term": _term,
    "terms": _terms,
    "range": _range,
    "exists": _exists,
    "wildcard": _wildcard,
    "prefix": _prefix,
    "match": _match,
    "match_phrase": lambda body, doc: _match(body, doc, phrase=True),
    "ids": _ids,
    "query_string": _query_string,
    "constant_score": lambda body, doc: matches(body.get("filter") or {"match_all": {}}, doc),
}


# -- sorting -----------------------------------------------------------------------------------
@dataclass
class SortKey:
    field: str
    order: str = "asc"
    fmt: str | None = None
    unmapped_type: str | None = None
    missing: str = "_last"


def parse_sort(spec: Any) -> list[SortKey]:
    items = spec if isinstance(spec, list) else [spec]
    keys: list[SortKey] = []
    for item in items:
        if isinstance(item, str):
            keys.append(SortKey(item, "desc" if item == "_score" else "asc"))
        elif isinstance(item, dict) and len(item) == 1:
            name, options = next(iter(item.items()))
            if isinstance(options, str):
                keys.append(SortKey(name, options.lower()))
            elif isinstance(options, dict):
                keys.append(
                    SortKey(
                        name, str(options.get("order", "desc" if name == "_score" else "asc")).lower(),
                        options.get("format"), options.get("unmapped_type"), options.get("missing", "_last"),
                    )
                )
            else:
                raise parsing_error(f"[sort] malformed for field [{name}]")
        else:
            raise parsing_error("[sort] must be a field name or an object with one field")
    for key in keys:
        if key.order not in ("asc", "desc"):
            raise parsing_error(f"[sort] unknown order [{key.order}]")
    return keys


def sort_value(key: SortKey, doc: Doc) -> tuple[Any, Any]:
    """(comparable, value shown in the hit's `sort` array)."""
    if key.field == "_doc":
        return doc.seq_no, doc.seq_no
    if key.field == "_shard_doc":
        return doc.shard_doc, doc.shard_doc
    if key.field == "_score":
        return 1.0, 1.0
    view = field_view(doc, key.field)
    if view.kind == "unmapped" and key.unmapped_type is None and doc.index.field_type(key.field) is None:
        raise EsError(
            400, "search_phase_execution_exception", "all shards failed",
            caused_by={"type": "query_shard_exception", "reason": f"No mapping found for [{key.field}] in order to sort on"},
        )
    kind = view.kind if view.kind in ("numeric", "date", "boolean", "ip") else "keyword"
    values = [_doc_value(kind, v) if kind != "keyword" else str(v) for v in view.values]
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    chosen = min(values) if key.order == "asc" else max(values)
    if kind == "date":
        shown: Any = iso_ms(datetime.fromtimestamp(chosen / 1000, tz=timezone.utc)) if key.fmt else int(chosen)
    elif kind == "numeric":
        shown = int(chosen) if float(chosen).is_integer() and doc.index.field_type(key.field) in ("long", "integer") else chosen
    elif kind == "ip":
        shown = str(chosen)
    else:
        shown = chosen
    return (str(chosen) if kind == "ip" else chosen), shown


def after_value(key: SortKey, raw: Any, sample_kind: str) -> Any:
    if raw is None:
        return None
    if sample_kind == "date":
        moment = parse_date(raw) if isinstance(raw, str) else datetime.fromtimestamp(float(raw) / 1000, tz=timezone.utc)
        if moment is None:
            raise parsing_error(f"failed to parse date field [{raw}] in search_after")
        return epoch_ms(moment)
    if sample_kind == "numeric" or key.field in ("_shard_doc", "_doc", "_score"):
        return float(raw)
    return str(raw)


def sort_docs(docs: list[Doc], keys: list[SortKey], after: list[Any] | None) -> list[tuple[Doc, list[Any]]]:
    rows = []
    for doc in docs:
        pairs = [sort_value(k, doc) for k in keys]
        rows.append((doc, [p[0] for p in pairs], [p[1] for p in pairs]))

    def compare(a: list[Any], b: list[Any]) -> int:
        for key, x, y in zip(keys, a, b):
            if x == y:
                continue
            if x is None:
                return 1 if key.missing == "_last" else -1
            if y is None:
                return -1 if key.missing == "_last" else 1
            try:
                less = x < y
            except TypeError:
                less = str(x) < str(y)
            result = -1 if less else 1
            return result if key.order == "asc" else -result
        return 0

    import functools

    rows.sort(key=functools.cmp_to_key(lambda r1, r2: compare(r1[1], r2[1])))
    if after is not None:
        if len(after) != len(keys):
            raise EsError(400, "illegal_argument_exception", f"search_after has {len(after)} value(s) but sort has {len(keys)}.")
        kinds = []
        for key in keys:
            kind = "keyword"
            for doc, comparable, _ in rows:
                if key.field.startswith("_"):
                    break
                view = field_view(doc, key.field)
                if view.values:
                    kind = view.kind
                    break
            kinds.append(kind)
        pivot = [after_value(k, v, kind) for k, v, kind in zip(keys, after, kinds)]
        rows = [r for r in rows if compare(r[1], pivot) > 0]
    return [(doc, shown) for doc, _, shown in rows]


# -- aggregations -------------------------------------------------------------------------------
def _agg_values(doc: Doc, path: str) -> tuple[str, list[Any]]:
    view = field_view(doc, path)
    if view.kind == "text":
        raise EsError(
            400, "illegal_argument_exception",
            f"Text fields are not optimised for operations that require per-document field data like aggregations and sorting, so these operations are disabled by default. Please use a keyword field instead. Alternatively, set fielddata=true on [{path}] in order to load field data by uninverting the inverted index.",
        )
    return view.kind, view.values


def _bucket_key(kind: str, value: Any) -> Any:
    if kind == "date":
        moment = parse_date(value)
        return epoch_ms(moment) if moment else None
    if kind == "numeric":
        number = float(value)
        return int(number) if number.is_integer() else number
    if kind == "boolean":
        return 1 if value is True or str(value).lower() == "true" else 0
    return str(value)


def aggregate(aggs: dict[str, Any], docs: list[Doc]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in (aggs or {}).items():
        if not isinstance(spec, dict):
            raise parsing_error(f"Expected [START_OBJECT] under [{name}]")
        subs = spec.get("aggs") or spec.get("aggregations") or {}
        kinds = [k for k in spec if k not in ("aggs", "aggregations", "meta")]
        if len(kinds) != 1:
            raise parsing_error(f"Expected exactly one aggregation type under [{name}], found {kinds}")
        kind = kinds[0]
        handler = _AGGS.get(kind)
        if handler is None:
            raise EsError(400, "parsing_exception", f"Unknown aggregation type [{kind}] did you mean [terms]?", line=1, col=1)
        out[name] = handler(spec[kind], docs, subs)
    return out


def _with_subs(bucket: dict[str, Any], members: list[Doc], subs: dict[str, Any]) -> dict[str, Any]:
    bucket.update(aggregate(subs, members))
    return bucket


def _terms_agg(spec: dict[str, Any], docs: list[Doc], subs: dict[str, Any]) -> dict[str, Any]:
    path = spec.get("field")
    if not path:
        raise parsing_error("Required one of fields [field, script], but none were specified.")
    size = int(spec.get("size", 10))
    groups: dict[Any, list[Doc]] = {}
    kind = "keyword"
    for doc in docs:
        kind_here, values = _agg_values(doc, path)
        if values:
            kind = kind_here
        if not values and "missing" in spec:
            values = [spec["missing"]]
        for key in dict.fromkeys(_bucket_key(kind_here, v) for v in values):
            groups.setdefault(key, []).append(doc)
    order = spec.get("order") or {"_count": "desc"}
    order = order[0] if isinstance(order, list) else order
    field_name, direction = next(iter(order.items()))
    reverse = str(direction).lower() == "desc"
    if field_name == "_key":
        items = sorted(groups.items(), key=lambda kv: kv[0], reverse=reverse)
    else:
        items = sorted(groups.items(), key=lambda kv: (-len(kv[1]) if reverse else len(kv[1]), str(kv[0])))
    items = [kv for kv in items if len(kv[1]) >= int(spec.get("min_doc_count", 1))]
    buckets = []
    for key, members in items[:size]:
        bucket: dict[str, Any] = {"key": key, "doc_count": len(members)}
        if kind == "date":
            bucket["key_as_string"] = iso_ms(datetime.fromtimestamp(key / 1000, tz=timezone.utc))
        if kind == "boolean":
            bucket["key_as_string"] = "true" if key else "false"
        buckets.append(_with_subs(bucket, members, subs))
    other = sum(len(m) for _, m in items[size:])
    return {"doc_count_error_upper_bound": 0, "sum_other_doc_count": other, "buckets": buckets}


def _multi_terms_agg(spec: dict[str, Any], docs: list[Doc], subs: dict[str, Any]) -> dict[str, Any]:
    fields = [t.get("field") for t in spec.get("terms") or []]
    if len(fields) < 2:
        raise EsError(400, "illegal_argument_exception", "The [terms] parameter in the aggregation [multi_terms] must be present and have at least 2 fields or scripts.")
    groups: dict[tuple[Any, ...], list[Doc]] = {}
    for doc in docs:
        per_field = []
        for path in fields:
            kind, values = _agg_values(doc, path)
            per_field.append([_bucket_key(kind, v) for v in values])
        if all(per_field):
            import itertools

            for combo in dict.fromkeys(itertools.product(*per_field)):
                groups.setdefault(combo, []).append(doc)
    items = sorted(groups.items(), key=lambda kv: (-len(kv[1]), [str(k) for k in kv[0]]))
    size = int(spec.get("size", 10))
    buckets = [
        _with_subs({"key": list(key), "key_as_string": "|".join(map(str, key)), "doc_count": len(m)}, m, subs)
        for key, m in items[:size]
    ]
    return {"doc_count_error_upper_bound": 0, "sum_other_doc_count": sum(len(m) for _, m in items[size:]), "buckets": buckets}


def _composite_agg(spec: dict[str, Any], docs: list[Doc], subs: dict[str, Any]) -> dict[str, Any]:
    sources = spec.get("sources") or []
    names: list[str] = []
    paths: list[tuple[str, bool, str]] = []
    for source in sources:
        (name, definition), = source.items()
        if "terms" not in definition:
            raise EsError(400, "illegal_argument_exception", f"composite source [{name}] type not supported by the emulator: {list(definition)}")
        terms = definition["terms"]
        names.append(name)
        paths.append((terms["field"], bool(terms.get("missing_bucket")), str(terms.get("order", "asc"))))
    groups: dict[tuple[Any, ...], list[Doc]] = {}
    for doc in docs:
        per_field: list[list[Any]] = []
        for path, missing_bucket, _ in paths:
            kind, values = _agg_values(doc, path)
            keys = list(dict.fromkeys(_bucket_key(kind, v) for v in values))
            per_field.append(keys or ([None] if missing_bucket else []))
        if all(per_field):
            import itertools

            for combo in itertools.product(*per_field):
                groups.setdefault(combo, []).append(doc)

    def sortable(key: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple((0, "") if k is None else (1, k) for k in key)

    ordered = sorted(groups, key=sortable)
    after = spec.get("after")
    if after:
        pivot = tuple(after.get(n) for n in names)
        ordered = [k for k in ordered if sortable(k) > sortable(pivot)]
    page = ordered[: int(spec.get("size", 10))]
    buckets = [_with_subs({"key": dict(zip(names, key)), "doc_count": len(groups[key])}, groups[key], subs) for key in page]
    result: dict[str, Any] = {"buckets": buckets}
    if page:
        result["after_key"] = dict(zip(names, page[-1]))
    return result


def _date_histogram(spec: dict[str, Any], docs: list[Doc], subs: dict[str, Any]) -> dict[str, Any]:
    if "interval" in spec:
        raise EsError(400, "illegal_argument_exception", "[interval] on [date_histogram] is no longer supported; use [fixed_interval] or [calendar_interval]")
    if "fixed_interval" in spec:
        step = interval_ms(spec["fixed_interval"])
    elif "calendar_interval" in spec:
        if spec["calendar_interval"] not in CALENDAR:
            raise EsError(400, "illegal_argument_exception", f"The supplied interval [{spec['calendar_interval']}] could not be parsed as a calendar interval.")
        step = interval_ms(CALENDAR[spec["calendar_interval"]])
    else:
        raise EsError(400, "illegal_argument_exception", "Invalid interval specified, must be non-null and non-empty")
    path = spec.get("field", "@timestamp")
    groups: dict[int, list[Doc]] = {}
    for doc in docs:
        _, values = _agg_values(doc, path)
        for value in values:
            moment = parse_date(value)
            if moment is not None:
                key = (epoch_ms(moment) // step) * step
                members = groups.setdefault(key, [])
                if doc not in members:
                    members.append(doc)
    min_count = int(spec.get("min_doc_count", 0))
    keys = sorted(groups)
    if keys and min_count == 0:
        keys = list(range(keys[0], keys[-1] + step, step))
    buckets = []
    for key in keys:
        members = groups.get(key, [])
        if len(members) < min_count:
            continue
        bucket = {"key_as_string": iso_ms(datetime.fromtimestamp(key / 1000, tz=timezone.utc)), "key": key, "doc_count": len(members)}
        buckets.append(_with_subs(bucket, members, subs))
    return {"buckets": buckets}


def _metric(fn: str) -> Any:
    def run(spec: dict[str, Any], docs: list[Doc], subs: dict[str, Any]) -> dict[str, Any]:
        path = spec.get("field")
        if not path:
            raise parsing_error(f"[{fn}] requires a [field]")
        kind = "keyword"
        values: list[Any] = []
        for doc in docs:
            kind_here, found = _agg_values(doc, path)
            if found:
                kind = kind_here
            values.extend(found)
        if fn == "value_count":
            return {"value": len(values)}
        if fn == "cardinality":
            return {"value": len({_bucket_key(kind, v) for v in values})}
        numbers = [v for v in (_bucket_key(kind, v) for v in values) if isinstance(v, (int, float))]
        if not numbers:
            return {"value": None}
        value = {"min": min, "max": max, "sum": sum, "avg": lambda xs: sum(xs) / len(xs)}[fn](numbers)
        result: dict[str, Any] = {"value": float(value)}
        if kind == "date" and fn in ("min", "max"):
            result["value_as_string"] = iso_ms(datetime.fromtimestamp(value / 1000, tz=timezone.utc))
        return result

    return run


_AGGS = {
    "terms": _terms_agg,
    "multi_terms": _multi_terms_agg,
    "composite": _composite_agg,
    "date_histogram": _date_histogram,
    **{name: _metric(name) for name in ("cardinality", "value_count", "min", "max", "sum", "avg")},
}


# -- source filtering ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _path_matcher(patterns: tuple[str, ...]) -> Any:
    """A test for paths: one of `patterns` matches it (wildcards) or names one of its parents."""
    exact = {p for p in patterns if not any(ch in p for ch in "*?[")}
    wild = [re.compile(fnmatch.translate(p)) for p in patterns if p not in exact]

    def test(path: str) -> bool:
        parts = path.split(".")
        if any(".".join(parts[:cut]) in exact for cut in range(1, len(parts) + 1)):
            return True
        return any(w.match(path) for w in wild)

    return test


def filter_source(source: dict[str, Any], spec: Any) -> dict[str, Any] | None:
    if spec is None or spec is True:
        return source
    if spec is False:
        return None
    includes: list[str]
    excludes: list[str] = []
    if isinstance(spec, str):
        includes = [spec]
    elif isinstance(spec, list):
        includes = [str(s) for s in spec]
    elif isinstance(spec, dict):
        includes = list(spec.get("includes") or spec.get("include") or [])
        excludes = list(spec.get("excludes") or spec.get("exclude") or [])
    else:
        raise parsing_error("[_source] malformed")

    including, excluding = _path_matcher(tuple(includes)), _path_matcher(tuple(excludes))

    def keep(path: str) -> bool:
        return (not includes or including(path)) and not (excludes and excluding(path))

    def walk(node: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                if keep(path):
                    out[key] = value
                    continue
                inner = walk(value, path + ".")
                if inner:
                    out[key] = inner
            elif keep(path):
                out[key] = value
        return out

    return walk(source, "")


def fields_option(doc: Doc, spec: Iterable[Any]) -> dict[str, list[Any]]:
    flat = doc.flat()
    out: dict[str, list[Any]] = {}
    for item in spec:
        pattern = item["field"] if isinstance(item, dict) else str(item)
        for path, values in flat.items():
            if fnmatch.fnmatchcase(path, pattern):
                out[path] = values
    return out


# -- field capabilities --------------------------------------------------------------------------------
def field_caps(indices: list[Index], patterns: list[str], include_unmapped: bool = False) -> dict[str, Any]:
    """`_field_caps`: per field, per type, where it is searchable/aggregatable (object parents included)."""
    per_field: dict[str, dict[str, list[str]]] = {}
    for index in indices:
        paths = index.field_paths()
        for path in list(paths):
            parts = path.split(".")
            for cut in range(1, len(parts)):
                paths.setdefault(".".join(parts[:cut]), "object")
        for path, kind in paths.items():
            if any(fnmatch.fnmatchcase(path, p) for p in patterns):
                per_field.setdefault(path, {}).setdefault(kind, []).append(index.name)
    if include_unmapped:
        for pattern in patterns:
            if not any(ch in pattern for ch in "*?") and pattern not in per_field:
                per_field[pattern] = {"unmapped": [i.name for i in indices]}
    names = [i.name for i in indices]
    fields: dict[str, Any] = {}
    for path, kinds in sorted(per_field.items()):
        entry: dict[str, Any] = {}
        mapped = [name for found in kinds.values() for name in found]
        for kind, where in kinds.items():
            caps: dict[str, Any] = {
                "type": kind, "metadata_field": False, "searchable": kind != "object",
                "aggregatable": kind not in ("text", "match_only_text", "object"),
            }
            if len(kinds) > 1 or (include_unmapped and set(mapped) != set(names)):
                caps["indices"] = sorted(where)
            entry[kind] = caps
        if include_unmapped and set(mapped) != set(names) and "unmapped" not in kinds:
            entry["unmapped"] = {"type": "unmapped", "metadata_field": False, "searchable": False, "aggregatable": False,
                                 "indices": sorted(set(names) - set(mapped))}
        fields[path] = entry
    return {"indices": names, "fields": fields}
