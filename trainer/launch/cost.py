"""Pure cost arithmetic: spot price, node-hours, dollars, the report the user sees.

Inputs are plain data (boto3 response dicts or spans); nothing here calls AWS. EC2 bills Linux
instances per second (60 s minimum), so node-hours are the sum of each instance's running span.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# On-demand Linux list prices, USD per hour, us-east-1, as published by AWS when this table was
# written (prices change and differ per region: check https://aws.amazon.com/ec2/pricing/on-demand/).
# Only a reference for "spot vs on-demand"; TWOSTAGE_ON_DEMAND_USD overrides it for your region.
ON_DEMAND_USD_PER_HOUR: dict[str, float] = {
    "p4d.24xlarge": 32.7726,
    "p4de.24xlarge": 40.9657,
    "p5.48xlarge": 98.32,
    "p3.16xlarge": 24.48,
    "p3dn.24xlarge": 31.212,
    "g5.xlarge": 1.006,
    "g5.12xlarge": 5.672,
    "g5.48xlarge": 16.288,
    # Controller candidates (no GPU).
    "t3.small": 0.0208,
    "t3.medium": 0.0416,
    "m7i.large": 0.1008,
}
MIN_BILLED_SECONDS = 60.0
log = logging.getLogger(__name__)
_TRANSITION_TIME = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


ON_DEMAND_ENV = "TWOSTAGE_ON_DEMAND_USD"
SPOT_SOURCE = "EC2 spot price history"
"""DescribeSpotPriceHistory, the newest price for the type (in the AZ when known)."""
TABLE_SOURCE = "built-in us-east-1 on-demand list price (trainer/launch/cost.py; check your region)"


def on_demand_quote(
    instance_type: str, env: Mapping[str, str] | None = None
) -> tuple[float | None, str]:
    """Reference on-demand price per node-hour and where it came from (the report names it)."""
    env = os.environ if env is None else env
    override = env.get(ON_DEMAND_ENV)
    if override:
        try:
            return float(override), f"${ON_DEMAND_ENV}"
        except ValueError:
            log.warning("%s=%r is not a number: using the built-in table", ON_DEMAND_ENV, override)
    price = ON_DEMAND_USD_PER_HOUR.get(instance_type)
    return price, (TABLE_SOURCE if price is not None else "no known on-demand price")


def on_demand_price(instance_type: str, env: Mapping[str, str] | None = None) -> float | None:
    """Reference on-demand price per node-hour (``TWOSTAGE_ON_DEMAND_USD`` overrides)."""
    return on_demand_quote(instance_type, env)[0]


def _ts(value: Any) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


def latest_spot_price(
    history: Iterable[Mapping[str, Any]], instance_type: str, availability_zone: str | None = None
) -> float | None:
    """The newest price for the type (and AZ) in a ``describe_spot_price_history`` list."""
    best: tuple[float, float] | None = None
    for entry in history:
        if entry.get("InstanceType") != instance_type:
            continue
        if availability_zone and entry.get("AvailabilityZone") != availability_zone:
            continue
        product = entry.get("ProductDescription", "Linux/UNIX")
        if "Linux/UNIX" not in product:
            continue
        when = _ts(entry.get("Timestamp", 0))
        price = float(entry["SpotPrice"])
        if best is None or when > best[0]:
            best = (when, price)
    return None if best is None else best[1]


@dataclass(frozen=True)
class InstanceSpan:
    """When one instance was billed: launch to stop/termination (``end=None`` while running)."""

    instance_id: str
    start: float
    end: float | None = None
    instance_type: str = ""
    """Known for group members (mixed instance types); empty: the cluster's one type."""


def transition_time(reason: str) -> float | None:
    """The time in an EC2 ``StateTransitionReason`` such as ``User initiated (2026-11-23 15:00:00 GMT)``."""
    m = _TRANSITION_TIME.search(reason or "")
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


def node_hours(spans: Iterable[InstanceSpan], now: float) -> float:
    """Billed node-hours: each span to its end (or now), at least the 60 s minimum."""
    total = 0.0
    for span in spans:
        end = now if span.end is None else span.end
        total += max(end - span.start, MIN_BILLED_SECONDS)
    return total / 3600.0


# -- prices with their sources, the estimate before a submit, the report at the end ---------------


@dataclass(frozen=True)
class Price:
    """One USD/hour price and where it came from (every report names its source)."""

    usd_per_hour: float | None
    source: str

    def text(self) -> str:
        if self.usd_per_hour is None:
            return f"unknown ({self.source})"
        return f"${self.usd_per_hour:.4f}/h ({self.source})"


def price_for(
    instance_type: str,
    *,
    spot: bool,
    history: Iterable[Mapping[str, Any]] = (),
    availability_zone: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Price:
    """Spot price from the AZ's price history, else the on-demand reference; source named."""
    if spot:
        found = latest_spot_price(history, instance_type, availability_zone)
        if found is not None:
            where = availability_zone or "the region"
            return Price(found, f"{SPOT_SOURCE}, {where}")
    od, source = on_demand_quote(instance_type, env)
    if od is None:
        return Price(None, f"no price known for {instance_type}")
    if spot:
        source = f"no spot price found; {source} as the upper bound"
    return Price(od, source)


def estimate_lines(
    node_count: int,
    prices: Mapping[str, Price],
    *,
    spot: bool,
    controller_type: str,
    controller_price: Price,
) -> list[str]:
    """Before launch: $/h per allowed type, the controller, and the range of the total."""
    kind = "spot" if spot else "on-demand"
    lines = [f"price per node, {kind}:"]
    for itype, price in prices.items():
        lines.append(f"  {itype}: {price.text()}")
    lines.append(f"controller {controller_type} (on-demand): {controller_price.text()}")
    known = [p.usd_per_hour for p in prices.values() if p.usd_per_hour is not None]
    ctl = controller_price.usd_per_hour or 0.0
    if known:
        low, high = min(known) * node_count + ctl, max(known) * node_count + ctl
        span = f"${low:.2f}/h" if low == high else f"${low:.2f}-{high:.2f}/h"
        lines.append(f"while the run uses {node_count} node(s): {span} in all (nodes + controller)")
    return lines


@dataclass(frozen=True)
class TypeCost:
    instance_type: str
    node_hours: float
    price: Price

    @property
    def dollars(self) -> float | None:
        p = self.price.usd_per_hour
        return None if p is None else p * self.node_hours


@dataclass(frozen=True)
class FleetCostReport:
    """Node-hours and dollars per instance type, the controller, the total; sources named."""

    by_type: tuple[TypeCost, ...]
    controller: TypeCost | None = None

    @property
    def dollars(self) -> float | None:
        parts = [*self.by_type, *([self.controller] if self.controller else [])]
        if any(p.dollars is None for p in parts):
            return None
        return sum(p.dollars or 0.0 for p in parts)

    @property
    def node_hours(self) -> float:
        return sum(t.node_hours for t in self.by_type)

    def lines(self) -> list[str]:
        out = []
        for t in self.by_type:
            cost = "unknown" if t.dollars is None else f"${t.dollars:.2f}"
            out.append(
                f"{t.instance_type}: {t.node_hours:.2f} node-hours × {t.price.text()} = {cost}"
            )
        if self.controller is not None:
            c = self.controller
            cost = "unknown" if c.dollars is None else f"${c.dollars:.2f}"
            out.append(
                f"controller {c.instance_type}: {c.node_hours:.2f} h × {c.price.text()} = {cost}"
            )
        total = self.dollars
        out.append(
            f"total: {self.node_hours:.2f} node-hours, "
            + ("dollars unknown" if total is None else f"${total:.2f}")
        )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON written next to the run's final STATUS."""

        def row(t: TypeCost) -> dict[str, Any]:
            return {
                "instance_type": t.instance_type,
                "node_hours": round(t.node_hours, 4),
                "usd_per_hour": t.price.usd_per_hour,
                "price_source": t.price.source,
                "dollars": None if t.dollars is None else round(t.dollars, 2),
            }

        return {
            "by_type": [row(t) for t in self.by_type],
            "controller": None if self.controller is None else row(self.controller),
            "node_hours": round(self.node_hours, 4),
            "dollars": None if self.dollars is None else round(self.dollars, 2),
        }


def fleet_cost_report(
    spans: Iterable[InstanceSpan],
    *,
    now: float,
    prices: Mapping[str, Price],
    controller: tuple[str, float, Price] | None = None,
) -> FleetCostReport:
    """Group the spans by instance type; ``controller`` is (type, hours, price)."""
    hours: dict[str, list[InstanceSpan]] = {}
    for span in spans:
        hours.setdefault(span.instance_type, []).append(span)
    by_type = tuple(
        TypeCost(t, node_hours(group, now), prices.get(t) or Price(None, f"no price for {t}"))
        for t, group in sorted(hours.items())
    )
    ctl = None if controller is None else TypeCost(controller[0], controller[1], controller[2])
    return FleetCostReport(by_type, ctl)
