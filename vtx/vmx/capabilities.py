"""Capabilities: what one processor implements, as its VMX capability MSRs and CPUID facts.

Implementation-defined behaviour is data. A :class:`Capabilities` value holds the raw values of
the VMX capability MSRs (SDM Vol. 3D Appendix A "VMX Capability Reporting Facility"), raw CPUID
leaves, and the named facts the checks need but no VMX MSR carries (``spec/cpuid.toml``). It
answers which control settings are allowed (allowed-0 / allowed-1, honouring the TRUE_* MSRs),
which VMCS fields exist, and reports anything it cannot answer as *not evaluable* (``None``).

The public capability format, shared by every CLI verb, is a JSON object: MSRs by SDM name
(``"IA32_VMX_BASIC": "0xda040000000004"``), raw CPUID leaves under ``"cpuid"``
(``{"0x7.0": {"eax": ..., "ebx": ..., "ecx": ..., "edx": ...}}``) and named facts
(``"MAXPHYADDR": 46``). Values are ints or hex strings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from vtx import spec
from vtx.bits import mask, parse_int
from vtx.conditions import (
    Always,
    Condition,
    ControlAllowed,
    Cr3TargetSupported,
    InSeam,
    MsrBitfield,
    ProcessorFact,
    Term,
    VmFunctionAllowed,
)
from vtx.errors import InputError, NotEvaluable
from vtx.inputs import json_int, key_path, listed, parse_json, read_text, shown
from vtx.spec import CAPABILITY_MSRS, CONTROL_FIELDS, CPUID_FACTS, MsrFormat, VmcsField
from vtx.typecheck import checked

PRESET_DIR = spec.SPEC_DIR / "presets"
DEFAULT_PRESET = "max"
"""The preset whose values fill in whatever a capability file leaves out."""

REGISTERS = ("eax", "ebx", "ecx", "edx")
_META_KEYS = ("description", "source", "processor", "name", "vendor", "not_logged")
_U64 = mask(64)
_SHOWN_PROBLEMS = 3
"""How many contradictions an error message lists (the rest are counted)."""
_U32 = mask(32)
_T = TypeVar("_T")


@attrs.frozen
class CpuidLeaf:
    """The four output registers of one CPUID leaf (and sub-leaf)."""

    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0

    def register(self, name: str) -> int:
        value: int = getattr(self, name)
        return value


@checked
def normalize_leaf_key(key: str, where: str = "cpuid") -> str:
    """``"7.0"``, ``"0x07.0"`` and ``"0x00000007.0x0"`` all name leaf 7 sub-leaf 0 (``"0x7.0"``)."""
    leaf_text, _, sub_text = key.partition(".")
    try:
        leaf = int(leaf_text, 16) if not leaf_text.lower().startswith("0x") else parse_int(leaf_text)
        sub = parse_int(sub_text) if sub_text else None
    except ValueError as e:
        raise InputError(where, shown(key), "a leaf key is '<leaf>[.<subleaf>]', e.g. '0x7.0'") from e
    return f"{leaf:#x}" + (f".{sub}" if sub is not None else "")


@attrs.frozen
class Capabilities:
    """One processor's VMX capabilities (raw MSRs, CPUID leaves and named facts)."""

    name: str
    msrs: Mapping[str, int] = attrs.field(factory=dict)
    cpuid: Mapping[str, CpuidLeaf] = attrs.field(factory=dict)
    facts: Mapping[str, int] = attrs.field(factory=dict)
    description: str = ""
    source: str = ""

    # ------------------------------------------------------------------ construction

    @classmethod
    @checked
    def from_msrs(cls, msrs: Mapping[str | int, object], *, name: str = "custom",
                  cpuid: Mapping[str, Mapping[str, object]] | None = None,
                  facts: Mapping[str, object] | None = None) -> Capabilities:
        """Capabilities from raw MSR values (by SDM name or index), CPUID leaves and facts.

        Facts not given are derived from the CPUID leaves given; anything else is unknown.
        """
        return _EMPTY.overlay({"cpuid": dict(cpuid or {}), **dict(facts or {}),
                               **{_msr_name(k): v for k, v in msrs.items()}}, name=name)

    @classmethod
    @checked
    def from_json(cls, obj: object, *, base: Capabilities | None = None, name: str = "custom",
                  where: str = "capabilities") -> Capabilities:
        """Capabilities from the public JSON format, over ``base`` (default: the ``max`` preset)."""
        if not isinstance(obj, dict):
            raise InputError(where, type(obj).__name__, "capabilities must be a JSON object")
        return (base if base is not None else load_preset(DEFAULT_PRESET)).overlay(obj, name=name, where=where)

    @checked
    def overlay(self, obj: Mapping[str, Any], *, name: str | None = None,
                where: str = "capabilities") -> Capabilities:
        """These capabilities with the values of ``obj`` (public format) laid over them.

        A named fact in ``obj`` wins over a CPUID leaf in ``obj``, which wins over this value's
        facts.
        """
        msrs, cpuid, facts = dict(self.msrs), dict(self.cpuid), dict(self.facts)
        given_facts: dict[str, int] = {}
        for key, value in obj.items():
            if key in _META_KEYS:
                continue
            if key == "cpuid":
                if not isinstance(value, dict):
                    raise InputError(f"{where}.cpuid", type(value).__name__, "must be an object of leaves")
                given = {normalize_leaf_key(k, key_path(f"{where}.cpuid", k)): k for k in value}
                for leaf, leaf_key in given.items():
                    cpuid[leaf] = _leaf(value[leaf_key], key_path(f"{where}.cpuid", leaf_key))
                for fact in CPUID_FACTS:
                    if fact.leaf_key in given:
                        facts[fact.name] = _derive_fact(fact, cpuid[fact.leaf_key])
            elif key in CAPABILITY_MSRS:
                msrs[key] = json_int(value, f"{where}.{key}", 64)
            elif key in CPUID_FACTS:
                fact = CPUID_FACTS[key]
                given_facts[key] = _fact_value(fact, value, f"{where}.{key}")
            else:
                raise InputError(key_path(where, key), shown(value),
                                 "unknown key: expected an IA32_VMX_* MSR name, 'cpuid', a fact name "
                                 f"({listed(tuple(CPUID_FACTS.keys()), 6)}) or one of {', '.join(_META_KEYS)}")
        facts.update(given_facts)
        caps = Capabilities(name or self.name, msrs, cpuid, facts,
                            str(obj.get("description", self.description)),
                            str(obj.get("source", self.source)))
        problems = caps.consistency_problems()
        if problems:
            more = len(problems) - _SHOWN_PROBLEMS
            raise InputError(where, name or self.name, "inconsistent capabilities: "
                             + "; ".join(problems[:_SHOWN_PROBLEMS]) + (f" (and {more} more)" if more > 0 else "")
                             + f" (values not given come from {self.name!r}: give related MSRs together)")
        return caps

    # ------------------------------------------------------------------ raw access

    def msr(self, name: str) -> int | None:
        """The raw value of a capability MSR; None if the profile does not say."""
        return self.msrs.get(name)

    def msr_field(self, msr_name: str, bitfield: str) -> int | None:
        """A named bit field of a capability MSR; None if the MSR is unknown (memoized per value)."""
        key = (msr_name, bitfield)
        memo = self._msr_field_memo
        if key in memo:
            return memo[key]
        value = memo[key] = self._msr_field(msr_name, bitfield)
        return value

    def _msr_field(self, msr_name: str, bitfield: str) -> int | None:
        value = self.msrs.get(msr_name)
        if value is None:
            return None
        return CAPABILITY_MSRS[msr_name].field(bitfield).get(value)

    @functools.cached_property
    def _msr_field_memo(self) -> dict[tuple[str, str], int | None]:
        return {}

    @functools.cached_property
    def _derived_memo(self) -> dict[Hashable, object]:
        return {}

    def memoized(self, key: Hashable, compute: Callable[[], _T]) -> _T:
        """``compute()``, computed once per capabilities value and ``key``: for values derived from the
        capabilities alone (and ``key``), such as the EPT an EPTP selects. ``key`` names the function
        and its other arguments."""
        memo = self._derived_memo
        if key in memo:
            return memo[key]  # type: ignore[return-value]
        value = memo[key] = compute()
        return value

    def fact(self, name: str) -> int | None:
        """A named processor fact (``MAXPHYADDR``, ``CPUID_PCID``, ...); None if unknown."""
        if name not in _FACT_NAMES:
            raise InputError("fact", name, f"unknown fact (known: {', '.join(CPUID_FACTS.keys())})")
        return self.facts.get(name)

    def require_fact(self, name: str) -> int:
        """A named fact, or :class:`NotEvaluable` naming it."""
        v = self.fact(name)
        if v is None:
            raise NotEvaluable(f"capabilities {self.name!r}", name, "the profile does not give this fact")
        return v

    # ------------------------------------------------------------------ existence

    @checked
    def evaluate(self, condition: Condition) -> bool | None:
        """Whether an existence condition holds; None if a term it depends on is unknown."""
        unknown = False
        for term in condition.terms:
            v = self._term(term)
            if v:
                return True
            unknown |= v is None
        return None if unknown else False

    def _term(self, term: Term) -> bool | None:
        if isinstance(term, Always):
            return True
        if isinstance(term, InSeam):
            return False
        if isinstance(term, ControlAllowed):
            return self.allows(term.field, term.control)
        if isinstance(term, VmFunctionAllowed):
            vmfunc = self._msr_if_exists("IA32_VMX_VMFUNC")
            if vmfunc is None:
                return None
            return bool(vmfunc >> spec.VM_FUNCTIONS[term.name].number & 1)
        if isinstance(term, ProcessorFact):
            f = self.facts.get(term.fact)
            return None if f is None else bool(f)
        if isinstance(term, MsrBitfield):
            v = self.msr_field(term.msr, term.bitfield)
            return None if v is None else bool(v)
        if isinstance(term, Cr3TargetSupported):
            count = self.msr_field("IA32_VMX_MISC", "cr3_target_count")
            return None if count is None else count > term.n
        raise AssertionError(term)

    @checked
    def msr_exists(self, name: str) -> bool | None:
        """Whether the processor enumerates capability MSR ``name`` (Appendix A)."""
        return self.evaluate(CAPABILITY_MSRS[name].exists)

    def _msr_if_exists(self, name: str) -> int | None:
        """The MSR's value, 0 if the processor does not enumerate it, None if unknown."""
        exists = self.msr_exists(name)
        if exists is False:
            return 0
        return self.msrs.get(name)

    @functools.cached_property
    def _field_support(self) -> dict[int, bool | None]:
        return {f.encoding: self.evaluate(f.exists) for f in spec.VMCS_FIELDS}

    @checked
    def field_exists(self, field: VmcsField) -> bool | None:
        """Whether the processor supports VMCS field ``field`` (None: not evaluable)."""
        return self._field_support[field.encoding]

    # ------------------------------------------------------------------ control settings

    @checked
    def control_msr(self, field_key: str) -> str:
        """The MSR that reports the allowed settings of a control field.

        With IA32_VMX_BASIC[55] = 1 the TRUE_* MSRs report them (SDM Vol. 3D §A.2 "Reserved
        Controls and Default Settings"); otherwise the non-TRUE MSRs, whose default1 bits read 1.
        """
        cf = CONTROL_FIELDS[field_key]
        if cf.true_msr is not None and self.msr_field("IA32_VMX_BASIC", "true_controls"):
            return cf.true_msr.name
        return cf.msr.name

    def _active(self, field_key: str) -> bool | None:
        return self.evaluate(CONTROL_FIELDS[field_key].enabled_by)

    @functools.cached_property
    def _allowed_memo(self) -> dict[str, tuple[int | None, int | None]]:
        return {}

    def allowed_settings(self, field_key: str) -> tuple[int | None, int | None]:
        """(allowed0, allowed1) of a control field, computed once per value (filled lazily: a
        secondary field's settings depend on the primary field's)."""
        memo = self._allowed_memo
        settings = memo.get(field_key)
        if settings is None:
            settings = memo[field_key] = (self._allowed0(field_key), self._allowed1(field_key))
        return settings

    @checked
    def allowed0(self, field_key: str) -> int | None:
        """The bits of a control field that must be 1 (allowed-0 settings = 0 there)."""
        return self.allowed_settings(field_key)[0]

    @checked
    def allowed1(self, field_key: str) -> int | None:
        """The bits of a control field that may be 1."""
        return self.allowed_settings(field_key)[1]

    def _allowed0(self, field_key: str) -> int | None:
        cf = CONTROL_FIELDS[field_key]
        if cf.msr_format is not MsrFormat.PAIR:
            return 0  # an allowed-1-only MSR: every control of the field may be 0
        active = self._active(field_key)
        if active is False:
            return 0
        value = self.msrs.get(self.control_msr(field_key))
        if value is None or active is None:
            return None
        return value & _U32

    def _allowed1(self, field_key: str) -> int | None:
        cf = CONTROL_FIELDS[field_key]
        active = self._active(field_key)
        if active is False:
            return 0
        value = self.msrs.get(self.control_msr(field_key))
        if value is None or active is None:
            return None
        return value >> 32 if cf.msr_format is MsrFormat.PAIR else value & mask(cf.width)

    @checked
    def allows(self, field_key: str, control: str) -> bool | None:
        """Whether the 1-setting of a control is allowed."""
        a1 = self.allowed1(field_key)
        return None if a1 is None else bool(a1 & spec.get_control(field_key, control).mask)

    @checked
    def requires(self, field_key: str, control: str) -> bool | None:
        """Whether a control must be 1 (its 0-setting is not allowed)."""
        a0 = self.allowed0(field_key)
        return None if a0 is None else bool(a0 & spec.get_control(field_key, control).mask)

    @checked
    def control_value_allowed(self, field_key: str, value: int) -> bool | None:
        """Whether a whole control-field value sets every must-be-1 bit and no must-be-0 bit."""
        a0, a1 = self.allowed0(field_key), self.allowed1(field_key)
        if a0 is None or a1 is None:
            return None
        return value & a0 == a0 and value & ~a1 == 0

    # ------------------------------------------------------------------ self-consistency

    def consistency_problems(self) -> list[str]:
        """Contradictions between this profile's MSRs (SDM Vol. 3D Appendix A); [] if none."""
        problems = []
        basic = self.msrs.get("IA32_VMX_BASIC")
        if basic is not None and CAPABILITY_MSRS["IA32_VMX_BASIC"].field("always_zero").get(basic):
            problems.append("IA32_VMX_BASIC bit 31 must be 0 (§A.1)")
        for cf in CONTROL_FIELDS:
            for msr in (cf.msr, cf.true_msr):
                v = self.msrs.get(msr.name) if msr else None
                if msr is None or v is None or cf.msr_format is not MsrFormat.PAIR:
                    continue
                if v & _U32 & ~(v >> 32):
                    problems.append(f"{msr.name}: bits {v & _U32 & ~(v >> 32):#x} must be 1 but may not be 1")
            if cf.true_msr is not None and self.msr_field("IA32_VMX_BASIC", "true_controls"):
                plain, true = self.msrs.get(cf.msr.name), self.msrs.get(cf.true_msr.name)
                if plain is not None and true is not None:
                    if plain >> 32 != true >> 32:
                        problems.append(f"{cf.true_msr.name} allowed-1 bits differ from {cf.msr.name} (§A.2)")
                    if (plain ^ true) & _U32 & ~cf.default1:
                        problems.append(f"{cf.true_msr.name} allowed-0 bits differ from {cf.msr.name} "
                                        "outside the default1 class (§A.2)")
        for reg in ("CR0", "CR4"):
            f0, f1 = self.msrs.get(f"IA32_VMX_{reg}_FIXED0"), self.msrs.get(f"IA32_VMX_{reg}_FIXED1")
            if f0 is not None and f1 is not None and f0 & ~f1:
                problems.append(f"IA32_VMX_{reg}_FIXED0 sets bits {f0 & ~f1:#x} that FIXED1 forbids")
        return problems

    def to_json(self) -> dict[str, Any]:
        """This profile in the public capability format."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.source:
            out["source"] = self.source
        out.update({m.name: f"{self.msrs[m.name]:#x}" for m in CAPABILITY_MSRS if m.name in self.msrs})
        out["cpuid"] = {k: {r: f"{leaf.register(r):#x}" for r in REGISTERS} for k, leaf in self.cpuid.items()}
        out.update({f.name: self.facts[f.name] for f in CPUID_FACTS if f.name in self.facts})
        return out


def _msr_name(key: str | int) -> str:
    if isinstance(key, int):
        for m in CAPABILITY_MSRS:
            if m.index == key:
                return m.name
        raise InputError("MSR", hex(key), "not a VMX capability MSR index (480H-493H)")
    if key not in CAPABILITY_MSRS:
        raise InputError("MSR", repr(key), "not a VMX capability MSR name (IA32_VMX_BASIC ...)")
    return key


def _leaf(regs: object, where: str) -> CpuidLeaf:
    if not isinstance(regs, dict) or set(regs) - set(REGISTERS):
        raise InputError(where, shown(regs), "a CPUID leaf is an object with keys eax, ebx, ecx, edx")
    return CpuidLeaf(**{r: json_int(regs.get(r, 0), f"{where}.{r}", 32) for r in REGISTERS})


def _derive_fact(fact: spec.CpuidFact, leaf: CpuidLeaf) -> int:
    return fact.bits.get(leaf.register(fact.register))


def _fact_value(fact: spec.CpuidFact, value: object, where: str) -> int:
    if fact.kind == "bool":
        if isinstance(value, bool):
            return int(value)
        v = json_int(value, where, 1)
        return v
    return json_int(value, where, fact.bits.width)


_EMPTY = Capabilities("empty")
_FACT_NAMES = frozenset(CPUID_FACTS.keys())


@functools.cache
def load_preset(name: str) -> Capabilities:
    """A named preset from ``spec/presets/<name>.json``."""
    if name not in preset_names():  # a name, never a path: "../x" reads no other file
        raise InputError("profile", shown(name), f"no such preset (presets: {', '.join(preset_names())})")
    path = PRESET_DIR / f"{name}.json"
    return _EMPTY.overlay(read_json(path), name=name, where=str(path))


def preset_names() -> list[str]:
    """The names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


@checked
def read_json(path: Path) -> Any:
    """Parse a JSON file; InputError naming the file, line and column on failure."""
    return parse_json(read_text(path), str(path))


@checked
def resolve_capabilities(*, profile: object = None, msrs_file: Path | None = None,
                         document: Mapping[str, Any] | None = None) -> Capabilities:
    """The capabilities a CLI verb uses.

    The preset is ``--profile``, else the input's ``"profile"`` key, else ``max``; over it lie the
    input's ``"capabilities"`` object, then the ``--msrs`` file (command line over file).
    """
    doc = document or {}
    preset = profile if profile is not None else doc.get("profile", DEFAULT_PRESET)
    if not isinstance(preset, str):
        raise InputError("profile", shown(preset), "must be a preset name")
    caps = load_preset(preset)
    if "capabilities" in doc:
        caps = Capabilities.from_json(doc["capabilities"], base=caps, name=preset + "+input")
    if msrs_file is not None:
        caps = Capabilities.from_json(read_json(msrs_file), base=caps, name=f"{preset}+{msrs_file.name}",
                                      where=f"{msrs_file}: capabilities")
    return caps
