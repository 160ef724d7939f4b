"""The real __main__.py under Pulumi's mocks, once per stack file: assert the resource graph.

No CLI and no AWS: stacks.preview runs the program in-process with mocked resources and
invokes (a region with three zones and a default VPC unless a test says otherwise).
"""

from __future__ import annotations

import importlib
import inspect
import json
import shlex
from dataclasses import replace

import pytest
import yaml

from stacks.bundle import bundle_files
from stacks.preview import DeclaredResource, ProgramRun, declared_resources, run_program
from stacks.variant import AppSource, Network, VariantError, load_variant
from userdata.render import APP_PORT, AppFetch, render_user_data, unit_gunicorn_args

VARIANTS = ("micro", "micro-swap", "scale-up", "scale-out")
INSTANCE = "aws:ec2/instance:Instance"
SG = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
ALB = "aws:lb/loadBalancer:LoadBalancer"
TG = "aws:lb/targetGroup:TargetGroup"
LISTENER = "aws:lb/listener:Listener"
ATTACHMENT = "aws:lb/targetGroupAttachment:TargetGroupAttachment"
REQUIRED_TAGS = ("project", "variant", "stack", "run-id", "Name")

pytestmark = [
    # pulumi_aws warns about its own deprecated aliases on import; Pulumi's mock monitor leaves
    # per-thread event loops for the garbage collector. Neither is ours to fix.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(scope="module")
def runs() -> dict[str, ProgramRun]:
    return {name: run_program(load_variant(name)) for name in VARIANTS}


def cloud_config(resource: DeclaredResource) -> dict:
    text = resource.inputs["userData"]
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def exec_start(resource: DeclaredResource) -> list[str]:
    unit = next(f["content"] for f in cloud_config(resource)["write_files"]
                if f["path"] == "/etc/systemd/system/scalelab-app.service")
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def taggable(type_token: str) -> bool:
    """Whether pulumi-aws lets this resource type carry tags (its Args take `tags`)."""
    _pkg, module_path, cls_name = type_token.split(":")
    module = importlib.import_module(f"pulumi_aws.{module_path.split('/')[0]}")
    args_cls = getattr(module, f"{cls_name}Args")
    return "tags" in inspect.signature(args_cls.__init__).parameters


@pytest.mark.parametrize("name", VARIANTS)
def test_instances_match_the_stack_file(runs: dict[str, ProgramRun], name: str) -> None:
    variant, run = load_variant(name), runs[name]
    instances = run.of_type(INSTANCE)
    assert len(instances) == variant.count
    for inst in instances:
        i = inst.inputs
        assert i["instanceType"] == variant.instance_type
        assert i["metadataOptions"]["httpTokens"] == "required"
        assert i["rootBlockDevice"] == {**i["rootBlockDevice"], "encrypted": True,
                                        "volumeType": "gp3", "volumeSize": 8}
        assert i["creditSpecification"] == {"cpuCredits": variant.credit_mode}
        assert i["ami"].startswith("ami-") and i["userDataReplaceOnChange"] is True
        assert "keyName" not in i  # no SSH key: access is SSM Session Manager
    expected_credits = {"micro": "standard", "micro-swap": "standard", "scale-up": "unlimited",
                        "scale-out": "standard"}[name]
    assert instances[0].inputs["creditSpecification"]["cpuCredits"] == expected_credits


@pytest.mark.parametrize("name", VARIANTS)
def test_userdata_has_swap_only_when_configured_and_the_gunicorn_flags(
        runs: dict[str, ProgramRun], name: str) -> None:
    variant, run = load_variant(name), runs[name]
    bucket, key = run.outputs["bundle_bucket"], run.outputs["bundle_key"]
    for inst in run.of_type(INSTANCE):
        text = inst.inputs["userData"]
        # Exactly what userdata/ renders from the same Variant: the config round trip is lossless.
        assert text == render_user_data(variant, AppFetch(bucket, key))
        swap_steps = ("fallocate -l", "mkswap /swapfile", "swapon /swapfile", "vm.swappiness")
        if variant.swap_mib:
            assert f"fallocate -l {variant.swap_mib}M /swapfile" in text
            assert all(step in text for step in swap_steps)
        else:
            assert not any(step in text for step in swap_steps)
            assert "/swapfile" not in text
        args = exec_start(inst)
        assert args[0] == "/opt/scalelab/venv/bin/gunicorn"
        assert args[1:] == unit_gunicorn_args(variant)
    workers = {"micro": "2", "micro-swap": "2", "scale-up": "5", "scale-out": "2"}[name]
    flags = exec_start(run.of_type(INSTANCE)[0])
    assert flags[flags.index("--workers") + 1] == workers
    assert flags[flags.index("--timeout") + 1] == "30"
    assert flags[flags.index("--worker-tmp-dir") + 1] == "/dev/shm"


def test_scale_out_is_an_alb_in_front_of_three_instances(runs: dict[str, ProgramRun]) -> None:
    run = runs["scale-out"]
    (alb,) = run.of_type(ALB)
    (tg,) = run.of_type(TG)
    (listener,) = run.of_type(LISTENER)
    assert alb.inputs["loadBalancerType"] == "application" and alb.inputs["internal"] is False
    assert len(set(alb.inputs["subnets"])) >= 2
    hc = tg.inputs["healthCheck"]
    assert (hc["path"], hc["interval"], hc["timeout"], hc["healthyThreshold"],
            hc["unhealthyThreshold"]) == ("/healthz", 5, 4, 2, 2)
    assert tg.inputs["loadBalancingAlgorithmType"] == "round_robin"
    assert tg.inputs["port"] == APP_PORT and tg.inputs["protocol"] == "HTTP"
    tg_arn = run.outputs["target_group_arn"]
    assert listener.inputs["port"] == 80 and listener.inputs["loadBalancerArn"] == \
        run.outputs["load_balancer_arn"]
    assert listener.inputs["defaultActions"] == [{"type": "forward", "targetGroupArn": tg_arn}]
    attachments = run.of_type(ATTACHMENT)
    assert sorted(a.inputs["targetId"] for a in attachments) == sorted(
        run.outputs["instance_ids"])
    assert all(a.inputs["targetGroupArn"] == tg_arn and a.inputs["port"] == APP_PORT
               for a in attachments)
    # spread over the ALB's subnets (one per zone), not piled into one
    subnets = [i.inputs["subnetId"] for i in run.of_type(INSTANCE)]
    assert set(subnets) == set(alb.inputs["subnets"])
    assert run.outputs["url"] == "http://" + alb_dns(run)


def alb_dns(run: ProgramRun) -> str:
    return run.outputs["url"].removeprefix("http://")


@pytest.mark.parametrize("name", ["micro", "micro-swap", "scale-up"])
def test_single_instance_variants_have_no_load_balancer(runs: dict[str, ProgramRun],
                                                        name: str) -> None:
    run = runs[name]
    assert not run.of_type(ALB) and not run.of_type(TG) and not run.of_type(LISTENER)
    assert not run.of_type(ATTACHMENT)
    assert "load_balancer_arn" not in run.outputs and "target_group_arn" not in run.outputs
    assert run.outputs["url"].startswith("http://ec2-")


@pytest.mark.parametrize("name", VARIANTS)
def test_no_ssh_and_explicit_egress_everywhere(runs: dict[str, ProgramRun], name: str) -> None:
    run = runs[name]
    for rule in run.of_type(INGRESS):
        i = rule.inputs
        assert i["ipProtocol"] == "tcp", "no all-protocol ingress"
        assert not (i["fromPort"] <= 22 <= i["toPort"]), f"{rule.name} opens port 22"
    groups = {sg.id for sg in run.of_type(SG)}
    assert groups == {r.inputs["securityGroupId"] for r in run.of_type(EGRESS)}
    for sg in run.of_type(SG):
        assert "ingress" not in sg.inputs and "egress" not in sg.inputs  # rules are separate


def test_scale_out_instances_accept_http_only_from_the_alb(runs: dict[str, ProgramRun]) -> None:
    run = runs["scale-out"]
    (alb,) = run.of_type(ALB)
    (alb_sg,) = alb.inputs["securityGroups"]
    instance_sgs = {sg for i in run.of_type(INSTANCE) for sg in i.inputs["vpcSecurityGroupIds"]}
    assert len(instance_sgs) == 3 and alb_sg not in instance_sgs
    ingress = run.of_type(INGRESS)
    to_instances = [r for r in ingress if r.inputs["securityGroupId"] in instance_sgs]
    assert len(to_instances) == 3
    for rule in to_instances:
        assert rule.inputs["referencedSecurityGroupId"] == alb_sg
        assert "cidrIpv4" not in rule.inputs
        assert (rule.inputs["fromPort"], rule.inputs["toPort"]) == (APP_PORT, APP_PORT)
    (to_alb,) = [r for r in ingress if r.inputs["securityGroupId"] == alb_sg]
    assert (to_alb.inputs["cidrIpv4"], to_alb.inputs["fromPort"]) == ("0.0.0.0/0", 80)


def test_single_instance_accepts_the_app_port_from_the_allowed_cidr() -> None:
    variant = load_variant("micro").with_overrides(allowed_cidr="203.0.113.0/24")
    run = run_program(variant)
    (rule,) = run.of_type(INGRESS)
    assert rule.inputs["cidrIpv4"] == "203.0.113.0/24"
    assert (rule.inputs["fromPort"], rule.inputs["toPort"]) == (APP_PORT, APP_PORT)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_taggable_resource_is_tagged(runs: dict[str, ProgramRun], name: str) -> None:
    untagged = []
    for res in runs[name].resources:
        if not res.custom or not taggable(res.type):
            continue
        tags = res.inputs.get("tags") or {}
        if any(k not in tags for k in REQUIRED_TAGS):
            untagged.append(res.name)
        else:
            assert (tags["project"], tags["variant"], tags["stack"]) == ("scalelab", name, name)
    assert untagged == []


def test_run_id_from_config_reaches_the_tags() -> None:
    run = run_program(load_variant("micro").with_overrides(run_id="20261125-103000-aws"))
    tagged = [r for r in run.resources if r.custom and "tags" in r.inputs]
    assert len(tagged) >= 8
    assert {r.inputs["tags"]["run-id"] for r in tagged} == {"20261125-103000-aws"}


@pytest.mark.parametrize("name", VARIANTS)
def test_resources_live_in_components(runs: dict[str, ProgramRun], name: str) -> None:
    run = runs[name]
    components = {r.urn: r for r in run.resources if not r.custom}
    assert {r.type for r in components.values()} >= {
        "scalelab:network:Network", "scalelab:server:WebServer", "scalelab:app:Bundle"}
    top_level = [r.type for r in run.resources if r.custom and not r.parent]
    assert top_level == ["aws:cloudwatch/logGroup:LogGroup"]
    for inst in run.of_type(INSTANCE):
        assert components[inst.parent].type == "scalelab:server:WebServer"


@pytest.mark.parametrize("name", VARIANTS)
def test_outputs(runs: dict[str, ProgramRun], name: str) -> None:
    variant, out = load_variant(name), runs[name].outputs
    assert out["instance_type"] == variant.instance_type
    assert out["instance_count"] == variant.count == len(out["instance_ids"])
    assert out["swap_mib"] == variant.swap_mib and out["region"] == "us-east-1"
    assert all(i.startswith("i-") for i in out["instance_ids"])
    assert out["url"].startswith("http://")
    assert out["log_group"] == f"/scalelab/{name}"


def test_the_shops_bundle_ships_the_shop_package_only() -> None:
    """Issue 14: the default app directory is the checkout itself; bundling all of it shipped the
    tests and fixtures to every instance, and pricing (the program under mocks digests the
    bundle) failed for a user who could not read a test fixture."""
    files = bundle_files(AppSource().directory)
    assert {"shop/wsgi.py", "shop/settings.py", "shop/__main__.py"} <= set(files)
    assert any(name.startswith("shop/migrations/") for name in files)
    assert all(name.startswith("shop/") for name in files), sorted(files)[:5]
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in files)


def test_a_users_app_directory_ships_whole_without_environments_or_caches(tmp_path) -> None:
    for name in ("app.py", "templates/index.html", ".venv/bin/python", "pkg/__pycache__/a.pyc",
                 "results/run/result.json", "tests/test_app.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert list(bundle_files(tmp_path)) == ["app.py", "templates/index.html",
                                            "tests/test_app.py"]


def test_app_bundle_is_private_encrypted_and_readable_only_by_the_instances(
        runs: dict[str, ProgramRun]) -> None:
    run = runs["scale-out"]
    (bucket,) = run.of_type("aws:s3/bucket:Bucket")
    (block,) = run.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert block.inputs["bucket"] == bucket.id
    assert all(block.inputs[k] is True for k in ("blockPublicAcls", "blockPublicPolicy",
                                                  "ignorePublicAcls", "restrictPublicBuckets"))
    (sse,) = run.of_type("aws:s3/bucketServerSideEncryptionConfiguration:"
                         "BucketServerSideEncryptionConfiguration")
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == \
        "AES256"
    (obj,) = run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    assert obj.inputs["key"] == run.outputs["bundle_key"]
    object_arn = f"arn:aws:s3:::{bucket.id}/{run.outputs['bundle_key']}"
    policies = run.of_type("aws:iam/rolePolicy:RolePolicy")
    assert len(policies) == 3
    for policy in policies:
        (statement,) = json.loads(policy.inputs["policy"])["Statement"]
        assert statement == {"Effect": "Allow", "Action": "s3:GetObject",
                             "Resource": object_arn}
    managed = sorted(a.inputs["policyArn"] for a in
                     run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment"))
    assert managed == sorted(3 * ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
                                  "arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy"])


def test_git_source_clones_instead_of_uploading() -> None:
    base = load_variant("micro-swap")
    variant = replace(base, app=AppSource(source="git", git_url="https://example.org/app.git",
                                          git_ref="v1.2"))
    run = run_program(variant)
    assert not run.of_type("aws:s3/bucket:Bucket")
    assert not run.of_type("aws:iam/rolePolicy:RolePolicy")
    text = run.of_type(INSTANCE)[0].inputs["userData"]
    assert "fetch --quiet --depth 1 origin v1.2" in text and "boto3" not in text


def test_new_vpc_has_public_subnets_in_two_zones() -> None:
    variant = load_variant("scale-out").with_overrides(network=Network(vpc="new"))
    run = run_program(variant, default_vpc=False)
    (vpc,) = run.of_type("aws:ec2/vpc:Vpc")
    assert vpc.inputs["cidrBlock"] == "10.42.0.0/16"
    subnets = run.of_type("aws:ec2/subnet:Subnet")
    assert len({s.inputs["availabilityZone"] for s in subnets}) == 2
    assert all(s.inputs["mapPublicIpOnLaunch"] is True for s in subnets)
    (table,) = run.of_type("aws:ec2/routeTable:RouteTable")
    (igw,) = run.of_type("aws:ec2/internetGateway:InternetGateway")
    assert table.inputs["routes"][0] == {**table.inputs["routes"][0],
                                         "cidrBlock": "0.0.0.0/0", "gatewayId": igw.id}
    assert len(run.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")) == 2
    (alb,) = run.of_type(ALB)
    assert sorted(alb.inputs["subnets"]) == sorted(s.id for s in subnets)
    assert not any(token == "aws:ec2/getVpc:getVpc" for token, _ in run.invokes)


def test_missing_default_vpc_is_one_sentence() -> None:
    with pytest.raises(VariantError, match=r"no default VPC.*network\.vpc: new"):
        run_program(load_variant("micro"), default_vpc=False)


def test_too_few_zones_for_a_load_balancer_is_one_sentence() -> None:
    with pytest.raises(VariantError, match=r"network\.availabilityZones is 2 but only 1 zones"):
        run_program(load_variant("scale-out"), zones=("a",))


def test_ami_lookup_is_canonical_ubuntu_noble_unless_configured() -> None:
    run = run_program(load_variant("micro"))
    (lookup,) = [args for token, args in run.invokes if token == "aws:ec2/getAmi:getAmi"]
    assert lookup["owners"] == ["099720109477"] and lookup["mostRecent"] is True
    names = next(f["values"] for f in lookup["filters"] if f["name"] == "name")
    assert names == ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
    pinned = run_program(load_variant("micro").with_overrides(ami="ami-0123456789abcdef0"))
    assert pinned.of_type(INSTANCE)[0].inputs["ami"] == "ami-0123456789abcdef0"
    assert not any(token == "aws:ec2/getAmi:getAmi" for token, _ in pinned.invokes)


def test_declared_resources_is_repeatable_and_feeds_the_cost_model() -> None:
    from experiments.cost import bill_of_materials

    variant = load_variant("scale-out")
    first, second = declared_resources(variant), declared_resources(variant)
    assert sorted((r.type, r.name) for r in first) == sorted((r.type, r.name) for r in second)
    assert all(r.custom for r in first)
    bom = bill_of_materials(first, variant)
    assert bom.instances == {"t2.micro": 3} and bom.alb and bom.alb_subnets == 2
    assert bom.root_gb == 24 and bom.public_ipv4 == 3 + 2


@pytest.mark.parametrize("name", VARIANTS)
def test_instances_wait_for_their_permissions_and_have_detailed_monitoring(
        runs: dict[str, ProgramRun], name: str) -> None:
    """Issue 12 #7: the instance must not boot before its role may read the bundle, talk to
    SSM and publish metrics; #2: 1-minute EC2 metrics."""
    run = runs[name]
    for inst in run.of_type(INSTANCE):
        server = inst.parent  # the WebServer component
        needed = [r.urn for r in run.resources if r.parent == server and r.type in (
            "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "aws:iam/rolePolicy:RolePolicy",
            "aws:iam/instanceProfile:InstanceProfile")]
        assert len(needed) == 4  # two managed policies, the bundle read policy, the profile
        assert set(needed) <= set(inst.dependencies)
        assert inst.inputs["monitoring"] is True


def test_the_event_loops_pulumi_leaves_open_are_closed_before_exit() -> None:
    """Pulumi's sync_await opens an event loop in each thread that awaits and never closes it;
    finalized at interpreter shutdown, one now and then printed a traceback under `plan`'s last
    line. The atexit hook closes every one a run left (and only those: none is running)."""
    import asyncio
    import gc

    from stacks.preview import _close_pulumis_event_loops

    def open_loops() -> list[asyncio.AbstractEventLoop]:
        return [o for o in gc.get_objects()
                if isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed()]

    declared_resources(load_variant("scale-out"))
    assert open_loops(), "Pulumi closes its loops now: the hook may go"
    _close_pulumis_event_loops()
    assert open_loops() == []
    assert declared_resources(load_variant("micro"))  # later runs are unaffected
