"""AwsBackend: deploy a variant with the Pulumi Automation API, wait until it really serves,
hand it to the runner, and destroy it in `finally` whatever happened (error, Ctrl-C).

Money is real here, so the order is strict: check prerequisites and the budget before creating
anything; remember every stack brought up (and its region) on disk before `up`, so that a
killed run can still be swept by `leftovers --backend aws --delete`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from experiments.backends.aws.automation import (
    INSTALL_HINT,
    LEFTOVERS_HINT,
    error_line,
    open_stack,
    plain_outputs,
    pulumi_env,
    write_run_config,
)
from experiments.backends.aws.deployment import AwsDeployment
from experiments.backends.aws.evidence import save_evidence, verify_swap
from experiments.backends.aws.health import wait_healthy
from experiments.backends.aws.state import LocalState
from experiments.backends.aws.sweep import (
    MANUAL_RUN,
    TaggedResource,
    delete_resources,
    find_tagged,
)
from experiments.backends.base import Leftover
from experiments.errors import UserError
from experiments.load.driver import check_url
from stacks.variant import DEFAULT_REGION, PROJECT_DIR, Variant, load_variants

DEFAULT_STATE_DIR = Path("~/.scalelab/pulumi-state")
NO_CREDENTIALS = ("no AWS credentials were found; run `aws configure` (or set AWS_PROFILE, or "
                  "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) before using --backend aws.")


def _hourly_estimate(variant: Variant) -> float:
    """Fallback when the runner passes no estimator: one billed hour of the stack."""
    from stacks.catalog import load_catalog

    catalog = load_catalog()
    hourly = catalog.instance(variant.instance_type).hourly_price(variant.region) * variant.count
    if variant.load_balancer:
        hourly += catalog.region(variant.region).alb_hour
    return hourly


class AwsBackend:
    """Satisfies experiments.backends.base.Backend for real AWS accounts."""

    name = "aws"
    health_poll_s: float = 5.0
    sweep_retry_s: float = 10.0
    lock_wait_s: float = 300.0
    """How long destroy waits for a stack lock an interrupted `pulumi up` still holds."""
    lock_poll_s: float = 5.0
    cpu_scale: float | None = None
    """CPU samples are in the instances' own vCPUs."""
    dilation: float = 1.0
    concurrent_cores: float = math.inf
    """Every variant is its own hardware: all of them are loaded at once."""

    def lane_cores(self, variant: Variant) -> float:
        return 0.0  # not on this host

    def new_round(self) -> None:
        """Nothing to move: every instance is its own hardware."""

    def __init__(self, project_dir: Path = PROJECT_DIR, state_dir: Path | None = None,
                 run_id: str = "manual", max_usd: float | None = None,
                 estimate_usd: Callable[[Variant], float] | None = None,
                 workspace_factory: Callable[..., Any] | None = None,
                 session: Any | None = None, on_output: Callable[[str], None] | None = None,
                 health_timeout_s: float = 600, evidence_dir: Path | None = None) -> None:
        self.project_dir = Path(project_dir)
        self.state_dir = Path(state_dir or DEFAULT_STATE_DIR).expanduser()
        self.run_id = run_id
        self.max_usd = max_usd
        self.estimate_usd = estimate_usd or _hourly_estimate
        self._factory = workspace_factory
        self._session = session
        self._on_output = on_output
        self.health_timeout_s = health_timeout_s
        self.evidence_dir = Path(evidence_dir) if evidence_dir is not None else None
        """The run folder: a stack that fails to come up leaves its boot evidence in
        <evidence_dir>/<variant>/boot-evidence (default: under the state directory)."""
        self._state = LocalState(self.state_dir)
        self._console: Any = None

    # ---- plumbing ------------------------------------------------------------------------
    @property
    def session(self) -> Any:
        if self._session is None:
            import boto3

            self._session = boto3.Session()
        return self._session

    def _emit(self, line: str) -> None:
        """Pulumi's and our own progress lines: to the runner's display, else to stderr."""
        line = line.rstrip("\n")
        if self._on_output is not None:
            self._on_output(line)
            return
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        self._console.print(line, style="dim", markup=False, highlight=False)

    def _pulumi_missing(self) -> bool:
        return self._factory is None and shutil.which("pulumi") is None

    # ---- before anything is created --------------------------------------------------------
    def preflight(self, variants: list[Variant]) -> None:
        """Refuse early, with one sentence, what would fail (or overspend) half-way."""
        if self._pulumi_missing():
            raise UserError(f"the `pulumi` command was not found; {INSTALL_HINT} to use "
                            "--backend aws, or run without it to use the local backend.")
        from botocore.exceptions import BotoCoreError

        try:
            credentials = self.session.get_credentials()
        except BotoCoreError as exc:
            raise UserError(f"the AWS configuration could not be read ({exc}); fix AWS_PROFILE "
                            "or ~/.aws/config before using --backend aws.") from None
        if credentials is None:
            raise UserError(NO_CREDENTIALS)
        if self.max_usd is not None:
            total = sum(self.estimate_usd(v) for v in variants)
            if total > self.max_usd:
                names = ", ".join(v.name for v in variants)
                raise UserError(f"the estimated cost of deploying {names} is ${total:.2f}, above "
                                f"--max-usd {self.max_usd:.2f}; raise --max-usd or pick fewer "
                                "variants with --variants.")

    # ---- one deployment ---------------------------------------------------------------------
    @contextmanager
    def deployed(self, variant: Variant) -> Iterator[AwsDeployment]:
        """select → config → up → wait healthy → check swap → yield → destroy (in `finally`).

        Ctrl-C during `up` leaves the interrupted CLI holding the stack lock for a while: the
        update is cancelled, destroy (with refresh) waits for the lock, and the run's tagged
        resources are swept as the last resort (resources a cancelled update created but never
        recorded are not in Pulumi's state)."""
        run_id = self.run_id if self.run_id != MANUAL_RUN else variant.run_id
        self._state.remember_region(variant.region)
        self._state.mark_running(run_id)
        stack: Any = None
        config_file: Path | None = None
        failure: BaseException | None = None
        up_interrupted = False
        try:
            stack = open_stack(self._factory, variant.name, self.project_dir,
                               pulumi_env(self.state_dir))
            config_file = write_run_config(variant, run_id, self.project_dir,
                                           self._config_dir(run_id))
            self._state.add_pending_stack(variant.name, run_id, variant.region)
            started = time.time()
            try:
                outputs = self._up(stack, variant.name, config_file)
            except KeyboardInterrupt:
                up_interrupted = True
                raise
            deployment = self._deployment(variant, outputs, started)
            try:
                self._wait_healthy(deployment)
                if variant.swap_mib > 0:
                    verify_swap(self.session, deployment.region, deployment.instance_ids,
                                variant.swap_mib, deployment.ssm_timeout_s)
            except UserError:
                self._save_evidence(deployment, run_id)
                raise
            yield deployment
        except BaseException as exc:
            failure = exc
            raise
        finally:
            try:
                if stack is not None and config_file is not None:
                    self._teardown(stack, variant, run_id, config_file, failure, up_interrupted)
            finally:
                self._state.unmark_running(run_id)

    def _config_dir(self, run_id: str) -> Path:
        return self.state_dir / "run-config" / run_id

    def _up(self, stack: Any, name: str, config_file: Path) -> dict[str, Any]:
        from pulumi.automation.errors import CommandError

        self._emit(f"pulumi up: stack {name}")
        try:
            result = stack.up(on_output=self._emit, config_file=str(config_file))
        except CommandError as exc:
            raise UserError(f"pulumi up of stack {name!r} failed ({error_line(exc)}); whatever "
                            "it created is being destroyed.") from None
        return plain_outputs(result)

    def _deployment(self, variant: Variant, outputs: dict[str, Any],
                    started: float) -> AwsDeployment:
        url = str(outputs.get("url") or "")
        if not url:
            raise UserError(f"stack {variant.name!r} exported no 'url' output; the Pulumi program "
                            "must export url, instance_ids and target_group_arn.")
        # The AWS backend's target policy: the stack's own `url` output and nothing else, handed
        # to the load driver unchanged (the local backend's policy is loopback only).
        check_url(url)
        ids = outputs.get("instance_ids") or []
        if isinstance(ids, str):
            ids = json.loads(ids) if ids.startswith("[") else [ids]
        return AwsDeployment(
            variant=variant, url=url, instance_ids=[str(i) for i in ids],
            started_at=started, extra={"stack": variant.name, "outputs": outputs},
            region=str(outputs.get("region") or variant.region),
            target_group_arn=str(outputs.get("target_group_arn") or ""),
            log_group=str(outputs.get("log_group") or ""),
            session=self.session, on_output=self._emit)

    def _wait_healthy(self, deployment: AwsDeployment) -> None:
        tg = deployment.target_group_arn
        elbv2 = self.session.client("elbv2", region_name=deployment.region) if tg else None
        waited = wait_healthy(
            deployment.url.rstrip("/") + deployment.variant.app.health_path, elbv2, tg,
            self.health_timeout_s, self.health_poll_s, self._emit,
            expected_targets=deployment.variant.count if tg else 0)
        deployment.extra["healthy_after_s"] = round(waited, 1)

    def evidence_folder(self, variant_name: str, run_id: str) -> Path:
        base = self.evidence_dir or self.state_dir / "evidence" / run_id
        return base / variant_name / "boot-evidence"

    def _save_evidence(self, deployment: AwsDeployment, run_id: str) -> None:
        """Before `finally` destroys the instances: their console and cloud-init log."""
        folder = self.evidence_folder(deployment.variant.name, run_id)
        try:
            save_evidence(self.session, deployment.region, deployment.instance_ids, folder,
                          self._emit, deployment.ssm_timeout_s)
        except Exception as exc:  # evidence is a courtesy: never hide the real error
            self._emit(f"saving the boot evidence in {folder} failed: {exc}")

    # ---- teardown ------------------------------------------------------------------------------
    def _teardown(self, stack: Any, variant: Variant, run_id: str, config_file: Path,
                  failure: BaseException | None, up_interrupted: bool) -> None:
        if up_interrupted:
            self._cancel(stack, variant.name)
        destroyed = self._destroy(stack, variant.name, config_file, failure,
                                  refresh=up_interrupted)
        if up_interrupted or not destroyed:
            self._sweep_run(variant, run_id)

    def _cancel(self, stack: Any, name: str) -> None:
        """Release the lock of the interrupted update (`pulumi cancel`; DIY backends delete the
        lock file). "No update in progress" is fine: the CLI may have finished on its own."""
        self._emit(f"pulumi cancel: stack {name} (up was interrupted)")
        try:
            stack.cancel()
        except BaseException as exc:  # a second Ctrl-C too: destroy must still be tried
            self._emit(f"pulumi cancel of stack {name!r} did not run ({error_line(exc)}); "
                       "waiting for the interrupted update's lock instead.")

    def _destroy(self, stack: Any, name: str, config_file: Path | None,
                 failure: BaseException | None, refresh: bool = False) -> bool:
        """Destroy but keep the stack and its config (`remove` would delete the stack file).
        A stack lock still held (ConcurrentUpdateError) is waited out up to lock_wait_s."""
        from pulumi.automation.errors import ConcurrentUpdateError

        self._emit(f"pulumi destroy{' --refresh' if refresh else ''}: stack {name}")
        kwargs: dict[str, Any] = {"on_output": self._emit}
        if config_file is not None and config_file.exists():
            kwargs["config_file"] = str(config_file)
        if refresh:
            kwargs["refresh"] = True
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                stack.destroy(**kwargs)
                break
            except ConcurrentUpdateError as exc:
                if time.monotonic() + self.lock_poll_s <= deadline:
                    self._emit(f"stack {name} is still locked by the interrupted update; "
                               f"retrying destroy in {self.lock_poll_s:g} s")
                    time.sleep(self.lock_poll_s)
                    continue
                return self._destroy_failed(name, exc, failure)
            except BaseException as exc:  # also a second Ctrl-C: say what is left, then stop
                return self._destroy_failed(name, exc, failure)
        self._state.drop_pending_stack(name)
        return True

    def _destroy_failed(self, name: str, exc: BaseException,
                        failure: BaseException | None) -> bool:
        message = (f"pulumi destroy of stack {name!r} failed ({error_line(exc)}); its "
                   f"resources may still cost money: {LEFTOVERS_HINT}.")
        if failure is None:
            raise UserError(message) from None
        self._emit(message)  # do not hide the error that brought us here
        return False

    def _sweep_run(self, variant: Variant, run_id: str) -> None:
        """Last resort: delete what is tagged with this run and variant, with boto3."""
        if run_id == MANUAL_RUN:
            return
        try:
            found = [r for r in find_tagged(self.session, [variant.region])
                     if r.run_id == run_id and r.variant == variant.name]
            for r in delete_resources(self.session, found, self._emit, self.sweep_retry_s):
                self._emit(f"swept {r.kind} {r.ident} ({r.region}) of run {run_id}")
        except BaseException as exc:
            self._emit(f"sweeping the resources tagged run-id={run_id} failed ({exc}); "
                       f"{LEFTOVERS_HINT}.")

    # ---- leftovers -----------------------------------------------------------------------------
    def _regions(self) -> list[str]:
        regions = set(self._state.regions())
        with suppress(UserError):
            regions |= {v.region for v in load_variants()}
        regions.add(getattr(self.session, "region_name", None) or DEFAULT_REGION)
        return sorted(regions)

    def _tagged(self) -> list[TaggedResource]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        running = self._state.running_run_ids()
        try:
            found = find_tagged(self.session, self._regions())
        except NoCredentialsError:
            raise UserError(NO_CREDENTIALS) from None
        except (BotoCoreError, ClientError) as exc:
            raise UserError(f"listing resources tagged project=scalelab failed ({exc}); check "
                            "the AWS credentials and the tag:GetResources permission.") from None
        return [r for r in found if r.run_id not in running]

    def _stale_stacks(self) -> dict[str, dict[str, str]]:
        running = self._state.running_run_ids()
        return {name: info for name, info in self._state.pending_stacks().items()
                if info.get("run_id") not in running}

    def leftovers(self) -> list[Leftover]:
        """Stacks a killed run did not destroy, and tagged resources of runs no longer alive."""
        found = [Leftover(kind="pulumi-stack", ident=name, run_id=info.get("run_id", ""),
                          detail=f"({info.get('region', '?')}) not destroyed by its run")
                 for name, info in self._stale_stacks().items()]
        for r in self._tagged():
            detail = f"({r.region}) variant {r.variant or '?'}"
            if r.run_id == MANUAL_RUN:
                detail += " deployed by hand (run-id manual): kept; `pulumi destroy` it yourself"
            found.append(Leftover(kind=f"aws:{r.kind}", ident=r.ident, detail=detail,
                                  run_id=r.run_id))
        return found

    def delete_leftovers(self) -> Iterator[Leftover]:
        """`pulumi destroy` stale stacks first (keeps Pulumi's state true), then sweep the rest
        with boto3. Stacks deployed by hand (run-id manual) are never touched."""
        for name, info in self._stale_stacks().items():
            if self._pulumi_missing():
                self._emit(f"the `pulumi` command was not found; stack {name} is cleaned up with "
                           "boto3 only and its Pulumi state will be stale.")
                break
            run_id = info.get("run_id", "")
            try:
                stack = open_stack(self._factory, name, self.project_dir,
                                   pulumi_env(self.state_dir))
                config_file = self._config_dir(run_id) / f"Pulumi.{name}.yaml"
                self._destroy(stack, name, config_file, failure=None)
            except UserError as exc:
                self._emit(str(exc))
                continue
            yield Leftover(kind="pulumi-stack", ident=name, run_id=run_id,
                           detail=f"({info.get('region', '?')}) destroyed")
        sweep = [r for r in self._tagged() if r.run_id != MANUAL_RUN]
        for r in delete_resources(self.session, sweep, self._emit, self.sweep_retry_s):
            yield Leftover(kind=f"aws:{r.kind}", ident=r.ident, run_id=r.run_id,
                           detail=f"({r.region}) deleted")
