"""The named value transforms that `config/mappings/windows_ecs.yaml` may chain after a raw field.

Each transform takes one raw value (and an optional argument written as `name:arg`) and returns
the converted value, or None when the value cannot be converted, in which case the mapping
moves on to its next source. Transforms never raise on odd input: log data is untrusted.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

from siemcrew.crew.timeutil import iso, parse_time

Transform = Callable[[Any], Any]

_ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
_INTEGRITY = {"4096": "Low", "8192": "Medium", "8448": "Medium Plus", "12288": "High", "16384": "System"}
_IP_PROTOCOLS = {"1": "icmp", "6": "tcp", "17": "udp", "58": "ipv6-icmp"}
_AUDIT_SUCCESS = 0x0020000000000000
_AUDIT_FAILURE = 0x0010000000000000


def to_str(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else str(value)


def to_int(value: Any) -> int | None:
    """Decimal or `0x` hex (Security PIDs are hex strings, Sysmon PIDs decimal)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    text = str(value).strip()
    try:
        return int(text, 16) if text[:2].lower() == "0x" else int(text)
    except ValueError:
        return None


def lower(value: Any) -> str | None:
    return str(value).lower()


def upper(value: Any) -> str | None:
    return str(value).upper()


def basename(value: Any) -> str | None:
    text = str(value).rstrip("\\/")
    return re.split(r"[\\/]", text)[-1] or None


def short_host(value: Any) -> str | None:
    """`WS-01.corp.example` -> `WS-01`: the short name alerts and inventories use."""
    text = str(value).strip()
    return text.split(".", 1)[0].upper() or None


def _split_account(value: Any) -> tuple[str | None, str]:
    text = str(value).strip()
    if "\\" in text:
        domain, name = text.split("\\", 1)
        return domain or None, name
    if "@" in text:
        name, domain = text.split("@", 1)
        return domain or None, name
    return None, text


def account_name(value: Any) -> str | None:
    """`DOMAIN\\name` or `name@domain` -> `name`; a bare name stays as it is."""
    return _split_account(value)[1] or None


def account_domain(value: Any) -> str | None:
    return _split_account(value)[0]


def timestamp(value: Any) -> str | None:
    """Any timestamp form -> ISO-8601 UTC with milliseconds and Z; zone-less counts as UTC."""
    if isinstance(value, str) and _ISO_MS_Z.match(value):
        return value
    parsed = parse_time(value)
    return iso(parsed) if parsed else None


def hash_of(value: Any, algorithm: str) -> str | None:
    """Sysmon `Hashes` (`SHA1=..,MD5=..,SHA256=..,IMPHASH=..`) -> one lower-case digest."""
    wanted = algorithm.upper() + "="
    for part in str(value).split(","):
        part = part.strip()
        if part.upper().startswith(wanted):
            return part[len(wanted):].lower() or None
    return None


def key_value(value: Any, key: str) -> str | None:
    """The value of a `Key = value` line, as in PowerShell 4103 `ContextInfo`."""
    wanted = key.strip().lower()
    for line in str(value).splitlines():
        name, sep, found = line.partition("=")
        if sep and name.strip().lower() == wanted:
            return found.strip() or None
    return None


def truncate(value: Any, size: str) -> str | None:
    """At most `size` bytes of UTF-8, never splitting a character."""
    data = str(value).encode("utf-8")
    limit = int(size)
    return value if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def html_unescape(value: Any) -> str | None:
    return html.unescape(str(value))


def ip(value: Any) -> str | None:
    """IPv4-mapped IPv6 (`::ffff:172.18.39.5`) -> the IPv4 address; anything else unchanged."""
    text = str(value).strip()
    if text.lower().startswith("::ffff:") and "." in text:
        return text[7:]
    return text or None


def direction(value: Any) -> str | None:
    """Sysmon `Initiated` (true/false) or WFP `Direction` (%%14593/%%14592) -> outbound/inbound."""
    text = str(value).strip().lower()
    if text in ("true", "1", "%%14593", "outbound"):
        return "outbound"
    if text in ("false", "0", "%%14592", "inbound"):
        return "inbound"
    return None


def outcome(value: Any) -> str | None:
    """NXLog `EventType` (AUDIT_SUCCESS) or the audit bits of `Keywords` -> success/failure."""
    if isinstance(value, str):
        text = value.strip().upper()
        if text == "AUDIT_SUCCESS":
            return "success"
        if text == "AUDIT_FAILURE":
            return "failure"
        number = to_int(text)
    else:
        number = to_int(value)
    if number is None:
        return None
    number &= 0xFFFFFFFFFFFFFFFF
    if number & _AUDIT_FAILURE:
        return "failure"
    if number & _AUDIT_SUCCESS:
        return "success"
    return None


def ip_protocol(value: Any) -> str | None:
    text = str(value).strip().lower()
    return _IP_PROTOCOLS.get(text, text or None)


def integrity_level(value: Any) -> str | None:
    """Mandatory label SID (`S-1-16-12288`) -> Sysmon's words (`High`)."""
    text = str(value).strip()
    return _INTEGRITY.get(text.rsplit("-", 1)[-1], text or None)


_PLAIN: dict[str, Transform] = {
    "str": to_str,
    "int": to_int,
    "lower": lower,
    "upper": upper,
    "basename": basename,
    "short_host": short_host,
    "account_name": account_name,
    "account_domain": account_domain,
    "timestamp": timestamp,
    "html_unescape": html_unescape,
    "ip": ip,
    "direction": direction,
    "outcome": outcome,
    "ip_protocol": ip_protocol,
    "integrity_level": integrity_level,
}
_WITH_ARGUMENT: dict[str, Callable[[Any, str], Any]] = {
    "hash": hash_of,
    "kv": key_value,
    "truncate": truncate,
}


def resolve(step: str) -> Transform:
    """`name` or `name:argument` -> a one-argument callable; unknown names are a config error."""
    name, _, argument = step.partition(":")
    name = name.strip()
    if name in _PLAIN and not argument:
        return _PLAIN[name]
    if name in _WITH_ARGUMENT and argument:
        func = _WITH_ARGUMENT[name]
        return lambda value: func(value, argument)
    raise ValueError(f"unknown mapping transform {step!r}")
