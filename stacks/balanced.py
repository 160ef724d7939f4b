"""LoadBalancedGroup component: an internet-facing ALB in front of N WebServers.

The ALB accepts :80 only from `scalelab:allowedCidr` and may only talk to the app port inside
the VPC; each instance accepts the app port only from the ALB's security group. Instances are
spread round-robin over the network's subnets (one per availability zone).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from stacks.network import Network
from stacks.server import WebServer, WebServerArgs
from stacks.tags import resource_tags
from stacks.variant import Variant
from userdata.render import APP_PORT

LISTENER_PORT = 80
DEREGISTRATION_DELAY_S = 30
"""Shorter than the default 300 s so `pulumi destroy` does not wait five minutes per target."""


@dataclass
class LoadBalancedGroupArgs:
    variant: Variant
    network: Network
    ami_id: pulumi.Input[str]
    user_data: pulumi.Input[str]
    bundle_object_arn: pulumi.Input[str] | None = None


class LoadBalancedGroup(pulumi.ComponentResource):
    """ALB + security group + target group + listener + servers + one attachment per server."""

    dns_name: pulumi.Output[str]
    load_balancer_arn: pulumi.Output[str]
    target_group_arn: pulumi.Output[str]
    servers: list[WebServer]

    def __init__(self, name: str, args: LoadBalancedGroupArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("scalelab:balanced:LoadBalancedGroup", name, None, opts)
        variant, network = args.variant, args.network
        child = pulumi.ResourceOptions(parent=self)
        tags = resource_tags(variant, "alb")

        sg = aws.ec2.SecurityGroup(
            f"{name}-alb-sg", vpc_id=network.vpc_id,
            description=f"scalelab {variant.name} load balancer: :80 from allowedCidr",
            tags=tags, opts=child)
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-alb-http", security_group_id=sg.id, ip_protocol="tcp",
            from_port=LISTENER_PORT, to_port=LISTENER_PORT, cidr_ipv4=variant.allowed_cidr,
            description="clients (scalelab:allowedCidr)", tags=tags, opts=child)
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-alb-to-targets", security_group_id=sg.id, ip_protocol="tcp",
            from_port=APP_PORT, to_port=APP_PORT, cidr_ipv4=network.cidr_block,
            description="targets and health checks inside the VPC", tags=tags, opts=child)

        alb = aws.lb.LoadBalancer(
            f"{name}-alb", load_balancer_type="application", internal=False,
            subnets=network.subnet_ids, security_groups=[sg.id],
            drop_invalid_header_fields=True, tags=tags, opts=child)
        hc = variant.health_check
        tg = aws.lb.TargetGroup(
            f"{name}-tg", port=APP_PORT, protocol="HTTP", target_type="instance",
            vpc_id=network.vpc_id, load_balancing_algorithm_type=variant.lb_algorithm,
            deregistration_delay=DEREGISTRATION_DELAY_S,
            health_check={"enabled": True, "protocol": "HTTP", "port": "traffic-port",
                          "path": hc.path, "interval": hc.interval_s, "timeout": hc.timeout_s,
                          "healthy_threshold": hc.healthy_threshold,
                          "unhealthy_threshold": hc.unhealthy_threshold, "matcher": "200"},
            tags=resource_tags(variant, "targets"), opts=child)
        aws.lb.Listener(
            f"{name}-http", load_balancer_arn=alb.arn, port=LISTENER_PORT, protocol="HTTP",
            default_actions=[{"type": "forward", "target_group_arn": tg.arn}],
            tags=resource_tags(variant, "listener"), opts=child)

        self.servers = []
        for i in range(variant.count):
            subnet = network.subnet_ids[i % len(network.subnet_ids)]
            server = WebServer(f"{name}-web-{i}", WebServerArgs(
                variant=variant, index=i, vpc_id=network.vpc_id, subnet_id=subnet,
                ami_id=args.ami_id, user_data=args.user_data,
                bundle_object_arn=args.bundle_object_arn, ingress_security_group_id=sg.id),
                opts=child)
            aws.lb.TargetGroupAttachment(
                f"{name}-web-{i}-attachment", target_group_arn=tg.arn,
                target_id=server.instance_id, port=APP_PORT, opts=child)
            self.servers.append(server)

        self.dns_name = alb.dns_name
        self.load_balancer_arn = alb.arn
        self.target_group_arn = tg.arn
        self.register_outputs({"dns_name": self.dns_name, "load_balancer_arn": alb.arn,
                               "target_group_arn": tg.arn})
