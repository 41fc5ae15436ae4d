"""The rime-trio command: speak text into an audio file, serve the speak page in a browser,
list the voices, or run the bundled Rime-compatible emulator."""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import errno
import itertools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, get_args

import anyio
from tqdm import tqdm

from ._audio import write_wav
from ._client import RimeClient, list_voices, streaming_options
from ._errors import InvalidTextError, RimeError
from ._events import WordTimestamp
from ._metrics import StreamMetrics, SynthesisMetrics
from ._options import AudioFormat, Model, RimeOptions, Segment
from ._segment import SentenceSplitter, speakable
from ._serving import BoundConfig, hypercorn_serve, listen
from ._text import check_text

__all__ = ["main"]

EXIT_ERROR = 1
#: where `serve` also takes its token from (not on the command line, where `ps` shows it)
TOKEN_VARIABLE = "RIME_TRIO_TOKEN"
EXIT_USAGE = 2
# A lone surrogate, as check_text finds it.
_SURROGATE = re.compile("[\ud800-\udfff]")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, unless it has none worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if (
            "%(default)" in help_text
            or "default" in help_text
            or default in (None, False, argparse.SUPPRESS)
            or action.option_strings == []
        ):
            return help_text
        return f"{help_text} (default: %(default)s)"


_EPILOG = """examples:
  rime-trio speak --emulator "Hello there." -o hello.wav    offline, no key
  RIME_API_KEY=... rime-trio speak --stream "Hello there." -o hello.wav
  rime-trio serve --emulator                                the speak page, offline
  rime-trio voices --model coda                             Rime's speakers (no key)

An API key comes from https://app.rime.ai/tokens (pass --api-key or set RIME_API_KEY)."""


def _version() -> str:
    try:
        return metadata.version("rime-trio")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rime-trio",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rime-trio {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    speak = commands.add_parser(
        "speak",
        help="synthesize TEXT into an audio file",
        description="Synthesize TEXT into an audio file (a .wav name gets a WAV header). Over "
        "HTTP by default; --stream uses the WebSocket (word timestamps, first audio sooner).",
        formatter_class=_HelpFormatter,
    )
    speak.add_argument("text", metavar="TEXT", help="text to speak; - reads standard input")
    speak.add_argument(
        "-o", "--output", required=True, type=Path, help="output file (.wav, or raw audio bytes)"
    )
    speak.add_argument(
        "--base-url",
        help="server URL: ws(s):// streams over /ws3, http(s):// uses HTTP "
        "(default: Rime's own endpoints)",
    )
    speak.add_argument("--api-key", help="API key (default: $RIME_API_KEY)")
    speak.add_argument(
        "--speaker", default="astra", help="voice to speak with (list them: rime-trio voices)"
    )
    speak.add_argument("--model", default="coda", choices=get_args(Model), help="Rime model")
    speak.add_argument(
        "--format",
        default="pcm",
        choices=get_args(AudioFormat),
        dest="audio_format",
        help="audio format (a .wav output holds pcm)",
    )
    speak.add_argument(
        "--sample-rate", type=int, default=24_000, metavar="HZ", help="samples per second"
    )
    speak.add_argument(
        "--segment",
        default="bySentence",
        choices=get_args(Segment),
        help="when the server synthesizes buffered text (streaming)",
    )
    speak.add_argument("--stream", action="store_true", help="stream over the WebSocket")
    speak.add_argument(
        "--protocol",
        choices=("ws3", "v1"),
        help="streaming protocol (default: from --base-url's path, /ws is v1; else ws3)",
    )
    speak.add_argument(
        "--timestamps",
        type=Path,
        metavar="FILE.json",
        help="write word timestamps to FILE.json (implies --stream: only streaming has them)",
    )
    speak.add_argument(
        "--emulator", action="store_true", help="start the bundled emulator and use it"
    )
    speak.add_argument(
        "--progress",
        action="store_true",
        help="show progress on stderr even when it is not a terminal (it is shown on a "
        "terminal anyway)",
    )
    speak.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing but errors (no progress)"
    )
    speak.add_argument(
        "--metrics",
        action="store_true",
        help="print the client's metrics (time to first audio, retries, ...) as JSON on stderr",
    )

    serve = commands.add_parser(
        "serve",
        help="serve the speak page in your browser (needs rime-trio[web])",
        description="Serve the speak page. WebSockets are accepted only from the page's own "
        "origin (and --allow-origin); beyond loopback, a token is required too.",
        formatter_class=_HelpFormatter,
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1); one beyond loopback needs --token",
    )
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--base-url", help="Rime URL (default: Rime's streaming endpoint)")
    serve.add_argument(
        "--protocol",
        choices=("ws3", "v1"),
        help="streaming protocol (default: from --base-url's path, /ws is v1; else ws3); "
        "v1 carries every browser's utterances over shared sockets",
    )
    serve.add_argument("--api-key", help="API key (default: $RIME_API_KEY)")
    serve.add_argument("--speaker", default="astra", help="default voice of the page")
    serve.add_argument("--model", default="coda", choices=get_args(Model), help="Rime model")
    serve.add_argument(
        "--sample-rate", type=int, default=24_000, metavar="HZ", help="samples per second"
    )
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
        f"link); required when --host is not a loopback address. ${TOKEN_VARIABLE} gives "
        "it too, out of the process list",
    )

    emulator = commands.add_parser(
        "emulator",
        help="run the Rime-compatible emulator (offline, no key)",
        description="Run the bundled Rime-compatible emulator: /ws3 and WebSocket v1 (/ws) "
        "streaming and HTTP synthesis on one port, deterministic audio, no key needed.",
        formatter_class=_HelpFormatter,
    )
    emulator.add_argument("--host", default="127.0.0.1", help="address to bind")
    emulator.add_argument("--port", type=int, default=8080, help="port to listen on")
    emulator.add_argument(
        "--api-key", default=None, help="accepted key (default: $RIME_API_KEY or emulator-key)"
    )
    emulator.add_argument(
        "--time-to-first-chunk",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay before a synthesis run's first chunk",
    )
    emulator.add_argument(
        "--real-time-factor",
        type=float,
        default=0.0,
        metavar="RTF",
        help="pace the audio (1.0: real time; 0: as fast as possible)",
    )
    emulator.add_argument(
        "--chunk-bytes", type=int, default=4800, metavar="N", help="audio bytes per chunk"
    )
    emulator.add_argument(
        "--rime-voices",
        action="store_true",
        help="know Rime's published voice catalogue (its snapshot of 2026-08-04) instead of "
        "the emulator's small list",
    )
    voices = commands.add_parser(
        "voices",
        help="list the speakers (Rime's public list; no key needed)",
        description="List the speakers a server offers: Rime's public voice list, or the "
        "bundled emulator's own with --emulator. No key is needed.",
        formatter_class=_HelpFormatter,
    )
    voices.add_argument("--model", choices=get_args(Model), help="only this model's speakers")
    voices.add_argument(
        "--base-url", help="server to ask (default: Rime); its voice list's path is fixed"
    )
    voices.add_argument(
        "--emulator", action="store_true", help="start the bundled emulator and ask it"
    )
    voices.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for command in (speak, serve, emulator, voices):
        command.add_argument(
            "--backend",
            choices=("trio", "asyncio"),
            default="trio",
            help="event loop to run on (default trio, the library's home: structured "
            "concurrency all the way down; asyncio runs the same code)",
        )
    return parser


def _read_text(arg: str) -> str:
    """The text to speak: *arg*, or standard input for ``-``, checked before anything starts.

    Bytes the locale's encoding cannot decode (Latin-1 in a UTF-8 terminal) arrive as lone
    surrogates, as Python decodes argv (and here stdin) with ``surrogateescape``, whatever
    the locale's error handler for stdin says.

    :raises InvalidTextError: naming where the text is not valid, in one line.
    """
    if arg != "-":
        return _checked(arg, "TEXT")
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text-only stdin (replaced in-process): it decoded itself
        return _checked(sys.stdin.read(), "standard input")
    encoding = sys.stdin.encoding or "utf-8"
    text = raw.read().decode(encoding, errors="surrogateescape")
    return _checked(text, "standard input", encoding)


def _checked(text: str, source: str, encoding: str | None = None, *, secret: bool = False) -> str:
    """*text* (from *source*, which was decoded from *encoding*; argv's by default), if it
    can be sent.

    :raises InvalidTextError: for an undecodable byte, named as a byte of *source* with the
        way out (a lone surrogate of another kind keeps the library's words); a *secret*'s
        byte is not named, only its position.
    """
    try:
        return check_text(text)
    except InvalidTextError as exc:
        encoding = encoding or sys.getfilesystemencoding()  # how Python decoded argv
        found = _SURROGATE.search(text)
        # surrogateescape maps an undecodable byte 0xXY to U+DCXY; argv and stdin give
        # nothing else.
        if found is None or not "\udc80" <= found.group() <= "\udcff":
            raise InvalidTextError(f"{source}: {exc}") from None
        byte = "a byte" if secret else f"byte 0x{ord(found.group()) - 0xDC00:02X}"
        raise InvalidTextError(
            f"{source} is not valid {encoding}: {byte} at character {found.start()} cannot "
            f"be decoded; convert it to {encoding} first (for example with iconv -f latin1 "
            f"-t {encoding})"
        ) from None


class _Progress:
    """One utterance's progress on stderr: audio seconds received, sentences done of the
    total, and the real-time factor (audio seconds per second of waiting: above 1x, faster
    than playback). Sentences are counted from the word timestamps (streaming); without them
    (HTTP) the bar shows the audio and the rate, and the sentences when the audio is done."""

    def __init__(self, text: str, *, enabled: bool) -> None:
        splitter = SentenceSplitter()
        # What is left at the end may hold no word (an emoji after the last sentence): it
        # makes no sentence of its own.
        sentences = [*splitter.feed(text), *filter(speakable, [splitter.flush()])]
        # The running word count at the end of each sentence.
        self._ends = list(itertools.accumulate(len(s.split()) for s in sentences))
        self._started = time.perf_counter()
        self._audio = 0.0
        self._words = 0
        self._total = len(sentences)
        self._bar: tqdm[NoReturn] | None = None
        if enabled and sentences:
            self._bar = bar = tqdm(
                total=len(sentences),
                unit=" sentences",
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} sentences{postfix}",
            )
            bar.set_postfix_str("waiting for audio", refresh=True)

    def audio(self, seconds: float) -> None:
        self._audio += seconds
        self._show()

    def words(self, count: int) -> None:
        self._words += count
        self._show()

    def _show(self) -> None:
        if self._bar is None:
            return
        done = bisect.bisect_right(self._ends, self._words)
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix_str(
            f"{self._audio:.1f} s of audio, {self._audio / elapsed:.1f}x real time",
            refresh=False,
        )

    def close(self, *, completed: bool) -> None:
        if self._bar is None:
            return
        if completed:
            self._bar.update(self._total - self._bar.n)
            self._show()
            self._bar.refresh()
        self._bar.close()


class _OutputError(RimeError):
    """The output file cannot be written (the user's own file system, not the network)."""


def _check_output(path: Path) -> None:
    """:raises _OutputError: if *path* cannot be a file we write."""
    if path.is_dir():
        raise _OutputError(f"cannot write {path}: it is a directory; give a file name")
    if not path.parent.is_dir():
        raise _OutputError(f"cannot write {path}: there is no directory {path.parent}")


def _require_key(api_key: str | None) -> str:
    """:raises RimeError: with the CLI's own wording when no key was given."""
    if not api_key:
        raise RimeError(
            "no API key: pass --api-key or set RIME_API_KEY (get one at "
            "https://app.rime.ai/tokens), or try --emulator to run offline"
        )
    return api_key


async def _speak(args: argparse.Namespace) -> int:
    reported: list[StreamMetrics | SynthesisMetrics] = []
    try:
        return await _speak_into(args, reported.append)
    finally:
        if args.metrics and reported:
            # The client's own measurements (success or failure), one JSON object per line.
            for metrics in reported:
                print(json.dumps(dataclasses.asdict(metrics)), file=sys.stderr)


async def _speak_into(
    args: argparse.Namespace, on_metrics: Callable[[StreamMetrics | SynthesisMetrics], None]
) -> int:
    from .testing import EmulatorConfig, open_emulator

    # Before any request (and before the emulator starts): text that cannot be sent, or a
    # typo in a path, must not cost a synthesis.
    text = _read_text(args.text)
    for flag in ("--speaker", "--base-url"):  # they are sent too (in a URL, a JSON body)
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            _checked(value, flag)
    _check_output(args.output)
    if args.timestamps is not None:
        _check_output(args.timestamps)

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr)

    async with AsyncExitStack() as stack:
        base_url = args.base_url
        api_key = args.api_key or os.environ.get("RIME_API_KEY")
        if api_key:  # it goes into a header
            _checked(api_key, "the API key", secret=True)
        if args.emulator:
            config = EmulatorConfig(api_key=api_key or "emulator-key")
            emulator = await stack.enter_async_context(open_emulator(config))
            # One port serves both; streaming takes its WebSocket (streaming_options).
            base_url = base_url or emulator.http_url
            api_key = config.api_key
        api_key = _require_key(api_key)
        wav_out = args.output.suffix.lower() == ".wav"
        audio_format = args.audio_format
        if wav_out and audio_format == "wav":
            audio_format = "pcm"  # we write the RIFF header ourselves, for HTTP and streaming alike
        if wav_out and audio_format not in ("pcm", "mulaw"):
            raise RimeError(
                f"cannot write {audio_format} audio into a .wav file; use an output name "
                "of its own kind (.mp3, .ogg, .webm)"
            )
        # Word timestamps exist only on the stream: asking for them (or for a streaming
        # protocol) asks for streaming.
        streaming = args.stream or args.timestamps is not None or args.protocol is not None
        options = RimeOptions(
            api_key=api_key,
            base_url=base_url,
            protocol=args.protocol,
            speaker=args.speaker,
            model=args.model,
            audio_format=audio_format,
            sample_rate=args.sample_rate,
            segment=args.segment,
        )
        if streaming:
            options = streaming_options(options)  # the same server's WebSocket
        # One utterance, then exit: no spare socket for a next stream that never comes.
        client = await stack.enter_async_context(
            RimeClient(options, max_pool_size=0, on_metrics=on_metrics)
        )
        mode = f"streaming ({options.stream_protocol})" if options.streaming else "http"
        say(f"rime-trio: {mode} {options.endpoint} ({options.model}/{options.speaker})")
        progress = _Progress(
            text, enabled=not args.quiet and (args.progress or sys.stderr.isatty())
        )
        first_audio: float | None = None
        audio = bytearray()
        words: list[WordTimestamp] = []
        duration = 0.0
        completed = False
        try:
            started = time.perf_counter()
            # The one one-shot path (the client's): the transport follows the options.
            chunks = await stack.enter_async_context(
                client.synthesize_chunks(text, options=options)
            )
            async for chunk in chunks:
                if first_audio is None:
                    first_audio = time.perf_counter() - started
                audio += chunk.data
                duration += chunk.duration
                progress.audio(chunk.duration)
                progress.words(len(chunks.words) - len(words))
                words[:] = chunks.words
            progress.words(len(chunks.words) - len(words))  # v1's come after the audio
            words[:] = chunks.words
            completed = True
        finally:
            progress.close(completed=completed)
        try:
            with args.output.open("wb") as out:
                if wav_out:
                    write_wav(
                        out,
                        bytes(audio),
                        sample_rate=options.sample_rate,
                        audio_format=audio_format,
                    )
                else:
                    out.write(audio)
        except OSError as exc:
            raise _OutputError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        if args.timestamps is not None:  # after the audio: that is what was paid for
            words_json = [{"word": w.word, "start": w.start, "end": w.end} for w in words]
            try:
                args.timestamps.write_text(json.dumps(words_json, indent=2))
            except OSError as exc:
                message = f"cannot write {args.timestamps}: {exc.strerror or exc}"
                raise _OutputError(message) from None
        ttfa = f"{first_audio * 1000:.1f} ms" if first_audio is not None else "n/a"
        say(f"rime-trio: time to first audio {ttfa}, {duration:.2f} s of audio -> {args.output}")
    return 0


async def _voices(args: argparse.Namespace) -> int:
    from .testing import open_emulator

    async with AsyncExitStack() as stack:
        base_url = args.base_url
        if args.emulator:
            base_url = (await stack.enter_async_context(open_emulator())).http_url
        voices = await list_voices(args.model, base_url=base_url)
    if args.json:
        print(json.dumps([dataclasses.asdict(v) for v in voices], indent=2))
    if not voices:  # the same status either way: a script can test it
        print(f"no voices{f' for model {args.model}' if args.model else ''}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        return 0
    groups: dict[tuple[str, str], list[str]] = {}
    for voice in voices:
        groups.setdefault((voice.model, voice.language or "-"), []).append(voice.speaker)
    for (model, language), speakers in sorted(groups.items()):
        print(f"{model:<8} {language:<4} {', '.join(speakers)}")
    return 0


async def _serve_emulator(args: argparse.Namespace) -> int:
    from .testing import EmulatorConfig, open_emulator

    config = EmulatorConfig(
        api_key=args.api_key or os.environ.get("RIME_API_KEY") or "emulator-key",
        time_to_first_chunk=args.time_to_first_chunk,
        real_time_factor=args.real_time_factor,
        chunk_bytes=args.chunk_bytes,
    )
    if args.rime_voices:
        from .testing._catalog import rime_voices

        config.voices = rime_voices()
    try:
        async with open_emulator(config, host=args.host, port=args.port) as emulator:
            print(f"Rime emulator streaming on {emulator.ws_url}/ws3", flush=True)
            print(f"Rime emulator HTTP on      {emulator.http_url}/v1/rime-tts", flush=True)
            print(f"Rime emulator v1 on        {emulator.v1_url}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            await anyio.sleep_forever()
    except OSError as exc:  # binding: nothing else in the block touches the network
        raise _bind_error(args.host, args.port, exc) from None
    return 0  # pragma: no cover - sleep_forever only ends by cancellation


def _bind_error(host: str, port: int, exc: OSError) -> RimeError:
    """A failed bind, naming the address and, for a busy port, the way out."""
    busy = exc.errno == errno.EADDRINUSE
    hint = ": another program uses that port; pick another with --port" if busy else ""
    reason = "port in use" if busy else (exc.strerror or str(exc))
    return RimeError(f"cannot listen on {host}:{port} ({reason}){hint}")


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
    if args.token is None and os.environ.get(TOKEN_VARIABLE):
        # A token on the command line is visible to every user of the machine (ps); from
        # the environment it is not.
        args.token = os.environ[TOKEN_VARIABLE]
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
        parser.error(f"--token (or ${TOKEN_VARIABLE}): {exc}")
    return args.token, False


async def _serve_web(args: argparse.Namespace) -> int:
    try:
        from .web import WebStats, create_app, is_loopback_host
    except ImportError as exc:
        raise RimeError(f"the web page needs: pip install 'rime-trio[web]' ({exc})") from None
    from .testing import EmulatorConfig, open_emulator

    token, generated = args.access
    # One line per browser session (time to first audio, audio seconds, outcome) on stdout,
    # beside the link; never text or the key.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    web_logger = logging.getLogger("rime_trio.web")
    web_logger.addHandler(handler)
    web_logger.setLevel(logging.INFO)
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
            protocol=args.protocol,
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
            raise _bind_error(args.host, args.port, exc) from None
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
            mode += f", {options.stream_protocol}"
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
        "voices": _voices,
    }
    runner = runners[args.command]
    try:
        return int(anyio.run(runner, args, backend=args.backend))
    except KeyboardInterrupt:
        print("rime-trio: stopped", file=sys.stderr)
        return 0 if args.command in ("emulator", "serve") else 130
    except (RimeError, OSError) as exc:
        print(_error_line(exc), file=sys.stderr)
        return EXIT_ERROR
    except BaseExceptionGroup as group:
        # A group only of errors we report (a task group that gathered them) is reported
        # by its first: one line, as for the error alone. Anything else is a bug: its
        # traceback is what to read.
        first = _first_reported(group)
        if first is None:
            raise
        print(_error_line(first), file=sys.stderr)
        return EXIT_ERROR


def _error_line(exc: BaseException) -> str:
    """*exc* as the one line of error the command prints: a message that spans lines (a
    server's text, a path holding a newline) is joined into one."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"rime-trio: error: {message}"


def _first_reported(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first leaf of *group* if every leaf is a RimeError or OSError, else None."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(reversed(exc.exceptions))
        elif isinstance(exc, RimeError | OSError):
            leaves.append(exc)
        else:
            return None
    return leaves[0] if leaves else None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
