"""The power model: what a host draws, from ``spec/cluster/power.toml``.

A powered host draws its idle power plus a share of the span up to its peak proportional to its
CPU load (Fan, Weber and Barroso's linear model); a host that is off (or failed) draws nothing.
Rows carry their reference and say ``unsure`` where the figure is an estimate.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import attrs

from vtx.errors import InputError, SpecError
from vtx.machine.cost import Reference
from vtx.spec import _load
from vtx.typecheck import checked

POWER_TABLE = "cluster/power.toml"
LEGACY = "legacy_server"
"""The row for the physical servers a consolidation retires (one workload per server)."""
SECONDS_PER_HOUR = 3600


@attrs.frozen
class HostPower:
    """The draw of one host class: ``idle_w`` powered and idle, ``peak_w`` at full load."""

    profile: str
    idle_w: float
    peak_w: float
    reference: Reference
    unsure: bool
    note: str = ""

    @checked
    def watts(self, load: float) -> float:
        """The draw at CPU ``load`` (0..1; above 1 the host is saturated and draws its peak)."""
        return self.idle_w + (self.peak_w - self.idle_w) * min(max(load, 0.0), 1.0)


@functools.cache
def load_power(relpath: str = POWER_TABLE) -> Mapping[str, HostPower]:
    """The power rows by profile; SpecError naming the row for a bad reference or figures."""
    data = _load(relpath)
    refs = {r["key"]: Reference(r["key"], r["title"], r["authors"], r["venue"], r.get("note", ""))
            for r in data.get("reference", [])}
    rows: dict[str, HostPower] = {}
    for row in data.get("host_power", []):
        where = f"{relpath} [[host_power]] {row.get('profile', '?')}"
        if row.get("reference") not in refs:
            raise SpecError(where, row.get("reference"), "reference must name a [[reference]] key")
        idle, peak = row.get("idle_w"), row.get("peak_w")
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (idle, peak))
        if not numbers or not 0 <= idle <= peak:
            raise SpecError(where, f"{idle}/{peak}", "idle_w and peak_w must be numbers with 0 <= idle_w <= peak_w")
        if row["profile"] in rows:
            raise SpecError(where, row["profile"], "profiles are unique")
        rows[row["profile"]] = HostPower(row["profile"], float(idle), float(peak), refs[row["reference"]],
                                         bool(row.get("unsure", False)), row.get("note", ""))
    return rows


@checked
def host_power(profile: str, where: str = "profile") -> HostPower:
    """The power row of ``profile``; InputError naming ``where`` when the table has none."""
    rows = load_power()
    if profile not in rows:
        raise InputError(where, repr(profile), f"{POWER_TABLE} has no power row for it (rows: {', '.join(rows)})")
    return rows[profile]


@checked
def energy_kwh(watts: float, seconds: float) -> float:
    return watts * seconds / SECONDS_PER_HOUR / 1000
