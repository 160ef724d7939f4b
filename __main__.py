"""scalelab's Pulumi program: stack config -> Variant -> components -> outputs.

The stack name is the variant (`pulumi stack select --create micro-swap`); its settings come
from stacks/Pulumi.<variant>.yaml (`stackConfigDir: stacks`) and are validated by the same
Variant model the local backend and the cost model use.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pulumi

if str(Path(__file__).resolve().parent) not in sys.path:  # the CLI runs this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import pulumi_aws as aws  # noqa: E402

from stacks.balanced import LoadBalancedGroup, LoadBalancedGroupArgs  # noqa: E402
from stacks.bundle import AppBundle, AppBundleArgs  # noqa: E402
from stacks.network import Network, NetworkArgs  # noqa: E402
from stacks.server import WebServer, WebServerArgs, ubuntu_ami  # noqa: E402
from stacks.tags import resource_tags  # noqa: E402
from stacks.variant import CONFIG_KEYS, PROJECT, Variant, stack_file, variant_from_settings  # noqa: E402
from userdata.render import AppFetch, log_group_name, render_user_data  # noqa: E402

LOG_RETENTION_DAYS = 7


def variant_from_config() -> Variant:
    """Read every `scalelab:` key (structured ones as objects) and `aws:region`."""
    config = pulumi.Config(PROJECT)
    settings: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        try:
            value = config.get_object(key)
        except pulumi.ConfigTypeError:  # a plain string such as t2.micro is not JSON
            value = config.get(key)
        if value is not None:
            settings[key] = value
    region = pulumi.Config("aws").get("region")
    name = pulumi.get_stack()
    path = stack_file(name)
    return variant_from_settings(name, settings, region=region,
                                 source_file=str(path) if path.exists() else "")


def main() -> None:
    variant = variant_from_config()
    name = variant.name
    network = Network(f"{name}-net", NetworkArgs(variant))
    logs = aws.cloudwatch.LogGroup(f"{name}-logs", name=log_group_name(variant),
                                   retention_in_days=LOG_RETENTION_DAYS,
                                   tags=resource_tags(variant, "logs"))
    bundle = AppBundle(f"{name}-app", AppBundleArgs(variant)) \
        if variant.app.source == "bundle" else None
    if bundle is not None:
        user_data = bundle.bucket_name.apply(
            lambda bucket: render_user_data(variant, AppFetch(bucket, bundle.key)))
    else:
        user_data = pulumi.Output.from_input(render_user_data(variant))
    # The agent would create the log group itself (without retention): make it exist first.
    user_data = pulumi.Output.all(user_data, logs.name).apply(lambda pair: pair[0])
    ami = ubuntu_ami(variant)
    object_arn = bundle.object_arn if bundle is not None else None

    if variant.load_balancer:
        group = LoadBalancedGroup(f"{name}-lb", LoadBalancedGroupArgs(
            variant=variant, network=network, ami_id=ami, user_data=user_data,
            bundle_object_arn=object_arn))
        servers = group.servers
        url = pulumi.Output.concat("http://", group.dns_name)
        pulumi.export("load_balancer_arn", group.load_balancer_arn)
        pulumi.export("target_group_arn", group.target_group_arn)
    else:
        server = WebServer(f"{name}-web-0", WebServerArgs(
            variant=variant, index=0, vpc_id=network.vpc_id, subnet_id=network.subnet_ids[0],
            ami_id=ami, user_data=user_data, bundle_object_arn=object_arn,
            ingress_cidr=variant.allowed_cidr))
        servers = [server]
        url = pulumi.Output.concat("http://", server.public_dns)

    pulumi.export("url", url)
    pulumi.export("instance_ids", pulumi.Output.all(*[s.instance_id for s in servers]))
    pulumi.export("instance_type", variant.instance_type)
    pulumi.export("instance_count", variant.count)
    pulumi.export("swap_mib", variant.swap_mib)
    pulumi.export("region", variant.region)
    pulumi.export("log_group", logs.name)
    pulumi.export("ami", ami)
    if bundle is not None:
        pulumi.export("bundle_bucket", bundle.bucket_name)
        pulumi.export("bundle_key", bundle.key)


main()
