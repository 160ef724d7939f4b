"""A running AWS stack: signals from CloudWatch, logs through SSM, never a crash on either."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from experiments.backends.aws.logs import collect_log_group, collect_logs, note
from experiments.backends.aws.signals import (
    CREDIT_NOTE,
    InstanceShape,
    collect_signals,
    wait_for_last_interval,
)
from experiments.backends.base import Deployment
from experiments.model import LogLine, Observations
from stacks.catalog import load_catalog
from userdata.render import METRICS_INTERVAL_S


@dataclass
class AwsDeployment(Deployment):
    region: str = ""
    target_group_arn: str = ""
    log_group: str = ""
    """The stack's CloudWatch Logs group: where logs come from when SSM cannot deliver them."""
    session: Any = field(default=None, repr=False)
    last_interval_timeout_s: float = 150.0
    """How long observe() waits for the agent's last interval to reach CloudWatch."""
    last_interval_poll_s: float = 5.0
    ssm_timeout_s: float = 90.0
    on_output: Callable[[str], None] | None = field(default=None, repr=False)

    def _client(self, service: str) -> Any:
        return self.session.client(service, region_name=self.region)

    def shape(self) -> InstanceShape:
        mib = 1024 * 1024
        return InstanceShape(vcpu=self.variant.vcpu, memory_bytes=self.variant.memory_mib * mib,
                             swap_bytes=self.variant.swap_mib * mib)

    def observe(self) -> Observations:
        """Everything since `started_at`: CloudWatch samples, then Gunicorn and kernel lines."""
        now = time.time()
        observations = Observations()
        try:
            cloudwatch = self._client("cloudwatch")
            missing = wait_for_last_interval(cloudwatch, self.instance_ids, now,
                                             self.last_interval_timeout_s,
                                             self.last_interval_poll_s)
            if missing:
                observations.logs.append(note(now, "CloudWatch had no agent data for the last "
                                                   f"{METRICS_INTERVAL_S} s of "
                                                   f"{', '.join(missing)} after waiting "
                                                   f"{self.last_interval_timeout_s:g} s; the "
                                                   "last samples may be missing"))
            observations.signals = collect_signals(cloudwatch, self.instance_ids,
                                                   self.started_at, now, self.shape())
        except Exception as exc:
            observations.logs.append(note(now, f"CloudWatch get_metric_data failed, no signals "
                                               f"collected: {exc}"))
        if load_catalog().instance(self.variant.instance_type).burstable:
            observations.logs.append(note(now, CREDIT_NOTE))
        try:
            observations.logs.extend(collect_logs(self._client("ssm"), self.instance_ids,
                                                  self.started_at, self.ssm_timeout_s))
        except Exception as exc:
            observations.logs.append(note(now, f"SSM log collection failed: {exc}"))
        observations.logs.extend(self._log_group_fallback(observations, now))
        observations.logs.sort(key=lambda line: line.t)
        return observations

    def _log_group_fallback(self, observations: Observations, now: float) -> list[LogLine]:
        """Instances SSM returned nothing for (a running Gunicorn always logs its boot)."""
        covered = {line.source.split(":", 1)[1] for line in observations.logs
                   if line.source.startswith(("gunicorn:", "kernel:"))}
        missing = [i for i in self.instance_ids if i not in covered]
        if not self.log_group or not missing:
            return []
        lines: list[LogLine] = []
        for instance in missing:
            try:
                lines.extend(collect_log_group(self._client("logs"), self.log_group, instance,
                                               self.started_at))
            except Exception as exc:
                lines.append(note(now, f"CloudWatch Logs {self.log_group} for {instance} "
                                       f"failed: {exc}"))
        return lines
