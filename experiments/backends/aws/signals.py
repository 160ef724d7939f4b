"""CloudWatch metrics → SignalSamples: what the kernel and the hypervisor saw on each instance.

AWS/EC2 gives CPU and credits; memory and swap only exist when the CloudWatch agent publishes
them (`mem_used_percent`, `swap_used_percent`). The agent's namespace and extra dimensions
(e.g. `host`) depend on its config, so those metrics are discovered with `list_metrics`
filtered on the InstanceId rather than guessed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from experiments.model import SignalSample

AGENT_NAMESPACES = ("scalelab", "CWAgent")
EC2_METRICS = {  # metric -> statistic
    "CPUUtilization": "Average",
    "CPUCreditBalance": "Average",
    "CPUSurplusCreditsCharged": "Sum",
}
AGENT_METRICS = ("mem_used_percent", "swap_used_percent")
MAX_QUERIES = 500  # get_metric_data's limit per call


@dataclass(frozen=True)
class InstanceShape:
    vcpu: int
    memory_bytes: int
    swap_bytes: int


def _agent_metrics(cloudwatch: Any, instance_id: str) -> dict[str, dict[str, Any]]:
    """metric name -> full Metric (namespace + all dimensions) the agent published."""
    found: dict[str, dict[str, Any]] = {}
    for namespace in AGENT_NAMESPACES:
        for name in AGENT_METRICS:
            if name in found:
                continue
            pages = cloudwatch.get_paginator("list_metrics").paginate(
                Namespace=namespace, MetricName=name,
                Dimensions=[{"Name": "InstanceId", "Value": instance_id}])
            for page in pages:
                for metric in page.get("Metrics", []):
                    found.setdefault(name, metric)
    return found


def _queries(cloudwatch: Any, instance_ids: list[str],
             period_s: int) -> tuple[list[dict[str, Any]], dict[str, tuple[str, str]]]:
    queries: list[dict[str, Any]] = []
    meaning: dict[str, tuple[str, str]] = {}  # query id -> (instance, metric)
    for instance in instance_ids:
        metrics = {name: {"Namespace": "AWS/EC2", "MetricName": name,
                          "Dimensions": [{"Name": "InstanceId", "Value": instance}]}
                   for name in EC2_METRICS}
        metrics.update(_agent_metrics(cloudwatch, instance))
        for name, metric in metrics.items():
            qid = f"q{len(queries)}"
            meaning[qid] = (instance, name)
            queries.append({"Id": qid, "ReturnData": True, "MetricStat": {
                "Metric": {k: metric[k] for k in ("Namespace", "MetricName", "Dimensions")},
                "Period": period_s, "Stat": EC2_METRICS.get(name, "Average")}})
    return queries, meaning


def collect_signals(cloudwatch: Any, instance_ids: list[str], start: float, end: float,
                    shape: InstanceShape, period_s: int = 60) -> list[SignalSample]:
    """One SignalSample per instance per period that has any datapoint, sorted by time."""
    queries, meaning = _queries(cloudwatch, instance_ids, period_s)
    values: dict[tuple[str, float], dict[str, float]] = defaultdict(dict)
    start_dt = datetime.fromtimestamp(start - period_s, UTC)
    end_dt = datetime.fromtimestamp(end + period_s, UTC)
    for i in range(0, len(queries), MAX_QUERIES):
        kwargs: dict[str, Any] = {"MetricDataQueries": queries[i:i + MAX_QUERIES],
                                  "StartTime": start_dt, "EndTime": end_dt,
                                  "ScanBy": "TimestampAscending"}
        while True:
            page = cloudwatch.get_metric_data(**kwargs)
            for result in page.get("MetricDataResults", []):
                instance, name = meaning[result["Id"]]
                for stamp, value in zip(result.get("Timestamps", []), result.get("Values", []),
                                        strict=False):
                    values[(instance, stamp.timestamp())][name] = float(value)
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
    return _to_samples(values, shape)


def _to_samples(values: dict[tuple[str, float], dict[str, float]],
                shape: InstanceShape) -> list[SignalSample]:
    samples: list[SignalSample] = []
    surplus_total: dict[str, float] = defaultdict(float)
    for (instance, t), metric in sorted(values.items(), key=lambda item: (item[0][1], item[0][0])):
        cpu = metric.get("CPUUtilization")
        mem = metric.get("mem_used_percent")
        swap = metric.get("swap_used_percent")
        surplus = metric.get("CPUSurplusCreditsCharged")
        if surplus is not None:
            surplus_total[instance] += surplus
        samples.append(SignalSample(
            t=t, instance=instance,
            memory_bytes=None if mem is None else int(mem / 100 * shape.memory_bytes),
            memory_limit_bytes=shape.memory_bytes,
            swap_bytes=None if swap is None else int(swap / 100 * shape.swap_bytes),
            cpu_used_cores=None if cpu is None else cpu / 100 * shape.vcpu,
            cpu_limit_cores=float(shape.vcpu),
            credit_balance=metric.get("CPUCreditBalance"),
            surplus_credits=surplus_total.get(instance),
        ))
    return samples
