"""The transition cost model: cycles per world switch, from ``spec/machine/costs.toml``.

The numbers are published measurements of real hypervisors (each row names its reference and
says ``unsure`` where it is an estimate); a run counts world switches by kind and prices them, so
that designs can be compared on the same workload. They are not a performance prediction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import attrs

from vtx.errors import SpecError
from vtx.spec import _load
from vtx.typecheck import checked

COSTS_TABLE = "machine/costs.toml"


@attrs.frozen
class Reference:
    key: str
    title: str
    authors: str
    venue: str
    note: str = ""

    def __str__(self) -> str:
        return f'{self.authors}, "{self.title}", {self.venue}'


@attrs.frozen
class Cost:
    """One kind of world switch and its price in cycles."""

    name: str
    cycles: int
    title: str
    reference: Reference
    unsure: bool
    note: str = ""


@checked
def load_costs(relpath: str = COSTS_TABLE) -> Mapping[str, Cost]:
    """The cost rows by name; SpecError naming the row for a bad reference or a negative price."""
    data = _load(relpath)
    refs = {r["key"]: Reference(r["key"], r["title"], r["authors"], r["venue"], r.get("note", ""))
            for r in data.get("reference", [])}
    costs: dict[str, Cost] = {}
    for row in data.get("cost", []):
        where = f"{relpath} [[cost]] {row.get('name', '?')}"
        if row.get("reference") not in refs:
            raise SpecError(where, row.get("reference"), "reference must name a [[reference]] key")
        if not isinstance(row.get("cycles"), int) or row["cycles"] < 0:
            raise SpecError(where, row.get("cycles"), "cycles must be a non-negative integer")
        if row["name"] in costs:
            raise SpecError(where, row["name"], "cost names are unique")
        costs[row["name"]] = Cost(row["name"], row["cycles"], row["title"], refs[row["reference"]],
                                  bool(row.get("unsure", False)), row.get("note", ""))
    return costs


COSTS = load_costs()

VM_ROUND_TRIP = "vm_round_trip"
KERNEL_USER = "kernel_user_round_trip"
DOM0 = "dom0_round_trip"
MIGRATION = "vmcs_migration"
PV_HYPERCALL = "pv_hypercall_round_trip"
PV_TRAP = "pv_trap_round_trip"
SWITCH_KINDS = (VM_ROUND_TRIP, KERNEL_USER, DOM0, MIGRATION, PV_HYPERCALL, PV_TRAP)
"""The switch kinds the designs and the executor report (each must be a row of the table)."""

_missing = [k for k in SWITCH_KINDS if k not in COSTS]
if _missing:
    raise SpecError(COSTS_TABLE, _missing, "every switch kind the executor reports needs a [[cost]] row")


@checked
def price(switches: Iterable[str], costs: Mapping[str, Cost] = COSTS) -> tuple[Counter[str], int]:
    """The switches counted by kind and their total cycles."""
    counts = Counter(switches)
    return counts, sum(costs[k].cycles * n for k, n in counts.items())
