"""Record REAL Gunicorn / kernel / cgroup / HAProxy evidence as diagnosis test fixtures.

Why: the classifier in experiments/diagnose.py matches exact log wording and counter
behaviour. Hand-written fixtures would only test our own assumptions, so this script makes
the failures happen for real on loopback and saves what a backend would have observed
(Observations.to_dict() plus a little metadata) under tests/fixtures/diagnosis/:

  worker_timeout_abort.json  a request sleeps past --timeout 2: WORKER TIMEOUT, the worker
                             runs its SIGABRT handler ("Error handling request", traceback,
                             "Worker exiting (pid: N)")
  worker_timeout_kill.json   a request stuck in C code (pbkdf2, which never returns to the
                             interpreter, like the seed's MySQL call): WORKER TIMEOUT, SIGABRT
                             cannot run, SIGKILL one arbiter tick later ("Perhaps out of memory?")
  oom_kill.json              a worker allocates past a 100 MiB cgroup v1 limit (memsw equal, so
                             no swap): the kernel OOM-kills it; oom_kill counter + kernel lines
  timeout_and_oom.json       both at once in one 2-worker Gunicorn: one pid times out, the
                             other is OOM-killed
  lb_no_healthy_target.json  HAProxy in front of a server that stops: health checks mark it
                             DOWN, "no server available", 503s
  synthetic_*.json           "recorded": false -- built by synthesized() below (swap thrash,
                             credits, CPU saturation, refused connections, generator bound, and
                             the seed's own two lines); each says why it is not a recording

Run as root on a cgroup v1 host (sudo .venv/bin/python scripts/record_diagnosis_fixtures.py
[case ...]; --synthesized writes only the synthetic ones). Only 127.0.0.1 is used. Every
process and cgroup is removed, also on error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.model import LogLine, Observations, SignalSample  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "diagnosis"
CGROUP_NAME = "diag-fixture-of-scalelab"
"""Not `scalelab-*`: the local backend's leftover sweeper removes every such cgroup, and it
must not kill a recording another test is making (nor we its instances)."""
MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
CPUACCT_ROOT = Path("/sys/fs/cgroup/cpuacct")
INSTANCE = "micro-0"
LIMIT_BYTES = 100 * 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

APP = '''
"""Tiny WSGI app whose endpoints misbehave on purpose (diagnosis fixtures)."""
import hashlib
import time
from urllib.parse import parse_qs

HOLD = []


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/sleep":
        time.sleep(float(query.get("s", ["10"])[0]))
    elif path == "/spin":
        # One C call that does not return to the interpreter for seconds: the worker cannot
        # run its SIGABRT handler, so Gunicorn has to SIGKILL it.
        hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", int(query.get("n", ["30000000"])[0]))
    elif path == "/hog":
        mib = int(query.get("mib", ["300"])[0])
        for _ in range(mib):
            HOLD.append(bytearray(1024 * 1024))  # zero-filled: the pages are really touched
            time.sleep(0.01)
    body = b"ok\\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''



def _terminate(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after the grace period; always reap."""
    with suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- cgroup ------------------------------------------------------------------------------

@contextmanager
def fixture_cgroup(limit_bytes: int) -> Iterator[tuple[Path, Path]]:
    """A fresh memory (+cpuacct) cgroup; every task in it is killed and it is removed after."""
    mem, cpu = MEMORY_ROOT / CGROUP_NAME, CPUACCT_ROOT / CGROUP_NAME
    for group in (mem, cpu):
        remove_cgroup(group)
        group.mkdir()
    try:
        (mem / "memory.limit_in_bytes").write_text(str(limit_bytes))
        (mem / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        yield mem, cpu
    finally:
        for group in (mem, cpu):
            remove_cgroup(group)


def remove_cgroup(group: Path) -> None:
    if not group.exists():
        return
    for _ in range(50):
        pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        if not pids:
            break
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for _ in range(50):
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"could not remove cgroup {group}")


def oom_kills(mem: Path) -> int:
    for line in (mem / "memory.oom_control").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def memory_stat(mem: Path, key: str) -> int:
    for line in (mem / "memory.stat").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


class Sampler(threading.Thread):
    """Reads the cgroup like the local backend does, twice a second."""

    def __init__(self, mem: Path, cpu: Path, instance: str = INSTANCE) -> None:
        super().__init__(daemon=True)
        self.mem, self.cpu, self.instance = mem, cpu, instance
        self.samples: list[SignalSample] = []
        self.stop = threading.Event()

    def run(self) -> None:
        last_t, last_cpu = time.time(), int((self.cpu / "cpuacct.usage").read_text())
        while not self.stop.wait(0.5):
            with suppress(OSError):
                now, used = time.time(), int((self.cpu / "cpuacct.usage").read_text())
                usage = int((self.mem / "memory.usage_in_bytes").read_text())
                memsw = int((self.mem / "memory.memsw.usage_in_bytes").read_text())
                self.samples.append(SignalSample(
                    t=round(now, 3), instance=self.instance,
                    memory_bytes=usage,
                    memory_limit_bytes=int((self.mem / "memory.limit_in_bytes").read_text()),
                    swap_bytes=max(0, memsw - usage),
                    major_faults=memory_stat(self.mem, "total_pgmajfault"),
                    cpu_used_cores=round((used - last_cpu) / 1e9 / (now - last_t), 3),
                    cpu_limit_cores=1.0,
                    oom_kills=oom_kills(self.mem),
                ))
                last_t, last_cpu = now, used


# ---- processes ---------------------------------------------------------------------------

class LogReader(threading.Thread):
    """Timestamps each line on arrival, as the local backend's supervisor does."""

    def __init__(self, stream: object, source: str) -> None:
        super().__init__(daemon=True)
        self.stream, self.source = stream, source
        self.lines: list[LogLine] = []

    def run(self) -> None:
        for raw in self.stream:  # type: ignore[attr-defined]
            text = raw.decode(errors="replace").rstrip("\n")
            if text:
                self.lines.append(LogLine(t=round(time.time(), 3), source=self.source, text=text))


@contextmanager
def gunicorn(app_dir: Path, port: int, workers: int, cgroups: tuple[Path, Path]
             ) -> Iterator[LogReader]:
    procs_files = [str(g / "cgroup.procs") for g in cgroups]

    def enter_cgroups() -> None:  # runs in the child before exec: the master and its workers
        for f in procs_files:
            with open(f, "w") as fh:
                fh.write(str(os.getpid()))

    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
           "--workers", str(workers), "--timeout", "2", "--worker-tmp-dir", "/dev/shm",
           "--no-control-socket", "--error-logfile", "-", "--log-level", "info",
           "--chdir", str(app_dir), "app:application"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=enter_cgroups)
    reader = LogReader(proc.stderr, f"gunicorn:{INSTANCE}")
    reader.start()
    try:
        wait_http(port, "/")
        yield reader
    finally:
        _terminate(proc, grace_s=10)
        reader.join(2)


def wait_http(port: int, path: str, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).read()
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port}{path}")


def fire(port: int, path: str, timeout: float = 30.0) -> threading.Thread:
    """One request in the background; its failure is the point, so errors are ignored."""

    def go() -> None:
        with suppress(Exception):
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout).read()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def wait_for(reader: LogReader, needles: list[str], timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        texts = [line.text for line in reader.lines]
        if all(any(n in t for t in texts) for n in needles):
            time.sleep(1.5)  # let the replacement worker boot and the sampler see it
            return
        time.sleep(0.2)
    raise RuntimeError(f"Gunicorn never logged {needles}; got: {[x.text for x in reader.lines]}")


def kernel_lines_since(count_before: int) -> list[LogLine]:
    """New kernel ring-buffer lines, with their own (wall-clock) timestamps."""
    out = subprocess.run(["dmesg", "--time-format", "iso"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    lines = []
    for raw in out[count_before:]:
        stamp, _, text = raw.partition(" ")
        with suppress(ValueError):
            t = datetime.fromisoformat(stamp.replace(",", ".")).timestamp()
            lines.append(LogLine(t=round(t, 3), source=f"kernel:{INSTANCE}", text=text))
    return lines


def dmesg_count() -> int:
    return len(subprocess.run(["dmesg"], capture_output=True, text=True, check=True)
               .stdout.splitlines())


# ---- cases -------------------------------------------------------------------------------

def gunicorn_case(app_dir: Path, workers: int, requests: list[str], needles: list[str]
                  ) -> Observations:
    port = free_port()
    before = dmesg_count()
    with fixture_cgroup(LIMIT_BYTES) as groups:
        sampler = Sampler(*groups)
        sampler.start()
        try:
            with gunicorn(app_dir, port, workers, groups) as reader:
                time.sleep(1.0)
                for path in requests:
                    fire(port, path)
                    time.sleep(0.3)
                wait_for(reader, needles, timeout=40)
        finally:
            sampler.stop.set()
            sampler.join(2)
    logs = sorted(reader.lines + kernel_lines_since(before), key=lambda x: x.t)
    return Observations(signals=sampler.samples, logs=logs)


def case_worker_timeout_abort(app_dir: Path) -> Observations:
    return gunicorn_case(app_dir, 1, ["/sleep?s=20"], ["WORKER TIMEOUT", "Worker exiting"])


def case_worker_timeout_kill(app_dir: Path) -> Observations:
    return gunicorn_case(app_dir, 1, ["/spin?n=60000000"], ["WORKER TIMEOUT", "SIGKILL"])


def case_oom_kill(app_dir: Path) -> Observations:
    return gunicorn_case(app_dir, 1, ["/hog?mib=300"], ["SIGKILL"])


def case_timeout_and_oom(app_dir: Path) -> Observations:
    return gunicorn_case(app_dir, 2, ["/spin?n=60000000", "/hog?mib=300"],
                         ["WORKER TIMEOUT", "Perhaps out of memory"])


def case_lb_no_healthy_target(app_dir: Path) -> Observations:
    """HAProxy with one checked server; the server's Gunicorn stops, clients get 503."""
    lb_port, app_port = free_port(), free_port()
    cfg = app_dir / "haproxy.cfg"
    cfg.write_text(f"""global
    log stdout format raw local0 info
defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend alb
    bind 127.0.0.1:{lb_port}
    default_backend targets
backend targets
    balance roundrobin
    option httpchk GET /
    default-server inter 500ms fall 2 rise 2
    server {INSTANCE} 127.0.0.1:{app_port} check
""")
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    reader = LogReader(haproxy.stdout, "haproxy")
    reader.start()
    try:
        with fixture_cgroup(LIMIT_BYTES) as groups:
            with gunicorn(app_dir, app_port, 1, groups) as g_reader:
                wait_http(lb_port, "/")
                time.sleep(1.0)
            # Gunicorn is gone now: checks fail, HAProxy marks the target DOWN and answers 503.
            time.sleep(2.5)
            for _ in range(3):
                with suppress(Exception):
                    urllib.request.urlopen(f"http://127.0.0.1:{lb_port}/", timeout=3).read()
                time.sleep(0.3)
    finally:
        _terminate(haproxy, grace_s=5)
        reader.join(2)
    logs = sorted(reader.lines + g_reader.lines, key=lambda x: x.t)
    return Observations(signals=[], logs=logs)


# ---- synthesized cases (labelled: "recorded": false) ---------------------------------------
# Why synthesized: these need hours of credit drain, a host swapfile under real memory pressure,
# or a load generator pinned at 100 % -- too slow or too disruptive for a shared test host. The
# numbers follow what the local backend's sampler reports (see the recorded fixtures' shape).

T0 = 1795600000.0  # 2026-11-25 09:46:40 UTC
MIB = 2**20


def _step(offered: float, start: float, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "offered_rps": offered, "achieved_rps": offered, "p50_ms": 40.0, "p95_ms": 120.0,
        "p99_ms": 200.0, "error_rate": 0.0, "requests": int(offered * 20), "errors": 0,
        "errors_by_kind": {}, "duration_s": 20.0, "started_at": start, "ended_at": start + 20,
        "generator_cpu": 0.3, "generator_saturated": False, "passed": True, "verdict": "ok"}
    base.update(kw)
    return base


def _samples(instance: str, n: int, start: float, **series: object) -> list[dict[str, object]]:
    """n one-second samples; each keyword is a constant or a function of the second index."""
    out = []
    for i in range(n):
        row: dict[str, object] = {"t": start + i, "instance": instance}
        for key, value in series.items():
            row[key] = value(i) if callable(value) else value
        out.append(row)
    return out


def synthesized() -> dict[str, dict[str, object]]:
    fail_p95 = {"passed": False, "p95_ms": 4200.0, "p99_ms": 9000.0, "achieved_rps": 21.0,
                "verdict": "p95 4200 ms > SLO 500 ms"}
    cases: dict[str, dict[str, object]] = {}

    # The seed's own lines, transcribed from the blog post's screenshot (date unknown: 06:51 UTC).
    seed_t = 1795589505.0  # 06:51:45 UTC on the fixture day
    cases["seed_micro"] = {
        "variant": "micro", "expect": "worker_timeout",
        "why": "the seed's log lines (blog screenshot), Gunicorn 21 wording",
        "steps": [_step(30, seed_t - 15, **fail_p95)],
        "survival": None,
        "signals": _samples("micro-0", 20, seed_t - 15, memory_bytes=640 * MIB,
                            memory_limit_bytes=674 * MIB, swap_bytes=0, major_faults=0,
                            cpu_used_cores=0.95, cpu_limit_cores=1.0, oom_kills=0),
        "logs": [
            {"t": seed_t, "source": "gunicorn:micro-0",
             "text": "[2023-09-10 06:51:45 +0000] [1] [CRITICAL] WORKER TIMEOUT (pid:12)"},
            {"t": seed_t + 1, "source": "gunicorn:micro-0",
             "text": "[2023-09-10 06:51:46 +0000] [1] [ERROR] Worker (pid:12) was sent SIGKILL! "
                     "Perhaps out of memory?"},
            {"t": seed_t + 1.01, "source": "gunicorn:micro-0",
             "text": "[2023-09-10 06:51:46 +0000] [30] [INFO] Booting worker with pid: 30"},
        ],
    }

    # micro-swap: memory full, 1.2 GiB swapped, major faults in the thousands, latency gone;
    # the workers then time out (the symptom) -- precedence names swap_thrash.
    thrash_start = T0 + 30

    def majflt(i: int) -> int:
        return 0 if i < 8 else (i - 8) * 1800

    cases["swap_thrash"] = {
        "variant": "micro-swap", "expect": "swap_thrash",
        "why": "needs a host swapfile and minutes of memory pressure",
        "steps": [_step(20, T0, ), _step(30, thrash_start, **fail_p95)],
        "survival": None,
        "signals": _samples("micro-swap-0", 25, thrash_start - 2,
                            memory_bytes=670 * MIB, memory_limit_bytes=674 * MIB,
                            swap_bytes=lambda i: min(i, 12) * 100 * MIB, major_faults=majflt,
                            cpu_used_cores=0.4, cpu_limit_cores=1.0, oom_kills=0),
        "logs": [
            {"t": thrash_start + 14, "source": "gunicorn:micro-swap-0",
             "text": "[2026-11-25 09:47:24 +0000] [700] [CRITICAL] WORKER TIMEOUT (pid:712)"},
            {"t": thrash_start + 15, "source": "gunicorn:micro-swap-0",
             "text": "[2026-11-25 09:47:25 +0000] [700] [ERROR] Worker (pid:712) was sent "
                     "SIGKILL! Perhaps out of memory?"},
        ],
    }

    # t2.micro, standard credits: the balance drains to 0 and the quota falls to 10 % of a vCPU.
    def balance(i: int) -> float:
        return max(0.0, 3.0 - i * 0.25)

    def limit(i: int) -> float:
        return 0.33 if balance(i) > 0 else 0.033

    cases["cpu_credits_exhausted"] = {
        "variant": "micro", "expect": "cpu_credits_exhausted",
        "why": "real credit drain takes hours; the local backend's bucket is modelled here",
        "steps": [_step(10, T0 + 12, **fail_p95)],
        "survival": None,
        "signals": _samples("micro-0", 30, T0, memory_bytes=300 * MIB,
                            memory_limit_bytes=674 * MIB, swap_bytes=0, major_faults=0,
                            cpu_used_cores=limit, cpu_limit_cores=limit, throttled_s=0.0,
                            credit_balance=balance, oom_kills=0),
        "logs": [],
    }

    # scale-up: CPU pegged at its quota, no process died, latency over the SLO.
    cases["cpu_saturated"] = {
        "variant": "scale-up", "expect": "cpu_saturated",
        "why": "a sustained CPU-bound step is too slow for the unit tests",
        "steps": [_step(80, T0, ), _step(120, T0 + 25, **fail_p95)],
        "survival": None,
        "signals": _samples("scale-up-0", 50, T0, memory_bytes=900 * MIB,
                            memory_limit_bytes=3746 * MIB, swap_bytes=0, major_faults=12,
                            cpu_used_cores=lambda i: 0.6 if i < 25 else 0.66,
                            cpu_limit_cores=0.66, throttled_s=lambda i: max(0, i - 25) * 0.3,
                            credit_balance=500.0, oom_kills=0),
        "logs": [],
    }

    # micro: Gunicorn is gone and the supervisor restarts it; nothing else in the logs.
    cases["connection_refused"] = {
        "variant": "micro", "expect": "connection_refused",
        "why": "the load driver's error kinds are not produced by the recorder",
        "steps": [_step(40, T0, passed=False, error_rate=0.4, errors=320,
                        errors_by_kind={"ConnectionRefusedError(111, 'Connection refused')": 300,
                                        "HTTPError('500 Server Error')": 20},
                        verdict="errors 40.0 % > 1 %")],
        "survival": None,
        "signals": _samples("micro-0", 20, T0, memory_bytes=200 * MIB,
                            memory_limit_bytes=674 * MIB, swap_bytes=0, cpu_used_cores=0.2,
                            cpu_limit_cores=1.0, oom_kills=0),
        "logs": [{"t": T0 + 5, "source": "supervisor:micro-0",
                  "text": "gunicorn exited with code 1; restarting in 1 s"}],
    }

    # The generator ran out of CPU before the server did.
    cases["generator_bound"] = {
        "variant": "scale-out", "expect": "generator_bound",
        "why": "saturating the generator on purpose would starve the other engineers' tests",
        "steps": [_step(900, T0), _step(1350, T0 + 25, passed=False, achieved_rps=1010.0,
                                         generator_cpu=0.99, generator_saturated=True,
                                         verdict="generator saturated (99 % CPU)")],
        "survival": None,
        "signals": _samples("scale-out-0", 50, T0, memory_bytes=300 * MIB,
                            memory_limit_bytes=674 * MIB, swap_bytes=0, cpu_used_cores=0.5,
                            cpu_limit_cores=1.0, oom_kills=0),
        "logs": [],
    }
    return cases


CASES = {
    "worker_timeout_abort": case_worker_timeout_abort,
    "worker_timeout_kill": case_worker_timeout_kill,
    "oom_kill": case_oom_kill,
    "timeout_and_oom": case_timeout_and_oom,
    "lb_no_healthy_target": case_lb_no_healthy_target,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"any of {', '.join(CASES)} (default: all)")
    parser.add_argument("--synthesized", action="store_true",
                        help="only (re)write the synthesized fixtures (no root needed)")
    args = parser.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, case in synthesized().items():
        doc = {"recorded": False, "how": "scripts/record_diagnosis_fixtures.py --synthesized",
               **case}
        (FIXTURES / f"synthetic_{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    if args.synthesized:
        print(f"wrote {len(synthesized())} synthesized fixtures to {FIXTURES}")
        return 0
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; valid cases are {', '.join(CASES)}")
    if os.geteuid() != 0 or not MEMORY_ROOT.is_dir():
        print("needs root and cgroup v1 at /sys/fs/cgroup/memory", file=sys.stderr)
        return 2
    import gunicorn as gunicorn_pkg

    FIXTURES.mkdir(parents=True, exist_ok=True)
    app_dir = Path(tempfile.mkdtemp(prefix="scalelab-diag-"))
    try:
        (app_dir / "app.py").write_text(APP)
        for name in args.cases or list(CASES):
            print(f"recording {name} ...", flush=True)
            obs = CASES[name](app_dir)
            doc = {
                "recorded": True,
                "how": f"scripts/record_diagnosis_fixtures.py {name}",
                "gunicorn": gunicorn_pkg.__version__,
                "kernel": platform.release(),
                "instance": INSTANCE,
                **obs.to_dict(),
            }
            path = FIXTURES / f"{name}.json"
            path.write_text(json.dumps(doc, indent=1) + "\n")
            print(f"  {len(obs.logs)} log lines, {len(obs.signals)} samples -> {path}")
    finally:
        shutil.rmtree(app_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
