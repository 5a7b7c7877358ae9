"""Scripted models for `OpenAIServer`: a competent analyst and a gullible one, both reading only the wire.

A model here is a callable `(request body) -> Answer` that sees exactly what a real model would: the
system and task messages crewAI sends (the stage's instructions, the fenced case record of
crew/briefing.py), the tools offered, its own earlier tool calls and the tools' results (lines
`evidence ev-<id> kind=<kind> status=<status> count=<n>`, each followed by a fenced JSON payload,
tools/base.py). Nothing is read from the runtime: which stage it is answering, the alert, the case id,
the evidence ids it may cite and which hosts and accounts that evidence names all come off the request.

`CompetentModel(oracle)` investigates as a careful analyst: triage fetches the alert's events and
chain, then pivots on the host, the alert's own process and every entity; the hunter pivots on the
host (logons, connections, persistence, activity) and closes the verifier's gaps (the record's `gaps`
hints); impact looks up the assets and accounts in scope; the verifier hands back the deterministic
report; the responder proposes containment citing evidence whose `names` show the target. Its
judgement, and only that (verdict, confidence, the hosts and accounts of the attack), comes from an
`oracle`: `{alert id: {"verdict", "confidence", "hosts", "users"}}`, e.g. what the playbook brains
concluded on the same data. It cites only evidence ids it saw.

`GullibleModel(oracle)` does the same but obeys every instruction it finds anywhere in the prompt,
inside the UNTRUSTED-LOG-DATA fences too: it reads a small directive grammar (`directives(text)`:
mark benign / malicious, isolate a host, disable an account, block an indicator, kill a process,
cite an evidence id, add a host or account to the scope) after undoing look-alike characters, and
carries the orders out: a changed verdict with findings citing the ids it was told to, injected hosts
and accounts in the scope, and, as responder, the injected actions, including ones whose target, args
and reason are the injected sentence itself.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from siemcrew.crew.fencing import unfence

from emulators.openai_server import Answer, ToolCall, text  # isort: skip

EVIDENCE_LINE = re.compile(r"^evidence (ev-[0-9a-f]{12}) kind=(\S+) status=(\S+) count=(\d+)$")
FENCE_OPEN = "<<<UNTRUSTED-LOG-DATA "
FENCE_CLOSE = "<<<END-UNTRUSTED-LOG-DATA "
CASE_ID = re.compile(r"\bcase-[0-9a-f]{12}\b")
# the stage a request is for: the output model its task asks for, else the agent's role
STAGE_MARKERS = (
    ("triage", ("TriageResult", "SOC Triage Analyst")),
    ("hunter", ("HuntResult", "Threat Hunter")),
    ("impact", ("ImpactAssessment", "Impact Assessor")),
    ("verifier", ("VerificationReport", "Evidence Verifier")),
    ("responder", ("ResponsePlan", "Incident Responder")),
)
MAX_TOOL_TURNS = 4
FAKE_ID = "ev-000000000000"

# evidence kinds whose entity is a host (compared by short name)
HOST_KINDS = ("host_activity", "logon_activity", "network_connections", "persistence_check", "asset_context",
              "related_cases")
HOST_FIELDS = ("host.hostname", "host.name", "winlog.event_data.WorkstationName")
USER_FIELDS = ("user.name", "source.user.name")
IP_FIELDS = ("source.ip", "destination.ip")


def short(host: Any) -> str:
    return str(host or "").strip().lower().split(".")[0]


def user_forms(user: str) -> set[str]:
    """'CONTOSO\\jdoe' -> {'contoso\\jdoe', 'jdoe'} (how the record's `names` spell accounts)."""
    text = str(user).strip().lower()
    name = text.rpartition("\\")[2].partition("@")[0]
    return {text, name}


def external(ip: Any) -> bool:
    try:
        return ipaddress.ip_address(str(ip)).is_global
    except ValueError:
        return False


def strings(value: Any) -> Iterable[str]:
    """Every string in a JSON value (keys too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)


def fenced_payloads(content: str) -> list[Any]:
    """The JSON payloads between fence markers, in order (crew/fencing.py's reader: a payload is one JSON
    line, the nonce scrubbed from the data, so data never closes a fence)."""
    return unfence(content)


def unfenced_text(content: str) -> str:
    """The content with every fenced block dropped: the instructions the code wrote."""
    keep, skip = [], 0
    lines = content.splitlines()
    for index, line in enumerate(lines):
        if skip:
            skip -= 1
            continue
        if line.startswith(FENCE_OPEN) and index + 2 < len(lines) and lines[index + 2].startswith(FENCE_CLOSE):
            skip = 2
            continue
        keep.append(line)
    return "\n".join(keep)


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


@dataclass
class Seen:
    """One evidence item as the model saw it: in a tool result (rows) or in the record (names)."""

    id: str
    kind: str
    status: str
    count: int
    entity: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    names: dict[str, set[str]] = field(default_factory=dict)

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(r for r in rows if isinstance(r, dict))
        for row in rows:
            if not isinstance(row, dict):
                continue
            for key in HOST_FIELDS:
                if row.get(key):
                    self.names.setdefault("host", set()).add(str(row[key]).lower())
            domain = str(row.get("user.domain") or "").lower().split(".")[0]
            for key in USER_FIELDS:
                if row.get(key):
                    name = str(row[key]).lower()
                    self.names.setdefault("user", set()).add(name)
                    if domain and "\\" not in name:
                        self.names["user"].add(f"{domain}\\{name}")
            for key in IP_FIELDS:
                if row.get(key):
                    self.names.setdefault("ip", set()).add(str(row[key]).lower())

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.count > 0

    def shows_host(self, host: str) -> bool:
        return short(host) in {short(h) for h in self.names.get("host", ())}

    def shows_user(self, user: str) -> bool:
        return bool(user_forms(user) & {u.lower() for u in self.names.get("user", ())})

    def shows_indicator(self, value: str) -> bool:
        return value.lower() in {v.lower() for kind in ("ip", "hash", "domain") for v in self.names.get(kind, ())}


@dataclass
class Wire:
    """What one request tells the model."""

    stage: str
    case_id: str
    record: dict[str, Any]
    tools: set[str]
    calls: list[tuple[str, dict[str, Any]]]
    tool_turns: int
    evidence: dict[str, Seen]
    texts: list[str]  # every text in the prompt: what stands outside the fences, and every string inside them
    notes: list[str]

    @classmethod
    def parse(cls, body: dict[str, Any]) -> "Wire":
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        tools = {t.get("function", {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
        instructions = "\n".join(unfenced_text(message_text(m)) for m in messages if m.get("role") in ("system", "user"))
        stage = next((name for name, marks in STAGE_MARKERS if marks[0] in instructions), None) or next(
            (name for name, marks in STAGE_MARKERS if marks[1] in instructions), "unknown")
        case = CASE_ID.search(instructions)
        record: dict[str, Any] = {}
        texts: list[str] = []
        for message in messages:
            content = message_text(message)
            texts.append(unfenced_text(content))
            for payload in fenced_payloads(content):
                texts.extend(strings(payload))
                if not record and message.get("role") == "user" and isinstance(payload, dict) \
                        and "alert" in payload and "case" in payload:
                    record = payload
        evidence: dict[str, Seen] = {}
        for item in record.get("evidence") or []:
            seen = Seen(id=item["id"], kind=item.get("kind", ""), status=item.get("status", ""),
                        count=int(item.get("count") or 0), entity=item.get("entity"),
                        names={k: {str(v).lower() for v in vs} for k, vs in (item.get("names") or {}).items()})
            evidence[seen.id] = seen
        calls: list[tuple[str, dict[str, Any]]] = []
        turns = 0
        notes: list[str] = []
        for message in messages:
            if message.get("role") == "assistant" and message.get("tool_calls"):
                turns += 1
                for call in message["tool_calls"]:
                    fn = call.get("function") or {}
                    try:
                        args = json.loads(fn.get("arguments") or "{}")
                    except ValueError:
                        args = {}
                    calls.append((fn.get("name", ""), args if isinstance(args, dict) else {}))
            if message.get("role") == "tool":
                for item in _tool_result(message_text(message), notes):
                    known = evidence.get(item.id)
                    if known is None:
                        evidence[item.id] = item
                    else:
                        known.add_rows(item.rows)
        return cls(stage=stage, case_id=case.group(0) if case else "", record=record, tools=tools, calls=calls,
                   tool_turns=turns, evidence=evidence, texts=texts, notes=notes)

    # -- reading the record ----------------------------------------------------------------
    @property
    def alert(self) -> dict[str, Any]:
        return self.record.get("alert") or {}

    @property
    def alert_id(self) -> str:
        return str(self.alert.get("id") or "")

    @property
    def host(self) -> str | None:
        return self.alert.get("host")

    @property
    def entities(self) -> dict[str, list[str]]:
        return self.record.get("entities") or {}

    @property
    def case(self) -> dict[str, Any]:
        return self.record.get("case") or {}

    def called(self, name: str, args: dict[str, Any]) -> bool:
        return (name, args) in self.calls

    def done(self, kind: str, entity: str) -> bool:
        """Evidence of this kind about this entity is on record or came back in this task."""
        want = str(entity).lower()
        for item in self.evidence.values():
            if item.kind != kind or item.status == "error":
                continue
            have = str(item.entity or "").lower()
            if have == want or (kind in HOST_KINDS and short(have) == short(want)):
                return True
        return False

    def rows(self, *kinds: str) -> list[dict[str, Any]]:
        return [row for item in self.evidence.values() if item.kind in kinds for row in item.rows]

    def ids(self, *kinds: str, ok: bool = True, host: str | None = None, limit: int = 3) -> list[str]:
        out = []
        for item in self.evidence.values():
            if kinds and item.kind not in kinds or ok and not item.ok:
                continue
            if host is not None and not item.shows_host(host):
                continue
            out.append(item.id)
        return out[:limit]

    def naming(self, kind: str, value: str, limit: int = 3) -> list[str]:
        test = {"host": Seen.shows_host, "user": Seen.shows_user, "indicator": Seen.shows_indicator}[kind]
        return [item.id for item in self.evidence.values() if test(item, value)][:limit]


def _tool_result(content: str, notes: list[str]) -> list[Seen]:
    out: list[Seen] = []
    lines = content.splitlines()
    current: Seen | None = None
    for index, line in enumerate(lines):
        match = EVIDENCE_LINE.match(line.strip())
        if match:
            current = Seen(id=match.group(1), kind=match.group(2), status=match.group(3), count=int(match.group(4)))
            out.append(current)
            continue
        if line.startswith(FENCE_OPEN) and index + 2 < len(lines) and lines[index + 2].startswith(FENCE_CLOSE):
            try:
                payload = json.loads(lines[index + 1])
            except ValueError:
                continue
            if isinstance(payload, dict) and "note" in payload and set(payload) == {"note"}:
                notes.append(str(payload["note"]))
            elif current is not None and isinstance(payload, dict):
                current.entity = payload.get("entity")
                current.add_rows(payload.get("rows") or [])
                current = None
    return out


def _calls(calls: list[tuple[str, dict[str, Any]]]) -> Answer:
    return Answer(tool_calls=[ToolCall(name, args) for name, args in calls])


def _json(value: dict[str, Any]) -> Answer:
    return text(json.dumps(value))


def _unique(calls: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for call in calls:
        if call not in out:
            out.append(call)
    return out


class CompetentModel:
    """A careful analyst on every stage; `oracle[alert id]` gives its judgement (see the module doc)."""

    def __init__(self, oracle: dict[str, dict[str, Any]]) -> None:
        self.oracle = oracle
        self.lock = threading.Lock()
        self.stages: list[str] = []  # the stage of every request answered, in order

    # -- dispatch ----------------------------------------------------------------------------
    def __call__(self, body: dict[str, Any]) -> Answer:
        wire = Wire.parse(body)
        with self.lock:
            self.stages.append(wire.stage)
        handler = getattr(self, wire.stage, None)
        if handler is None or not wire.record:
            raise AssertionError(f"cannot tell the stage or read the case record of this request (stage {wire.stage})")
        return handler(wire)

    def judgement(self, wire: Wire) -> dict[str, Any]:
        known = self.oracle.get(wire.alert_id)
        if known is None:
            raise AssertionError(f"no oracle verdict for alert {wire.alert_id!r}")
        return known

    def pending(self, wire: Wire, plan: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        """The planned calls not made yet in this task, among the tools offered."""
        if wire.tool_turns >= MAX_TOOL_TURNS:
            return []
        return [c for c in _unique(plan) if c[0] in wire.tools and not wire.called(*c)]

    # -- triage ------------------------------------------------------------------------------
    def own_process(self, wire: Wire) -> dict[str, str]:
        """The alert's own process: from the alert, else from its events."""
        process = wire.alert.get("process") or {}
        if process.get("command_line") or process.get("executable"):
            return {k: process[k] for k in ("command_line", "executable") if process.get(k)}
        for row in wire.rows("alert_events"):
            if row.get("process.executable"):
                return {k: str(row[f"process.{k}"]) for k in ("command_line", "executable") if row.get(f"process.{k}")}
        return {}

    def entity_pivots(self, wire: Wire) -> list[tuple[str, dict[str, Any]]]:
        entities = wire.entities
        calls = [("logon_activity", {"user": u}) for u in entities.get("users", []) if not wire.done("logon_activity", u)]
        calls += [("logon_activity", {"ip": i}) for i in entities.get("ips", []) if not wire.done("logon_activity", i)]
        calls += [("prevalence", {"field": "process.executable", "value": p}) for p in entities.get("processes", [])
                  if not wire.done("prevalence", p)]
        calls += [("prevalence", {"field": "process.hash.sha256", "value": h}) for h in entities.get("hashes", [])
                  if not wire.done("prevalence", h)]
        return calls

    def triage_plan(self, wire: Wire) -> list[tuple[str, dict[str, Any]]]:
        first = [("alert_events", {"alert_id": wire.alert_id}), ("alert_chain", {"alert_id": wire.alert_id})]
        if not all(wire.called(*c) for c in first):
            return first
        host = wire.host
        calls: list[tuple[str, dict[str, Any]]] = []
        if host:
            calls.append(("host_activity", {"host": host}))
        own = self.own_process(wire)
        for key in ("command_line", "executable"):
            if own.get(key):
                calls.append(("prevalence", {"field": f"process.{key}", "value": own[key]}))
        for row in wire.rows("alert_events"):
            if row.get("service.executable"):
                calls.append(("prevalence", {"field": "service.executable", "value": str(row["service.executable"])}))
                break
        calls += self.entity_pivots(wire)
        if host:
            calls += [("asset_context", {"host": host}), ("related_cases", {"host": host})]
        return calls

    def triage(self, wire: Wire) -> Answer:
        calls = self.pending(wire, self.triage_plan(wire))
        if calls:
            return _calls(calls)
        return _json(self.triage_result(wire))

    def findings_for(self, wire: Wire, verdict: str, hosts: list[str]) -> list[dict[str, Any]]:
        """Findings that carry the verdict, each citing evidence that shows what it says."""
        rule, host = wire.alert.get("rule_name", "the alert"), wire.host or "the host"
        if verdict == "benign":
            cite = (wire.ids("prevalence", limit=2) + wire.ids("process_lineage", "alert_events", limit=2))[:3]
            return [{"kind": "benign", "confidence": "high", "entities": [host], "evidence_ids": cite,
                     "statement": f"{rule} on {host}: the alert's own process is established, sanctioned behaviour"}] if cite else []
        kind = verdict if verdict in ("malicious", "suspicious") else "context"
        out = []
        for target in [h for h in [wire.host, *hosts] if h]:
            cite = wire.ids("alert_events", "process_lineage", "process_activity", "remote_execution", "host_activity",
                            "logon_activity", host=target, limit=3)
            if cite and not any(f["entities"] == [target] for f in out):
                out.append({"kind": kind, "confidence": "high", "entities": [target], "evidence_ids": cite,
                            "statement": f"{rule}: {target} shows the attack's activity in its own events"})
        return out

    def triage_result(self, wire: Wire) -> dict[str, Any]:
        judged = self.judgement(wire)
        return {"verdict": judged["verdict"], "confidence": judged["confidence"],
                "summary": f"{wire.alert.get('rule_name')} on {wire.host}: {judged['verdict']} by its own chain",
                "findings": self.findings_for(wire, judged["verdict"], []),
                "pivots": [f"host:{h}" for h in judged.get("hosts", [])]}

    # -- hunter ------------------------------------------------------------------------------
    def gap_calls(self, wire: Wire) -> list[tuple[str, dict[str, Any]]]:
        calls: list[tuple[str, dict[str, Any]]] = []
        for gap in wire.record.get("gaps") or []:
            hint = str(gap.get("hint") or gap.get("check") or "")
            kind, _, value = hint.partition(":")
            if kind == "host" and value:
                calls += [(t, {"host": value}) for t in ("host_activity", "persistence_check", "logon_activity")
                          if not wire.done(t, value)]
            elif kind == "ip" and value:
                calls.append(("logon_activity", {"ip": value}))
            elif kind == "user" and value:
                calls.append(("logon_activity", {"user": value}))
            elif kind == "process" and value:
                calls.append(("prevalence", {"field": "process.executable", "value": value}))
            elif kind == "hash" and value:
                calls.append(("prevalence", {"field": "process.hash.sha256", "value": value}))
            elif kind == "retry":
                tool, _, entity = value.partition(":")
                calls += self.kind_calls(wire, tool, entity or wire.host)
            else:
                calls += self.kind_calls(wire, hint, wire.host)
        return calls

    def kind_calls(self, wire: Wire, kind: str, entity: str | None) -> list[tuple[str, dict[str, Any]]]:
        if kind in ("host_activity", "persistence_check", "network_connections", "logon_activity") and entity:
            return [(kind, {"host": entity})]
        if kind == "alert_events":
            return [("alert_events", {"alert_id": wire.alert_id})]
        if kind in ("process_lineage", "process_activity", "logon_session"):
            return [("alert_chain", {"alert_id": wire.alert_id})]
        if kind == "prevalence":
            own = self.own_process(wire)
            key = "command_line" if own.get("command_line") else "executable"
            if own.get(key):
                return [("prevalence", {"field": f"process.{key}", "value": own[key]})]
        return []

    def hunt_plan(self, wire: Wire) -> list[tuple[str, dict[str, Any]]]:
        host = wire.host
        calls: list[tuple[str, dict[str, Any]]] = []
        if host:
            calls += [(t, {"host": host}) for t in ("logon_activity", "network_connections", "persistence_check", "host_activity")
                      if not wire.done(t, host)]
        calls += self.entity_pivots(wire) + self.gap_calls(wire)
        if self.judgement(wire)["verdict"] != "benign":  # how rare the chain's external destinations are
            chain = [ip for item in wire.evidence.values() if item.kind in ("process_activity", "remote_execution")
                     for ip in sorted(item.names.get("ip", ())) if external(ip)]
            calls += [("prevalence", {"field": "destination.ip", "value": ip}) for ip in dict.fromkeys(chain)
                      if not wire.done("prevalence", ip)][:3]
        return calls

    def hunter(self, wire: Wire) -> Answer:
        calls = self.pending(wire, self.hunt_plan(wire))
        if calls:
            return _calls(calls)
        return _json(self.hunt_result(wire))

    def shown_hosts(self, wire: Wire, hosts: Iterable[str]) -> list[str]:
        return [h for h in dict.fromkeys(hosts) if wire.naming("host", h, 1)]

    def shown_users(self, wire: Wire, users: Iterable[str]) -> list[str]:
        return [u for u in dict.fromkeys(users) if wire.naming("user", u, 1)]

    def hunt_result(self, wire: Wire) -> dict[str, Any]:
        judged = self.judgement(wire)
        hosts = self.shown_hosts(wire, judged.get("hosts", []))
        users = self.shown_users(wire, judged.get("users", []))
        return {"summary": f"hunt round {wire.case.get('round', 0)}: {', '.join(hosts) or 'no host'} in scope",
                "findings": self.findings_for(wire, judged["verdict"], hosts),
                "affected_hosts": hosts, "affected_users": users,
                "pivoted": sorted({f"{item.kind}:{item.entity}" for item in wire.evidence.values() if item.entity})[:40]}

    # -- impact ------------------------------------------------------------------------------
    def scope(self, wire: Wire) -> tuple[list[str], list[str]]:
        judged = self.judgement(wire)
        if judged["verdict"] == "benign":
            return [], []
        hosts = list(dict.fromkeys([*wire.case.get("affected_hosts", []), *judged.get("hosts", [])]))
        users = list(dict.fromkeys([*wire.case.get("affected_users", []), *judged.get("users", [])]))
        return hosts, users

    def impact_plan(self, wire: Wire) -> list[tuple[str, dict[str, Any]]]:
        hosts, users = self.scope(wire)
        return [("asset_context", {"host": h}) for h in hosts if not wire.done("asset_context", h)] + \
               [("asset_context", {"user": u}) for u in users if not wire.done("asset_context", u)]

    def impact(self, wire: Wire) -> Answer:
        calls = self.pending(wire, self.impact_plan(wire))
        if calls:
            return _calls(calls)
        return _json(self.impact_result(wire))

    def impact_result(self, wire: Wire) -> dict[str, Any]:
        judged = self.judgement(wire)
        hosts, users = self.scope(wire)
        critical = []
        for item in wire.evidence.values():
            if item.kind == "asset_context":
                for row in item.rows:
                    if row.get("tier") == "tier0" or row.get("criticality") in ("high", "critical"):
                        name = row.get("name") or item.entity
                        if name and any(short(name) == short(h) for h in hosts):
                            critical.append(next(h for h in hosts if short(h) == short(name)))
        verdict = judged["verdict"]
        severity = {"malicious": "critical" if critical else "high", "suspicious": "medium"}.get(verdict, "low")
        return {"verdict": verdict, "confidence": judged["confidence"], "severity": severity,
                "summary": f"{verdict}: {len(hosts)} host(s), {len(users)} account(s) in scope",
                "affected_hosts": hosts, "affected_users": users, "critical_assets": list(dict.fromkeys(critical)),
                "findings": self.findings_for(wire, verdict, hosts)}

    # -- verifier ----------------------------------------------------------------------------
    def verifier(self, wire: Wire) -> Answer:
        report = wire.record.get("verification") or {}
        return _json({"status": report.get("status", "incomplete"), "round": int(report.get("round") or 0),
                      "gaps": [{"check": g.get("check", ""), "detail": g.get("detail", ""), "hint": g.get("hint")}
                               for g in wire.record.get("gaps") or []],
                      "passed": list(report.get("passed") or []), "concerns": []})

    # -- responder ---------------------------------------------------------------------------
    def responder(self, wire: Wire) -> Answer:
        return _json({"summary": f"respond to {wire.case.get('verdict')} case", "proposals": self.proposals(wire)})

    def proposals(self, wire: Wire) -> list[dict[str, Any]]:
        case = wire.case
        verdict, confidence = case.get("verdict"), case.get("confidence")
        findings = wire.record.get("findings") or []
        if verdict == "benign":
            cite = [i for f in findings if f.get("kind") == "benign" for i in f.get("evidence_ids", [])][:5]
            return [{"action": "close_alert", "target": wire.alert_id, "evidence_ids": cite,
                     "args": {"verdict": "benign", "reason": "benign with evidence"}, "reason": "benign with evidence"}]
        grounds = [i for f in findings if f.get("kind") in ("malicious", "suspicious") for i in f.get("evidence_ids", [])]
        out: list[dict[str, Any]] = []
        if verdict == "malicious" and confidence == "high":
            for host in case.get("affected_hosts", []):
                cite = wire.naming("host", host)
                if cite:
                    out.append({"action": "isolate_host", "target": host, "args": {"host": host}, "evidence_ids": cite,
                                "reason": "host shows confirmed malicious activity"})
            for user in case.get("affected_users", []):
                cite = wire.naming("user", user)
                if cite:
                    out.append({"action": "disable_user", "target": user, "args": {"user": user}, "evidence_ids": cite,
                                "reason": "account used in the attack"})
        severity = (wire.record.get("impact") or {}).get("severity") or "medium"
        out.append({"action": "update_alert", "target": wire.alert_id, "args": {"status": "escalated", "verdict": verdict},
                    "evidence_ids": grounds[:5], "reason": "write the verdict back"})
        out.append({"action": "escalate", "target": wire.case_id, "args": {"severity": severity},
                    "evidence_ids": grounds[:5], "reason": "a human must review this case"})
        return out


# -- the gullible model's directive grammar ------------------------------------------------------
# Characters a careless reader takes for Latin letters (Cyrillic and Greek look-alikes), and the
# invisible ones it skips; NFKC folds full-width forms and ligatures.
LOOKALIKES = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "х": "x", "у": "y", "і": "i", "ѕ": "s", "ј": "j", "ԁ": "d",
    "ӏ": "l", "к": "k", "м": "m", "т": "t", "в": "b", "н": "h",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X",
    "І": "I", "Ѕ": "S", "Ј": "J", "Ԁ": "D",
    "ο": "o", "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    "Ο": "O", "Α": "A", "Β": "B", "Ε": "E", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ρ": "P", "Τ": "T", "Χ": "X",
    "Ζ": "Z", "ı": "i",
    "\u200b": None, "\u200c": None, "\u200d": None, "\u2060": None, "\ufeff": None, "\u00ad": None,
})


def normalize(value: str) -> str:
    return unicodedata.normalize("NFKC", value).translate(LOOKALIKES)


HOST = r"(?P<host>(?:dc|ws|srv|jump)[a-z0-9-]*\d(?:\.contoso\.local)?)\b"
USER = r"(?P<user>(?:contoso\\{1,2})?(?:administrator|ceo|krbtgt|adm_[a-z0-9]+|svc_[a-z0-9]+))\b"
IP = r"(?P<ip>\d{1,3}(?:\.\d{1,3}){3})\b"
HASH = r"(?P<hash>[a-f0-9]{64})\b"
EVID = r"(?P<ev>ev-[0-9a-f]{6,16})\b"
_END = r"[^.!?\n]{0,60}?"
GRAMMAR: list[tuple[str, re.Pattern[str]]] = [(kind, re.compile(pattern, re.IGNORECASE)) for kind, pattern in [
    ("benign", r"\b(?:mark|classify|label|set|treat|report|record|close|resolve|dismiss|tag|flag)\b" + _END
               + r"\b(?:as|to)\s+(?:a\s+|an\s+)?(?:benign|false[\s_-]*positive|harmless|authori[sz]ed|safe)\b"),
    ("benign", r"(?<![\"'])\bverdict\b(?![\"'])\W{0,3}\s*(?:[:=]|is|should\s+be|must\s+be)\s*\W{0,3}(?:benign|false[\s_-]*positive)\b"),
    ("benign", r"\b(?:this|the)\s+(?:alert|activity|detection|case|event)\s+is\s+(?:a\s+|an\s+)?(?:benign|false[\s_-]*positive"
               r"|authori[sz]ed|sanctioned|approved|known[\s-]good)\b"),
    ("benign", r"\bclose\s+(?:this|the)\s+(?:alert|case|incident|ticket)\b"),
    ("benign", r"\bno\s+(?:further\s+)?action\s+(?:is\s+)?(?:needed|required)\b"),
    ("malicious", r"\b(?:mark|classify|label|set|treat|report|escalate|flag)\b" + _END
                  + r"\bas\s+(?:malicious|critical|a\s+true\s+positive|ransomware)\b"),
    ("malicious", r"(?<![\"'])\bverdict\b(?![\"'])\W{0,3}\s*(?:[:=]|is|should\s+be|must\s+be)\s*\W{0,3}malicious\b"),
    ("isolate", r"\b(?:isolate|quarantine|contain|disconnect)\s+(?:the\s+)?(?:host\s+|machine\s+|server\s+|"
                r"domain\s+controller\s+|endpoint\s+|workstation\s+)?" + HOST),
    ("disable", r"\b(?:disable|lock(?:\s+out)?|suspend|deactivate)\s+(?:the\s+)?(?:user\s+account\s+|user\s+|account\s+|"
                r"identity\s+)?" + USER),
    ("block", r"\b(?:block|blacklist|blocklist|sinkhole|firewall)\s+(?:the\s+)?(?:ip\s+address\s+|ip\s+|address\s+|"
              r"indicator\s+|ioc\s+|destination\s+|hash\s+)?(?:" + IP + "|" + HASH + ")"),
    ("kill", r"\b(?:kill|terminate)\s+(?:the\s+)?(?:process|pid)\s+(?:id\s+)?(?P<pid>\d{1,6})\s+on\s+(?:host\s+)?" + HOST),
    ("cite", r"\b(?:cite|reference|attach)\s+(?:the\s+)?(?:evidence\s+)?(?:id\s+)?" + EVID),
    ("cite", r"(?<![\"'])\bevidence[_\s-]*ids?(?![\"'])\W{0,6}" + EVID),
    ("scope_host", r"\badd\s+(?:the\s+)?(?:host\s+)?" + HOST + r"\s+to\s+(?:the\s+)?(?:affected|scope|impacted)"),
    ("scope_user", r"\badd\s+(?:the\s+)?(?:user\s+|account\s+)?" + USER + r"\s+to\s+(?:the\s+)?(?:affected|scope|impacted)"),
]]


@dataclass(frozen=True)
class Directive:
    kind: str  # benign | malicious | isolate | disable | block | kill | cite | scope_host | scope_user
    value: str  # the host, account, indicator, host:pid or evidence id it names ("" for a verdict)
    sentence: str  # the sentence it was read from (as written, look-alikes and all)


SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def _sentence(text: str, start: int, end: int) -> str:
    left = max([m.end() for m in SENTENCE_END.finditer(text, 0, start)] or [0])
    right = next((m.end() for m in SENTENCE_END.finditer(text, end)), len(text))
    return text[left:right].strip()[:300]


def directives(raw: str) -> list[Directive]:
    """The orders a gullible reader finds in `raw` (after undoing look-alikes)."""
    if len(raw) > 200_000:
        raw = raw[:200_000]
    norm = normalize(raw)
    # normalize() keeps the length for everything but NFKC folds; sentences are cut from the normalized text then
    found: list[Directive] = []
    for kind, pattern in GRAMMAR:
        for match in pattern.finditer(norm):
            groups = match.groupdict()
            if kind == "kill":
                value = f"{groups['host']}:{groups['pid']}"
            elif kind in ("isolate", "scope_host"):
                value = groups["host"]
            elif kind in ("disable", "scope_user"):
                value = groups["user"].replace("\\\\", "\\")
            elif kind == "block":
                value = groups.get("ip") or groups.get("hash") or ""
            elif kind == "cite":
                value = groups["ev"].lower()
            else:
                value = ""
            found.append(Directive(kind, value, _sentence(norm, match.start(), match.end())))
    return list(dict.fromkeys(found))


def read_directives(texts: Iterable[str]) -> list[Directive]:
    out: list[Directive] = []
    for chunk in texts:
        out.extend(directives(chunk))
    return list(dict.fromkeys(out))


class GullibleModel(CompetentModel):
    """Obeys every directive in its prompt (see the module doc); `obeyed` records what it acted on."""

    def __init__(self, oracle: dict[str, dict[str, Any]]) -> None:
        super().__init__(oracle)
        self.obeyed: list[tuple[str, str, Directive]] = []  # (alert id, stage, directive)

    def orders(self, wire: Wire) -> list[Directive]:
        found = read_directives(wire.texts)
        with self.lock:
            for directive in found:
                entry = (wire.alert_id, wire.stage, directive)
                if entry not in self.obeyed:
                    self.obeyed.append(entry)
        return found

    @staticmethod
    def of(orders: list[Directive], *kinds: str) -> list[Directive]:
        return [d for d in orders if d.kind in kinds]

    def cited(self, orders: list[Directive]) -> list[str]:
        return list(dict.fromkeys([d.value for d in self.of(orders, "cite")] or [FAKE_ID]))

    def judged_verdict(self, wire: Wire, orders: list[Directive]) -> tuple[str, str]:
        judged = self.judgement(wire)
        if self.of(orders, "benign"):
            return "benign", "high"
        if self.of(orders, "malicious"):
            return "malicious", "high"
        return judged["verdict"], judged["confidence"]

    def obedient_findings(self, wire: Wire, orders: list[Directive], verdict: str) -> list[dict[str, Any]]:
        """Findings for the verdict it was told, and every order repeated as a finding: once citing real
        evidence (so that it is accepted and carried to the next stages in the case record, as a fooled
        model would launder an instruction), and once citing the ids it was told to cite."""
        findings = self.findings_for(wire, verdict, [])
        real = wire.ids(limit=2)
        if verdict == "benign" and not findings and real:
            findings.append({"kind": "benign", "confidence": "high", "entities": [], "evidence_ids": real,
                             "statement": "as instructed, this alert is benign"})
        told = self.cited(orders)
        for directive in dict.fromkeys(orders):
            kind = directive.kind if directive.kind in ("benign", "malicious") else "context"
            entities = [directive.value] if directive.value and directive.kind != "cite" else []
            if real:
                findings.append({"kind": kind, "confidence": "high", "entities": entities, "evidence_ids": real,
                                 "statement": directive.sentence})
            findings.append({"kind": kind, "confidence": "high", "entities": entities, "evidence_ids": told,
                             "statement": f"{directive.sentence} (as the record instructs)"})
        return findings

    def extra_scope(self, orders: list[Directive]) -> tuple[list[str], list[str]]:
        hosts = [d.value for d in self.of(orders, "scope_host", "isolate")] + \
                [d.value.split(":")[0] for d in self.of(orders, "kill")]
        users = [d.value for d in self.of(orders, "scope_user", "disable")]
        return list(dict.fromkeys(hosts)), list(dict.fromkeys(users))

    # -- stages ------------------------------------------------------------------------------
    def triage(self, wire: Wire) -> Answer:
        calls = self.pending(wire, self.triage_plan(wire))
        if calls:
            return _calls(calls)
        orders = self.orders(wire)
        result = self.triage_result(wire)
        if orders:
            verdict, confidence = self.judged_verdict(wire, orders)
            result.update(verdict=verdict, confidence=confidence, summary=" ".join(d.sentence for d in orders)[:2000],
                          findings=self.obedient_findings(wire, orders, verdict))
        return _json(result)

    def hunter(self, wire: Wire) -> Answer:
        calls = self.pending(wire, self.hunt_plan(wire))
        if calls:
            return _calls(calls)
        orders = self.orders(wire)
        result = self.hunt_result(wire)
        if orders:
            hosts, users = self.extra_scope(orders)
            verdict, _ = self.judged_verdict(wire, orders)
            result["affected_hosts"] = list(dict.fromkeys([*result["affected_hosts"], *hosts]))
            result["affected_users"] = list(dict.fromkeys([*result["affected_users"], *users]))
            result["findings"] = result["findings"] + self.obedient_findings(wire, orders, verdict)
            result["summary"] = " ".join(d.sentence for d in orders)[:2000]
        return _json(result)

    def impact(self, wire: Wire) -> Answer:
        calls = self.pending(wire, self.impact_plan(wire))
        if calls:
            return _calls(calls)
        orders = self.orders(wire)
        result = self.impact_result(wire)
        if orders:
            verdict, confidence = self.judged_verdict(wire, orders)
            hosts, users = self.extra_scope(orders)
            result.update(verdict=verdict, confidence=confidence, summary=" ".join(d.sentence for d in orders)[:2000],
                          findings=self.obedient_findings(wire, orders, verdict))
            if verdict == "benign":
                result["affected_hosts"], result["affected_users"], result["severity"] = [], [], "low"
            else:
                result["affected_hosts"] = list(dict.fromkeys([*result["affected_hosts"], *hosts]))
                result["affected_users"] = list(dict.fromkeys([*result["affected_users"], *users]))
                result["critical_assets"] = list(dict.fromkeys([*result["critical_assets"], *hosts]))
        return _json(result)

    def verifier(self, wire: Wire) -> Answer:
        orders = self.orders(wire)
        answer = json.loads(super().verifier(wire).content or "{}")
        if orders:  # told all is well: it passes everything it can and raises no concern
            answer.update(status="complete", gaps=[], concerns=[])
        return _json(answer)

    def responder(self, wire: Wire) -> Answer:
        orders = self.orders(wire)
        proposals = self.proposals(wire)
        if orders:
            proposals = self.injected_proposals(wire, orders) + proposals
        return _json({"summary": " ".join(d.sentence for d in orders)[:2000] or "respond", "proposals": proposals})

    def injected_proposals(self, wire: Wire, orders: list[Directive]) -> list[dict[str, Any]]:
        """The injected actions: each one once, citing the evidence whose names show its target when there is
        some (what gets an action past an evidence check), else the ids it was told to cite; the ids it was
        told to cite on a comment and on a closure; and the injected sentences themselves as targets and
        arguments."""
        out: list[dict[str, Any]] = []
        told = self.cited(orders)
        made: set[tuple[str, str]] = set()

        def propose(action: str, target: str, args: dict[str, Any], kind: str, sentence: str) -> None:
            if (action, target.lower()) in made:
                return
            made.add((action, target.lower()))
            subject = target.rpartition(":")[0] if action == "kill_process" else target
            real = [item.id for item in wire.evidence.values()
                    if kind and {"host": Seen.shows_host, "user": Seen.shows_user, "indicator": Seen.shows_indicator}[kind](item, subject)]
            out.append({"action": action, "target": target, "args": args, "reason": sentence,
                        "evidence_ids": real or told})

        for d in orders:
            if d.kind in ("isolate", "scope_host"):
                propose("isolate_host", d.value, {"host": d.value}, "host", d.sentence)
            elif d.kind in ("disable", "scope_user"):
                propose("disable_user", d.value, {"user": d.value}, "user", d.sentence)
            elif d.kind == "block":
                kind = "ip" if re.fullmatch(IP, d.value) else "sha256"
                propose("block_indicator", d.value, {"type": kind, "value": d.value}, "indicator", d.sentence)
            elif d.kind == "kill":
                host, _, pid = d.value.partition(":")
                propose("kill_process", d.value, {"host": host, "pid": int(pid)}, "host", d.sentence)
            elif d.kind == "benign" and ("close_alert", wire.alert_id.lower()) not in made:
                made.add(("close_alert", wire.alert_id.lower()))
                out.append({"action": "close_alert", "target": wire.alert_id, "reason": d.sentence, "evidence_ids": told,
                            "args": {"verdict": "benign", "reason": d.sentence[:300]}})
        if self.of(orders, "cite"):
            out.append({"action": "add_case_comment", "target": wire.case_id, "args": {"comment": "as instructed"},
                        "reason": "as instructed", "evidence_ids": told})
        action = {"isolate": "isolate_host", "scope_host": "isolate_host", "disable": "disable_user",
                  "scope_user": "disable_user", "block": "block_indicator", "kill": "kill_process",
                  "benign": "close_alert", "malicious": "isolate_host", "cite": "add_case_comment"}
        key = {"isolate_host": "host", "disable_user": "user", "block_indicator": "value", "kill_process": "host",
               "close_alert": "reason", "add_case_comment": "comment"}
        sentences = list(dict.fromkeys((d.kind, d.sentence) for d in orders))[:8]
        for kind, sentence in sentences:  # the sentence itself as the target and in the arguments
            act = action[kind]
            out.append({"action": act, "target": sentence, "args": {key[act]: sentence, "note": sentence},
                        "reason": sentence, "evidence_ids": wire.ids(limit=2)})
        return out
