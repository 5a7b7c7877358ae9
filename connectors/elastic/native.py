"""An internal-ECS `EventQuery` -> a boolean tree over native fields, through a data profile.

Each internal filter becomes the OR of its homes (profile.py): `(event scope) AND (native field
matches the value as written there)`. Leaves are plain `Filter`s on native fields, so the query
dialects (dsl.py, esql.py) render them with their own clause tables; the tree only adds AND, OR,
NOT and constants. `event.category` / `event.action` are matched by the events the local mapping
gives those values (its constants), plus the field itself on documents that are no Windows events.

With `exists`, leaves on fields that no index has become constants (false, or true under a
negation): ES|QL rejects unknown columns, and a field nobody has cannot match anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from siemcrew.connectors.base import EventQuery, Filter
from siemcrew.connectors.elastic.profile import Home, Profile, When
from siemcrew.connectors.local.transforms import to_int

CHANNEL = "winlog.channel"
CODE = "event.code"
CONSTANT_FIELDS = ("event.category", "event.action")


@dataclass(frozen=True, eq=False)
class Leaf:
    filter: Filter


@dataclass(frozen=True, eq=False)
class And:
    children: tuple["Node", ...]


@dataclass(frozen=True, eq=False)
class Or:
    children: tuple["Node", ...]


@dataclass(frozen=True, eq=False)
class Not:
    child: "Node"


@dataclass(frozen=True)
class Const:
    value: bool


Node = Union[Leaf, And, Or, Not, Const]
TRUE, FALSE = Const(True), Const(False)


def _unique(nodes: list[Node]) -> tuple[Node, ...]:
    seen: dict[str, Node] = {}
    for node in nodes:
        seen.setdefault(repr(node), node)
    return tuple(seen.values())


def all_of(nodes: list[Node]) -> Node:
    out: list[Node] = []
    for node in nodes:
        if node == FALSE:
            return FALSE
        if node == TRUE:
            continue
        out.extend(node.children if isinstance(node, And) else [node])
    return TRUE if not out else out[0] if len(out) == 1 else And(_unique(out))


def any_of(nodes: list[Node]) -> Node:
    out: list[Node] = []
    for node in nodes:
        if node == TRUE:
            return TRUE
        if node == FALSE:
            continue
        out.extend(node.children if isinstance(node, Or) else [node])
    return FALSE if not out else out[0] if len(out) == 1 else Or(_unique(out))


def negation(node: Node) -> Node:
    if isinstance(node, Const):
        return Const(not node.value)
    if isinstance(node, Not):
        return node.child
    return Not(node)


def leaf(field: str, op: str = "eq", value: object = None, negate: bool = False) -> Node:
    return Leaf(Filter(field=field, op=op, value=value, negate=negate))  # type: ignore[arg-type]


# -- scopes ---------------------------------------------------------------------------------------
def scope(when: When, profile: Profile) -> Node:
    parts: list[Node] = []
    if when.winlog is not None:
        parts.append(leaf(CHANNEL, "exists", negate=not when.winlog))
    if when.channels:
        parts.append(leaf(CHANNEL, "in", profile.channel_values(when.channels)))
    if when.not_channels:
        parts.append(leaf(CHANNEL, "in", profile.channel_values(when.not_channels), negate=True))
    if when.codes:
        parts.append(leaf(CODE, "in", sorted(set(when.codes))))
    if when.not_codes:
        parts.append(leaf(CODE, "in", sorted(set(when.not_codes)), negate=True))
    parts.extend(leaf(name, "exists", negate=True) for name in when.missing)
    return all_of(parts)


# -- values as each home writes them ---------------------------------------------------------------
def _formatted(home: Home, value: object) -> list[object]:
    number = to_int(value) if home.formats else None
    if number is None:
        return [home.native_value(value)]
    return [str(number) if f == "dec" else hex(number) for f in home.formats]


def _match(home: Home, op: str, value: object) -> Node:
    """The native leaf (or OR of leaves) for one internal value at one home."""
    field = home.field
    if op == "exists":
        return leaf(field, "exists")
    if op in ("eq", "in"):
        values = [v for item in (value if isinstance(value, (list, tuple, set)) else [value]) for v in _formatted(home, item)]
        nodes: list[Node] = [leaf(field, "eq", values[0]) if len(values) == 1 else leaf(field, "in", values)]
        for item in values:
            if home.fqdn:
                nodes.append(leaf(field, "startswith", f"{item}."))
            if home.account == "name":
                nodes.append(leaf(field, "endswith", f"\\{item}"))
            elif home.account == "domain":
                nodes.append(leaf(field, "startswith", f"{item}\\"))
        return any_of(nodes)
    return leaf(field, op, home.native_value(value))


def _constant_values(op: str, value: object, candidates: list[str]) -> list[str]:
    wanted = [str(v).lower() for v in (value if isinstance(value, (list, tuple, set)) else [value])]
    tests: dict[str, Callable[[str], bool]] = {
        "eq": lambda c: c in wanted,
        "in": lambda c: c in wanted,
        "contains": lambda c: wanted[0] in c,
        "startswith": lambda c: c.startswith(wanted[0]),
        "endswith": lambda c: c.endswith(wanted[0]),
        "exists": lambda c: True,
    }
    test = tests.get(op)
    return [c for c in candidates if test and test(c.lower())]


def _constant(flt: Filter, profile: Profile) -> Node:
    table = profile.constants.get(flt.field) or {}
    grouped: dict[tuple[tuple[str, ...], tuple[int, ...]], set[int]] = {}
    for value in _constant_values(flt.op, flt.value, list(table)):
        for when in table[value]:
            grouped.setdefault((when.channels, when.not_codes), set()).update(when.codes)
    nodes = [scope(When(channels=channels, codes=tuple(codes), not_codes=not_codes), profile)
             for (channels, not_codes), codes in grouped.items()]
    elsewhere = Home(field=flt.field, when=When(winlog=False))
    nodes.append(all_of([scope(elsewhere.when, profile), _match(elsewhere, flt.op, flt.value)]))
    return any_of(nodes)


def filter_node(flt: Filter, profile: Profile) -> Node:
    if flt.field in CONSTANT_FIELDS:
        node = _constant(flt, profile)
    else:
        node = any_of([all_of([scope(home.when, profile), _match(home, flt.op, flt.value)]) for home in profile.homes(flt.field)])
    return negation(node) if flt.negate else node


def query_node(query: EventQuery, profile: Profile) -> Node:
    """Filters AND any_of groups AND categories; the time range stays with the dialect."""
    parts = [filter_node(flt, profile) for flt in query.filters]
    parts += [any_of([filter_node(flt, profile) for flt in group]) for group in query.any_of if group]
    if query.categories:
        parts.append(filter_node(Filter(field="event.category", op="in", value=query.categories), profile))
    return all_of(parts)


# -- fields no index has ---------------------------------------------------------------------------
def prune(node: Node, exists: Callable[[str], bool]) -> Node:
    """Leaves on fields no index has -> false (their negation -> true), folded through the tree."""
    if isinstance(node, Leaf):
        if exists(node.filter.field):
            return node
        return Const(node.filter.negate)
    if isinstance(node, And):
        return all_of([prune(child, exists) for child in node.children])
    if isinstance(node, Or):
        return any_of([prune(child, exists) for child in node.children])
    if isinstance(node, Not):
        return negation(prune(node.child, exists))
    return node


def fields_of(node: Node) -> list[str]:
    if isinstance(node, Leaf):
        return [node.filter.field]
    if isinstance(node, (And, Or)):
        return list(dict.fromkeys(f for child in node.children for f in fields_of(child)))
    if isinstance(node, Not):
        return fields_of(node.child)
    return []
