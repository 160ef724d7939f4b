"""CloudWatch metrics → SignalSamples: what the kernel and the hypervisor saw on each instance.

Every query is built from what is already known — the CloudWatch agent's namespace and its one
dimension (InstanceId, fixed by userdata/render.py's agent config) and AWS/EC2's InstanceId —
and asked with GetMetricData. ListMetrics is not used: it can lag up to 15 minutes behind a new
metric, so for a fresh instance it finds no memory or swap series at all.

Resolutions: the agent publishes memory, swap and CPU every 10 s (high-resolution custom
metrics); EC2's CPUUtilization is 1-minute with detailed monitoring (enabled by the stack);
CPU credit metrics (CPUCreditBalance, CPUSurplusCreditsCharged) are 5-minute only, whatever the
monitoring setting, so credit samples are 5 minutes apart.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from experiments.model import SignalSample
from userdata.render import METRICS_INTERVAL_S, METRICS_NAMESPACE

AGENT_METRICS = ("mem_used_percent", "swap_used_percent", "cpu_usage_idle", "cpu_usage_iowait",
                 "cpu_usage_steal")
EC2_CPU_PERIOD_S = 60
CREDIT_PERIOD_S = 300
EC2_METRICS = {  # metric -> (statistic, period)
    "CPUUtilization": ("Average", EC2_CPU_PERIOD_S),
    "CPUCreditBalance": ("Average", CREDIT_PERIOD_S),
    "CPUSurplusCreditsCharged": ("Sum", CREDIT_PERIOD_S),
}
MAX_QUERIES = 500  # get_metric_data's limit per call
CREDIT_NOTE = ("CPU credit metrics (CPUCreditBalance, CPUSurplusCreditsCharged) are published "
               "every 5 minutes only: credit samples are 5 minutes apart.")


@dataclass(frozen=True)
class InstanceShape:
    vcpu: int
    memory_bytes: int
    swap_bytes: int


def _dims(instance: str) -> list[dict[str, str]]:
    return [{"Name": "InstanceId", "Value": instance}]


def queries(instance_ids: list[str],
            agent_period_s: int = METRICS_INTERVAL_S) -> tuple[list[dict[str, Any]],
                                                               dict[str, tuple[str, str]]]:
    """GetMetricData queries for every known series, and query id -> (instance, metric)."""
    out: list[dict[str, Any]] = []
    meaning: dict[str, tuple[str, str]] = {}

    def add(instance: str, namespace: str, name: str, stat: str, period: int) -> None:
        qid = f"q{len(out)}"
        meaning[qid] = (instance, name)
        out.append({"Id": qid, "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": namespace, "MetricName": name, "Dimensions": _dims(instance)},
            "Period": period, "Stat": stat}})

    for instance in instance_ids:
        for name in AGENT_METRICS:
            add(instance, METRICS_NAMESPACE, name, "Average", agent_period_s)
        for name, (stat, period) in EC2_METRICS.items():
            add(instance, "AWS/EC2", name, stat, period)
    return out, meaning


def _fetch(cloudwatch: Any, batch: list[dict[str, Any]], start: float,
           end: float) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {"MetricDataQueries": batch,
                              "StartTime": datetime.fromtimestamp(start, UTC),
                              "EndTime": datetime.fromtimestamp(end, UTC),
                              "ScanBy": "TimestampAscending"}
    results: list[dict[str, Any]] = []
    while True:
        page = cloudwatch.get_metric_data(**kwargs)
        results.extend(page.get("MetricDataResults", []))
        if not page.get("NextToken"):
            return results
        kwargs["NextToken"] = page["NextToken"]


def collect_signals(cloudwatch: Any, instance_ids: list[str], start: float, end: float,
                    shape: InstanceShape,
                    agent_period_s: int = METRICS_INTERVAL_S) -> list[SignalSample]:
    """One SignalSample per instance per timestamp that has any datapoint, sorted by time."""
    all_queries, meaning = queries(instance_ids, agent_period_s)
    values: dict[tuple[str, float], dict[str, float]] = defaultdict(dict)
    for i in range(0, len(all_queries), MAX_QUERIES):
        batch = all_queries[i:i + MAX_QUERIES]
        for result in _fetch(cloudwatch, batch, start - CREDIT_PERIOD_S, end + EC2_CPU_PERIOD_S):
            instance, name = meaning[result["Id"]]
            for stamp, value in zip(result.get("Timestamps", []), result.get("Values", []),
                                    strict=False):
                values[(instance, stamp.timestamp())][name] = float(value)
    return _to_samples(values, shape)


def wait_for_last_interval(cloudwatch: Any, instance_ids: list[str], end: float,
                           timeout_s: float, poll_s: float = 5.0,
                           sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Wait until every instance's agent has published the interval that holds `end` (the
    agent flushes every METRICS_FLUSH_S s, CloudWatch takes a little longer): the last
    minute of a survival test is often the one with the OOM kill. Returns the instances
    still missing it at the timeout (empty when all arrived)."""
    deadline = time.monotonic() + timeout_s
    # The agent's last tick before `end` is within one interval of it, and CloudWatch stamps
    # a point with the start of its (aligned) period: that start is within two intervals.
    wanted = end - 2 * METRICS_INTERVAL_S
    batch = [{"Id": f"m{k}", "ReturnData": True, "MetricStat": {
        "Metric": {"Namespace": METRICS_NAMESPACE, "MetricName": "mem_used_percent",
                   "Dimensions": _dims(instance)},
        "Period": METRICS_INTERVAL_S, "Stat": "Maximum"}}
        for k, instance in enumerate(instance_ids)]
    while True:
        latest = {k: 0.0 for k in range(len(instance_ids))}
        for result in _fetch(cloudwatch, batch, end - 300, end + 300):
            stamps = [t.timestamp() for t in result.get("Timestamps", [])]
            latest[int(result["Id"][1:])] = max(stamps, default=0.0)
        missing = [instance_ids[k] for k, t in latest.items() if t < wanted]
        if not missing or time.monotonic() + poll_s > deadline:
            return missing
        sleep(poll_s)


def _to_samples(values: dict[tuple[str, float], dict[str, float]],
                shape: InstanceShape) -> list[SignalSample]:
    """Credit metrics are 5-minute points: each carries forward onto the 10 s samples of its
    instance (a step function, as published) instead of making samples of its own."""
    credit_names = ("CPUCreditBalance", "CPUSurplusCreditsCharged")
    samples: list[SignalSample] = []
    balance: dict[str, float] = {}
    surplus_total: dict[str, float] = {}
    has_primary = {instance for (instance, _t), metric in values.items()
                   if any(name not in credit_names for name in metric)}
    for (instance, t), metric in sorted(values.items(), key=lambda item: (item[0][1], item[0][0])):
        if "CPUCreditBalance" in metric:
            balance[instance] = metric["CPUCreditBalance"]
        if "CPUSurplusCreditsCharged" in metric:
            surplus_total[instance] = surplus_total.get(instance, 0.0) + \
                metric["CPUSurplusCreditsCharged"]
        if instance in has_primary and all(name in credit_names for name in metric):
            continue
        mem = metric.get("mem_used_percent")
        swap = metric.get("swap_used_percent")
        samples.append(SignalSample(
            t=t, instance=instance,
            memory_bytes=None if mem is None else int(mem / 100 * shape.memory_bytes),
            memory_limit_bytes=shape.memory_bytes,
            swap_bytes=None if swap is None else int(swap / 100 * shape.swap_bytes),
            cpu_used_cores=_cpu_cores(metric, shape.vcpu),
            cpu_limit_cores=float(shape.vcpu),
            credit_balance=balance.get(instance),
            surplus_credits=surplus_total.get(instance),
        ))
    return samples


def _cpu_cores(metric: dict[str, float], vcpu: int) -> float | None:
    """The agent's 10 s view (busy = not idle, not waiting on I/O, not stolen by the
    hypervisor), else EC2's 1-minute CPUUtilization."""
    idle = metric.get("cpu_usage_idle")
    if idle is not None:
        busy = 100.0 - idle - metric.get("cpu_usage_iowait", 0.0) - metric.get(
            "cpu_usage_steal", 0.0)
        return max(0.0, busy) / 100 * vcpu
    cpu = metric.get("CPUUtilization")
    return None if cpu is None else cpu / 100 * vcpu
