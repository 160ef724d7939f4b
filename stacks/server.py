"""WebServer component: one EC2 instance running the app, with its own firewall and role.

Security defaults: IMDSv2 only, an encrypted gp3 root volume, no SSH (shell access is SSM
Session Manager through the AmazonSSMManagedInstanceCore policy), egress limited to HTTP and
HTTPS (apt, PyPI, S3, CloudWatch and SSM endpoints; DNS and NTP go to the VPC's link-local
services, which security groups do not filter), and read access to the app bundle object only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from stacks.catalog import load_catalog
from stacks.tags import resource_tags
from stacks.variant import Variant
from userdata.render import APP_PORT

UBUNTU_OWNER = "099720109477"
"""Canonical's AWS account: the owner filter keeps look-alike public images out."""
MANAGED_POLICIES = ("AmazonSSMManagedInstanceCore", "CloudWatchAgentServerPolicy")
EGRESS_PORTS = (80, 443)


def ubuntu_ami(variant: Variant, opts: pulumi.InvokeOptions | None = None) -> pulumi.Output[str]:
    """`scalelab:ami`, or the newest Ubuntu 24.04 gp3 image from Canonical for the CPU arch."""
    if variant.ami:
        return pulumi.Output.from_input(variant.ami)
    arch = "arm64" if load_catalog().instance(variant.instance_type).arch == "arm64" else "amd64"
    image = aws.ec2.get_ami_output(
        most_recent=True, owners=[UBUNTU_OWNER],
        filters=[{"name": "name",
                  "values": [f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*"]},
                 {"name": "virtualization-type", "values": ["hvm"]}],
        opts=opts)
    return image.id


@dataclass
class WebServerArgs:
    variant: Variant
    index: int
    vpc_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    ami_id: pulumi.Input[str]
    user_data: pulumi.Input[str]
    bundle_object_arn: pulumi.Input[str] | None = None
    """The one S3 object the role may read (None when the app comes from git)."""
    ingress_cidr: str | None = None
    """Clients allowed to reach the app port directly (single-instance variants)."""
    ingress_security_group_id: pulumi.Input[str] | None = None
    """Or: the only security group allowed in (the ALB's, in scale-out)."""


class WebServer(pulumi.ComponentResource):
    """Security group + IAM role/profile + the instance; exposes id, public DNS and IPs."""

    instance_id: pulumi.Output[str]
    public_dns: pulumi.Output[str]
    public_ip: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: WebServerArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("scalelab:server:WebServer", name, None, opts)
        variant = args.variant
        role_name = f"web-{args.index}"
        tags = resource_tags(variant, role_name)
        child = pulumi.ResourceOptions(parent=self)

        sg = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=args.vpc_id,
            description=f"scalelab {variant.name} web server {args.index}: app port only",
            tags=tags, opts=child)
        if args.ingress_security_group_id is not None:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-http-from-alb", security_group_id=sg.id, ip_protocol="tcp",
                from_port=APP_PORT, to_port=APP_PORT,
                referenced_security_group_id=args.ingress_security_group_id,
                description="app port from the load balancer only", tags=tags, opts=child)
        if args.ingress_cidr is not None:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-http-from-clients", security_group_id=sg.id, ip_protocol="tcp",
                from_port=APP_PORT, to_port=APP_PORT, cidr_ipv4=args.ingress_cidr,
                description="app port from scalelab:allowedCidr", tags=tags, opts=child)
        for port in EGRESS_PORTS:
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-egress-{port}", security_group_id=sg.id, ip_protocol="tcp",
                from_port=port, to_port=port, cidr_ipv4="0.0.0.0/0",
                description="packages, PyPI and AWS APIs", tags=tags, opts=child)

        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole",
                "Principal": {"Service": "ec2.amazonaws.com"}}]}),
            description=f"scalelab {variant.name} web server {args.index}", tags=tags,
            opts=child)
        partition = aws.get_partition_output(opts=pulumi.InvokeOptions(parent=self)).partition
        # The instance refers to the profile only: without depends_on it may boot (and run
        # cloud-init's S3 fetch, SSM and CloudWatch agent) before its permissions exist.
        permissions: list[pulumi.Resource] = []
        for policy in MANAGED_POLICIES:
            permissions.append(aws.iam.RolePolicyAttachment(
                f"{name}-{policy}", role=role.name,
                policy_arn=pulumi.Output.concat("arn:", partition, ":iam::aws:policy/", policy),
                opts=child))
        if args.bundle_object_arn is not None:
            permissions.append(aws.iam.RolePolicy(
                f"{name}-read-bundle", role=role.id,
                policy=pulumi.Output.from_input(args.bundle_object_arn).apply(
                    lambda arn: json.dumps({"Version": "2012-10-17", "Statement": [{
                        "Effect": "Allow", "Action": "s3:GetObject", "Resource": arn}]})),
                opts=child))
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags,
                                          opts=child)

        it = load_catalog().instance(variant.instance_type)
        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=args.ami_id,
            instance_type=variant.instance_type,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=[sg.id],
            iam_instance_profile=profile.name,
            associate_public_ip_address=True,
            user_data=args.user_data,
            user_data_replace_on_change=True,
            metadata_options={"http_endpoint": "enabled", "http_tokens": "required",
                              "http_put_response_hop_limit": 1},
            root_block_device={"volume_type": "gp3", "volume_size": variant.root_volume_gib,
                               "encrypted": True, "delete_on_termination": True,
                               "tags": resource_tags(variant, f"{role_name}-root")},
            # 1-minute EC2 metrics instead of 5-minute ones (the CPU credit metrics stay
            # 5-minute whatever this says); the agent adds 10 s CPU, memory and swap.
            monitoring=True,
            credit_specification=({"cpu_credits": variant.credit_mode} if it.burstable
                                  else None),
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*permissions, profile]))

        self.instance_id = instance.id
        self.public_dns = instance.public_dns
        self.public_ip = instance.public_ip
        self.private_ip = instance.private_ip
        self.security_group_id = sg.id
        self.register_outputs({"instance_id": self.instance_id, "public_dns": self.public_dns,
                               "security_group_id": self.security_group_id})
