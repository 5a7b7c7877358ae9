"""The attack timeline: the alert's own chain and the related context, ordered by event time.

Rows are recorded evidence rows (never a model's words); each one names the evidence item(s) it came
from so the page links it to `#evidence-<id>`. The chain's rows come first in importance: they are kept
whole; context rows, nearest the alert's time first, fill the rest up to `limit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from siemcrew.crew.chain import Chain
from siemcrew.crew.indicators import account, short_host
from siemcrew.crew.models import Case
from siemcrew.crew.timeutil import parse_time

# Sysmon and Windows Security event codes, as people name them
EVENT_NAMES = {
    "1": "process start", "4688": "process start", "3": "network connection", "5": "process end",
    "7": "image load", "8": "remote thread", "10": "process access", "11": "file create", "12": "registry key",
    "13": "registry value", "15": "file stream", "17": "pipe created", "18": "pipe connected", "22": "DNS query",
    "23": "file delete", "29": "executable written", "4624": "logon", "4625": "failed logon",
    "4648": "explicit-credential logon", "4672": "special privileges", "4697": "service installed",
    "7045": "service installed", "4698": "scheduled task", "4104": "PowerShell script block", "4103": "PowerShell",
    "5140": "share access", "5145": "share file access", "4720": "account created", "4732": "group member added",
    "parent": "parent (started before the data)",
}
# what a row says, most specific first
WHAT_FIELDS = ("process.command_line", "powershell.file.script_block_text", "registry.path", "file.path",
               "dns.question.name", "destination.ip", "service.name", "target.process.executable",
               "process.executable", "message")
CONTEXT_KINDS = ("host_activity", "network_connections", "logon_activity", "persistence_check", "alert_events",
                 "process_activity", "remote_execution", "logon_session", "process_lineage", "process_origin")


@dataclass
class TimelineRow:
    at: datetime | None
    host: str
    event: str
    what: str
    who: str
    relation: str
    evidence_ids: list[str] = field(default_factory=list)

    @property
    def in_chain(self) -> bool:
        return self.relation != "context"


def _what(row: dict[str, Any]) -> str:
    for name in WHAT_FIELDS:
        value = row.get(name)
        if value not in (None, ""):
            text = str(value)
            if name == "destination.ip" and row.get("destination.port") not in (None, ""):
                text += f":{row['destination.port']}"
            if name == "target.process.executable":
                text = f"-> {text}"
            return text[:300]
    return ""


def _row(row: dict[str, Any], evidence_ids: list[str], relation: str) -> TimelineRow:
    code = str(row.get("event.code") or "")
    return TimelineRow(at=parse_time(row.get("@timestamp")), host=short_host(row.get("host.hostname")),
                       event=EVENT_NAMES.get(code, str(row.get("event.action") or code or "event")),
                       what=_what(row), who=account(row) or "", relation=relation, evidence_ids=evidence_ids)


def build_timeline(case: Case, chain: Chain | None, limit: int = 400) -> tuple[list[TimelineRow], int]:
    """(rows ordered by time, rows left out past `limit`): every chain row, then the context rows nearest
    the alert's time. Rows are deduplicated by content; a row recorded by several queries names them all."""
    found: dict[bytes, tuple[dict[str, Any], list[str], list[str]]] = {}  # row, evidence ids, [relation]

    def add(row: dict[str, Any] | None, evidence_id: str | None, relation: str) -> None:
        if not row or not evidence_id or not row.get("@timestamp"):
            return
        key = orjson.dumps(row, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
        entry = found.get(key)
        if entry is None:
            found[key] = (row, [evidence_id], [relation])
            return
        if evidence_id not in entry[1]:
            entry[1].append(evidence_id)
        if entry[2][0] == "context":
            entry[2][0] = relation

    if chain is not None:
        for node in chain.members():
            for evidence_id, row in node.all_rows():
                add(row, evidence_id, node.relation)
        for label, pairs in (("session", chain.sessions), ("remote logon", chain.remote_logons),
                             ("dropper", chain.droppers), ("service", chain.services), ("alert", chain.events)):
            for evidence_id, row in pairs:
                add(row, evidence_id, label)
    for item in case.evidence:
        if item.status == "ok" and item.kind in CONTEXT_KINDS:
            for row in item.sample:
                add(row, item.id, "context")
    chain_rows = [e for e in found.values() if e[2][0] != "context"]
    context = [e for e in found.values() if e[2][0] == "context"]
    room = max(limit - len(chain_rows), 0)
    if len(context) > room:
        moment = case.alert.timestamp if case.alerts else None

        def distance(entry: tuple[dict[str, Any], list[str], list[str]]) -> float:
            at = parse_time(entry[0].get("@timestamp"))
            return abs((at - moment).total_seconds()) if at and moment else float("inf")

        context.sort(key=distance)
    kept = [_row(row, ids, relation[0]) for row, ids, relation in chain_rows + context[:room]]
    floor = datetime.max.replace(tzinfo=None)
    kept.sort(key=lambda r: (r.at is None, r.at.replace(tzinfo=None) if r.at else floor))
    return kept, len(found) - len(kept)
