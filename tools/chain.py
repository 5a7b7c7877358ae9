"""The alert's own causal chain, traced through the SIEM and recorded as evidence.

An alert is judged by what caused it and what it caused (DESIGN.md, "How a verdict is reached"):
its process (by entity id / ProcessGuid, else by pid and time), the ancestors up to the session root,
the descendants, what those processes did, who injected into them, the files they were started
from (and who wrote those), the files they wrote that were started later, the service that started
them, the logon sessions they ran in and how those sessions were created, and remote executions the
chain received or caused. Every query is one Evidence item; crew/chain.py rebuilds the chain from
them, so the verdict rests only on what was recorded.

Evidence kinds written here: process_lineage (process | process_children | launched | service),
process_activity, process_origin (file | injection | service), logon_session, remote_execution
(origin | target), host_addresses.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Callable

from pydantic import BaseModel, Field

from siemcrew.connectors.base import EventQuery, Filter
from siemcrew.crew.chain import NULL_GUID, same_service_binary
from siemcrew.crew.indicators import IndicatorSet, is_internal_ip, short_host
from siemcrew.crew.knowledge import Knowledge
from siemcrew.crew.models import Alert, Evidence, TimeRange
from siemcrew.crew.timeutil import parse_time
from siemcrew.tools.base import EvidenceTool, rank_by_malice, record_search, scoped

START_CODES = ["1", "4688"]
FILE_WRITE_CODES = ["11", "15", "29"]
SESSION_CODES = ["4624", "4648", "4672", "4627"]
SERVICE_CODES = ["4697", "7045"]
SYSTEM_SESSIONS = {"0x3e7", "0x3e4", "0x3e5", "0x0", "0"}
REMOTE_LOGON_TYPES = {"3", "10"}
ADMIN_PORTS = {135, 445, 3389, 5985, 5986, 22}
SYSMON_CHANNEL = "Microsoft-Windows-Sysmon/Operational"
LAUNCHABLE = re.compile(r"\.(exe|scr|com|pif|bat|cmd|ps1|vbs|js|hta|msi)$", re.IGNORECASE)
REMOTE_NAME = re.compile(r"(?:/node:|\\\\|-computername\s+)[\"']?([A-Za-z0-9][A-Za-z0-9\-_.]{0,62})", re.IGNORECASE)
MAX_DEPTH_UP = 6
MAX_DEPTH_DOWN = 4


def _time(row: dict[str, Any] | None) -> datetime | None:
    return parse_time((row or {}).get("@timestamp"))


def _pid(value: Any) -> int | None:
    try:
        return int(str(value), 0) if value not in (None, "") else None
    except ValueError:
        return None


class ChainTracer:
    """Runs the queries of one chain trace and keeps what they found."""

    def __init__(self, tool: EvidenceTool, alert: Alert) -> None:
        self.tool = tool
        self.ctx = tool.ctx
        self.alert = alert
        self.host = short_host(alert.primary_host)
        self.knowledge = Knowledge.load()
        self.window = self.ctx.window()
        self.items: list[Evidence] = []
        self.starts: dict[str, dict[str, Any]] = {}   # node key -> start event
        self.activity: list[dict[str, Any]] = []
        self.subject_keys: list[str] = []
        self.pids: dict[str, int | None] = {}         # nodes known without a start event
        self.hints: dict[str, str] = {}               # their executable, as their children name it
        self.addresses: dict[str, set[str]] = {}      # host -> its own addresses
        self.resolved: dict[str, list[str]] = {}      # address -> the hosts that own it

    # -- plumbing --------------------------------------------------------------------------
    def search(self, kind: str, entity_type: str, filters: list[Filter], *, host: str | None = None,
               time_range: TimeRange | None = None, any_of: list[list[Filter]] | None = None, limit: int = 500,
               order: str = "asc", group_by: list[str] | None = None,
               rank: Callable[[dict[str, Any]], float] | None = rank_by_malice) -> list[dict[str, Any]]:
        ctx = self.ctx
        where = [Filter(field="host.hostname", value=short_host(host))] if host else []
        query = scoped(ctx, EventQuery(filters=where + filters, any_of=any_of or [], time_range=time_range,
                                       limit=limit, order=order, group_by=group_by or []))
        item, rows = record_search(
            ctx, tool=self.tool.name, kind=kind, entity_type=entity_type, entity=self.entity(host),
            run=lambda: ctx.runtime.siem.search(query), time_range=time_range, rank=rank,
        )
        self.items.append(item)
        return rows

    def entity(self, host: str | None) -> str:
        proc = self.alert.process
        label = (proc.executable or proc.entity_id or str(proc.pid)) if proc else None
        return f"{short_host(host or self.host)}:{label or self.alert.id}"

    @staticmethod
    def key(row: dict[str, Any]) -> str:
        guid = row.get("process.entity_id")
        return str(guid) if guid and guid != NULL_GUID else f"{short_host(row.get('host.hostname'))}|{row.get('process.pid')}"

    def _keep_start(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for row in rows:
            if str(row.get("event.code")) in START_CODES:
                key = self.key(row)
                if key not in self.starts or (str(row.get("event.code")) == "1"
                                              and str(self.starts[key].get("event.code")) != "1"):
                    self.starts[key] = row
                kept.append(row)
        return kept

    # -- the trace ---------------------------------------------------------------------------
    def run(self, alert_rows: list[dict[str, Any]]) -> str:
        subjects = self.subjects(alert_rows)
        installs = self.installs_named(self.service_names(alert_rows))
        subjects += self.service_processes(installs) + self.instigators(alert_rows)
        chain_keys: list[str] = []
        for subject in subjects:
            chain_keys += [k for k in self.lineage(subject) if k not in chain_keys]
        installs += self.service_origins(chain_keys)
        sessions = self.sessions(chain_keys, installs + alert_rows)
        remote_installs = [r for r in self.session_actions(sessions) if str(r.get("event.code")) in SERVICE_CODES]
        for subject in self.service_processes(remote_installs):
            chain_keys += [k for k in self.lineage(subject) if k not in chain_keys]
        descendants = self.descendants([k for k in chain_keys if self.descends(k)])
        roots = [k for k in self.subject_keys if k in chain_keys and not self.descends(k)
                 and self.knowledge.descends(self.exe(k))]
        descendants += self.descendants(roots, around=TimeRange(start=self.alert.timestamp - timedelta(minutes=5),
                                                                end=self.alert.timestamp + timedelta(minutes=5)))
        launched = self.launched(alert_rows + self.activity_of(chain_keys + descendants))
        if launched:
            descendants += launched + self.descendants(launched)
        nodes = list(dict.fromkeys(chain_keys + descendants))
        self.activity += self.activity_of([k for k in nodes if k in self.subject_keys or not self.knowledge.is_root(
            self.exe(k))], record=True)
        self.droppers(nodes)
        self.injectors(nodes)
        self.remote_origins(sessions, alert_rows)
        self.remote_targets(nodes, sessions)
        names = [self.exe(k).split("\\")[-1] for k in nodes if self.exe(k)]
        return f"chain: {len(nodes)} process(es) ({', '.join(names[:8]) or 'no start events'}); " \
               f"{len(sessions)} session event(s)"

    def exe(self, key: str) -> str:
        return str((self.starts.get(key) or {}).get("process.executable") or self.hints.get(key, ""))

    def descends(self, key: str) -> bool:
        """Subjects and the non-root ancestors: what they started is part of what the chain did."""
        exe = self.exe(key)
        return not self.knowledge.is_root(exe) if exe else key in self.subject_keys

    def subjects(self, alert_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The processes the alert is about: its own, else those its events name."""
        proc = self.alert.process
        found: list[dict[str, Any]] = []
        if proc and (proc.entity_id or proc.pid is not None):
            found.append({"process.entity_id": proc.entity_id, "process.pid": proc.pid,
                          "process.executable": proc.executable, "@timestamp": self.alert.timestamp.isoformat(),
                          "host.hostname": self.host})
        for row in alert_rows:
            if (row.get("process.entity_id") or row.get("process.pid") not in (None, "")) and \
                    self.key(row) not in {self.key(f) for f in found}:
                found.append(row)
        return found[:5]

    def instigators(self, alert_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Processes whose command line named the object of the alert's event (the file a service wrote,
        the registry value it set) shortly before: what set it up is part of its cause."""
        names: set[str] = set()
        for row in alert_rows[:20]:
            for field in ("file.path", "registry.data.strings", "service.executable"):
                value = str(row.get(field) or "").split(":Zone.Identifier")[0].strip().strip('"')
                name = re.split(r"[\\/]", value)[-1] if value else ""
                if len(name) >= 6 and "." in name and not re.fullmatch(r"[\w-]+\.(exe|dll|sys)", name, re.IGNORECASE):
                    names.add(name)
        if not names:
            return []
        rows = self._keep_start(self.search(
            "process_lineage", "instigator", [Filter(field="event.code", op="in", value=START_CODES)], host=self.host,
            time_range=TimeRange(start=self.alert.timestamp - timedelta(minutes=30), end=self.alert.timestamp),
            any_of=[[Filter(field="process.command_line", op="contains", value=n) for n in sorted(names)[:5]]],
            limit=10))
        return rows[:3]

    def lineage(self, subject: dict[str, Any]) -> list[str]:
        """The subject's start event and its ancestors up to the session root. A parent whose start
        predates the data is still a node: its children name it, and what it did is still recorded."""
        host = short_host(subject.get("host.hostname")) or self.host
        guid = subject.get("process.entity_id")
        start = self.start_of(host, None if guid == NULL_GUID else guid, _pid(subject.get("process.pid")),
                              _time(subject) or self.alert.timestamp)
        key = self.key(start) if start else self.key({**subject, "host.hostname": host})
        if not start:
            self.pids[key] = _pid(subject.get("process.pid"))
            self.hints[key] = str(subject.get("process.executable") or "")
        self.subject_keys.append(key)
        keys = [key]
        node = start
        for _ in range(MAX_DEPTH_UP):
            if not node or self.knowledge.is_root(node.get("process.executable")):
                break
            parent_guid = node.get("process.parent.entity_id")
            parent = self.start_of(host, None if parent_guid == NULL_GUID else parent_guid, _pid(node.get("process.parent.pid")),
                                   _time(node) or self.alert.timestamp)
            if parent is None:
                guid, pid = node.get("process.parent.entity_id"), _pid(node.get("process.parent.pid"))
                guid = None if guid == NULL_GUID else guid
                if guid or pid is not None:
                    missing = str(guid) if guid else f"{host}|{pid}"
                    self.pids[missing] = pid
                    self.hints[missing] = str(node.get("process.parent.executable") or "")
                    keys.append(missing)
                break
            node = parent
            keys.append(self.key(node))
        return keys

    def start_of(self, host: str, guid: Any, pid: int | None, before: datetime) -> dict[str, Any] | None:
        if guid:
            rows = self._keep_start(self.search("process_lineage", "process", [
                Filter(field="process.entity_id", value=str(guid)), Filter(field="event.code", value="1")],
                host=host, limit=1, rank=None))
            if rows:
                return rows[0]
        if pid is None:
            return None
        rows = self._keep_start(self.search("process_lineage", "process", [
            Filter(field="process.pid", value=pid), Filter(field="event.code", op="in", value=START_CODES)],
            host=host, time_range=TimeRange(start=before - timedelta(days=7), end=before + timedelta(seconds=2)),
            order="desc", limit=4, rank=None))
        if not rows:
            return None
        newest = _time(rows[0]) or before
        sysmon = [r for r in rows if r.get("process.entity_id") and abs(((_time(r) or newest) - newest).total_seconds()) < 5]
        return sysmon[0] if sysmon else rows[0]

    def pid_of(self, key: str) -> int | None:
        return _pid(self.starts[key].get("process.pid")) if key in self.starts else self.pids.get(key)

    def descendants(self, roots: list[str], around: TimeRange | None = None) -> list[str]:
        """Everything the given processes started, level by level."""
        out: list[str] = []
        frontier = list(roots)
        for _ in range(MAX_DEPTH_DOWN):
            guids = [k for k in frontier if "|" not in k]
            pids = [p for k in frontier if (p := self.pid_of(k)) is not None]
            if not guids and not pids:
                break
            group = [Filter(field="process.parent.entity_id", op="in", value=guids)] if guids else []
            if pids:
                group.append(Filter(field="process.parent.pid", op="in", value=pids))
            begin = min((t for k in frontier if (t := _time(self.starts.get(k)))), default=self.window.start)
            window = around or TimeRange(start=min(begin, self.window.start), end=self.window.end)
            rows = self._keep_start(self.search(
                "process_lineage", "process_children", [Filter(field="event.code", op="in", value=START_CODES)],
                host=self.host, time_range=window, any_of=[group], limit=500))
            frontier = []
            for row in rows:
                key = self.key(row)
                if key not in roots and key not in out:
                    frontier.append(key)
                    out.append(key)
            if len(out) > 400:
                break
        return out

    def activity_of(self, keys: list[str], record: bool = False) -> list[dict[str, Any]]:
        """What the chain's processes did (files, registry, network, handles, scripts)."""
        guids = [k for k in keys if "|" not in k]
        pids = sorted({p for k in keys if (p := self.pid_of(k)) is not None})
        if not guids and not pids:
            return []
        if not record:
            # Only file writes matter to find launched artifacts; the full activity is recorded once.
            rows = self.search("process_activity", "process", [
                Filter(field="process.entity_id", op="in", value=guids),
                Filter(field="event.code", op="in", value=FILE_WRITE_CODES)],
                host=self.host, time_range=self.window, limit=500) if guids else []
            return rows
        rows: list[dict[str, Any]] = []
        if guids:
            rows += self.search("process_activity", "process", [
                Filter(field="process.entity_id", op="in", value=guids),
                Filter(field="event.code", op="in", value=["1", "5"], negate=True)],
                host=self.host, time_range=self.window, limit=3000)
        if pids:
            rows += self.search("process_activity", "process", [
                Filter(field="process.pid", op="in", value=pids),
                Filter(field="winlog.channel", value=SYSMON_CHANNEL, negate=True),
                Filter(field="event.code", op="in", value=START_CODES, negate=True)],
                host=self.host, time_range=self.window, limit=3000)
        return rows

    def launched(self, rows: list[dict[str, Any]]) -> list[str]:
        """Processes started from files the chain (or the alert's own event) wrote."""
        paths, hashes = set(), set()
        for row in rows:
            path = str(row.get("file.path") or "").split(":Zone.Identifier")[0]
            if str(row.get("event.code")) in FILE_WRITE_CODES and LAUNCHABLE.search(path):
                paths.add(path)
            digest = row.get("file.hash.sha256")
            if digest and str(row.get("event.code")) in FILE_WRITE_CODES:
                hashes.add(str(digest).lower())
        if not paths and not hashes:
            return []
        group = []
        if paths:
            group.append(Filter(field="process.executable", op="in", value=sorted(paths)[:50]))
        if hashes:
            group.append(Filter(field="process.hash.sha256", op="in", value=sorted(hashes)[:50]))
        found = self._keep_start(self.search(
            "process_lineage", "launched", [Filter(field="event.code", op="in", value=START_CODES)],
            host=self.host, time_range=self.window, any_of=[group], limit=50))
        keys = list(dict.fromkeys(self.key(r) for r in found))
        self.subject_keys += [k for k in keys if k not in self.subject_keys]
        return keys

    def droppers(self, keys: list[str]) -> None:
        """Who wrote the files the chain's programs were started from (and their Mark of the Web)."""
        paths, hashes = set(), set()
        for key in keys:
            start = self.starts.get(key) or {}
            exe = str(start.get("process.executable") or "")
            if exe and not self.knowledge.is_root(exe) and not re.match(r"^([a-z]:)?\\windows\\", exe, re.IGNORECASE):
                paths |= {exe, exe + ":Zone.Identifier"}
            if start.get("process.hash.sha256"):
                hashes.add(str(start["process.hash.sha256"]).lower())
        if not paths and not hashes:
            return
        group = [Filter(field="file.path", op="in", value=sorted(paths)[:40])] if paths else []
        if hashes:
            group.append(Filter(field="file.hash.sha256", op="in", value=sorted(hashes)[:20]))
        self.search("process_origin", "file", [Filter(field="event.code", op="in", value=FILE_WRITE_CODES)],
                    host=self.host, time_range=TimeRange(start=self.window.start - timedelta(days=1), end=self.window.end),
                    any_of=[group], limit=200)

    def injectors(self, keys: list[str]) -> None:
        """Processes that created threads in, or opened for writing, a process of the chain."""
        guids = [k for k in keys if "|" not in k]
        if guids:
            self.search("process_origin", "injection", [
                Filter(field="target.process.entity_id", op="in", value=guids),
                Filter(field="event.code", op="in", value=["8", "10"]),
                Filter(field="process.entity_id", op="in", value=guids, negate=True)],
                host=self.host, time_range=self.window, limit=1000)

    def service_names(self, alert_rows: list[dict[str, Any]]) -> set[str]:
        """Services the alert's events are about (an install, or the service's registry key)."""
        names = {str(r["service.name"]) for r in alert_rows if r.get("service.name")}
        for row in alert_rows:
            match = re.search(r"\\services\\([^\\]+)\\", str(row.get("registry.path") or ""), re.IGNORECASE)
            if match:
                names.add(match.group(1))
        return names

    def installs_named(self, names: set[str]) -> list[dict[str, Any]]:
        if not names:
            return []
        return self.search("process_origin", "service", [
            Filter(field="event.code", op="in", value=SERVICE_CODES),
            Filter(field="service.name", op="in", value=sorted(names))],
            host=self.host, time_range=TimeRange(start=self.window.start - timedelta(days=1), end=self.window.end), limit=20)

    def service_processes(self, installs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The processes the service control manager started for these installs."""
        if not installs:
            return []
        moments = [t for r in installs if (t := _time(r))] or [self.alert.timestamp]
        started = self._keep_start(self.search("process_lineage", "service", [
            Filter(field="event.code", op="in", value=START_CODES),
            Filter(field="process.parent.executable", op="endswith", value="\\services.exe")],
            host=self.host, time_range=TimeRange(start=min(moments) - timedelta(seconds=5),
                                                 end=max(moments) + timedelta(minutes=2)), limit=20, rank=None))
        binaries = [str(r.get("service.executable") or "").lower() for r in installs]
        matched = [r for r in started if any(same_service_binary(b, str(r.get("process.command_line") or "")) for b in binaries)]
        return matched or started[:1]

    def session_actions(self, sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What a network logon session of the chain did on this host: everything a remote session does
        is its caller's doing (services and tasks it created — PsExec-style execution)."""
        ids = sorted({str(r.get("logon.id")).lower() for r in sessions if str(r.get("event.code")) == "4624"
                      and str(r.get("logon.type")) in REMOTE_LOGON_TYPES and r.get("logon.id")} - SYSTEM_SESSIONS)
        if not ids:
            return []
        return self.search("logon_session", "actions", [
            Filter(field="logon.id", op="in", value=ids[:20]),
            Filter(field="event.code", op="in", value=SERVICE_CODES + ["4698", "4702", "5145", "5140"])],
            host=self.host, time_range=self.window, limit=500)

    def service_origins(self, keys: list[str]) -> list[dict[str, Any]]:
        """A chain process the service control manager started: the install of its service, whose
        installer's logon session says who put it there (PsExec-style remote execution included)."""
        out: list[dict[str, Any]] = []
        for key in keys:
            start = self.starts.get(key) or {}
            if not str(start.get("process.parent.executable") or "").lower().endswith("\\services.exe"):
                continue
            if self.knowledge.is_root(start.get("process.executable")):
                continue  # a service host (svchost) is platform genealogy, not an installed program
            moment = _time(start) or self.alert.timestamp
            rows = self.search("process_origin", "service", [Filter(field="event.code", op="in", value=SERVICE_CODES)],
                               host=self.host, time_range=TimeRange(start=moment - timedelta(minutes=10),
                                                                    end=moment + timedelta(seconds=5)), limit=50)
            out += [r for r in rows if same_service_binary(str(r.get("service.executable") or ""),
                                                           str(start.get("process.command_line") or ""))]
        return out

    def sessions(self, keys: list[str], extra_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The logon sessions the chain ran in: how they were created, explicit credentials they used."""
        ids = {str(self.starts[k].get("logon.id")).lower() for k in keys if k in self.starts and self.starts[k].get("logon.id")}
        ids |= {str(r.get("logon.id")).lower() for r in extra_rows if r.get("logon.id")}
        ids -= SYSTEM_SESSIONS
        if not ids:
            return []
        return self.search("logon_session", "session", [
            Filter(field="logon.id", op="in", value=sorted(ids)[:20]),
            Filter(field="event.code", op="in", value=SESSION_CODES)],
            host=self.host, time_range=TimeRange(start=self.window.start - timedelta(days=7), end=self.window.end),
            limit=200, rank=_rank_session)

    def own_addresses(self, host: str) -> set[str]:
        if host not in self.addresses:
            rows = self.search("host_addresses", "host", [Filter(field="network.direction", value="outbound")],
                               host=host, time_range=self.window, group_by=["source.ip"], limit=20, rank=None)
            self.addresses[host] = {str(r["source.ip"]) for r in rows if is_internal_ip(r.get("source.ip"))}
        return self.addresses[host]

    def resolve(self, ip: str) -> list[str]:
        """The hosts that own an address: their outbound connections come from it, or, for a host that
        only serves, the connections it accepts go to it."""
        if ip in self.resolved:
            return self.resolved[ip]
        hosts: list[str] = []
        for address, direction in (("source.ip", "outbound"), ("destination.ip", "inbound")):
            rows = self.search("host_addresses", "ip", [Filter(field=address, value=ip),
                                                         Filter(field="network.direction", value=direction)],
                               time_range=self.window, group_by=["host.hostname"], limit=10, rank=None)
            hosts = [short_host(r["host.hostname"]) for r in rows if r.get("host.hostname")]
            if hosts:
                break
        self.resolved[ip] = hosts
        return hosts

    def remote_origins(self, sessions: list[dict[str, Any]], alert_rows: list[dict[str, Any]]) -> None:
        """A chain that runs in a network logon from another host, or an alert about a connection coming in
        from one: what, on that host, reached in (the connecting process, matched by address, port and time)."""
        own = self.own_addresses(self.host)
        ingress: list[tuple[str, datetime, Any]] = []
        for row in sessions[:50]:
            if str(row.get("event.code")) == "4624" and str(row.get("logon.type")) in REMOTE_LOGON_TYPES:
                ingress.append((str(row.get("source.ip") or ""), _time(row) or self.alert.timestamp, None))
        for row in alert_rows[:20]:
            if row.get("network.direction") == "inbound":
                ingress.append((str(row.get("source.ip") or ""), _time(row) or self.alert.timestamp, row.get("source.port")))
        for ip, moment, port in ingress:
            if not is_internal_ip(ip) or ip in own:
                continue
            for origin in [h for h in self.resolve(ip) if h != self.host][:1]:
                near = TimeRange(start=moment - timedelta(minutes=2), end=moment + timedelta(seconds=30))
                if port not in (None, ""):
                    group = [Filter(field="source.port", value=_pid(port))]
                else:
                    group = [Filter(field="destination.ip", op="in", value=sorted(own))] if own else []
                    group.append(Filter(field="destination.domain", op="startswith", value=self.host))
                rows = self.search("remote_execution", "origin", [], host=origin, time_range=near,
                                   any_of=[group], limit=200)
                self._remote_processes(origin, rows, "origin")
            return  # the first remote ingress explains the chain's origin

    def remote_targets(self, keys: list[str], sessions: list[dict[str, Any]]) -> None:
        """Hosts the chain reached: admin-port connections, explicit credentials, /node: and \\\\host names."""
        own = self.own_addresses(self.host)
        targets: dict[str, datetime] = {}
        for row in self.activity:
            ip = str(row.get("destination.ip") or "")
            port = _pid(row.get("destination.port"))
            if is_internal_ip(ip) and ip not in own and port in ADMIN_PORTS and row.get("network.direction") != "inbound":
                for host in self.resolve(ip)[:1]:
                    targets.setdefault(host, _time(row) or self.alert.timestamp)
        for row in sessions:
            server = short_host(row.get("destination.domain"))
            if str(row.get("event.code")) == "4648" and server and server not in ("LOCALHOST", self.host):
                targets.setdefault(server, _time(row) or self.alert.timestamp)
        for key in keys:
            for name in REMOTE_NAME.findall(str((self.starts.get(key) or {}).get("process.command_line") or "")):
                host = short_host(name)
                if host and host not in (self.host, "LOCALHOST", "127") and not host[0].isdigit():
                    targets.setdefault(host, _time(self.starts[key]) or self.alert.timestamp)
        users = self.chain_users(keys)
        for host, moment in list(targets.items())[:3]:
            near = TimeRange(start=moment - timedelta(minutes=1), end=moment + timedelta(minutes=5))
            logons = self.search("remote_execution", "target", [
                Filter(field="event.code", value="4624"), Filter(field="logon.type", op="in", value=["3", "10"]),
                Filter(field="source.ip", op="in", value=sorted(own) or ["-"])],
                host=host, time_range=near, limit=50, rank=None)
            ids = sorted({str(r["logon.id"]).lower() for r in logons if r.get("logon.id")} - SYSTEM_SESSIONS)
            hosts_of_remote_work = [Filter(field="process.parent.executable", op="endswith", value=f"\\{exe}")
                                    for exe in ("wmiprvse.exe", "wsmprovhost.exe", "services.exe")]
            if ids:
                filters: list[Filter] = []
                group = [Filter(field="logon.id", op="in", value=ids)] + hosts_of_remote_work
            elif users:
                # Logons without a source address: what remote-execution hosts started for the chain's account.
                filters = [Filter(field="user.name", op="in", value=users)]
                group = hosts_of_remote_work
            else:
                continue  # nothing ties the other host's activity to this chain
            rows = self.search("remote_execution", "target",
                               [Filter(field="event.code", op="in", value=START_CODES)] + filters,
                               host=host, time_range=near, any_of=[group], limit=200)
            self._remote_processes(host, rows, "target")

    def chain_users(self, keys: list[str]) -> list[str]:
        """Bare names of the people the chain's processes ran as."""
        rows = [self.starts[k] for k in keys if k in self.starts] + self.activity
        names = {str(r.get("user.name")) for r in rows if r.get("user.name")}
        ind = IndicatorSet.load()
        return sorted(n for n in names if not ind.is_system_account(n))[:10]

    def _remote_processes(self, host: str, rows: list[dict[str, Any]], role: str) -> None:
        """Start events, one parent and what they did, of the processes seen on the other host (by entity
        id where the logs carry one, else by pid: script-block and handle events name only the pid)."""
        guids = sorted({str(r["process.entity_id"]) for r in rows if r.get("process.entity_id")})[:20]
        pids = sorted({p for r in rows if not r.get("process.entity_id") and (p := _pid(r.get("process.pid")))})[:20]
        if guids:
            starts = self.search("remote_execution", role, [Filter(field="process.entity_id", op="in", value=guids),
                                                            Filter(field="event.code", value="1")], host=host, limit=50)
            parents = sorted({str(r["process.parent.entity_id"]) for r in starts
                              if r.get("process.parent.entity_id")} - set(guids))[:20]
            if parents:
                self.search("remote_execution", role, [Filter(field="process.entity_id", op="in", value=parents),
                                                       Filter(field="event.code", value="1")], host=host, limit=50)
            self.search("remote_execution", role, [Filter(field="process.entity_id", op="in", value=guids),
                                                   Filter(field="event.code", op="in", value=["1", "5"], negate=True)],
                        host=host, time_range=self.window, limit=1000)
        if pids:
            self.search("remote_execution", role, [Filter(field="process.pid", op="in", value=pids),
                                                   Filter(field="winlog.channel", value=SYSMON_CHANNEL, negate=True)],
                        host=host, time_range=self.window, limit=1000)


def _rank_session(row: dict[str, Any]) -> float:
    """Session creation first, then explicit credentials, then privileges."""
    return {"4624": 3.0, "4648": 2.0, "4627": 1.0}.get(str(row.get("event.code")), 0.0)


class AlertChainTool(EvidenceTool):
    name: str = "alert_chain"
    description: str = (
        "Trace the alert's own causal chain: its process, ancestors up to the session root, descendants, what "
        "they did, injections into them, the files they started from and wrote, the service and logon session "
        "they ran in, and remote executions into or out of the chain. Judge the alert by this chain."
    )

    class Args(BaseModel):
        alert_id: str = Field(description="the alert id")

    args_schema: type[BaseModel] = Args

    def investigate(self, alert_id: str) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        alert = next((a for a in ctx.case.alerts if a.id == alert_id), ctx.alert)
        alert_rows = [row for e in ctx.evidence("alert_events") for row in e.sample]
        if alert.event and not alert_rows:
            alert_rows = [alert.event]
        tracer = ChainTracer(self, alert)
        note = tracer.run(alert_rows)
        return tracer.items, note
