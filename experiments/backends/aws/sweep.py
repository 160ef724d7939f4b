"""Find and remove AWS resources tagged by scalelab that outlived their run.

The Resource Groups Tagging API lists every tagged resource of a region in one paginated call,
whatever its service. Deleting goes in dependency order: instances (wait until terminated),
load balancers (wait until gone), target groups, then security groups — these last ones retry,
because AWS releases an ALB's network interfaces a while after the ALB is deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from stacks.variant import PROJECT

MANUAL_RUN = "manual"
DELETE_ORDER = ("instance", "loadbalancer", "targetgroup", "security-group")
GONE_STATES = {"terminated", "shutting-down"}


@dataclass
class TaggedResource:
    arn: str
    region: str
    kind: str
    """instance, loadbalancer, targetgroup, security-group, ... (from the ARN)."""
    ident: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.tags.get("run-id", "")

    @property
    def variant(self) -> str:
        return self.tags.get("variant", self.tags.get("stack", ""))


def parse_arn(arn: str) -> tuple[str, str]:
    """(kind, id): `...:instance/i-1` -> (instance, i-1); ALB/TG keep their full ARN as id."""
    resource = arn.split(":", 5)[5] if arn.count(":") >= 5 else arn
    kind, _, rest = resource.partition("/")
    if kind in ("loadbalancer", "targetgroup", "listener", "listener-rule"):
        return kind, arn
    return kind, rest or resource


def find_tagged(session: Any, regions: list[str]) -> list[TaggedResource]:
    """Every resource tagged project=scalelab in these regions (terminated instances left out)."""
    found: list[TaggedResource] = []
    for region in regions:
        client = session.client("resourcegroupstaggingapi", region_name=region)
        pages = client.get_paginator("get_resources").paginate(
            TagFilters=[{"Key": "project", "Values": [PROJECT]}])
        for page in pages:
            for item in page.get("ResourceTagMappingList", []):
                kind, ident = parse_arn(item["ResourceARN"])
                tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
                found.append(TaggedResource(item["ResourceARN"], region, kind, ident, tags))
    return _without_gone_instances(session, found)


def _without_gone_instances(session: Any, found: list[TaggedResource]) -> list[TaggedResource]:
    """The tagging API keeps showing terminated instances for a while; they cost nothing."""
    by_region: dict[str, list[str]] = {}
    for r in found:
        if r.kind == "instance":
            by_region.setdefault(r.region, []).append(r.ident)
    gone: set[str] = set()
    for region, ids in by_region.items():
        ec2 = session.client("ec2", region_name=region)
        try:
            for page in ec2.get_paginator("describe_instances").paginate(InstanceIds=ids):
                for reservation in page["Reservations"]:
                    for inst in reservation["Instances"]:
                        if inst["State"]["Name"] in GONE_STATES:
                            gone.add(inst["InstanceId"])
        except Exception as exc:  # e.g. an id already purged: keep going with what is known
            if "InvalidInstanceID.NotFound" not in str(exc):
                raise
    return [r for r in found if not (r.kind == "instance" and r.ident in gone)]


def delete_resources(session: Any, resources: list[TaggedResource],
                     emit: Callable[[str], None] = lambda _line: None,
                     retry_s: float = 10.0, attempts: int = 30) -> Iterator[TaggedResource]:
    """Delete in dependency order, yielding each resource once it is gone. Best effort: a
    failure is reported through `emit` and the sweep goes on with the rest."""
    rank = {kind: i for i, kind in enumerate(DELETE_ORDER)}
    ordered = sorted(resources, key=lambda r: rank.get(r.kind, len(DELETE_ORDER)))
    for kind in DELETE_ORDER:
        group = [r for r in ordered if r.kind == kind]
        if group:
            yield from _DELETERS[kind](session, group, emit, retry_s, attempts)
    for r in ordered:
        if r.kind not in rank:
            emit(f"not deleted (no rule for {r.kind}): {r.arn}; remove it in the console or with "
                 "`pulumi destroy`")


def _by_region(group: list[TaggedResource]) -> dict[str, list[TaggedResource]]:
    out: dict[str, list[TaggedResource]] = {}
    for r in group:
        out.setdefault(r.region, []).append(r)
    return out


def _instances(session: Any, group: list[TaggedResource], emit: Callable[[str], None],
               retry_s: float, attempts: int) -> Iterator[TaggedResource]:
    for region, items in _by_region(group).items():
        ec2 = session.client("ec2", region_name=region)
        ids = [r.ident for r in items]
        try:
            ec2.terminate_instances(InstanceIds=ids)
            ec2.get_waiter("instance_terminated").wait(
                InstanceIds=ids, WaiterConfig={"Delay": max(1, int(retry_s)),
                                               "MaxAttempts": attempts})
        except Exception as exc:
            emit(f"terminating {', '.join(ids)} in {region} failed: {exc}")
            continue
        yield from items


def _load_balancers(session: Any, group: list[TaggedResource], emit: Callable[[str], None],
                    retry_s: float, attempts: int) -> Iterator[TaggedResource]:
    for region, items in _by_region(group).items():
        elbv2 = session.client("elbv2", region_name=region)
        deleted = []
        for r in items:
            try:
                elbv2.delete_load_balancer(LoadBalancerArn=r.ident)
                deleted.append(r)
            except Exception as exc:
                emit(f"deleting load balancer {r.ident} failed: {exc}")
        if deleted:
            try:
                elbv2.get_waiter("load_balancers_deleted").wait(
                    LoadBalancerArns=[r.ident for r in deleted],
                    WaiterConfig={"Delay": max(1, int(retry_s)), "MaxAttempts": attempts})
            except Exception as exc:
                emit(f"waiting for load balancers in {region} to go failed: {exc}")
        yield from deleted


def _target_groups(session: Any, group: list[TaggedResource], emit: Callable[[str], None],
                   retry_s: float, attempts: int) -> Iterator[TaggedResource]:
    for r in group:
        elbv2 = session.client("elbv2", region_name=r.region)
        try:
            elbv2.delete_target_group(TargetGroupArn=r.ident)
        except Exception as exc:
            emit(f"deleting target group {r.ident} failed: {exc}")
            continue
        yield r


def _security_groups(session: Any, group: list[TaggedResource], emit: Callable[[str], None],
                     retry_s: float, attempts: int) -> Iterator[TaggedResource]:
    """Groups may reference each other or wait on released interfaces: retry in rounds."""
    remaining = list(group)
    errors: dict[str, str] = {}
    for attempt in range(attempts):
        still: list[TaggedResource] = []
        for r in remaining:
            ec2 = session.client("ec2", region_name=r.region)
            try:
                ec2.delete_security_group(GroupId=r.ident)
            except Exception as exc:
                if "NotFound" in str(exc):
                    yield r
                    continue
                errors[r.ident] = str(exc)
                still.append(r)
                continue
            yield r
        remaining = still
        if not remaining:
            return
        if attempt + 1 < attempts:
            time.sleep(retry_s)
    for r in remaining:
        emit(f"deleting security group {r.ident} in {r.region} failed: {errors.get(r.ident)}")


_DELETERS: dict[str, Callable[..., Iterator[TaggedResource]]] = {
    "instance": _instances,
    "loadbalancer": _load_balancers,
    "targetgroup": _target_groups,
    "security-group": _security_groups,
}
