"""Cost arithmetic: spot price from history, node-hours, dollars, the report lines."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
import pytest

from trainer.launch.cost import (
    InstanceSpan,
    Price,
    estimate_lines,
    fleet_cost_report,
    latest_spot_price,
    node_hours,
    on_demand_price,
    price_for,
    transition_time,
)


def entry(price, day, az="us-east-1a", itype="p4d.24xlarge", product="Linux/UNIX"):
    return {
        "AvailabilityZone": az,
        "InstanceType": itype,
        "ProductDescription": product,
        "SpotPrice": str(price),
        "Timestamp": datetime(2026, 11, day, tzinfo=UTC),
    }


def test_latest_spot_price_is_the_newest_for_that_type_and_az():
    history = [
        entry(11.0, 20),
        entry(12.5, 22),
        entry(99.0, 23, az="us-east-1b"),
        entry(50.0, 23, itype="p5.48xlarge"),
        entry(70.0, 23, product="Windows"),
    ]
    assert latest_spot_price(history, "p4d.24xlarge", "us-east-1a") == 12.5
    assert latest_spot_price(history, "p4d.24xlarge") == 99.0
    assert latest_spot_price(history, "g5.xlarge") is None


def test_spot_price_from_moto_history(aws):
    ec2 = boto3.client("ec2", "us-east-1")
    history = ec2.describe_spot_price_history(
        InstanceTypes=["p4d.24xlarge"], AvailabilityZone="us-east-1a"
    )["SpotPriceHistory"]
    assert latest_spot_price(history, "p4d.24xlarge", "us-east-1a") == pytest.approx(0.00001)


def test_node_hours_sum_spans_with_the_billing_minimum():
    spans = [
        InstanceSpan("a", 0.0, 3600.0),
        InstanceSpan("b", 0.0, None),  # still running at now
        InstanceSpan("c", 100.0, 110.0),  # 10 s billed as 60 s
    ]
    assert node_hours(spans, now=7200.0) == pytest.approx(1 + 2 + 60 / 3600)


def test_on_demand_override_and_unknown_types():
    assert on_demand_price("p4d.24xlarge", {"TWOSTAGE_ON_DEMAND_USD": "21.96"}) == 21.96
    assert on_demand_price("p4d.24xlarge", {}) == pytest.approx(32.7726)
    assert on_demand_price("x1.weird", {}) is None
    report = fleet_cost_report(
        [InstanceSpan("a", 0, 3600, "x1.weird")], now=3600,
        prices={"x1.weird": price_for("x1.weird", spot=True, env={})},
    )  # fmt: skip
    assert report.dollars is None and "unknown (no price known for x1.weird)" in report.lines()[0]


def test_node_end_times_from_moto_instances_and_transition_reasons(cluster):
    from trainer.launch.group import Group

    assert transition_time("User initiated (2026-11-23 15:00:00 GMT)") == pytest.approx(
        datetime(2026, 11, 23, 15, tzinfo=UTC).timestamp()
    )
    assert transition_time("Server.SpotInstanceTermination") is None
    c = cluster(2)
    group = Group(c["autoscaling"], c["ec2"], None, name=c["group"])
    first = sorted(m.instance_id for m in group.members())[0]
    c["ec2"].terminate_instances(InstanceIds=[first])
    members = {m.instance_id: m for m in group.members()}
    ended = members[first]
    assert ended.state == "terminated"
    assert ended.end_time is not None and ended.end_time >= ended.launch_time
    assert all(m.end_time is None for i, m in members.items() if m.state == "running")


# -- several types, the controller, named sources --------------------------------------------


def test_price_for_names_its_source():
    history = [entry(12.0, 22), entry(20.0, 22, itype="p5.48xlarge")]
    spot = price_for("p4d.24xlarge", spot=True, history=history, availability_zone="us-east-1a")
    assert spot == Price(12.0, "EC2 spot price history, us-east-1a")
    fallback = price_for(
        "p4de.24xlarge", spot=True, history=history, availability_zone="us-east-1a", env={}
    )
    assert fallback.usd_per_hour == pytest.approx(40.9657)
    assert "no spot price found" in fallback.source
    od = price_for("t3.small", spot=False, env={})
    assert od.usd_per_hour == pytest.approx(0.0208) and "on-demand list price" in od.source
    env = price_for("t3.small", spot=False, env={"TWOSTAGE_ON_DEMAND_USD": "0.03"})
    assert env == Price(0.03, "$TWOSTAGE_ON_DEMAND_USD")
    assert price_for("x9.huge", spot=False, env={}).usd_per_hour is None


def test_estimate_before_launch_covers_every_allowed_type_and_the_controller():
    prices = {"p4d.24xlarge": Price(12.0, "a"), "p5.48xlarge": Price(30.0, "b")}
    lines = estimate_lines(
        2, prices, spot=True, controller_type="t3.small", controller_price=Price(0.02, "c")
    )
    text = "\n".join(lines)
    assert "p4d.24xlarge: $12.0000/h (a)" in text and "p5.48xlarge: $30.0000/h (b)" in text
    assert "controller t3.small (on-demand): $0.0200/h (c)" in text
    assert "$24.02-60.02/h in all" in text


def test_final_report_per_instance_type_with_controller():
    spans = [
        InstanceSpan("a", 0.0, 3600.0, "p4d.24xlarge"),
        InstanceSpan("b", 0.0, 7200.0, "p4d.24xlarge"),
        InstanceSpan("c", 0.0, 1800.0, "p5.48xlarge"),
    ]
    report = fleet_cost_report(
        spans,
        now=7200.0,
        prices={"p4d.24xlarge": Price(10.0, "spot history"), "p5.48xlarge": Price(40.0, "od")},
        controller=("t3.small", 2.0, Price(0.02, "od table")),
    )
    by = {t.instance_type: t for t in report.by_type}
    assert by["p4d.24xlarge"].node_hours == pytest.approx(3.0)
    assert by["p4d.24xlarge"].dollars == pytest.approx(30.0)
    assert by["p5.48xlarge"].dollars == pytest.approx(20.0)
    assert report.dollars == pytest.approx(50.04)
    text = "\n".join(report.lines())
    assert "p4d.24xlarge: 3.00 node-hours × $10.0000/h (spot history) = $30.00" in text
    assert "total: 3.50 node-hours, $50.04" in text
    data = report.to_dict()
    assert data["by_type"][0]["price_source"] == "spot history" and data["dollars"] == 50.04
