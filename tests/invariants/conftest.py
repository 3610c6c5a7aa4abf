"""Machines of the default scenario, built once per session."""

from __future__ import annotations

import functools

from vtx.machine.model import Machine
from vtx.machine.scenario import DEFAULT_SCENARIO, build_machine, load_scenario


@functools.cache
def default_machine(design: str) -> Machine:
    return build_machine(load_scenario(DEFAULT_SCENARIO), design)
