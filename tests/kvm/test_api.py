"""The KVM API table, the encoder and the boot image, without /dev/kvm."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from vtx.errors import InputError, SpecError
from vtx.kvm import boot
from vtx.kvm.api import API, Ioctl, _struct
from vtx.kvm.device import Kvm, backend
from vtx.kvm.encode import Hlt, In, Jmp, Load, Loop, MovImm, Out, Store, encode
from vtx.kvm.errors import KvmUnavailable
from vtx.paging.guest import Access, AccessKind, PagingFeatures, translate
from vtx.paging.outcomes import Translated


@pytest.mark.parametrize("ioctl", list(API.ioctls), ids=lambda i: i.name)
def test_ioctl_number_decodes_to_its_row(ioctl: Ioctl) -> None:
    """Every request number decodes (asm-generic/ioctl.h) to KVMIO, the row's nr and its struct's size."""
    number = ioctl.number
    assert API.ioc["type"].get(number) == API.constants["KVMIO"]
    assert API.ioc["nr"].get(number) == ioctl.nr
    size = 0 if ioctl.struct is None else ctypes.sizeof(API.structs[ioctl.struct])
    assert API.ioc["size"].get(number) == size
    assert (API.ioc["dir"].get(number) == 0) == (ioctl.direction == "none")


# Bytes from the SDM Vol. 2 opcode tables (IN, OUT, MOV, HLT, JMP, LOOP) and the REX / ModR/M / SIB rules.
ENCODED = [
    (Out(1, 0x10), "e610"), (Out(2, None), "66ef"), (Out(4, 0x80), "e780"),
    (In(1, 0x20), "e420"), (In(4, None), "ed"),
    (Store(8, "rax", 0x200000), "4889042500002000"), (Store(1, "rsi", 0x10), "4088342510000000"),
    (Store(1, "rcx", 0x10), "880c2510000000"), (Store(2, "r9", 0x10), "6644890c2510000000"),
    (Load(4, "r15", 0x10), "448b3c2510000000"), (MovImm("r10", 0x1122334455667788), "49ba8877665544332211"),
    (Hlt(), "f4"), (Jmp(-2), "ebfe"), (Loop(-4), "e2fc"),
]


@pytest.mark.parametrize(("ins", "hexbytes"), ENCODED, ids=[str(e[0]) for e in ENCODED])
def test_encode_accepts(ins: object, hexbytes: str) -> None:
    assert encode(ins).hex() == hexbytes  # type: ignore[arg-type]


@pytest.mark.parametrize("ins", [Out(8, 0x10), In(3, None), Out(1, 0x100), Store(8, "rax", 1 << 31),
                                 Load(8, "eax", 0), MovImm("rax", 1 << 64), Jmp(128)], ids=str)
def test_encode_rejects(ins: object) -> None:
    with pytest.raises(InputError):
        encode(ins)  # type: ignore[arg-type]


def test_boot_descriptors_decode_to_the_segments() -> None:
    code = boot.segment(8, boot.CODE)
    assert (code.l, code.db, code.s, code.present, code.limit) == (1, 0, 1, 1, 0xFFFFFFFF)
    tss = boot.segment(0x18, boot.TSS)
    assert (tss.s, tss.limit, tss.g) == (0, boot.LAYOUT["tss_bytes"] - 1, 0)


def test_boot_tables_identity_map_per_vtx_paging() -> None:
    image = boot.boot_image(bytes([0xF4]))
    features = PagingFeatures(maxphyaddr=36, gb_pages=False)
    for gla in (0, image.entry, boot.LAYOUT["identity_bytes"] - 1):
        got = translate(image.paging_state(), features, image.memory, gla, Access(AccessKind.WRITE))
        assert isinstance(got, Translated) and got.gpa == gla
    beyond = translate(image.paging_state(), features, image.memory, boot.LAYOUT["identity_bytes"],
                       Access(AccessKind.READ))
    assert not isinstance(beyond, Translated)


def test_missing_device_is_kvm_unavailable(tmp_path: Path) -> None:
    with pytest.raises(KvmUnavailable, match="ENOENT"):
        Kvm(str(tmp_path / "kvm"))


def test_backend_reads_sys_module_then_proc_modules(tmp_path: Path) -> None:
    (tmp_path / "mod" / "kvm_amd").mkdir(parents=True)
    assert backend(tmp_path / "mod", tmp_path / "none") == "kvm_amd"
    (tmp_path / "modules").write_text("kvm_intel 1 0 - Live 0x0\nkvm 1 1 kvm_intel, Live 0x0\n")
    assert backend(tmp_path / "empty", tmp_path / "modules") == "kvm_intel"
    assert backend(tmp_path / "empty", tmp_path / "none") == "none"


def test_struct_layout_accepts_c_offsets_and_rejects_others() -> None:

    ok = {"name": "pair", "size": 16, "field": [{"name": "a", "offset": 0, "type": "u32"},
                                                {"name": "b", "offset": 8, "type": "u64"}]}
    assert ctypes.sizeof(_struct(ok, {})) == 16
    bad_offset = {**ok, "field": [{"name": "a", "offset": 0, "type": "u32"}, {"name": "b", "offset": 4, "type": "u64"}]}
    with pytest.raises(SpecError, match="offset 8"):
        _struct(bad_offset, {})
    with pytest.raises(SpecError, match="size 16"):
        _struct({**ok, "size": 12}, {})
