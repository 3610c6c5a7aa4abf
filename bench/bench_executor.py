"""Executor vs. KVM: the same I/O-exit-heavy guest program (a loop of OUT to one port) on the model's
hosted design and on /dev/kvm, exits per second of each in one run, and their ratio.

On the model every OUT exits (the port is not one the hosted design grants), the design completes
it and the next VMRESUME runs the VM-entry checks; on KVM every OUT returns from KVM_RUN to this
process. The KVM figure is the user-space exit round trip driven from Python, with the backend named.
"""

from __future__ import annotations

import statistics
import time

from bench import bench_kvm
from bench.harness import Result
from vtx.machine.executor import run as run_machine
from vtx.machine.scenario import build_machine, parse_scenario

PORT = bench_kvm.PORT
OUTS = 1_000
"""OUT instructions per model run (the program then ends with HLT)."""
REPETITIONS = 5
TARGET_RATIO = 1.0


def scenario(outs: int = OUTS) -> dict[str, object]:
    """One vCPU on one processor running ``outs`` OUTs to :data:`PORT`, no timer interrupts."""
    program = [{"op": "out", "port": PORT, "size": 1}] * outs
    return {"seed": 1, "steps": 4 * outs + 16, "logical_processors": 1, "design": "hosted", "tick": 0.0,
            "vm": [{"name": "io", "vcpus": 1, "program": program}]}


def _model_run(outs: int) -> tuple[float, int]:
    """Seconds of one executor run of the OUT loop, and the number of I/O exits in its trace."""
    parsed = parse_scenario(scenario(outs))
    machine = build_machine(parsed, "hosted")
    t0 = time.perf_counter()
    _, trace = run_machine(machine, parsed.steps)
    seconds = time.perf_counter() - t0
    exits = sum(1 for e in trace if e.kind == "exit" and e.get("reason") == "IO_INSTRUCTION")
    return seconds, exits


def measure_model(outs: int = OUTS, repetitions: int = REPETITIONS, *, peer: str | None = None) -> Result:
    """Microseconds per OUT exit on the model (one run of ``outs`` exits per repetition, after a warm-up)."""
    _model_run(min(outs, 50))
    samples = []
    for _ in range(repetitions):
        seconds, exits = _model_run(outs)
        if exits != outs:
            raise AssertionError(f"the OUT loop made {exits} I/O exits, not {outs}")
        samples.append(seconds / exits * 1e6)
    samples.sort()
    return Result("executor OUT exit (model, hosted design)", "us/exit", statistics.median(samples), samples[0],
                  samples[-1], repetitions, outs, peer=peer, target_ratio=TARGET_RATIO if peer else None)


def run() -> list[Result]:
    """The model's and KVM's figures in one run; the model's row names KVM's as its peer (ratio target 1.0)."""
    kvm = bench_kvm.run()
    model = measure_model(peer=kvm[0].name if kvm else None)
    print(f"{model.name}: {model.per_second:,.0f} exits/s")
    return [model, *kvm]
