"""Network component: where the nodes live and what they may reach.

Created network (default): a VPC with one private subnet for the nodes and the controller and
**no route to the internet**: S3 through a gateway endpoint whose policy names the run bucket
only (free), the AWS APIs the machines call through interface endpoints
(:data:`infra.egress.INTERFACE_SERVICES`, private DNS on, reachable on 443 from the node and
controller security groups only). Nodes get no public IP (p4d nodes carry several EFA
interfaces, and EC2 cannot auto-assign a public IP to such an instance anyway).

``allowInternetEgress`` (opt-in, loud): today's older layout instead — a public subnet holding a
NAT gateway, a default route through it, HTTPS to anywhere from both security groups — for users
whose nodes must reach git or a package index. Nothing else changes.

Node security group: the only ingress is all traffic from the group itself (NCCL/EFA between
nodes), plus SSH from ``adminCidr`` when set. Egress: all traffic to the group itself (EFA
requires it), HTTPS to the endpoints' security group and to S3's prefix list. Controller: no
ingress, the same HTTPS egress. The VPC's default security group is emptied.

Existing network (``vpcId`` + ``subnetId``): only the security groups are created; without
``allowInternetEgress`` their HTTPS egress goes to the VPC's own CIDR (where its interface
endpoints live) and S3's prefix list, and the VPC must already have those endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from artifacts.node import TAG_CLUSTER
from infra.egress import INTERFACE_SERVICES, interface_service_name
from infra.errors import InfraError

VPC_CIDR = "10.42.0.0/16"
PUBLIC_CIDR = "10.42.0.0/24"
PRIVATE_CIDR = "10.42.16.0/20"
WORLD_V4 = "0.0.0.0/0"


@dataclass(frozen=True)
class NetworkArgs:
    cluster_name: str
    instance_type: str
    availability_zone: str | None = None
    vpc_id: str | None = None
    subnet_id: str | None = None
    admin_cidr: str | None = None
    allow_internet_egress: bool = False
    """NAT gateway and HTTPS to anywhere (the opt-in ``allowInternetEgress``)."""


def check_subnet_vpc(subnet_id: str, subnet_vpc: str, configured_vpc: str | None) -> str:
    """The subnet id when it lies in the configured VPC; else an error naming both."""
    if configured_vpc is not None and subnet_vpc != configured_vpc:
        raise InfraError(
            f"twostage:subnetId: {subnet_id} is in {subnet_vpc}, not in twostage:vpcId "
            f"{configured_vpc} (fix it with `pulumi config set twostage:vpcId {subnet_vpc}` or pick "
            "a subnet of that VPC)"
        )
    return subnet_id


def pick_availability_zone(offered: list[str], instance_type: str, region: str) -> str:
    """First AZ (by name) that offers the instance type; a clear error when none does."""
    if not offered:
        raise InfraError(
            f"twostage:availabilityZone: no availability zone in {region} offers {instance_type}; "
            "pick another aws:region (see docs/provision.md, 'Pick a region')"
        )
    return sorted(offered)[0]


class Network(pulumi.ComponentResource):
    """VPC/subnet (or an existing one), endpoints (or NAT), node and controller security groups."""

    vpc_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    availability_zone: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    controller_security_group_id: pulumi.Output[str]
    s3_endpoint_id: pulumi.Output[str] | None
    """The S3 gateway endpoint this program created (None on an existing network)."""

    def __init__(
        self,
        name: str,
        args: NetworkArgs,
        region: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("twostage:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        tags = {TAG_CLUSTER: args.cluster_name}
        self.s3_endpoint_id = None
        self._vpc: aws.ec2.Vpc | None = None
        self._region = pulumi.Output.from_input(region)

        if args.subnet_id is not None:
            subnet = aws.ec2.get_subnet_output(id=args.subnet_id, opts=invoke)
            self.vpc_id = pulumi.Output.from_input(args.vpc_id)
            # Every resource in the subnet waits on this check, so a mismatch stops the plan.
            self.subnet_id = subnet.vpc_id.apply(
                lambda vpc: check_subnet_vpc(args.subnet_id, vpc, args.vpc_id)
            )
            self.availability_zone = subnet.availability_zone
        else:
            az = self._availability_zone(args, region)
            self.vpc_id, self.subnet_id = self._create_vpc(name, args, az, tags, child)
            self.availability_zone = az

        sg = aws.ec2.SecurityGroup(
            f"{name}-nodes-sg",
            description=f"{args.cluster_name} nodes: intra-cluster only",
            vpc_id=self.vpc_id,
            tags={**tags, "Name": f"{args.cluster_name}-nodes"},
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-ingress-self",
            security_group_id=sg.id,
            referenced_security_group_id=sg.id,
            ip_protocol="-1",
            description="all traffic between cluster nodes (NCCL, EFA, torch.distributed)",
            opts=child,
        )
        if args.admin_cidr is not None:
            v6 = ":" in args.admin_cidr
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-ingress-ssh",
                security_group_id=sg.id,
                cidr_ipv6=args.admin_cidr if v6 else None,
                cidr_ipv4=None if v6 else args.admin_cidr,
                ip_protocol="tcp",
                from_port=22,
                to_port=22,
                description="admin SSH (twostage:adminCidr)",
                opts=child,
            )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-egress-self",
            security_group_id=sg.id,
            referenced_security_group_id=sg.id,
            ip_protocol="-1",
            description="all traffic between cluster nodes (EFA needs it both ways)",
            opts=child,
        )
        self.security_group_id = sg.id

        # The controller talks only to AWS APIs (Auto Scaling, EC2, SSM, S3): no ingress at all.
        controller_sg = aws.ec2.SecurityGroup(
            f"{name}-controller-sg",
            description=f"{args.cluster_name} controller: no ingress, HTTPS out",
            vpc_id=self.vpc_id,
            tags={**tags, "Name": f"{args.cluster_name}-controller"},
            opts=child,
        )
        self.controller_security_group_id = controller_sg.id
        for who, group in (("", sg), ("controller-", controller_sg)):
            self._https_egress(f"{name}-{who}egress", args, group, child, invoke)
        if self._vpc is not None and not args.allow_internet_egress:
            self._interface_endpoints(name, args, [sg, controller_sg], tags, child)

        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "subnet_id": self.subnet_id,
                "availability_zone": self.availability_zone,
                "security_group_id": self.security_group_id,
                "controller_security_group_id": self.controller_security_group_id,
            }
        )

    def _https_egress(self, prefix, args, group, child, invoke) -> None:
        """HTTPS out: anywhere (opt-in), else to the endpoints and S3's prefix list only."""
        if args.allow_internet_egress:
            aws.vpc.SecurityGroupEgressRule(
                f"{prefix}-https",
                security_group_id=group.id,
                cidr_ipv4=WORLD_V4,
                ip_protocol="tcp",
                from_port=443,
                to_port=443,
                description="HTTPS anywhere (twostage:allowInternetEgress)",
                opts=child,
            )
            return
        s3 = aws.ec2.get_prefix_list_output(
            name=self._region.apply(lambda r: interface_service_name(r, "s3")), opts=invoke
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{prefix}-s3",
            security_group_id=group.id,
            prefix_list_id=s3.id,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            description="HTTPS to S3 (the gateway endpoint)",
            opts=child,
        )
        if self._vpc is not None:
            target = {"referenced_security_group_id": self._endpoint_sg.id}
        else:  # an existing VPC: its interface endpoints live somewhere in its CIDR
            vpc = aws.ec2.get_vpc_output(id=args.vpc_id, opts=invoke)
            target = {"cidr_ipv4": vpc.cidr_block}
        aws.vpc.SecurityGroupEgressRule(
            f"{prefix}-endpoints",
            security_group_id=group.id,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            description="HTTPS to the VPC's interface endpoints (SSM, Auto Scaling, EC2)",
            opts=child,
            **target,
        )

    def _interface_endpoints(self, name, args, clients, tags, child) -> None:
        for i, client in enumerate(clients):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-endpoints-ingress-{i}",
                security_group_id=self._endpoint_sg.id,
                referenced_security_group_id=client.id,
                ip_protocol="tcp",
                from_port=443,
                to_port=443,
                description="HTTPS from the cluster's machines",
                opts=child,
            )
        for service in INTERFACE_SERVICES:
            aws.ec2.VpcEndpoint(
                f"{name}-{service}",
                vpc_id=self.vpc_id,
                service_name=self._region.apply(lambda r, s=service: interface_service_name(r, s)),
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=[self.subnet_id],
                security_group_ids=[self._endpoint_sg.id],
                tags={**tags, "Name": f"{args.cluster_name}-{service}"},
                opts=child,
            )

    def _availability_zone(
        self, args: NetworkArgs, region: pulumi.Input[str]
    ) -> pulumi.Output[str]:
        if args.availability_zone is not None:
            return pulumi.Output.from_input(args.availability_zone)
        offerings = aws.ec2.get_instance_type_offerings_output(
            location_type="availability-zone",
            filters=[{"name": "instance-type", "values": [args.instance_type]}],
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        return pulumi.Output.all(offerings.locations, region).apply(
            lambda v: pick_availability_zone(list(v[0] or []), args.instance_type, v[1])
        )

    def _create_vpc(self, name, args, az, tags, child):
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=VPC_CIDR,
            enable_dns_support=True,
            enable_dns_hostnames=True,  # private DNS of the interface endpoints needs both
            tags={**tags, "Name": name},
            opts=child,
        )
        self._vpc = vpc
        # Strip the default security group of its allow-all rules; nothing should use it.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, tags=tags, opts=child)
        private = aws.ec2.Subnet(
            f"{name}-private",
            vpc_id=vpc.id,
            cidr_block=PRIVATE_CIDR,
            availability_zone=az,
            map_public_ip_on_launch=False,
            tags={**tags, "Name": f"{name}-private"},
            opts=child,
        )
        routes = []
        if args.allow_internet_egress:
            routes = [{"cidr_block": WORLD_V4, "nat_gateway_id": self._nat(name, vpc, az, tags)}]
        else:
            self._endpoint_sg = aws.ec2.SecurityGroup(
                f"{name}-endpoints-sg",
                description=f"{args.cluster_name} VPC endpoints: HTTPS from the cluster only",
                vpc_id=vpc.id,
                tags={**tags, "Name": f"{args.cluster_name}-endpoints"},
                opts=child,
            )
        private_rt = aws.ec2.RouteTable(
            f"{name}-private-rt", vpc_id=vpc.id, routes=routes, tags=tags, opts=child
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-private-rta", subnet_id=private.id, route_table_id=private_rt.id, opts=child
        )
        s3 = aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=self._region.apply(lambda r: interface_service_name(r, "s3")),
            vpc_endpoint_type="Gateway",
            route_table_ids=[private_rt.id],
            tags=tags,
            opts=child,
        )
        self.s3_endpoint_id = s3.id
        return vpc.id, private.id

    def _nat(self, name, vpc, az, tags) -> pulumi.Output[str]:
        """The opt-in internet path: public subnet, internet gateway, NAT gateway."""
        child = pulumi.ResourceOptions(parent=self)
        public = aws.ec2.Subnet(
            f"{name}-public",
            vpc_id=vpc.id,
            cidr_block=PUBLIC_CIDR,
            availability_zone=az,
            map_public_ip_on_launch=False,
            tags={**tags, "Name": f"{name}-public"},
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=vpc.id,
            routes=[{"cidr_block": WORLD_V4, "gateway_id": igw.id}],
            tags=tags,
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-public-rta", subnet_id=public.id, route_table_id=public_rt.id, opts=child
        )
        eip = aws.ec2.Eip(f"{name}-nat-eip", domain="vpc", tags=tags, opts=child)
        nat = aws.ec2.NatGateway(
            f"{name}-nat",
            subnet_id=public.id,
            allocation_id=eip.id,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
        )
        return nat.id
