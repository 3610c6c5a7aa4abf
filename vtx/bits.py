"""Bit ranges, masks and address-width arithmetic shared by every model."""

from __future__ import annotations

import attrs

from vtx.typecheck import checked


def mask(width: int) -> int:
    """The mask of the ``width`` low-order bits."""
    return (1 << width) - 1


@attrs.frozen
class BitRange:
    """Bits ``lo`` to ``hi`` inclusive of a register or field (SDM notation ``hi:lo``)."""

    lo: int
    hi: int

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def mask(self) -> int:
        """The mask of the range in place."""
        return mask(self.width) << self.lo

    def get(self, value: int) -> int:
        """The range's value, shifted down to bit 0."""
        return (value >> self.lo) & mask(self.width)

    def put(self, value: int, field: int) -> int:
        """``value`` with the range replaced by ``field`` (which must fit)."""
        return (value & ~self.mask) | ((field << self.lo) & self.mask)

    def __str__(self) -> str:
        return f"{self.hi}:{self.lo}" if self.hi != self.lo else str(self.lo)


@checked
def bit(n: int) -> int:
    """The mask of bit ``n``."""
    return 1 << n


def is_canonical(address: int, linear_width: int = 48) -> bool:
    """True if bits 63:``linear_width``-1 of a 64-bit address are all equal.

    SDM Vol. 1 §3.3.7.1 "Canonical Addressing": with 48-bit linear addresses bits 63:47 are
    copies of bit 47; with 5-level paging (LA57) bits 63:56 are copies of bit 56.
    """
    top = address >> (linear_width - 1)
    return top in (0, mask(64 - linear_width + 1))


def fits_physical_width(address: int, maxphyaddr: int) -> bool:
    """True if ``address`` sets no bit at or above the physical-address width."""
    return address >> maxphyaddr == 0


def parse_int(text: object) -> int:
    """An int from an int or a decimal / ``0x`` hex string (any case); ValueError otherwise."""
    if isinstance(text, bool):
        raise ValueError("a boolean is not an integer")
    if isinstance(text, int):
        return text
    if isinstance(text, str):
        s = text.strip().lower().replace("_", "")
        if s.startswith("0x"):
            return int(s[2:], 16)
        if s.endswith("h") and s[:-1]:
            return int(s[:-1], 16)
        return int(s, 10)
    raise ValueError(f"expected an integer or a hex string, got {type(text).__name__}")
