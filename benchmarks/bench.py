"""rime-trio benchmarks: time to first audio, client CPU, throughput and concurrency, each
beside bare WebSocket loops (the floors) and, with ``--peers``, livekit-plugins-rime.

Run with ``nox -s bench`` (``-- --quick`` for a short run; ``nox -s bench_peers`` adds the
peer). Two kinds of server, each in its own process:

* the **fast server** (benchmarks/fast_server.py: asyncio ``websockets``, precomputed
  frames), where a floor shows the network stack and the client's own cost stands out: warm
  and cold TTFA, client CPU, construction, throughput, concurrency;
* the bundled **emulator**, the realistic one: warm, cold, token-by-token and HTTP, with the
  server's time to first chunk at 0 and 40 ms.

Every latency figure is measured in the same run as its floors, rounds interleaved, so drift
on a busy machine hits every side alike. ``--profile warm|cold|throughput`` profiles one
scenario instead (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio

from . import scenarios
from ._common import (
    ROOT,
    ServerProcess,
    emulator_process,
    fast_server_process,
    git_revision,
    machine,
)
from ._peer import Peer, open_peer
from .scenarios import (
    ASYNCIO,
    BACKENDS,
    LIVEKIT,
    RIME_TRIO,
    TRIO,
    WSPROTO_FRESH,
    Backend,
    Baseline,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: scenarios against the fast server, then the emulator ones
FAST_SCENARIOS = ("construction", "warm", "cold", "throughput", "concurrency")
SCENARIOS = (*FAST_SCENARIOS, "emulator", "v1")


@dataclass
class Config:
    quick: bool
    iterations: int  # warm rounds (also token and HTTP rounds)
    cold_iterations: int
    construction_rounds: int
    throughput_sentences: int
    throughput_rounds: int
    concurrency: tuple[int, ...]
    concurrency_samples: int  # streams per level, about (batches of n)
    peer_concurrency: int = 100
    warmup: int = 5
    emulator_ttfc: tuple[float, ...] = (0.0, 0.040)
    slow_server_iterations: int = 100  # rounds cap at a 40 ms server (its sleep is the noise)


def config(quick: bool) -> Config:
    levels = (1, 10, 50, 100, 200)
    if quick:
        return Config(True, 60, 25, 50, 60, 3, levels, 100, slow_server_iterations=20)
    return Config(False, 400, 100, 200, 300, 3, levels, 400)


# ----------------------------------------------------------------------------- the run


class Steps:
    """One line per step on stderr, so a long run shows where it is."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.started = time.perf_counter()

    def __call__(self, label: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[{self.backend} {elapsed:6.1f} s] {label}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def maybe_peer(
    server: ServerProcess, peers: bool, problems: list[str]
) -> AsyncIterator[Peer | None]:
    if not peers:
        yield None
        return
    async with open_peer(server, problems) as peer:
        yield peer


async def run(
    cfg: Config,
    only: set[str] | None = None,
    peers: bool = False,
    backend: Backend = TRIO,
    baseline: Baseline | None = None,
) -> dict[str, Any]:
    """Every wanted scenario on the running event loop (*backend* names it and its floors)."""

    def want(name: str) -> bool:
        return only is None or name in only

    step = Steps(backend.name)
    problems: list[str] = []
    fast: dict[str, Any] = {}
    peer_version: str | None = None
    if any(want(name) for name in FAST_SCENARIOS):
        with fast_server_process() as server:
            async with maybe_peer(server, peers, problems) as peer:
                peer_version = peer.version if peer else None
                if want("construction"):
                    step("construction CPU (fast server)")
                    fast["construction"] = await scenarios.construction_cpu(
                        server, cfg.construction_rounds, peer, problems
                    )
                if want("warm"):
                    step("warm TTFA (fast server)")
                    fast["warm"] = await scenarios.warm_ttfa(
                        server, cfg.iterations, cfg.warmup, peer, problems, backend, baseline
                    )
                if want("cold"):
                    step("cold TTFA (fast server)")
                    fast["cold"] = await scenarios.cold_ttfa(
                        server,
                        cfg.cold_iterations,
                        min(cfg.warmup, 3),
                        peer,
                        problems,
                        backend,
                        baseline,
                    )
                if want("throughput"):
                    step("throughput (fast server)")
                    fast["throughput"] = await scenarios.throughput(
                        server,
                        cfg.throughput_sentences,
                        cfg.throughput_rounds,
                        peer,
                        problems,
                        backend,
                    )
                if want("concurrency"):
                    step("concurrency (fast server)")
                    fast["concurrency"] = await scenarios.concurrency(
                        server,
                        cfg.concurrency,
                        cfg.concurrency_samples,
                        peer,
                        cfg.peer_concurrency,
                        problems,
                    )
    v1: dict[str, Any] | None = None
    if want("v1"):
        with emulator_process(0.0) as server:
            step(f"WebSocket v1 against ws3 ({server.name})")
            v1 = await scenarios.v1_against_ws3(
                server,
                cfg.iterations,
                cfg.cold_iterations,
                cfg.warmup,
                cfg.concurrency[:1] + tuple(n for n in (10, 50, 200) if n in cfg.concurrency),
                cfg.concurrency_samples,
                problems,
                backend,
            )
    emulated: list[dict[str, Any]] = []
    if want("emulator"):
        for ttfc in cfg.emulator_ttfc:
            with emulator_process(ttfc) as server:
                async with maybe_peer(server, peers, problems) as peer:
                    rounds = cfg.iterations if ttfc == 0 else cfg.slow_server_iterations
                    rounds = min(rounds, cfg.iterations)
                    cold_rounds = min(rounds, cfg.cold_iterations)
                    entry: dict[str, Any] = {"server": server.name, "ttfc": ttfc}
                    step(f"warm TTFA ({server.name})")
                    entry["warm"] = await scenarios.warm_ttfa(
                        server, rounds, cfg.warmup, peer, problems, backend, baseline
                    )
                    step(f"cold TTFA ({server.name})")
                    entry["cold"] = await scenarios.cold_ttfa(
                        server, cold_rounds, min(cfg.warmup, 3), peer, problems, backend, baseline
                    )
                    step(f"token-by-token TTFA ({server.name})")
                    entry["token"] = await scenarios.token_ttfa(server, rounds, cfg.warmup)
                    step(f"HTTP ({server.name})")
                    entry["http"] = await scenarios.http_ttfb(server, rounds, cfg.warmup)
                    emulated.append(entry)
    return {
        "peer_version": peer_version,
        "fast": fast,
        "emulator": emulated,
        "v1": v1,
        "problems": [f"{backend.name}: {problem}" for problem in problems],
    }


def run_all(
    cfg: Config,
    only: set[str] | None = None,
    peers: bool = False,
    backends: tuple[str, ...] = ("trio", "asyncio"),
    baseline: str | None = None,
) -> dict[str, Any]:
    """:func:`run` on each backend in turn, each in an event loop of its own, and the
    combined result with its targets and tables."""
    parts: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        old = stack.enter_context(load_baseline(baseline)) if baseline else None
        for name in backends:
            backend = BACKENDS[name]
            parts[name] = anyio.run(run, cfg, only, peers, backend, old, backend=name)
    versions = [part["peer_version"] for part in parts.values() if part["peer_version"]]
    result: dict[str, Any] = {
        "machine": machine(),
        "revision": git_revision(),
        "quick": cfg.quick,
        "config": asdict(cfg),
        "baseline": old.name if old else None,
        "peer_version": versions[0] if versions else None,
        "backends": parts,
        "problems": [problem for part in parts.values() for problem in part["problems"]],
    }
    result["targets"] = targets(result)
    result["table"] = format_tables(result)
    return result


@contextlib.contextmanager
def load_baseline(revision: str) -> Iterator[Baseline]:
    """rime-trio at *revision* (any git revision of this repository), importable beside
    this checkout's under a name of its own, so both run in the same process and round."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", f"{revision}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    package = f"rime_trio_at_{commit}"
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "archive", commit, "src/rime_trio"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        # Its modules import each other relatively, so a renamed copy is a package of its own.
        (Path(tmp) / "src" / "rime_trio").rename(Path(tmp) / package)
        sys.path.insert(0, tmp)
        try:
            module = importlib.import_module(package)
            yield Baseline(f"rime-trio at {commit}", module.RimeClient, module.AudioChunk)
        finally:
            sys.path.remove(tmp)


# ----------------------------------------------------------------------------- targets


def _ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "—"
    return f"{seconds * 1000:.3f} ms"


def _target(
    name: str, ours: str, reference: str, ratio: float | None, limit: float | None, met: bool
) -> dict[str, Any]:
    return {
        "target": name,
        "rime_trio": ours,
        "reference": reference,
        "ratio": ratio,
        "limit": limit,
        "status": "met" if met else "missed",
    }


def _not_run(name: str, why: str) -> dict[str, Any]:
    return {
        "target": name,
        "rime_trio": "",
        "reference": "",
        "ratio": None,
        "limit": None,
        "status": f"not run ({why})",
    }


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each backend's targets with its result (ratios within this run): issue 16's on Trio,
    issue 11's on asyncio."""
    rows: list[dict[str, Any]] = []
    parts = result["backends"]
    if "trio" in parts:
        rows += _trio_targets(parts["trio"])
    if "asyncio" in parts:
        rows += _asyncio_targets(parts["asyncio"])
    return rows


def _why(part: dict[str, Any], data: object) -> str:
    if not data:
        return "--only"
    return "--peers" if not part["peer_version"] else "peer failed"


def _floor_target(
    label: str, data: dict[str, Any] | None, floor_name: str, key: str, limit: float
) -> dict[str, Any]:
    if not data or floor_name not in data:
        return _not_run(label, "--only")
    ours, floor = data[RIME_TRIO], data[floor_name]
    ratio = ours[key] / floor[key]
    return _target(label, _ms(ours[key]), f"floor {_ms(floor[key])}", ratio, limit, ratio <= limit)


def _peer_targets(backend: str, part: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    fast = part["fast"]
    for label, data in (("warm", fast.get("warm")), ("cold", fast.get("cold"))):
        name = f"{backend}: {label} TTFA median ahead of livekit-plugins-rime"
        if data and LIVEKIT in data:
            ours, peer = data[RIME_TRIO], data[LIVEKIT]
            ratio = ours["median"] / peer["median"]
            rows.append(
                _target(
                    name,
                    _ms(ours["median"]),
                    f"livekit {_ms(peer['median'])}",
                    ratio,
                    1.0,
                    ratio < 1.0,
                )
            )
        else:
            rows.append(_not_run(name, _why(part, data)))
    return rows


def _trio_targets(part: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 16's targets, on Trio against the trio-websocket floor."""
    fast = part["fast"]
    floor = TRIO.floor
    warm, cold = fast.get("warm"), fast.get("cold")
    rows = [
        _floor_target(
            "trio: warm TTFA median ≤ 1.25x the bare trio-websocket floor (aim 1.15x)",
            warm,
            floor,
            "median",
            1.25,
        ),
        _floor_target("trio: warm TTFA p99 ≤ 1.5x the floor's p99", warm, floor, "p99", 1.5),
        _floor_target(
            "trio: cold TTFA median ≤ 1.15x the raw cold floor (trio-websocket, from connect)",
            cold,
            floor,
            "median",
            1.15,
        ),
        *_peer_targets("trio", part),
    ]
    if warm and LIVEKIT in warm:
        ours, peer = warm[RIME_TRIO], warm[LIVEKIT]
        ratio = ours["cpu"] / peer["cpu"]
        rows.append(
            _target(
                "trio: client CPU per utterance ≤ livekit-plugins-rime's (warm, alone)",
                _ms(ours["cpu"]),
                f"livekit {_ms(peer['cpu'])}",
                ratio,
                1.0,
                ratio <= 1.0,
            )
        )
    else:
        rows.append(
            _not_run("trio: client CPU per utterance ≤ livekit's (alone)", _why(part, warm))
        )
    levels = fast.get("concurrency") or []
    peer_level = next((r for r in levels if r["client"] == LIVEKIT), None)
    ours_level = next(
        (
            r
            for r in levels
            if peer_level and r["client"] == RIME_TRIO and r["streams"] == peer_level["streams"]
        ),
        None,
    )
    if ours_level and peer_level:
        ratio = ours_level["cpu_per_stream"] / peer_level["cpu_per_stream"]
        rows.append(
            _target(
                f"trio: client CPU per stream ≤ livekit-plugins-rime's at "
                f"{peer_level['streams']} concurrent",
                _ms(ours_level["cpu_per_stream"]),
                f"livekit {_ms(peer_level['cpu_per_stream'])}",
                ratio,
                1.0,
                ratio <= 1.0,
            )
        )
    else:
        rows.append(
            _not_run(
                "trio: client CPU per stream ≤ livekit's at 100 concurrent", _why(part, levels)
            )
        )
    construction = fast.get("construction")
    if construction:
        median = construction[RIME_TRIO]["median"]
        rows.append(
            _target(
                "trio: `RimeClient(...)` + `__aenter__` under 2 ms CPU (WebSocket mode)",
                _ms(median),
                "limit 2 ms",
                median / 0.002,
                1.0,
                median < 0.002,
            )
        )
    else:
        rows.append(_not_run("trio: construction < 2 ms CPU", "--only"))
    throughput = fast.get("throughput")
    if throughput and floor in throughput["rates"]:
        rates = throughput["rates"]
        ratio = rates[floor] / rates[RIME_TRIO]
        rows.append(
            _target(
                "trio: throughput within 1.2x of the bare loop (trio-websocket, 64 KiB reads)",
                f"{rates[RIME_TRIO]:.0f} audio s/CPU s",
                f"bare loop {rates[floor]:.0f}",
                ratio,
                1.2,
                ratio <= 1.2,
            )
        )
    else:
        rows.append(_not_run("trio: throughput within 1.2x of the bare loop", "--only"))
    return rows


def _asyncio_targets(part: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's targets, on asyncio against rime-trio's own transport bare (wsproto)."""
    fast = part["fast"]
    floor = ASYNCIO.floor
    return [
        _floor_target(
            "asyncio: warm TTFA median ≤ 1.25x the bare wsproto floor (asyncio)",
            fast.get("warm"),
            floor,
            "median",
            1.25,
        ),
        _floor_target(
            "asyncio: cold TTFA median ≤ 1.25x the bare wsproto cold floor (asyncio)",
            fast.get("cold"),
            floor,
            "median",
            1.25,
        ),
        *_peer_targets("asyncio", part),
    ]


# ----------------------------------------------------------------------------- tables


def _x(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.2f}x"


def _cell(row: dict[str, Any] | None, key: str) -> str:
    return _ms(row[key]) if row else "—"


def _ratio(row: dict[str, Any] | None, floor: dict[str, Any] | None, key: str) -> float | None:
    if not row or not floor:
        return None
    return float(row[key]) / float(floor[key])


def format_targets(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| target (issue 16 on trio, issue 11 on asyncio) | rime-trio | beside | ratio | status |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        status = row["status"]
        if status == "missed":
            status = "**missed**"
        lines.append(
            f"| {row['target']} | {row['rime_trio']} | {row['reference']} | "
            f"{_x(row['ratio'])} | {status} |"
        )
    lines.append(
        "\nratio: rime-trio's figure ÷ the one beside it (throughput: the bare loop's rate ÷ "
        "rime-trio's), so lower is better; against the fast server, on the same backend, in "
        "this run."
    )
    return "\n".join(lines)


def ordered(names: Iterator[str] | list[str], backend: Backend) -> list[str]:
    """rime-trio, any baseline revision of it, the peer, the floors, the diagnostic."""
    present = set(names)
    baselines = sorted(name for name in present if name.startswith("rime-trio at "))
    order = [RIME_TRIO, *baselines, LIVEKIT, *backend.floors, WSPROTO_FRESH]
    return [name for name in order if name in present]


def _label(name: str, backend: Backend) -> str:
    if name == RIME_TRIO:
        return f"**{name}**"
    if name == backend.floor:
        return f"{name} (floor)"
    if name == WSPROTO_FRESH:
        return f"{name} (diagnostic)"
    return name


def _short(floor: str) -> str:
    return floor.removeprefix("bare ")


def format_latency(fast: dict[str, Any], backend: Backend) -> str:
    warm: dict[str, Any] = fast.get("warm") or {}
    cold: dict[str, Any] = fast.get("cold") or {}
    floors = list(backend.floors)
    header = (
        ["client", "warm median", "warm p99"]
        + [f"÷ {_short(f)} (median / p99)" for f in floors]
        + ["CPU per warm utterance", "cold median", "cold p99"]
        + [f"÷ {_short(f)} cold" for f in floors]
        + ["CPU per cold round"]
    )
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for name in ordered([*warm, *cold], backend):
        w, c = warm.get(name), cold.get(name)
        cells = [_label(name, backend), _cell(w, "median"), _cell(w, "p99")]
        cells += [
            f"{_x(_ratio(w, warm.get(f), 'median'))} / {_x(_ratio(w, warm.get(f), 'p99'))}"
            for f in floors
        ]
        cells += [_cell(w, "cpu"), _cell(c, "median"), _cell(c, "p99")]
        cells += [_x(_ratio(c, cold.get(f), "median")) for f in floors]
        cells += [_cell(c, "cpu")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_split(warm: dict[str, Any]) -> str:
    split = warm.get(RIME_TRIO, {}).get("split")
    if not split:
        return ""
    return (
        f"rime-trio's warm TTFA, split (medians): entering `client.stream()` "
        f"{_ms(split['stream_open'])}, `push_text` {_ms(split['push_text'])}, then to the first "
        f"`AudioChunk` {_ms(split['to_first_audio'])}."
        + (
            f" The client's own `stream.metrics.time_to_first_audio` (from the text pushed to "
            f"the first chunk taken): {_ms(split['metrics_ttfa'])}."
            if "metrics_ttfa" in split
            else ""
        )
    )


def format_construction(construction: dict[str, Any]) -> str:
    lines = [
        "| client | what | CPU median | CPU p90 | n |",
        "|---|---|---:|---:|---:|",
    ]
    what = {
        RIME_TRIO: "`RimeClient(base_url='ws://…', api_key=…)` + `__aenter__`",
        LIVEKIT: "`rime.TTS(base_url='ws://…', use_websocket=True, …)`",
    }
    for name in (RIME_TRIO, LIVEKIT):
        row = construction.get(name)
        if row:
            lines.append(
                f"| {name} | {what[name]} | {_ms(row['median'])} | {_ms(row['p90'])} | {row['n']} |"
            )
    return "\n".join(lines)


def format_throughput(throughput: dict[str, Any], backend: Backend) -> str:
    rates = throughput["rates"]
    floors = list(backend.floors)
    header = [
        "client",
        "audio s per client CPU s",
        *(f"{f} ÷ client" for f in floors),
        "audio s per stream",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for name in ordered(list(rates), backend):
        rate = rates[name]
        label = _label(name, backend)
        if name in floors:
            label = f"{name} (64 KiB reads)"
        cells = [label, f"{rate:.0f}"]
        cells += [_x(rates[f] / rate if f in rates else None) for f in floors]
        cells += [f"{throughput['audio_seconds'][name]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_concurrency(levels: list[dict[str, Any]]) -> str:
    lines = [
        "| client | streams | batches | TTFA median | TTFA p90 | TTFA p99 | CPU per stream "
        "| wall per batch | sockets opened per batch | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in levels:
        sockets = row["sockets_per_batch"]
        handshakes = row["handshakes_per_batch"]
        if sockets is not None:
            opened = f"{sockets:.1f}"
            if handshakes is not None:
                opened += f" (server: {handshakes:.1f})"
        else:
            opened = "—" if handshakes is None else f"{handshakes:.1f} (server count)"
        errors = str(row["errors"])
        if row["first_error"]:
            errors += f": {row['first_error']}"
        label = f"**{row['client']}**" if row["client"] == RIME_TRIO else row["client"]
        lines.append(
            f"| {label} | {row['streams']} | {row['batches']} | {_ms(row['median'])} | "
            f"{_ms(row['p90'])} | {_ms(row['p99'])} | {_ms(row['cpu_per_stream'])} | "
            f"{_ms(row['wall'])} | {opened} | {errors} |"
        )
    return "\n".join(lines)


def format_emulator(entries: list[dict[str, Any]], backend: Backend) -> str:
    lines = [
        f"| server | scenario | client | n | median | p90 | p99 | ÷ {_short(backend.floor)} "
        "median | ÷ its p99 | CPU per round |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def add(
        server: str,
        scenario: str,
        client: str,
        row: dict[str, Any],
        floor: dict[str, Any] | None,
    ) -> None:
        cpu = _ms(row["cpu"]) if "cpu" in row else ""
        lines.append(
            f"| {server} | {scenario} | {client} | {row['n']} | {_ms(row['median'])} | "
            f"{_ms(row['p90'])} | {_ms(row['p99'])} | {_x(_ratio(row, floor, 'median'))} | "
            f"{_x(_ratio(row, floor, 'p99'))} | {cpu} |"
        )

    for entry in entries:
        server = entry["server"]
        for scenario in ("warm", "cold"):
            data = entry[scenario]
            floor = data.get(backend.floor)
            for name in ordered(list(data), backend):
                add(server, f"{scenario} TTFA", _label(name, backend), data[name], floor)
        token = entry["token"]
        add(
            server,
            "token-by-token TTFA (from the token after the '.'; ÷ the next row)",
            "**rime-trio**",
            token["token"],
            token["sentence"],
        )
        add(
            server,
            "the same sentence pushed at once (from the push)",
            "rime-trio",
            token["sentence"],
            token["sentence"],
        )
        http = entry["http"]
        add(
            server,
            "HTTP time to first byte (÷ raw httpx)",
            "**rime-trio**",
            http["ttfb"],
            http["raw_ttfb"],
        )
        add(
            server,
            "HTTP time to first byte",
            "raw httpx (floor)",
            http["raw_ttfb"],
            http["raw_ttfb"],
        )
        add(server, "HTTP full body (÷ raw httpx)", "**rime-trio**", http["full"], http["raw_full"])
        add(server, "HTTP full body", "raw httpx (floor)", http["raw_full"], http["raw_full"])
    return "\n".join(lines)


def format_v1(v1: dict[str, Any], backend: Backend) -> str:
    floor_name = backend.floor
    lines = [
        f"| scenario | client | n | median | p99 | ÷ {_short(floor_name)} median | CPU per round |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario in ("warm", "cold"):
        data = v1[scenario]
        floor = data.get(floor_name)
        for name, row in data.items():
            lines.append(
                f"| {scenario} TTFA | {_label(name, backend)} | {row['n']} | "
                f"{_ms(row['median'])} | {_ms(row['p99'])} | {_x(_ratio(row, floor, 'median'))} "
                f"| {_ms(row['cpu'])} |"
            )
    lines += [
        "",
        "Streams started together on one client (TTFA from the start of the batch):",
        "",
        "| client | streams | batches | TTFA median | TTFA p90 | TTFA p99 | CPU per stream | "
        "sockets opened per batch | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in v1["concurrency"]:
        sockets = row["sockets_per_batch"]
        lines.append(
            f"| {row['client']} | {row['streams']} | {row['batches']} | {_ms(row['median'])} | "
            f"{_ms(row['p90'])} | {_ms(row['p99'])} | {_ms(row['cpu_per_stream'])} | "
            f"{'—' if sockets is None else f'{sockets:.1f}'} | {row['errors']} |"
        )
    return "\n".join(lines)


def format_backend(part: dict[str, Any], backend: Backend) -> list[str]:
    fast = part["fast"]
    on = "Trio" if backend.name == "trio" else "asyncio"
    parts: list[str] = []
    if fast.get("warm") or fast.get("cold"):
        latency = format_latency(fast, backend)
        if fast.get("warm"):
            latency += "\n\n" + format_split(fast["warm"])
        parts.append(f"### Latency and client CPU on {on}, fast server\n\n" + latency)
    if fast.get("construction"):
        parts.append(
            f"### Client construction on {on}, CPU\n\n" + format_construction(fast["construction"])
        )
    if fast.get("throughput"):
        t = fast["throughput"]
        parts.append(
            f"### Throughput on {on}, fast server ({t['sentences']} sentences in one stream, "
            f"median of {t['rounds']})\n\n" + format_throughput(t, backend)
        )
    if fast.get("concurrency"):
        parts.append(
            f"### Concurrency on {on}, fast server (streams started together on one client; "
            "TTFA from the start of the batch)\n\n" + format_concurrency(fast["concurrency"])
        )
    if part.get("v1"):
        parts.append(
            f"### WebSocket v1 beside ws3 on {on}: the bundled emulator (TTFC 0 ms)\n\n"
            + format_v1(part["v1"], backend)
        )
    if part["emulator"]:
        parts.append(
            f"### Realistic server on {on}: the bundled emulator\n\n"
            + format_emulator(part["emulator"], backend)
        )
    return parts


def format_tables(result: dict[str, Any]) -> str:
    parts = ["### Targets\n\n" + format_targets(result["targets"])]
    for name, part in result["backends"].items():
        parts += format_backend(part, BACKENDS[name])
    if result["problems"]:
        parts.append("### Problems\n\n" + "\n".join(f"- {p}" for p in result["problems"]))
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a few minutes)")
    parser.add_argument("--iterations", type=int, help="override the warm round count")
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, help="run only these (repeatable)"
    )
    parser.add_argument("--out", type=Path, help="JSON result file (default: benchmarks/results/)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument(
        "--peers", action="store_true", help="also drive livekit-plugins-rime (nox -s bench_peers)"
    )
    parser.add_argument(
        "--readme", action="store_true", help="write the tables into benchmarks/README.md"
    )
    parser.add_argument(
        "--profile",
        choices=("warm", "cold", "throughput"),
        help="profile rime-trio in one scenario (cProfile, and py-spy if installed)",
    )
    parser.add_argument("--no-py-spy", action="store_true", help="with --profile: cProfile only")
    parser.add_argument(
        "--backend",
        action="append",
        choices=tuple(BACKENDS),
        help="measure rime-trio on this event loop (repeatable; default: trio, then asyncio; "
        "--profile uses the first)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure rime-trio at this git revision in the same rounds (warm and cold)",
    )
    parser.add_argument(
        "--profile-run", choices=("warm", "cold", "throughput"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    cfg = config(args.quick)
    if args.iterations:
        cfg.iterations = args.iterations
        cfg.cold_iterations = max(1, args.iterations // 4)
    backends = tuple(dict.fromkeys(args.backend or BACKENDS))
    if args.profile or args.profile_run:
        from . import profiling

        if args.profile_run:
            return profiling.run_plain(args.profile_run, cfg, backends[0])
        return profiling.profile(args.profile, cfg, backends[0], py_spy=not args.no_py_spy)
    started = time.perf_counter()
    only = set(args.only) if args.only else None
    result = run_all(cfg, only, args.peers, backends, args.baseline)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(result["table"])
    print(f"\n{result['wall_seconds']} s; {result['revision']}; machine: {result['machine']}")
    if not args.no_save:
        out = args.out or RESULTS / time.strftime("bench-%Y%m%d-%H%M%S.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"results: {out}")
    if args.readme:
        write_readme(result)
    return 0


def write_readme(result: dict[str, Any]) -> None:
    readme = HERE / "README.md"
    text = readme.read_text(encoding="utf-8")
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    m = result["machine"]
    cfg = result["config"]
    peer = (
        f"livekit-plugins-rime {result['peer_version']}"
        if result["peer_version"]
        else "no peer (`nox -s bench_peers` adds livekit-plugins-rime)"
    )
    on = " and ".join(result["backends"])
    block = (
        f"{begin}\n"
        f"Run: `{'quick' if result['quick'] else 'full'}` ({cfg['iterations']} warm rounds, "
        f"{cfg['cold_iterations']} cold rounds per client), on {on}, {result['wall_seconds']} s, "
        f"rime-trio at {result['revision']}, {peer}. Machine: {m['cpu']}, {m['cores']} cores, "
        f"Python {m['python']}, {m['platform']}.\n\n{result['table']}\n{end}"
    )
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    readme.write_text(head + block + tail, encoding="utf-8")
    print(f"tables written to {readme}")


if __name__ == "__main__":
    sys.exit(main())
