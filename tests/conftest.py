"""Shared test paths and helpers, so test modules do not each redefine them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stacks.variant import PROJECT_DIR

FIXTURES = PROJECT_DIR / "tests" / "fixtures"
RUN_FIXTURE = FIXTURES / "run_fixture"
"""A complete recorded run (all four variants), made by fixtures/make_run_fixture.py."""
BYO_APP = FIXTURES / "byo_app"
"""A bring-your-own WSGI app with its own locustfile."""


def pytest_configure(config: pytest.Config) -> None:
    """Make Ctrl-C a KeyboardInterrupt in this process and SIGINT's default in its children,
    even when the suite was started in the background of a non-interactive shell (`cmd &`),
    which starts it with SIGINT ignored — an ignored signal stays ignored across exec, so the
    tests of Ctrl-C (here and in the `scalelab` children they spawn) would see nothing and
    time out. A Python handler is reset to the default at exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups and swap")


def scalelab_cli(*args: str, cwd: Path = PROJECT_DIR, timeout: float = 120,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m experiments ARGS` with no AWS credentials and no instance-metadata lookups:
    nothing it does may leave loopback."""
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_CONFIG_FILE="/nonexistent", PATH="/usr/bin:/bin", **extra)
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
