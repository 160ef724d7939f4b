"""AWS backend: the Automation API layer against a recording fake, boto3 parts under moto.

No test sends anything beyond loopback: moto intercepts boto3 in-process, the instance
metadata service is disabled, and the fake stack's `url` is a tiny http.server on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from moto import mock_aws
from test_aws_support import loopback_app  # noqa: F401 - a pytest fixture

from experiments.backends.aws import AwsBackend, AwsDeployment
from experiments.backends.aws.health import wait_healthy
from experiments.backends.aws.logs import collect_logs, shell_script
from experiments.backends.aws.state import LocalState
from experiments.errors import UserError
from stacks.variant import GunicornSettings, load_variant

REGION = "us-east-1"
TAGS = {"project": "scalelab"}
COMMAND_ID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"


# ---- fixtures ---------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Fake credentials only, no ~/.aws, no metadata service (169.254.169.254 is not loopback),
    and moto around every test: a code path that reaches boto3 unexpectedly (evidence, sweep)
    must never leave this process."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    with mock_aws():
        yield


@pytest.fixture
def aws() -> Any:
    with mock_aws():
        yield boto3.Session(region_name=REGION)


@pytest.fixture
def health_server(request: pytest.FixtureRequest) -> ThreadingHTTPServer:
    """The shared loopback health app (test_aws_support), under this module's old name."""
    server: ThreadingHTTPServer = request.getfixturevalue("loopback_app")
    return server


class FakeStack:
    def __init__(self, ws: FakeWorkspace, name: str) -> None:
        self.ws, self.name = ws, name

    def up(self, on_output: Any = None, config_file: str | None = None, **_: Any) -> Any:
        config = yaml.safe_load(Path(config_file).read_text())["config"] if config_file else {}
        self.ws.calls.append(("up", self.name))
        self.ws.up_config = config
        on_output("+  aws:ec2/instance:Instance web-0 created")
        if self.ws.up_error is not None:
            raise self.ws.up_error
        return SimpleNamespace(outputs={k: SimpleNamespace(value=v, secret=False)
                                        for k, v in self.ws.outputs.items()})

    def destroy(self, on_output: Any = None, config_file: str | None = None,
                **kwargs: Any) -> Any:
        self.ws.calls.append(("destroy", self.name))
        self.ws.destroy_kwargs = kwargs
        on_output("-  aws:ec2/instance:Instance web-0 deleted")
        if self.ws.destroy_error is not None:
            raise self.ws.destroy_error
        return SimpleNamespace(stdout="", stderr="")


class FakeWorkspace:
    """Stands in for create_or_select_stack: records every call, fails on cue."""

    def __init__(self, outputs: dict[str, Any] | None = None, select_error: Exception | None = None,
                 up_error: Exception | None = None,
                 destroy_error: BaseException | None = None) -> None:
        self.outputs = outputs or {}
        self.select_error, self.up_error, self.destroy_error = select_error, up_error, destroy_error
        self.calls: list[tuple[str, str]] = []
        self.up_config: dict[str, Any] = {}
        self.destroy_kwargs: dict[str, Any] = {}
        self.opts: Any = None

    def __call__(self, stack_name: str, work_dir: str, opts: Any) -> FakeStack:
        self.calls.append(("select", stack_name))
        self.opts = opts
        if self.select_error is not None:
            raise self.select_error
        return FakeStack(self, stack_name)


def command_error(stderr: str) -> Exception:
    from pulumi.automation._cmd import CommandResult
    from pulumi.automation.errors import CommandError

    return CommandError(CommandResult(stdout="Updating (micro)", stderr=stderr, code=255))


def make_backend(tmp_path: Path, ws: FakeWorkspace, session: Any = None,
                 lines: list[str] | None = None, **kw: Any) -> AwsBackend:
    out = lines if lines is not None else []
    backend = AwsBackend(state_dir=tmp_path / "state", run_id="run-1", workspace_factory=ws,
                         session=session or boto3.Session(region_name=REGION),
                         on_output=out.append, **kw)
    backend.health_poll_s = 0.05
    backend.sweep_retry_s = 0.01
    return backend


def serve_url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


# ---- the Automation API layer -----------------------------------------------------------

def test_deployed_runs_select_config_up_health_destroy_in_order(tmp_path: Path,
                                                                health_server: Any) -> None:
    stack_file = Path(load_variant("micro").source_file)
    before = stack_file.read_bytes()
    ws = FakeWorkspace(outputs={"url": serve_url(health_server), "instance_ids": ["i-0abc"],
                                "region": REGION, "target_group_arn": ""})
    lines: list[str] = []
    backend = make_backend(tmp_path, ws, lines=lines)
    with backend.deployed(load_variant("micro")) as deployment:
        assert ws.calls == [("select", "micro"), ("up", "micro")]
        assert isinstance(deployment, AwsDeployment)
        assert deployment.instance_ids == ["i-0abc"]
        with urllib.request.urlopen(deployment.url + "/healthz", timeout=5) as response:
            assert response.status == 200
        assert LocalState(tmp_path / "state").running_run_ids() == {"run-1"}
        assert "micro" in LocalState(tmp_path / "state").pending_stacks()
    assert ws.calls == [("select", "micro"), ("up", "micro"), ("destroy", "micro")]
    # the run id reached the program as config; the stack keeps its config (no `remove`)
    assert ws.up_config["scalelab:runId"] == "run-1"
    assert ws.up_config["scalelab:instanceType"] == "t2.micro"
    assert ws.up_config["aws:region"] == REGION
    assert "remove" not in ws.destroy_kwargs
    assert stack_file.read_bytes() == before
    env = ws.opts["env_vars"]
    assert env["PULUMI_BACKEND_URL"] == f"file://{tmp_path / 'state'}"
    assert env["PULUMI_CONFIG_PASSPHRASE"] == ""
    state = LocalState(tmp_path / "state")
    assert state.running_run_ids() == set() and state.pending_stacks() == {}
    assert state.regions() == [REGION]
    assert any("Instance web-0 created" in line for line in lines)  # output was streamed


def swap_checks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], int]]:
    """Record the on-instance swap check instead of running it over SSM (tests of its own in
    test_aws_lifecycle.py)."""
    seen: list[tuple[list[str], int]] = []
    monkeypatch.setattr("experiments.backends.aws.backend.verify_swap",
                        lambda session, region, ids, mib, timeout: seen.append((ids, mib)))
    return seen


def test_overrides_of_the_stack_file_become_run_config(tmp_path: Path, health_server: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    checked = swap_checks(monkeypatch)
    ws = FakeWorkspace(outputs={"url": serve_url(health_server), "instance_ids": ["i-1"]})
    variant = load_variant("micro").with_overrides(gunicorn=GunicornSettings(workers=4),
                                                   swap_mib=1024)
    with make_backend(tmp_path, ws).deployed(variant):
        pass
    assert ws.up_config["scalelab:gunicorn"]["workers"] == 4
    assert ws.up_config["scalelab:swapMib"] == 1024
    assert checked == [(["i-1"], 1024)]  # verified on the instance before measuring
    assert ws.up_config["scalelab:count"] == 1  # kept from the file
    assert "scalelab:ami" not in ws.up_config  # not in the file and not overridden
    assert "scalelab:app" not in ws.up_config


def test_up_failure_is_one_sentence_and_destroy_still_runs(tmp_path: Path) -> None:
    ws = FakeWorkspace(up_error=command_error(
        "error: creating EC2 Instance: operation error EC2: RunInstances, "
        "api error VcpuLimitExceeded\nmore noise"))
    with pytest.raises(UserError) as err, make_backend(tmp_path, ws).deployed(
            load_variant("micro")):
        pytest.fail("the body must not run when up fails")
    assert "VcpuLimitExceeded" in str(err.value) and "more noise" not in str(err.value)
    assert ws.calls == [("select", "micro"), ("up", "micro"), ("destroy", "micro")]


def test_health_that_never_comes_times_out_and_destroys(tmp_path: Path,
                                                        health_server: Any) -> None:
    health_server.status = 503
    ws = FakeWorkspace(outputs={"url": serve_url(health_server), "instance_ids": ["i-1"]})
    backend = make_backend(tmp_path, ws, health_timeout_s=0.4)
    started = time.monotonic()
    with pytest.raises(UserError, match="did not become healthy within 0.4 s") as err, \
            backend.deployed(load_variant("micro")):
        pytest.fail("the body must not run before the stack is healthy")
    assert "503" in str(err.value)
    assert time.monotonic() - started < 5
    assert ws.calls[-1] == ("destroy", "micro")


@pytest.mark.parametrize("error", [RuntimeError("load driver crashed"), KeyboardInterrupt()])
def test_body_error_or_ctrl_c_still_destroys(tmp_path: Path, health_server: Any,
                                             error: BaseException) -> None:
    ws = FakeWorkspace(outputs={"url": serve_url(health_server), "instance_ids": ["i-1"]})
    backend = make_backend(tmp_path, ws)
    with pytest.raises(type(error)), backend.deployed(load_variant("micro")):
        raise error
    assert ws.calls == [("select", "micro"), ("up", "micro"), ("destroy", "micro")]
    assert LocalState(tmp_path / "state").running_run_ids() == set()


def test_failed_destroy_says_what_to_do_and_leaves_a_stack_leftover(tmp_path: Path,
                                                                     health_server: Any) -> None:
    ws = FakeWorkspace(outputs={"url": serve_url(health_server), "instance_ids": ["i-1"]},
                       destroy_error=command_error("error: the stack is locked"))
    backend = make_backend(tmp_path, ws)
    with pytest.raises(UserError, match="leftovers --backend aws --delete") as err, \
            backend.deployed(load_variant("micro")):
        pass
    assert "the stack is locked" in str(err.value)
    with mock_aws():
        found = backend.leftovers()
    assert [(x.kind, x.ident, x.run_id) for x in found] == [("pulumi-stack", "micro", "run-1")]


def test_destroy_failure_does_not_hide_the_original_error(tmp_path: Path,
                                                          health_server: Any) -> None:
    lines: list[str] = []
    ws = FakeWorkspace(outputs={"url": serve_url(health_server), "instance_ids": ["i-1"]},
                       destroy_error=command_error("error: boom"))
    with pytest.raises(RuntimeError, match="body"), \
            make_backend(tmp_path, ws, lines=lines).deployed(load_variant("micro")):
        raise RuntimeError("body")
    assert any("pulumi destroy of stack 'micro' failed (error: boom)" in ln for ln in lines)


def test_missing_cli_when_selecting_the_stack(tmp_path: Path) -> None:
    ws = FakeWorkspace(select_error=FileNotFoundError(2, "No such file", "pulumi"))
    with pytest.raises(UserError, match=r"install the Pulumi CLI \(https://www.pulumi.com"), \
            make_backend(tmp_path, ws).deployed(load_variant("micro")):
        pytest.fail("nothing may run without the CLI")
    assert ws.calls == [("select", "micro")]  # nothing was created, so nothing to destroy
    assert LocalState(tmp_path / "state").running_run_ids() == set()


def test_url_output_missing_is_explained_and_destroyed(tmp_path: Path) -> None:
    ws = FakeWorkspace(outputs={"instance_ids": ["i-1"]})
    with pytest.raises(UserError, match="exported no 'url' output"), \
            make_backend(tmp_path, ws).deployed(load_variant("micro")):
        pass
    assert ws.calls[-1] == ("destroy", "micro")


# ---- preflight ----------------------------------------------------------------------------

def test_preflight_missing_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    backend = AwsBackend(state_dir=tmp_path / "state")
    with pytest.raises(UserError) as err:
        backend.preflight([load_variant("micro")])
    assert str(err.value).startswith("the `pulumi` command was not found; install the Pulumi CLI")


def test_preflight_missing_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("HOME", str(tmp_path))
    backend = AwsBackend(state_dir=tmp_path / "state", workspace_factory=FakeWorkspace())
    with pytest.raises(UserError, match="^no AWS credentials were found; run `aws configure`"):
        backend.preflight([load_variant("micro")])


def test_preflight_over_budget_names_both_figures(tmp_path: Path) -> None:
    backend = AwsBackend(state_dir=tmp_path / "state", workspace_factory=FakeWorkspace(),
                         session=boto3.Session(region_name=REGION), max_usd=2.0,
                         estimate_usd=lambda v: 1.25 if v.name == "micro" else 0.9)
    with pytest.raises(UserError) as err:
        backend.preflight([load_variant("micro"), load_variant("scale-out")])
    assert "$2.15" in str(err.value) and "--max-usd 2.00" in str(err.value)
    backend.preflight([load_variant("micro")])  # 1.25 fits


def test_preflight_default_estimate_uses_the_catalog(tmp_path: Path) -> None:
    backend = AwsBackend(state_dir=tmp_path / "state", workspace_factory=FakeWorkspace(),
                         session=boto3.Session(region_name=REGION), max_usd=0.01)
    with pytest.raises(UserError, match=r"scale-out is \$0\.0[0-9]"):
        backend.preflight([load_variant("scale-out")])


# ---- boto3 parts under moto ----------------------------------------------------------------

def _network(session: Any) -> tuple[str, list[str]]:
    ec2 = session.client("ec2")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    return vpc, subnets


def _tags(run_id: str, **extra: str) -> list[dict[str, str]]:
    tags = {**TAGS, "run-id": run_id, "variant": "scale-out", "stack": "scale-out", **extra}
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _instances(session: Any, n: int, run_id: str | None, sg: str | None = None) -> list[str]:
    kwargs: dict[str, Any] = {"ImageId": "ami-12c6146b", "MinCount": n, "MaxCount": n,
                              "InstanceType": "t2.micro"}
    if run_id is not None:
        kwargs["TagSpecifications"] = [{"ResourceType": "instance", "Tags": _tags(run_id)}]
    if sg:
        kwargs["SecurityGroupIds"] = [sg]
    reservation = session.client("ec2").run_instances(**kwargs)
    return [i["InstanceId"] for i in reservation["Instances"]]


def test_scale_out_waits_for_every_target_to_be_healthy(tmp_path: Path, aws: Any,
                                                        health_server: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    swap_checks(monkeypatch)
    vpc, _ = _network(aws)
    ids = _instances(aws, 3, "run-1")
    elbv2 = aws.client("elbv2")
    tg = elbv2.create_target_group(Name="scale-out", Protocol="HTTP", Port=8000,
                                   VpcId=vpc)["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(TargetGroupArn=tg, Targets=[{"Id": i, "Port": 8000} for i in ids])
    ws = FakeWorkspace(outputs={"url": serve_url(health_server) + "/", "instance_ids": ids,
                                "target_group_arn": tg, "region": REGION})
    lines: list[str] = []
    with make_backend(tmp_path, ws, session=aws, lines=lines).deployed(
            load_variant("scale-out")) as deployment:
        assert deployment.target_group_arn == tg
        assert deployment.url == serve_url(health_server) + "/"  # unchanged: the output as is
    assert any("targets 3/3 healthy" in line for line in lines)
    assert ws.calls[-1] == ("destroy", "scale-out")


def test_unhealthy_targets_keep_the_wait_going(health_server: Any) -> None:
    class Elb:
        def describe_target_health(self, TargetGroupArn: str) -> dict[str, Any]:  # noqa: N803
            return {"TargetHealthDescriptions": [
                {"TargetHealth": {"State": "healthy"}}, {"TargetHealth": {"State": "initial"}}]}

    with pytest.raises(UserError, match=r"targets 1/2 healthy \(healthy, initial\)"):
        wait_healthy(serve_url(health_server) + "/healthz", Elb(), "arn:tg", timeout_s=0.3,
                     poll_s=0.05)


class _StubSession:
    """A session whose chosen clients are Stubber-driven; others come from the real one."""

    def __init__(self, real: Any, **clients: Any) -> None:
        self.real, self.clients = real, clients

    def client(self, service: str, region_name: str | None = None) -> Any:
        return self.clients.get(service) or self.real.client(service, region_name=region_name)


def test_ssm_logs_become_gunicorn_and_kernel_lines() -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    output = (
        "--- scalelab:kernel ---\n"
        "1764064800.250000 ip-10-0-0-1 kernel: Out of memory: Killed process 2345 (gunicorn) "
        "total-vm:312000kB\n"
        "--- scalelab:gunicorn ---\n"
        "1764064799.000001 ip-10-0-0-1 gunicorn[812]: [2026-11-25 10:00:00 +0000] [812] "
        "[CRITICAL] WORKER TIMEOUT (pid:2345)\n"
        "1764064800.300000 ip-10-0-0-1 gunicorn[812]: [2026-11-25 10:00:01 +0000] [812] "
        "[ERROR] Worker (pid:2345) was sent SIGKILL! Perhaps out of memory?\n")
    with Stubber(ssm) as stub:
        stub.add_response("send_command", {"Command": {"CommandId": COMMAND_ID}},
                          {"InstanceIds": ["i-1"], "DocumentName": "AWS-RunShellScript",
                           "Comment": "scalelab: collect gunicorn and kernel OOM lines",
                           "Parameters": {"commands": shell_script(1764064700),
                                          "executionTimeout": ["60"]},
                           "TimeoutSeconds": 30})
        stub.add_client_error("get_command_invocation", "InvocationDoesNotExist")
        stub.add_response("get_command_invocation", {"Status": "InProgress"})
        stub.add_response("get_command_invocation",
                          {"Status": "Success", "StandardOutputContent": output})
        lines = collect_logs(ssm, ["i-1"], since=1764064700, timeout_s=5, poll_s=0.01)
        stub.assert_no_pending_responses()
    assert [(ln.source, ln.t) for ln in lines] == [
        ("kernel:i-1", 1764064800.25), ("gunicorn:i-1", 1764064799.000001),
        ("gunicorn:i-1", 1764064800.3)]
    assert lines[0].text.startswith("Out of memory: Killed process 2345")
    assert lines[2].text.endswith("was sent SIGKILL! Perhaps out of memory?")


def test_ssm_and_cloudwatch_failures_are_notes_not_crashes(aws: Any) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    cw = boto3.client("cloudwatch", region_name=REGION)
    with Stubber(ssm) as ssm_stub, Stubber(cw) as cw_stub:
        ssm_stub.add_client_error("send_command", "InvalidInstanceId", "not managed by SSM")
        cw_stub.add_client_error("get_metric_data", "AccessDenied",
                                 "no cloudwatch:GetMetricData")
        deployment = AwsDeployment(variant=load_variant("micro"), url="http://127.0.0.1:9",
                                   instance_ids=["i-1"], started_at=time.time() - 60,
                                   region=REGION, session=_StubSession(aws, ssm=ssm,
                                                                       cloudwatch=cw))
        observed = deployment.observe()
    assert observed.signals == []
    texts = [line.text for line in observed.logs]
    assert all(line.source == "backend:aws" for line in observed.logs)
    assert any("CloudWatch" in t and "AccessDenied" in t for t in texts)
    assert any("send_command failed" in t and "not managed by SSM" in t for t in texts)


def test_log_script_is_valid_posix_sh(tmp_path: Path) -> None:
    script = tmp_path / "collect.sh"
    script.write_text("#!/bin/sh\n" + "\n".join(shell_script(1764064700)) + "\n")
    subprocess.run(["sh", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-s", "sh", str(script)], check=True)


def test_leftovers_finds_and_deletes_what_dead_runs_left(tmp_path: Path, aws: Any) -> None:
    ec2, elbv2 = aws.client("ec2"), aws.client("elbv2")
    vpc, subnets = _network(aws)
    sg = ec2.create_security_group(
        GroupName="scale-out-alb", Description="alb", VpcId=vpc,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags("old-run")}])
    sg_id = sg["GroupId"]
    dead = _instances(aws, 2, "old-run")
    alive = _instances(aws, 1, "live-run")
    manual = _instances(aws, 1, "manual")
    untagged = _instances(aws, 1, None)
    lb = elbv2.create_load_balancer(Name="scale-out", Subnets=subnets, SecurityGroups=[sg_id],
                                    Tags=_tags("old-run"))["LoadBalancers"][0]["LoadBalancerArn"]
    tg = elbv2.create_target_group(Name="scale-out", Protocol="HTTP", Port=8000, VpcId=vpc,
                                   Tags=_tags("old-run"))["TargetGroups"][0]["TargetGroupArn"]
    state = LocalState(tmp_path / "state")
    state.remember_region(REGION)
    state.mark_running("live-run")  # this very process: alive
    state.add_pending_stack("scale-out", "old-run", REGION)
    ws = FakeWorkspace()
    lines: list[str] = []
    backend = make_backend(tmp_path, ws, session=aws, lines=lines)

    found = {(x.kind, x.ident): x for x in backend.leftovers()}
    expected = {("pulumi-stack", "scale-out"), ("aws:loadbalancer", lb),
                ("aws:targetgroup", tg), ("aws:security-group", sg_id),
                *{("aws:instance", i) for i in dead + manual}}
    assert set(found) == expected
    assert "kept" in found[("aws:instance", manual[0])].detail

    deleted = list(backend.delete_leftovers())
    assert deleted[0].kind == "pulumi-stack"  # pulumi destroy first, boto3 sweep after
    assert ws.calls == [("select", "scale-out"), ("destroy", "scale-out")]
    assert {(x.kind, x.ident) for x in deleted} == expected - {("aws:instance", manual[0])}
    kinds = [x.kind for x in deleted]
    assert kinds.index("aws:instance") < kinds.index("aws:loadbalancer") \
        < kinds.index("aws:targetgroup") < kinds.index("aws:security-group")

    states = {i["InstanceId"]: i["State"]["Name"]
              for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert {states[i] for i in dead} == {"terminated"}
    assert {states[i] for i in alive + manual + untagged} == {"running"}
    assert elbv2.describe_load_balancers()["LoadBalancers"] == []
    assert elbv2.describe_target_groups()["TargetGroups"] == []
    assert sg_id not in {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert state.pending_stacks() == {}
    assert {(x.kind, x.ident) for x in backend.leftovers()} == {("aws:instance", manual[0])}


def test_sweep_removes_a_new_vpc_logs_bucket_and_role(tmp_path: Path, aws: Any) -> None:
    ec2 = aws.client("ec2")
    spec = lambda kind: [{"ResourceType": kind, "Tags": _tags("old-run")}]  # noqa: E731
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16", TagSpecifications=spec("vpc"))["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24",
                               TagSpecifications=spec("subnet"))["Subnet"]["SubnetId"]
    igw = ec2.create_internet_gateway(
        TagSpecifications=spec("internet-gateway"))["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    table = ec2.create_route_table(VpcId=vpc, TagSpecifications=spec("route-table"))
    table_id = table["RouteTable"]["RouteTableId"]
    ec2.associate_route_table(RouteTableId=table_id, SubnetId=subnet)
    aws.client("logs").create_log_group(logGroupName="scalelab-scale-out",
                                        tags={**TAGS, "run-id": "old-run"})
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="scale-out-app-1a2b3c")
    s3.put_bucket_tagging(Bucket="scale-out-app-1a2b3c", Tagging={"TagSet": _tags("old-run")})
    s3.put_object(Bucket="scale-out-app-1a2b3c", Key="app.tar.gz", Body=b"bundle")
    iam = aws.client("iam")
    iam.create_role(RoleName="scale-out-web-0-role-9f8e7d", AssumeRolePolicyDocument="{}",
                    Tags=_tags("old-run"))
    iam.create_role(RoleName="someone-elses-role", AssumeRolePolicyDocument="{}")
    iam.put_role_policy(RoleName="scale-out-web-0-role-9f8e7d", PolicyName="read-bundle",
                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                        {"Effect": "Allow", "Action": "s3:GetObject",
                         "Resource": "arn:aws:s3:::scale-out-app-1a2b3c/*"}]}))
    iam.create_instance_profile(InstanceProfileName="scale-out-web-0-profile")
    iam.add_role_to_instance_profile(InstanceProfileName="scale-out-web-0-profile",
                                     RoleName="scale-out-web-0-role-9f8e7d")
    backend = make_backend(tmp_path, FakeWorkspace(), session=aws)
    expected = {("aws:vpc", vpc), ("aws:subnet", subnet), ("aws:internet-gateway", igw),
                ("aws:route-table", table_id), ("aws:log-group", "scalelab-scale-out"),
                ("aws:bucket", "scale-out-app-1a2b3c"),
                ("aws:role", "scale-out-web-0-role-9f8e7d")}
    assert {(x.kind, x.ident) for x in backend.leftovers()} == expected
    assert {(x.kind, x.ident) for x in backend.delete_leftovers()} == expected
    assert vpc not in {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]}
    assert aws.client("logs").describe_log_groups()["logGroups"] == []
    assert "scale-out-app-1a2b3c" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert [r["RoleName"] for r in iam.list_roles()["Roles"]] == ["someone-elses-role"]
    assert backend.leftovers() == []


def test_logs_fall_back_to_the_stacks_log_group_when_ssm_has_nothing(aws: Any) -> None:
    (instance,) = _instances(aws, 1, "run-1")
    logs = aws.client("logs")
    logs.create_log_group(logGroupName="scalelab-micro")
    t0 = int(time.time() * 1000) - 30_000
    messages = {
        "kernel": ["2026-11-25T10:00:01.250000+00:00 ip-10-0-0-1 kernel: Out of memory: "
                   "Killed process 2345 (gunicorn) total-vm:312000kB"],
        "gunicorn": ["2026-11-25T10:00:00.000001+00:00 ip-10-0-0-1 gunicorn[812]: "
                     "[2026-11-25 10:00:00 +0000] [812] [CRITICAL] WORKER TIMEOUT (pid:2345)"],
    }
    for k, (kind, texts) in enumerate(messages.items()):
        stream = f"{instance}/{kind}"
        logs.create_log_stream(logGroupName="scalelab-micro", logStreamName=stream)
        logs.put_log_events(logGroupName="scalelab-micro", logStreamName=stream,
                            logEvents=[{"timestamp": t0 + k * 1000, "message": m} for m in texts])
    deployment = AwsDeployment(variant=load_variant("micro"), url="http://127.0.0.1:9",
                               instance_ids=[instance], started_at=time.time() - 60,
                               region=REGION, session=aws, log_group="scalelab-micro",
                               last_interval_timeout_s=0)
    lines = [ln for ln in deployment.observe().logs if ln.source != "backend:aws"]
    assert [(ln.source, ln.t) for ln in lines] == [
        (f"kernel:{instance}", t0 / 1000), (f"gunicorn:{instance}", t0 / 1000 + 1)]
    assert lines[0].text.startswith("Out of memory: Killed process 2345")
    assert lines[1].text.startswith("[2026-11-25 10:00:00 +0000] [812] [CRITICAL] WORKER TIMEOUT")


def test_leftovers_without_credentials_is_one_sentence(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    backend = AwsBackend(state_dir=tmp_path / "state", workspace_factory=FakeWorkspace())
    with pytest.raises(UserError, match="^no AWS credentials were found"):
        backend.leftovers()
