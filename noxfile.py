"""Developer tasks: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s bench`,
`nox -s bench_peers`, `nox -s bench_profile`, `nox -s soak`, `nox -s fuzz`."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite against the bundled emulator."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, including the flake8-async (ASYNC) rules, and the formatter check."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package (settings in pyproject.toml)."""
    session.install("-e", ".[test]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Latency, client CPU, throughput and concurrency against a minimal fast server and the
    emulator, each in a separate process (see benchmarks/README.md).

    `nox -s bench -- --quick` is the short run; `-- --readme` updates benchmarks/README.md.
    """
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks.bench", *session.posargs)


@nox.session
def bench_peers(session: nox.Session) -> None:
    """The same run plus livekit-plugins-rime (installed here only, never a dependency)."""
    session.install("-e", ".[bench]", "livekit-plugins-rime==1.8.9")
    session.run("python", "-m", "benchmarks.bench", "--peers", *session.posargs)


@nox.session
def bench_profile(session: nox.Session) -> None:
    """Profile one scenario: `nox -s bench_profile -- warm` (or cold, throughput); writes
    cProfile stats and a py-spy flame graph to benchmarks/profiles/."""
    session.install("-e", ".[bench]", "py-spy")
    scenario, *rest = session.posargs or ["warm"]
    session.run("python", "-m", "benchmarks.bench", "--profile", scenario, *rest)


@nox.session
def soak(session: nox.Session) -> None:
    """Thousands of streams with about 5% faulty connections, on trio then on asyncio (a few
    minutes each); writes both reports to benchmarks/results/soak-latest.json. SOAK_STREAMS
    sets the count."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "soak", "-s", "tests/test_soak.py", *session.posargs)


#: the property harnesses whose example budget the hypothesis profile sets (issue 20)
FUZZ_FILES = ("tests/test_cancellation.py", "tests/test_fuzz.py", "tests/test_bad_*.py")


@nox.session
def fuzz(session: nox.Session) -> None:
    """The cancellation and bad-input harnesses with the large example budget: hypothesis's
    "fuzz" profile (tests/conftest.py; CI runs the small, derandomized "ci" one). Run it
    before resolving an issue that touches them; posargs go to pytest (`-- -x`, `-k trio`)."""
    session.install("-e", ".[test]")
    files = sorted({str(p) for pattern in FUZZ_FILES for p in Path().glob(pattern)})
    session.run(
        "pytest",
        *files,
        *session.posargs,
        env={"HYPOTHESIS_PROFILE": "fuzz"},
    )
