"""GET /metrics read back with prometheus-client's own parser, for the API and end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass
class Scrape:
    """The samples of one /metrics answer (named with their suffix: `_total`, `_bucket`...)."""

    samples: list[Sample]
    types: dict[str, str]  # family name -> counter, gauge, histogram

    @classmethod
    def parse(cls, text: str) -> Scrape:
        families = list(text_string_to_metric_families(text))
        samples = [sample for family in families for sample in family.samples]
        return cls(samples, {family.name: family.type for family in families})

    def total(self, metric: str, /, **labels: str) -> float:
        """The sum of `metric`'s samples whose labels include `labels` (0 if there are none)."""
        return sum(sample.value for sample in self.matching(metric, **labels))

    def matching(self, metric: str, /, **labels: str) -> list[Sample]:
        return [
            sample
            for sample in self.samples
            if sample.name == metric and labels.items() <= sample.labels.items()
        ]

    def buckets(self, metric: str, /, **labels: str) -> list[tuple[float, float]]:
        """A histogram's `(le, cumulative count)` pairs, in order of `le`."""
        found = [
            (float(sample.labels["le"]), sample.value)
            for sample in self.matching(f"{metric}_bucket", **labels)
        ]
        return sorted(found)
