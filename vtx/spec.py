"""The architecture facts of ``spec/``, loaded once into typed, frozen catalogues.

Every table row becomes a frozen record with its :class:`~vtx.citation.Citation`; the loader
cross-checks the tables (an encoding agrees with its width, type and index; names and numbers
are unique; every citation and every control a condition names exists) and raises
:class:`~vtx.errors.SpecError` naming the file, row and rule when they do not.

Public catalogues: :data:`VMCS_FIELDS`, :data:`EXIT_REASONS`, :data:`VM_INSTRUCTION_ERRORS`,
:data:`CONTROL_FIELDS`, :data:`CONTROLS`, :data:`CAPABILITY_MSRS`, :data:`CPUID_FACTS`,
:data:`VM_FUNCTIONS`, and the layouts :data:`ENCODING` and :data:`REGION`.
"""

from __future__ import annotations

import enum
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs

from vtx.bits import BitRange, parse_int
from vtx.citation import Citation, Document
from vtx.conditions import (
    Condition,
    ControlAllowed,
    MsrBitfield,
    ProcessorFact,
    VmFunctionAllowed,
    parse_condition,
)
from vtx.errors import InputError, SpecError
from vtx.typecheck import checked

SPEC_DIR = Path(os.environ.get("VTX_SPEC_DIR", Path(__file__).resolve().parent.parent / "spec"))
"""Where the tables live: ``spec/`` beside the package (override with ``VTX_SPEC_DIR``)."""

R = TypeVar("R")
K = TypeVar("K")


class Catalogue(Generic[K, R]):
    """An ordered, immutable collection of records, indexed by a primary key."""

    __slots__ = ("_by_key", "_records")

    def __init__(self, records: list[R], key: Callable[[R], K], what: str) -> None:
        self._records: tuple[R, ...] = tuple(records)
        by_key: dict[K, R] = {}
        for r in records:
            k = key(r)
            if k in by_key:
                raise SpecError(what, k, "duplicate key")
            by_key[k] = r
        self._by_key = by_key

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[R]:
        return iter(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __getitem__(self, key: K) -> R:
        return self._by_key[key]

    def get(self, key: K) -> R | None:
        return self._by_key.get(key)

    def keys(self) -> Iterator[K]:
        return iter(self._by_key)


# --------------------------------------------------------------------------- loading helpers


def _load(relpath: str) -> dict[str, Any]:
    path = SPEC_DIR / relpath
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise SpecError(str(path), "missing", "every spec table must exist") from e
    except tomllib.TOMLDecodeError as e:
        raise SpecError(str(path), e, "not valid TOML") from e


def _documents() -> dict[str, Document]:
    data = _load("sources.toml")
    return {
        key: Document(key, d["title"], d["number"], d["date"], d.get("note", ""))
        for key, d in data["documents"].items()
    }


DOCUMENTS: Mapping[str, Document] = _documents()
SDM = DOCUMENTS["sdm"]
"""The pinned SDM edition that every ``doc = "sdm"`` citation refers to."""


class _Table:
    """One TOML table: its rows, its citations and precise error locations."""

    def __init__(self, relpath: str) -> None:
        self.relpath = relpath
        self.data = _load(relpath)
        self.citations: dict[str, Citation] = {}
        for key, c in self.data.get("citations", {}).items():
            doc = DOCUMENTS.get(c.get("doc", ""))
            if doc is None:
                raise SpecError(f"{relpath} [citations] {key}", c.get("doc"), "unknown document")
            self.citations[key] = Citation(doc, str(c.get("section", "")), c["title"],
                                           str(c.get("volume", "")))

    def rows(self, kind: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.data.get(kind, [])
        return rows

    def where(self, kind: str, row: Mapping[str, Any]) -> str:
        ident = row.get("name", row.get("number", row.get("bit", "?")))
        return f"{self.relpath} [[{kind}]] {ident}"

    def cite(self, kind: str, row: Mapping[str, Any]) -> Citation:
        key = row.get("cite")
        if key not in self.citations:
            raise SpecError(self.where(kind, row), key, "cite must name a [citations] key")
        return self.citations[str(key)]

    def source(self, kind: str, row: Mapping[str, Any]) -> Document:
        key = row.get("source", "sdm")
        if key not in DOCUMENTS:
            raise SpecError(self.where(kind, row), key, "source must name a document")
        return DOCUMENTS[key]


def _bits(value: Any, where: str) -> BitRange:
    if isinstance(value, int):
        return BitRange(value, value)
    lo, hi = value
    if not 0 <= lo <= hi:
        raise SpecError(where, value, "bits must be [lo, hi] with 0 <= lo <= hi")
    return BitRange(lo, hi)


# --------------------------------------------------------------------------- VMCS layout


class FieldWidth(enum.Enum):
    """The width of a VMCS field, by the value of encoding bits 14:13."""

    W16 = "16"
    W64 = "64"
    W32 = "32"
    NATURAL = "natural"

    @property
    def bits(self) -> int:
        """Width in bits; natural width is 64 bits on processors supporting Intel 64."""
        return {"16": 16, "32": 32, "64": 64, "natural": 64}[self.value]


class FieldType(enum.Enum):
    """The type of a VMCS field, by the value of encoding bits 11:10."""

    CONTROL = "control"
    EXIT_INFO = "exit_info"
    GUEST = "guest"
    HOST = "host"


@attrs.frozen
class EncodingLayout:
    """The structure of a 32-bit VMCS component encoding."""

    operand_bits: int
    access_type: BitRange
    index: BitRange
    type: BitRange
    reserved_low: BitRange
    width: BitRange
    reserved_high: BitRange
    width_codes: Mapping[FieldWidth, int]
    type_codes: Mapping[FieldType, int]
    citation: Citation

    @property
    def reserved_mask(self) -> int:
        return self.reserved_low.mask | self.reserved_high.mask

    @checked
    def compose(self, width: FieldWidth, type_: FieldType, index: int, high: bool = False) -> int:
        """The encoding of the field with this width, type and index."""
        enc = self.width.put(0, self.width_codes[width])
        enc = self.type.put(enc, self.type_codes[type_])
        enc = self.index.put(enc, index)
        return self.access_type.put(enc, int(high))

    @checked
    def decode_width(self, encoding: int) -> FieldWidth:
        code = self.width.get(encoding)
        return next(w for w, c in self.width_codes.items() if c == code)

    @checked
    def decode_type(self, encoding: int) -> FieldType:
        code = self.type.get(encoding)
        return next(t for t, c in self.type_codes.items() if c == code)


@attrs.frozen
class RegionLayout:
    """The architecturally defined first 8 bytes of a VMCS (or VMXON) region."""

    revision_id: BitRange
    shadow_indicator: BitRange
    abort_offset: int
    data_offset: int
    citation: Citation


def _load_layouts() -> tuple[EncodingLayout, RegionLayout, Mapping[str, Citation]]:
    t = _Table("vmx/vmcs.toml")
    e, r = t.data["encoding"], t.data["region"]
    enc = EncodingLayout(
        operand_bits=e["operand_bits"],
        access_type=_bits(e["access_type"], "encoding.access_type"),
        index=_bits(e["index"], "encoding.index"),
        type=_bits(e["type"], "encoding.type"),
        reserved_low=_bits(e["reserved_low"], "encoding.reserved_low"),
        width=_bits(e["width"], "encoding.width"),
        reserved_high=_bits(e["reserved_high"], "encoding.reserved_high"),
        width_codes={FieldWidth(k): v for k, v in e["widths"].items()},
        type_codes={FieldType(k): v for k, v in e["types"].items()},
        citation=t.citations[e["cite"]],
    )
    region = RegionLayout(
        revision_id=_bits(r["revision_id"], "region.revision_id"),
        shadow_indicator=_bits(r["shadow_indicator"], "region.shadow_indicator"),
        abort_offset=r["abort_offset"],
        data_offset=r["data_offset"],
        citation=t.citations[r["cite"]],
    )
    covered = [enc.access_type, enc.index, enc.type, enc.reserved_low, enc.width, enc.reserved_high]
    if sum(b.mask for b in covered) != (1 << enc.operand_bits) - 1:
        raise SpecError("vmx/vmcs.toml [encoding]", covered, "ranges must tile the 32-bit encoding")
    return enc, region, t.citations


ENCODING, REGION, VMCS_CITATIONS = _load_layouts()


# --------------------------------------------------------------------------- VMCS fields


@attrs.frozen
class VmcsField:
    """One VMCS field (one full-width encoding; the high access of a 64-bit field is derived)."""

    name: str
    encoding: int
    width: FieldWidth
    type: FieldType
    title: str
    exists: Condition
    citation: Citation
    source: Document

    @property
    def index(self) -> int:
        return ENCODING.index.get(self.encoding)

    @property
    def bits(self) -> int:
        """Width in bits (natural width is 64)."""
        return self.width.bits

    @property
    def high_encoding(self) -> int | None:
        """The encoding of the high access type (upper 32 bits), for 64-bit fields only."""
        if self.width is FieldWidth.W64:
            return ENCODING.access_type.put(self.encoding, 1)
        return None

    @property
    def is_read_only(self) -> bool:
        """VM-exit information fields are read-only data (VMWRITE fails unless MISC[29])."""
        return self.type is FieldType.EXIT_INFO

    def __str__(self) -> str:
        return f"{self.name} ({self.encoding:#06x})"


@checked
class FieldCatalogue(Catalogue[str, VmcsField]):
    """Every VMCS field, by name; also by encoding and by ``_HIGH`` access."""

    __slots__ = ("_by_encoding",)

    def __init__(self, records: list[VmcsField]) -> None:
        super().__init__(records, lambda f: f.name, "vmx/fields.toml name")
        self._by_encoding: dict[int, tuple[VmcsField, bool]] = {}
        for f in records:
            if f.encoding in self._by_encoding:
                raise SpecError("vmx/fields.toml", f"{f.encoding:#x}", "duplicate encoding")
            self._by_encoding[f.encoding] = (f, False)
            if f.high_encoding is not None:
                self._by_encoding[f.high_encoding] = (f, True)

    def by_encoding(self, encoding: int) -> tuple[VmcsField, bool] | None:
        """The field an encoding names and whether it is the high access; None if undefined."""
        return self._by_encoding.get(encoding)

    @checked
    def resolve(self, ref: str | int) -> tuple[VmcsField, bool]:
        """The field named by a Linux-style name (``GUEST_CR0``, ``EPT_POINTER_HIGH``), an
        encoding (int) or an encoding written as a string (``"0x6800"``).

        Raises :class:`InputError` naming the reference when no field matches.
        """
        if isinstance(ref, int):
            hit = self.by_encoding(ref)
            if hit is None:
                raise InputError("VMCS field", f"{ref:#x}", "no VMCS field has this encoding")
            return hit
        name = ref.strip()
        if name.upper().startswith("0X"):
            try:
                return self.resolve(parse_int(name))
            except ValueError as e:
                raise InputError("VMCS field", repr(ref), "not a valid hex encoding") from e
        f = self.get(name.upper())
        if f is not None:
            return f, False
        if name.upper().endswith("_HIGH"):
            f = self.get(name.upper()[: -len("_HIGH")])
            if f is not None and f.high_encoding is not None:
                return f, True
        raise InputError("VMCS field", repr(ref), "no VMCS field has this name (names follow Linux's enum vmcs_field)")

    @checked
    def field(self, ref: str | int) -> VmcsField:
        """The field ``ref`` names (full access only); InputError otherwise."""
        f, high = self.resolve(ref)
        if high:
            raise InputError("VMCS field", repr(ref), "names the high access of a 64-bit field, not a field")
        return f


def _load_fields() -> FieldCatalogue:
    t = _Table("vmx/fields.toml")
    records = []
    for row in t.rows("field"):
        where = t.where("field", row)
        enc = row["encoding"]
        width, type_ = FieldWidth(str(row["width"])), FieldType(row["type"])
        if enc & ENCODING.reserved_mask or ENCODING.access_type.get(enc):
            raise SpecError(where, f"{enc:#x}", "reserved bits and the access-type bit must be 0")
        if ENCODING.compose(width, type_, ENCODING.index.get(enc)) != enc:
            raise SpecError(where, f"{enc:#x}", f"encoding disagrees with width {width.value} / type {type_.value}")
        records.append(VmcsField(
            name=row["name"], encoding=enc, width=width, type=type_, title=row["title"],
            exists=parse_condition(row["exists"], where),
            citation=t.cite("field", row), source=t.source("field", row),
        ))
    return FieldCatalogue(records)


VMCS_FIELDS = _load_fields()
"""Every VMCS field of the pinned SDM edition and of the feature specifications it lacks."""


# --------------------------------------------------------------------------- exit reasons, errors


@attrs.frozen
class ExitReason:
    """A basic VM-exit reason (SDM Vol. 3D Appendix C)."""

    number: int
    name: str
    title: str
    description: str
    entry_failure: bool
    citation: Citation
    source: Document


@attrs.frozen
class ExitReasonBit:
    """A bit field of the 32-bit exit-reason field."""

    name: str
    bits: BitRange
    title: str
    citation: Citation


@attrs.frozen
class VmInstructionError:
    """A VM-instruction error number (stored in the VM-instruction error field on VMfailValid)."""

    number: int
    name: str
    message: str
    instructions: tuple[str, ...]
    citation: Citation


def _load_exit_reasons() -> tuple[Catalogue[int, ExitReason], Catalogue[str, ExitReasonBit]]:
    t = _Table("vmx/exit_reasons.toml")
    fmt = Catalogue([
        ExitReasonBit(r["name"], _bits(r["bits"], t.where("exit_reason_bit", r)), r["title"],
                      t.cite("exit_reason_bit", r))
        for r in t.rows("exit_reason_bit")
    ], lambda b: b.name, "exit_reason_bit")
    basic = fmt.get("basic_exit_reason")
    if basic is None:
        raise SpecError(t.relpath, "exit_reason_bit", "must define basic_exit_reason")
    records = []
    for r in t.rows("exit_reason"):
        if not 0 <= r["number"] <= basic.bits.mask:
            raise SpecError(t.where("exit_reason", r), r["number"], "outside the basic-exit-reason bits")
        records.append(ExitReason(r["number"], r["name"], r["title"], r.get("description", ""),
                                  bool(r.get("entry_failure", False)), t.cite("exit_reason", r),
                                  t.source("exit_reason", r)))
    cat = Catalogue(records, lambda x: x.number, "exit_reason number")
    Catalogue(records, lambda x: x.name, "exit_reason name")
    return cat, fmt


EXIT_REASONS, EXIT_REASON_FORMAT = _load_exit_reasons()
"""Every defined basic exit reason (reserved numbers excluded), by number."""


def _load_errors() -> Catalogue[int, VmInstructionError]:
    t = _Table("vmx/errors.toml")
    records = []
    for r in t.rows("error"):
        if r["number"] <= 0:
            raise SpecError(t.where("error", r), r["number"], "0 means no error; numbers start at 1")
        records.append(VmInstructionError(r["number"], r["name"], r["message"],
                                          tuple(r.get("instructions", [])), t.cite("error", r)))
    Catalogue(records, lambda x: x.name, "error name")
    return Catalogue(records, lambda x: x.number, "error number")


VM_INSTRUCTION_ERRORS = _load_errors()
"""Every defined VM-instruction error number (0, "no error", excluded), by number."""


def get_error(name: str) -> VmInstructionError:
    """The VM-instruction error with this Linux ``VMXERR_`` name suffix."""
    for e in VM_INSTRUCTION_ERRORS:
        if e.name == name:
            return e
    raise SpecError("vmx/errors.toml", name, "no such error name")


def get_exit_reason(name: str) -> ExitReason:
    """The basic exit reason with this Linux ``EXIT_REASON_`` name suffix."""
    for r in EXIT_REASONS:
        if r.name == name:
            return r
    raise SpecError("vmx/exit_reasons.toml", name, "no such exit reason name")


# --------------------------------------------------------------------------- capability MSRs


class MsrFormat(enum.Enum):
    """How a capability MSR is read (SDM Vol. 3D Appendix A)."""

    BASIC = "basic"
    PAIR = "pair"
    ALLOWED1 = "allowed1"
    FIXED0 = "fixed0"
    FIXED1 = "fixed1"
    MISC = "misc"
    VMCS_ENUM = "vmcs_enum"
    EPT_VPID_CAP = "ept_vpid_cap"
    VMFUNC = "vmfunc"


@attrs.frozen
class MsrBitfieldSpec:
    name: str
    bits: BitRange
    title: str


@attrs.frozen
class CapabilityMsr:
    """A VMX capability MSR: index, format, named bit fields, and when it exists."""

    name: str
    index: int
    format: MsrFormat
    exists: Condition
    title: str
    bitfields: Catalogue[str, MsrBitfieldSpec]
    citation: Citation

    def field(self, name: str) -> BitRange:
        return self.bitfields[name].bits


def _load_msrs() -> Catalogue[str, CapabilityMsr]:
    t = _Table("vmx/msrs.toml")
    records = []
    for r in t.rows("msr"):
        where = t.where("msr", r)
        bfs = [MsrBitfieldSpec(b["name"], _bits(b["bits"], f"{where}.{b['name']}"), b.get("title", ""))
               for b in r.get("bitfield", [])]
        used = 0
        for b in bfs:
            if b.bits.hi > 63 or used & b.bits.mask:
                raise SpecError(f"{where}.{b.name}", str(b.bits), "bit fields must lie in 63:0 and not overlap")
            used |= b.bits.mask
        records.append(CapabilityMsr(r["name"], r["index"], MsrFormat(r["format"]),
                                     parse_condition(r["exists"], where), r.get("title", ""),
                                     Catalogue(bfs, lambda b: b.name, f"{where} bitfield"),
                                     t.cite("msr", r)))
    Catalogue(records, lambda m: m.index, "msr index")
    return Catalogue(records, lambda m: m.name, "msr name")


CAPABILITY_MSRS = _load_msrs()
"""The VMX capability MSRs (480H-493H), by SDM name."""


# --------------------------------------------------------------------------- controls


@attrs.frozen
class ControlField:
    """A VMX control field: its VMCS field, capability MSR(s) and default1 class."""

    key: str
    vmcs_field: VmcsField
    title: str
    width: int
    msr: CapabilityMsr
    true_msr: CapabilityMsr | None
    msr_format: MsrFormat
    default1: int
    enabled_by: Condition
    citation: Citation


@attrs.frozen
class Control:
    """One named control bit."""

    field: str
    bit: int
    name: str
    title: str
    linux: str
    citation: Citation
    source: Document

    @property
    def mask(self) -> int:
        return 1 << self.bit


@attrs.frozen
class VmFunction:
    number: int
    name: str
    title: str
    citation: Citation


def _load_controls() -> tuple[Catalogue[str, ControlField], Catalogue[tuple[str, str], Control],
                              Catalogue[str, VmFunction]]:
    t = _Table("vmx/controls.toml")
    fields = []
    for key, c in t.data["control_field"].items():
        where = f"{t.relpath} [control_field.{key}]"
        vf = VMCS_FIELDS.get(c["vmcs_field"])
        if vf is None or vf.bits != c["width"]:
            raise SpecError(where, c["vmcs_field"], "must name a VMCS field of the stated width")
        msr, true_msr = CAPABILITY_MSRS.get(c["msr"]), CAPABILITY_MSRS.get(c.get("true_msr", ""))
        if msr is None or ("true_msr" in c and true_msr is None):
            raise SpecError(where, c["msr"], "must name capability MSRs of msrs.toml")
        if c.get("cite") not in t.citations:
            raise SpecError(where, c.get("cite"), "cite must name a [citations] key")
        fields.append(ControlField(key, vf, c["title"], c["width"], msr, true_msr,
                                   MsrFormat(c["msr_format"]), c.get("default1", 0),
                                   parse_condition(c["enabled_by"], where), t.citations[c["cite"]]))
    field_cat = Catalogue(fields, lambda f: f.key, "control_field")
    controls = []
    for r in t.rows("control"):
        where = t.where("control", r)
        cf = field_cat.get(r["field"])
        if cf is None or not 0 <= r["bit"] < cf.width:
            raise SpecError(where, r.get("bit"), "bit must lie inside a known control field")
        controls.append(Control(r["field"], r["bit"], r["name"], r["title"], r.get("linux", ""),
                                t.cite("control", r), t.source("control", r)))
    Catalogue(controls, lambda c: (c.field, c.bit), "control (field, bit)")
    vmfuncs = Catalogue([VmFunction(r["number"], r["name"], r["title"], t.cite("vm_function", r))
                         for r in t.rows("vm_function")], lambda v: v.name, "vm_function")
    return field_cat, Catalogue(controls, lambda c: (c.field, c.name), "control name"), vmfuncs


CONTROL_FIELDS, CONTROLS, VM_FUNCTIONS = _load_controls()
"""The control fields by key (``pin``, ``proc``, ...), every named control by (field, name),
and the VM functions by name."""


def get_control(field: str, name: str) -> Control:
    """The control ``name`` of control field ``field``; SpecError if none."""
    c = CONTROLS.get((field, name))
    if c is None:
        raise SpecError("vmx/controls.toml", f"{field}.{name}", "no such control")
    return c


# --------------------------------------------------------------------------- CPUID facts


@attrs.frozen
class CpuidFact:
    """A processor fact that no VMX MSR carries, and the CPUID bits that report it."""

    name: str
    leaf: int
    subleaf: int | None
    register: str
    bits: BitRange
    kind: str
    title: str
    citation: Citation

    @property
    def leaf_key(self) -> str:
        """The key of the raw leaf in a capability file: ``"0x7.0"`` or ``"0x80000008"``."""
        return f"{self.leaf:#x}" + (f".{self.subleaf}" if self.subleaf is not None else "")


def _load_cpuid() -> Catalogue[str, CpuidFact]:
    t = _Table("cpuid.toml")
    records = []
    for r in t.rows("fact"):
        where = t.where("fact", r)
        if r["register"] not in ("eax", "ebx", "ecx", "edx") or r["kind"] not in ("int", "bool"):
            raise SpecError(where, r["register"], "register must be eax..edx and kind int or bool")
        records.append(CpuidFact(r["name"], r["leaf"], r.get("subleaf"), r["register"],
                                 _bits(r["bits"], where), r["kind"], r.get("title", ""),
                                 t.cite("fact", r)))
    return Catalogue(records, lambda f: f.name, "cpuid fact")


CPUID_FACTS = _load_cpuid()
"""The named processor facts (MAXPHYADDR, CPUID_PCID, ...) and where CPUID reports them."""


# --------------------------------------------------------------------------- cross-table checks


def _check_conditions() -> None:
    """Every control, MSR and bit field that a condition names exists."""
    owners: list[tuple[str, Condition]] = [(str(f), f.exists) for f in VMCS_FIELDS]
    owners += [(m.name, m.exists) for m in CAPABILITY_MSRS]
    owners += [(cf.key, cf.enabled_by) for cf in CONTROL_FIELDS]
    for owner, cond in owners:
        for term in cond.terms:
            if isinstance(term, ControlAllowed) and (term.field, term.control) not in CONTROLS:
                raise SpecError(owner, str(term), "names a control that controls.toml lacks")
            if isinstance(term, MsrBitfield):
                msr = CAPABILITY_MSRS.get(term.msr)
                if msr is None or term.bitfield not in msr.bitfields:
                    raise SpecError(owner, str(term), "names an MSR bit field that msrs.toml lacks")
            if isinstance(term, VmFunctionAllowed) and term.name not in VM_FUNCTIONS:
                raise SpecError(owner, str(term), "names a VM function that controls.toml lacks")
            if isinstance(term, ProcessorFact) and term.fact not in CPUID_FACTS:
                raise SpecError(owner, str(term), "names a fact that cpuid.toml lacks")


_check_conditions()


# --------------------------------------------------------------------------- x86 registers


@attrs.frozen
class RegisterBit:
    """A named bit (or bit range) of an architectural register or MSR."""

    name: str
    bits: BitRange
    title: str

    @property
    def mask(self) -> int:
        return self.bits.mask


@attrs.frozen
class Register:
    name: str
    bits: Catalogue[str, RegisterBit]
    citation: Citation


def _load_registers() -> Catalogue[str, Register]:
    records = []
    for path in sorted((SPEC_DIR / "x86").glob("*.toml")):
        t = _Table(f"x86/{path.name}")
        for r in t.rows("register"):
            where = t.where("register", r)
            bits = [RegisterBit(b["name"], _bits(b.get("bits", b.get("bit")), f"{where}.{b['name']}"), b["title"])
                    for b in r["bits"]]
            records.append(Register(r["name"], Catalogue(bits, lambda b: b.name, where), t.cite("register", r)))
    return Catalogue(records, lambda r: r.name, "register")


REGISTERS = _load_registers()
"""Architectural registers and MSRs (CR0, CR4, IA32_EFER, RFLAGS, ...) with their named bits,
from every table in ``spec/x86/``."""


def reg_bit(register: str, name: str) -> RegisterBit:
    """The named bit of a register (``reg_bit("CR4", "VMXE")``); SpecError if none."""
    reg = REGISTERS.get(register)
    b = reg.bits.get(name) if reg else None
    if b is None:
        raise SpecError("x86/registers.toml", f"{register}.{name}", "no such register bit")
    return b


# --------------------------------------------------------------------------- VMX instructions


@attrs.frozen
class VmxInstruction:
    """A VMX instruction: the exit it causes in VMX non-root operation and its pseudocode entry."""

    name: str
    exit_reason: ExitReason
    citation: Citation


@attrs.frozen
class PointerRules:
    """The invalid pointer value (FFFFFFFF_FFFFFFFFH) and the alignment of VMCS-related regions."""

    invalid: int
    alignment: int
    citation: Citation


def _load_instructions() -> tuple[Catalogue[str, VmxInstruction], PointerRules]:
    t = _Table("vmx/instructions.toml")
    records = [VmxInstruction(r["name"], get_exit_reason(r["exit_reason"]), t.cite("instruction", r))
               for r in t.rows("instruction")]
    p = t.data["pointers"]
    return Catalogue(records, lambda i: i.name, "instruction"), PointerRules(p["invalid"], p["alignment"],
                                                                              t.citations[p["cite"]])


VMX_INSTRUCTIONS, POINTERS = _load_instructions()
"""The VMX instructions by name, and the pointer conventions they share."""


# --------------------------------------------------------------------------- VMX state machine


@attrs.frozen
class Transition:
    """From mode ``source``, executing one of ``instructions`` can lead to ``target`` with one of
    ``outcomes``."""

    source: str
    instructions: tuple[str, ...]
    target: str
    outcomes: tuple[str, ...]
    guard: str
    citation: Citation


OUTCOME_KINDS = ("succeed", "fail_invalid", "fail_valid", "ud", "gp", "vm_exit", "vm_entered", "entry_failed")


def _load_state_machine() -> tuple[tuple[str, ...], tuple[Transition, ...]]:
    t = _Table("vmx/state_machine.toml")
    states = tuple(s["name"] for s in t.rows("state"))
    transitions = []
    for r in t.rows("transition"):
        where = f"{t.relpath} [[transition]] {r['from']}->{r['to']}"
        bad = [i for i in r["instructions"] if i not in VMX_INSTRUCTIONS] + [
            o for o in r["outcomes"] if o not in OUTCOME_KINDS] + [
            s for s in (r["from"], r["to"]) if s not in states]
        if bad:
            raise SpecError(where, bad, "unknown instruction, outcome kind or state")
        transitions.append(Transition(r["from"], tuple(r["instructions"]), r["to"], tuple(r["outcomes"]),
                                      r["guard"], t.cite("transition", r)))
    return states, tuple(transitions)


VMX_STATES, VMX_TRANSITIONS = _load_state_machine()
"""The modes of VMX operation and the transitions between them (``spec/vmx/state_machine.toml``)."""
