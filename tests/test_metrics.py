"""Batched metric updates: the same numbers as direct ones, once flushed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from imgsrv.metrics import BatchedCounts


def samples(registry: CollectorRegistry) -> dict[str, float]:
    found = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_created"):
                key = sample.name + str(sorted(sample.labels.items()))
                found[key] = sample.value
    return found


def test_batched_observations_equal_direct_ones_after_a_flush() -> None:
    direct, batched = CollectorRegistry(), CollectorRegistry()
    buckets = (0.001, 0.01, 0.1, 1.0)
    a = Histogram("t_seconds", "t", ["route"], buckets=buckets, registry=direct)
    b = Histogram("t_seconds", "t", ["route"], buckets=buckets, registry=batched)
    counts = BatchedCounts()
    values = [0.0005, 0.001, 0.002, 0.05, 0.1, 0.5, 3.0, 0.0]  # bounds are inclusive
    for route in ("x", "y"):
        for value in values:
            a.labels(route).observe(value)
            counts.observe(b.labels(route), value)
    assert samples(batched)['t_seconds_count[(\'route\', \'x\')]'] == 0  # not yet written
    counts.flush()
    assert samples(direct) == samples(batched)
    counts.flush()  # nothing more to write
    assert samples(direct) == samples(batched)


def test_batched_counts_reach_the_counter_on_flush() -> None:
    registry = CollectorRegistry()
    counter = Counter("n", "n", registry=registry)
    counts = BatchedCounts()
    counts.add(counter)
    counts.add(counter, 4)
    assert samples(registry)["n_total[]"] == 0
    counts.flush()
    assert samples(registry)["n_total[]"] == 5
