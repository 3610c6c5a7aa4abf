"""A small binding to the KVM API of /dev/kvm: system, VM and vCPU file descriptors as context
managers, guest memory slots, registers, KVM_RUN with its user-space exits decoded into frozen
values, KVM_TRANSLATE and the dirty log.

Every ioctl number and structure layout comes from spec/kvm/api.toml (:mod:`vtx.kvm.api`).
File descriptors and mappings are released deterministically by ``close`` / ``with``; a VM
closes its vCPUs and memory slots. A failing ioctl raises :class:`~vtx.kvm.errors.KvmError`
naming /dev/kvm, the ioctl and the errno.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs

from vtx.errors import SpecError
from vtx.kvm.api import API
from vtx.kvm.errors import DEVICE, KvmError, KvmUnavailable, errno_text
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE

_C = API.constants
_IO_IN, _IO_OUT = _C["KVM_EXIT_IO_IN"], _C["KVM_EXIT_IO_OUT"]
_READONLY, _LOG_DIRTY = _C["KVM_MEM_READONLY"], _C["KVM_MEM_LOG_DIRTY_PAGES"]
_EXIT = {r.name: r.number for r in API.exit_reasons}
_RUN = API.structs["kvm_run"]
_RUN_IO, _RUN_MMIO = API.structs["kvm_run_io"], API.structs["kvm_run_mmio"]
_RUN_FAIL, _RUN_INTERNAL = API.structs["kvm_run_fail_entry"], API.structs["kvm_run_internal"]
_MMIO_DATA = _RUN_MMIO.data.offset
_BITMAP_WORD = ctypes.sizeof(ctypes.c_uint64)

# ------------------------------------------------------------------ the host's KVM backend

BACKENDS = ("kvm_intel", "kvm_amd", "kvm_pvm")
"""The KVM vendor modules, in the order they are looked for."""


def backend(sys_module: Path = Path("/sys/module"), proc_modules: Path = Path("/proc/modules")) -> str:
    """The loaded KVM backend module (``kvm_intel``, ``kvm_amd``, ``kvm_pvm``), from
    /sys/module or /proc/modules; ``none`` when no KVM vendor module is loaded."""
    for name in BACKENDS:
        if (sys_module / name).is_dir():
            return name
    try:
        loaded = {line.split(maxsplit=1)[0] for line in proc_modules.read_text().splitlines() if line.strip()}
    except OSError:
        loaded = set()
    return next((name for name in BACKENDS if name in loaded), "none")


def available() -> str | None:
    """None if a VM can be created on /dev/kvm, else the reason it cannot (for test skips)."""
    try:
        with Kvm() as kvm, kvm.create_vm():
            return None
    except KvmError as e:
        return str(e)


# ------------------------------------------------------------------ register values


@attrs.frozen
class Regs:
    """The general-purpose registers, RIP and RFLAGS (struct kvm_regs)."""

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = 0


@attrs.frozen
class Segment:
    """A segment register's selector and hidden part (struct kvm_segment)."""

    base: int = 0
    limit: int = 0
    selector: int = 0
    type: int = 0
    present: int = 0
    dpl: int = 0
    db: int = 0
    s: int = 0
    l: int = 0  # noqa: E741 - the SDM's and KVM's name of the 64-bit code-segment flag
    g: int = 0
    avl: int = 0
    unusable: int = 0


@attrs.frozen
class DTable:
    """A descriptor-table register, GDTR or IDTR (struct kvm_dtable)."""

    base: int = 0
    limit: int = 0


@attrs.frozen
class Sregs:
    """Segment, descriptor-table and control registers, EFER and APIC base (struct kvm_sregs)."""

    cs: Segment
    ds: Segment
    es: Segment
    fs: Segment
    gs: Segment
    ss: Segment
    tr: Segment
    ldt: Segment
    gdt: DTable
    idt: DTable
    cr0: int
    cr2: int
    cr3: int
    cr4: int
    cr8: int
    efer: int
    apic_base: int
    interrupt_bitmap: tuple[int, ...]


@attrs.frozen
class Translation:
    """What KVM_TRANSLATE reports for a linear address (struct kvm_translation)."""

    linear_address: int
    physical_address: int
    valid: bool
    writeable: bool
    usermode: bool


@attrs.frozen
class CpuidEntry:
    """One CPUID leaf (and subleaf ``index``) as KVM reports or is given it (struct kvm_cpuid_entry2)."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


_VALUES: Mapping[str, type[Any]] = {"kvm_regs": Regs, "kvm_segment": Segment, "kvm_dtable": DTable,
                                    "kvm_sregs": Sregs, "kvm_cpuid_entry2": CpuidEntry}
_CPUID_HEADER, _CPUID_ENTRY = API.structs["kvm_cpuid2"], API.structs["kvm_cpuid_entry2"]
_CPUID_FIRST_GUESS = 64
"""Entries KVM_GET_SUPPORTED_CPUID is first offered room for; doubled while it says E2BIG."""


def _cpuid_buffer(entries: int) -> Any:
    cls = type("kvm_cpuid2_n", (ctypes.Structure,), {"_fields_": [("head", _CPUID_HEADER),
                                                                   ("entries", _CPUID_ENTRY * entries)]})
    buf = cls()
    buf.head.nent = entries
    return buf


def _check_values() -> None:
    """Each value class names exactly the structure's fields, less its padding."""
    for struct, cls in _VALUES.items():
        names = [f[0] for f in API.structs[struct]._fields_ if not f[0].startswith("pad")]
        if names != [a.name for a in attrs.fields(cls)]:
            raise SpecError(f"kvm/api.toml [[struct]] {struct}", names, f"{cls.__name__} must have these fields")


_check_values()
V = TypeVar("V")


def _from_c(cls: type[V], c: Any) -> V:
    kwargs = {}
    for a in attrs.fields(cls):  # type: ignore[arg-type]
        v = getattr(c, a.name)
        if isinstance(v, ctypes.Structure):
            kwargs[a.name] = _from_c(_VALUES[type(v).__name__], v)
        elif isinstance(v, ctypes.Array):
            kwargs[a.name] = tuple(v)
        else:
            kwargs[a.name] = v
    return cls(**kwargs)


def _to_c(value: Any, struct: str) -> Any:
    c = API.structs[struct]()
    for a in attrs.fields(type(value)):
        v = getattr(value, a.name)
        if attrs.has(type(v)):
            setattr(c, a.name, _to_c(v, _struct_of(type(v))))
        elif isinstance(v, tuple):
            getattr(c, a.name)[:] = v
        else:
            setattr(c, a.name, v)
    return c


def _struct_of(cls: type[Any]) -> str:
    return next(s for s, c in _VALUES.items() if c is cls)


# ------------------------------------------------------------------ exits


@attrs.frozen
class IoExit:
    """KVM_EXIT_IO: an IN or OUT the guest executed (``count`` > 1 for string I/O). ``data`` is
    what the guest wrote (OUT) and empty for IN, whose bytes user space supplies."""

    out: bool
    size: int
    port: int
    count: int
    data: bytes


@attrs.frozen
class MmioExit:
    """KVM_EXIT_MMIO: a guest access to a guest-physical address no memory slot backs for it
    (or a write to a read-only slot). ``data`` is what a write stores, empty for a read."""

    phys_addr: int
    size: int
    is_write: bool
    data: bytes


@attrs.frozen
class HltExit:
    """KVM_EXIT_HLT: the guest executed HLT (no in-kernel local APIC to wait in)."""


@attrs.frozen
class ShutdownExit:
    """KVM_EXIT_SHUTDOWN: the guest triple-faulted (or otherwise entered shutdown)."""


@attrs.frozen
class FailEntryExit:
    """KVM_EXIT_FAIL_ENTRY: the hardware refused VM entry (reason as the vendor reports it)."""

    hardware_entry_failure_reason: int
    cpu: int


@attrs.frozen
class InternalErrorExit:
    """KVM_EXIT_INTERNAL_ERROR: KVM could not handle the exit (e.g. emulation failed)."""

    suberror: int
    data: tuple[int, ...]


@attrs.frozen
class OtherExit:
    """Any other exit reason (named from spec/kvm/api.toml when catalogued)."""

    reason: int
    name: str


Exit = IoExit | MmioExit | HltExit | ShutdownExit | FailEntryExit | InternalErrorExit | OtherExit


# ------------------------------------------------------------------ file descriptors


class _Fd:
    """A KVM file descriptor: ioctls by name, closed exactly once."""

    kind = "system"

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def ioctl(self, name: str, arg: Any = 0) -> int:
        """Issue ioctl ``name``; KvmError naming /dev/kvm, the ioctl and the errno on failure."""
        if self.fd < 0:
            raise KvmError(f"{DEVICE} {name}", "closed", f"the {self.kind} file descriptor is closed")
        try:
            result: int = fcntl.ioctl(self.fd, API.ioctl(name), arg)
            return result
        except OSError as e:
            raise KvmError(f"{DEVICE} {name}", errno_text(e.errno or 0), f"the {self.kind} ioctl failed") from e

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self: F) -> F:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


F = TypeVar("F", bound=_Fd)


class Kvm(_Fd):
    """/dev/kvm, opened and checked for the API version of spec/kvm/api.toml."""

    def __init__(self, path: str = DEVICE) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmUnavailable(path, errno_text(e.errno or 0), "cannot open the KVM device") from e
        super().__init__(fd)
        version = self.ioctl("KVM_GET_API_VERSION")
        if version != _C["KVM_API_VERSION"]:
            self.close()
            raise KvmUnavailable(path, version, f"KVM_GET_API_VERSION must be {_C['KVM_API_VERSION']}")

    def check_extension(self, name: str) -> int:
        """KVM_CHECK_EXTENSION for the capability constant ``name`` (0: unsupported)."""
        return self.ioctl("KVM_CHECK_EXTENSION", _C[name])

    def supported_cpuid(self) -> tuple[CpuidEntry, ...]:
        """KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can give a guest."""
        room = _CPUID_FIRST_GUESS
        while True:
            buf = _cpuid_buffer(room)
            try:
                self.ioctl("KVM_GET_SUPPORTED_CPUID", buf)
            except KvmError as e:
                if e.__cause__ is not None and getattr(e.__cause__, "errno", None) == errno.E2BIG:
                    room *= 2
                    continue
                raise
            return tuple(_from_c(CpuidEntry, buf.entries[i]) for i in range(buf.head.nent))

    def vcpu_mmap_size(self) -> int:
        return self.ioctl("KVM_GET_VCPU_MMAP_SIZE")

    def create_vm(self) -> Vm:
        return Vm(self, self.ioctl("KVM_CREATE_VM"))


@attrs.frozen
class SlotSpec:
    """A guest memory slot: ``size`` bytes at guest-physical ``gpa`` (both page-aligned)."""

    slot: int
    gpa: int
    size: int
    readonly: bool = False
    log_dirty: bool = False

    @property
    def flags(self) -> int:
        return (_READONLY if self.readonly else 0) | (_LOG_DIRTY if self.log_dirty else 0)

    def contains(self, gpa: int, size: int = 1) -> bool:
        return self.gpa <= gpa and gpa + size <= self.gpa + self.size


class MemorySlot:
    """Anonymous host memory registered with KVM_SET_USER_MEMORY_REGION."""

    def __init__(self, vm: Vm, spec: SlotSpec) -> None:
        if spec.gpa % PAGE_SIZE or spec.size % PAGE_SIZE or spec.size <= 0:
            raise KvmError(f"{DEVICE} KVM_SET_USER_MEMORY_REGION", hex(spec.gpa), "a slot is whole pages")
        self.spec = spec
        self.memory = mmap.mmap(-1, spec.size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        view = (ctypes.c_char * spec.size).from_buffer(self.memory)
        self.address = ctypes.addressof(view)
        del view
        region = API.structs["kvm_userspace_memory_region"](spec.slot, spec.flags, spec.gpa, spec.size, self.address)
        try:
            vm.ioctl("KVM_SET_USER_MEMORY_REGION", region)
        except KvmError:
            self.memory.close()
            raise

    def write(self, gpa: int, data: bytes) -> None:
        off = gpa - self.spec.gpa
        self.memory[off:off + len(data)] = data

    def read(self, gpa: int, size: int) -> bytes:
        off = gpa - self.spec.gpa
        return self.memory[off:off + size]

    def close(self) -> None:
        self.memory.close()


class Vm(_Fd):
    """A VM file descriptor; owns its memory slots and vCPUs."""

    kind = "vm"

    def __init__(self, kvm: Kvm, fd: int) -> None:
        super().__init__(fd)
        self.mmap_size = kvm.vcpu_mmap_size()
        self.slots: dict[int, MemorySlot] = {}
        self.vcpus: list[Vcpu] = []

    def add_slot(self, spec: SlotSpec) -> MemorySlot:
        """Back ``spec.size`` bytes at ``spec.gpa`` with fresh zeroed host memory."""
        slot = MemorySlot(self, spec)
        self.slots[spec.slot] = slot
        return slot

    def slot_at(self, gpa: int) -> MemorySlot | None:
        return next((s for s in self.slots.values() if s.spec.contains(gpa)), None)

    def write(self, gpa: int, data: bytes) -> None:
        """Copy ``data`` into the slot holding ``gpa`` (KvmError if none holds all of it)."""
        slot = self.slot_at(gpa)
        if slot is None or not slot.spec.contains(gpa, len(data)):
            raise KvmError(f"{DEVICE} memory", hex(gpa), "no memory slot holds these bytes")
        slot.write(gpa, data)

    def read(self, gpa: int, size: int) -> bytes:
        slot = self.slot_at(gpa)
        if slot is None or not slot.spec.contains(gpa, size):
            raise KvmError(f"{DEVICE} memory", hex(gpa), "no memory slot holds these bytes")
        return slot.read(gpa, size)

    def dirty_pages(self, slot: int) -> frozenset[int]:
        """KVM_GET_DIRTY_LOG: the guest-physical page addresses of ``slot`` written since the
        last call (the slot must log dirty pages)."""
        spec = self.slots[slot].spec
        pages = spec.size >> PAGE_OFFSET_BITS
        words = (pages + 8 * _BITMAP_WORD - 1) // (8 * _BITMAP_WORD)
        bitmap = (ctypes.c_uint64 * words)()
        log = API.structs["kvm_dirty_log"](slot, 0, ctypes.addressof(bitmap))
        self.ioctl("KVM_GET_DIRTY_LOG", log)
        bits = int.from_bytes(bytes(bitmap), "little")
        return frozenset(spec.gpa + (i << PAGE_OFFSET_BITS) for i in range(pages) if bits >> i & 1)

    def create_vcpu(self, index: int = 0) -> Vcpu:
        vcpu = Vcpu(self, self.ioctl("KVM_CREATE_VCPU", index), self.mmap_size)
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        super().close()
        for slot in self.slots.values():
            slot.close()
        self.slots.clear()


class Vcpu(_Fd):
    """A vCPU file descriptor with its mmap()ed struct kvm_run."""

    kind = "vcpu"

    def __init__(self, vm: Vm, fd: int, mmap_size: int) -> None:
        try:
            self.run_page = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(fd)
            raise KvmError(f"{DEVICE} mmap(vcpu)", errno_text(e.errno or 0), "cannot map struct kvm_run") from e
        super().__init__(fd)
        self._pending: IoExit | MmioExit | None = None

    def get_regs(self) -> Regs:
        c = API.structs["kvm_regs"]()
        self.ioctl("KVM_GET_REGS", c)
        return _from_c(Regs, c)

    def set_regs(self, regs: Regs) -> None:
        self.ioctl("KVM_SET_REGS", _to_c(regs, "kvm_regs"))

    def get_sregs(self) -> Sregs:
        c = API.structs["kvm_sregs"]()
        self.ioctl("KVM_GET_SREGS", c)
        return _from_c(Sregs, c)

    def set_sregs(self, sregs: Sregs) -> None:
        self.ioctl("KVM_SET_SREGS", _to_c(sregs, "kvm_sregs"))

    def set_cpuid(self, entries: Sequence[CpuidEntry]) -> None:
        """KVM_SET_CPUID2: the CPUID leaves the guest sees."""
        buf = _cpuid_buffer(len(entries))
        for i, entry in enumerate(entries):
            buf.entries[i] = _to_c(entry, "kvm_cpuid_entry2")
        self.ioctl("KVM_SET_CPUID2", buf)

    def translate(self, linear_address: int) -> Translation:
        """KVM_TRANSLATE: KVM's walk of the guest page tables for ``linear_address``."""
        c = API.structs["kvm_translation"](linear_address)
        self.ioctl("KVM_TRANSLATE", c)
        return Translation(c.linear_address, c.physical_address, bool(c.valid), bool(c.writeable),
                           bool(c.usermode))

    def supply(self, data: bytes) -> None:
        """The bytes an IN or an MMIO read that just exited reads (before the next run)."""
        pending = self._pending
        if pending is None or (isinstance(pending, IoExit) and pending.out) or \
                (isinstance(pending, MmioExit) and pending.is_write):
            raise KvmError(f"{DEVICE} KVM_RUN", "supply", "only an IN or MMIO-read exit takes data")
        expected = pending.size * (pending.count if isinstance(pending, IoExit) else 1)
        if len(data) != expected:
            raise KvmError(f"{DEVICE} KVM_RUN", len(data), f"the exit reads {expected} bytes")
        if isinstance(pending, IoExit):
            io = _RUN_IO.from_buffer_copy(self.run_page, API.run_union_offset)
            off = io.data_offset
        else:
            off = API.run_union_offset + _MMIO_DATA
        self.run_page[off:off + len(data)] = data
        self._pending = None

    def run(self) -> Exit:
        """KVM_RUN until the next exit to user space, decoded."""
        self.ioctl("KVM_RUN")
        head = _RUN.from_buffer_copy(self.run_page, 0)
        reason = head.exit_reason
        exit_ = self._decode(reason)
        self._pending = exit_ if isinstance(exit_, IoExit | MmioExit) else None
        return exit_

    def _decode(self, reason: int) -> Exit:
        page, at = self.run_page, API.run_union_offset
        if reason == _EXIT["IO"]:
            io: Any = _RUN_IO.from_buffer_copy(page, at)
            n = io.size * io.count
            out = io.direction == _IO_OUT
            data = page[io.data_offset:io.data_offset + n] if out else b""
            return IoExit(out, io.size, io.port, io.count, data)
        if reason == _EXIT["MMIO"]:
            m: Any = _RUN_MMIO.from_buffer_copy(page, at)
            return MmioExit(m.phys_addr, m.len, bool(m.is_write), bytes(m.data)[:m.len] if m.is_write else b"")
        if reason == _EXIT["HLT"]:
            return HltExit()
        if reason == _EXIT["SHUTDOWN"]:
            return ShutdownExit()
        if reason == _EXIT["FAIL_ENTRY"]:
            f: Any = _RUN_FAIL.from_buffer_copy(page, at)
            return FailEntryExit(f.hardware_entry_failure_reason, f.cpu)
        if reason == _EXIT["INTERNAL_ERROR"]:
            i: Any = _RUN_INTERNAL.from_buffer_copy(page, at)
            return InternalErrorExit(i.suberror, tuple(i.data[:min(i.ndata, len(i.data))]))
        return OtherExit(reason, API.exit_name(reason))

    def close(self) -> None:
        if self.fd >= 0:
            self.run_page.close()
        super().close()

