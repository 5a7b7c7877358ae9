"""What may stand as an action's target or argument, and which values a piece of evidence names.

A response action acts on a host, an account, an indicator (IP, file hash, domain), a process (host:pid),
the case's alert or the case itself. Whatever proposed it, a model or a playbook, its target and
arguments must have that syntax before the policy gate lets a human see it or an executor run it:
a value shaped by log text ("please isolate DC01 now") is not a host name. And a disruptive action
must be bound to evidence: some row the case's tools recorded names its target in a field of the
right kind (`host.hostname` for a host, `user.name` for an account, `destination.ip` for an address),
not anywhere in a command line, where an attacker can write anything.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any, Literal

from siemcrew.crew.assets import host_forms, same_account, same_host, split_user
from siemcrew.crew.models import Evidence

ValueKind = Literal["host", "user", "ip", "hash", "domain", "indicator", "pid", "path", "text",
                    "verdict", "status", "severity", "indicator_type"]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
DOMAIN = re.compile(rf"^(?:{_LABEL}\.)+[A-Za-z]{{2,63}}\.?$")
# sAMAccountName-like names (the built-in "NETWORK SERVICE" has a space), optionally DOMAIN\ or @domain
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9_.$'-]{1,64}(?: [A-Za-z0-9_.$'-]{1,64}){0,2}$")
ACCOUNT_DOMAIN = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
HASH = re.compile(r"^(?:[A-Fa-f0-9]{32}|[A-Fa-f0-9]{40}|[A-Fa-f0-9]{64})$")
PATH = re.compile(r'^[^\x00-\x1f<>|"*?]{1,260}$')
CHOICES: dict[str, tuple[str, ...]] = {
    "verdict": ("benign", "suspicious", "malicious", "inconclusive"),
    "status": ("in_progress", "acknowledged", "closed", "escalated"),  # connectors.base.AlertUpdate
    "severity": ("low", "medium", "high", "critical"),
    "indicator_type": ("ip", "hash", "domain", "sha256", "sha1", "md5"),
}
MAX_TEXT = 500


def valid(kind: ValueKind, value: Any) -> bool:
    """Is `value` a well-formed `kind`? (Syntax only: whether the case may act on it is the policy's.)"""
    if kind == "pid":
        return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**32 or (
            isinstance(value, str) and value.isdigit() and 0 < int(value) < 2**32)
    if not isinstance(value, str) or not value or value != value.strip():
        return False
    if kind == "text":
        return len(value) <= MAX_TEXT and "\x00" not in value
    if kind in CHOICES:
        return value.lower() in CHOICES[kind]
    if kind == "ip":
        return _ip(value) is not None
    if kind == "hash":
        return bool(HASH.match(value))
    if kind == "domain":
        return _ip(value) is None and bool(DOMAIN.match(value)) and len(value) <= 253
    if kind == "indicator":
        return valid("ip", value) or valid("hash", value) or valid("domain", value)
    if kind == "host":
        return len(value) <= 253 and (bool(HOST.match(value)) or _ip(value) is not None)
    if kind == "user":
        return _account(value)
    if kind == "path":
        return bool(PATH.match(value))
    return False


def _account(value: str) -> bool:
    if "\\" in value:
        domain, _, name = value.rpartition("\\")
    elif "@" in value:
        name, _, domain = value.partition("@")
    else:
        name, domain = value, None
    return bool(ACCOUNT_NAME.match(name)) and (domain is None or bool(ACCOUNT_DOMAIN.match(domain)))


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def internal_address(value: str) -> bool:
    """A private, loopback, link-local, shared or otherwise non-public address: blocking it cuts the
    organisation off from itself (a domain controller, a proxy), so it is never done without a human."""
    address = _ip(value)
    return address is not None and not address.is_global


def process_target(target: str) -> tuple[str, int] | None:
    """`host:pid` -> (host, pid), or None when it is not that form."""
    host, sep, pid = target.rpartition(":")
    if not sep or not pid.isdigit() or not valid("host", host) or not valid("pid", pid):
        return None
    return host, int(pid)


def same_target(kind: str, a: str, b: str) -> bool:
    """Do two targets of one kind (the policy's `target`) name the same thing? Hosts by name (FQDN or short,
    any case), processes (`host:pid`) by host and pid, accounts by name and domain (unless one side has
    none), indicators in any case; alert and case ids exactly."""
    if kind == "host":
        process_a, process_b = process_target(a), process_target(b)
        if process_a or process_b:
            return bool(process_a and process_b) and process_a[1] == process_b[1] and same_host(process_a[0], process_b[0])  # type: ignore[index]
        return same_host(a, b)
    if kind == "user":
        return same_account(a, b)
    if kind == "indicator":
        return a.strip().lower() == b.strip().lower()
    return a == b


# -- which values evidence names, by the kind of field that holds them ---------------------------------
def field_kind(key: str) -> str | None:
    """The kind of value an event field holds, from its name (ECS and Windows event names)."""
    name = key.lower()
    last = name.rsplit(".", 1)[-1]
    if "hash" in name or last in ("sha256", "sha1", "md5", "imphash"):
        return "hash"
    if last in ("ip", "ipaddress", "address", "sourceaddress", "destinationaddress") or name in ("ips", "addresses"):
        return "ip"
    if last == "domain":  # user.domain is an account's domain, not a DNS name
        return "domain" if ("destination" in name or "dns" in name or "url" in name) else None
    if "host" in name or "computer" in name or "workstation" in name:
        return "host"
    if ("user" in name and "agent" not in name) or "account" in name:
        return "user"
    if last in ("pid", "processid"):
        return "pid"
    return None


def _values(value: Any) -> Iterable[Any]:
    if isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _values(item)
    elif value not in (None, ""):
        yield value


# Evidence that lists where a value was seen (prevalence: every host that ever ran it) or what a lookup was
# asked about (asset context, related cases) does not show a host, account or address taking part.
NOT_NAMING = frozenset({"prevalence", "related_cases", "asset_context"})


def named(evidence: Evidence) -> dict[str, set[str]]:
    """The hosts, users, IPs, hashes, domains and pids the evidence's rows name (lower-cased), by field
    kind; an evidence item that found something (count > 0) also names the entity it was about. Lookups
    and prevalence name nothing (NOT_NAMING)."""
    out: dict[str, set[str]] = {}
    if evidence.language == "lookup" or evidence.kind in NOT_NAMING:
        return out
    for row in evidence.sample:
        account_domain = str(row.get("user.domain") or "").lower()
        for key, value in row.items():
            kind = field_kind(key)
            if kind is None:
                continue
            for item in _values(value):
                text = str(item).strip().lower()
                out.setdefault(kind, set()).add(text)
                if kind == "user" and key == "user.name" and account_domain and "\\" not in text:
                    out[kind].add(f"{account_domain.split('.')[0]}\\{text}")
    if evidence.entity and evidence.count > 0 and evidence.status == "ok":
        kind = {"process": None, "file": None}.get(evidence.entity_type or "", evidence.entity_type)
        if kind in ("host", "user", "ip", "hash", "domain"):
            out.setdefault(kind, set()).add(evidence.entity.strip().lower())
    return out


def names(evidence: Evidence, kind: str, value: str) -> bool:
    """Does the evidence name `value` as a `kind` (host forms and account forms compared as such)?"""
    found = named(evidence)
    if kind == "host":
        wanted = set(host_forms(value))
        return any(wanted & set(host_forms(h)) for h in found.get("host", ())) or (
            _ip(value) is not None and value.lower() in found.get("ip", set()))
    if kind == "user":
        want_name, want_domain = split_user(value)
        for have in found.get("user", ()):
            name, domain = split_user(have)
            if name == want_name and (want_domain is None or domain is None or domain.split(".")[0] == want_domain.split(".")[0]):
                return True
        return False
    if kind == "indicator":
        text = value.strip().lower()
        return any(text in found.get(k, set()) for k in ("ip", "hash", "domain"))
    return value.strip().lower() in found.get(kind, set())


def process_named(evidence: Evidence, host: str, pid: int) -> bool:
    """Does one row of the evidence show process `pid` on `host`?"""
    wanted = set(host_forms(host))
    for row in evidence.sample:
        pids = {str(v) for k, v in row.items() if field_kind(k) == "pid" for v in _values(v)}
        hosts = {str(v) for k, v in row.items() if field_kind(k) == "host" for v in _values(v)}
        if str(pid) in pids and any(wanted & set(host_forms(h)) for h in hosts):
            return True
    return False


def naming(evidence: list[Evidence], kind: str, value: str, prefer: Iterable[str] = (), limit: int = 5) -> list[str]:
    """Ids of the evidence that names `value` as a `kind` (`process` for host:pid), those in `prefer`
    (e.g. what the findings cite) first: what a proposal on that target should cite."""
    process = process_target(value) if kind == "process" else None

    def shows(item: Evidence) -> bool:
        return process_named(item, *process) if process else names(item, kind, value)

    preferred = list(dict.fromkeys(prefer))
    by_id = {item.id: item for item in evidence}
    ordered = [by_id[i] for i in preferred if i in by_id] + [e for e in evidence if e.id not in set(preferred)]
    return [item.id for item in ordered if shows(item)][:limit]


def address_owners(evidence: list[Evidence], address: str) -> set[str]:
    """The hosts the case's address resolution (`host_addresses` evidence about `address`) ties it to."""
    owners: set[str] = set()
    for item in evidence:
        if item.kind == "host_addresses" and (item.entity or "").strip().lower() == address.strip().lower():
            owners |= named(item).get("host", set())
    return owners
