"""Exit-information layouts: encode / decode round-trips for every format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx.errors import InputError
from vtx.vmx.exits.layouts import LAYOUTS


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@given(data=st.data())
def test_round_trip(name: str, data: st.DataObject) -> None:
    layout = LAYOUTS[name]
    values = {f: data.draw(st.integers(0, (1 << b.width) - 1), label=f) for f, b in layout.fields.items()}
    raw = layout.encode(**values)
    assert layout.decode(raw) == values
    assert raw & ~layout.defined_mask == 0


@given(raw=st.integers(0, 2**64 - 1))
def test_decode_encode_keeps_defined_bits(raw: int) -> None:
    for layout in LAYOUTS.values():
        assert layout.encode(**layout.decode(raw)) == raw & layout.defined_mask


def test_bad_field_and_value_are_input_errors() -> None:
    with pytest.raises(InputError):
        LAYOUTS["cr_access"].encode(cr_number=16)
    with pytest.raises(InputError):
        LAYOUTS["cr_access"].encode(nonsense=1)
    with pytest.raises(InputError):
        LAYOUTS["cr_access"].encode(access_type="mov_sideways")
