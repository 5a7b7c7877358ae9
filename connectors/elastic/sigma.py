"""Sigma rules -> Lucene, ES|QL or EQL with pySigma's Elasticsearch backends and the ECS Windows pipeline.

Field names come from `ecs_windows()` (data, not string edits). ES|QL gets the events index through
the pipeline state the backend reads (`index`), instead of its default `from *`.
"""

from __future__ import annotations

from typing import Literal

import yaml

from sigma.backends.elasticsearch import EqlBackend, ESQLBackend, LuceneBackend
from sigma.collection import SigmaCollection
from sigma.exceptions import SigmaError
from sigma.pipelines.elasticsearch import ecs_windows
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import SetStateTransformation

from siemcrew.connectors.base import ConnectorError

SigmaLanguage = Literal["lucene", "esql", "eql"]


def _rules(rule_yaml: str) -> SigmaCollection:
    try:
        rules = SigmaCollection.from_yaml(rule_yaml)
    except (SigmaError, yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConnectorError(f"Sigma rule cannot be parsed: {first_line}") from None
    if not rules.rules:
        raise ConnectorError("the Sigma YAML holds no rule")
    return rules


def _title(rules: SigmaCollection) -> str:
    return "; ".join(str(getattr(rule, "title", "?")) for rule in rules.rules)


def convert(rule_yaml: str, language: SigmaLanguage, index: str) -> list[str]:
    """The rule(s) as query strings in `language`; a ConnectorError names the rule and the reason."""
    rules = _rules(rule_yaml)
    pipeline = ecs_windows()
    if language == "esql":
        pipeline = pipeline + ProcessingPipeline(
            name="siemcrew events index",
            priority=100,
            items=[ProcessingItem(identifier="siemcrew_index", transformation=SetStateTransformation("index", index))],
        )
    backend = {"lucene": LuceneBackend, "esql": ESQLBackend, "eql": EqlBackend}[language](pipeline)
    try:
        queries = backend.convert(rules)
    except (SigmaError, NotImplementedError, ValueError, KeyError) as exc:
        raise ConnectorError(f"Sigma rule {_title(rules)!r} cannot be converted to {language}: {exc}") from None
    texts = [str(q) for q in queries]
    if not texts:
        raise ConnectorError(f"Sigma rule {_title(rules)!r} produced no {language} query")
    return texts


def lucene_query(rule_yaml: str) -> str:
    """One Lucene query for all rules in the YAML (OR-ed)."""
    texts = convert(rule_yaml, "lucene", "*")
    return texts[0] if len(texts) == 1 else " OR ".join(f"({text})" for text in texts)
