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
import json
import math
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from . import scenarios
from ._common import (
    ServerProcess,
    emulator_process,
    fast_server_process,
    git_revision,
    machine,
)
from ._peer import Peer, open_peer
from .scenarios import LIVEKIT, RIME_TRIO, TRIO_WEBSOCKET, WSPROTO, WSPROTO_FRESH

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: scenarios against the fast server, then the emulator ones
FAST_SCENARIOS = ("construction", "warm", "cold", "throughput", "concurrency")
SCENARIOS = (*FAST_SCENARIOS, "emulator")


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

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, label: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[{elapsed:6.1f} s] {label}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def maybe_peer(
    server: ServerProcess, peers: bool, problems: list[str]
) -> AsyncIterator[Peer | None]:
    if not peers:
        yield None
        return
    async with open_peer(server, problems) as peer:
        yield peer


async def run(cfg: Config, only: set[str] | None = None, peers: bool = False) -> dict[str, Any]:
    def want(name: str) -> bool:
        return only is None or name in only

    step = Steps()
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
                        server, cfg.iterations, cfg.warmup, peer, problems
                    )
                if want("cold"):
                    step("cold TTFA (fast server)")
                    fast["cold"] = await scenarios.cold_ttfa(
                        server, cfg.cold_iterations, min(cfg.warmup, 3), peer, problems
                    )
                if want("throughput"):
                    step("throughput (fast server)")
                    fast["throughput"] = await scenarios.throughput(
                        server, cfg.throughput_sentences, cfg.throughput_rounds, peer, problems
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
                        server, rounds, cfg.warmup, peer, problems
                    )
                    step(f"cold TTFA ({server.name})")
                    entry["cold"] = await scenarios.cold_ttfa(
                        server, cold_rounds, min(cfg.warmup, 3), peer, problems
                    )
                    step(f"token-by-token TTFA ({server.name})")
                    entry["token"] = await scenarios.token_ttfa(server, rounds, cfg.warmup)
                    step(f"HTTP ({server.name})")
                    entry["http"] = await scenarios.http_ttfb(server, rounds, cfg.warmup)
                    emulated.append(entry)
    result: dict[str, Any] = {
        "machine": machine(),
        "revision": git_revision(),
        "quick": cfg.quick,
        "config": asdict(cfg),
        "peer_version": peer_version,
        "fast": fast,
        "emulator": emulated,
        "problems": problems,
    }
    result["targets"] = targets(result)
    result["table"] = format_tables(result)
    return result


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
    """Issue 16's targets, each with its result (ratios within this run)."""
    fast = result["fast"]
    rows: list[dict[str, Any]] = []

    def why(data: object) -> str:
        if not data:
            return "--only"
        return "--peers" if not result["peer_version"] else "peer failed"

    warm = fast.get("warm")
    if warm and TRIO_WEBSOCKET in warm:
        ours, floor = warm[RIME_TRIO], warm[TRIO_WEBSOCKET]
        ratio = ours["median"] / floor["median"]
        rows.append(
            _target(
                "warm TTFA median ≤ 1.25x the bare trio-websocket floor (aim 1.15x)",
                _ms(ours["median"]),
                f"floor {_ms(floor['median'])}",
                ratio,
                1.25,
                ratio <= 1.25,
            )
        )
        ratio = ours["p99"] / floor["p99"]
        rows.append(
            _target(
                "warm TTFA p99 ≤ 1.5x the floor's p99",
                _ms(ours["p99"]),
                f"floor {_ms(floor['p99'])}",
                ratio,
                1.5,
                ratio <= 1.5,
            )
        )
    else:
        rows.append(_not_run("warm TTFA ≤ 1.25x floor (median), 1.5x (p99)", "--only"))
    cold = fast.get("cold")
    if cold and TRIO_WEBSOCKET in cold:
        ours, floor = cold[RIME_TRIO], cold[TRIO_WEBSOCKET]
        ratio = ours["median"] / floor["median"]
        rows.append(
            _target(
                "cold TTFA median ≤ 1.15x the raw cold floor (trio-websocket, from connect)",
                _ms(ours["median"]),
                f"floor {_ms(floor['median'])}",
                ratio,
                1.15,
                ratio <= 1.15,
            )
        )
    else:
        rows.append(_not_run("cold TTFA ≤ 1.15x raw cold floor", "--only"))
    for label, data in (("warm", warm), ("cold", cold)):
        if data and LIVEKIT in data:
            ours, peer = data[RIME_TRIO], data[LIVEKIT]
            ratio = ours["median"] / peer["median"]
            rows.append(
                _target(
                    f"{label} TTFA median ahead of livekit-plugins-rime",
                    _ms(ours["median"]),
                    f"livekit {_ms(peer['median'])}",
                    ratio,
                    1.0,
                    ratio < 1.0,
                )
            )
        else:
            rows.append(_not_run(f"{label} TTFA ahead of livekit-plugins-rime", why(data)))
    if warm and LIVEKIT in warm:
        ours, peer = warm[RIME_TRIO], warm[LIVEKIT]
        ratio = ours["cpu"] / peer["cpu"]
        rows.append(
            _target(
                "client CPU per utterance ≤ livekit-plugins-rime's (warm, alone)",
                _ms(ours["cpu"]),
                f"livekit {_ms(peer['cpu'])}",
                ratio,
                1.0,
                ratio <= 1.0,
            )
        )
    else:
        rows.append(_not_run("client CPU per utterance ≤ livekit's (alone)", why(warm)))
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
                f"client CPU per stream ≤ livekit-plugins-rime's at {peer_level['streams']} "
                "concurrent",
                _ms(ours_level["cpu_per_stream"]),
                f"livekit {_ms(peer_level['cpu_per_stream'])}",
                ratio,
                1.0,
                ratio <= 1.0,
            )
        )
    else:
        rows.append(_not_run("client CPU per stream ≤ livekit's at 100 concurrent", why(levels)))
    construction = fast.get("construction")
    if construction:
        median = construction[RIME_TRIO]["median"]
        rows.append(
            _target(
                "`RimeClient(...)` + `__aenter__` under 2 ms CPU (WebSocket mode)",
                _ms(median),
                "limit 2 ms",
                median / 0.002,
                1.0,
                median < 0.002,
            )
        )
    else:
        rows.append(_not_run("construction < 2 ms CPU", "--only"))
    throughput = fast.get("throughput")
    if throughput and TRIO_WEBSOCKET in throughput["rates"]:
        rates = throughput["rates"]
        ratio = rates[TRIO_WEBSOCKET] / rates[RIME_TRIO]
        rows.append(
            _target(
                "throughput within 1.2x of the bare loop (trio-websocket, 64 KiB reads)",
                f"{rates[RIME_TRIO]:.0f} audio s/CPU s",
                f"bare loop {rates[TRIO_WEBSOCKET]:.0f}",
                ratio,
                1.2,
                ratio <= 1.2,
            )
        )
    else:
        rows.append(_not_run("throughput within 1.2x of the bare loop", "--only"))
    return rows


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
        "| target (issue 16) | rime-trio | beside | ratio | status |",
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
        "rime-trio's), so lower is better; against the fast server, in this run."
    )
    return "\n".join(lines)


def format_latency(fast: dict[str, Any]) -> str:
    warm: dict[str, Any] = fast.get("warm") or {}
    cold: dict[str, Any] = fast.get("cold") or {}
    lines = [
        "| client | warm median | warm p99 | ÷ trio-websocket floor (median / p99) "
        "| ÷ wsproto floor (median / p99) | CPU per warm utterance | cold median | cold p99 "
        "| ÷ trio-websocket cold floor | ÷ wsproto cold floor | CPU per cold round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in (RIME_TRIO, LIVEKIT, TRIO_WEBSOCKET, WSPROTO, WSPROTO_FRESH):
        w, c = warm.get(name), cold.get(name)
        if not w and not c:
            continue
        tw, wp = warm.get(TRIO_WEBSOCKET), warm.get(WSPROTO)
        ctw, cwp = cold.get(TRIO_WEBSOCKET), cold.get(WSPROTO)
        label = f"**{name}**" if name == RIME_TRIO else name
        if name in (TRIO_WEBSOCKET, WSPROTO):
            label += " (floor)"
        elif name == WSPROTO_FRESH:
            label += " (diagnostic)"
        lines.append(
            f"| {label} | {_cell(w, 'median')} | {_cell(w, 'p99')} | "
            f"{_x(_ratio(w, tw, 'median'))} / {_x(_ratio(w, tw, 'p99'))} | "
            f"{_x(_ratio(w, wp, 'median'))} / {_x(_ratio(w, wp, 'p99'))} | "
            f"{_cell(w, 'cpu')} | {_cell(c, 'median')} | {_cell(c, 'p99')} | "
            f"{_x(_ratio(c, ctw, 'median'))} | {_x(_ratio(c, cwp, 'median'))} | "
            f"{_cell(c, 'cpu')} |"
        )
    return "\n".join(lines)


def format_split(warm: dict[str, Any]) -> str:
    split = warm.get(RIME_TRIO, {}).get("split")
    if not split:
        return ""
    return (
        f"rime-trio's warm TTFA, split (medians): entering `client.stream()` "
        f"{_ms(split['stream_open'])}, `push_text` {_ms(split['push_text'])}, then to the first "
        f"`AudioChunk` {_ms(split['to_first_audio'])}."
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


def format_throughput(throughput: dict[str, Any]) -> str:
    rates = throughput["rates"]
    lines = [
        "| client | audio s per client CPU s | bare trio-websocket ÷ client "
        "| bare wsproto ÷ client | audio s per stream |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in (RIME_TRIO, LIVEKIT, TRIO_WEBSOCKET, WSPROTO):
        if name not in rates:
            continue
        rate = rates[name]
        tw, wp = rates.get(TRIO_WEBSOCKET), rates.get(WSPROTO)
        label = f"**{name}**" if name == RIME_TRIO else name
        if name in (TRIO_WEBSOCKET, WSPROTO):
            label += " (64 KiB reads)"
        lines.append(
            f"| {label} | {rate:.0f} | {_x(tw / rate if tw else None)} | "
            f"{_x(wp / rate if wp else None)} | {throughput['audio_seconds'][name]:.1f} |"
        )
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


def format_emulator(entries: list[dict[str, Any]]) -> str:
    lines = [
        "| server | scenario | client | n | median | p90 | p99 | x floor median "
        "| x floor p99 | CPU per round |",
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
            floor = data.get(TRIO_WEBSOCKET)
            for name in (RIME_TRIO, LIVEKIT, TRIO_WEBSOCKET, WSPROTO, WSPROTO_FRESH):
                if name in data:
                    label = f"**{name}**" if name == RIME_TRIO else name
                    add(server, f"{scenario} TTFA", label, data[name], floor)
        token = entry["token"]
        add(
            server,
            "token-by-token TTFA (from the final '.')",
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
        add(server, "HTTP time to first byte", "**rime-trio**", http["ttfb"], http["raw_ttfb"])
        add(
            server,
            "HTTP time to first byte",
            "raw httpx (floor)",
            http["raw_ttfb"],
            http["raw_ttfb"],
        )
        add(server, "HTTP full body", "**rime-trio**", http["full"], http["raw_full"])
        add(server, "HTTP full body", "raw httpx (floor)", http["raw_full"], http["raw_full"])
    return "\n".join(lines)


def format_tables(result: dict[str, Any]) -> str:
    fast = result["fast"]
    parts = ["### Targets\n\n" + format_targets(result["targets"])]
    if fast.get("warm") or fast.get("cold"):
        latency = format_latency(fast)
        if fast.get("warm"):
            latency += "\n\n" + format_split(fast["warm"])
        parts.append("### Latency and client CPU, fast server\n\n" + latency)
    if fast.get("construction"):
        parts.append("### Client construction, CPU\n\n" + format_construction(fast["construction"]))
    if fast.get("throughput"):
        t = fast["throughput"]
        parts.append(
            f"### Throughput, fast server ({t['sentences']} sentences in one stream, median of "
            f"{t['rounds']})\n\n" + format_throughput(t)
        )
    if fast.get("concurrency"):
        parts.append(
            "### Concurrency, fast server (streams started together on one client; TTFA from "
            "the start of the batch)\n\n" + format_concurrency(fast["concurrency"])
        )
    if result["emulator"]:
        parts.append(
            "### Realistic server: the bundled emulator\n\n" + format_emulator(result["emulator"])
        )
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
        "--profile-run", choices=("warm", "cold", "throughput"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    cfg = config(args.quick)
    if args.iterations:
        cfg.iterations = args.iterations
        cfg.cold_iterations = max(1, args.iterations // 4)
    if args.profile or args.profile_run:
        from . import profiling

        if args.profile_run:
            return profiling.run_plain(args.profile_run, cfg)
        return profiling.profile(args.profile, cfg, py_spy=not args.no_py_spy)
    started = time.perf_counter()
    result = trio.run(run, cfg, set(args.only) if args.only else None, args.peers)
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
    block = (
        f"{begin}\n"
        f"Run: `{'quick' if result['quick'] else 'full'}` ({cfg['iterations']} warm rounds, "
        f"{cfg['cold_iterations']} cold rounds per client), {result['wall_seconds']} s, "
        f"rime-trio at {result['revision']}, {peer}. Machine: {m['cpu']}, {m['cores']} cores, "
        f"Python {m['python']}, {m['platform']}.\n\n{result['table']}\n{end}"
    )
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    readme.write_text(head + block + tail, encoding="utf-8")
    print(f"tables written to {readme}")


if __name__ == "__main__":
    sys.exit(main())
