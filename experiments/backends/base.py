"""What every backend (local emulation, AWS) offers the runner.

A backend hands out a Deployment inside a context manager; teardown lives in its `finally`
(PerfKitBenchmarker's lesson: teardown first, publishing after). Everything the runner needs
afterwards is collected *before* the context exits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from experiments.model import LogLine, Observations
from stacks.variant import Variant


@dataclass
class Leftover:
    """Something a run created and did not remove (a process, cgroup, swapfile, AWS resource)."""

    kind: str
    ident: str
    detail: str = ""
    run_id: str = ""


@dataclass
class Deployment:
    """A healthy, reachable stack. `url` is the only address the load driver may target."""

    variant: Variant
    url: str
    instance_ids: list[str]
    started_at: float
    extra: dict[str, object] = field(default_factory=dict)

    def observe(self) -> Observations:
        """Signals and logs from deploy until now (called before teardown). Backends override."""
        raise NotImplementedError

    def set_credits(self, start: str) -> bool:
        """Switch burstable instances' credit balance to `start` ("exhausted" / "launch") to
        measure the sustained capacity on the same deployment. False = not possible here: a
        real EC2 instance's balance cannot be forced (the runner then estimates it)."""
        return False

    def cpu_seconds(self) -> float | None:
        """Cumulative CPU-seconds used by all of the deployment's instances (a counter: only
        differences mean something); None when this backend cannot read it right away.

        The capacity search divides it by the requests served to get the service demand."""
        return None

    def cpu_limit_cores(self) -> float | None:
        """CPU the instances may use together right now, in cores; None when unknown."""
        return None

    def logs_since(self, t: float) -> list[LogLine] | None:
        """Log lines (Gunicorn, kernel) at or after unix time `t`, read cheaply while the load
        runs, so the survival test can stop at the server's first worker loss; None when this
        backend has no such feed (AWS: the logs come by SSM at the end, and the survival test
        runs to its limit)."""
        return None


class Backend(Protocol):
    name: str

    @property
    def cpu_scale(self) -> float | None:
        """Host cores per emulated vCPU (local); None where CPU samples are in vCPUs."""
        ...

    @property
    def dilation(self) -> float:
        """How many times slower than the AWS box an emulated box runs (1 on AWS)."""
        ...

    @property
    def concurrent_cores(self) -> float:
        """Host cores the variants' boxes may use at once when measured together (inf: each
        variant is its own hardware)."""
        ...

    def lane_cores(self, variant: Variant) -> float:
        """Host cores `variant` takes while it is loaded (0: none of this host's)."""
        ...

    def new_round(self) -> None:
        """A round of the schedule begins (the local backend moves pinned instances)."""
        ...

    def preflight(self, variants: list[Variant]) -> None:
        """Check prerequisites (tools, credentials, budget) before anything is created;
        raise a UserError naming what is missing."""
        ...

    def deployed(self, variant: Variant) -> AbstractContextManager[Deployment]:
        """Deploy, wait healthy, yield; tear down in `finally` whatever happens inside."""
        ...

    def leftovers(self) -> list[Leftover]:
        ...

    def delete_leftovers(self) -> Iterator[Leftover]:
        """Remove each leftover, yielding it once removed."""
        ...
