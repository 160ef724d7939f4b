"""Network component: where the instances and the ALB live.

`network.vpc: default` uses the region's default VPC and its default subnets (one per
availability zone); `new` builds a VPC with one public subnet per zone, an internet gateway and
a route table. Either way only zones that offer the variant's instance type are used (us-east-1e,
for one, has no t3), and a variant with a load balancer gets subnets in at least two zones.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from stacks.tags import resource_tags
from stacks.variant import Variant, VariantError


@dataclass
class NetworkArgs:
    variant: Variant


def offered_zones(variant: Variant, opts: pulumi.InvokeOptions | None = None) -> list[str]:
    """Availability zones of the region that offer the variant's instance type, sorted."""
    offerings = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone",
        filters=[{"name": "instance-type", "values": [variant.instance_type]}],
        opts=opts)
    return sorted(set(offerings.locations))


class Network(pulumi.ComponentResource):
    """A VPC id, its CIDR, and subnet ids in `network.availabilityZones` distinct zones."""

    vpc_id: pulumi.Output[str]
    cidr_block: pulumi.Output[str]
    subnet_ids: list[pulumi.Output[str]]
    availability_zones: list[str]

    def __init__(self, name: str, args: NetworkArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("scalelab:network:Network", name, None, opts)
        variant = args.variant
        invoke = pulumi.InvokeOptions(parent=self)
        zones = offered_zones(variant, invoke)
        wanted = variant.network.availability_zones
        if len(zones) < wanted:
            raise VariantError(
                f"{variant.source_file or variant.name}: scalelab:network.availabilityZones is "
                f"{wanted} but only {len(zones)} zones of {variant.region} offer "
                f"{variant.instance_type}; lower it or pick another region or instance type.")
        if variant.network.vpc == "new":
            self._new_vpc(name, variant, zones[:wanted])
        else:
            self._default_vpc(variant, zones, wanted, invoke)
        self.register_outputs({"vpc_id": self.vpc_id, "subnet_ids": self.subnet_ids,
                               "availability_zones": self.availability_zones})

    def _default_vpc(self, variant: Variant, zones: list[str], wanted: int,
                     invoke: pulumi.InvokeOptions) -> None:
        where = variant.source_file or variant.name
        try:
            vpc = aws.ec2.get_vpc(default=True, opts=invoke)
        except Exception as exc:  # the provider raises a plain Exception for "no matching VPC"
            raise VariantError(
                f"{where}: scalelab:network.vpc is 'default' but {variant.region} has no default "
                f"VPC ({exc}); set scalelab:network.vpc: new.") from None
        subnets = aws.ec2.get_subnets(filters=[
            {"name": "vpc-id", "values": [vpc.id]},
            {"name": "default-for-az", "values": ["true"]},
            {"name": "availability-zone", "values": zones},
        ], opts=invoke)
        ids = sorted(subnets.ids)
        if len(ids) < wanted:
            raise VariantError(
                f"{where}: scalelab:network.availabilityZones is {wanted} but the default VPC "
                f"of {variant.region} has only {len(ids)} default subnets in zones offering "
                f"{variant.instance_type}; set scalelab:network.vpc: new.")
        # Default subnets are one per zone, so `wanted` of them span `wanted` zones.
        self.vpc_id = pulumi.Output.from_input(vpc.id)
        self.cidr_block = pulumi.Output.from_input(vpc.cidr_block)
        self.subnet_ids = [pulumi.Output.from_input(i) for i in ids[:wanted]]
        self.availability_zones = zones[:wanted]

    def _new_vpc(self, name: str, variant: Variant, zones: list[str]) -> None:
        child = pulumi.ResourceOptions(parent=self)
        net = ipaddress.ip_network(variant.network.cidr)
        if net.version != 4 or net.prefixlen > 24:
            raise VariantError(
                f"{variant.source_file or variant.name}: scalelab:network.cidr must be an IPv4 "
                f"block of /24 or larger such as 10.42.0.0/16, got {variant.network.cidr!r}.")
        # Room for up to 16 zones: split the VPC into 16 equal subnets, one per zone.
        blocks = list(net.subnets(prefixlen_diff=4))
        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=str(net), enable_dns_support=True,
                          enable_dns_hostnames=True, tags=resource_tags(variant, "vpc"),
                          opts=child)
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id,
                                      tags=resource_tags(variant, "igw"), opts=child)
        table = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id,
                                   routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
                                   tags=resource_tags(variant, "public"), opts=child)
        subnet_ids = []
        for i, zone in enumerate(zones):
            subnet = aws.ec2.Subnet(f"{name}-public-{i}", vpc_id=vpc.id,
                                    cidr_block=str(blocks[i]), availability_zone=zone,
                                    map_public_ip_on_launch=True,
                                    tags=resource_tags(variant, f"public-{zone}"), opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-public-{i}", subnet_id=subnet.id,
                                          route_table_id=table.id, opts=child)
            subnet_ids.append(subnet.id)
        self.vpc_id = vpc.id
        self.cidr_block = vpc.cidr_block
        self.subnet_ids = subnet_ids
        self.availability_zones = zones
