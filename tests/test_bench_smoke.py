"""The benchmark code runs (tiny round counts, no timing assertions) so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks import bench
from benchmarks.scenarios import (
    RIME_TRIO,
    RIME_TRIO_BY_SENTENCE,
    TRIO_WEBSOCKET,
    WEBSOCKETS,
    WSPROTO,
    WSPROTO_FRESH,
)


@pytest.mark.slow
def test_quick_benchmark_runs_every_scenario_on_both_backends(tmp_path: Path) -> None:
    cfg = bench.config(quick=True)
    cfg.iterations, cfg.cold_iterations, cfg.construction_rounds = 2, 1, 2
    cfg.throughput_sentences, cfg.throughput_rounds = 3, 1
    cfg.concurrency, cfg.concurrency_samples, cfg.warmup = (1, 3), 3, 1
    result = bench.run_all(cfg, None, False, ("trio", "asyncio"))
    (tmp_path / "result.json").write_text(json.dumps(result))  # it serializes

    floors = {"trio": {TRIO_WEBSOCKET, WSPROTO}, "asyncio": {WSPROTO, WEBSOCKETS}}
    for backend, part in result["backends"].items():
        fast = part["fast"]
        contestants = {RIME_TRIO} | floors[backend]
        assert set(fast["warm"]) == contestants | {WSPROTO_FRESH}, backend
        assert set(fast["cold"]) == contestants, backend
        for scenario, rounds in (("warm", cfg.iterations), ("cold", cfg.cold_iterations)):
            assert all(row["n"] == rounds for row in fast[scenario].values()), scenario
        assert fast["construction"][RIME_TRIO]["n"] == 2
        assert set(fast["throughput"]["rates"]) == contestants
        assert [(r["client"], r["streams"]) for r in fast["concurrency"]] == [
            (RIME_TRIO, 1),
            (RIME_TRIO_BY_SENTENCE, 1),
            (RIME_TRIO, 3),
            (RIME_TRIO_BY_SENTENCE, 3),
        ]
        # streams back to back share a socket under never, and each opens one under
        # bySentence (the first batch's prewarmed socket and spares aside)
        never, by_sentence = fast["concurrency"][:2]
        assert never["sockets_per_batch"] < by_sentence["sockets_per_batch"]
        assert all(row["errors"] == 0 for row in fast["concurrency"])
        assert [entry["ttfc"] for entry in part["emulator"]] == [0.0, 0.040]
        for entry in part["emulator"]:
            assert {"warm", "cold", "token", "http"} <= set(entry)
    assert not result["problems"]
    targets = {row["target"].split(":")[0] for row in result["targets"]}
    assert targets == {"trio", "asyncio"}
    assert "Latency and client CPU on asyncio" in result["table"]


@pytest.mark.slow
def test_baseline_revision_runs_beside_this_checkout() -> None:
    cfg = bench.config(quick=True)
    cfg.iterations, cfg.cold_iterations, cfg.warmup = 2, 1, 1
    result = bench.run_all(cfg, {"warm", "cold"}, False, ("trio",), baseline="HEAD")
    name = result["baseline"]
    assert name is not None
    assert name.startswith("rime-trio at ")
    fast = result["backends"]["trio"]["fast"]
    assert fast["warm"][name]["n"] == 2
    assert fast["cold"][name]["n"] == 1
    assert not result["problems"]
