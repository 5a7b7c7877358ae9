"""Deterministic investigative reasoning over the evidence a case has recorded.

The verdict comes from the alert's own causal chain (crew/chain.py): malicious behaviour of the
alert's process, its ancestors, descendants, injectors, droppers and the remote executions it
received or caused decides; benign explanations of the alert's own process (platform genealogy,
platform automation, management agents, the organisation's known software, established behaviour)
may close it, and never outweigh a strong indicator they do not account for. What else happened on
the host is context: recorded, shown, linked to the case that holds it — it does not decide.

The playbook brains call `assess()` to reach a verdict, a scope and findings; the verifier calls it
to know which hosts are in scope and whether the evidence itself reads benign. It reads only
Evidence (what tools recorded), never model text, and every finding cites the evidence it rests on.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable

from siemcrew.crew.chain import Chain, Node, build
from siemcrew.crew.indicators import IndicatorSet, account, is_external_ip, short_host
from siemcrew.crew.knowledge import Explanation, Knowledge, ProcessFacts
from siemcrew.crew.models import Case, Confidence, Evidence, Finding, Verdict
from siemcrew.crew.timeutil import parse_time

STRONG = 4.0         # an indicator this heavy decides on its own
CORROBORATION = 6.0  # distinct indicators that together are as convincing as a strong one
BENIGN_TOLERANCE = 2.0  # unexplained weak oddities a positive explanation may still close over
COUNTED = ("subject", "ancestor", "descendant", "instigator", "injector", "dropper", "remote")
REMOTE_LOGON_TYPES = {"3", "10"}


@dataclass
class Signal:
    name: str
    weight: float
    evidence_id: str
    detail: str
    host: str | None = None
    benign: bool = False
    relation: str = "subject"


@dataclass
class Assessment:
    verdict: Verdict
    confidence: Confidence
    malice: float
    benign: float
    signals: list[Signal] = field(default_factory=list)
    context: list[Signal] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    affected_hosts: list[str] = field(default_factory=list)
    affected_users: list[str] = field(default_factory=list)
    candidate_hosts: list[str] = field(default_factory=list)
    candidate_ips: list[str] = field(default_factory=list)
    rare_external_ips: list[str] = field(default_factory=list)
    malicious_processes: list[dict[str, Any]] = field(default_factory=list)
    related_cases: list[str] = field(default_factory=list)
    external_destinations: list[str] = field(default_factory=list)  # of the chain, to be checked for rarity
    summary: str = ""


def _rows(items: Iterable[Evidence]) -> Iterable[tuple[Evidence, dict[str, Any]]]:
    for item in items:
        if item.status == "ok":
            for row in item.sample:
                yield item, row


def effective_techniques(case: Case, indicators: IndicatorSet | None = None) -> list[str]:
    """The alert's ATT&CK techniques; for an alert that carries none (a customer's own search or rule),
    the techniques its own events show (an LSASS read -> T1003.001), from the indicators they match."""
    if case.alert.techniques:
        return list(case.alert.techniques)
    ind = indicators or IndicatorSet.load()
    found: list[str] = []
    for item, row in _rows(e for e in case.evidence if e.kind == "alert_events"):
        for hit in ind.hits(row):
            if not hit.benign:
                found += [t for t in ind.techniques(hit.name) if t not in found]
    return found


def _detail(row: dict[str, Any]) -> str:
    for key in ("process.command_line", "registry.path", "service.executable", "powershell.script_block_text",
                "target.process.executable", "destination.ip", "file.path", "file.name", "process.executable"):
        if row.get(key):
            return f"{key}={str(row[key])[:160]}"
    return f"event.code={row.get('event.code')}"


_MEMO: dict[tuple[Any, ...], "Assessment"] = {}


class Reasoner:
    """Turns a case's evidence into the chain's signals, a scope and a verdict."""

    def __init__(self, case: Case, inventory: Any, indicators: IndicatorSet | None = None,
                 knowledge: Knowledge | None = None) -> None:
        self.case = case
        self.alert = case.alert
        self.inventory = inventory
        self.ind = indicators or IndicatorSet.load()
        self.knowledge = knowledge or Knowledge.load()
        self.host = short_host(self.alert.primary_host)
        self.by_kind: dict[str, list[Evidence]] = defaultdict(list)
        for item in case.evidence:
            self.by_kind[item.kind].append(item)

    # -- explanations ----------------------------------------------------------------------------
    def explanations(self, chain: Chain) -> dict[str, list[tuple[str, str, Explanation | None]]]:
        """Per node key: (name, what, explanation) that account for it, own or inherited from an ancestor."""
        own: dict[str, list[tuple[str, str, Explanation | None]]] = {}
        for node in chain.nodes.values():
            if node.relation not in COUNTED and node.relation != "context":
                continue
            found: list[tuple[str, str, Explanation | None]] = []
            facts = chain.facts(node, self.knowledge, self.ind.is_system_account)
            for exp in self.knowledge.explain(facts):
                found.append((exp.name, exp.what, exp))
            found += self._inventory_explanations(node, facts)
            if found:
                own[node.key] = found
        self.own_explanations = own
        covered: dict[str, list[tuple[str, str, Explanation | None]]] = {}
        for node in chain.nodes.values():
            inherited = list(own.get(node.key, []))
            parent, seen = chain.parent_of(node), {node.key}
            while parent is not None and parent.key not in seen:
                seen.add(parent.key)
                inherited += [e for e in own.get(parent.key, []) if e[2] is None or e[2].covers == "subtree"]
                parent = chain.parent_of(parent)
            if inherited:
                covered[node.key] = inherited
        return covered

    def _inventory_explanations(self, node: Node, facts: ProcessFacts) -> list[tuple[str, str, Explanation | None]]:
        """The organisation's own inventory: known software by path, tools an identity is sanctioned to run."""
        out: list[tuple[str, str, Explanation | None]] = []
        if self.inventory is None or not node.executable:
            return out
        known = self.inventory.known_software(node.executable)
        if known:
            out.append(("known_software", f"{node.executable} is {known.name}", None))
        user = node.user
        if user and self.inventory.identity(user).sanctions(node.executable):
            out.append(("sanctioned_tool", f"{user} is sanctioned to run {node.executable}", None))
        return out

    # -- prevalence ------------------------------------------------------------------------------
    def prevalence(self) -> dict[str, dict[str, Any]]:
        """Per value: hosts before the alert, hosts around it, first sighting, evidence ids."""
        stats: dict[str, dict[str, Any]] = {}
        for item in self.by_kind.get("prevalence", []):
            if item.status == "error" or not item.entity:
                continue
            entry = stats.setdefault(item.entity, {"before": set(), "around": set(), "first": None, "ids": [],
                                                   "type": item.entity_type, "hosts": set()})
            entry["ids"].append(item.id)
            for row in item.sample:
                if "host.hostname" in row and "count" in row:
                    bucket = "before" if (item.time_range and item.time_range.end <= self.alert.timestamp) else "around"
                    entry[bucket].add(short_host(row["host.hostname"]))
                    entry["hosts"].add(short_host(row["host.hostname"]))
                moment = parse_time(row.get("@timestamp"))
                if moment and (entry["first"] is None or moment < entry["first"]):
                    entry["first"] = moment
        return stats

    def _prevalence_signals(self) -> tuple[list[Signal], list[Signal]]:
        """Established behaviour (several hosts AND days before the alert) is benign; a never-seen value
        on many hosts within minutes is spread (malicious). Both only for the alert's own process/service."""
        benign: list[Signal] = []
        malicious: list[Signal] = []
        proc = self.alert.process
        # What the process was asked to do (its command line, the service's binary), never a program path
        # alone: powershell.exe is everywhere, and that says nothing about this use of it.
        own = {proc.command_line if proc else None, self.alert.event.get("service.executable")} - {None, ""}
        moment = self.alert.first_seen or self.alert.timestamp
        for value, entry in self.prevalence().items():
            if entry["type"] not in ("process", "service") or value not in own:
                continue
            first: datetime | None = entry["first"]
            age_days = (moment - first).total_seconds() / 86400 if first else 0.0
            if len(entry["before"]) >= self.ind.min_hosts and age_days >= self.ind.min_days:
                benign.append(Signal("established_behaviour", 3, entry["ids"][0],
                                     f"{value[:120]} seen on {len(entry['before'])} host(s) before the alert, "
                                     f"first {age_days:.1f} day(s) earlier", self.host, True))
            elif first and age_days * 1440 <= self.ind.spread_minutes and len(entry["hosts"]) >= self.ind.min_hosts:
                malicious.append(Signal("rapid_spread", self.ind.spread_weight, entry["ids"][0],
                                        f"{value[:120]} first seen {age_days * 1440:.0f} min before the alert and "
                                        f"already on {len(entry['hosts'])} host(s)", self.host))
        return benign, malicious

    # -- signals ---------------------------------------------------------------------------------
    def chain_signals(self, chain: Chain, covered: dict[str, list[tuple[str, str, Explanation | None]]]
                      ) -> tuple[list[Signal], list[Signal]]:
        """(malicious signals the chain shows and nothing explains, explained ones)."""
        weights = {i.name: i.weight for i in self.ind.indicators}
        counted: list[Signal] = []
        explained: list[Signal] = []
        children = {n.key: n.parent_key for n in chain.nodes.values()}
        for node in chain.members(COUNTED):
            explanations = covered.get(node.key, [])
            # Strong indicators an explanation names are accounted for on the recognised process only,
            # never on what it started (a remote-command channel must not launder its payload).
            named = {n for _, _, e in getattr(self, "own_explanations", {}).get(node.key, []) if e is not None
                     for n in e.explains}
            for eid, row in node.all_rows():
                for hit in self.ind.hits(row):
                    if hit.benign:
                        continue
                    if hit.name == "process_injection_access" and \
                            children.get(str(row.get("target.process.entity_id"))) == node.key:
                        continue  # a parent opening the child it just created is not injection
                    sig = Signal(hit.name, hit.weight, eid, _detail(row), node.host, relation=node.relation)
                    if explanations and (weights.get(hit.name, 0) < STRONG or hit.name in named):
                        explained.append(sig)
                    else:
                        counted.append(sig)
        for eid, row in chain.events + chain.services + chain.droppers:
            node_key = str(row.get("process.entity_id") or "")
            if node_key and node_key in chain.nodes and chain.nodes[node_key].relation in COUNTED:
                continue  # already read with its process
            for hit in self.ind.hits(row):
                if not hit.benign:
                    counted.append(Signal(hit.name, hit.weight, eid, _detail(row),
                                          short_host(row.get("host.hostname")) or self.host))
        return counted, explained

    def context_signals(self, chain: Chain) -> list[Signal]:
        """Malicious behaviour on the host that is not part of this alert's chain."""
        members = chain.members(COUNTED)
        keys = {n.key for n in members}
        pids = {f"{n.host}|{(n.start or {}).get('process.pid')}" for n in members if (n.start or {}).get("process.pid")}
        pids |= {n.key for n in members if "|" in n.key}
        out: list[Signal] = []
        for kind in ("host_activity", "network_connections", "persistence_check", "sigma", "hunt", "logon_activity"):
            for item, row in _rows(self.by_kind.get(kind, [])):
                pid_key = f"{short_host(row.get('host.hostname'))}|{row.get('process.pid')}"
                if row.get("process.entity_id") in keys or pid_key in pids:
                    continue
                for hit in self.ind.hits(row):
                    if not hit.benign and hit.weight >= 3:
                        out.append(Signal(hit.name, hit.weight, item.id, _detail(row),
                                          short_host(row.get("host.hostname")) or item.entity, relation="context"))
        return out

    def related_cases(self) -> list[tuple[str, str]]:
        """(case id, evidence id) of other cases on the same host that hold malicious activity."""
        out = []
        for item, row in _rows(self.by_kind.get("related_cases", [])):
            if row.get("case") and row.get("verdict") in ("malicious", "suspicious"):
                out.append((str(row["case"]), item.id))
        return out

    # -- scope -----------------------------------------------------------------------------------
    def chain_users(self, chain: Chain, reached: Iterable[str] = ()) -> list[str]:
        """Who ran the chain: its processes' users, its sessions' accounts, explicit credentials it used,
        and the accounts it logged on with on the hosts it reached."""
        users: list[str] = []

        def add(user: str | None) -> None:
            if user and not self.ind.is_system_account(user) and user not in users:
                users.append(user)

        for node in chain.members(COUNTED):
            if node.relation == "ancestor" and self.knowledge.is_root(node.executable):
                continue
            add(node.user)
        for _, row in chain.sessions:
            if str(row.get("event.code")) in ("4624", "4648"):
                add(account(row))
                if row.get("source.user.name"):
                    add(account({"user.name": row["source.user.name"], "user.domain": row.get("winlog.event_data.SubjectDomainName")}))
        for _, row in chain.services + chain.events:
            add(account(row))
        reached = set(reached)
        for _, row in chain.remote_logons:
            if short_host(row.get("host.hostname")) in reached:
                add(account(row))
        for user in self.alert.entities.users:
            add(user)
        return users

    def remote_hosts(self, chain: Chain) -> dict[str, float]:
        """Other hosts of the chain and the malice their part of it shows."""
        hosts: dict[str, float] = {}
        for node in chain.members(["remote"]):
            score = sum(h.weight for _, row in node.all_rows() for h in self.ind.hits(row) if not h.benign)
            hosts[node.host] = max(hosts.get(node.host, 0.0), score)
        for item in self.by_kind.get("remote_execution", []):
            if item.status == "ok":
                for row in item.sample:
                    host = short_host(row.get("host.hostname"))
                    if host and host != self.host:
                        hosts.setdefault(host, 0.0)
        return hosts

    def external_destinations(self, chain: Chain) -> list[str]:
        """External addresses the chain's processes connected to, in first-seen order."""
        out: list[str] = []
        for node in chain.members(COUNTED):
            for _, row in node.rows:
                ip = str(row.get("destination.ip") or "")
                if is_external_ip(ip) and ip not in out:
                    out.append(ip)
        return out

    def rare_external(self, chain: Chain) -> list[tuple[str, str]]:
        """(ip, evidence id) of external destinations of the chain seen on at most `rare_max_hosts` hosts."""
        stats = self.prevalence()
        out: list[tuple[str, str]] = []
        for node in chain.members(COUNTED):
            for eid, row in node.rows:
                ip = str(row.get("destination.ip") or "")
                if not is_external_ip(ip) or ip in {i for i, _ in out}:
                    continue
                entry = stats.get(ip)
                if entry is not None and len(entry["hosts"]) <= self.ind.rare_max_hosts:
                    out.append((ip, entry["ids"][0]))
        return out

    # -- verdict ---------------------------------------------------------------------------------
    def assess(self) -> Assessment:
        key = (self.case.id, tuple(e.id for e in self.case.evidence), id(self.inventory))
        if key in _MEMO:
            return _MEMO[key]
        result = self._assess()
        if len(_MEMO) > 32:  # repeated within one case (every stage asks); never needed across many cases
            _MEMO.clear()
        _MEMO[key] = result
        return result

    def _assess(self) -> Assessment:
        chain = build(self.case)
        covered = self.explanations(chain)
        counted, explained = self.chain_signals(chain, covered)
        established, spread = self._prevalence_signals()
        counted += spread
        context = self.context_signals(chain)
        related = self.related_cases()

        best: dict[str, Signal] = {}
        for s in counted:
            if s.name not in best or s.weight > best[s.name].weight:
                best[s.name] = s
        malicious = sorted(best.values(), key=lambda s: -s.weight)
        malice = sum(s.weight for s in malicious)
        strong = [s for s in malicious if s.weight >= STRONG]
        corroborated = malice >= CORROBORATION and len([s for s in malicious if s.weight >= 2]) >= 2

        benign = self._benign_signals(chain, covered) + established
        if strong or corroborated:
            verdict: Verdict = "malicious"
            confidence: Confidence = "high"
        elif benign and malice < BENIGN_TOLERANCE:
            verdict, confidence = "benign", ("high" if malice == 0 else "medium")
        elif malice >= 3:
            verdict, confidence = "suspicious", "medium"
        else:
            verdict, confidence = "suspicious", "low"

        remote = self.remote_hosts(chain)
        affected_hosts = [self.host] if self.host and verdict != "benign" else []
        users: list[str] = []
        if verdict != "benign":
            affected_hosts += [h for h, score in remote.items() if score >= 2 and h not in affected_hosts]
            users = self.chain_users(chain, affected_hosts)
        rare = self.rare_external(chain) if verdict == "malicious" else []
        findings = self._findings(verdict, malicious, benign, explained, context, related, corroborated and not strong)
        summary = self._summary(verdict, confidence, malicious, benign, context, related, affected_hosts, users)
        return Assessment(
            verdict=verdict, confidence=confidence, malice=malice, benign=sum(s.weight for s in benign),
            signals=malicious + benign, context=context, findings=findings, affected_hosts=affected_hosts,
            affected_users=users, candidate_hosts=sorted(remote), candidate_ips=[],
            rare_external_ips=[ip for ip, _ in rare], malicious_processes=self._malicious_processes(chain, verdict),
            external_destinations=self.external_destinations(chain) if verdict == "malicious" else [],
            related_cases=[c for c, _ in related], summary=summary,
        )

    def _benign_signals(self, chain: Chain, covered: dict[str, list[tuple[str, str, Explanation | None]]]
                        ) -> list[Signal]:
        """Positive explanations of the alert's own processes — every one of them must be explained
        (nothing else may close the alert)."""
        subjects = [chain.nodes[k] for k in chain.alert_keys if k in chain.nodes]
        if not subjects or any(not covered.get(n.key) for n in subjects):
            return []
        out = []
        for subject in subjects:
            cite = subject.start_id or next((eid for eid, _ in subject.rows), None)
            for name, what, exp in covered.get(subject.key, []):
                if cite:
                    source = f" [{exp.source[:140]}]" if exp is not None and exp.source else ""
                    out.append(Signal(name, 3, cite, f"{what}{source}", subject.host, True, relation="subject"))
        return out

    def _malicious_processes(self, chain: Chain, verdict: str) -> list[dict[str, Any]]:
        if verdict != "malicious":
            return []
        out = []
        for node in chain.members(COUNTED):
            start = node.start or {}
            if node.host != self.host or start.get("process.pid") in (None, ""):
                continue
            if self.knowledge.is_root(node.executable):
                continue
            if any(self.ind.malice(row) >= 3 for _, row in node.all_rows()):
                out.append({"host": node.host, "pid": start.get("process.pid"), "executable": node.executable})
        return out[:5]

    def _findings(self, verdict: Verdict, malicious: list[Signal], benign: list[Signal], explained: list[Signal],
                  context: list[Signal], related: list[tuple[str, str]], corroborated: bool) -> list[Finding]:
        findings: list[Finding] = []
        if corroborated:
            top = malicious[:5]
            findings.append(Finding(agent="", kind="malicious", confidence="high",
                                    statement="independent malicious behaviours of the alert's chain corroborate "
                                              "each other: " + ", ".join(s.name for s in top),
                                    evidence_ids=sorted({s.evidence_id for s in top}), entities=[self.host]))
        for s in malicious:
            kind = "malicious" if s.weight >= 3 else "suspicious"
            conf: Confidence = "high" if s.weight >= STRONG else ("medium" if s.weight >= 2 else "low")
            findings.append(Finding(agent="", kind=kind, confidence=conf,
                                    statement=f"{s.name} ({s.relation} of the alert's chain): {s.detail}",
                                    evidence_ids=[s.evidence_id], entities=[s.host] if s.host else []))
        for s in benign:
            findings.append(Finding(agent="", kind="benign", confidence="high", statement=f"{s.name}: {s.detail}",
                                    evidence_ids=[s.evidence_id], entities=[s.host] if s.host else []))
        if explained and verdict == "benign":
            names = sorted({s.name for s in explained})
            findings.append(Finding(agent="", kind="context", confidence="medium",
                                    statement="accounted for by the explanation: " + ", ".join(names),
                                    evidence_ids=sorted({s.evidence_id for s in explained})[:5]))
        seen: set[str] = set()
        for s in sorted(context, key=lambda s: -s.weight):
            if s.name in seen:
                continue
            seen.add(s.name)
            findings.append(Finding(agent="", kind="context", confidence="medium",
                                    statement=f"host {s.host} also shows {s.name} outside this alert's chain: {s.detail}",
                                    evidence_ids=[s.evidence_id], entities=[s.host] if s.host else []))
        for case_id, eid in related:
            findings.append(Finding(agent="", kind="context", confidence="high",
                                    statement=f"related case {case_id} holds malicious activity on this host",
                                    evidence_ids=[eid], entities=[case_id]))
        return findings

    def _summary(self, verdict: str, confidence: str, malicious: list[Signal], benign: list[Signal],
                 context: list[Signal], related: list[tuple[str, str]], hosts: list[str], users: list[str]) -> str:
        why = ", ".join(f"{s.name} ({s.relation})" for s in malicious[:5]) or "no malicious behaviour"
        ok = ", ".join(s.name for s in benign) or "no benign explanation"
        text = (f"{verdict} ({confidence}): the alert's chain shows [{why}]; benign explanation [{ok}]; "
                f"hosts {', '.join(hosts) or '-'}; accounts {', '.join(users) or '-'}")
        names = sorted({s.name for s in context})
        if names:
            text += f"; host context (not this alert): {', '.join(names[:5])}"
        if related:
            text += f"; related case(s): {', '.join(sorted({c for c, _ in related}))}"
        return text
