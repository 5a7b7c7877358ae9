"""Sigma rules for the embedded store: conversion to SQL with pySigma, and a rule index by technique.

Conversion is declarative: `config/mappings/sigma_local.yaml` names pySigma's own pipelines
(Sysmon, Windows log sources, Windows audit) per variant and adds a pySigma pipeline that sets
the table name and the few field names the raw exports spell differently.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field
from sigma.backends.sqlite import sqliteBackend
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError
from sigma.pipelines.sysmon import sysmon_pipeline
from sigma.pipelines.windows import windows_audit_pipeline, windows_logsource_pipeline
from sigma.processing.pipeline import ProcessingPipeline
from sigma.rule import SigmaRule

from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.sigma_variant import Variant

log = logging.getLogger(__name__)

PIPELINES: dict[str, Callable[[], ProcessingPipeline]] = {
    "sysmon": sysmon_pipeline,
    "windows_logsource": windows_logsource_pipeline,
    "windows_audit": windows_audit_pipeline,
}
_TECHNIQUE = re.compile(r"^attack\.(t\d{4}(?:\.\d{3})?)$", re.IGNORECASE)
_NOT_TACTIC = re.compile(r"^attack\.([tgs]\d{4}|detection\.)", re.IGNORECASE)


def default_config_path() -> Path:
    return Path(str(resources.files("siemcrew.config") / "mappings" / "sigma_local.yaml"))


class RuleMeta(BaseModel):
    """What the crew needs to pick a rule: identity, severity, ATT&CK tags and log source."""

    path: str
    id: str | None = None
    title: str
    level: str | None = None
    status: str | None = None
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    techniques: list[str] = Field(default_factory=list)
    tactics: list[str] = Field(default_factory=list)
    logsource: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class ConvertedRule:
    """A rule as one SQL condition over `events` (variants OR-ed), with its metadata."""

    meta: RuleMeta
    where: str
    variants: tuple[str, ...]


def techniques_of(tags: Iterable[str]) -> list[str]:
    out: list[str] = []
    for tag in tags:
        match = _TECHNIQUE.match(str(tag).strip())
        if match and match.group(1).upper() not in out:
            out.append(match.group(1).upper())
    return out


def tactics_of(tags: Iterable[str]) -> list[str]:
    out: list[str] = []
    for tag in tags:
        text = str(tag).strip().lower()
        if text.startswith("attack.") and not _NOT_TACTIC.match(text):
            name = text.removeprefix("attack.").replace("_", "-")
            if name not in out:
                out.append(name)
    return out


def rule_meta(data: dict[str, Any], path: str = "") -> RuleMeta:
    tags = [str(tag) for tag in data.get("tags") or []]
    logsource = {str(k): str(v) for k, v in (data.get("logsource") or {}).items() if v is not None}
    return RuleMeta(
        path=path,
        id=str(data["id"]) if data.get("id") else None,
        title=str(data.get("title") or Path(path).stem or "untitled rule"),
        level=str(data["level"]) if data.get("level") else None,
        status=str(data["status"]) if data.get("status") else None,
        description=str(data.get("description") or "").strip(),
        tags=tags,
        techniques=techniques_of(tags),
        tactics=tactics_of(tags),
        logsource=logsource,
    )


class SigmaConverter:
    """Rule YAML -> `ConvertedRule`, cached per rule text (conversion takes tens of milliseconds)."""

    PREFIX = "SELECT * FROM events WHERE "

    def __init__(self, config: str | Path | None = None) -> None:
        data = yaml.safe_load(Path(config or default_config_path()).read_text(encoding="utf-8"))
        self.variants = [Variant.from_data(item) for item in data["variants"]]
        for variant in self.variants:
            unknown = [name for name in variant.pipelines if name not in PIPELINES]
            if unknown:
                raise ValueError(f"sigma_local.yaml: unknown pipelines {unknown} (known: {sorted(PIPELINES)})")
        self._local_pipeline = yaml.safe_dump(data["pipeline"])
        self._lock = threading.Lock()
        self.convert = lru_cache(maxsize=512)(self._convert)  # type: ignore[method-assign]

    def _pipeline(self, variant: Variant) -> ProcessingPipeline:
        return variant.pipeline(PIPELINES, self._local_pipeline)

    def _convert(self, rule_yaml: str) -> ConvertedRule:
        try:
            data = yaml.safe_load(rule_yaml)
        except yaml.YAMLError as exc:
            raise ConnectorError(f"Sigma rule is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConnectorError("Sigma rule must be one YAML mapping")
        meta = rule_meta(data)
        conditions: list[str] = []
        used: list[str] = []
        first_error: str | None = None
        with self._lock:  # pySigma conversion state is not meant to be shared across threads
            for variant in self.variants:
                if not variant.applies(meta.logsource.get("category")):
                    continue
                try:
                    queries = self._convert_variant(rule_yaml, variant, meta)
                except (SigmaError, ValueError, TypeError, NotImplementedError) as exc:
                    first_error = first_error or f"{type(exc).__name__}: {exc}"
                    log.debug("rule %r: variant %s not applicable: %s", meta.title, variant.name, exc)
                    continue
                conditions.extend(queries)
                used.append(variant.name)
        if not conditions:
            raise ConnectorError(f"Sigma rule {meta.title!r} cannot be converted for the local store: {first_error}")
        where = conditions[0] if len(conditions) == 1 else " OR ".join(f"({c})" for c in conditions)
        return ConvertedRule(meta=meta, where=where, variants=tuple(used))

    def _convert_variant(self, rule_yaml: str, variant: Variant, meta: RuleMeta) -> list[str]:
        collection = SigmaCollection.from_yaml(rule_yaml)
        rules = [rule for rule in collection.rules if isinstance(rule, (SigmaRule, SigmaCorrelationRule))]
        if any(isinstance(rule, SigmaCorrelationRule) for rule in rules):
            raise ConnectorError(f"Sigma rule {meta.title!r}: correlation rules are not supported by the local store")
        if len(rules) != 1:
            raise ConnectorError(f"Sigma rule {meta.title!r}: expected one rule, found {len(rules)}")
        queries = sqliteBackend(self._pipeline(variant)).convert(collection)
        conditions = []
        for query in queries:
            if not isinstance(query, str) or not query.startswith(self.PREFIX):
                raise ConnectorError(f"Sigma rule {meta.title!r}: unexpected backend output {str(query)[:80]!r}")
            conditions.append(query[len(self.PREFIX):])
        if not conditions:
            raise ConnectorError(f"Sigma rule {meta.title!r}: the backend produced no query")
        return conditions


_INDEX_LOCK = threading.Lock()
_INDEX_CACHE: dict[str, tuple[tuple[tuple[str, float], ...], list[RuleMeta]]] = {}


def sigma_rule_index(rules_dir: str | Path) -> list[RuleMeta]:
    """Every `*.yml`/`*.yaml` rule under `rules_dir`, cached until a file changes. Unreadable files are skipped."""
    root = Path(rules_dir).expanduser().resolve()
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".yml", ".yaml") and p.is_file())
    signature = tuple((str(p), p.stat().st_mtime) for p in files)
    with _INDEX_LOCK:
        cached = _INDEX_CACHE.get(str(root))
        if cached and cached[0] == signature:
            return list(cached[1])
    index: list[RuleMeta] = []
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            log.warning("skipped Sigma rule %s: %s", path, exc)
            continue
        if isinstance(data, dict) and data.get("detection") and data.get("title"):
            index.append(rule_meta(data, str(path)))
    with _INDEX_LOCK:
        _INDEX_CACHE[str(root)] = (signature, index)
    return list(index)


def technique_matches(rule_technique: str, wanted: str) -> bool:
    """T1003 covers T1003.001 and the other way round; otherwise exact."""
    rule, want = rule_technique.upper(), wanted.strip().upper()
    return rule == want or rule.startswith(want + ".") or want.startswith(rule + ".")


def rules_for_techniques(techniques: Iterable[str], rules_dir: str | Path) -> list[RuleMeta]:
    wanted = [t for t in techniques if str(t).strip()]
    return [
        meta
        for meta in sigma_rule_index(rules_dir)
        if any(technique_matches(mine, want) for mine in meta.techniques for want in wanted)
    ]
