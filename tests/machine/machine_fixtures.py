"""Small scenarios for the executor tests."""

from __future__ import annotations

from typing import Any

from vtx.machine.model import Machine
from vtx.machine.scenario import Scenario, build_machine, parse_scenario


def scenario(**top: Any) -> Scenario:
    """Two VMs with short mixed programs on two processors (override any top-level key)."""
    doc: dict[str, Any] = {"seed": 1, "steps": 400, "logical_processors": 2, "tick": 0.1,
                           "vm": [{"name": "a", "vcpus": 2, "workload": "mixed", "length": 10},
                                  {"name": "b", "kind": "pv", "workload": "io", "length": 10}]}
    doc.update(top)
    return parse_scenario(doc)


def machine(design: str = "hosted", **top: Any) -> Machine:
    return build_machine(scenario(**top), design)
