"""Deterministic investigative reasoning over the evidence a case has recorded.

The playbook brains call `assess()` to reach a verdict, a scope and findings; the verifier calls
it to know which hosts are in scope. It reads only Evidence (what tools recorded), never model
text, and every finding it writes cites the evidence ids it rests on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from siemcrew.crew.indicators import IndicatorSet, account, is_external_ip, is_internal_ip, short_host
from siemcrew.crew.models import Case, Confidence, Evidence, Finding, Verdict
from siemcrew.crew.timeutil import parse_time

REMOTE_LOGON_TYPES = {"3", "10"}
ADMIN_PORTS = {"135", "445", "3389", "5985", "5986", "22"}
REMOTE_TOOLS = re.compile(r"\\(powershell|pwsh|wmic|psexec\w*|winrs|mstsc|sc|schtasks)\.exe$", re.IGNORECASE)
CORROBORATION = 7.0  # summed weight of distinct indicators that is as convincing as one strong one
DIRECT_KINDS = {"alert_events", "process_lineage", "persistence_check"}
CONTEXT_KINDS = {"host_activity", "network_connections", "sigma", "hunt"}
BENIGN_KINDS = {"alert_events", "process_lineage"}


@dataclass
class Signal:
    name: str
    weight: float
    evidence_id: str
    detail: str
    host: str | None = None
    benign: bool = False


@dataclass
class Assessment:
    verdict: Verdict
    confidence: Confidence
    malice: float
    benign: float
    signals: list[Signal] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    affected_hosts: list[str] = field(default_factory=list)
    affected_users: list[str] = field(default_factory=list)
    candidate_hosts: list[str] = field(default_factory=list)
    candidate_ips: list[str] = field(default_factory=list)
    rare_external_ips: list[str] = field(default_factory=list)
    malicious_processes: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""


def _rows(items: Iterable[Evidence]) -> Iterable[tuple[Evidence, dict[str, Any]]]:
    for item in items:
        if item.status == "ok":
            for row in item.sample:
                yield item, row


def _detail(row: dict[str, Any]) -> str:
    for key in ("process.command_line", "registry.path", "service.executable", "powershell.script_block_text",
                "target.process.executable", "destination.ip", "file.path", "process.executable"):
        if row.get(key):
            return f"{key}={str(row[key])[:160]}"
    return f"event.code={row.get('event.code')}"


class Reasoner:
    """Turns a case's evidence into signals, a scope and a verdict."""

    def __init__(self, case: Case, inventory: Any, indicators: IndicatorSet | None = None) -> None:
        self.case = case
        self.alert = case.alert
        self.inventory = inventory
        self.ind = indicators or IndicatorSet.load()
        self.host = short_host(self.alert.primary_host)
        self.by_kind: dict[str, list[Evidence]] = defaultdict(list)
        for item in case.evidence:
            self.by_kind[item.kind].append(item)

    # -- signals ---------------------------------------------------------------------------------
    def behaviour_signals(self) -> list[Signal]:
        out: list[Signal] = []
        for kind, items in self.by_kind.items():
            if kind not in DIRECT_KINDS | CONTEXT_KINDS:
                continue
            factor = 1.0 if kind in DIRECT_KINDS else 0.5
            for item, row in _rows(items):
                row_host = short_host(row.get("host.hostname") or row.get("host.name")) or item.entity
                hits = self.ind.hits(row)
                tainted = any(not h.benign for h in hits)
                for hit in hits:
                    if hit.benign and (kind not in BENIGN_KINDS or item.entity_type == "process_children" or tainted):
                        continue  # benign automation elsewhere, or mixed with malice, explains nothing
                    weight = hit.weight if hit.benign else hit.weight * factor
                    out.append(Signal(hit.name, weight, item.id, _detail(row), row_host, hit.benign))
        return out

    def known_software_signals(self) -> list[Signal]:
        """Known software in the alert's own process, its ancestry, or the service it installed."""
        out: list[Signal] = []
        if self.inventory is None:
            return out
        own = (self.alert.process.executable or "").lower() if self.alert.process else ""
        own_service = str(self.alert.event.get("service.name") or "").lower()
        for item, row in _rows(self.by_kind.get("process_lineage", []) + self.by_kind.get("alert_events", [])):
            if item.entity_type == "process_children":
                continue
            service = str(row.get("service.name") or "")
            if item.kind == "alert_events":
                same_process = bool(own) and str(row.get("process.executable") or "").lower() == own
                same_service = bool(own_service) and service.lower() == own_service
                if not (same_process or same_service):
                    continue  # other events in the alert window explain nothing about this alert
            for key in ("process.executable", "process.parent.executable", "service.executable"):
                path = row.get(key)
                known = self.inventory.known_software(str(path)) if path else None
                if known:
                    out.append(Signal("known_software", 3, item.id, f"{path} is {known.name}", self.host, True))
        return out

    def sanctioned_tool_signals(self) -> list[Signal]:
        out: list[Signal] = []
        if self.inventory is None:
            return out
        for item, row in _rows(self.by_kind.get("alert_events", []) + self.by_kind.get("process_lineage", [])):
            user = account(row)
            exe = str(row.get("process.executable") or "")
            if not user or not exe:
                continue
            identity = self.inventory.identity(user)
            tools = [str(t).lower() for t in (getattr(identity, "sanctioned_tools", None) or [])]
            if any(exe.lower().endswith(t.lower().lstrip("*")) or exe.lower() == t for t in tools):
                out.append(Signal("sanctioned_tool", 2, item.id, f"{user} is sanctioned to run {exe}", self.host, True))
        return out

    def prevalence(self) -> dict[str, dict[str, Any]]:
        """Per prevalence entity: number of hosts, time span in days, evidence ids."""
        stats: dict[str, dict[str, Any]] = {}
        for item in self.by_kind.get("prevalence", []):
            if item.status == "error" or not item.entity:
                continue
            entry = stats.setdefault(item.entity, {"hosts": set(), "times": [], "ids": [], "type": item.entity_type})
            entry["ids"].append(item.id)
            for row in item.sample:
                if "host.hostname" in row and "count" in row:
                    entry["hosts"].add(short_host(row["host.hostname"]))
                moment = parse_time(row.get("@timestamp"))
                if moment:
                    entry["times"].append(moment)
            if item.count and not item.sample and item.query:
                entry.setdefault("count", item.count)
        for entry in stats.values():
            times: list[datetime] = entry["times"]
            entry["days"] = (max(times) - min(times)).total_seconds() / 86400 if len(times) >= 2 else 0.0
            entry["n_hosts"] = len(entry["hosts"])
        return stats

    def prevalence_signals(self) -> list[Signal]:
        out: list[Signal] = []
        proc = self.alert.process
        own = {proc.command_line if proc else None, self.alert.event.get("service.executable")} - {None, ""}
        for value, entry in self.prevalence().items():
            if entry["type"] not in ("process", "service") or value not in own:
                continue
            if entry["n_hosts"] >= self.ind.min_hosts or entry["days"] >= self.ind.min_days:
                what = "command line" if entry["type"] == "process" else "service"
                detail = f"{what} seen on {entry['n_hosts']} host(s) over {entry['days']:.1f} day(s)"
                out.append(Signal(f"prevalent_{what.replace(' ', '_')}", 3, entry["ids"][0], detail, self.host, True))
        return out

    def rare_external(self) -> list[tuple[str, str]]:
        """(ip, evidence id) of external destinations seen on at most `rare_max_hosts` hosts."""
        stats = self.prevalence()
        out = []
        for item, row in _rows(self.by_kind.get("network_connections", [])):
            ip = row.get("destination.ip")
            if not is_external_ip(ip):
                continue
            entry = stats.get(str(ip))
            if entry and entry["n_hosts"] <= self.ind.rare_max_hosts and str(ip) not in {i for i, _ in out}:
                out.append((str(ip), entry["ids"][0]))
        return out

    # -- scope -----------------------------------------------------------------------------------
    def remote_logons(self) -> list[tuple[Evidence, dict[str, Any]]]:
        out = []
        for item, row in _rows(self.by_kind.get("logon_activity", [])):
            if str(row.get("event.code")) != "4624" or str(row.get("logon.type")) not in REMOTE_LOGON_TYPES:
                continue
            if self.ind.is_system_account(account(row)) or not is_internal_ip(row.get("source.ip")):
                continue
            out.append((item, row))
        return out

    def lateral_destinations(self, own: set[str]) -> list[str]:
        """Internal hosts a suspicious process on the alert host reached on remote-administration ports."""
        out: list[str] = []
        for _, row in _rows(self.by_kind.get("network_connections", [])):
            ip = str(row.get("destination.ip") or "")
            if not is_internal_ip(ip) or ip in own or str(row.get("destination.port")) not in ADMIN_PORTS:
                continue
            if str(row.get("network.direction", "outbound")) == "inbound":
                continue
            if self.ind.malice(row) > 0 or REMOTE_TOOLS.search(str(row.get("process.executable") or "")):
                if ip not in out:
                    out.append(ip)
        return out

    def process_owners(self) -> list[str]:
        """Users that events of the traced process name (its start event may predate the data)."""
        owners: list[str] = []
        for _, row in _rows(self.by_kind.get("process_lineage", [])):
            if "count" in row and row.get("user.name"):
                user = account(row)
                if user and not self.ind.is_system_account(user) and user not in owners:
                    owners.append(user)
        return owners

    def logons_before_alert(self, minutes: float = 10.0) -> list[str]:
        """People who logged on to the alert host from another machine just before it fired."""
        users: list[str] = []
        start = (self.alert.first_seen or self.alert.timestamp).timestamp() - minutes * 60
        end = (self.alert.last_seen or self.alert.timestamp).timestamp() + 120
        for item, row in _rows(self.by_kind.get("logon_activity", [])):
            if str(row.get("event.code")) != "4624" or str(row.get("logon.type")) not in REMOTE_LOGON_TYPES:
                continue
            if str(row.get("source.ip") or "").startswith(("127.", "::1")):
                continue
            moment = parse_time(row.get("@timestamp"))
            host = short_host(row.get("host.hostname") or row.get("host.name"))
            if item.entity_type == "host" and host == self.host and moment and start <= moment.timestamp() <= end \
                    and not self.ind.is_system_account(account(row)):
                user = account(row)
                if user and user not in users:
                    users.append(user)
        return users

    def own_addresses(self) -> set[str]:
        addrs: set[str] = set()
        for item, row in _rows(self.by_kind.get("host_addresses", [])):
            if item.entity_type == "host" and short_host(item.entity) == self.host and row.get("source.ip"):
                addrs.add(str(row["source.ip"]))
        return addrs

    def ip_hosts(self) -> dict[str, set[str]]:
        resolved: dict[str, set[str]] = defaultdict(set)
        for item, row in _rows(self.by_kind.get("host_addresses", [])):
            if item.entity_type == "ip" and row.get("host.hostname"):
                resolved[str(item.entity)].add(short_host(row["host.hostname"]))
            if item.entity_type == "host" and row.get("source.ip"):
                resolved[str(row["source.ip"])].add(short_host(item.entity))
        return resolved

    def host_malice(self, host: str) -> tuple[float, list[Signal]]:
        signals = [s for s in self.behaviour_signals() if not s.benign and short_host(s.host) == host]
        best: dict[str, Signal] = {}
        for s in signals:
            if s.name not in best or s.weight > best[s.name].weight:
                best[s.name] = s
        return sum(s.weight for s in best.values()), list(best.values())

    def hunted_hosts(self) -> set[str]:
        return {short_host(e.entity) for e in self.by_kind.get("host_activity", []) if e.status != "error"}

    # -- verdict ---------------------------------------------------------------------------------
    def assess(self) -> Assessment:
        signals = self.behaviour_signals() + self.known_software_signals() + self.sanctioned_tool_signals()
        signals += self.prevalence_signals()
        rare = self.rare_external()
        for ip, eid in rare:
            signals.append(Signal("rare_external_destination", 2, eid, f"destination {ip} seen on no other host", self.host))

        own = self.own_addresses()
        resolved = self.ip_hosts()
        hunted = self.hunted_hosts()
        candidate_hosts: list[str] = []
        candidate_ips: list[str] = []
        lateral_users: dict[str, list[str]] = defaultdict(list)  # host -> users
        logon_ids: dict[str, list[str]] = defaultdict(list)
        for item, row in self.remote_logons():
            target = short_host(row.get("host.hostname") or row.get("host.name"))
            src_ip = str(row.get("source.ip"))
            user = account(row) or ""
            if target and target != self.host and item.entity_type == "ip":
                candidate_hosts.append(target)  # logon from the alert host onto another host
                lateral_users[target].append(user)
                logon_ids[target].append(item.id)
            elif target == self.host and src_ip not in own:
                origin = sorted(resolved.get(src_ip, set()) - {self.host})
                if origin:
                    candidate_hosts.extend(origin)
                    for host in origin:
                        lateral_users[host].append(user)
                        logon_ids[host].append(item.id)
                elif src_ip not in candidate_ips:
                    candidate_ips.append(src_ip)
        for ip in self.lateral_destinations(own):
            owners = sorted(resolved.get(ip, set()) - {self.host})
            if owners:
                candidate_hosts.extend(owners)
            elif ip not in candidate_ips:
                candidate_ips.append(ip)
        candidate_hosts = sorted(set(candidate_hosts))

        # Distinct-indicator scoring: the strongest instance of each indicator counts once.
        best: dict[str, Signal] = {}
        for s in signals:
            if s.host and short_host(s.host) != self.host and not s.benign:
                continue  # other hosts' behaviour is judged when scoping them
            key = ("b:" if s.benign else "m:") + s.name
            if key not in best or s.weight > best[key].weight:
                best[key] = s
        malicious = [s for k, s in best.items() if k.startswith("m:")]
        benign = [s for k, s in best.items() if k.startswith("b:")]
        malice = sum(s.weight for s in malicious)
        benign_score = sum(s.weight for s in benign)
        direct = [s for s in malicious if s.weight >= 2 and self._is_direct(s)]
        strong = [s for s in malicious if s.weight >= 4 and self._is_direct(s)]

        confirmed: list[str] = []
        for host in candidate_hosts:
            score, _ = self.host_malice(host)
            if host in hunted and score >= 2:
                confirmed.append(host)

        # With a positive benign explanation of the alert's own process, what else happened on the host
        # (judged in its own alerts) does not stop this one from being closed; its own process tree does.
        weighed = sum(s.weight for s in malicious if self._is_direct(s)) if benign_score >= 3 else malice
        corroborated = malice >= CORROBORATION and len([s for s in malicious if s.weight >= 1.5]) >= 3
        if strong or corroborated or (confirmed and malice >= 3):
            verdict: Verdict = "malicious"
            confidence: Confidence = "high" if (strong or corroborated or confirmed) else "medium"
        elif benign_score >= 3 and not [d for d in direct if d.weight >= 3] and weighed <= benign_score / 2:
            # Benign evidence (known software, prevalence, platform automation) must clearly outweigh
            # whatever weak oddities (a hidden window, a discovery command) the process shows.
            verdict, confidence = "benign", ("high" if benign_score >= 5 else "medium")
        elif malice >= 3:
            verdict, confidence = "suspicious", "medium"
        else:
            verdict, confidence = "suspicious", "low"

        affected_hosts = [self.host] if self.host else []
        if verdict != "benign":
            affected_hosts += [h for h in confirmed if h not in affected_hosts]
        users = self._alert_users()
        if verdict != "benign":
            for _, row in _rows(self.by_kind.get("alert_events", []) + self.by_kind.get("process_lineage", [])):
                user = account(row)
                if user and not self.ind.is_system_account(user) and self.ind.malice(row) > 0 and user not in users:
                    users.append(user)
            for host in confirmed:
                for user in lateral_users.get(host, []):
                    if user and user not in users:
                        users.append(user)
            for user in self.process_owners() + self.logons_before_alert():
                if user not in users:
                    users.append(user)
        findings = self._findings(verdict, malicious, benign, confirmed, lateral_users, logon_ids)
        if corroborated and not strong:
            top = sorted(malicious, key=lambda s: -s.weight)[:5]
            findings.insert(0, Finding(agent="", kind="malicious", confidence="high",
                                       statement="independent malicious behaviours corroborate each other: "
                                                 + ", ".join(s.name for s in top),
                                       evidence_ids=sorted({s.evidence_id for s in top}), entities=[self.host]))
        procs = self._malicious_processes()
        summary = self._summary(verdict, confidence, malicious, benign, affected_hosts, users)
        return Assessment(
            verdict=verdict, confidence=confidence, malice=malice, benign=benign_score, signals=signals,
            findings=findings, affected_hosts=affected_hosts, affected_users=users,
            candidate_hosts=candidate_hosts, candidate_ips=candidate_ips,
            rare_external_ips=[ip for ip, _ in rare], malicious_processes=procs, summary=summary,
        )

    def _is_direct(self, signal: Signal) -> bool:
        kinds = {e.id: e.kind for e in self.case.evidence}
        return kinds.get(signal.evidence_id) in DIRECT_KINDS or kinds.get(signal.evidence_id) == "prevalence"

    def _alert_users(self) -> list[str]:
        users = []
        for user in self.alert.entities.users:
            if user and not self.ind.is_system_account(user) and user not in users:
                users.append(user)
        return users

    def _malicious_processes(self) -> list[dict[str, Any]]:
        out = []
        for _, row in _rows(self.by_kind.get("alert_events", []) + self.by_kind.get("process_lineage", [])):
            if self.ind.malice(row) >= 3 and row.get("process.pid") not in (None, ""):
                key = (row.get("host.hostname"), row.get("process.pid"), row.get("process.executable"))
                if key not in [(p["host"], p["pid"], p["executable"]) for p in out]:
                    out.append({"host": short_host(row.get("host.hostname") or self.host), "pid": row.get("process.pid"),
                                "executable": row.get("process.executable")})
        return out

    def _findings(self, verdict: Verdict, malicious: list[Signal], benign: list[Signal], confirmed: list[str],
                  lateral_users: dict[str, list[str]], logon_ids: dict[str, list[str]]) -> list[Finding]:
        findings: list[Finding] = []
        for s in sorted(malicious, key=lambda s: -s.weight):
            kind = "malicious" if s.weight >= 3 else "suspicious"
            conf: Confidence = "high" if s.weight >= 4 and self._is_direct(s) else ("medium" if s.weight >= 2 else "low")
            findings.append(Finding(agent="", kind=kind, confidence=conf, statement=f"{s.name}: {s.detail}",
                                    evidence_ids=[s.evidence_id], entities=[s.host] if s.host else []))
        for s in benign:
            findings.append(Finding(agent="", kind="benign", confidence="high" if s.weight >= 3 else "medium",
                                    statement=f"{s.name}: {s.detail}", evidence_ids=[s.evidence_id],
                                    entities=[s.host] if s.host else []))
        for host in confirmed:
            score, host_signals = self.host_malice(host)
            ids = sorted(set(logon_ids.get(host, []) + [s.evidence_id for s in host_signals]))
            users = ", ".join(sorted({u for u in lateral_users.get(host, []) if u}))
            findings.append(Finding(agent="", kind="malicious", confidence="high" if score >= 4 else "medium",
                                    statement=f"lateral movement: {host} linked by logons of {users or 'unknown'} "
                                              f"and shows {', '.join(s.name for s in host_signals)}",
                                    evidence_ids=ids, entities=[host]))
        return findings

    def _summary(self, verdict: str, confidence: str, malicious: list[Signal], benign: list[Signal],
                 hosts: list[str], users: list[str]) -> str:
        why = ", ".join(s.name for s in sorted(malicious, key=lambda s: -s.weight)[:5]) or "no malicious behaviour"
        ok = ", ".join(s.name for s in benign) or "no benign explanation"
        return (f"{verdict} ({confidence}): behaviour [{why}]; benign evidence [{ok}]; "
                f"hosts {', '.join(hosts) or '-'}; accounts {', '.join(users) or '-'}")
