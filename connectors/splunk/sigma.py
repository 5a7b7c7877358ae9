"""Sigma rules as SPL for the customer's data: pySigma's Splunk backend with the profile's pipelines.

The data profile says how (its `sigma:` section, data only): variants of pySigma's own pipelines,
each converted separately (a process_creation rule runs once over Sysmon EID 1, once over Security
4688), plus a pySigma pipeline in YAML form for the field names the data spells differently.
`splunk.search.sigma_pipeline` may instead pick pySigma's stock Splunk pipelines.

Each converted search remembers its log source condition and the fields its detection needs in
positive positions, so that a search with no hits can be checked: a rule over fields or log sources
the data does not have would answer 0 whatever happened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from sigma.backends.splunk import SplunkBackend
from sigma.collection import SigmaCollection
from sigma.conditions import ConditionAND, ConditionFieldEqualsValueExpression, ConditionNOT, ConditionOR
from sigma.exceptions import SigmaError
from sigma.pipelines.splunk import splunk_cim_data_model, splunk_windows_pipeline
from sigma.pipelines.sysmon import sysmon_pipeline
from sigma.pipelines.windows import windows_audit_pipeline, windows_logsource_pipeline
from sigma.processing.pipeline import ProcessingPipeline
from sigma.rule import SigmaRule

from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.sigma_variant import Variant

PIPELINES: dict[str, Callable[[], ProcessingPipeline]] = {
    "sysmon": sysmon_pipeline,
    "windows_logsource": windows_logsource_pipeline,
    "windows_audit": windows_audit_pipeline,
    "splunk_windows": splunk_windows_pipeline,
    "splunk_cim": splunk_cim_data_model,
}
ADDED_CONDITION = "_cond_"  # pySigma's name prefix for conditions a pipeline adds (the log source)

# What a detection needs to be able to match: ("field", name), ("all", parts) or ("any", parts);
# None needs nothing (negated parts, keywords: they can match events without the fields).
Needs = tuple[Any, ...] | None


@dataclass(frozen=True)
class SigmaSearch:
    """One converted search: its SPL, the log source it adds, and the fields its detection needs."""

    variant: str
    spl: str
    logsource: tuple[tuple[str, tuple[str, ...]], ...] = ()
    fields: tuple[str, ...] = ()
    needs: Needs = None

    def answerable(self, present: set[str]) -> bool:
        """Whether events carrying `present` fields could match at all."""
        return _answerable(self.needs, present)


class SplunkSigma:
    """Rule YAML -> searches, per the profile's `sigma:` section or a stock pySigma pipeline choice."""

    def __init__(self, profile_sigma: dict[str, Any], choice: str = "profile") -> None:
        self.output = "default"
        self.extra: str | None = None
        if choice == "splunk_windows":
            self.variants = [Variant("splunk_windows", ("splunk_windows",))]
        elif choice == "splunk_cim":
            self.variants, self.output = [Variant("splunk_cim", ("splunk_cim",))], "data_model"
        elif choice == "none":
            self.variants = [Variant("none", ())]
        else:
            self.output = str(profile_sigma.get("output") or "default")
            items = profile_sigma.get("variants") or [{"name": "profile", "pipelines": profile_sigma.get("pipelines") or []}]
            self.variants = [Variant.from_data(item) for item in items]
            if profile_sigma.get("pipeline"):
                self.extra = yaml.safe_dump(profile_sigma["pipeline"])
        unknown = sorted({p for v in self.variants for p in v.pipelines} - set(PIPELINES))
        if unknown:
            raise ConnectorError(f"splunk: unknown Sigma pipelines {unknown} (known: {sorted(PIPELINES)})")
        self._lock = threading.Lock()

    @property
    def data_model(self) -> bool:
        return self.output == "data_model"

    def _pipeline(self, variant: Variant) -> ProcessingPipeline:
        return variant.pipeline(PIPELINES, self.extra)

    def convert(self, rule_yaml: str) -> list[SigmaSearch]:
        try:
            rules = SigmaCollection.from_yaml(rule_yaml).rules
            category = rules[0].logsource.category if rules else None
        except (SigmaError, ValueError, yaml.YAMLError, AttributeError) as exc:
            raise ConnectorError(f"splunk: the Sigma rule cannot be converted to SPL: {exc}") from None
        searches: list[SigmaSearch] = []
        first_error: str | None = None
        with self._lock:  # pySigma conversion state is not meant to be shared across threads
            for variant in self.variants:
                if not variant.applies(category):
                    continue
                try:
                    searches.extend(self._convert(rule_yaml, variant))
                except (SigmaError, ValueError, TypeError, NotImplementedError) as exc:
                    first_error = first_error or f"{type(exc).__name__}: {exc}"
        if not searches:
            raise ConnectorError(f"splunk: the Sigma rule cannot be converted to SPL: {first_error or 'no applicable variant'}")
        return searches

    def _convert(self, rule_yaml: str, variant: Variant) -> list[SigmaSearch]:
        collection = SigmaCollection.from_yaml(rule_yaml)
        queries = SplunkBackend(self._pipeline(variant)).convert(collection, output_format=self.output)
        rules = [rule for rule in collection.rules if isinstance(rule, SigmaRule)]
        if len(rules) != 1 or len(queries) != 1:
            return [SigmaSearch(variant.name, str(query)) for query in queries]
        logsource, needs = _analyse(rules[0])
        return [SigmaSearch(variant.name, str(queries[0]), logsource, tuple(_fields(needs)), needs)]


def _analyse(rule: SigmaRule) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], Needs]:
    """The log source conditions a pipeline added, and what the rule's own detection needs."""
    logsource: dict[str, list[str]] = {}

    def walk(node: Any) -> Needs:
        if isinstance(node, ConditionNOT):
            return None
        if isinstance(node, ConditionFieldEqualsValueExpression):
            if not _added(node):
                return ("field", node.field)
            values = logsource.setdefault(node.field, [])
            text = str(node.value.number if hasattr(node.value, "number") else node.value)
            if text not in values:
                values.append(text)
            return None
        parts = [walk(child) for child in getattr(node, "args", None) or []]
        if isinstance(node, ConditionOR):
            return None if any(p is None for p in parts) else ("any", tuple(parts))
        kept = tuple(p for p in parts if p is not None)
        if isinstance(node, ConditionAND) or kept:
            return ("all", kept) if kept else None
        return None

    needs = [walk(condition.parsed) for condition in rule.detection.parsed_condition]
    kept = tuple(n for n in needs if n is not None)
    return tuple((name, tuple(values)) for name, values in logsource.items()), (("any", kept) if kept else None)


def _fields(needs: Needs) -> list[str]:
    if needs is None:
        return []
    if needs[0] == "field":
        return [needs[1]]
    return list(dict.fromkeys(name for part in needs[1] for name in _fields(part)))


def _answerable(needs: Needs, present: set[str]) -> bool:
    if needs is None:
        return True
    if needs[0] == "field":
        return needs[1] in present
    results = [_answerable(part, present) for part in needs[1]]
    return all(results) if needs[0] == "all" else any(results)


def _added(node: Any) -> bool:
    """Whether an expression comes from a condition a pipeline added (pySigma names it `_cond_...`)."""
    seen = 0
    while node is not None and seen < 10:
        identifier = getattr(node, "identifier", None)
        if isinstance(identifier, str):
            return identifier.startswith(ADDED_CONDITION)
        node = getattr(node, "parent", None)
        seen += 1
    return False
