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
from siemcrew.connectors.slots import CONTEXT, CRITICAL, critical_work
from siemcrew.crew.chain import NULL_GUID, same_service_binary
from siemcrew.crew.indicators import IndicatorSet, is_internal_ip, short_host
from siemcrew.crew.knowledge import Knowledge
from siemcrew.crew.models import Alert, Evidence, TimeRange
from siemcrew.crew.timeutil import parse_time
from siemcrew.tools.alert_events import alert_events_search
from siemcrew.tools.base import EvidenceTool, Search, SentSearches, rank_by_malice, record_searches, scoped

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
TREE_LEAD = timedelta(hours=2)   # how far before the investigation window the host's process tree reaches
TREE_LIMIT = 5000
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
        self.tree_rows: list[dict[str, Any]] = []     # the host's process starts around the alert
        self.tree_truncated = False
        self.tree_start: datetime | None = None
        self.resolved: dict[str, list[str]] = {}      # address -> the hosts that own it
        self.sent: list[SentSearches] = []             # searches only recorded, still running

    # -- plumbing --------------------------------------------------------------------------
    def spec(self, kind: str, entity_type: str, filters: list[Filter], *, host: str | None = None,
             time_range: TimeRange | None = None, any_of: list[list[Filter]] | None = None, limit: int = 500,
             order: str = "asc", group_by: list[str] | None = None,
             rank: Callable[[dict[str, Any]], float] | None = rank_by_malice, entity: str | None = None) -> Search:
        """One search of the trace, not yet run (searches that do not depend on each other run together)."""
        ctx = self.ctx
        where = [Filter(field="host.hostname", value=short_host(host))] if host else []
        query = scoped(ctx, EventQuery(filters=where + filters, any_of=any_of or [], time_range=time_range,
                                       limit=limit, order=order, group_by=group_by or []))
        return Search(tool=self.tool.name, kind=kind, entity_type=entity_type, entity=entity or self.entity(host),
                      run=lambda: ctx.runtime.siem.search(query), time_range=time_range, rank=rank, priority=CRITICAL)

    def batch(self, specs: list[Search | None]) -> list[list[dict[str, Any]]]:
        """Run the searches at once; rows per search, in order (an absent search gives no rows)."""
        wanted = [s for s in specs if s is not None]
        results = iter(record_searches(self.ctx, wanted)) if wanted else iter(())
        out: list[list[dict[str, Any]]] = []
        for spec in specs:
            if spec is None:
                out.append([])
                continue
            item, rows = next(results)
            self.items.append(item)
            out.append(rows)
        return out

    def send(self, specs: list[Search | None]) -> None:
        """Send searches whose answers are only recorded (nothing the trace asks next depends on them):
        they run while the trace goes on, behind the searches it waits for, and `collect` records them."""
        wanted = [s for s in specs if s is not None]
        for spec in wanted:
            spec.priority = CONTEXT
        if wanted:
            self.sent.append(SentSearches(self.ctx, wanted))

    def collect(self) -> None:
        """Record the sent searches, in the order they were sent."""
        for sent in self.sent:
            self.items += [item for item, _ in sent.record()]
        self.sent = []

    def search(self, kind: str, entity_type: str, filters: list[Filter], **kwargs: Any) -> list[dict[str, Any]]:
        return self.batch([self.spec(kind, entity_type, filters, **kwargs)])[0]

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
    def run(self, alert_rows: list[dict[str, Any]], events: Search | None = None) -> str:
        """Round by round: every search of a round goes out at once, the next round needs its answers.
        `events`: the search for the alert's own events, when they are not fetched yet; it goes out with
        the first round, which reads the alert's event as the alert carries it meanwhile."""
        seen = alert_rows = alert_rows or ([self.alert.event] if self.alert.event else [])
        installs, instigators, tree, _ = self.batch([self.installs_spec(self.service_names(seen)),
                                                     self.instigators_spec(seen), self.tree_spec(), events])
        if events is not None:
            fetched = next((i for i in reversed(self.items) if i.kind == "alert_events"), None)
            alert_rows = (fetched.sample if fetched else []) or seen
            # what the fetched events name beyond the alert's own event
            more_installs, more_instigators = self.batch([
                self.installs_spec(self.service_names(alert_rows) - self.service_names(seen)),
                self.instigators_spec(alert_rows, skip=self.instigator_names(seen))])
            installs += more_installs
            instigators += more_instigators
        self.index_tree(tree)
        subjects = self.subjects(alert_rows) + self.service_processes(installs) + self._keep_start(instigators)[:3]
        chain_keys = self.climb(subjects)
        tops = [k for k in chain_keys if self.descends(k)]
        roots = [k for k in self.subject_keys if k in chain_keys and not self.descends(k)
                 and self.knowledge.descends(self.exe(k))]
        near = TimeRange(start=self.alert.timestamp - timedelta(minutes=5), end=self.alert.timestamp + timedelta(minutes=5))
        first_children = self.tree_children(tops) if self.tree_covers(tops) else self.search_spec(self.children_spec(tops))
        first_root_children = self.tree_children(roots, near)
        descendants = self.descendants(tops, first=first_children) + self.descendants(roots, near, first_root_children)
        nodes = list(dict.fromkeys(chain_keys + descendants))
        acting = [k for k in nodes if k in self.subject_keys or not self.knowledge.is_root(self.exe(k))]
        self.send([self.droppers_spec(nodes), self.injectors_spec(nodes), self.starts_spec(chain_keys, "process"),
                   self.starts_spec(descendants, "process_children")] + self.service_origin_specs(chain_keys))
        sessions, own_rows, guid_rows, pid_rows = self.batch(
            [self.sessions_spec(chain_keys, installs + alert_rows), self.addresses_spec(self.host)] + self.activity_specs(acting))
        self.activity = guid_rows + pid_rows
        self.addresses[self.host] = {str(r["source.ip"]) for r in own_rows if is_internal_ip(r.get("source.ip"))}
        # what the sessions did, files the chain wrote that were started, and who owns the addresses it reached
        todo, resolving = self.resolve_batch(self.remote_addresses(sessions, alert_rows, nodes))
        actions, launched_rows, *resolved = self.batch([self.session_actions_spec(sessions),
                                                        self.launched_spec(alert_rows + self.activity)] + resolving)
        self.note_resolved(todo, resolved)
        remote_installs = [r for r in actions if str(r.get("event.code")) in SERVICE_CODES]
        launched = self.note_launched(launched_rows)
        picked = self.pick_service_processes(remote_installs, self.search_spec(self.service_processes_spec(remote_installs)))
        late = launched + [k for k in self.climb(picked) if k not in nodes]
        if late:
            more = self.descendants(late)
            late_nodes = [k for k in late + more if k not in nodes]
            nodes += late_nodes
            self.send([self.droppers_spec(late_nodes), self.injectors_spec(late_nodes)])
            rows = self.batch(self.activity_specs(late_nodes))
            self.activity += rows[0] + rows[1]
        self.remote(sessions, alert_rows, nodes)
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

    @staticmethod
    def instigator_names(alert_rows: list[dict[str, Any]]) -> set[str]:
        """Names of the objects the alert's events are about (a written file, a registry value's data)."""
        names: set[str] = set()
        for row in alert_rows[:20]:
            for field in ("file.path", "registry.data.strings", "service.executable"):
                value = str(row.get(field) or "").split(":Zone.Identifier")[0].strip().strip('"')
                name = re.split(r"[\\/]", value)[-1] if value else ""
                if len(name) >= 6 and "." in name and not re.fullmatch(r"[\w-]+\.(exe|dll|sys)", name, re.IGNORECASE):
                    names.add(name)
        return names

    def instigators_spec(self, alert_rows: list[dict[str, Any]], skip: set[str] | None = None) -> Search | None:
        """Processes whose command line named the object of the alert's event (the file a service wrote,
        the registry value it set) shortly before: what set it up is part of its cause."""
        names = self.instigator_names(alert_rows) - (skip or set())
        if not names:
            return None
        return self.spec(
            "process_lineage", "instigator", [Filter(field="event.code", op="in", value=START_CODES)], host=self.host,
            time_range=TimeRange(start=self.alert.timestamp - timedelta(minutes=30), end=self.alert.timestamp),
            any_of=[[Filter(field="process.command_line", op="contains", value=n) for n in sorted(names)[:5]]],
            limit=10)

    def climb(self, subjects: list[dict[str, Any]]) -> list[str]:
        """The subjects' start events and their ancestors up to the session root, every chain one level per
        round. A parent whose start predates the data is still a node: its children name it. A parent
        its child names as a session root is not fetched: the walk stops there anyway."""
        keys: list[str] = []
        climbing: list[tuple[str, dict[str, Any]]] = []
        heads = [(short_host(s.get("host.hostname")) or self.host, s) for s in subjects]
        answers = self.lookup([(h, s.get("process.entity_id"), s.get("process.pid"), _time(s)) for h, s in heads])
        for (host, subject), rows in zip(heads, answers):
            start = self.pick_start(rows, subject.get("process.entity_id"), subject.get("process.pid"))
            key = self.key(start) if start else self.key({**subject, "host.hostname": host})
            if not start:
                self.pids[key] = _pid(subject.get("process.pid"))
                self.hints[key] = str(subject.get("process.executable") or "")
            if key not in self.subject_keys:
                self.subject_keys.append(key)
            if key not in keys:
                keys.append(key)
            if start:
                climbing.append((host, start))
        for _ in range(MAX_DEPTH_UP):
            asks: list[tuple[str, dict[str, Any]]] = []
            for host, node in climbing:
                if self.knowledge.is_root(node.get("process.executable")):
                    continue
                guid = node.get("process.parent.entity_id")
                guid = None if guid == NULL_GUID else guid
                pid = _pid(node.get("process.parent.pid"))
                if guid is None and pid is None:
                    continue
                parent_exe = str(node.get("process.parent.executable") or "")
                if parent_exe and self.knowledge.is_root(parent_exe):
                    self.note_missing(host, guid, pid, parent_exe, keys)
                    continue
                asks.append((host, node))
            if not asks:
                break
            answers = self.lookup([(h, n.get("process.parent.entity_id"), n.get("process.parent.pid"), _time(n))
                                   for h, n in asks])
            climbing = []
            for (host, node), rows in zip(asks, answers):
                guid = node.get("process.parent.entity_id")
                parent = self.pick_start(rows, guid, node.get("process.parent.pid"))
                if parent is None:
                    self.note_missing(host, None if guid == NULL_GUID else guid, _pid(node.get("process.parent.pid")),
                                      str(node.get("process.parent.executable") or ""), keys)
                    continue
                key = self.key(parent)
                if key not in keys:
                    keys.append(key)
                    climbing.append((host, parent))
        return keys

    def tree_spec(self) -> Search:
        """Every process started on the host around the alert, in one search: the chain's ancestors and
        descendants are read from it, and only what it does not hold is asked for one process at a time."""
        return self.spec("process_lineage", "tree", [Filter(field="event.code", op="in", value=START_CODES)],
                         host=self.host, time_range=TimeRange(start=self.window.start - TREE_LEAD, end=self.window.end),
                         limit=TREE_LIMIT)

    def index_tree(self, rows: list[dict[str, Any]]) -> None:
        self.tree_rows = [r for r in rows if str(r.get("event.code")) in START_CODES]
        self.tree_truncated = len(rows) >= TREE_LIMIT
        self.tree_start = min((t for r in self.tree_rows if (t := _time(r))), default=None)

    def tree_covers(self, keys: list[str]) -> bool:
        """The tree holds every child of these processes (it was not cut short, and they started inside it)."""
        if self.tree_start is None or self.tree_truncated:
            return False
        return all((t := _time(self.starts.get(k))) is not None and t >= self.tree_start for k in keys)

    def tree_children(self, keys: list[str], around: TimeRange | None = None) -> list[dict[str, Any]]:
        guids = {k for k in keys if "|" not in k}
        pids = {p: _time(self.starts.get(k)) for k in keys if (p := self.pid_of(k)) is not None}
        out = []
        for row in self.tree_rows:
            moment = _time(row)
            if around and (moment is None or not around.start <= moment <= around.end):
                continue
            parent_guid = row.get("process.parent.entity_id")
            parent_pid = _pid(row.get("process.parent.pid"))
            if parent_guid in guids or (parent_pid in pids and (pids[parent_pid] is None or moment is None
                                                                 or moment >= pids[parent_pid])):
                out.append(row)
        return out

    def lookup(self, asks: list[tuple[str, Any, Any, datetime | None]]) -> list[list[dict[str, Any]]]:
        """Start events of these processes: from the tree when it holds them, else searched, all at once."""
        found: list[list[dict[str, Any]] | None] = []
        specs: list[Search | None] = []
        for host, guid, pid, before in asks:
            rows = self.from_tree(host, guid, pid, before)
            found.append(rows or None)
            specs.append(None if rows else self.start_spec(host, guid, pid, before))
        searched = self.batch(specs)
        return [rows if rows is not None else answer for rows, answer in zip(found, searched)]

    def from_tree(self, host: str, guid: Any, pid: Any, before: datetime | None) -> list[dict[str, Any]]:
        if host != self.host or not self.tree_rows:
            return []
        guid = None if guid in (None, "", NULL_GUID) else str(guid)
        pid = _pid(pid)
        limit = (before or self.alert.timestamp) + timedelta(seconds=2)
        rows = [r for r in self.tree_rows if (guid and str(r.get("process.entity_id")) == guid)
                or (pid is not None and _pid(r.get("process.pid")) == pid and (_time(r) or limit) <= limit)]
        return sorted(rows, key=lambda r: str(r.get("@timestamp")), reverse=True)

    def starts_spec(self, keys: list[str], entity_type: str) -> Search | None:
        """The start events of the chain's processes, recorded as the evidence the chain is rebuilt from."""
        guids = sorted(k for k in keys if "|" not in k and k in self.starts)
        pids = sorted({p for k in keys if "|" in k and (p := self.pid_of(k)) is not None})
        if not guids and not pids:
            return None
        group = [Filter(field="process.entity_id", op="in", value=guids[:200])] if guids else []
        if pids:
            group.append(Filter(field="process.pid", op="in", value=pids[:200]))
        return self.spec("process_lineage", entity_type, [Filter(field="event.code", op="in", value=START_CODES)],
                         host=self.host, any_of=[group], limit=500, rank=_rank_start if entity_type == "process" else rank_by_malice,
                         time_range=TimeRange(start=self.window.start - timedelta(days=7), end=self.window.end))

    def note_missing(self, host: str, guid: Any, pid: int | None, executable: str, keys: list[str]) -> None:
        missing = str(guid) if guid else f"{host}|{pid}"
        self.pids[missing] = pid
        self.hints[missing] = executable
        if missing not in keys:
            keys.append(missing)

    def start_spec(self, host: str, guid: Any, pid: Any, before: datetime | None) -> Search | None:
        """The start event of one process: by entity id, or by pid among the starts before it (pids are reused)."""
        guid = None if guid in (None, "", NULL_GUID) else str(guid)
        pid = _pid(pid)
        before = before or self.alert.timestamp
        group = [Filter(field="process.entity_id", value=guid)] if guid else []
        if pid is not None:
            group.append(Filter(field="process.pid", value=pid))
        if not group:
            return None
        return self.spec("process_lineage", "process", [Filter(field="event.code", op="in", value=START_CODES)],
                         host=host, any_of=[group], order="desc", limit=6, rank=None,
                         time_range=TimeRange(start=before - timedelta(days=7), end=before + timedelta(seconds=2)))

    def pick_start(self, rows: list[dict[str, Any]], guid: Any, pid: Any) -> dict[str, Any] | None:
        """Sysmon's start event of that entity id, else the newest start of that pid (Sysmon's if it is the
        same moment)."""
        self._keep_start(rows)
        if guid and guid != NULL_GUID:
            exact = [r for r in rows if str(r.get("process.entity_id")) == str(guid)]
            if exact:
                return exact[0]
        pid = _pid(pid)
        same_pid = [r for r in rows if _pid(r.get("process.pid")) == pid] if pid is not None else []
        if not same_pid:
            return None
        newest = _time(same_pid[0]) or self.alert.timestamp
        sysmon = [r for r in same_pid if r.get("process.entity_id")
                  and abs(((_time(r) or newest) - newest).total_seconds()) < 5]
        return sysmon[0] if sysmon else same_pid[0]

    def pid_of(self, key: str) -> int | None:
        return _pid(self.starts[key].get("process.pid")) if key in self.starts else self.pids.get(key)

    def children_spec(self, keys: list[str], around: TimeRange | None = None) -> Search | None:
        guids = [k for k in keys if "|" not in k]
        pids = [p for k in keys if (p := self.pid_of(k)) is not None]
        if not guids and not pids:
            return None
        group = [Filter(field="process.parent.entity_id", op="in", value=guids)] if guids else []
        if pids:
            group.append(Filter(field="process.parent.pid", op="in", value=pids))
        begin = min((t for k in keys if (t := _time(self.starts.get(k)))), default=self.window.start)
        window = around or TimeRange(start=min(begin, self.window.start), end=self.window.end)
        return self.spec("process_lineage", "process_children", [Filter(field="event.code", op="in", value=START_CODES)],
                         host=self.host, time_range=window, any_of=[group], limit=500)

    def descendants(self, roots: list[str], around: TimeRange | None = None,
                    first: list[dict[str, Any]] | None = None) -> list[str]:
        """Everything the given processes started, level by level: read from the host's process tree when it
        holds them, else one search per level."""
        out: list[str] = []
        frontier = list(roots)
        for level in range(MAX_DEPTH_DOWN):
            if not frontier:
                break
            if level == 0 and first is not None:
                rows = first
            elif around is not None or self.tree_covers(frontier):
                rows = self.tree_children(frontier, around)
            else:
                rows = self.search_spec(self.children_spec(frontier, around))
            frontier = []
            for row in self._keep_start(rows):
                key = self.key(row)
                if key not in roots and key not in out:
                    frontier.append(key)
                    out.append(key)
            if len(out) > 400:
                break
        return out

    def search_spec(self, spec: Search | None) -> list[dict[str, Any]]:
        return self.batch([spec])[0]

    def activity_specs(self, keys: list[str]) -> list[Search | None]:
        """What the chain's processes did (files, registry, network, handles, scripts): Sysmon by entity id,
        the other channels (Security, PowerShell) by pid."""
        guids = [k for k in keys if "|" not in k]
        pids = sorted({p for k in keys if (p := self.pid_of(k)) is not None})
        by_guid = self.spec("process_activity", "process", [
            Filter(field="process.entity_id", op="in", value=guids),
            Filter(field="event.code", op="in", value=["1", "5"], negate=True)],
            host=self.host, time_range=self.window, limit=3000) if guids else None
        by_pid = self.spec("process_activity", "process", [
            Filter(field="process.pid", op="in", value=pids),
            Filter(field="winlog.channel", value=SYSMON_CHANNEL, negate=True),
            Filter(field="event.code", op="in", value=START_CODES, negate=True)],
            host=self.host, time_range=self.window, limit=3000) if pids else None
        return [by_guid, by_pid]

    def launched_spec(self, rows: list[dict[str, Any]]) -> Search | None:
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
            return None
        group = []
        if paths:
            group.append(Filter(field="process.executable", op="in", value=sorted(paths)[:50]))
        if hashes:
            group.append(Filter(field="process.hash.sha256", op="in", value=sorted(hashes)[:50]))
        return self.spec("process_lineage", "launched", [Filter(field="event.code", op="in", value=START_CODES)],
                         host=self.host, time_range=self.window, any_of=[group], limit=50)

    def note_launched(self, rows: list[dict[str, Any]]) -> list[str]:
        keys = [k for k in dict.fromkeys(self.key(r) for r in self._keep_start(rows)) if k not in self.subject_keys]
        self.subject_keys += keys
        return keys

    def droppers_spec(self, keys: list[str]) -> Search | None:
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
            return None
        group = [Filter(field="file.path", op="in", value=sorted(paths)[:40])] if paths else []
        if hashes:
            group.append(Filter(field="file.hash.sha256", op="in", value=sorted(hashes)[:20]))
        return self.spec("process_origin", "file", [Filter(field="event.code", op="in", value=FILE_WRITE_CODES)],
                         host=self.host, any_of=[group], limit=200,
                         time_range=TimeRange(start=self.window.start - timedelta(days=1), end=self.window.end))

    def injectors_spec(self, keys: list[str]) -> Search | None:
        """Processes that created threads in, or opened for writing, a process of the chain."""
        guids = [k for k in keys if "|" not in k]
        if not guids:
            return None
        return self.spec("process_origin", "injection", [
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

    def installs_spec(self, names: set[str]) -> Search | None:
        if not names:
            return None
        return self.spec("process_origin", "service", [
            Filter(field="event.code", op="in", value=SERVICE_CODES),
            Filter(field="service.name", op="in", value=sorted(names))],
            host=self.host, time_range=TimeRange(start=self.window.start - timedelta(days=1), end=self.window.end),
            limit=20)

    def service_processes_spec(self, installs: list[dict[str, Any]]) -> Search | None:
        """The processes the service control manager started around these installs."""
        if not installs:
            return None
        moments = [t for r in installs if (t := _time(r))] or [self.alert.timestamp]
        return self.spec("process_lineage", "service", [
            Filter(field="event.code", op="in", value=START_CODES),
            Filter(field="process.parent.executable", op="endswith", value="\\services.exe")],
            host=self.host, time_range=TimeRange(start=min(moments) - timedelta(seconds=5),
                                                 end=max(moments) + timedelta(minutes=2)), limit=20, rank=None)

    def pick_service_processes(self, installs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of those, the ones started with the installed binary (else the first one)."""
        started = self._keep_start(rows)
        binaries = [str(r.get("service.executable") or "").lower() for r in installs]
        matched = [r for r in started if any(same_service_binary(b, str(r.get("process.command_line") or "")) for b in binaries)]
        return matched or started[:1]

    def service_processes(self, installs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.pick_service_processes(installs, self.search_spec(self.service_processes_spec(installs)))

    def session_actions_spec(self, sessions: list[dict[str, Any]]) -> Search | None:
        """What a network logon session of the chain did on this host: everything a remote session does
        is its caller's doing (services and tasks it created — PsExec-style execution)."""
        ids = sorted({str(r.get("logon.id")).lower() for r in sessions if str(r.get("event.code")) == "4624"
                      and str(r.get("logon.type")) in REMOTE_LOGON_TYPES and r.get("logon.id")} - SYSTEM_SESSIONS)
        if not ids:
            return None
        return self.spec("logon_session", "actions", [
            Filter(field="logon.id", op="in", value=ids[:20]),
            Filter(field="event.code", op="in", value=SERVICE_CODES + ["4698", "4702", "5145", "5140"])],
            host=self.host, time_range=self.window, limit=500)

    def service_origin_specs(self, keys: list[str]) -> list[Search | None]:
        """A chain process the service control manager started: the install of its service, whose
        installer's logon session says who put it there (PsExec-style remote execution included)."""
        out: list[Search | None] = []
        for key in keys:
            start = self.starts.get(key) or {}
            if not str(start.get("process.parent.executable") or "").lower().endswith("\\services.exe"):
                continue
            if self.knowledge.is_root(start.get("process.executable")):
                continue  # a service host (svchost) is platform genealogy, not an installed program
            moment = _time(start) or self.alert.timestamp
            out.append(self.spec("process_origin", "service", [Filter(field="event.code", op="in", value=SERVICE_CODES)],
                                 host=self.host, limit=50,
                                 time_range=TimeRange(start=moment - timedelta(minutes=10), end=moment + timedelta(seconds=5))))
        return out

    def sessions_spec(self, keys: list[str], extra_rows: list[dict[str, Any]]) -> Search | None:
        """The logon sessions the chain ran in: how they were created, explicit credentials they used."""
        ids = {str(self.starts[k].get("logon.id")).lower() for k in keys if k in self.starts and self.starts[k].get("logon.id")}
        ids |= {str(r.get("logon.id")).lower() for r in extra_rows if r.get("logon.id")}
        ids -= SYSTEM_SESSIONS
        if not ids:
            return None
        return self.spec("logon_session", "session", [
            Filter(field="logon.id", op="in", value=sorted(ids)[:20]),
            Filter(field="event.code", op="in", value=SESSION_CODES)],
            host=self.host, time_range=TimeRange(start=self.window.start - timedelta(days=7), end=self.window.end),
            limit=200, rank=_rank_session)

    def addresses_spec(self, host: str) -> Search:
        return self.spec("host_addresses", "host", [Filter(field="network.direction", value="outbound")],
                         host=host, time_range=self.window, group_by=["source.ip"], limit=20, rank=None)

    def resolve_specs(self, ip: str) -> list[Search]:
        """The hosts that own an address: their outbound connections come from it, or, for a host that only
        serves, the connections it accepts go to it."""
        return [self.spec("host_addresses", "ip", [Filter(field=address, value=ip),
                                                    Filter(field="network.direction", value=direction)],
                          time_range=self.window, group_by=["host.hostname"], limit=10, rank=None, entity=ip)
                for address, direction in (("source.ip", "outbound"), ("destination.ip", "inbound"))]

    def resolve_batch(self, ips: list[str]) -> tuple[list[str], list[Search | None]]:
        """The addresses not yet resolved, and the searches that resolve them (two per address), so that
        they can go out with other, unrelated searches; `note_resolved` reads the answers."""
        todo = [ip for ip in dict.fromkeys(ips) if ip not in self.resolved]
        return todo, [spec for ip in todo for spec in self.resolve_specs(ip)]

    def note_resolved(self, todo: list[str], answers: list[list[dict[str, Any]]]) -> None:
        for index, ip in enumerate(todo):
            outbound, inbound = answers[2 * index], answers[2 * index + 1]
            self.resolved[ip] = [short_host(r["host.hostname"]) for r in outbound or inbound if r.get("host.hostname")]

    def resolve_all(self, ips: list[str]) -> None:
        todo, specs = self.resolve_batch(ips)
        self.note_resolved(todo, self.batch(specs))

    def remote_addresses(self, sessions: list[dict[str, Any]], alert_rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
        """The addresses `remote` will need resolved: where the chain came in from, the admin ports it reached."""
        own = self.addresses.get(self.host, set())
        return [ip for ip, _, _ in self.ingress(sessions, alert_rows, own)[:1]] + \
            [t for t in self.egress(sessions, keys, own) if _is_address(t)]

    def remote(self, sessions: list[dict[str, Any]], alert_rows: list[dict[str, Any]], keys: list[str]) -> None:
        """Remote executions the chain received (the process on another host that reached in) and caused
        (what the chain started on the hosts it reached)."""
        own = self.addresses.get(self.host, set())
        ingress = self.ingress(sessions, alert_rows, own)
        targets = self.egress(sessions, keys, own)
        self.resolve_all(self.remote_addresses(sessions, alert_rows, keys))
        specs: list[Search | None] = []
        roles: list[tuple[str, str]] = []
        for ip, moment, port in ingress[:1]:  # the first remote ingress explains the chain's origin
            for origin in [h for h in self.resolved.get(ip, []) if h != self.host][:1]:
                near = TimeRange(start=moment - timedelta(minutes=2), end=moment + timedelta(seconds=30))
                if port not in (None, ""):
                    group = [Filter(field="source.port", value=_pid(port))]
                else:
                    group = [Filter(field="destination.ip", op="in", value=sorted(own))] if own else []
                    group.append(Filter(field="destination.domain", op="startswith", value=self.host))
                specs.append(self.spec("remote_execution", "origin", [], host=origin, time_range=near,
                                       any_of=[group], limit=200))
                roles.append((origin, "origin"))
        reached: dict[str, datetime] = {}
        for target, moment in targets.items():
            for host in (self.resolved.get(target, [])[:1] if _is_address(target) else [target]):
                if host != self.host:
                    reached.setdefault(host, moment)
        for host, moment in list(reached.items())[:3]:
            specs.append(self.spec("remote_execution", "target", [
                Filter(field="event.code", value="4624"), Filter(field="logon.type", op="in", value=["3", "10"]),
                Filter(field="source.ip", op="in", value=sorted(own) or ["-"])],
                host=host, time_range=TimeRange(start=moment - timedelta(minutes=1), end=moment + timedelta(minutes=5)),
                limit=50, rank=None))
            roles.append((host, "target-logons"))
        answers = self.batch(specs)
        users = self.chain_users(keys)
        follow: list[tuple[str, str, list[dict[str, Any]]]] = []
        starts: list[Search | None] = []
        for (host, role), rows in zip(roles, answers):
            if role == "origin":
                follow.append((host, "origin", rows))
                continue
            moment = reached[host]
            near = TimeRange(start=moment - timedelta(minutes=1), end=moment + timedelta(minutes=5))
            ids = sorted({str(r["logon.id"]).lower() for r in rows if r.get("logon.id")} - SYSTEM_SESSIONS)
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
            starts.append(self.spec("remote_execution", "target",
                                    [Filter(field="event.code", op="in", value=START_CODES)] + filters,
                                    host=host, time_range=near, any_of=[group], limit=200))
            follow.append((host, "target", []))
        started = iter(self.batch(starts))
        for index, (host, role, rows) in enumerate(follow):
            if role == "target":
                follow[index] = (host, role, next(started))
        self._remote_processes(follow)

    def ingress(self, sessions: list[dict[str, Any]], alert_rows: list[dict[str, Any]], own: set[str]
                ) -> list[tuple[str, datetime, Any]]:
        """Where the chain came in from: its network logons' sources, or the peer of an inbound connection."""
        found: list[tuple[str, datetime, Any]] = []
        for row in sessions[:50]:
            if str(row.get("event.code")) == "4624" and str(row.get("logon.type")) in REMOTE_LOGON_TYPES:
                found.append((str(row.get("source.ip") or ""), _time(row) or self.alert.timestamp, None))
        for row in alert_rows[:20]:
            if row.get("network.direction") == "inbound":
                found.append((str(row.get("source.ip") or ""), _time(row) or self.alert.timestamp, row.get("source.port")))
        return [(ip, moment, port) for ip, moment, port in found if is_internal_ip(ip) and ip not in own]

    def egress(self, sessions: list[dict[str, Any]], keys: list[str], own: set[str]) -> dict[str, datetime]:
        """Where the chain went: admin-port connections (by address), explicit credentials and /node: or
        \\\\host names in command lines (by name)."""
        targets: dict[str, datetime] = {}
        for row in self.activity:
            ip = str(row.get("destination.ip") or "")
            port = _pid(row.get("destination.port"))
            if is_internal_ip(ip) and ip not in own and port in ADMIN_PORTS and row.get("network.direction") != "inbound":
                targets.setdefault(ip, _time(row) or self.alert.timestamp)
        for row in sessions:
            server = short_host(row.get("destination.domain"))
            if str(row.get("event.code")) == "4648" and server and server not in ("LOCALHOST", self.host):
                targets.setdefault(server, _time(row) or self.alert.timestamp)
        for key in keys:
            for name in REMOTE_NAME.findall(str((self.starts.get(key) or {}).get("process.command_line") or "")):
                host = short_host(name)
                if host and host not in (self.host, "LOCALHOST", "127") and not host[0].isdigit():
                    targets.setdefault(host, _time(self.starts[key]) or self.alert.timestamp)
        return targets

    def chain_users(self, keys: list[str]) -> list[str]:
        """Bare names of the people the chain's processes ran as."""
        rows = [self.starts[k] for k in keys if k in self.starts] + self.activity
        names = {str(r.get("user.name")) for r in rows if r.get("user.name")}
        ind = IndicatorSet.load()
        return sorted(n for n in names if not ind.is_system_account(n))[:10]

    def _remote_processes(self, found: list[tuple[str, str, list[dict[str, Any]]]]) -> None:
        """Start events, one parent and what they did, of the processes seen on other hosts (by entity id
        where the logs carry one, else by pid: script-block and handle events name only the pid). Start
        events already found (a target's process starts) are not asked for again: their parents go out
        with the activity searches."""
        specs: list[Search | None] = []
        asked: list[tuple[str, str, list[str]]] = []
        for host, role, rows in found:
            guids = sorted({str(r["process.entity_id"]) for r in rows if r.get("process.entity_id")})[:20]
            pids = sorted({p for r in rows if not r.get("process.entity_id") and (p := _pid(r.get("process.pid")))})[:20]
            started = {str(r["process.entity_id"]): r for r in rows
                       if r.get("process.entity_id") and str(r.get("event.code")) in START_CODES}
            unknown = [g for g in guids if g not in started]
            if unknown:
                specs.append(self.spec("remote_execution", role, [Filter(field="process.entity_id", op="in", value=unknown),
                                                                  Filter(field="event.code", value="1")], host=host, limit=50))
                asked.append((host, role, guids))
            if guids:
                specs.append(self.spec("remote_execution", role, [
                    Filter(field="process.entity_id", op="in", value=guids),
                    Filter(field="event.code", op="in", value=["1", "5"], negate=True)],
                    host=host, time_range=self.window, limit=1000))
                asked.append((host, role, []))
                specs.append(self.parents_spec(host, role, list(started.values()), guids))
                asked.append((host, role, []))
            if pids:
                specs.append(self.spec("remote_execution", role, [
                    Filter(field="process.pid", op="in", value=pids),
                    Filter(field="winlog.channel", value=SYSMON_CHANNEL, negate=True)],
                    host=host, time_range=self.window, limit=1000))
                asked.append((host, role, []))
        parents: list[Search | None] = []
        for (host, role, guids), rows in zip(asked, self.batch(specs)):
            if guids:
                parents.append(self.parents_spec(host, role, rows, guids))
        self.batch(parents)

    def parents_spec(self, host: str, role: str, starts: list[dict[str, Any]], guids: list[str]) -> Search | None:
        """The start events of these processes' parents (one level up) on another host."""
        wanted = sorted({str(r["process.parent.entity_id"]) for r in starts if r.get("process.parent.entity_id")} - set(guids))[:20]
        if not wanted:
            return None
        return self.spec("remote_execution", role, [Filter(field="process.entity_id", op="in", value=wanted),
                                                    Filter(field="event.code", value="1")], host=host, limit=50)


def _is_address(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-fA-F.:]+", value)) and any(c in value for c in ".:")


def _rank_start(row: dict[str, Any]) -> float:
    """Sysmon's start events first (they carry the entity ids the chain is linked by)."""
    return 1.0 if row.get("process.entity_id") else 0.0


def _rank_session(row: dict[str, Any]) -> float:
    """Session creation first, then explicit credentials, then privileges."""
    return {"4624": 3.0, "4648": 2.0, "4627": 1.0}.get(str(row.get("event.code")), 0.0)


class AlertChainTool(EvidenceTool):
    name: str = "alert_chain"
    description: str = (
        "Trace the alert's own causal chain: its process, ancestors up to the session root, descendants, what "
        "they did, injections into them, the files they started from and wrote, the service and logon session "
        "they ran in, and remote executions into or out of the chain (fetching the alert's own events first "
        "if they are not fetched yet). Judge the alert by this chain."
    )

    class Args(BaseModel):
        alert_id: str = Field(description="the alert id")

    args_schema: type[BaseModel] = Args

    def investigate(self, alert_id: str) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        alert = next((a for a in ctx.case.alerts if a.id == alert_id), ctx.alert)
        fetched = [e for e in ctx.evidence("alert_events") if e.status != "error"]
        alert_rows = [row for e in fetched for row in e.sample]
        tracer = ChainTracer(self, alert)
        try:
            with critical_work():
                note = tracer.run(alert_rows, None if fetched else alert_events_search(ctx, alert))
        finally:
            tracer.collect()
        return tracer.items, note
