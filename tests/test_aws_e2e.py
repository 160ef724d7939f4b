"""Issue 12, end to end: `python -m experiments run --backend aws`, from deploy to the report.

The CLI runs as its own process, as a user runs it. Everything it would send to AWS goes to a
moto server on 127.0.0.1 (AWS_ENDPOINT_URL); `pulumi` is the fake CLI on PATH, whose `up`
creates the stack's instance and log group in moto and exports as `url` the real shop under
Gunicorn on loopback; a thread plays the CloudWatch agent. Only loopback traffic, all of it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from test_aws_support import FakePulumi, fake_aws

from experiments.procs import free_port
from shop.serve import PROJECT_DIR, Server, gunicorn
from stacks.variant import GunicornSettings, Variant

pytestmark = pytest.mark.slow

UP_HOOK = """
import json, os, boto3
config = json.loads(json.dumps(__import__("yaml").safe_load(
    open(argv[argv.index("--config-file") + 1]))["config"]))
run_id = config["scalelab:runId"]
tags = [{"Key": "project", "Value": "scalelab"}, {"Key": "run-id", "Value": run_id},
        {"Key": "variant", "Value": stack}, {"Key": "stack", "Value": stack}]
ec2 = boto3.client("ec2", region_name="us-east-1")
image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
made = ec2.run_instances(ImageId=image, InstanceType="t2.micro", MinCount=1, MaxCount=1,
                         TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
group = f"/scalelab/{stack}"
boto3.client("logs", region_name="us-east-1").create_log_group(
    logGroupName=group, tags={t["Key"]: t["Value"] for t in tags})
(home / "hook-outputs.json").write_text(json.dumps({
    "instance_ids": [i["InstanceId"] for i in made["Instances"]], "log_group": group,
    "region": "us-east-1"}))
"""

DESTROY_HOOK = """
import json, boto3
made = json.loads((home / "hook-outputs.json").read_text())
boto3.client("ec2", region_name="us-east-1").terminate_instances(
    InstanceIds=made["instance_ids"])
boto3.client("logs", region_name="us-east-1").delete_log_group(logGroupName=made["log_group"])
"""


@pytest.fixture
def moto_server() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Server]:
    data = tmp_path / "shop-data"
    data.mkdir()
    env = {"SCALELAB_DATA_DIR": str(data)}
    subprocess.run([sys.executable, "-m", "shop", "seed", "--products", "2000"], cwd=PROJECT_DIR,
                   env={**os.environ, **env}, check=True, capture_output=True, timeout=120)
    port = free_port()
    variant = Variant(name="aws-e2e", gunicorn=GunicornSettings(workers=2))
    with gunicorn(variant.gunicorn_args(f"127.0.0.1:{port}"), port, data / "gunicorn.log",
                  env=env) as server:
        yield server


def play_the_agent(endpoint: str, stop: threading.Event, published: list[str],
                   errors: list[str]) -> None:
    """Every 2 s, memory/swap/CPU for each running scalelab instance, as the agent does."""
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=endpoint)
    cw = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=endpoint)
    while not stop.wait(2):
        try:
            publish_once(ec2, cw, published)
        except Exception as exc:  # the test asserts there were none
            errors.append(repr(exc))


def publish_once(ec2: Any, cw: Any, published: list[str]) -> None:
    """One round of what the agent publishes."""
    reservations = ec2.describe_instances(Filters=[
        {"Name": "tag:project", "Values": ["scalelab"]},
        {"Name": "instance-state-name", "Values": ["running"]}])["Reservations"]
    for inst in (i for r in reservations for i in r["Instances"]):
        dims = [{"Name": "InstanceId", "Value": inst["InstanceId"]}]
        stamp = datetime.now(UTC)
        cw.put_metric_data(Namespace="scalelab", MetricData=[
            {"MetricName": name, "Dimensions": dims, "Timestamp": stamp, "Value": value,
             "Unit": "Percent", "StorageResolution": 1}
            for name, value in (("mem_used_percent", 61.0), ("swap_used_percent", 0.0),
                                ("cpu_usage_idle", 30.0))])
        published.append(inst["InstanceId"])


def test_run_backend_aws_from_deploy_to_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               moto_server: str, shop: Server) -> None:
    fake_aws(monkeypatch, tmp_path)  # this process too: the agent thread signs its requests
    fake = FakePulumi(tmp_path, monkeypatch)
    (fake.home / "up_hook.py").write_text(UP_HOOK)
    (fake.home / "destroy_hook.py").write_text(DESTROY_HOOK)
    fake.scenario({"outputs": {"url": shop.url},
                   "hooks": {"up": str(fake.home / "up_hook.py"),
                             "destroy": str(fake.home / "destroy_hook.py")}})
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(home / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials")}
    stop, published, errors = threading.Event(), [], []
    agent = threading.Thread(target=play_the_agent, args=(moto_server, stop, published, errors),
                             daemon=True)
    agent.start()
    out = tmp_path / "results"
    try:
        done = subprocess.run([sys.executable, "-m", "experiments", "run", "--backend", "aws",
                               "--variants", "micro", "--profile", "smoke", "--out", str(out)],
                              cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                              timeout=900)
    finally:
        stop.set()
        agent.join(10)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert errors == [] and published, errors[:3]

    # deployed with Pulumi, then destroyed with Pulumi; nothing left in "AWS"
    assert fake.ops() == ["up", "destroy"]
    made = json.loads((fake.home / "hook-outputs.json").read_text())
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_server,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    states = {i["InstanceId"]: i["State"]["Name"]
              for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert {states[i] for i in made["instance_ids"]} == {"terminated"}
    logs = boto3.client("logs", region_name="us-east-1", endpoint_url=moto_server,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    assert logs.describe_log_groups(logGroupNamePrefix="/scalelab/")["logGroups"] == []

    # loaded the stack's own url (the shop on loopback), measured, diagnosed, priced, reported
    run_dir = next(out.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["backend"] == "aws"
    (micro,) = summary["variants"]
    assert micro["name"] == "micro" and micro["capacity_rps"] > 0 and micro["steps"]
    assert micro["cost"]["hourly_usd"] > 0 and isinstance(micro["failure"]["kind"], str)
    served = sum('"GET /' in line for line in shop.log().splitlines())  # its access log
    assert served > sum(step["achieved_rps"] for step in micro["steps"])  # > 1 s of each step
    with open(run_dir / "micro" / "signals.csv", newline="") as fh:
        signals = list(csv.DictReader(fh))
    assert signals and {s["instance"] for s in signals} == set(made["instance_ids"])
    assert any(s["memory_bytes"] for s in signals)  # the agent's series, found without ListMetrics
    assert list(run_dir.glob("report.*")), sorted(p.name for p in run_dir.iterdir())
    assert published
