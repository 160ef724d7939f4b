"""Record REAL Gunicorn / kernel / cgroup / HAProxy evidence as diagnosis test fixtures.

Why: the classifier in experiments/diagnose.py matches exact log wording and counter
behaviour. Hand-written fixtures would only test our own assumptions, so this script makes
the failures happen for real on loopback and saves what the local backend would have observed
(Observations.to_dict() plus a little metadata) under tests/fixtures/diagnosis/. It assembles
one emulated instance from the backend's own parts -- `InstanceCgroup` with the variant's
memory and vCPU × cpu_scale CPU limits, the `Supervisor`'s Gunicorn command, the `Sampler`
(signals, credit bucket, /dev/kmsg lines for our cgroup, HAProxy target states) -- so a
fixture holds exactly what a `LocalBackend` run would see, not a copy of it:

  worker_timeout_abort.json  a request sleeps past --timeout 2: WORKER TIMEOUT, the worker
                             runs its SIGABRT handler ("Error handling request", traceback,
                             "Worker exiting (pid: N)")
  worker_timeout_kill.json   a request stuck in C code (pbkdf2, which never returns to the
                             interpreter, like the seed's MySQL call): WORKER TIMEOUT, SIGABRT
                             cannot run, SIGKILL one arbiter tick later ("Perhaps out of memory?")
  oom_kill.json              a worker allocates past the micro's memory limit (no swap): the
                             kernel OOM-kills it; oom_kill counter + kernel lines
  timeout_and_oom.json       both at once in one 2-worker Gunicorn: one pid times out, the
                             other is OOM-killed
  lb_no_healthy_target.json  the backend's HAProxy (plus an access log) in front of a server
                             that stops: health checks mark it DOWN, "no server available", 503s
  synthetic_*.json           "recorded": false -- built by synthesized() below (swap thrash,
                             credits, CPU saturation, refused connections, generator bound, and
                             the seed's own two lines); each says why it is not a recording

Run as root (sudo .venv/bin/python scripts/record_diagnosis_fixtures.py [case ...];
--synthesized writes only the synthetic ones), on cgroup v1 or v2. Only 127.0.0.1 is used.
Every process and cgroup is removed, also on error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# noqa E402: the imports need ROOT on sys.path (the script runs from anywhere).
from experiments.backends.local import LocalBackend, gunicorn_argv, haproxy  # noqa: E402
from experiments.backends.local.appsetup import app_env  # noqa: E402
from experiments.backends.local.cgroups import InstanceCgroup, detect_layout  # noqa: E402
from experiments.backends.local.credits import CreditBucket  # noqa: E402
from experiments.backends.local.sampler import SampledInstance, Sampler  # noqa: E402
from experiments.backends.local.supervisor import Supervisor, pump_lines  # noqa: E402
from experiments.errors import UserError  # noqa: E402
from experiments.model import LogLine, Observations, SignalSample  # noqa: E402
from experiments.procs import free_port, stop_group  # noqa: E402
from stacks.catalog import load_catalog  # noqa: E402
from stacks.variant import AppSource, GunicornSettings, Variant, load_variant  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "diagnosis"
CGROUP_PREFIX = "diag-fixture-of-scalelab"
"""Not `scalelab-*`: the local backend's leftover sweeper removes such cgroups, and it must not
kill a recording another test is making (nor we its instances)."""
INSTANCE = "i0"
"""The name the local backend gives its first instance (log sources `gunicorn:i0`, ...)."""
MIB = 1024 * 1024

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
        # As fast as it can: it must pass the memory limit before --timeout 2 fires.
        for _ in range(int(query.get("mib", ["300"])[0])):
            HOLD.append(bytearray(1024 * 1024))  # zero-filled: the pages are really touched
    body = b"ok\\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def cgroup_name(role: str) -> str:
    """Per process, so two recordings on one host never share (or remove) a cgroup."""
    return f"{CGROUP_PREFIX}-p{os.getpid()}-{role}"


def with_app(variant: Variant, app_dir: Path, **changes: object) -> Variant:
    """`variant` serving APP from `app_dir` (no setup command), with further overrides."""
    app = AppSource(path=str(app_dir), wsgi="app:application", setup="", health_path="/healthz")
    return variant.with_overrides(app=app, **changes)


def micro(app_dir: Path, workers: int) -> Variant:
    """The seed's box, with Gunicorn's timeout at 2 s so a recording takes seconds."""
    return with_app(load_variant("micro"), app_dir,
                    gunicorn=GunicornSettings(workers=workers, timeout_s=2))


def get(port: int, path: str, timeout: float) -> None:
    urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout).read()


def wait_http(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError):
            get(port, path, timeout=2)
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port}{path}")


def fire(port: int, path: str, timeout: float = 30.0) -> None:
    """One request in the background; its failure is the point, so errors are ignored."""

    def go() -> None:
        with suppress(Exception):
            get(port, path, timeout)

    threading.Thread(target=go, daemon=True).start()


class Recording:
    """One instance built as LocalBackend builds it, and everything its parts reported."""

    def __init__(self, variant: Variant) -> None:
        backend = LocalBackend()  # its default cpu_scale, credit start and time compression
        self.variant, self.port = variant, free_port()
        self.logs: list[LogLine] = []
        self.signals: list[SignalSample] = []
        self.cgroup = detect_layout().make(cgroup_name(INSTANCE))
        bucket = CreditBucket.for_instance(load_catalog().instance(variant.instance_type),
                                           variant.credit_mode, backend.credits)
        self.sampled = SampledInstance(INSTANCE, self.cgroup, variant.vcpu, backend.cpu_scale,
                                       bucket, backend.time_compression)
        self.sampler = Sampler([self.sampled], self.signals.append, self.logs.append)
        argv = gunicorn_argv(variant, f"127.0.0.1:{self.port}", backend.dilation)
        self.supervisor = Supervisor(INSTANCE, argv, variant.app.directory,
                                     app_env(variant, variant.app.directory),
                                     self.cgroup.procs_files(), self.logs.append)

    def wait_for(self, needles: list[str], timeout: float = 40.0) -> None:
        """Until every needle was logged by anyone, then two more samples' worth of time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            texts = [line.text for line in list(self.logs)]
            if all(any(n in t for t in texts) for n in needles):
                time.sleep(2.5)  # the replacement worker boots; the sampler sees the aftermath
                return
            time.sleep(0.2)
        raise RuntimeError(f"never logged {needles}; got: {[x.text for x in self.logs]}")

    def observations(self) -> Observations:
        return Observations(signals=list(self.signals),
                            logs=sorted(self.logs, key=lambda line: line.t))


def remove(cgroup: InstanceCgroup) -> None:
    """Kill every member and remove the cgroup, or say which one is left behind."""
    if not cgroup.remove():
        raise RuntimeError(f"could not remove cgroup {cgroup.paths}")


@contextmanager
def deployed(variant: Variant) -> Iterator[Recording]:
    """Limits as LocalBackend sets them, supervised Gunicorn, sampler; all removed after."""
    rec = Recording(variant)
    try:
        rec.cgroup.create()
        rec.cgroup.set_limits(variant.app_memory_mib * MIB, variant.swap_mib * MIB,
                              variant.swappiness, rec.sampled.target_cores())
        rec.supervisor.start()
        rec.sampler.start()
        wait_http(rec.port, variant.app.health_path)
        yield rec
    finally:
        with suppress(OSError, ValueError, UserError):
            rec.sampler.tick()  # a last sample, as the backend's teardown takes
        rec.sampler.stop()
        rec.supervisor.stop()
        remove(rec.cgroup)


@contextmanager
def load_balancer(rec: Recording) -> Iterator[int]:
    """The backend's HAProxy for `rec`'s variant with `rec` as its one target; yields its port.

    Plus an access log: the backend's config has none, but the classifier's `<NOSRV> 503`
    evidence is read from it."""
    port, run_dir = free_port(), Path(tempfile.mkdtemp(prefix="diag-fixture-"))
    sock, cfg = run_dir / "haproxy.sock", run_dir / "haproxy.cfg"
    text = haproxy.render_config(rec.variant, "127.0.0.1", port,
                                 [haproxy.Target(INSTANCE, "127.0.0.1", rec.port)], sock)
    text = text.replace("global\n", "global\n    log stdout format raw local0 info\n", 1)
    cfg.write_text(text.replace("defaults\n", "defaults\n    log global\n    option httplog\n", 1))
    proc = subprocess.Popen([haproxy.haproxy_binary(), "-f", str(cfg), "-db"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        pump_lines(proc.stdout, "haproxy", rec.logs.append)
        wait_http(port, rec.variant.health_check.path)  # one target: 200 means it is UP
        rec.sampler.target_state = haproxy.target_states(sock)
        rec.sampler.haproxy_socket = sock
        yield port
    finally:
        rec.sampler.haproxy_socket = None
        stop_group(proc)
        shutil.rmtree(run_dir, ignore_errors=True)


# ---- cases -------------------------------------------------------------------------------

def gunicorn_case(variant: Variant, requests: list[str], needles: list[str]) -> Observations:
    with deployed(variant) as rec:
        time.sleep(1.0)
        for path in requests:
            fire(rec.port, path)
            time.sleep(0.3)
        rec.wait_for(needles)
    return rec.observations()


def hog(variant: Variant) -> str:
    """A request that allocates 100 MiB past the instance's memory limit."""
    return f"/hog?mib={variant.app_memory_mib + 100}"


def case_worker_timeout_abort(app_dir: Path) -> Observations:
    return gunicorn_case(micro(app_dir, 1), ["/sleep?s=20"], ["WORKER TIMEOUT", "Worker exiting"])


def case_worker_timeout_kill(app_dir: Path) -> Observations:
    return gunicorn_case(micro(app_dir, 1), ["/spin?n=60000000"], ["WORKER TIMEOUT", "SIGKILL"])


def case_oom_kill(app_dir: Path) -> Observations:
    v = micro(app_dir, 1)
    return gunicorn_case(v, [hog(v)], ["Killed process", "was sent SIGKILL"])


def case_timeout_and_oom(app_dir: Path) -> Observations:
    v = micro(app_dir, 2)
    return gunicorn_case(v, ["/spin?n=60000000", hog(v)], ["WORKER TIMEOUT", "Killed process"])


def case_lb_no_healthy_target(app_dir: Path) -> Observations:
    """HAProxy with one checked target; the target's Gunicorn stops, clients get 503."""
    with deployed(with_app(load_variant("scale-out"), app_dir, count=1)) as rec, \
            load_balancer(rec) as lb_port:
        time.sleep(1.0)
        rec.supervisor.stop()  # the instance's server is gone: checks fail, the target goes DOWN
        rec.wait_for(["has no server available"])
        for _ in range(3):
            with suppress(Exception):
                get(lb_port, "/", timeout=3)
            time.sleep(0.3)
    return rec.observations()


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
    if os.geteuid() != 0:
        print("needs root: the kernel's OOM lines come from /dev/kmsg", file=sys.stderr)
        return 2
    try:
        detect_layout()
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 2
    import gunicorn as gunicorn_pkg

    app_dir = Path(tempfile.mkdtemp(prefix="diag-fixture-app-"))
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
