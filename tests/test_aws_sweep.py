"""The leftover sweep against moto, with the names and failure shapes real AWS produces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_aws_support import instances, moto_session, tags

from experiments.backends.aws.sweep import (
    TaggedResource,
    delete_resources,
    find_tagged,
    parse_arn,
)

PURGED = "i-0123456789abcdef0"
"""An instance id EC2 no longer knows: terminated long ago, still in the tagging API."""


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    with moto_session(monkeypatch, tmp_path) as session:
        yield session


def test_parse_arn_keeps_a_log_groups_own_slashes() -> None:
    assert parse_arn("arn:aws:logs:us-east-1:123456789012:log-group:/scalelab/micro-swap:*") \
        == ("log-group", "/scalelab/micro-swap")
    ec2 = "arn:aws:ec2:us-east-1:123456789012"
    assert parse_arn(f"{ec2}:instance/i-0abc") == ("instance", "i-0abc")
    assert parse_arn(f"{ec2}:volume/vol-0abc") == ("volume", "vol-0abc")
    bucket = "micro-app-bucket-1a2b3c4"
    assert parse_arn(f"arn:aws:s3:::{bucket}") == ("bucket", bucket)


def test_the_stacks_log_group_is_found_and_deleted(aws: Any) -> None:
    """`/scalelab/<variant>` is what userdata.render.log_group_name gives; a leftover one makes
    the next `pulumi up` fail with ResourceAlreadyExistsException."""
    logs = aws.client("logs")
    logs.create_log_group(logGroupName="/scalelab/micro-swap",
                          tags={t["Key"]: t["Value"] for t in tags("old-run", "micro-swap")})
    found = find_tagged(aws, ["us-east-1"])
    assert [(r.kind, r.ident) for r in found] == [("log-group", "/scalelab/micro-swap")]
    lines: list[str] = []
    deleted = list(delete_resources(aws, found, lines.append, retry_s=0.01))
    assert [r.ident for r in deleted] == ["/scalelab/micro-swap"] and lines == []
    assert logs.describe_log_groups()["logGroups"] == []


def test_one_purged_instance_does_not_stop_the_others(aws: Any) -> None:
    live = instances(aws, 2, "old-run")
    ec2 = aws.client("ec2")
    gone = instances(aws, 1, "older-run")
    ec2.terminate_instances(InstanceIds=gone)
    listed = [TaggedResource(f"arn:aws:ec2:us-east-1:123456789012:instance/{i}", "us-east-1",
                             "instance", i, {"run-id": "old-run"})
              for i in [PURGED, *live, *gone]]
    # the terminated one is dropped, the purged one too, the running ones stay
    from experiments.backends.aws.sweep import _without_gone_instances

    kept = _without_gone_instances(aws, listed)
    assert sorted(r.ident for r in kept) == sorted(live)
    lines: list[str] = []
    deleted = list(delete_resources(aws, [listed[0], *kept], lines.append,
                                    retry_s=0.01))
    assert sorted(r.ident for r in deleted) == sorted([PURGED, *live]) and lines == []
    states = {i["InstanceId"]: i["State"]["Name"]
              for r in ec2.describe_instances(InstanceIds=live)["Reservations"]
              for i in r["Instances"]}
    assert set(states.values()) == {"terminated"}


def test_attached_root_volumes_are_not_noise_but_a_detached_one_is_deleted(
        aws: Any) -> None:
    (instance,) = instances(aws, 1, "old-run")
    ec2 = aws.client("ec2")
    loose = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8, TagSpecifications=[
        {"ResourceType": "volume", "Tags": tags("old-run")}])["VolumeId"]
    found = find_tagged(aws, ["us-east-1"])
    kinds = sorted((r.kind, r.ident) for r in found)
    assert kinds == sorted([("instance", instance), ("volume", loose)])  # root volume: with it
    lines: list[str] = []
    deleted = list(delete_resources(aws, found, lines.append, retry_s=0.01))
    assert sorted((r.kind, r.ident) for r in deleted) == kinds
    assert not any("no rule" in line for line in lines), lines
    assert loose not in {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
