"""The benchmark code runs (tiny round counts, no timing assertions) so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from benchmarks import bench
from benchmarks.scenarios import RIME_TRIO, TRIO_WEBSOCKET, WSPROTO, WSPROTO_FRESH


@pytest.mark.slow
def test_quick_benchmark_runs_every_scenario(tmp_path: Path) -> None:
    cfg = bench.config(quick=True)
    cfg.iterations, cfg.cold_iterations, cfg.construction_rounds = 2, 1, 2
    cfg.throughput_sentences, cfg.throughput_rounds = 3, 1
    cfg.concurrency, cfg.concurrency_samples, cfg.warmup = (1, 3), 3, 1
    result = trio.run(bench.run, cfg, None, False)
    (tmp_path / "result.json").write_text(json.dumps(result))  # it serializes

    fast = result["fast"]
    contestants = {RIME_TRIO, TRIO_WEBSOCKET, WSPROTO}
    assert set(fast["warm"]) == contestants | {WSPROTO_FRESH}
    assert set(fast["cold"]) == contestants
    for scenario, rounds in (("warm", cfg.iterations), ("cold", cfg.cold_iterations)):
        assert all(row["n"] == rounds for row in fast[scenario].values()), scenario
    assert fast["construction"][RIME_TRIO]["n"] == 2
    assert set(fast["throughput"]["rates"]) == contestants
    assert [(r["client"], r["streams"]) for r in fast["concurrency"]] == [
        (RIME_TRIO, 1),
        (RIME_TRIO, 3),
    ]
    assert all(row["errors"] == 0 for row in fast["concurrency"])
    assert [entry["ttfc"] for entry in result["emulator"]] == [0.0, 0.040]
    for entry in result["emulator"]:
        assert {"warm", "cold", "token", "http"} <= set(entry)
    assert not result["problems"]

    # every target of issue 16 is printed, beside its result or as not run
    assert len(result["targets"]) == 9
    table = result["table"]
    for heading in ("### Targets", "### Latency", "### Throughput", "### Concurrency"):
        assert heading in table
    assert "| **rime-trio** |" in table
    assert "not run (--peers)" in table
