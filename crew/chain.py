"""The alert's causal chain, rebuilt from the evidence the chain tool recorded (tools/chain.py).

Nodes are processes (keyed by entity id, else host|pid); each knows its start event when the logs
have it, what it did, and how it relates to the alert: the subject (the alert's own process),
its ancestors, descendants (including processes started from files the chain wrote), droppers (who
wrote the subject's program), injectors, and processes on other hosts that reached into the chain
(origin) or that the chain reached (target). Only recorded rows are read, so every conclusion
drawn from the chain cites evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from siemcrew.crew.indicators import account, short_host
from siemcrew.crew.knowledge import Knowledge, ProcessFacts
from siemcrew.crew.models import Case, Evidence
from siemcrew.crew.timeutil import parse_time

CHAIN_KINDS = {"alert_events", "process_lineage", "process_activity", "process_origin", "logon_session",
               "remote_execution"}
START_CODES = {"1", "4688"}
FILE_WRITE_CODES = {"11", "15", "29"}
INJECTION_RIGHTS = 0x22  # PROCESS_VM_WRITE | PROCESS_CREATE_THREAD


@dataclass
class Node:
    key: str
    host: str
    start: dict[str, Any] | None = None
    start_id: str | None = None
    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    relation: str = "context"
    parent_key: str | None = None

    @property
    def executable(self) -> str:
        for row in [self.start or {}] + [r for _, r in self.rows]:
            if row.get("process.executable"):
                return str(row["process.executable"])
        return ""

    @property
    def user(self) -> str | None:
        for row in [self.start or {}] + [r for _, r in self.rows]:
            if row.get("user.name") and str(row.get("event.code")) not in ("4624", "4648", "4672"):
                return account(row)
        return None

    def evidence_ids(self) -> list[str]:
        return list(dict.fromkeys(([self.start_id] if self.start_id else []) + [i for i, _ in self.rows]))

    def all_rows(self) -> list[tuple[str, dict[str, Any]]]:
        return ([(self.start_id, self.start)] if self.start and self.start_id else []) + self.rows


@dataclass
class Chain:
    host: str
    nodes: dict[str, Node] = field(default_factory=dict)
    subject_keys: list[str] = field(default_factory=list)
    instigator_keys: list[str] = field(default_factory=list)
    alert_keys: list[str] = field(default_factory=list)  # the processes the alert's own events name
    sessions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # alert rows without a process
    droppers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # file writes of chain programs
    services: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    remote_logons: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # the chain's logons elsewhere

    def members(self, relations: Iterable[str] | None = None) -> list[Node]:
        wanted = set(relations) if relations else None
        return [n for n in self.nodes.values() if n.relation != "context" and (wanted is None or n.relation in wanted)]

    def parent_of(self, node: Node) -> Node | None:
        return self.nodes.get(node.parent_key) if node.parent_key else None

    def facts(self, node: Node, knowledge: Knowledge, is_system: Any) -> ProcessFacts:
        """What an explanation may read about a node: identity, parent, activity, signer, account."""
        identity: dict[str, Any] = {}
        for _, row in reversed(node.all_rows()):
            identity.update({k: v for k, v in row.items() if k.startswith("process.") and v not in (None, "")})
        if node.start:
            identity.update({k: v for k, v in node.start.items() if v not in (None, "")})
        identity.setdefault("process.executable", node.executable or None)
        parent_row = self.parent_of(node).start if self.parent_of(node) else None
        parent = {"process.executable": (node.start or {}).get("process.parent.executable")
                  or (parent_row or {}).get("process.executable"),
                  "process.command_line": (node.start or {}).get("process.parent.command_line")
                  or (parent_row or {}).get("process.command_line")}
        signer = next((str(r.get("winlog.event_data.Signature")) for _, r in node.rows
                       if str(r.get("event.code")) == "7" and r.get("winlog.event_data.Signature")
                       and str(r.get("dll.path") or "").lower() == node.executable.lower()), None)
        user = node.user
        return ProcessFacts(identity=identity, parent=parent if any(parent.values()) else None,
                            rows=tuple(r for _, r in node.rows), signer=signer,
                            system_account=None if user is None else bool(is_system(user)))


NULL_GUID = "{00000000-0000-0000-0000-000000000000}"


def _key(row: dict[str, Any]) -> str | None:
    guid = row.get("process.entity_id")
    if guid and guid != NULL_GUID:
        return str(guid)
    if row.get("process.pid") in (None, ""):
        return None
    return f"{short_host(row.get('host.hostname'))}|{row.get('process.pid')}"


def _rows(items: Iterable[Evidence]) -> Iterable[tuple[Evidence, dict[str, Any]]]:
    for item in items:
        if item.status == "ok":
            for row in item.sample:
                yield item, row


class PidIndex:
    """(host, pid) -> the processes with an entity id that held that pid, by start time. Pids are reused, so
    an event that names only a pid joins the process that held it at the event's time."""

    SKEW = 2.0  # seconds: the same process's events from different channels are stamped a little apart

    def __init__(self) -> None:
        self.starts: dict[tuple[str, str], list[tuple[datetime | None, str]]] = {}

    def add(self, host: str, pid: Any, moment: datetime | None, key: str) -> None:
        entries = self.starts.setdefault((host, str(pid)), [])
        if (moment, key) not in entries:
            entries.append((moment, key))

    def find(self, host: str, pid: Any, at: datetime | None) -> str | None:
        entries = self.starts.get((host, str(pid)), [])
        if at is None:
            return entries[-1][1] if entries else None
        held = [(m, k) for m, k in entries if m is None or (m - at).total_seconds() <= self.SKEW]
        if not held:
            return None
        return max(held, key=lambda pair: pair[0] or datetime.min.replace(tzinfo=at.tzinfo))[1]


def build(case: Case, knowledge: Knowledge | None = None) -> Chain:
    """Rebuild the alert's chain from the case's evidence."""
    alert = case.alert
    chain = Chain(host=short_host(alert.primary_host))
    # The host's whole process tree (one search the tracer reads ancestors from) is not the chain itself:
    # the chain's own start events are recorded separately.
    evidence = [e for e in case.evidence if e.kind in CHAIN_KINDS and e.entity_type != "tree"]
    pid_index = PidIndex()

    def node_for(row: dict[str, Any], create: bool = True) -> Node | None:
        key = _key(row)
        if key is None:
            return None
        host = short_host(row.get("host.hostname")) or chain.host
        if "|" in key:
            key = pid_index.find(host, row.get("process.pid"), parse_time(row.get("@timestamp"))) or key
        if key not in chain.nodes:
            if not create:
                return None
            chain.nodes[key] = Node(key=key, host=host)
        return chain.nodes[key]

    # 1. start events define the nodes and the parent links (Sysmon's, which carry entity ids, first, so
    #    that Security 4688 events of the same process join them by pid)
    starts = [(item, row) for item, row in _rows(evidence)
              if str(row.get("event.code")) in START_CODES and item.kind in ("process_lineage", "remote_execution")]
    latest = alert.last_seen or alert.timestamp
    for item, row in sorted(starts, key=lambda pair: "|" in (_key(pair[1]) or "|")):
        node = node_for(row)
        if node and (node.start is None or _better_start(row, node.start, latest)):
            node.start, node.start_id = row, item.id
            if row.get("process.entity_id") and row.get("process.pid") not in (None, ""):
                pid_index.add(node.host, row["process.pid"], parse_time(row.get("@timestamp")), node.key)
    for node in list(chain.nodes.values()):
        start = node.start or {}
        parent_guid = start.get("process.parent.entity_id")
        if parent_guid and parent_guid != NULL_GUID:
            node.parent_key = str(parent_guid)
        elif start.get("process.parent.pid") not in (None, ""):
            node.parent_key = pid_index.find(node.host, start["process.parent.pid"], parse_time(start.get("@timestamp"))) \
                or f"{node.host}|{start['process.parent.pid']}"
        if node.parent_key and start.get("process.parent.executable") and (
                node.parent_key not in chain.nodes or chain.nodes[node.parent_key].start is None):
            # The parent started before the data: its child's start event names it (path, command line).
            parent = chain.nodes.setdefault(node.parent_key, Node(key=node.parent_key, host=node.host))
            parent.start = {"@timestamp": None, "event.code": "parent", "host.hostname": node.host,
                            "process.entity_id": start.get("process.parent.entity_id"),
                            "process.pid": start.get("process.parent.pid"),
                            "process.executable": start.get("process.parent.executable"),
                            "process.name": start.get("process.parent.name"),
                            "process.command_line": start.get("process.parent.command_line")}
            parent.start_id = node.start_id
    # 2. what the processes did, and the rows that are not about a process
    for item, row in _rows(evidence):
        code = str(row.get("event.code"))
        if item.kind == "logon_session":
            chain.sessions.append((item.id, row))
        elif item.kind == "remote_execution" and code in ("4624", "4648"):
            chain.remote_logons.append((item.id, row))
        elif item.kind == "process_origin" and item.entity_type == "file":
            chain.droppers.append((item.id, row))
            node = node_for(row)
            if node is not None and (item.id, row) not in node.rows:
                node.rows.append((item.id, row))
        elif item.kind == "process_origin" and item.entity_type == "service":
            chain.services.append((item.id, row))
        elif item.kind == "alert_events" or (item.kind in ("process_activity", "process_origin", "remote_execution")
                                             and code not in START_CODES):
            node = node_for(row)
            if node is None:
                chain.events.append((item.id, row))
            elif (item.id, row) not in node.rows:
                node.rows.append((item.id, row))
    # 3. relations: the subject, its ancestors and descendants, and the rest
    chain.subject_keys += [n.key for n in _subjects(case, chain, node_for)]
    chain.alert_keys = list(chain.subject_keys)
    for item, row in _rows(evidence):
        if item.kind == "process_lineage" and item.entity_type in ("launched", "service", "instigator"):
            node = node_for(row, create=False)
            if node is None or node.key in chain.subject_keys or str(row.get("event.code")) not in START_CODES:
                continue
            if item.entity_type == "instigator":
                chain.instigator_keys.append(node.key)
            elif item.entity_type == "launched" or _is_service_subject(case, chain, node):
                chain.subject_keys.append(node.key)
    _relate(chain, knowledge or Knowledge.load())
    _relate_origins(chain, node_for, knowledge or Knowledge.load())
    return chain


def _better_start(row: dict[str, Any], current: dict[str, Any], latest: datetime) -> bool:
    """Sysmon's start event beats Security's; among starts of one pid (pids are reused), the newest that
    is not after the alert is the process the alert saw."""
    if str(row.get("event.code")) == "1" and str(current.get("event.code")) != "1":
        return True
    if row.get("process.entity_id") or str(row.get("event.code")) != str(current.get("event.code")):
        return False
    new, old = parse_time(row.get("@timestamp")), parse_time(current.get("@timestamp"))
    if new is None or old is None or new > latest:
        return False
    return old > latest or new > old


def _subjects(case: Case, chain: Chain, node_for: Any, limit: int = 5) -> list[Node]:
    """The alert's own process, then every other process its triggering events name."""
    out: list[Node] = []
    proc = case.alert.process
    if proc and (proc.entity_id or proc.pid is not None):
        node = node_for({"process.entity_id": proc.entity_id, "process.pid": proc.pid, "host.hostname": chain.host})
        if node is not None:
            out.append(node)
    for item in case.evidence:
        if item.kind != "alert_events" or item.status != "ok":
            continue
        for row in item.sample:
            node = node_for(row) if _key(row) else None
            if node is not None and node not in out and len(out) < limit:
                out.append(node)
    return out


def _is_service_subject(case: Case, chain: Chain, node: Node) -> bool:
    """A process the service control manager started for the alert's service."""
    return bool(chain.services) and str((node.start or {}).get("process.parent.executable") or "").lower().endswith(
        "\\services.exe")


def _relate(chain: Chain, knowledge: Knowledge) -> None:
    """Subject and instigators, their ancestors up to the session root, and everything the subject,
    the instigators and the non-root ancestors started (siblings included: an ancestor's other
    children are what that ancestor did)."""
    children: dict[str, list[Node]] = {}
    for node in chain.nodes.values():
        if node.parent_key:
            children.setdefault(node.parent_key, []).append(node)
    tops: list[str] = []
    for key in chain.subject_keys + chain.instigator_keys:
        node = chain.nodes.get(key)
        if node is None:
            continue
        if key in chain.instigator_keys:
            node.relation = "instigator" if node.relation == "context" else node.relation
        elif node.relation in ("context", "ancestor", "descendant"):
            node.relation = "subject" if key in chain.alert_keys else "descendant"
        tops.append(key)
        parent, seen = chain.parent_of(node), {key}
        while parent is not None and parent.key not in seen and parent.host == node.host:
            seen.add(parent.key)
            if parent.relation == "context":
                parent.relation = "ancestor"
            if knowledge.is_root(parent.executable):
                break
            tops.append(parent.key)
            parent = chain.parent_of(parent)
    seen = set(tops)
    stack = [child for top in tops for child in children.get(top, [])]
    while stack:
        child = stack.pop()
        if child.key in seen or child.host != chain.host:
            continue
        seen.add(child.key)
        if child.relation == "context":
            child.relation = "descendant"
        stack.extend(children.get(child.key, []))


def _relate_origins(chain: Chain, node_for: Any, knowledge: Knowledge) -> None:
    """Droppers wrote a chain program; injectors wrote into a chain process; remote rows reached in or out."""
    members = {n.key for n in chain.members()}
    for _, row in chain.droppers:
        node = node_for(row)
        if node and node.key not in members and node.relation == "context":
            node.relation = "dropper"
    for node in chain.nodes.values():
        if node.relation != "context":
            continue
        if node.host != chain.host:
            node.relation = "remote"
            continue
        if knowledge.is_root(node.executable):
            continue  # the session and service hosts open every process; that is not injection
        for _, row in node.rows:
            code = str(row.get("event.code"))
            target = row.get("target.process.entity_id")
            if target in members and (code == "8" or (code == "10" and _rights(row) & INJECTION_RIGHTS)):
                node.relation = "injector"
                break


def same_service_binary(service: str, command_line: str) -> bool:
    """A service's ImagePath and the command line it started with name the same program."""
    service = re.sub(r"%+comspec%+", "cmd", service.lower()).strip().strip('"')
    command = command_line.strip().strip('"').lower()
    if not service or not command:
        return False
    tail = service.split(None, 1)[-1] if " " in service else service
    return tail[-40:] in command or service.split("\\")[-1][:40] in command


def _rights(row: dict[str, Any]) -> int:
    try:
        return int(str(row.get("winlog.event_data.GrantedAccess") or "0"), 0)
    except ValueError:
        return 0
