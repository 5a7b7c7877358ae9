"""A Sigma conversion variant: the pySigma processing pipelines one conversion applies, and the log
source categories it is for. Connectors convert a rule once per applicable variant and OR the
results (a process creation rule as Sysmon 1 and as Security 4688)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sigma.processing.pipeline import ProcessingPipeline


@dataclass(frozen=True)
class Variant:
    name: str
    pipelines: tuple[str, ...]
    categories: frozenset[str] | None = None

    @classmethod
    def from_data(cls, item: Mapping[str, Any]) -> "Variant":
        categories = item.get("categories")
        return cls(str(item["name"]), tuple(item.get("pipelines") or ()),
                   frozenset(str(c).lower() for c in categories) if categories else None)

    def applies(self, category: str | None) -> bool:
        return self.categories is None or (category or "").lower() in self.categories

    def pipeline(self, registry: Mapping[str, Callable[[], ProcessingPipeline]], extra_yaml: str | None = None
                 ) -> ProcessingPipeline:
        """Fresh pipeline objects each time: pySigma pipelines keep per-conversion state."""
        pipeline = ProcessingPipeline()
        for name in self.pipelines:
            pipeline = pipeline + registry[name]()
        return pipeline + ProcessingPipeline.from_yaml(extra_yaml) if extra_yaml else pipeline
