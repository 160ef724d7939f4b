"""Shared doubles for the tests/test_aws_*.py files: fake credentials, moto, a loopback app.

No fixture here sends anything beyond loopback: moto intercepts boto3 in-process (or listens
on 127.0.0.1), the instance metadata service is disabled and every app is on 127.0.0.1.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

REGION = "us-east-1"
AWS_ENV_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                   "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE",
                   "AWS_ENDPOINT_URL", "PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE",
                   "PULUMI_CONFIG_PASSPHRASE_FILE")


def fake_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials only, no ~/.aws, no metadata service (169.254.169.254 is not loopback)."""
    for name in AWS_ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@contextmanager
def moto_session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """A boto3 session inside moto's in-process mock (each test module wraps it in a fixture)."""
    fake_aws(monkeypatch, tmp_path)
    with mock_aws():
        yield boto3.Session(region_name=REGION)


def tags(run_id: str, variant: str = "micro") -> list[dict[str, str]]:
    return [{"Key": "project", "Value": "scalelab"}, {"Key": "run-id", "Value": run_id},
            {"Key": "variant", "Value": variant}, {"Key": "stack", "Value": variant}]


def instances(session: Any, n: int, run_id: str, variant: str = "micro") -> list[str]:
    """Running instances tagged like the Pulumi program tags them (root volume included)."""
    ec2 = session.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    made = ec2.run_instances(ImageId=image, InstanceType="t2.micro", MinCount=n, MaxCount=n,
                             TagSpecifications=[
                                 {"ResourceType": "instance", "Tags": tags(run_id, variant)},
                                 {"ResourceType": "volume", "Tags": tags(run_id, variant)}])
    return [i["InstanceId"] for i in made["Instances"]]


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status = self.server.status  # type: ignore[attr-defined]
        body = b"ok" if status == 200 else b"starting"
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback_app() -> Iterator[ThreadingHTTPServer]:
    """A tiny app on 127.0.0.1 whose status the test sets (200 = healthy)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.status = 200  # type: ignore[attr-defined]
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


# ---- a fake `pulumi` executable on PATH ------------------------------------------------------

FAKE_PULUMI = r'''
"""Fake `pulumi` CLI: records argv, plays back outputs, holds the DIY backend's lock file the
way the real CLI does during an update, and fails on cue. Steered by $FAKE_PULUMI_DIR."""
import json, os, sys, time, uuid
from pathlib import Path

home = Path(os.environ["FAKE_PULUMI_DIR"])
scenario = json.loads((home / "scenario.json").read_text())
argv = [a for a in sys.argv[1:] if a != "--non-interactive"]
with (home / "calls.jsonl").open("a") as f:
    f.write(json.dumps({"argv": argv, "t": time.time()}) + "\n")


def flag(name, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


stack = flag("--stack", "")
backend = os.environ.get("PULUMI_BACKEND_URL", "")
state = Path(backend.removeprefix("file://")) if backend.startswith("file://") else home
locks = state / ".pulumi" / "locks" / "organization" / "scalelab" / stack


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(255)


def attempt(op):
    """The n-th call of op fails when scenario["fail"][op][n] is a message."""
    counter = home / f"count-{op}"
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    plan = scenario.get("fail", {}).get(op, [])
    if n < len(plan) and plan[n]:
        fail(plan[n])


def check_lock():
    held = sorted(locks.glob("*.json")) if locks.exists() else []
    if held:
        fail(f"error: the stack is currently locked by {len(held)} lock(s). Either wait for the "
             "other process(es) to end or delete the lock file with `pulumi cancel`.\n"
             f"  {held[0]}: created by fake@host (pid 1) at 2026-11-25T10:00:00Z")


def run_hooks(op):
    """Optional side effects in AWS (moto server via AWS_ENDPOINT_URL): see fake_hooks."""
    hook = scenario.get("hooks", {}).get(op)
    if hook:
        import runpy
        runpy.run_path(hook, init_globals={"home": home, "stack": stack, "argv": argv})


cmd = argv[0] if argv else ""
if cmd == "version":
    print("v3.200.0")
elif cmd == "stack" and argv[1] in ("select", "init"):
    pass
elif cmd == "stack" and argv[1] == "output":
    outputs = home / "outputs.json"
    print(outputs.read_text() if outputs.exists() else "{}")
elif cmd == "stack" and argv[1] == "history":
    print(json.dumps([{"version": 1, "kind": "update", "startTime": "2026-11-25T10:00:00.000Z",
                       "message": "", "environment": {}, "config": {}, "result": "succeeded",
                       "endTime": "2026-11-25T10:00:01.000Z", "resourceChanges": {}}]))
elif cmd == "up":
    check_lock()
    locks.mkdir(parents=True, exist_ok=True)
    lock = locks / f"{uuid.uuid4()}.json"
    lock.write_text("{}")
    (home / "up.pid").write_text(str(os.getpid()))

    def interrupted(signum, frame):
        """Ctrl-C reached the CLI too. "exit": it dies holding the lock (a second ^C, a
        crash); "linger": it lets go of the terminal but still holds the lock for
        `linger_s` while in-flight operations finish, then releases it."""
        print("^C received; cancelling.", flush=True)
        if scenario.get("on_sigint") == "linger" and os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            time.sleep(float(scenario.get("linger_s", 1)))
            lock.unlink(missing_ok=True)
            os._exit(0)
        os._exit(255)

    import signal
    signal.signal(signal.SIGINT, interrupted)
    print(f"Updating ({stack})")
    (home / "deployed").write_text(stack)
    run_hooks("up")
    time.sleep(float(scenario.get("up_hold_s", 0)))
    print("+  aws:ec2/instance:Instance web-0 created")
    lock.unlink()
    made = home / "hook-outputs.json"  # what an up hook created (ids, names)
    outputs = {**scenario.get("outputs", {}), **(json.loads(made.read_text()) if made.exists()
                                                 else {})}
    (home / "outputs.json").write_text(json.dumps(outputs))
    attempt("up")
elif cmd == "cancel":
    attempt("cancel")
    for lock in (locks.glob("*.json") if locks.exists() else []):
        lock.unlink()
    print(f"The currently running update for '{stack}' has been canceled!")
elif cmd == "destroy":
    check_lock()
    attempt("destroy")
    print(f"Destroying ({stack})")
    run_hooks("destroy")
    (home / "deployed").unlink(missing_ok=True)
else:
    fail(f"error: the fake pulumi does not know {argv}")
'''


class FakePulumi:
    """Installs the fake CLI as `pulumi` on PATH; the test reads what it was asked to do."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import os
        import sys

        self.home = tmp_path / "fake-pulumi"
        bin_dir = self.home / "bin"
        bin_dir.mkdir(parents=True)
        exe = bin_dir / "pulumi"
        exe.write_text(f"#!{sys.executable}\n{FAKE_PULUMI}")
        exe.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_PULUMI_DIR", str(self.home))
        self.scenario({})

    def scenario(self, scenario: dict[str, Any]) -> None:
        import json

        (self.home / "scenario.json").write_text(json.dumps(scenario))

    def records(self) -> list[dict[str, Any]]:
        import json

        path = self.home / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() \
            else []

    def calls(self) -> list[list[str]]:
        return [r["argv"] for r in self.records()]

    def started(self, op: str) -> list[float]:
        """When each `op` command started (Unix time)."""
        return [r["t"] for r in self.records() if r["argv"][:1] == [op]]

    def ctrl_c(self, state_dir: Path) -> Any:
        """Press Ctrl-C once the running `up` holds the stack lock: SIGINT to the CLI and to
        this process's main thread, as a terminal sends it to the whole foreground group."""
        import os
        import signal
        import threading
        import time

        def press() -> None:
            deadline = time.monotonic() + 30
            pid_file = self.home / "up.pid"
            while not (self.locks(state_dir) and pid_file.exists()) and \
                    time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.1)  # the CLI's handler is installed right after its pid is written
            os.kill(int(pid_file.read_text()), signal.SIGINT)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

        thread = threading.Thread(target=press, daemon=True)
        thread.start()
        return thread

    def locks(self, state_dir: Path) -> list[Path]:
        return sorted((state_dir / ".pulumi" / "locks").rglob("*.json"))

    def ops(self) -> list[str]:
        """The lifecycle commands in order (version checks, stack select, outputs left out)."""
        return [c[0] for c in self.calls() if c[0] in ("up", "cancel", "destroy", "refresh")]

    def deployed(self) -> bool:
        return (self.home / "deployed").exists()
