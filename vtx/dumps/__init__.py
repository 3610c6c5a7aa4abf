"""Readers of the VMCS dumps hypervisors print after a failed VM entry, and ``vtx explain``.

A dump is text that Linux KVM (``dump_vmcs``, with ``kvm_intel.dump_invalid_vmcs=1``), Xen
(``vmcs_dump_vcpu``) or QEMU (its register dump after "KVM: entry failed") printed, or a ``vtx
check`` JSON document. :mod:`vtx.dumps.reader` finds the dumps in a file and maps each printed
value to its VMCS field (the line formats are the table ``spec/dumps/vmcs_dump.toml``);
:mod:`vtx.dumps.explain` runs every VM-entry check (SDM Vol. 3C §28 "VM Entries") whose fields the
dump gives and reports the others as not evaluable, naming the fields that would decide them.
"""

from __future__ import annotations

from vtx.dumps.explain import CheckResult, Explanation, explain_dump
from vtx.dumps.reader import Dump, ReadResult, read_dumps

__all__ = ["CheckResult", "Dump", "Explanation", "ReadResult", "explain_dump", "read_dumps"]
