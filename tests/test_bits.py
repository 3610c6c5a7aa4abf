import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx.bits import BitRange, fits_physical_width, is_canonical, mask, parse_int


def test_bitrange_get_put_roundtrip_on_sdm_style_ranges() -> None:
    r = BitRange(13, 14)  # the width bits of a VMCS encoding
    assert r.mask == 0x6000
    assert r.get(0x6800) == 3
    assert r.put(0x0800, 3) == 0x6800
    assert str(r) == "14:13"
    assert str(BitRange(5, 5)) == "5"


@given(st.integers(0, 63), st.integers(0, 63), st.integers(0, mask(64)), st.integers(0, mask(64)))
def test_bitrange_put_changes_only_the_range(a: int, b: int, value: int, field: int) -> None:
    r = BitRange(min(a, b), max(a, b))
    out = r.put(value, field)
    assert r.get(out) == field & mask(r.width)
    assert out & ~r.mask == value & ~r.mask


@pytest.mark.parametrize(("address", "width", "expected"), [
    (0x0000_7FFF_FFFF_FFFF, 48, True),
    (0xFFFF_8000_0000_0000, 48, True),
    (0x0000_8000_0000_0000, 48, False),
    (0xFFFF_7FFF_FFFF_FFFF, 48, False),
    (0x00FF_FFFF_FFFF_FFFF, 57, True),
    (0x0100_0000_0000_0000, 57, False),
    (0xFF00_0000_0000_0000, 57, True),
])
def test_is_canonical(address: int, width: int, expected: bool) -> None:
    assert is_canonical(address, width) is expected


def test_fits_physical_width() -> None:
    assert fits_physical_width((1 << 46) - 1, 46)
    assert not fits_physical_width(1 << 46, 46)


@pytest.mark.parametrize(("text", "value"), [("0x1F", 31), ("0x1f", 31), (" 10 ", 10), (7, 7), ("1fh", 31),
                                             ("0x_ff", 255)])
def test_parse_int_accepts_ints_and_hex_strings(text: object, value: int) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize("text", ["0xZZ", "", "ten", 1.5, None, True])
def test_parse_int_rejects_malformed(text: object) -> None:
    with pytest.raises(ValueError):
        parse_int(text)
