"""Where the executor places regions, tables and guest memory (``spec/machine/layout.toml``):
modelling choices of vtx, kept as data."""

from __future__ import annotations

import attrs

from vtx.errors import SpecError
from vtx.paging.formats import PAGE_SIZE
from vtx.spec import _load

LAYOUT_TABLE = "machine/layout.toml"


@attrs.frozen
class Layout:
    vmxon: int
    vmcs: int
    ept: int
    ept_stride: int
    backing: int
    backing_stride: int
    identity_bytes: int
    mmio_gpa: int
    ring_gpa: int
    device_port: int
    wakeup_vector: int
    tick_vector: int
    msr: int
    service_ept: int
    grant_gpa: int

    def vmxon_region(self, lp: int) -> int:
        return self.vmxon + lp * PAGE_SIZE

    def vmcs_region(self, n: int) -> int:
        return self.vmcs + n * PAGE_SIZE


def load_layout(relpath: str = LAYOUT_TABLE) -> Layout:
    data = _load(relpath)
    try:
        host, guest, dom0 = data["host"], data["guest"], data["dom0"]
        return Layout(host["vmxon"], host["vmcs"], host["ept"], host["ept_stride"], host["backing"],
                      host["backing_stride"], guest["identity_bytes"], guest["mmio_gpa"], guest["ring_gpa"],
                      guest["device_port"], guest["wakeup_vector"], guest["tick_vector"], guest["msr"], dom0["ept"],
                      dom0["grant_gpa"])
    except KeyError as e:
        raise SpecError(relpath, e.args[0], "missing key of the layout table") from e


LAYOUT = load_layout()
