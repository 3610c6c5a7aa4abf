"""The virtual-machine control structure (VMCS) as a frozen value, and VMREAD / VMWRITE.

A VMCS region (SDM Vol. 3C §26.2 "Format of the VMCS Region") holds a revision identifier,
the shadow-VMCS indicator, the VMX-abort indicator and the VMCS data; the processor also keeps
a launch state (clear or launched) for it. Field values are stored grouped by the (width, type)
of their encodings and indexed by the encoding's index, so that a write copies one small group.

VMREAD and VMWRITE (SDM Vol. 3C §32.3 "VMX Instructions") access a field by its 32-bit encoding: a 64-bit field
also by its high access (encoding + 1, bits 63:32); fields narrower than the operand are
zero-extended on read and truncated on write; a 64-bit field written with a 32-bit operand has
its upper half cleared.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from vtx.bits import mask, parse_int
from vtx.errors import InputError, NotEvaluable
from vtx.inputs import shown
from vtx.outcomes import VmFailValid, VmSucceed
from vtx.spec import ENCODING, REGION, VMCS_FIELDS, VmcsField, get_error
from vtx.typecheck import argument_error, checked
from vtx.vmx.capabilities import Capabilities


def _slots() -> tuple[dict[int, tuple[int, int]], tuple[tuple[int, ...], ...]]:
    """Where each field lives: one group per (width, type) of the encoding, indexed by the
    field's index, so that a write copies one small group instead of the whole VMCS."""
    groups = sorted({(f.width.value, f.type.value) for f in VMCS_FIELDS})
    number = {g: n for n, g in enumerate(groups)}
    sizes = [0] * len(groups)
    slots = {}
    for f in VMCS_FIELDS:
        g = number[(f.width.value, f.type.value)]
        slots[f.encoding] = (g, f.index)
        sizes[g] = max(sizes[g], f.index + 1)
    return slots, tuple((0,) * n for n in sizes)


_SLOT, _ZEROS = _slots()
_FIELD_MASK = {f.encoding: mask(f.bits) for f in VMCS_FIELDS}
"""The bits of each field, by encoding (precomputed for the write paths)."""
_HIGH_SHIFT = 32
_ERR_UNSUPPORTED = get_error("UNSUPPORTED_VMCS_COMPONENT")
_ERR_READ_ONLY = get_error("VMWRITE_READ_ONLY_VMCS_COMPONENT")
_ENCODING_MASK = mask(ENCODING.operand_bits)


FieldValues = Mapping[str, object] | Mapping[int, object] | Mapping[str | int, object]
"""Field values by Linux name, encoding, or encoding string."""


class LaunchState(enum.Enum):
    """The launch state of a VMCS (SDM Vol. 3C §26.1 "Overview"): VMCLEAR makes it clear,
    a successful VMLAUNCH makes it launched."""

    CLEAR = "clear"
    LAUNCHED = "launched"


def _check_revision(value: int) -> int:
    if not 0 <= value <= REGION.revision_id.mask:
        raise InputError("revision_id", hex(value), f"a VMCS revision identifier has bits {REGION.revision_id}")
    return value


def _check_abort(value: int) -> int:
    if not 0 <= value <= mask(32):
        raise InputError("abort_indicator", hex(value), "the VMX-abort indicator is 32 bits (bytes 4-7)")
    return value


@attrs.frozen
class Vmcs:
    """A VMCS: region header, launch state and the value of every field (0 if never written)."""

    revision_id: int = attrs.field(default=0, converter=_check_revision)
    shadow: bool = False
    abort_indicator: int = attrs.field(default=0, converter=_check_abort)
    launch_state: LaunchState = LaunchState.CLEAR
    values: tuple[tuple[int, ...], ...] = attrs.field(default=_ZEROS, repr=False)

    @classmethod
    def from_fields(cls, fields: FieldValues, **header: object) -> Vmcs:
        """A VMCS holding ``fields`` (by Linux name, encoding, or ``"0x6800"``; values as ints or
        hex strings). A value wider than its field is bad input, not truncated."""
        return cls(**header).with_fields(fields)  # type: ignore[arg-type]

    def get(self, field: VmcsField) -> int:
        """The full value of ``field``."""
        try:
            g, i = _SLOT[field.encoding]
        except AttributeError:  # the check costs nothing until it fails: this is the hottest read of vtx
            raise argument_error("Vmcs.get", "field", field, "VmcsField") from None
        return self.values[g][i]

    def __getitem__(self, ref: str | int) -> int:
        return self.get(_field_of(ref))

    def set(self, field: VmcsField, value: int) -> Vmcs:
        """A copy with ``field`` set to ``value``, which must fit the field."""
        try:
            if value.__class__ is int and 0 <= value <= _FIELD_MASK[field.encoding]:  # fast path: a fitting int
                return self._replace(field, value)
        except AttributeError:
            raise argument_error("Vmcs.set", "field", field, "VmcsField") from None
        return self._replace(field, _fit(field, value))

    def _replace(self, field: VmcsField, value: int) -> Vmcs:
        """A copy with ``field`` set to ``value`` (already known to fit): only the field's group is copied."""
        g, i = _SLOT[field.encoding]
        return self._replace_slot(g, i, value)

    def _replace_slot(self, g: int, i: int, value: int) -> Vmcs:
        """A copy with the field at ``values[g][i]`` set to ``value`` (known to fit). The copy is made
        without ``__init__`` (whose converters the unchanged header has passed), through the slots."""
        group = list(self.values[g])
        group[i] = value
        values = list(self.values)
        values[g] = tuple(group)
        new = _new_vmcs(Vmcs)
        _set_revision_id(new, self.revision_id)
        _set_shadow(new, self.shadow)
        _set_abort_indicator(new, self.abort_indicator)
        _set_launch_state(new, self.launch_state)
        _set_values(new, tuple(values))
        return new

    @checked
    def with_fields(self, fields: FieldValues) -> Vmcs:
        """A copy with several fields set (same input rules as :meth:`from_fields`)."""
        vmcs = self
        for ref, raw in fields.items():
            field = _field_of(ref)
            vmcs = vmcs.set(field, raw) if type(raw) is int else vmcs._replace(field, _fit(field, raw))
        return vmcs

    def nonzero_fields(self) -> dict[str, int]:
        """Every field with a non-zero value, by name, in encoding order."""
        return {f.name: v for f in VMCS_FIELDS if (v := self.get(f))}


_new_vmcs = object.__new__
# The slot descriptors' setters: what object.__setattr__ calls, without its look-up (a frozen class's own
# __setattr__ refuses every write).
_set_revision_id, _set_shadow, _set_abort_indicator, _set_launch_state, _set_values = (
    Vmcs.__dict__[name].__set__ for name in ("revision_id", "shadow", "abort_indicator", "launch_state", "values"))
if tuple(a.name for a in attrs.fields(Vmcs)) != ("revision_id", "shadow", "abort_indicator", "launch_state", "values"):
    raise AssertionError("Vmcs._replace_slot copies the header attributes by name: keep it in step with the class")


_BY_NAME = {f.name: f for f in VMCS_FIELDS}


def _field_of(ref: str | int) -> VmcsField:
    """``VMCS_FIELDS.field(ref)``, with a field's exact Linux name looked up first (the common case)."""
    field = _BY_NAME.get(ref) if ref.__class__ is str else None
    return VMCS_FIELDS.field(ref) if field is None else field


def slot(field: VmcsField) -> tuple[int, int]:
    """Where ``field`` lives in :attr:`Vmcs.values`: (group, index). For precomputed fast paths
    that read many fields of one VMCS (``vmcs.values[g][i] == vmcs.get(field)``)."""
    return _SLOT[field.encoding]


def _fit(field: VmcsField, raw: object) -> int:
    try:
        value = parse_int(raw)
    except ValueError as e:
        raise InputError(str(field), shown(raw), f"a field value is an integer or hex string ({e})") from e
    if not 0 <= value <= mask(field.bits):
        raise InputError(str(field), hex(value) if value >= 0 else str(value),
                         f"wider than the {field.width.value}-bit field (SDM {ENCODING.citation})")
    return value


# ----------------------------------------------------------------------------- VMREAD / VMWRITE


def _lookup(caps: Capabilities, encoding: int, operand_bits: int) -> tuple[VmcsField, bool] | None:
    """The field an encoding operand selects, or None if it names no supported component."""
    if operand_bits not in (32, 64):
        raise InputError("operand_bits", operand_bits, "VMREAD/VMWRITE operands are 32 or 64 bits")
    if encoding >> ENCODING.operand_bits and operand_bits == 64:
        return None
    hit = VMCS_FIELDS.by_encoding(encoding & mask(ENCODING.operand_bits))
    if hit is None:
        return None
    supported = caps.field_exists(hit[0])
    if supported is None:
        raise _support_unknown(hit[0])
    return hit if supported else None


def _support_unknown(field: VmcsField) -> NotEvaluable:
    return NotEvaluable(str(field), f"exists if {field.exists}", "the capability profile cannot say "
                        "whether this processor supports the field")


@attrs.frozen
class _Access:
    """What VMREAD / VMWRITE need to know about one encoding, computed once: the field, whether the
    encoding is its high access, where the field lives in :attr:`Vmcs.values` and its bits."""

    field: VmcsField
    high: bool
    group: int
    index: int
    field_mask: int
    read_only: bool


def _accesses() -> dict[int, _Access]:
    """Every encoding :meth:`~vtx.spec.FieldCatalogue.by_encoding` resolves (full and high accesses)."""
    table = {}
    for f in VMCS_FIELDS:
        for encoding in (f.encoding, f.high_encoding):
            hit = None if encoding is None else VMCS_FIELDS.by_encoding(encoding)
            if encoding is not None and hit is not None:
                g, i = _SLOT[f.encoding]
                table[encoding] = _Access(hit[0], hit[1], g, i, mask(f.bits), f.is_read_only)
    return table


_ACCESS = _accesses()
_OPERAND_MASK = {32: mask(32), 64: mask(64)}
_LOW_HALF = mask(_HIGH_SHIFT)
_SUCCEED = VmSucceed()


def _access(caps: Capabilities, encoding: int, operand_bits: int) -> _Access | None:
    """:func:`_lookup` from the precomputed table (same answers, same errors; tested against it)."""
    if operand_bits not in _OPERAND_MASK:
        raise InputError("operand_bits", operand_bits, "VMREAD/VMWRITE operands are 32 or 64 bits")
    if operand_bits == 64 and encoding >> ENCODING.operand_bits:
        return None
    access = _ACCESS.get(encoding & _ENCODING_MASK)
    if access is None:
        return None
    supported = caps.field_exists(access.field)
    if supported is None:
        raise _support_unknown(access.field)
    return access if supported else None


@checked
def vmread(vmcs: Vmcs, caps: Capabilities, encoding: int, *, operand_bits: int = 64) -> VmSucceed | VmFailValid:
    """VMREAD from the current VMCS: the field's value zero-extended (or truncated) to the
    operand size, or VMfailValid(12) if the encoding names no supported VMCS component."""
    access = _access(caps, encoding, operand_bits)
    if access is None:
        return VmFailValid(_ERR_UNSUPPORTED)
    value = vmcs.values[access.group][access.index]
    if access.high:
        value >>= _HIGH_SHIFT
    return VmSucceed(value & _OPERAND_MASK[operand_bits])


@checked
def vmwrite(vmcs: Vmcs, caps: Capabilities, encoding: int, value: int, *,
            operand_bits: int = 64) -> tuple[Vmcs, VmSucceed | VmFailValid]:
    """VMWRITE to the current VMCS.

    Fails with error 12 for an unsupported component, and with error 13 for a read-only
    (VM-exit information) field unless IA32_VMX_MISC[29] allows writing every field. The source
    is truncated to the field; a full write with an operand narrower than the field clears the
    field's upper bits; a high write replaces bits 63:32 only.
    """
    access = _access(caps, encoding, operand_bits)
    if access is None:
        return vmcs, VmFailValid(_ERR_UNSUPPORTED)
    field = access.field
    if access.read_only:
        any_field = caps.msr_field("IA32_VMX_MISC", "vmwrite_any_field")
        if any_field is None:
            raise NotEvaluable(str(field), "read-only", "IA32_VMX_MISC is unknown, so whether "
                               "VMWRITE may write VM-exit information fields (bit 29) is too")
        if not any_field:
            return vmcs, VmFailValid(_ERR_READ_ONLY)
    source = value & _OPERAND_MASK[operand_bits]
    if access.high:
        low = vmcs.get(field) & _LOW_HALF
        new = (source & _LOW_HALF) << _HIGH_SHIFT | low
    else:
        new = source & access.field_mask
    return vmcs._replace_slot(access.group, access.index, new), _SUCCEED
