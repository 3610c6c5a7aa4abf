"""Where the executor places regions, tables and guest memory (``spec/machine/layout.toml``):
modelling choices of vtx, kept as data."""

from __future__ import annotations

import attrs

from vtx.errors import SpecError
from vtx.paging.formats import PAGE_SIZE
from vtx.spec import _load
from vtx.typecheck import checked

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
    bitmaps: int
    bitmaps_stride: int
    event_vector: int
    pv_cr3: int
    service_vmcs: int
    service_backing: int
    service_bytes: int
    ring_request: int
    ring_response: int
    ring_entry_bytes: int
    pml: int

    @checked
    def vmxon_region(self, lp: int) -> int:
        return self.vmxon + lp * PAGE_SIZE

    @checked
    def vmcs_region(self, n: int) -> int:
        return self.vmcs + n * PAGE_SIZE

    @checked
    def pml_page(self, n: int) -> int:
        """The page-modification log of the ``n``-th vCPU (the one whose VMCS is ``vmcs_region(n)``)."""
        return self.pml + n * PAGE_SIZE

    @checked
    def bitmap_pages(self, vm: int) -> int:
        """The host-physical base of VM ``vm``'s MSR bitmap, I/O bitmap A and I/O bitmap B (one page each)."""
        return self.bitmaps + vm * self.bitmaps_stride

    @checked
    def grant_slot(self, vm: int) -> int:
        """Where dom0 maps the page guest VM ``vm`` grants it (dom0 guest-physical)."""
        return self.grant_gpa + vm * PAGE_SIZE

    def _room(self, start: int, stride: int) -> int:
        """How many ``stride``-byte slots fit from ``start`` up to the next host region above it."""
        above = [a for a in (self.vmxon, self.vmcs, self.ept, self.backing, self.service_ept, self.bitmaps,
                                  self.service_vmcs, self.service_backing, self.pml) if a > start]
        return (min(above) - start) // stride if above else 1 << 20

    @property
    def max_vms(self) -> int:
        """The VMs whose EPT areas fit below the next host region (more would overlap it)."""
        return self._room(self.ept, self.ept_stride)

    @property
    def max_vcpus(self) -> int:
        """The vCPUs whose VMCS regions fit below the next host region."""
        return self._room(self.vmcs, PAGE_SIZE)


@checked
def load_layout(relpath: str = LAYOUT_TABLE) -> Layout:
    data = _load(relpath)
    try:
        host, guest, dom0, ring = data["host"], data["guest"], data["dom0"], data["ring"]
        return Layout(host["vmxon"], host["vmcs"], host["ept"], host["ept_stride"], host["backing"],
                      host["backing_stride"], guest["identity_bytes"], guest["mmio_gpa"], guest["ring_gpa"],
                      guest["device_port"], guest["wakeup_vector"], guest["tick_vector"], guest["msr"], dom0["ept"],
                      dom0["grant_gpa"], host["bitmaps"], host["bitmaps_stride"], guest["event_vector"],
                      guest["pv_cr3"], dom0["vmcs"], dom0["backing"], dom0["memory_bytes"], ring["request_offset"],
                      ring["response_offset"], ring["entry_bytes"], host["pml"])
    except KeyError as e:
        raise SpecError(relpath, e.args[0], "missing key of the layout table") from e


LAYOUT = load_layout()
