"""The process tree of the alert's chain, laid out in Python for a server-rendered SVG (no JS library).

Rows top to bottom in depth-first order, indented by depth; each node is a process of the chain (its
relation to the alert colours it) and links to the evidence that shows its start or its activity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from siemcrew.crew.chain import Chain, Node

ROW_H = 44
INDENT = 28
LEFT = 12
BOX_W = 620
MAX_NODES = 120
RELATION_ORDER = ("subject", "ancestor", "descendant", "instigator", "injector", "dropper", "remote", "context")


@dataclass
class TreeBox:
    key: str
    x: int
    y: int
    depth: int
    name: str
    detail: str
    command_line: str
    relation: str
    host: str
    evidence_id: str | None


@dataclass
class TreeLayout:
    boxes: list[TreeBox] = field(default_factory=list)
    lines: list[tuple[int, int, int, int]] = field(default_factory=list)
    width: int = 0
    height: int = 0
    omitted: int = 0


def _basename(path: str) -> str:
    return path.replace("/", "\\").split("\\")[-1] or path


def _pid(node: Node) -> str:
    start = node.start or {}
    pid = start.get("process.pid")
    if pid in (None, "") and node.rows:
        pid = node.rows[0][1].get("process.pid")
    return "" if pid in (None, "") else str(pid)


def layout_tree(chain: Chain | None) -> TreeLayout:
    """The chain's members and their ancestors in the data, as indented boxes joined by elbow lines."""
    out = TreeLayout()
    if chain is None:
        return out
    members = {n.key for n in chain.members()}
    keep = set(members)
    for key in members:  # ancestors present in the data, so that the tree reads from its root
        parent = chain.parent_of(chain.nodes[key])
        while parent is not None and parent.key not in keep:
            keep.add(parent.key)
            parent = chain.parent_of(parent)
    nodes = [chain.nodes[k] for k in keep]
    children: dict[str | None, list[Node]] = {}
    for node in nodes:
        parent_key = node.parent_key if node.parent_key in keep else None
        children.setdefault(parent_key, []).append(node)
    for group in children.values():
        group.sort(key=lambda n: (str((n.start or {}).get("@timestamp") or ""), n.key))
    roots = sorted(children.get(None, []), key=lambda n: (n.host != chain.host, n.host,
                                                          str((n.start or {}).get("@timestamp") or "")))
    placed: dict[str, TreeBox] = {}
    stack: list[tuple[Node, int, str | None]] = [(n, 0, None) for n in reversed(roots)]
    seen: set[str] = set()
    while stack:
        node, depth, parent_key = stack.pop()
        if node.key in seen:
            continue
        seen.add(node.key)
        if len(out.boxes) >= MAX_NODES:
            out.omitted += 1
            continue
        y = 8 + len(out.boxes) * ROW_H
        x = LEFT + depth * INDENT
        start = node.start or {}
        pid = _pid(node)
        user = node.user or ""
        box = TreeBox(key=node.key, x=x, y=y, depth=depth, name=_basename(node.executable) or "(unknown program)",
                      detail=" · ".join(p for p in (f"pid {pid}" if pid else "", node.host, user) if p),
                      command_line=str(start.get("process.command_line") or "")[:160],
                      relation=node.relation if node.key in members else "context", host=node.host,
                      evidence_id=(node.evidence_ids() or [None])[0])
        out.boxes.append(box)
        placed[node.key] = box
        if parent_key is not None and parent_key in placed:
            parent = placed[parent_key]
            px = parent.x + 10
            out.lines.append((px, parent.y + 34, px, y + 17))
            out.lines.append((px, y + 17, x, y + 17))
        for child in reversed(children.get(node.key, [])):
            stack.append((child, depth + 1, node.key))
    deepest = max((b.depth for b in out.boxes), default=0)
    out.width = LEFT * 2 + deepest * INDENT + BOX_W
    out.height = 16 + len(out.boxes) * ROW_H
    return out
