"""The benchmark code runs (tiny iteration counts, no timing assertions) so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks import bench


@pytest.mark.slow
def test_quick_benchmark_runs_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    cfg = bench.config(quick=True)
    cfg.iterations, cfg.cold_iterations, cfg.throughput_sentences = 2, 1, 3
    cfg.concurrency = (1, 3)
    result = bench.trio.run(bench.run, cfg, None, False)
    out.write_text(json.dumps(result))
    names = [row["name"] for scenario in result["scenarios"] for row in scenario["rows"]]
    for expected in (
        "warm TTFA",
        "cold TTFA (with handshake)",
        "first stream after prewarm()",
        "token-by-token TTFA (from the final '.')",
        "HTTP time to first byte",
        "HTTP full body",
        "throughput (audio s per client CPU s)",
        "3 concurrent streams, warm TTFA",
    ):
        assert expected in names
    concurrent = [r for s in result["scenarios"] for r in s["rows"] if "concurrent" in r["name"]]
    assert all(row["errors"] == 0 for row in concurrent)
    assert "| warm TTFA |" in result["table"]
