"""The ``rime-trio`` command: ``speak`` text to a file, or run the ``emulator``."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, get_args

import anyio

from ._audio import write_wav
from ._client import RimeClient
from ._errors import RimeError
from ._events import SpeechEvent, WordTimestamp
from ._options import AudioFormat, Model, RimeOptions, Segment
from ._serving import BoundConfig, hypercorn_serve, listen

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rime-trio", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    speak = commands.add_parser("speak", help="synthesize TEXT into a file")
    speak.add_argument("text", metavar="TEXT", help="text to speak; - reads standard input")
    speak.add_argument("-o", "--output", required=True, type=Path, help="output file (.wav or raw)")
    speak.add_argument("--base-url", help="ws(s):// streams over /ws3, http(s):// uses HTTP")
    speak.add_argument("--api-key", help="API key (default: $RIME_API_KEY)")
    speak.add_argument("--speaker", default="astra")
    speak.add_argument("--model", default="coda", choices=get_args(Model))
    speak.add_argument(
        "--format", default="pcm", choices=get_args(AudioFormat), dest="audio_format"
    )
    speak.add_argument("--sample-rate", type=int, default=24_000)
    speak.add_argument("--segment", default="bySentence", choices=get_args(Segment))
    speak.add_argument("--stream", action="store_true", help="stream over the WebSocket")
    speak.add_argument("--timestamps", type=Path, metavar="FILE.json", help="write word timestamps")
    speak.add_argument(
        "--emulator", action="store_true", help="start the bundled emulator and use it"
    )

    serve = commands.add_parser(
        "serve",
        help="serve the speak page (needs rime-trio[web])",
        description="Serve the speak page. WebSockets are accepted only from the page's own "
        "origin (and --allow-origin); beyond loopback, a token is required too.",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1); one beyond loopback needs --token",
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--base-url", help="Rime URL (default: Rime's streaming endpoint)")
    serve.add_argument("--api-key", help="API key (default: $RIME_API_KEY)")
    serve.add_argument("--speaker", default="astra")
    serve.add_argument("--model", default="coda", choices=get_args(Model))
    serve.add_argument("--sample-rate", type=int, default=24_000)
    serve.add_argument(
        "--emulator", action="store_true", help="start the bundled emulator and use it"
    )
    serve.add_argument(
        "--emulator-real-time-factor",
        type=float,
        default=0.0,
        metavar="RTF",
        help="pace the emulator's audio (1.0: real time, as a real server streams)",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept WebSockets from pages at ORIGIN (scheme://host[:port]); repeatable",
    )
    serve.add_argument(
        "--token",
        nargs="?",
        const="",
        metavar="TOKEN",
        help="require TOKEN on every WebSocket (alone: generate one and print it once in the "
        "link); required when --host is not a loopback address",
    )

    emulator = commands.add_parser("emulator", help="run the Rime-compatible emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8080)
    emulator.add_argument(
        "--api-key", default=None, help="accepted key (default: $RIME_API_KEY or emulator-key)"
    )
    emulator.add_argument("--time-to-first-chunk", type=float, default=0.0, metavar="SECONDS")
    emulator.add_argument("--real-time-factor", type=float, default=0.0)
    emulator.add_argument("--chunk-bytes", type=int, default=4800)
    for command in (speak, serve, emulator):
        command.add_argument(
            "--backend",
            choices=("trio", "asyncio"),
            default="trio",
            help="event loop to run on (default trio, the library's home: structured "
            "concurrency all the way down; asyncio runs the same code)",
        )
    return parser


def _read_text(arg: str) -> str:
    return sys.stdin.read() if arg == "-" else arg


async def _speak(args: argparse.Namespace) -> int:
    from .testing import EmulatorConfig, open_emulator

    text = _read_text(args.text)
    async with AsyncExitStack() as stack:
        base_url = args.base_url
        api_key = args.api_key or os.environ.get("RIME_API_KEY")
        if args.emulator:
            config = EmulatorConfig(api_key=api_key or "emulator-key")
            emulator = await stack.enter_async_context(open_emulator(config))
            # One port serves both; --stream (use_websocket) turns this into ws://.../ws3.
            base_url = base_url or emulator.http_url
            api_key = config.api_key
        wav_out = args.output.suffix.lower() == ".wav"
        audio_format = args.audio_format
        if wav_out and audio_format == "wav":
            audio_format = "pcm"  # we write the RIFF header ourselves, for HTTP and streaming alike
        if wav_out and audio_format == "mp3":
            raise RimeError("cannot write mp3 audio into a .wav file; use an .mp3 output name")
        options = RimeOptions(
            api_key=api_key,
            base_url=base_url,
            use_websocket=True if args.stream else None,
            speaker=args.speaker,
            model=args.model,
            audio_format=audio_format,
            sample_rate=args.sample_rate,
            segment=args.segment,
        )
        # One utterance, then exit: no spare socket for a next stream that never comes.
        client = await stack.enter_async_context(RimeClient(options, max_pool_size=0))
        mode = "streaming" if options.streaming else "http"
        print(
            f"rime-trio: {mode} {options.endpoint} ({options.model}/{options.speaker})",
            file=sys.stderr,
        )
        first_audio: float | None = None
        audio = bytearray()
        words: list[WordTimestamp] = []
        duration = 0.0
        events: AsyncIterator[SpeechEvent]
        if options.streaming:
            stream = await stack.enter_async_context(client.stream())
            started = time.perf_counter()
            await stream.push_text(text)
            await stream.end_input()
            events = stream
        else:
            started = time.perf_counter()
            events = await stack.enter_async_context(
                client.synthesize_chunks(text, options=options)
            )
        async for event in events:
            if isinstance(event, WordTimestamp):
                words.append(event)
                continue
            if first_audio is None:
                first_audio = time.perf_counter() - started
            audio += event.data
            duration += event.duration
        if args.timestamps is not None:
            if not options.streaming:
                print(
                    "rime-trio: word timestamps need streaming mode; writing none", file=sys.stderr
                )
            args.timestamps.write_text(
                json.dumps(
                    [{"word": w.word, "start": w.start, "end": w.end} for w in words], indent=2
                )
            )
        with args.output.open("wb") as out:
            if wav_out:
                write_wav(
                    out, bytes(audio), sample_rate=options.sample_rate, audio_format=audio_format
                )
            else:
                out.write(audio)
        ttfa = f"{first_audio * 1000:.1f} ms" if first_audio is not None else "n/a"
        print(
            f"rime-trio: time to first audio {ttfa}, {duration:.2f} s of audio -> {args.output}",
            file=sys.stderr,
        )
    return 0


async def _serve_emulator(args: argparse.Namespace) -> int:
    from .testing import EmulatorConfig, open_emulator

    config = EmulatorConfig(
        api_key=args.api_key or os.environ.get("RIME_API_KEY") or "emulator-key",
        time_to_first_chunk=args.time_to_first_chunk,
        real_time_factor=args.real_time_factor,
        chunk_bytes=args.chunk_bytes,
    )
    async with open_emulator(config, host=args.host, port=args.port) as emulator:
        print(f"Rime emulator streaming on {emulator.ws_url}/ws3", flush=True)
        print(f"Rime emulator HTTP on      {emulator.http_url}/v1/rime-tts", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        await anyio.sleep_forever()
    return 0  # pragma: no cover - sleep_forever only ends by cancellation


def _serve_access(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> tuple[str | None, bool]:
    """Check ``serve``'s access flags before anything starts; return the token (``None``:
    no token) and whether it was generated.

    :raises SystemExit: (status 2, through ``parser.error``) for an invalid
        ``--allow-origin`` or ``--token``, or a non-loopback ``--host`` without a token
        outside emulator mode.
    """
    try:
        from .web import AccessPolicy, generate_token, is_loopback_host, normalize_origin
    except ImportError:
        return None, False  # nothing can be served; _serve_web says which extra is missing
    for origin in args.allow_origin:
        try:
            normalize_origin(origin)
        except ValueError as exc:
            parser.error(f"--allow-origin: {exc}")
    if args.token is None:
        if not is_loopback_host(args.host) and not args.emulator:
            # Beyond loopback, Origin checks do not stop other machines (they send any
            # Origin they like); only a secret does.
            parser.error(
                f"refusing to serve on {args.host}: it is not a loopback address, so anyone "
                "who can reach it could speak on your Rime API key. Add --token (alone: a "
                "token is generated and printed once in the page link) or bind to 127.0.0.1."
            )
        return None, False
    if args.token == "":
        return generate_token(), True
    try:
        AccessPolicy(token=args.token)
    except ValueError as exc:
        parser.error(f"--token: {exc}")
    return args.token, False


async def _serve_web(args: argparse.Namespace) -> int:
    try:
        from .web import WebStats, create_app, is_loopback_host
    except ImportError as exc:
        raise RimeError(f"the web page needs: pip install 'rime-trio[web]' ({exc})") from None
    from .testing import EmulatorConfig, open_emulator

    token, generated = args.access
    async with AsyncExitStack() as stack:
        base_url = args.base_url
        api_key = args.api_key or os.environ.get("RIME_API_KEY")
        stats = WebStats()
        if args.emulator:
            emulator = await stack.enter_async_context(
                open_emulator(EmulatorConfig(real_time_factor=args.emulator_real_time_factor))
            )
            base_url, api_key = emulator.ws_url, emulator.config.api_key
            stats.extra["emulatorOpenSockets"] = lambda: emulator.stats.open_sockets
        options = RimeOptions(
            api_key=api_key,
            base_url=base_url,
            use_websocket=True,
            speaker=args.speaker,
            model=args.model,
            sample_rate=args.sample_rate,
        )
        app = create_app(
            lambda: RimeClient(options),
            stats=stats,
            allowed_origins=args.allow_origin,
            token=token,
        )
        try:
            listening = await listen(args.host, args.port, backlog=128)
        except OSError as exc:
            busy = exc.errno == errno.EADDRINUSE
            hint = " (another program uses it: pick another with --port)" if busy else ""
            raise RimeError(
                f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}{hint}"
            ) from None
        stack.callback(listening.close)
        # hypercorn serves the socket bound here: the address is known at once on either
        # backend (port 0 picks a free one), and a busy port fails before anything starts.
        config = BoundConfig(listening)
        config.accesslog = None
        config.graceful_timeout = 2.0
        host, port = listening.getsockname()[:2]
        address = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(hypercorn_serve(), app, config)
            mode = "the bundled emulator" if args.emulator else options.endpoint
            # The fragment never reaches the server (nor its logs); the page reads it.
            link = f"{address}/#token={token}" if generated else f"{address}/"
            print(f"Speak page: {link}  (speech from {mode})", flush=True)
            if token is not None and not generated:
                print("Open it with #token=<your token> at the end.", flush=True)
            elif token is None and not is_loopback_host(args.host):
                print("No token: emulator mode speaks on no real key.", flush=True)
            if args.host.strip("[]") in ("0.0.0.0", "::"):
                # Browsers will not open 0.0.0.0, and the Host check wants a real address.
                print(
                    f"Every interface: open it at this machine's address instead of {args.host} "
                    "(a name needs --allow-origin http://NAME:PORT).",
                    flush=True,
                )
            print("Press Ctrl-C to stop.", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rime-trio`` command; returns the exit status.

    Errors print one line and return 1; usage errors return 2 (argparse's convention).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "serve":
            args.access = _serve_access(args, parser)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    runners: dict[str, Any] = {
        "speak": _speak,
        "emulator": _serve_emulator,
        "serve": _serve_web,
    }
    runner = runners[args.command]
    try:
        return int(anyio.run(runner, args, backend=args.backend))
    except KeyboardInterrupt:
        print("rime-trio: stopped", file=sys.stderr)
        return 0 if args.command in ("emulator", "serve") else 130
    except RimeError as exc:
        print(f"rime-trio: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"rime-trio: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
