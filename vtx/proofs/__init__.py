"""z3 proofs of the isolation invariants: the symbolic EPT encoding (:mod:`vtx.proofs.encoding`),
proofs over every guest-physical address, port, MSR and PCID of a concrete machine
(:func:`prove_machine`), and inductive steps per exit handler of each design (:func:`prove_handlers`).
A refutation is narrowed to its smallest failing case, decoded and replayed on the concrete model."""

from __future__ import annotations

from vtx.proofs.machine import prove_machine
from vtx.proofs.result import ProofResult

__all__ = ["ProofResult", "prove_machine"]
