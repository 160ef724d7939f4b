"""Find and remove AWS resources tagged by scalelab that outlived their run.

The Resource Groups Tagging API lists every tagged resource of a region in one paginated call,
whatever its service (IAM is global and not in it: roles are found by name and tag instead).
Deleting goes in dependency order: instances (one call per id, then wait until terminated),
detached volumes (root volumes still attached go with their instance), load balancers (wait until
gone), target groups, security groups — these retry, because AWS releases an ALB's network
interfaces a while after the ALB is deleted — then a `network.vpc: new` VPC's gateway, subnets,
route tables and the VPC, and finally the log group, the app bundle bucket and IAM roles.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from stacks.variant import PROJECT

MANUAL_RUN = "manual"
DELETE_ORDER = ("instance", "volume", "loadbalancer", "targetgroup", "security-group",
                "internet-gateway", "subnet", "route-table", "vpc", "log-group", "bucket", "role")
PART_OF_PARENT = {"security-group-rule", "listener", "listener-rule"}
"""Tagged too, but removed with their group / load balancer: not listed on their own."""
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
    """(kind, id): `...:instance/i-1` -> (instance, i-1), `...:log-group:g` -> (log-group, g),
    `arn:aws:s3:::b` -> (bucket, b); ALB and TG keep their full ARN as id (elbv2 wants it)."""
    parts = arn.split(":", 5)
    if len(parts) < 6:
        return "unknown", arn
    service, resource = parts[2], parts[5]
    if service == "s3" and "/" not in resource:
        return "bucket", resource
    # The kind ends at the first "/" or ":", whichever comes first: a log group's name has
    # slashes of its own (`log-group:/scalelab/micro:*`).
    cut = min((i for i in (resource.find("/"), resource.find(":")) if i >= 0), default=-1)
    if cut < 0:
        return resource, resource
    kind, rest = resource[:cut], resource[cut + 1:]
    if kind in ("loadbalancer", "targetgroup", "listener", "listener-rule"):
        return kind, arn
    return kind, rest.removesuffix(":*") or resource


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
                if kind in PART_OF_PARENT:
                    continue
                tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
                found.append(TaggedResource(item["ResourceARN"], region, kind, ident, tags))
    if regions:
        found.extend(_tagged_roles(session))
    return _without_gone_instances(session, found)


def _tagged_roles(session: Any) -> list[TaggedResource]:
    """IAM roles named after a variant (Pulumi autonames `<variant>-web-0-role-1a2b3c`) and
    tagged project=scalelab. Roles cost nothing, but an account holds at most 1,000."""
    from stacks.variant import available_variants

    prefixes = tuple(f"{name}-" for name in available_variants())
    iam = session.client("iam")
    found = []
    for page in iam.get_paginator("list_roles").paginate():
        for role in page["Roles"]:
            if not role["RoleName"].startswith(prefixes):
                continue
            tags = {t["Key"]: t["Value"]
                    for t in iam.list_role_tags(RoleName=role["RoleName"])["Tags"]}
            if tags.get("project") == PROJECT:
                found.append(TaggedResource(role["Arn"], "global", "role", role["RoleName"], tags))
    return found


def _without_gone_instances(session: Any, found: list[TaggedResource]) -> list[TaggedResource]:
    """The tagging API keeps showing terminated instances (and deleted root volumes) for a
    while; they cost nothing. Root volumes still attached go with their instance: not listed."""
    gone: set[str] = set()
    for region, ids in _idents(found, "instance").items():
        states = _instance_states(session.client("ec2", region_name=region), ids)
        gone |= {i for i in ids if states.get(i, "terminated") in GONE_STATES}
    for region, ids in _idents(found, "volume").items():
        states = _volume_states(session.client("ec2", region_name=region), ids)
        gone |= {i for i in ids if states.get(i, "deleted") != "available"}
    return [r for r in found if not (r.kind in ("instance", "volume") and r.ident in gone)]


def _idents(found: list[TaggedResource], kind: str) -> dict[str, list[str]]:
    by_region: dict[str, list[str]] = {}
    for r in found:
        if r.kind == kind:
            by_region.setdefault(r.region, []).append(r.ident)
    return by_region


def _instance_states(ec2: Any, ids: list[str]) -> dict[str, str]:
    """id -> state, by filter: one id already purged by EC2 must not fail the whole batch (with
    `InstanceIds=` it would: InvalidInstanceID.NotFound). Purged ids are simply absent."""
    states: dict[str, str] = {}
    for i in range(0, len(ids), 200):  # a filter takes at most 200 values
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-id", "Values": ids[i:i + 200]}])
        for page in pages:
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    states[inst["InstanceId"]] = inst["State"]["Name"]
    return states


def _volume_states(ec2: Any, ids: list[str]) -> dict[str, str]:
    states: dict[str, str] = {}
    for i in range(0, len(ids), 200):
        pages = ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": "volume-id", "Values": ids[i:i + 200]}])
        for page in pages:
            for volume in page["Volumes"]:
                states[volume["VolumeId"]] = volume["State"]
    return states


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
    """Terminate one id at a time (one purged id fails a whole batch call), then wait by
    filter until each is terminated or gone."""
    for region, items in _by_region(group).items():
        ec2 = session.client("ec2", region_name=region)
        waiting: list[TaggedResource] = []
        for r in items:
            try:
                ec2.terminate_instances(InstanceIds=[r.ident])
            except Exception as exc:
                if "InvalidInstanceID.NotFound" in str(exc):
                    yield r  # already purged: nothing left to pay for
                    continue
                emit(f"terminating {r.ident} in {region} failed: {exc}")
                continue
            waiting.append(r)
        for attempt in range(attempts):
            if not waiting:
                break
            states = _instance_states(ec2, [r.ident for r in waiting])
            done = [r for r in waiting if states.get(r.ident, "terminated") == "terminated"]
            yield from done
            waiting = [r for r in waiting if r not in done]
            if waiting and attempt + 1 < attempts:
                time.sleep(retry_s)
        for r in waiting:
            emit(f"instance {r.ident} in {region} was still not terminated after "
                 f"{attempts} checks")


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


def _one_by_one(delete: Callable[[Any, TaggedResource], None], service: str,
                what: str) -> Callable[..., Iterator[TaggedResource]]:
    """A deleter for resources without ordering troubles among themselves."""
    def run(session: Any, group: list[TaggedResource], emit: Callable[[str], None],
            retry_s: float, attempts: int) -> Iterator[TaggedResource]:
        for r in group:
            region = None if r.region == "global" else r.region
            try:
                delete(session.client(service, region_name=region), r)
            except Exception as exc:
                if "NotFound" in str(exc) or "NoSuchEntity" in str(exc):
                    yield r
                    continue
                emit(f"deleting {what} {r.ident} in {r.region} failed: {exc}")
                continue
            yield r
    return run


def _delete_igw(ec2: Any, r: TaggedResource) -> None:
    gateway = ec2.describe_internet_gateways(InternetGatewayIds=[r.ident])["InternetGateways"]
    for attachment in (gateway[0].get("Attachments", []) if gateway else []):
        ec2.detach_internet_gateway(InternetGatewayId=r.ident, VpcId=attachment["VpcId"])
    ec2.delete_internet_gateway(InternetGatewayId=r.ident)


def _delete_route_table(ec2: Any, r: TaggedResource) -> None:
    tables = ec2.describe_route_tables(RouteTableIds=[r.ident])["RouteTables"]
    for assoc in (tables[0].get("Associations", []) if tables else []):
        if not assoc.get("Main"):
            ec2.disassociate_route_table(AssociationId=assoc["RouteTableAssociationId"])
    ec2.delete_route_table(RouteTableId=r.ident)


def _delete_bucket(s3: Any, r: TaggedResource) -> None:
    """The app bundle bucket: empty it (every version) first, S3 refuses otherwise."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=r.ident):
        doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                  for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if doomed:
            s3.delete_objects(Bucket=r.ident, Delete={"Objects": doomed, "Quiet": True})
    s3.delete_bucket(Bucket=r.ident)


def _delete_role(iam: Any, r: TaggedResource) -> None:
    for profile in iam.list_instance_profiles_for_role(RoleName=r.ident)["InstanceProfiles"]:
        name = profile["InstanceProfileName"]
        iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=r.ident)
        iam.delete_instance_profile(InstanceProfileName=name)
    for policy in iam.list_attached_role_policies(RoleName=r.ident)["AttachedPolicies"]:
        iam.detach_role_policy(RoleName=r.ident, PolicyArn=policy["PolicyArn"])
    for name in iam.list_role_policies(RoleName=r.ident)["PolicyNames"]:
        iam.delete_role_policy(RoleName=r.ident, PolicyName=name)
    iam.delete_role(RoleName=r.ident)


_DELETERS: dict[str, Callable[..., Iterator[TaggedResource]]] = {
    "instance": _instances,
    "volume": _one_by_one(lambda ec2, r: ec2.delete_volume(VolumeId=r.ident), "ec2",
                          "volume"),
    "loadbalancer": _load_balancers,
    "targetgroup": _target_groups,
    "security-group": _security_groups,
    "internet-gateway": _one_by_one(_delete_igw, "ec2", "internet gateway"),
    "subnet": _one_by_one(lambda ec2, r: ec2.delete_subnet(SubnetId=r.ident), "ec2", "subnet"),
    "route-table": _one_by_one(_delete_route_table, "ec2", "route table"),
    "vpc": _one_by_one(lambda ec2, r: ec2.delete_vpc(VpcId=r.ident), "ec2", "VPC"),
    "log-group": _one_by_one(lambda logs, r: logs.delete_log_group(logGroupName=r.ident),
                             "logs", "log group"),
    "bucket": _one_by_one(_delete_bucket, "s3", "bucket"),
    "role": _one_by_one(_delete_role, "iam", "IAM role"),
}
