"""Issue 12 #3, #5 and #6 through the real Automation API and a fake `pulumi` on PATH: up and
destroy, Ctrl-C during up (cancel, destroy with refresh, lock held then released, the tagged
sweep as the last resort), the evidence a failed health check saves before the destroy, and
the on-instance swap check. boto3 only ever talks to moto or to Stubber."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from test_aws_support import REGION, FakePulumi, instances, moto_session, url_of
from test_aws_support import loopback_app as loopback_app  # the fixture, by name

from experiments.backends.aws import AwsBackend
from experiments.backends.aws.evidence import verify_swap
from experiments.backends.aws.state import LocalState
from experiments.errors import UserError
from stacks.variant import PROJECT_DIR, load_variant

COMMAND_ID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"

pytestmark = pytest.mark.filterwarnings(
    # On KeyboardInterrupt, subprocess.Popen.__exit__ closes the pipes the Automation API's
    # reader threads still read from: their ValueError is the SDK's, not ours.
    "ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    with moto_session(monkeypatch, tmp_path) as session:
        yield session


@pytest.fixture
def pulumi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws: Any) -> FakePulumi:
    return FakePulumi(tmp_path, monkeypatch)


def make(tmp_path: Path, session: Any, lines: list[str], **kw: Any) -> AwsBackend:
    b = AwsBackend(project_dir=PROJECT_DIR, state_dir=tmp_path / "state", run_id="run-1",
                   session=session, on_output=lines.append, **kw)
    b.health_poll_s = 0.05
    b.lock_poll_s = 0.2
    b.lock_wait_s = 20
    b.sweep_retry_s = 0.01
    return b


def test_up_then_destroy_through_the_real_automation_api(tmp_path: Path, pulumi: FakePulumi,
                                                         aws: Any, loopback_app: Any) -> None:
    pulumi.scenario({"outputs": {"url": url_of(loopback_app), "instance_ids": ["i-1"]}})
    lines: list[str] = []
    with make(tmp_path, aws, lines).deployed(load_variant("micro")) as deployment:
        assert deployment.url == url_of(loopback_app)
        assert pulumi.deployed()
    assert pulumi.ops() == ["up", "destroy"]
    up = next(c for c in pulumi.calls() if c[0] == "up")
    assert "--config-file" in up and up[up.index("--stack") + 1] == "micro"
    assert "--refresh" not in next(c for c in pulumi.calls() if c[0] == "destroy")
    assert not pulumi.deployed() and LocalState(tmp_path / "state").pending_stacks() == {}


def test_ctrl_c_during_up_cancels_then_destroys_with_refresh(tmp_path: Path, pulumi: FakePulumi,
                                                              aws: Any) -> None:
    """The CLI died holding the DIY backend's lock file: only `pulumi cancel` removes it."""
    pulumi.scenario({"up_hold_s": 30, "on_sigint": "exit",
                     "outputs": {"url": "http://127.0.0.1:9"}})
    lines: list[str] = []
    state_dir = tmp_path / "state"
    started = time.monotonic()
    presser = pulumi.ctrl_c(state_dir)
    with pytest.raises(KeyboardInterrupt), make(tmp_path, aws, lines).deployed(
            load_variant("micro")):
        pytest.fail("the body must not run after an interrupted up")
    presser.join(5)
    assert time.monotonic() - started < 20  # did not sit out the CLI's 30 s
    assert pulumi.ops() == ["up", "cancel", "destroy"]
    destroy = next(c for c in pulumi.calls() if c[0] == "destroy")
    assert "--refresh" in destroy
    assert pulumi.locks(state_dir) == [] and not pulumi.deployed()
    assert LocalState(state_dir).pending_stacks() == {}


def test_a_lock_held_after_ctrl_c_is_waited_out(tmp_path: Path, pulumi: FakePulumi,
                                                aws: Any) -> None:
    """`pulumi cancel` fails, and the interrupted CLI still holds the lock while it finishes:
    destroy waits for the lock to be released, then runs."""
    pulumi.scenario({"up_hold_s": 30, "on_sigint": "linger", "linger_s": 1.5,
                     "outputs": {"url": "http://127.0.0.1:9"},
                     "fail": {"cancel": ["error: cancelling is not supported here"]}})
    lines: list[str] = []
    state_dir = tmp_path / "state"
    presser = pulumi.ctrl_c(state_dir)
    with pytest.raises(KeyboardInterrupt), make(tmp_path, aws, lines).deployed(
            load_variant("micro")):
        pass
    presser.join(5)
    ops = pulumi.ops()
    assert ops[:2] == ["up", "cancel"] and ops.count("destroy") >= 2
    assert any("still locked" in line for line in lines)
    assert any("cancelling is not supported here" in line for line in lines)
    assert pulumi.locks(state_dir) == [] and not pulumi.deployed()
    assert LocalState(state_dir).pending_stacks() == {}


def test_when_destroy_cannot_run_the_runs_tagged_resources_are_swept(
        tmp_path: Path, pulumi: FakePulumi, aws: Any) -> None:
    ours = instances(aws, 2, "run-1", "micro")
    other_run = instances(aws, 1, "run-2", "micro")
    other_variant = instances(aws, 1, "run-1", "scale-up")
    pulumi.scenario({"up_hold_s": 30, "on_sigint": "exit",
                     "outputs": {"url": "http://127.0.0.1:9"},
                     "fail": {"destroy": ["error: the provider crashed"] * 50}})
    lines: list[str] = []
    backend = make(tmp_path, aws, lines)
    backend.lock_wait_s = 1.0
    presser = pulumi.ctrl_c(tmp_path / "state")
    with pytest.raises(KeyboardInterrupt), backend.deployed(load_variant("micro")):
        pass
    presser.join(5)
    assert any("leftovers --backend aws --delete" in line for line in lines)
    states = {i["InstanceId"]: i["State"]["Name"]
              for r in aws.client("ec2").describe_instances()["Reservations"]
              for i in r["Instances"]}
    assert {states[i] for i in ours} == {"terminated"}
    assert {states[i] for i in other_run + other_variant} == {"running"}
    # the stack stays on record: `leftovers --delete` will destroy it with Pulumi later
    assert "micro" in LocalState(tmp_path / "state").pending_stacks()


class StubSession:
    """Stubber-driven clients for the named services, moto for the rest."""

    def __init__(self, real: Any, **clients: Any) -> None:
        self.real, self.clients = real, clients

    def client(self, service: str, region_name: str | None = None) -> Any:
        return self.clients.get(service) or self.real.client(service, region_name=region_name)


def _ssm_answers(stub: Stubber, instance: str, stdout: str) -> None:
    stub.add_response("send_command", {"Command": {"CommandId": COMMAND_ID}})
    stub.add_client_error("get_command_invocation", "InvocationDoesNotExist")
    stub.add_response("get_command_invocation",
                      {"Status": "Success", "StandardOutputContent": stdout},
                      {"CommandId": COMMAND_ID, "InstanceId": instance})


def test_health_timeout_saves_console_and_cloud_init_log_before_destroy(
        tmp_path: Path, pulumi: FakePulumi, aws: Any, loopback_app: Any) -> None:
    loopback_app.status = 503
    (instance,) = instances(aws, 1, "run-1")
    pulumi.scenario({"outputs": {"url": url_of(loopback_app), "instance_ids": [instance]}})
    ec2 = boto3.client("ec2", region_name=REGION)
    ssm = boto3.client("ssm", region_name=REGION)
    console = "[   12.3] cloud-init[812]: SCALELAB BOOT FAILED: scalelab-swap.sh exited 1\n"
    with Stubber(ec2) as ec2_stub, Stubber(ssm) as ssm_stub:
        # a t2 (Xen) has no "latest" console: the buffered one is asked for next
        ec2_stub.add_client_error("get_console_output", "UnsupportedOperation",
                                  expected_params={"InstanceId": instance, "Latest": True})
        ec2_stub.add_response("get_console_output", {
            "InstanceId": instance, "Output": base64.b64encode(console.encode()).decode()},
            {"InstanceId": instance})
        _ssm_answers(ssm_stub, instance, "--- /var/lib/scalelab/boot-failed ---\n"
                                         "/usr/local/sbin/scalelab-swap.sh exited 1\n")
        lines: list[str] = []
        backend = make(tmp_path, StubSession(aws, ec2=ec2, ssm=ssm), lines,
                       health_timeout_s=0.3, evidence_dir=tmp_path / "run")
        with pytest.raises(UserError, match="did not become healthy"), backend.deployed(
                load_variant("micro")):
            pytest.fail("the body must not run before the stack is healthy")
        ec2_stub.assert_no_pending_responses()
        ssm_stub.assert_no_pending_responses()
    folder = tmp_path / "run" / "micro" / "boot-evidence"
    assert (folder / f"console-{instance}.txt").read_text() == console
    assert "scalelab-swap.sh exited 1" in (folder / f"cloud-init-{instance}.log").read_text()
    (destroy_at,) = pulumi.started("destroy")
    assert (folder / f"cloud-init-{instance}.log").stat().st_mtime <= destroy_at
    assert pulumi.ops() == ["up", "destroy"]


def test_swap_that_is_not_on_stops_the_run_before_measuring(
        tmp_path: Path, pulumi: FakePulumi, aws: Any, loopback_app: Any) -> None:
    (instance,) = instances(aws, 1, "run-1", "micro-swap")
    pulumi.scenario({"outputs": {"url": url_of(loopback_app), "instance_ids": [instance]}})
    ssm = boto3.client("ssm", region_name=REGION)
    with Stubber(ssm) as stub:
        _ssm_answers(stub, instance, "/swapfile 1073737728\n")  # 1 GiB, not the 2 GiB asked
        stub.add_response("send_command", {"Command": {"CommandId": COMMAND_ID}})  # evidence
        stub.add_response("get_command_invocation", {"Status": "Success",
                                                     "StandardOutputContent": "log"})
        backend = make(tmp_path, StubSession(aws, ssm=ssm), [], evidence_dir=tmp_path / "run")
        with pytest.raises(UserError, match="has 1024 MiB on, not the 2048 MiB"), \
                backend.deployed(load_variant("micro-swap")):
            pytest.fail("a swap variant without its swap must not be measured")
    assert pulumi.ops() == ["up", "destroy"]
    assert (tmp_path / "run" / "micro-swap" / "boot-evidence" / f"cloud-init-{instance}.log"
            ).read_text() == "log"


@pytest.mark.parametrize("shown,ok", [("/swapfile 2147479552\n", True),
                                      ("", False),
                                      ("/swapfile 1073737728\n/dev/zram0 1073741824\n", True)])
def test_verify_swap_reads_swapon(shown: str, ok: bool) -> None:
    ssm = boto3.client("ssm", region_name=REGION, aws_access_key_id="x",
                       aws_secret_access_key="y")
    with Stubber(ssm) as stub:
        _ssm_answers(stub, "i-1", shown)
        session = StubSession(None, ssm=ssm)
        if ok:
            verify_swap(session, REGION, ["i-1"], 2048, timeout_s=5, poll_s=0.01)
        else:
            with pytest.raises(UserError, match="has no swap on, not the 2048 MiB"):
                verify_swap(session, REGION, ["i-1"], 2048, timeout_s=5, poll_s=0.01)


def test_ssm_commands_wait_for_the_agent_to_register() -> None:
    """Right after boot SSM answers InvalidInstanceId until the instance's agent registered."""
    ssm = boto3.client("ssm", region_name=REGION, aws_access_key_id="x",
                       aws_secret_access_key="y")
    with Stubber(ssm) as stub:
        stub.add_client_error("send_command", "InvalidInstanceId", "not registered yet")
        _ssm_answers(stub, "i-1", "/swapfile 2147479552\n")
        verify_swap(StubSession(None, ssm=ssm), REGION, ["i-1"], 2048, timeout_s=5, poll_s=0.01)
        stub.assert_no_pending_responses()
