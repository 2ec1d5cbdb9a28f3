"""One ``/metrics`` for ``driftline run --workers N``: the workers' expositions, merged.

Each worker is a whole daemon with its own registry (counters, histograms, and the
:class:`~monitor.metrics.LatestWindows` collector that exports a model's window gauges only
while the worker owns the model's partitions). The supervisor scrapes them and serves one
body in which every series appears once:

* counters and histograms are summed over the workers. A worker that dies and is restarted
  starts again from zero, so its last scraped values are kept (:meth:`MergedMetrics.retire`)
  and added to the sum: the merged counter never goes down, which Prometheus would read as
  a reset. What a worker counted after its last scrape is lost (an undercount, never a
  jump). ``_created`` samples are dropped: there is no single creation time.
* gauges are combined per metric by :data:`GAUGE_RULES`, default ``max``. The window
  gauges are exported by the owning worker only, so they do not overlap except for a
  moment during a rebalance; constant ``*_info`` gauges are equal in every worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

#: How gauges present in several workers combine (per family name); others: max.
GAUGE_RULES: Mapping[str, Callable[[Iterable[float]], float]] = {
    "driftline_source_connected": min,  # 0 while any worker cannot reach the broker
    "driftline_labels_waiting": sum,  # each worker's own label buffer
    "driftline_consumer_lag_records": sum,  # a partition's lag: its owner's only
}

#: Families whose samples are summed and kept across worker restarts.
_SUMMED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


@dataclass
class _Family:
    name: str
    documentation: str
    type: str
    values: dict[SampleKey, list[float]] = field(default_factory=dict)


def parse(text: str) -> list[Metric]:
    """A worker's exposition as metric families (ValueError if it is not one)."""
    return list(text_string_to_metric_families(text))


def _key(name: str, labels: Mapping[str, str]) -> SampleKey:
    return name, tuple(sorted(labels.items()))


class MergedMetrics:
    """Merges the latest scrape of each live worker with the retired workers' counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retired: dict[str, _Family] = {}

    def retire(self, families: Sequence[Metric]) -> None:
        """Keep the summed samples of a worker that stopped (its last scrape)."""
        with self._lock:
            for fam in families:
                if fam.type not in _SUMMED:
                    continue
                kept = self._retired.setdefault(
                    fam.name, _Family(fam.name, fam.documentation, fam.type))
                for s in fam.samples:
                    if s.name.endswith("_created"):
                        continue
                    k = _key(s.name, s.labels)
                    kept.values[k] = [sum(kept.values.get(k, [])) + s.value]

    def merge(self, scrapes: Iterable[Sequence[Metric]]) -> list[Metric]:
        """One family per name: the live workers' ``scrapes`` plus the retired counters."""
        families: dict[str, _Family] = {}
        with self._lock:
            for kept in self._retired.values():
                families[kept.name] = _Family(kept.name, kept.documentation, kept.type,
                                              {k: list(v) for k, v in kept.values.items()})
        for scrape in scrapes:
            for fam in scrape:
                into = families.setdefault(fam.name,
                                           _Family(fam.name, fam.documentation, fam.type))
                for s in fam.samples:
                    if s.name.endswith("_created"):
                        continue
                    into.values.setdefault(_key(s.name, s.labels), []).append(s.value)
        out = []
        for merged in families.values():
            combine = sum if merged.type in _SUMMED else GAUGE_RULES.get(merged.name, max)
            metric = Metric(merged.name, merged.documentation, merged.type)
            for (name, labels), values in merged.values.items():
                metric.add_sample(name, dict(labels), float(combine(values)))
            out.append(metric)
        return out
