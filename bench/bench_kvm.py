"""I/O exits on /dev/kvm: a guest loop of OUT to a port (the serial port, which exits to user space);
exits per second, backend named."""

from __future__ import annotations

import time

from bench.harness import Result
from vtx.kvm import boot
from vtx.kvm.device import Kvm, available, backend
from vtx.kvm.encode import Jmp, MovImm, Out, assemble, encode
from vtx.kvm.runner import start

EXITS = 20_000
REPETITIONS = 5
PORT = 0x3F8
"""A port that exits to user space on KVM and that the hosted design does not grant (the serial port)."""


def run() -> list[Result]:
    """Median / min / max microseconds per KVM_RUN that returns on the guest's OUT (empty when
    /dev/kvm is unusable)."""
    reason = available()
    name = f"KVM OUT exit round trip ({backend()})"
    if reason is not None:
        print(f"skipped {name}: {reason}")
        return []
    out = Out(1, None)  # OUT DX, AL: the port does not fit an imm8
    loop: list[Out | MovImm | Jmp] = [MovImm("rdx", PORT), out, Jmp(-(len(encode(out)) + len(encode(Jmp(0)))))]
    samples = []
    with Kvm() as kvm, start(kvm, [], boot.boot_image(assemble(loop))) as vm:
        vcpu = vm.vcpus[0]
        for _ in range(REPETITIONS + 1):
            t0 = time.perf_counter()
            for _ in range(EXITS):
                vcpu.run()
            samples.append((time.perf_counter() - t0) / EXITS * 1e6)
    samples = sorted(samples[1:])
    median = samples[len(samples) // 2]
    print(f"{name}: {1e6 / median:,.0f} exits/s")
    return [Result(name, "us/exit", median, samples[0], samples[-1], REPETITIONS, EXITS)]
