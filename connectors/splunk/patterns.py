"""Value patterns: what an internal (ECS) value looks like in the raw Windows field it came from.

siemcrew's raw-Windows mapping (`config/mappings/windows_ecs.yaml`) derives ECS values with named
transforms (`int`, `short_host`, `hash:SHA256`, `direction`...). Searching a raw field for an ECS
value runs those transforms backwards: process.pid 1234 is `1234` in a Sysmon ProcessId but
`0x4d2` in a Security NewProcessId; host.hostname WKS7 is `WKS7` or `WKS7.<domain>` in Computer;
network.direction outbound is Initiated `true` or WFP Direction `%%14593`.

A pattern is a tuple of literal strings and wildcards (None), as Splunk matches values: the whole
value must match, `*` stands for any run of characters, comparisons ignore case. Inverses may widen
a pattern (a contains on a short host name can also match its domain part) but never narrow it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from siemcrew.connectors.local.transforms import to_int

WILD = None
Pattern = tuple[str | None, ...]
Inverse = Callable[[Pattern, str], list[Pattern]]


def normalize(items: Iterable[str | None]) -> Pattern:
    """Adjacent literals merged, runs of wildcards collapsed, empty literals dropped."""
    out: list[str | None] = []
    for item in items:
        if item == "":
            continue
        if item is WILD:
            if out and out[-1] is WILD:
                continue
            out.append(WILD)
        elif out and out[-1] is not WILD:
            out[-1] = str(out[-1]) + item
        else:
            out.append(item)
    return tuple(out)


def for_op(op: str, value: Any) -> Pattern:
    """The pattern a filter operator asks for (`eq`/`in` exact, the others wildcarded)."""
    text = _text(value)
    if op == "contains":
        return normalize((WILD, text, WILD))
    if op == "startswith":
        return normalize((text, WILD))
    if op == "endswith":
        return normalize((WILD, text))
    return normalize((text,))


def exact(pattern: Pattern) -> str | None:
    """The literal when the pattern is one exact value."""
    return pattern[0] if len(pattern) == 1 and pattern[0] is not WILD else None


def starts_anchored(pattern: Pattern) -> bool:
    return bool(pattern) and pattern[0] is not WILD


def ends_anchored(pattern: Pattern) -> bool:
    return bool(pattern) and pattern[-1] is not WILD


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- inverses of the mapping's transforms ------------------------------------------------------
def _identity(pattern: Pattern, argument: str) -> list[Pattern]:
    return [pattern]


def _int(pattern: Pattern, argument: str) -> list[Pattern]:
    """Sysmon writes PIDs in decimal, Security in hex (`0x4d2`)."""
    literal = exact(pattern)
    number = to_int(literal) if literal is not None else None
    if number is None or number < 0:
        return [pattern]
    return [(str(number),), (f"0x{number:x}",)]


def _short_host(pattern: Pattern, argument: str) -> list[Pattern]:
    """`WKS7` is the first label of `WKS7.corp.example`."""
    if not ends_anchored(pattern):
        return [pattern]
    return [pattern, normalize((*pattern, ".", WILD))]


def _basename(pattern: Pattern, argument: str) -> list[Pattern]:
    if not starts_anchored(pattern):
        return [pattern]
    return [pattern, normalize((WILD, "\\", *pattern))]


def _account_name(pattern: Pattern, argument: str) -> list[Pattern]:
    """`name` of `DOMAIN\\name`, `name@domain` or a bare `name`."""
    out = [pattern]
    if starts_anchored(pattern):
        out.append(normalize((WILD, "\\", *pattern)))
    if ends_anchored(pattern):
        out.append(normalize((*pattern, "@", WILD)))
    return out


def _account_domain(pattern: Pattern, argument: str) -> list[Pattern]:
    return [normalize((*pattern, "\\", WILD)), normalize((WILD, "@", *pattern))]


def _hash(pattern: Pattern, argument: str) -> list[Pattern]:
    """One digest inside Sysmon's `SHA1=..,MD5=..,SHA256=..` list."""
    head = (WILD, f"{argument.upper()}=") if starts_anchored(pattern) else (WILD,)
    if not ends_anchored(pattern):
        return [normalize((*head, *pattern))]
    return [normalize((*head, *pattern)), normalize((*head, *pattern, ",", WILD))]


def _key_value(pattern: Pattern, argument: str) -> list[Pattern]:
    """A `Key = value` line of PowerShell's ContextInfo (the value may be followed by more lines)."""
    return [normalize((WILD, f"{argument} = ", *pattern, WILD))]


def _ip(pattern: Pattern, argument: str) -> list[Pattern]:
    """IPv4-mapped IPv6 (`::ffff:10.0.0.5`) reads as the IPv4 address."""
    if not starts_anchored(pattern):
        return [pattern]
    return [pattern, normalize(("::ffff:", *pattern))]


def _mapped(table: dict[str, list[str]]) -> Inverse:
    """Inverse of a value table: the raw values that read as the wanted one."""

    def inverse(pattern: Pattern, argument: str) -> list[Pattern]:
        literal = exact(pattern)
        if literal is None:
            return [pattern]
        found = table.get(literal.lower())
        return [(value,) for value in found] if found else [pattern]

    return inverse


_DIRECTIONS = {"outbound": ["true", "1", "%%14593", "outbound"], "inbound": ["false", "0", "%%14592", "inbound"]}
_PROTOCOLS = {"icmp": ["1", "icmp"], "tcp": ["6", "tcp"], "udp": ["17", "udp"], "ipv6-icmp": ["58", "ipv6-icmp"]}
_INTEGRITY = {"low": ["S-1-16-4096", "Low"], "medium": ["S-1-16-8192", "Medium"], "medium plus": ["S-1-16-8448", "Medium Plus"],
              "high": ["S-1-16-12288", "High"], "system": ["S-1-16-16384", "System"]}

INVERSES: dict[str, Inverse] = {
    "str": _identity,
    "int": _int,
    "lower": _identity,
    "upper": _identity,
    "basename": _basename,
    "short_host": _short_host,
    "account_name": _account_name,
    "account_domain": _account_domain,
    "timestamp": _identity,
    "hash": _hash,
    "kv": _key_value,
    "truncate": _identity,
    "html_unescape": _identity,
    "ip": _ip,
    "direction": _mapped(_DIRECTIONS),
    "outcome": _identity,
    "ip_protocol": _mapped(_PROTOCOLS),
    "integrity_level": _mapped(_INTEGRITY),
}


def raw_patterns(pattern: Pattern, steps: Iterable[str]) -> list[Pattern]:
    """The patterns a raw value must match so that `steps` (applied in order) turn it into `pattern`."""
    patterns = [pattern]
    for step in reversed(list(steps)):
        name, _, argument = step.partition(":")
        inverse = INVERSES.get(name.strip())
        if inverse is None:
            raise ValueError(f"no inverse for mapping transform {step!r}")
        patterns = [found for item in patterns for found in inverse(item, argument.strip())]
    return list(dict.fromkeys(patterns))
