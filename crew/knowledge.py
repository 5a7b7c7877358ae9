"""Benign explanations, interpreted from `config/benign.yaml`: platform genealogy, platform
automation and management agents, each recognised by what the logs carry about one process
(path, parent, account, signer, what it did) and each with its source.

An explanation never closes an alert by itself: the reasoner (crew/reasoning.py) still counts
every strong indicator an explanation does not name, anywhere in the alert's causal chain.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

from siemcrew.config.settings import CONFIG_DIR, load_yaml
from siemcrew.crew.indicators import IndicatorSet, clause_matches, clauses_of, compile_clause, condition, fields_of

Clause = tuple[tuple[str, bool, Any], ...]
Account = Literal["system", "person", "any"]


@dataclass(frozen=True)
class Variant:
    """One way the software shows up in the logs."""

    process: Clause
    parent: Clause | None
    parent_required: bool
    account: Account
    signer: Any | None
    activity: tuple[Clause, ...] | None


@dataclass(frozen=True)
class Explanation:
    name: str
    kind: str
    what: str
    source: str
    variants: tuple[Variant, ...]
    covers: Literal["self", "subtree"]
    explains: frozenset[str]


@dataclass(frozen=True)
class ProcessFacts:
    """What the logs say about one process of the chain, as an explanation reads it."""

    identity: dict[str, Any]              # its own fields (executable, command line, PE metadata, user)
    parent: dict[str, Any] | None         # the parent's executable / command line, when known
    rows: tuple[dict[str, Any], ...] = () # what it did
    signer: str | None = None             # the image's signature, when the logs carry it
    system_account: bool | None = None    # None: the logs do not say who ran it


def _activity(spec: Any) -> dict[str, Any] | None:
    """`activity` as a `when`/`any` spec: a bare clause ({field: regex}) is one clause, not no clause."""
    if not spec:
        return None
    return spec if ("any" in spec or "when" in spec) else {"when": spec}


def _variant(spec: dict[str, Any]) -> Variant:
    parent = spec.get("parent")
    activity = _activity(spec.get("activity"))
    return Variant(
        process=compile_clause(spec.get("process") or {}),
        parent=compile_clause(parent) if parent else None,
        parent_required=bool(spec.get("parent_required")),
        account=spec.get("account", "any"),
        signer=condition(spec["signer"]) if spec.get("signer") else None,
        activity=clauses_of(activity) if activity else None,
    )


def _fields(spec: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for variant in spec.get("any") or [spec]:
        out |= {f.lstrip("!") for f in (variant.get("process") or {})}
        out |= {f.lstrip("!") for f in (variant.get("parent") or {})}
        if variant.get("activity"):
            out |= fields_of(_activity(variant["activity"]) or {})
    return out


class Knowledge:
    """The benign explanations and the genealogy facts the chain walk needs."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.roots = [re.compile(p, re.IGNORECASE) for p in data.get("session_roots") or []]
        self.no_descend = [re.compile(p, re.IGNORECASE) for p in data.get("never_descend") or []]
        self.explanations: list[Explanation] = []
        fields: set[str] = set()
        for name, spec in (data.get("explanations") or {}).items():
            variants = tuple(_variant({**spec, **v}) for v in (spec.get("any") or [spec]))
            self.explanations.append(Explanation(
                name=name, kind=str(spec.get("kind", "")), what=str(spec.get("what", name)),
                source=str(spec.get("source", "")), variants=variants,
                covers="subtree" if spec.get("covers") == "subtree" else "self",
                explains=frozenset(spec.get("explains") or []),
            ))
            fields |= _fields(spec)
        self.fields = tuple(sorted(fields))

    @classmethod
    @functools.lru_cache(maxsize=4)
    def load(cls, path: Path | None = None) -> "Knowledge":
        return cls(load_yaml(path or CONFIG_DIR / "benign.yaml") or {})

    def is_root(self, executable: str | None) -> bool:
        """A session root starts or hosts other work: the ancestor walk stops there."""
        text = (executable or "").strip()
        return bool(text) and any(p.search(text) for p in self.roots)

    def descends(self, executable: str | None) -> bool:
        """False for roots whose children are never one alert's work (services.exe, svchost.exe...)."""
        text = (executable or "").strip()
        return not any(p.search(text) for p in self.no_descend)

    def explain(self, facts: ProcessFacts) -> list[Explanation]:
        return [e for e in self.explanations if any(_fits(v, facts) for v in e.variants)]


def _fits(variant: Variant, facts: ProcessFacts) -> bool:
    if not variant.process or not clause_matches(variant.process, facts.identity):
        return False
    parent_known = bool(facts.parent and (facts.parent.get("process.executable")
                                          or facts.parent.get("process.command_line")))
    if variant.parent is not None and parent_known and not clause_matches(variant.parent, facts.parent or {}):
        return False
    if variant.parent_required and not parent_known:
        return False
    if variant.account != "any" and facts.system_account is not None:
        if facts.system_account != (variant.account == "system"):
            return False
    if variant.signer is not None and facts.signer and not variant.signer(facts.signer):
        return False
    if variant.activity is not None and not any(clause_matches(c, row) for c in variant.activity for row in facts.rows):
        return False
    return True


def knowledge_fields() -> tuple[str, ...]:
    """Every field an indicator or an explanation reads: samples must keep them."""
    return tuple(sorted(set(IndicatorSet.load().fields) | set(Knowledge.load().fields)))


def explained_indicators(explanations: Iterable[Explanation], hits: Iterable[str], weak_below: float,
                         weights: dict[str, float]) -> set[str]:
    """The hits these explanations account for: every weak one, and the strong ones they name."""
    names = {n for e in explanations for n in e.explains}
    return {h for h in hits if weights.get(h, 0.0) < weak_below or h in names}
