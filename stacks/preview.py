"""Run the real Pulumi program under Pulumi's mocks: what would this variant declare?

No CLI, no AWS account: `pulumi.runtime.set_mocks` answers every resource registration and
invoke in-process. The cost model prices the returned list (like Infracost for Terraform) and
the tests assert the resource graph on it.

Each run happens inside a fresh `contextvars.Context` and a fresh event loop: Pulumi keeps its
settings, config and root stack resource in context variables, so runs do not see each other
and `declared_resources` can be called any number of times in one process (~0.1-0.3 s a call
after the first import of pulumi_aws).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import gc
import hashlib
import json
import runpy
import threading
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import wait_for_rpcs

from stacks.variant import PROJECT, PROJECT_DIR, Variant, VariantError, stack_config

MAIN = PROJECT_DIR / "__main__.py"


@atexit.register
def _close_pulumis_event_loops() -> None:
    """Close the event loops Pulumi's `sync_await` opened and never closed (one per thread
    that awaited, ~6 a run): left to the interpreter's shutdown, one is now and then finalized
    after its own self-pipe and prints "Exception ignored … Invalid file descriptor: -1" with
    a traceback under the command's last line (`plan`: about 1 run in 15)."""
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.AbstractEventLoop) and not obj.is_running() \
                and not obj.is_closed():
            obj.close()
DEFAULT_ZONES = ("a", "b", "c")
ACCOUNT = "123456789012"


@dataclass
class DeclaredResource:
    """One resource the program registers: Pulumi type token, logical name, camelCase inputs."""

    type: str
    name: str
    inputs: dict[str, Any]
    urn: str = ""
    id: str = ""
    """The id the mocks gave it (what other resources' inputs refer to)."""
    parent: str = ""
    """URN of the parent resource ("" for children of the stack)."""
    custom: bool = True
    """False for component resources (scalelab:...)."""
    dependencies: list[str] = field(default_factory=list)
    """URNs it waits for: `depends_on` plus those its inputs come from."""


@dataclass
class ProgramRun:
    """Everything one mocked run produced."""

    resources: list[DeclaredResource]
    outputs: dict[str, Any]
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of_type(self, type_token: str) -> list[DeclaredResource]:
        return [r for r in self.resources if r.type == type_token]

    def by_urn(self, urn: str) -> DeclaredResource:
        return next(r for r in self.resources if r.urn == urn)


def _short_id(prefix: str, name: str) -> str:
    return f"{prefix}-0{hashlib.sha1(name.encode()).hexdigest()[:16]}"


_ID_PREFIX = {
    "aws:ec2/instance:Instance": "i", "aws:ec2/securityGroup:SecurityGroup": "sg",
    "aws:ec2/vpc:Vpc": "vpc", "aws:ec2/subnet:Subnet": "subnet",
    "aws:ec2/internetGateway:InternetGateway": "igw", "aws:ec2/routeTable:RouteTable": "rtb",
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": "sgr",
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": "sgr",
}


class ScalelabMocks(pulumi.runtime.Mocks):
    """Plausible computed outputs for what scalelab declares, and a region with N zones."""

    def __init__(self, region: str, zones: tuple[str, ...] = DEFAULT_ZONES,
                 default_vpc: bool = True) -> None:
        self.region = region
        self.zones = [f"{region}{z}" for z in zones]
        self.default_vpc = default_vpc
        self.inputs: dict[str, dict[str, Any]] = {}
        self.invokes: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        self.inputs[f"{args.typ}::{args.name}"] = dict(args.inputs)
        if not args.custom:
            return None, {}
        typ, name, state = args.typ, args.name, dict(args.inputs)
        rid = _short_id(_ID_PREFIX.get(typ, name.split("-")[-1][:6] or "id"), name)
        service = typ.split(":")[1].split("/")[0]
        state.setdefault("arn", f"arn:aws:{service}:{self.region}:{ACCOUNT}:{name}/{rid}")
        if typ == "aws:ec2/instance:Instance":
            n = int(hashlib.sha1(name.encode()).hexdigest()[:4], 16)
            ip = f"54.{n % 250}.{(n // 250) % 250}.{n % 7 + 10}"
            state.update(publicIp=ip, privateIp=f"172.31.{n % 250}.{n % 200 + 10}",
                         publicDns=f"ec2-{ip.replace('.', '-')}.compute-1.amazonaws.com")
        elif typ == "aws:lb/loadBalancer:LoadBalancer":
            state.update(dnsName=f"{name}-{rid[-8:]}.{self.region}.elb.amazonaws.com",
                         arn=f"arn:aws:elasticloadbalancing:{self.region}:{ACCOUNT}:"
                             f"loadbalancer/app/{name}/{rid[-16:]}")
        elif typ == "aws:lb/targetGroup:TargetGroup":
            state["arn"] = (f"arn:aws:elasticloadbalancing:{self.region}:{ACCOUNT}:"
                            f"targetgroup/{name}/{rid[-16:]}")
        elif typ == "aws:s3/bucket:Bucket":
            rid = f"{name}-{rid[-7:]}".lower()
            state.update(bucket=rid, arn=f"arn:aws:s3:::{rid}")
        elif typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            rid = state.get("name") or f"{name}-{rid[-7:]}"
            kind = "role" if typ.endswith("Role") else "instance-profile"
            state.update(name=rid, arn=f"arn:aws:iam::{ACCOUNT}:{kind}/{rid}")
        elif typ == "aws:cloudwatch/logGroup:LogGroup":
            rid = state.get("name") or name
            state["arn"] = f"arn:aws:logs:{self.region}:{ACCOUNT}:log-group:{rid}"
        elif typ == "aws:ec2/vpc:Vpc":
            state.setdefault("cidrBlock", "10.42.0.0/16")
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:  # type: ignore[override]
        # Pulumi reads a bare dict as "no check failures" (mocks.py), its annotation says tuple.
        token, inputs = args.token, dict(args.args)
        self.invokes.append((token, inputs))
        if token == "aws:ec2/getAmi:getAmi":
            image = "ami-0" + hashlib.sha1(json.dumps(inputs, sort_keys=True, default=str)
                                           .encode()).hexdigest()[:16]
            return {"id": image, "imageId": image, "architecture": "x86_64",
                    "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261101"}
        if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            types = [v for f in inputs.get("filters", []) if f.get("name") == "instance-type"
                     for v in f.get("values", [])]
            return {"id": self.region, "locations": list(self.zones),
                    "locationTypes": ["availability-zone"] * len(self.zones),
                    "instanceTypes": (types or ["t2.micro"]) * len(self.zones)}
        if token == "aws:ec2/getVpc:getVpc":
            if not self.default_vpc:
                raise Exception("no matching EC2 VPC found")
            return {"id": "vpc-0default0000000", "cidrBlock": "172.31.0.0/16", "default": True,
                    "arn": f"arn:aws:ec2:{self.region}:{ACCOUNT}:vpc/vpc-0default0000000"}
        if token == "aws:ec2/getSubnets:getSubnets":
            wanted = next((f.get("values", []) for f in inputs.get("filters", [])
                           if f.get("name") == "availability-zone"), self.zones)
            ids = [f"subnet-0default{z[-1]}{i}" for i, z in enumerate(self.zones) if z in wanted]
            return {"id": self.region, "ids": ids}
        if token == "aws:index/getPartition:getPartition":
            return {"id": "aws", "partition": "aws", "dnsSuffix": "amazonaws.com",
                    "reverseDnsPrefix": "com.amazonaws"}
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"id": self.region, "names": list(self.zones),
                    "zoneIds": [f"use1-az{i + 1}" for i in range(len(self.zones))]}
        return {}


def _run(variant: Variant, mocks: ScalelabMocks) -> ProgramRun:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    monitor = pulumi_mocks.MockMonitor(mocks)
    registered: list[tuple[str, str, str, str, str, bool, list[str]]] = []
    register = monitor.RegisterResource

    def recording_register(request: Any) -> Any:
        response = register(request)
        registered.append((request.type, request.name, response.urn, response.id,
                           request.parent, bool(request.custom), list(request.dependencies)))
        return response

    monitor.RegisterResource = recording_register  # type: ignore[method-assign]
    try:
        pulumi_settings.set_root_resource(None)  # type: ignore[arg-type]
        # MockSettings leaves the set of outstanding outputs (and its lock) at whatever the
        # process had: a run that failed half-way would leave tasks of its dead loop there and
        # the next run would wait for them forever. Give each run its own.
        pulumi_settings.SETTINGS.outputs = set()
        pulumi_settings.SETTINGS.lock = threading.Lock()
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=variant.name, preview=False,
                                 monitor=monitor)
        pulumi.runtime.set_all_config(stack_config(variant))
        runpy.run_path(str(MAIN), run_name="__main__")
        loop.run_until_complete(wait_for_rpcs())
        root = pulumi_settings.get_root_resource()
        exported = getattr(root, "outputs", {})

        async def resolve() -> dict[str, Any]:
            return {k: await pulumi.Output.from_input(v).future() for k, v in exported.items()}

        outputs = loop.run_until_complete(resolve())
    finally:
        # A program that failed half-way leaves registrations pending: cancel them quietly.
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        asyncio.set_event_loop(None)
        loop.close()
    stack_urn = next((r[2] for r in registered if r[0] == "pulumi:pulumi:Stack"), "")
    resources = [
        DeclaredResource(type=typ, name=name, inputs=mocks.inputs.get(f"{typ}::{name}", {}),
                         urn=urn, id=rid, parent="" if parent == stack_urn else parent,
                         custom=custom, dependencies=deps)
        for typ, name, urn, rid, parent, custom, deps in registered
        if typ != "pulumi:pulumi:Stack"
    ]
    return ProgramRun(resources=resources, outputs=outputs, invokes=list(mocks.invokes))


def run_program(variant: Variant, zones: tuple[str, ...] = DEFAULT_ZONES,
                default_vpc: bool = True) -> ProgramRun:
    """Run __main__.py for `variant` under mocks; resources (components too) and outputs.

    Raises the program's VariantError unchanged (one sentence for the user).
    """
    mocks = ScalelabMocks(variant.region, zones, default_vpc)
    result: list[ProgramRun] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(contextvars.Context().run(_run, variant, mocks))
        except BaseException as exc:  # re-raised in the caller's thread below
            failure.append(exc)

    # A thread of its own: asyncio keeps the running loop per thread, and a program that failed
    # half-way must not leave its loop state behind for the next run.
    worker = threading.Thread(target=target, name=f"pulumi-preview-{variant.name}")
    worker.start()
    worker.join()
    if not failure:
        return result[0]
    cause: BaseException | None = failure[0]
    while cause is not None:  # the engine may wrap the program's error; surface ours as it was
        if isinstance(cause, VariantError):
            raise cause.with_traceback(None) from None
        cause = cause.__cause__ or cause.__context__
    raise failure[0]


def declared_resources(variant: Variant) -> list[DeclaredResource]:
    """The AWS resources (custom resources only) the real program declares for `variant`."""
    return [r for r in run_program(variant).resources if r.custom]
