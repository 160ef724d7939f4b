"""Turn a variant's signals and logs into ONE named failure with the evidence that proves it.

Why this exists: "Worker (pid:12) was sent SIGKILL! Perhaps out of memory?" reads like an OOM
kill, but Gunicorn appends "Perhaps out of memory?" to *every* SIGKILL, including the one it
sends itself one arbiter tick after `WORKER TIMEOUT`. The seed's log had the timeout one
second before the SIGKILL: Gunicorn killed its own stalled worker. So the classifier pairs
log lines by pid and checks the kernel's own word (the cgroup `oom_kill` counter, kernel log
lines) before it says "oom".

How scalelab explains a failure (precedence: the first that applies is named, the others that
also apply are listed as secondary evidence):

1. `oom_kill`              the kernel killed a process: the cgroup oom_kill counter rose, a
                           kernel line says "Killed process"/"oom-kill", or Gunicorn reports a
                           SIGKILL that no WORKER TIMEOUT explains and the counter is not
                           observable. Connection errors, 503s and timeouts that follow are
                           its consequences.
2. `swap_thrash`           swap in use and major faults climbing fast while latency collapsed:
                           memory ran out slowly instead of at once. A worker timeout during
                           thrash is the symptom (workers stall while paging), so it is listed
                           as secondary evidence, not named.
3. `cpu_credits_exhausted` a standard-mode burstable instance hit ~0 credits and its CPU fell
                           to the baseline: the cause of any saturation or timeout after it.
4. `worker_timeout`        Gunicorn's `WORKER TIMEOUT (pid:N)` followed by that worker's abort
                           or SIGKILL: a request took longer than the timeout (the seed's case).
5. `generator_bound`       every failing step was invalid because the load generator saturated;
                           nothing above happened on the server.
6. `cpu_saturated`         a step failed on latency while an instance ran at its CPU limit.
7. `lb_no_healthy_target`  the load balancer had no healthy target ("no server available", 503).
8. `connection_refused`    errors were mostly connection refused / reset, nothing above applies.
`none`: nothing failed (every judged step passed and the survival test held or was not run),
or something failed and no signal or log names a cause (the summary then says so).

Only evidence inside the failure windows counts: each failing step's hold (plus the Gunicorn
timeout before it, since a timeout fires that long after the stalled request began, and a few
seconds after), and the survival test until it failed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from experiments.errors import UserError
from experiments.model import (
    Failure,
    FailureKind,
    LogLine,
    Observations,
    SignalSample,
    Slo,
    StepResult,
    SurvivalResult,
)
from stacks.catalog import load_catalog
from stacks.variant import Variant

PRECEDENCE = FailureKind.by_precedence()
"""The order of the module doc (one definition: `experiments.model.FailureKind`)."""

MAX_EVIDENCE = 8
FOLLOW_S = 5.0
"""A worker's death must follow its WORKER TIMEOUT within this many seconds to be paired.
Gunicorn sends SIGABRT at the timeout and SIGKILL one arbiter tick (~1 s) later; a busy host
can stretch that tick."""
TAIL_S = 5.0
"""Evidence may trail the end of a failing step by this much (sampling, log flushing)."""
MIN_LEAD_S = 10.0
SWAP_MIN_BYTES = 16 * 2**20
MAJFLT_PER_S = 100.0
"""Major faults per second that count as thrashing (a healthy box sees ~0 once warm)."""
THRASH_MIN_S = 3.0
CPU_BUSY = 0.9
"""cpu_used / cpu_limit at or above this is "at the limit"."""
CPU_SUSTAINED = 0.6
"""Share of a failing step's samples that must be at the limit to call it saturated."""
CREDIT_EMPTY = 0.5
DOMINANT = 0.5
"""An error kind "dominates" when it is at least half of the failing steps' errors."""
LINE_CHARS = 180

# ---- exact wording (Gunicorn 27 arbiter.py / workers/base.py; older releases in comments) --
_GUNICORN_PREFIX = re.compile(r"^\[[^\]]+\] \[(?P<proc>\d+)\] (?P<rest>.*)$")
_TIMEOUT = re.compile(r"WORKER TIMEOUT \(pid:(\d+)\)")
_SIGNALED = re.compile(r"Worker \(pid:(\d+)\) was sent (SIG\w+|signal \d+)!")
_OLD_SIGNALED = re.compile(r"Worker with pid (\d+) was terminated due to signal (\d+)")  # <=20
_EXITED = re.compile(r"Worker \(pid:(\d+)\) exited with code (-?\d+)")
_EXITING = re.compile(r"Worker exiting \(pid: ?(\d+)\)")
_HANDLING_ERROR = re.compile(r"\[ERROR\] Error handling request")
# ---- kernel (dmesg / journal -k) -----------------------------------------------------------
_KERNEL_KILLED = re.compile(r"(?:Killed|Kill) process (\d+) \(([^)]*)\)")
_KERNEL_OOM = re.compile(r"memory cgroup out of memory|out of memory|oom-kill:|invoked oom-killer",
                         re.I)
# ---- HAProxy (stderr copy "[ALERT]    (pid) : ..." and the raw log copy) ----------------------
_HAPROXY_PREFIX = re.compile(r"^\[(?:WARNING|ALERT|NOTICE|INFO)\]\s+\(\d+\) : ")
_HAPROXY_NOSRV = re.compile(r"backend '?([\w.-]+)'? has no server available")
_HAPROXY_DOWN = re.compile(r"Server (\S+) is DOWN.*?(\d+) active and (\d+) backup servers left")
_HAPROXY_503 = re.compile(r"<NOSRV> \S+ 503 ")
# ---- load driver error kinds (Locust/urllib/requests/geventhttpclient spellings) ----------
_ERR_503 = re.compile(r"\b503\b|Service Unavailable|no healthy", re.I)
_ERR_REFUSED = re.compile(
    r"refused|ECONNREFUSED|errno 111|\breset\b|ECONNRESET|errno 104|RemoteDisconnected|"
    r"BrokenPipe|EHOSTUNREACH", re.I)


@dataclass
class _Finding:
    kind: FailureKind
    at: float | None
    evidence: list[str]
    summary: str


@dataclass
class _Context:
    variant: Variant
    obs: Observations
    slo: Slo
    failing: list[StepResult]
    survival: SurvivalResult | None
    windows: list[tuple[float, float]]
    gunicorn: list[LogLine] = field(default_factory=list)
    kernel: list[LogLine] = field(default_factory=list)
    haproxy: list[LogLine] = field(default_factory=list)
    other: list[LogLine] = field(default_factory=list)

    def inside(self, t: float) -> bool:
        return any(lo <= t <= hi for lo, hi in self.windows)

    def samples(self) -> dict[str, list[SignalSample]]:
        by: dict[str, list[SignalSample]] = {}
        for s in sorted(self.obs.signals, key=lambda s: s.t):
            by.setdefault(s.instance, []).append(s)
        return by


def diagnose(variant: Variant, observations: Observations, steps: list[StepResult],
             survival: SurvivalResult | None, slo: Slo) -> Failure:
    """Name the one failure that best explains why this variant stopped meeting the SLO."""
    failing = [s for s in steps if slo.failed(s)]
    survival_failed = survival is not None and not survival.held
    if not failing and not survival_failed:
        held = "" if survival is None else f"; survived {survival.seconds:.0f} s of overload"
        return Failure(kind=FailureKind.NONE, evidence=[], at=None,
                       summary=f"Nothing failed: every judged step met the SLO{held}.")

    ctx = _Context(variant, observations, slo, failing, survival if survival_failed else None,
                   _windows(variant, failing, survival if survival_failed else None))
    for line in sorted(observations.logs, key=lambda x: x.t):
        if not ctx.inside(line.t):
            continue
        kind = line.source.split(":", 1)[0]
        {"gunicorn": ctx.gunicorn, "kernel": ctx.kernel, "haproxy": ctx.haproxy}.get(
            kind, ctx.other).append(line)
    ctx.haproxy = _dedupe_haproxy(ctx.haproxy)

    detectors = {
        FailureKind.OOM_KILL: _oom_kill, FailureKind.SWAP_THRASH: _swap_thrash,
        FailureKind.CPU_CREDITS_EXHAUSTED: _credits_exhausted,
        FailureKind.WORKER_TIMEOUT: _worker_timeout,
        FailureKind.GENERATOR_BOUND: _generator_bound,
        FailureKind.CPU_SATURATED: _cpu_saturated,
        FailureKind.LB_NO_HEALTHY_TARGET: _lb_no_healthy_target,
        FailureKind.CONNECTION_REFUSED: _connection_refused,
    }
    findings = [f for kind in PRECEDENCE if (f := detectors[kind](ctx)) is not None]
    if not findings:
        verdicts = _verdict_lines(ctx)
        return Failure(kind=FailureKind.NONE, evidence=verdicts[:MAX_EVIDENCE],
                       at=ctx.failing[0].started_at if ctx.failing else None,
                       summary="The service missed the SLO but no signal or log names a cause "
                               "(no OOM kill, worker timeout, thrash, CPU limit or LB outage).")
    main, rest = findings[0], findings[1:]
    evidence = main.evidence[: MAX_EVIDENCE - min(len(rest), 2)]
    for other in rest:
        if len(evidence) >= MAX_EVIDENCE or not other.evidence:
            break
        evidence.append(f"also {other.kind}: {other.evidence[0]}")
    return Failure(kind=main.kind, evidence=evidence, at=main.at, summary=main.summary)


def _latency_failed(step: StepResult, slo: Slo) -> bool:
    return (step.p95_ms > slo.p95_ms
            or step.achieved_rps < slo.min_achieved_ratio * step.offered_rps)


def _windows(variant: Variant, failing: list[StepResult], survival: SurvivalResult | None
             ) -> list[tuple[float, float]]:
    lead = max(float(variant.gunicorn.timeout_s), MIN_LEAD_S) + FOLLOW_S
    out: list[tuple[float, float]] = []
    for s in failing:
        if s.started_at <= 0:
            return [(-math.inf, math.inf)]
        end = s.ended_at if s.ended_at > 0 else s.started_at + s.duration_s
        out.append((s.started_at - lead, end + TAIL_S))
    if survival is not None:
        if survival.started_at <= 0:
            return [(-math.inf, math.inf)]
        # Until the test stopped: what killed the service happened before the load stopped.
        out.append((survival.started_at, survival.ended_at + TAIL_S))
    return out


# ---- formatting ----------------------------------------------------------------------------

def hms(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%H:%M:%S")


def _clean(text: str) -> str:
    """Drop Gunicorn's "[date] [pid] " and HAProxy's "[LEVEL] (pid) : " prefixes."""
    m = _GUNICORN_PREFIX.match(text)
    text = m.group("rest") if m else _HAPROXY_PREFIX.sub("", text)
    return text if len(text) <= LINE_CHARS else text[: LINE_CHARS - 1] + "…"


def _line(line: LogLine) -> str:
    return f"{hms(line.t)} {line.source} {_clean(line.text)}"


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.0f}"


def _instance(source: str) -> str:
    return source.split(":", 1)[1] if ":" in source else source


def _verdict_lines(ctx: _Context) -> list[str]:
    lines = []
    for s in ctx.failing:
        why = s.verdict or (f"p95 {s.p95_ms:.0f} ms, errors {s.error_rate:.1%}, "
                            f"achieved {s.achieved_rps:.1f}/{s.offered_rps:.1f} rps")
        when = f"{hms(s.started_at)} " if s.started_at > 0 else ""
        lines.append(f"{when}step {s.offered_rps:g} rps failed: {why}")
    if ctx.survival is not None:
        sv = ctx.survival
        when = f"{hms(sv.failed_at)} " if sv.failed_at else ""
        lines.append(f"{when}survival failed after {sv.seconds:.0f} s: {sv.reason or 'no reason'}")
    return lines


# ---- gunicorn pairing ----------------------------------------------------------------------

@dataclass
class _WorkerEvent:
    line: LogLine
    pid: int
    what: str  # "timeout", "sigkill", "signal", "exit", "exiting", "error"


def _worker_events(lines: Iterable[LogLine]) -> list[_WorkerEvent]:
    events = []
    for line in lines:
        text = line.text
        if m := _TIMEOUT.search(text):
            events.append(_WorkerEvent(line, int(m.group(1)), "timeout"))
        elif m := _SIGNALED.search(text):
            events.append(_WorkerEvent(line, int(m.group(1)),
                                       "sigkill" if m.group(2) == "SIGKILL" else "signal"))
        elif m := _OLD_SIGNALED.search(text):
            events.append(_WorkerEvent(line, int(m.group(1)),
                                       "sigkill" if m.group(2) == "9" else "signal"))
        elif m := _EXITED.search(text):
            events.append(_WorkerEvent(line, int(m.group(1)), "exit"))
        elif m := _EXITING.search(text):
            events.append(_WorkerEvent(line, int(m.group(1)), "exiting"))
        elif _HANDLING_ERROR.search(text) and (p := _GUNICORN_PREFIX.match(text)):
            events.append(_WorkerEvent(line, int(p.group("proc")), "error"))
    return events


def _timeout_pairs(events: list[_WorkerEvent]
                   ) -> list[tuple[_WorkerEvent, _WorkerEvent | None]]:
    """Each WORKER TIMEOUT with the same worker's death that followed it (if it was logged)."""
    pairs = []
    for ev in events:
        if ev.what != "timeout":
            continue
        follow = [f for f in events
                  if f.pid == ev.pid and f.what in ("sigkill", "signal", "exit", "exiting")
                  and f.line.source == ev.line.source
                  and 0 <= f.line.t - ev.line.t <= FOLLOW_S]
        follow.sort(key=lambda f: (f.what != "sigkill", f.line.t))
        pairs.append((ev, follow[0] if follow else None))
    return pairs


# ---- detectors -----------------------------------------------------------------------------

def _oom_kill(ctx: _Context) -> _Finding | None:
    evidence: list[tuple[float, str]] = []
    at: float | None = None
    where = ""
    # 1. The kernel's own log: "Memory cgroup out of memory: Killed process N (name) ...".
    killed_pids: set[int] = set()
    for line in ctx.kernel:
        if m := _KERNEL_KILLED.search(line.text):
            killed_pids.add(int(m.group(1)))
            evidence.append((line.t, _line(line)))
            at = line.t if at is None else min(at, line.t)
            where = where or _instance(line.source)
    if not evidence:
        for line in ctx.kernel:
            if _KERNEL_OOM.search(line.text):
                evidence.append((line.t, _line(line)))
                at = line.t if at is None else min(at, line.t)
                where = where or _instance(line.source)
                break
    # 2. The cgroup counter.
    counter_seen: set[str] = set()
    for inst, samples in ctx.samples().items():
        prev: SignalSample | None = None
        for s in samples:
            if s.oom_kills is None:
                continue
            counter_seen.add(inst)
            if prev is not None and s.oom_kills > (prev.oom_kills or 0) and ctx.inside(s.t):
                swap = "?" if prev.swap_bytes is None else _mib(prev.swap_bytes)
                evidence.append((s.t, f"{hms(s.t)} {inst} oom_kill counter {prev.oom_kills} → "
                                      f"{s.oom_kills} (memory {_mib(prev.memory_bytes)}/"
                                      f"{_mib(prev.memory_limit_bytes)} MiB, swap {swap} MiB "
                                      f"just before)"))
                at = s.t if at is None else min(at, s.t)
                where = where or inst
            prev = s
    # 3. Gunicorn's SIGKILL lines: explained by a kernel kill, or by no timeout at all.
    events = _worker_events(ctx.gunicorn)
    timed_out = {(p.line.source, p.pid) for p, _ in _timeout_pairs(events)}
    unexplained = []
    for ev in events:
        if ev.what != "sigkill":
            continue
        if ev.pid in killed_pids:
            evidence.append((ev.line.t, _line(ev.line)))
        elif (ev.line.source, ev.pid) not in timed_out:
            unexplained.append(ev)
    inferred = False
    if not evidence:
        for ev in unexplained:
            if _instance(ev.line.source) in counter_seen:
                continue  # the counter was watched and did not rise: someone else sent it
            evidence.append((ev.line.t, _line(ev.line) + " (no WORKER TIMEOUT before it; "
                             "Gunicorn only SIGKILLs timed-out workers, so the kernel did)"))
            at = ev.line.t if at is None else min(at, ev.line.t)
            where = where or _instance(ev.line.source)
            inferred = True
    if not evidence:
        return None
    evidence.sort(key=lambda e: (not _is_decisive(e[1]), e[0]))
    how = ("inferred from an unexplained SIGKILL (no OOM counter or kernel log available)"
           if inferred else "kernel OOM killer")
    return _Finding(FailureKind.OOM_KILL, at, [e for _, e in evidence],
                    f"The kernel's OOM killer killed a process on {where} at "
                    f"{hms(at) if at else '?'} ({how}): the instance ran out of memory.")


def _is_decisive(text: str) -> bool:
    return "Killed process" in text or "oom_kill counter" in text


def _worker_timeout(ctx: _Context) -> _Finding | None:
    pairs = _timeout_pairs(_worker_events(ctx.gunicorn))
    if not pairs:
        return None
    pairs.sort(key=lambda p: (p[1] is None, p[0].line.t))  # confirmed deaths first
    first, death = pairs[0]
    paired = [[_line(t.line)] + ([_line(f.line)] if f is not None else []) for t, f in pairs]
    evidence = paired[0]
    for inst, samples in ctx.samples().items():
        seen = [s for s in samples if s.oom_kills is not None and ctx.inside(s.t)]
        if seen and seen[0].oom_kills == seen[-1].oom_kills:
            peak = max(seen, key=lambda s: s.memory_bytes or 0)
            evidence.append(f"{inst} oom_kill counter stayed {seen[0].oom_kills} from "
                            f"{hms(seen[0].t)} to {hms(seen[-1].t)} (memory peak "
                            f"{_mib(peak.memory_bytes)}/{_mib(peak.memory_limit_bytes)} MiB)")
    for more in paired[1:]:
        evidence += more
    n = len(pairs)
    how = {"sigkill": "SIGKILL a second later", "signal": "a signal",
           "exit": "its exit", "exiting": "its abort"}.get(death.what if death else "", "")
    then = f", then {how}" if how else ""
    timeout_s = ctx.variant.gunicorn.timeout_s
    return _Finding(
        FailureKind.WORKER_TIMEOUT, first.line.t, evidence,
        f"Gunicorn's {timeout_s} s timeout killed {n} stalled worker{'s' if n > 1 else ''} on "
        f"{_instance(first.line.source)} from {hms(first.line.t)} (WORKER TIMEOUT{then}); "
        f"no kernel OOM kill was seen.")


def _swap_thrash(ctx: _Context) -> _Finding | None:
    if not any(_latency_failed(s, ctx.slo) for s in ctx.failing) and ctx.survival is None:
        return None
    best: tuple[float, str, list[tuple[SignalSample, float]]] | None = None
    for inst, samples in ctx.samples().items():
        hot: list[tuple[SignalSample, float]] = []
        for a, b in zip(samples, samples[1:], strict=False):
            if None in (a.major_faults, b.major_faults, b.swap_bytes) or not ctx.inside(b.t):
                continue
            dt = b.t - a.t
            rate = (b.major_faults - a.major_faults) / dt if dt > 0 else 0.0  # type: ignore[operator]
            if (b.swap_bytes or 0) >= SWAP_MIN_BYTES and rate >= MAJFLT_PER_S:
                hot.append((b, rate))
        span = (hot[-1][0].t - hot[0][0].t) if len(hot) > 1 else 0.0
        if len(hot) >= 3 and span >= THRASH_MIN_S - 1 and (best is None or len(hot) > len(best[2])):
            best = (hot[0][0].t, inst, hot)
    if best is None:
        return None
    start, inst, hot = best
    peak, rate = max(hot, key=lambda h: h[1])
    evidence = [
        f"{hms(peak.t)} {inst} swap {_mib(peak.swap_bytes)} MiB, {rate:,.0f} major faults/s "
        f"(memory {_mib(peak.memory_bytes)}/{_mib(peak.memory_limit_bytes)} MiB)",
        f"{hms(start)}–{hms(hot[-1][0].t)} {inst} thrashing: ≥{MAJFLT_PER_S:.0f} major faults/s "
        f"in {len(hot)} samples with swap in use",
        *_verdict_lines(ctx)[:2],
    ]
    return _Finding(FailureKind.SWAP_THRASH, start, evidence,
                    f"{inst} ran out of RAM and thrashed on swap from {hms(start)} (up to "
                    f"{rate:,.0f} major faults/s with {_mib(peak.swap_bytes)} MiB swapped), "
                    f"so latency collapsed.")


def _credits_exhausted(ctx: _Context) -> _Finding | None:
    if ctx.variant.credit_mode != "standard":
        return None
    baseline_ratio: float | None
    try:
        itype = load_catalog().instance(ctx.variant.instance_type)
        if not itype.burstable:
            return None
        baseline_ratio = itype.baseline_per_vcpu
    except (UserError, KeyError):  # a type the catalog lacks: judge from the signals alone
        baseline_ratio = None
    end = max((hi for _, hi in ctx.windows), default=math.inf)
    for inst, samples in ctx.samples().items():
        full = max((s.cpu_limit_cores or 0.0 for s in samples
                    if (s.credit_balance or 0.0) > CREDIT_EMPTY), default=0.0)
        for s in samples:
            if s.t > end or s.credit_balance is None or s.credit_balance > CREDIT_EMPTY:
                continue
            limit = s.cpu_limit_cores
            if limit is None:
                continue
            if full > 0:
                target = full * (baseline_ratio or 0.5) * 1.5
                if limit > target:
                    continue
                fell = f"CPU limit {full:.2f} → {limit:.2f} cores (baseline)"
            else:
                fell = f"CPU limit {limit:.2f} cores (baseline; started with no credits)"
            busy = [x for x in samples if ctx.inside(x.t) and x.t >= s.t
                    and x.cpu_used_cores is not None and x.cpu_limit_cores]
            evidence = [f"{hms(s.t)} {inst} credit balance {s.credit_balance:.1f} "
                        f"(standard mode): {fell}"]
            if busy:
                peak = max(busy, key=lambda x: x.cpu_used_cores or 0.0)
                evidence.append(f"{hms(peak.t)} {inst} CPU {peak.cpu_used_cores:.2f}/"
                                f"{peak.cpu_limit_cores:.2f} cores after the credits ran out")
            evidence += _verdict_lines(ctx)[:2]
            return _Finding(FailureKind.CPU_CREDITS_EXHAUSTED, s.t, evidence,
                            f"{inst} ({ctx.variant.instance_type}, standard credits) spent its "
                            f"CPU credits at {hms(s.t)} and was held to its baseline CPU.")
    return None


def _generator_bound(ctx: _Context) -> _Finding | None:
    if ctx.survival is not None or not ctx.failing:
        return None
    if not all(s.generator_saturated for s in ctx.failing):
        return None
    first = ctx.failing[0]
    evidence = [f"{hms(s.started_at) + ' ' if s.started_at > 0 else ''}step {s.offered_rps:g} "
                f"rps invalid: load generator CPU {s.generator_cpu:.2f} cores (saturated), "
                f"achieved {s.achieved_rps:.1f} rps" for s in ctx.failing]
    return _Finding(FailureKind.GENERATOR_BOUND, first.started_at or None, evidence,
                    f"The load generator saturated at {first.offered_rps:g} rps offered, so the "
                    f"server was never pushed to failure (use --load-workers).")


def _cpu_saturated(ctx: _Context) -> _Finding | None:
    best: tuple[float, str, StepResult, list[SignalSample], int] | None = None
    for step in ctx.failing:
        if not _latency_failed(step, ctx.slo):
            continue
        lo = step.started_at if step.started_at > 0 else -math.inf
        hi = (step.ended_at or step.started_at + step.duration_s) if step.started_at > 0 \
            else math.inf
        for inst, samples in ctx.samples().items():
            inside = [s for s in samples if lo <= s.t <= hi
                      and s.cpu_used_cores is not None and s.cpu_limit_cores]
            busy = [s for s in inside
                    if (s.cpu_used_cores or 0.0) >= CPU_BUSY * (s.cpu_limit_cores or math.inf)]
            if len(inside) >= 3 and len(busy) >= CPU_SUSTAINED * len(inside):
                share = len(busy) / len(inside)
                if best is None or share > best[0]:
                    best = (share, inst, step, busy, len(inside))
    if best is None:
        return None
    _, inst, step, busy, total = best
    used = sum(s.cpu_used_cores or 0.0 for s in busy) / len(busy)
    limit = sum(s.cpu_limit_cores or 0.0 for s in busy) / len(busy)
    evidence = [f"{hms(busy[0].t)} {inst} CPU {used:.2f}/{limit:.2f} cores in {len(busy)} of "
                f"{total} samples during the {step.offered_rps:g} rps step"]
    throttled = [s.throttled_s for s in busy if s.throttled_s is not None]
    if len(throttled) >= 2:
        evidence.append(f"{inst} throttled {throttled[-1] - throttled[0]:.1f} s by its CPU quota "
                        f"during the step")
    evidence += _verdict_lines(ctx)[:2]
    return _Finding(FailureKind.CPU_SATURATED, busy[0].t, evidence,
                    f"{inst} ran at its CPU limit ({used:.2f} of {limit:.2f} cores) while the "
                    f"{step.offered_rps:g} rps step missed the latency SLO.")


def _errors(ctx: _Context) -> tuple[int, int, int]:
    """(total, 503s, refused/reset) over the failing steps."""
    total = e503 = refused = 0
    for s in ctx.failing:
        for kind, n in s.errors_by_kind.items():
            total += n
            if _ERR_503.search(kind):
                e503 += n
            elif _ERR_REFUSED.search(kind):
                refused += n
    return total, e503, refused


def _lb_no_healthy_target(ctx: _Context) -> _Finding | None:
    nosrv = [x for x in ctx.haproxy if _HAPROXY_NOSRV.search(x.text)]
    down = [x for x in ctx.haproxy if _HAPROXY_DOWN.search(x.text)]
    nosrv_503 = [x for x in ctx.haproxy if _HAPROXY_503.search(x.text)]
    total, e503, _ = _errors(ctx)
    dominated = total > 0 and e503 >= DOMINANT * total
    if not nosrv and not (dominated and ctx.variant.load_balancer):
        return None
    evidence = [_line(x) for x in nosrv[:2]] + [_line(x) for x in down[:3]]
    if nosrv_503:
        evidence.append(f"{hms(nosrv_503[0].t)} haproxy {len(nosrv_503)} requests answered 503 "
                        f"with no server (<NOSRV>), first: {_clean(nosrv_503[0].text)[:90]}")
    if total:
        evidence.append(f"{e503} of {total} errors in the failing steps were 503")
    first = nosrv or down or nosrv_503
    t = first[0].t if first else (ctx.failing[0].started_at if ctx.failing else None)
    return _Finding(FailureKind.LB_NO_HEALTHY_TARGET, t, evidence,
                    f"The load balancer had no healthy target{' from ' + hms(t) if t else ''} "
                    f"and answered 503.")


def _connection_refused(ctx: _Context) -> _Finding | None:
    total, _, refused = _errors(ctx)
    survival_says = ctx.survival is not None and bool(_ERR_REFUSED.search(ctx.survival.reason))
    if not (total > 0 and refused >= DOMINANT * total) and not survival_says:
        return None
    evidence = []
    if total:
        kinds = sorted(((n, k) for s in ctx.failing for k, n in s.errors_by_kind.items()
                        if _ERR_REFUSED.search(k)), reverse=True)
        evidence.append(f"{refused} of {total} errors in the failing steps were connection "
                        f"refused/reset (top: {kinds[0][1]!r} × {kinds[0][0]})")
    if survival_says and ctx.survival is not None:
        evidence.append(_verdict_lines(ctx)[-1])
    evidence += [_line(x) for x in ctx.other if x.source.startswith("supervisor")][:3]
    t = (ctx.survival.failed_at if ctx.survival is not None else None) or (
        ctx.failing[0].started_at if ctx.failing else None)
    return _Finding(FailureKind.CONNECTION_REFUSED, t, evidence,
                    "Clients were refused or reset: nothing was listening, and no signal or log "
                    "shows why.")


def _dedupe_haproxy(lines: list[LogLine]) -> list[LogLine]:
    """HAProxy prints state changes twice (stderr with a level prefix, and the log itself)."""
    out: list[LogLine] = []
    for line in lines:
        body = _HAPROXY_PREFIX.sub("", line.text).replace("'", "")
        if out and abs(out[-1].t - line.t) < 0.5 and \
                _HAPROXY_PREFIX.sub("", out[-1].text).replace("'", "") == body:
            continue
        out.append(line)
    return out
