"""Network component: where the nodes live and who may talk to them.

Created network (default): a VPC with a private subnet for the nodes and a small public subnet
holding only a NAT gateway. Nodes get no public IP (p4d nodes carry several EFA interfaces, and
EC2 cannot auto-assign a public IP to such an instance anyway); their outbound HTTPS (SSM agent,
PyPI and git for the install) leaves through the NAT, and S3 traffic takes a free gateway
endpoint so checkpoints never pay NAT data charges.

Controller security group: no ingress, HTTPS out (it only calls AWS APIs).

Node security group: the only ingress is all traffic from the group itself (NCCL/EFA between nodes),
plus SSH from ``adminCidr`` when set. Egress: all traffic to the group itself (EFA requires it)
and HTTPS (443) anywhere. The VPC's default security group is emptied.

Existing network (``vpcId`` + ``subnetId``): only the security group is created; the subnet must
already reach S3, the SSM endpoints and PyPI/git.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from artifacts.node import TAG_CLUSTER
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
    """VPC/subnet (or an existing one), NAT egress, S3 gateway endpoint, node security group."""

    vpc_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    availability_zone: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    controller_security_group_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        args: NetworkArgs,
        region: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("twostage:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {TAG_CLUSTER: args.cluster_name}

        if args.subnet_id is not None:
            subnet = aws.ec2.get_subnet_output(
                id=args.subnet_id, opts=pulumi.InvokeOutputOptions(parent=self)
            )
            self.vpc_id = pulumi.Output.from_input(args.vpc_id)
            # Every resource in the subnet waits on this check, so a mismatch stops the plan.
            self.subnet_id = subnet.vpc_id.apply(
                lambda vpc: check_subnet_vpc(args.subnet_id, vpc, args.vpc_id)
            )
            self.availability_zone = subnet.availability_zone
        else:
            az = self._availability_zone(args, region)
            self.vpc_id, self.subnet_id = self._create_vpc(name, az, region, tags, child)
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
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-egress-https",
            security_group_id=sg.id,
            cidr_ipv4=WORLD_V4,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            description="HTTPS out: SSM, S3, PyPI and git for the install",
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
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-controller-egress-https",
            security_group_id=controller_sg.id,
            cidr_ipv4=WORLD_V4,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            description="HTTPS out: Auto Scaling, EC2, SSM and S3 APIs",
            opts=child,
        )
        self.controller_security_group_id = controller_sg.id
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "subnet_id": self.subnet_id,
                "availability_zone": self.availability_zone,
                "security_group_id": self.security_group_id,
                "controller_security_group_id": self.controller_security_group_id,
            }
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

    def _create_vpc(self, name, az, region, tags, child):
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=VPC_CIDR,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags={**tags, "Name": name},
            opts=child,
        )
        # Strip the default security group of its allow-all rules; nothing should use it.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, tags=tags, opts=child)
        public = aws.ec2.Subnet(
            f"{name}-public",
            vpc_id=vpc.id,
            cidr_block=PUBLIC_CIDR,
            availability_zone=az,
            map_public_ip_on_launch=False,
            tags={**tags, "Name": f"{name}-public"},
            opts=child,
        )
        private = aws.ec2.Subnet(
            f"{name}-private",
            vpc_id=vpc.id,
            cidr_block=PRIVATE_CIDR,
            availability_zone=az,
            map_public_ip_on_launch=False,
            tags={**tags, "Name": f"{name}-private"},
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
        private_rt = aws.ec2.RouteTable(
            f"{name}-private-rt",
            vpc_id=vpc.id,
            routes=[{"cidr_block": WORLD_V4, "nat_gateway_id": nat.id}],
            tags=tags,
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-private-rta", subnet_id=private.id, route_table_id=private_rt.id, opts=child
        )
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=pulumi.Output.from_input(region).apply(lambda r: f"com.amazonaws.{r}.s3"),
            vpc_endpoint_type="Gateway",
            route_table_ids=[private_rt.id],
            tags=tags,
            opts=child,
        )
        return vpc.id, private.id
