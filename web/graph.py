"""The entity graph: hosts, accounts and addresses of the case and how they connect, as an SVG layout.

Read from recorded evidence rows of the alert's chain, plus the logons of the case's own accounts and the
connections to the case's indicators or hosts (everyone else's logons on a file server, prevalence look-ups
and inventory rows name entities that are not part of the story and are left out). An address that the
evidence ties to a host is that host: a logon on SRV-FS01 from WS-FIN-07's address is drawn as movement
from WS-FIN-07 to SRV-FS01 (red, arrowed), the way an analyst reads lateral movement at a glance.
Three rows: accounts on top, hosts in the middle, addresses below; each node and edge links to the
first evidence item that shows it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from siemcrew.crew.indicators import account, short_host
from siemcrew.crew.models import Case

CHAIN_KINDS = {"alert_events", "process_lineage", "process_activity", "process_origin", "logon_session",
               "remote_execution"}
SCOPED_KINDS = {"logon_activity", "network_connections"}  # kept only where they name the case's own entities
LOGON_CODES = {"4624", "4648", "4625"}
MACHINE_ACCOUNTS = {"system", "local service", "network service", "anonymous logon", "-"}
PER_ROW = 10
SPACING = 150
ROW_Y = {"account": 50, "host": 190, "ip": 330}


@dataclass
class GraphNode:
    kind: str  # account | host | ip
    name: str
    evidence_id: str
    affected: bool = False
    alert: bool = False
    degree: int = 0
    x: int = 0
    y: int = 0


@dataclass
class GraphEdge:
    source: str  # node keys: "kind:name"
    target: str
    kind: str  # lateral | logon | runs | connects
    label: str
    evidence_id: str
    path: str = ""
    lx: int = 0
    ly: int = 0


@dataclass
class Graph:
    nodes: list[GraphNode] = field(default_factory=list)
    edges: list[GraphEdge] = field(default_factory=list)
    width: int = 0
    height: int = 380
    omitted: int = 0

    @property
    def lateral(self) -> list[GraphEdge]:
        return [e for e in self.edges if e.kind == "lateral"]


def _ip(value: Any) -> str | None:
    return _address(str(value)) if value not in (None, "") else None


@lru_cache(maxsize=4096)
def _address(value: str) -> str | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if address.is_loopback or address.is_unspecified or address.is_link_local:
        return None
    return str(address)


def _person(row: dict[str, Any]) -> str | None:
    name = str(row.get("user.name") or "")
    if not name or name.endswith("$") or name.lower() in MACHINE_ACCOUNTS or name.upper().startswith(("DWM-", "UMFD-")):
        return None
    return account(row)


def _addresses(case: Case) -> dict[str, str]:
    """ip -> host, from host address look-ups and from hosts' own outbound connections."""
    owner: dict[str, str] = {}
    for item in case.evidence:
        if item.status != "ok":
            continue
        for row in item.sample:
            if item.kind == "host_addresses":
                if item.entity_type == "ip" and row.get("host.hostname") and (ip := _ip(item.entity)):
                    owner.setdefault(ip, short_host(row["host.hostname"]))
                elif item.entity_type == "host" and (ip := _ip(row.get("source.ip"))):
                    owner.setdefault(ip, short_host(str(item.entity or "").split(":")[0]))
            elif (str(row.get("event.code")) == "3" and row.get("network.direction") == "outbound"
                  and row.get("host.hostname") and (ip := _ip(row.get("source.ip")))):
                owner.setdefault(ip, short_host(row["host.hostname"]))
    return owner


def build_graph(case: Case) -> Graph:
    owner = _addresses(case)
    nodes: dict[str, GraphNode] = {}
    edges: dict[tuple[str, str, str], GraphEdge] = {}
    affected = {short_host(h) for h in case.affected_hosts} | {u.lower() for u in case.affected_users}
    grounds = case.verification.grounds if case.verification else None
    indicators = set(grounds.indicators) if grounds else set()
    alert_entities = {short_host(h) for h in case.alert.entities.hosts} | {u.lower() for u in case.alert.entities.users}

    def node(kind: str, name: str, evidence_id: str) -> str:
        key = f"{kind}:{name.lower()}"
        if key not in nodes:
            marked = name.lower() if kind == "account" else name
            nodes[key] = GraphNode(kind, name, evidence_id, affected=marked in affected or name in indicators,
                                   alert=marked in alert_entities)
        return key

    def edge(source: str, target: str, kind: str, label: str, evidence_id: str) -> None:
        if source == target:
            return
        if (source, target, kind) not in edges:
            edges[(source, target, kind)] = GraphEdge(source, target, kind, label, evidence_id)
            nodes[source].degree += 1
            nodes[target].degree += 1

    accounts = {u.lower() for u in case.affected_users} | {u.lower() for u in case.alert.entities.users}
    hosts = {short_host(h) for h in case.affected_hosts} | {short_host(h) for h in case.alert.entities.hosts}

    def in_story(kind: str, row: dict[str, Any]) -> bool:
        if kind in CHAIN_KINDS:
            return True
        if kind == "logon_activity":
            return (account(row) or "").lower() in accounts
        destination = _ip(row.get("destination.ip"))
        return destination is not None and (destination in indicators or owner.get(destination, "") in hosts)

    for item in case.evidence:
        if item.status != "ok" or item.entity_type == "tree" or item.kind not in CHAIN_KINDS | SCOPED_KINDS:
            continue
        for row in item.sample:
            host_name = short_host(row.get("host.hostname"))
            if not host_name or not in_story(item.kind, row):
                continue
            host = node("host", host_name, item.id)
            code = str(row.get("event.code") or "")
            person = _person(row)
            if person:
                edge(node("account", person, item.id), host, "logon" if code in LOGON_CODES else "runs",
                     "logon" if code in LOGON_CODES else "runs", item.id)
            source_ip = _ip(row.get("source.ip"))
            if code in LOGON_CODES and source_ip:
                origin = owner.get(source_ip)
                if origin and origin != host_name:
                    edge(node("host", origin, item.id), host, "lateral", f"logon {person or ''}".strip(), item.id)
                elif not origin:
                    edge(node("ip", source_ip, item.id), host, "logon", "logon from", item.id)
            destination = _ip(row.get("destination.ip"))
            if code == "3" and destination:
                target = owner.get(destination)
                port = row.get("destination.port")
                label = f"connects{f' :{port}' if port not in (None, '') else ''}"
                if target and target != host_name:
                    edge(host, node("host", target, item.id), "connects", label, item.id)
                elif not target:
                    edge(host, node("ip", destination, item.id), "connects", label, item.id)
    return _layout(nodes, edges)


def _layout(nodes: dict[str, GraphNode], edges: dict[tuple[str, str, str], GraphEdge]) -> Graph:
    graph = Graph()
    placed: dict[str, GraphNode] = {}
    for kind in ("account", "host", "ip"):
        row = [(k, n) for k, n in nodes.items() if n.kind == kind]
        row.sort(key=lambda pair: (not pair[1].alert, not pair[1].affected, -pair[1].degree, pair[1].name))
        graph.omitted += max(len(row) - PER_ROW, 0)
        for index, (key, item) in enumerate(row[:PER_ROW]):
            item.x, item.y = 90 + index * SPACING, ROW_Y[kind]
            placed[key] = item
    for (source, target, _kind), item in edges.items():
        if source not in placed or target not in placed:
            continue
        a, b = placed[source], placed[target]
        if item.kind == "lateral" or (a.kind == b.kind == "host"):
            # host to host: an arc above the host row, high enough to tell apart from the other edges
            mid = (a.x + b.x) // 2
            lift = 50 + abs(a.x - b.x) // 6
            item.path = f"M{a.x},{a.y - 18} Q{mid},{a.y - 18 - lift * 2} {b.x},{b.y - 18}"
            item.lx, item.ly = mid, a.y - 18 - lift
        else:
            dy = 18 if b.y > a.y else -18
            item.path = f"M{a.x},{a.y + dy} L{b.x},{b.y - dy}"
            item.lx, item.ly = (a.x + b.x) // 2, (a.y + b.y) // 2
        graph.edges.append(item)
    graph.nodes = list(placed.values())
    graph.width = max(180 + (max((n.x for n in graph.nodes), default=0)), 600)
    return graph
