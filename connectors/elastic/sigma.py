"""Sigma rules -> Lucene, ES|QL or EQL with pySigma's Elasticsearch backends, on the fields that exist.

pySigma's `ecs_windows` pipeline names the fields (data, not string edits). When the indices'
field capabilities are known (`available`), one more pipeline step resolves each field it emits:

* a field the indices have stays;
* `<field>.caseless` (Elastic Defend's lower-cased multi-field) falls back to `<field>`; for Lucene
  and ES|QL its string values become case-insensitive regular expressions, EQL's `:` and `like~`
  already ignore case;
* then the profile's Sigma fallbacks, then the raw names the ingest pipelines moved
  (`winlog.event_data.<Raw>`), in that order;
* a field none of the indices has is recorded as missing.

Each query's condition is then evaluated with missing fields as false: a rule that can only match
through missing fields is `unanswerable` (the caller reports it, rather than finding nothing).
ES|QL gets the events index through the pipeline state the backend reads (`index`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import yaml

from sigma.backends.elasticsearch import EqlBackend, ESQLBackend, LuceneBackend
from sigma.collection import SigmaCollection
from sigma.conditions import ConditionAND, ConditionFieldEqualsValueExpression, ConditionNOT, ConditionOR
from sigma.exceptions import SigmaError
from sigma.pipelines.elasticsearch import ecs_windows
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import SetStateTransformation
from sigma.processing.transformations.base import DetectionItemTransformation, FieldMappingTransformationBase
from sigma.rule import SigmaDetection, SigmaDetectionItem
from sigma.types import SigmaRegularExpression, SigmaString, SpecialChars

from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.elastic.profile import Profile

SigmaLanguage = Literal["lucene", "esql", "eql"]
LUCENE_REGEX_RESERVED = frozenset('.?+*|{}[]()"\\#@&<>~')


@dataclass
class Resolution:
    """What resolving one conversion's fields found."""

    available: frozenset[str] | None
    profile: Profile | None
    missing: set[str] = field(default_factory=set)
    insensitive: set[str] = field(default_factory=set)
    mapped: dict[str, list[str]] = field(default_factory=dict)

    def resolve(self, name: str) -> list[str]:
        if self.available is None or name in self.available:
            return [name]
        if name not in self.mapped:
            self.mapped[name] = self._fallbacks(name)
            if not self.mapped[name]:
                self.missing.add(name)
        return self.mapped[name] or [name]

    def _fallbacks(self, name: str) -> list[str]:
        assert self.available is not None
        suffix = self.profile.caseless_suffix if self.profile else ".caseless"
        base = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
        caseless = base != name
        groups: list[Iterable[str]] = [[base]]
        if self.profile is not None:
            groups += [self.profile.sigma_fallbacks.get(base, ()), self.profile.raw_fallbacks(base)]
        for group in groups:
            found = [f for f in dict.fromkeys(group) if f != name and f in self.available]
            if found:
                if caseless:
                    self.insensitive.update(found)
                return found
        return []


@dataclass
class _ResolveFields(FieldMappingTransformationBase):
    resolution: Resolution | None = None

    def apply_field_name(self, field: str | None) -> None | str | list[str]:
        if field is None or self.resolution is None:
            return None
        return self.resolution.resolve(field)


def case_insensitive_regex(value: SigmaString) -> SigmaRegularExpression:
    """A Sigma string (with wildcards) as a regular expression that ignores case, in Lucene syntax."""
    parts: list[str] = []
    for part in value.s:
        if part == SpecialChars.WILDCARD_MULTI:
            parts.append(".*")
        elif part == SpecialChars.WILDCARD_SINGLE:
            parts.append(".")
        elif isinstance(part, str):
            for char in part:
                if char.lower() != char.upper():
                    parts.append(f"[{char.lower()}{char.upper()}]")
                else:
                    parts.append("\\" + char if char in LUCENE_REGEX_RESERVED else char)
    return SigmaRegularExpression("".join(parts))


@dataclass
class _IgnoreCase(DetectionItemTransformation):
    resolution: Resolution | None = None

    def apply_detection_item(self, detection_item: SigmaDetectionItem) -> SigmaDetection | SigmaDetectionItem | None:
        if self.resolution is None or detection_item.field not in self.resolution.insensitive:
            return None
        detection_item.value = [
            case_insensitive_regex(v) if isinstance(v, SigmaString) else v for v in detection_item.value
        ]
        detection_item.modifiers = []
        return detection_item


@dataclass
class Conversion:
    title: str
    text: str
    missing: list[str]
    unanswerable: bool


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


def _can_match(node: Any, missing: set[str]) -> bool | None:
    """False when the condition can never hold with `missing` fields absent; True/None otherwise."""
    if isinstance(node, ConditionFieldEqualsValueExpression):
        return False if node.field in missing else None
    if isinstance(node, ConditionNOT):
        inner = _can_match(node.args[0], missing)
        return None if inner is None else not inner
    if isinstance(node, (ConditionAND, ConditionOR)):
        values = [_can_match(arg, missing) for arg in node.args]
        if isinstance(node, ConditionAND):
            return False if False in values else (True if all(v is True for v in values) else None)
        return True if True in values else (False if all(v is False for v in values) else None)
    return None


def _pipeline(language: SigmaLanguage, index: str, resolution: Resolution) -> ProcessingPipeline:
    items = [ProcessingItem(identifier="siemcrew_existing_fields", transformation=_ResolveFields(resolution=resolution))]
    if language in ("lucene", "esql"):
        items.append(ProcessingItem(identifier="siemcrew_ignore_case", transformation=_IgnoreCase(resolution=resolution)))
    if language == "esql":
        items.append(ProcessingItem(identifier="siemcrew_index", transformation=SetStateTransformation("index", index)))
    return ecs_windows() + ProcessingPipeline(name="siemcrew: fields the indices have", priority=100, items=items)


def convert_rules(
    rule_yaml: str, language: SigmaLanguage, index: str,
    available: Iterable[str] | None = None, profile: Profile | None = None,
) -> list[Conversion]:
    """Each query of the rule(s) in `language`, with the fields it could not find; ConnectorError if unconvertible."""
    rules = _rules(rule_yaml)
    out: list[Conversion] = []
    for rule in rules.rules:
        resolution = Resolution(frozenset(available) if available is not None else None, profile)
        backend = {"lucene": LuceneBackend, "esql": ESQLBackend, "eql": EqlBackend}[language](_pipeline(language, index, resolution))
        verdicts: list[bool | None] = []

        def judge(_rule: Any, _fmt: Any, _index: int, cond: Any, result: Any) -> Any:
            verdicts.append(_can_match(cond.parsed, resolution.missing))
            return result

        try:
            texts = [str(q) for q in backend.convert(SigmaCollection([rule]), callback=judge)]
        except (SigmaError, NotImplementedError, ValueError, KeyError) as exc:
            raise ConnectorError(f"Sigma rule {str(rule.title)!r} cannot be converted to {language}: {exc}") from None
        for number, text in enumerate(texts):
            verdict = verdicts[number] if number < len(verdicts) else None
            out.append(Conversion(str(rule.title), text, sorted(resolution.missing), verdict is False))
    if not out:
        raise ConnectorError(f"Sigma rule {_title(rules)!r} produced no {language} query")
    return out


def convert(rule_yaml: str, language: SigmaLanguage, index: str) -> list[str]:
    """The rule(s) as query strings in `language` with the pipeline's own field names."""
    return [c.text for c in convert_rules(rule_yaml, language, index)]


def lucene_query(rule_yaml: str) -> str:
    """One Lucene query for all rules in the YAML (OR-ed)."""
    texts = convert(rule_yaml, "lucene", "*")
    return texts[0] if len(texts) == 1 else " OR ".join(f"({text})" for text in texts)
