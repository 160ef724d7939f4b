"""Issue 12 #2: signals from GetMetricData over known series, never ListMetrics, and the last
agent interval awaited so the minute with the OOM kill is not lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_aws_support import REGION, instances, moto_session

from experiments.backends.aws import AwsDeployment
from experiments.backends.aws.signals import CREDIT_NOTE, wait_for_last_interval
from stacks.variant import load_variant


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    with moto_session(monkeypatch, tmp_path) as session:
        yield session


class NoListMetrics:
    """A session whose CloudWatch clients refuse ListMetrics (it lags up to 15 minutes for new
    metrics: on a fresh instance it finds nothing) and count GetMetricData calls."""

    def __init__(self, real: Any) -> None:
        self.real, self.get_metric_data = real, 0

    def client(self, service: str, region_name: str | None = None) -> Any:
        client = self.real.client(service, region_name=region_name)
        if service == "cloudwatch":
            def refuse(**_: Any) -> None:
                raise AssertionError("ListMetrics was called")

            def count(**_: Any) -> None:
                self.get_metric_data += 1

            client.meta.events.register("before-call.cloudwatch.ListMetrics", refuse)
            client.meta.events.register("before-call.cloudwatch.GetMetricData", count)
        return client


def put_agent(cw: Any, instance: str, t: float, mem: float, swap: float, idle: float) -> None:
    """What the agent config publishes: namespace scalelab, InstanceId the only dimension."""
    dims = [{"Name": "InstanceId", "Value": instance}]
    stamp = datetime.fromtimestamp(t, UTC)
    cw.put_metric_data(Namespace="scalelab", MetricData=[
        {"MetricName": name, "Dimensions": dims, "Timestamp": stamp, "Value": value,
         "Unit": "Percent", "StorageResolution": 1}
        for name, value in (("mem_used_percent", mem), ("swap_used_percent", swap),
                            ("cpu_usage_idle", idle), ("cpu_usage_iowait", 0.0),
                            ("cpu_usage_steal", 5.0))])


def test_fresh_instance_signals_come_from_known_series(aws: Any) -> None:
    variant = load_variant("micro-swap")  # t2.micro: 1 vCPU, 1024 MiB; 2048 MiB swap
    ids = instances(aws, 2, "run-1", "micro-swap")
    cw = aws.client("cloudwatch")
    now = time.time()
    for instance in ids:
        put_agent(cw, instance, now - 20, mem=50.0, swap=0.0, idle=55.0)
        put_agent(cw, instance, now - 5, mem=75.0, swap=25.0, idle=15.0)
        dims = [{"Name": "InstanceId", "Value": instance}]
        cw.put_metric_data(Namespace="AWS/EC2", MetricData=[
            {"MetricName": "CPUCreditBalance", "Dimensions": dims, "Value": 30.0,
             "Timestamp": datetime.fromtimestamp(now - 5, UTC)},
            {"MetricName": "CPUSurplusCreditsCharged", "Dimensions": dims, "Value": 1.5,
             "Timestamp": datetime.fromtimestamp(now - 5, UTC)}])
    session = NoListMetrics(aws)
    deployment = AwsDeployment(variant=variant, url="http://127.0.0.1:9", instance_ids=ids,
                               started_at=now - 120, region=REGION, session=session,
                               last_interval_timeout_s=5, last_interval_poll_s=0.1)
    observed = deployment.observe()
    assert session.get_metric_data >= 2  # the wait, then the collection
    first = [s for s in observed.signals if s.instance == ids[0]]
    mib = 1024 * 1024
    assert [s.memory_bytes for s in first] == [512 * mib, 768 * mib]
    assert [s.swap_bytes for s in first] == [0, 512 * mib]
    assert [s.cpu_used_cores for s in first] == pytest.approx([0.4, 0.8])  # minus idle, steal
    assert first[-1].credit_balance == 30.0 and first[-1].surplus_credits == 1.5
    assert CREDIT_NOTE in [line.text for line in observed.logs]


def test_the_last_interval_is_awaited_until_it_arrives(aws: Any) -> None:
    (instance,) = instances(aws, 1, "run-1")
    cw = aws.client("cloudwatch")
    end = time.time()
    put_agent(cw, instance, end - 60, mem=50.0, swap=0.0, idle=50.0)  # an older interval only
    sleeps: list[float] = []

    def agent_flushes(seconds: float) -> None:  # the agent's upload lands during the wait
        sleeps.append(seconds)
        if len(sleeps) == 2:
            put_agent(cw, instance, end - 3, mem=99.0, swap=0.0, idle=0.0)

    missing = wait_for_last_interval(cw, [instance], end, timeout_s=60, poll_s=1,
                                     sleep=agent_flushes)
    assert missing == [] and len(sleeps) == 2


def test_a_last_interval_that_never_comes_is_a_note(aws: Any) -> None:
    (instance,) = instances(aws, 1, "run-1")
    cw = aws.client("cloudwatch")
    now = time.time()
    put_agent(cw, instance, now - 90, mem=50.0, swap=0.0, idle=50.0)
    deployment = AwsDeployment(variant=load_variant("micro"), url="http://127.0.0.1:9",
                               instance_ids=[instance], started_at=now - 300, region=REGION,
                               session=aws, last_interval_timeout_s=0.3,
                               last_interval_poll_s=0.1)
    started = time.monotonic()
    observed = deployment.observe()
    assert 0.2 <= time.monotonic() - started < 10
    assert len(observed.signals) == 1
    assert any("no agent data for the last 10 s" in line.text and instance in line.text
               for line in observed.logs)
