"""The VMCB as a frozen value: names, aliases, the raw 4-KByte page, and the clean bits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx.errors import InputError
from vtx.svm.spec import CLEAN_BITS, LAYOUT, VMCB_FIELDS
from vtx.svm.vmcb import Vmcb, compute_clean_bits


@st.composite
def vmcbs(draw: st.DrawFn) -> Vmcb:
    """VMCBs with any subset of fields set to any value that fits (shrinks to the zero VMCB)."""
    chosen = draw(st.lists(st.sampled_from(list(VMCB_FIELDS)), unique=True))
    return Vmcb.from_fields({f.name: draw(st.integers(0, f.mask)) for f in chosen})


@given(vmcbs())
def test_bytes_round_trip(v: Vmcb) -> None:
    data = v.to_bytes()
    assert len(data) == LAYOUT.size
    assert Vmcb.from_bytes(data) == v


@given(vmcbs())
def test_every_field_lands_at_its_offset(v: Vmcb) -> None:
    data = v.to_bytes()
    for f in VMCB_FIELDS:
        assert int.from_bytes(data[f.offset:f.end], "little") == v.get(f)


def test_page_offsets() -> None:
    data = Vmcb.from_fields({"save.efer": 0x1D01, "control.asid": 7, "control.insn_bytes[14]": 0xCC}).to_bytes()
    assert data[0x4D0:0x4D2] == b"\x01\x1d"
    assert data[0x058] == 7
    assert data[0x0DF] == 0xCC
    assert sum(data) == 0x01 + 0x1D + 7 + 0xCC


def test_from_bytes_rejects_wrong_size() -> None:
    with pytest.raises(InputError, match="4096"):
        Vmcb.from_bytes(bytes(100))


def test_names_and_values() -> None:
    v = Vmcb.from_fields({"save.cr0": "0x80000011", "control.intercepts[4]": 1})
    assert v["save.cr0"] == 0x80000011
    assert v.get(VMCB_FIELDS["control.intercepts[4]"]) == 1
    assert v.with_fields({"save.cr0": 0})["save.cr0"] == 0
    assert v["save.cr0"] == 0x80000011  # frozen: the original is unchanged
    assert v.nonzero_fields() == {"control.intercepts[4]": 1, "save.cr0": 0x80000011}


def test_older_linux_names_are_aliases() -> None:
    v = Vmcb.from_fields({"control.intercept": 0x1_0000_0002, "control.nested_ctl": 1})
    assert v["control.intercepts[3]"] == 2
    assert v["control.intercepts[4]"] == 1
    assert v["control.misc_ctl"] == 1
    assert v["control.intercept"] == 0x1_0000_0002


@pytest.mark.parametrize(("fields", "match"), [
    ({"control.asid": 1 << 32}, "32-bit"),
    ({"control.intercept": 1 << 64}, "64-bit"),
    ({"save.cs.selector": -1}, "16-bit"),
    ({"save.nope": 1}, "not a VMCB field"),
    ({"save.efer": "zz"}, "integer or hex"),
])
def test_bad_values_rejected(fields: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        Vmcb.from_fields(fields)


def test_values_length_checked() -> None:
    with pytest.raises(InputError):
        Vmcb((0,))


def test_clean_bits() -> None:
    old = Vmcb.from_fields({"control.asid": 1, "save.cr0": 0x11})
    assert compute_clean_bits(old, old) == sum(c.mask for c in CLEAN_BITS)
    new = old.with_fields({"save.cr0": 0x80000011, "save.cs.attrib": 0x29B})
    dirty = {c.name for c in CLEAN_BITS if not compute_clean_bits(old, new) & c.mask}
    assert dirty == {"CR", "SEG"}
    assert not compute_clean_bits(old, new) & ~sum(c.mask for c in CLEAN_BITS)


@given(vmcbs(), vmcbs())
def test_clean_bit_set_iff_its_fields_unchanged(a: Vmcb, b: Vmcb) -> None:
    clean = compute_clean_bits(a, b)
    for c in CLEAN_BITS:
        assert bool(clean & c.mask) == all(a.get(f) == b.get(f) for f in c.fields)
