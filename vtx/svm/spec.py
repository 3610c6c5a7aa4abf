"""The AMD-V facts of ``spec/svm/``, loaded once into typed, frozen catalogues and cross-checked.

* :data:`VMCB_FIELDS`: every field of the VMCB control and state-save areas (AMD APM Vol. 2
  Appendix B "Layout of VMCB", Tables B-1 and B-2) with its offset in the 4-KByte page and its
  size; array members are ``control.intercepts[3]``, segment members ``save.cs.attrib``.
* :data:`CLEAN_BITS` (§15.15.3 "VMCB Clean Field"), :data:`INTERCEPTS` (Table B-1),
  :data:`EXIT_CODES` (Appendix C "SVM Intercept Exit Codes"), :data:`SVM_FEATURES` (CPUID
  Fn8000_000A), :data:`REGISTERS` / :data:`CONSTANTS` / :data:`EVENT_TYPES` (what VMRUN reads),
  and :data:`VMRUN_CHECKS` (the catalogue of VMRUN's checks).

A contradiction — an offset outside its area, two fields overlapping, an intercept naming no exit
code, a check naming no field — is a :class:`~vtx.errors.SpecError` naming the file, row and rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import attrs

from vtx.bits import BitRange, mask
from vtx.citation import Citation
from vtx.errors import SpecError
from vtx.paging.formats import NPT
from vtx.spec import CPUID_FACTS, Catalogue, Register, RegisterBit, _bits, _Table
from vtx.spec import reg_bit as vtx_reg_bit
from vtx.typecheck import checked

_FIELD_SIZES = (1, 2, 4, 8)
"""Element sizes of VMCB fields in bytes (wider members are arrays or segments)."""


@attrs.frozen
class VmcbField:
    """One VMCB field: ``control.<member>`` or ``save.<member>`` at ``offset`` in the 4-KByte page."""

    name: str
    area: str
    offset: int
    size: int
    title: str
    citation: Citation

    @property
    def bits(self) -> int:
        return self.size * 8

    @property
    def mask(self) -> int:
        return mask(self.bits)

    @property
    def end(self) -> int:
        """The offset one past the field's last byte."""
        return self.offset + self.size

    def __str__(self) -> str:
        return self.name


@attrs.frozen
class VmcbLayout:
    size: int
    save_offset: int
    citation: Citation


@attrs.frozen
class Alias:
    """An older (Linux) name of one or more consecutive fields, concatenated little-endian."""

    name: str
    fields: tuple[VmcbField, ...]

    @property
    def bits(self) -> int:
        return sum(f.bits for f in self.fields)


@attrs.frozen
class CleanBit:
    """One bit of the VMCB clean field and the fields whose caching it permits."""

    bit: int
    name: str
    fields: tuple[VmcbField, ...]
    title: str
    citation: Citation

    @property
    def mask(self) -> int:
        return 1 << self.bit


@attrs.frozen
class ExitCode:
    """One #VMEXIT code (EXITCODE, VMCB offset 070h); ``code`` is signed, ``value`` the 64-bit field."""

    code: int
    name: str
    linux: str
    title: str
    citation: Citation

    @property
    def value(self) -> int:
        return self.code & mask(64)

    def __str__(self) -> str:
        return f"{self.name} ({self.code:#x})" if self.code >= 0 else f"{self.name} ({self.code})"


@attrs.frozen
class Intercept:
    """One intercept bit: ``bit`` of ``control.intercepts[word]``, and the exit code it causes."""

    word: int
    bit: int
    name: str
    field: VmcbField
    exit: ExitCode
    title: str
    citation: Citation

    @property
    def mask(self) -> int:
        return 1 << self.bit


@attrs.frozen
class SvmFeature:
    """One SVM feature flag of CPUID Fn8000_000A_EDX."""

    bit: int
    name: str
    title: str
    citation: Citation

    @property
    def mask(self) -> int:
        return 1 << self.bit


@attrs.frozen
class EventType:
    value: int
    name: str
    title: str
    valid: bool


@attrs.frozen
class FeatureBit:
    """A CR4 or EFER bit that is must-be-zero unless the processor reports ``fact``."""

    register: str
    bit: RegisterBit
    fact: str


@attrs.frozen
class VmrunConstants:
    """Constants of VMRUN's checks (spec/svm/vmrun.toml ``[constants]``)."""

    vmcb_align: BitRange
    msrpm_size: int
    iopm_size: int
    cr3_long_mode_mbz: BitRange
    upper_mbz: BitRange
    valid_exception_vectors: frozenset[int]
    citation: Citation


PROCESSOR_TERMS = ("host_efer", "mode", "cpl", "guest_mode", "rax")
GROUPS = ("instruction", "control", "save")
FAILURES = ("ud", "gp", "vmexit_intercept", "vmexit_invalid")
SVM_INSTRUCTIONS = ("vmrun", "vmload", "vmsave", "stgi", "clgi")
"""The SVM instructions whose checks the catalogue lists; each has the intercept INTERCEPT_<NAME>."""


@attrs.frozen
class VmrunCheckSpec:
    """One VMRUN rule as the APM states it (a row of spec/svm/vmrun_checks.toml)."""

    id: str
    group: str
    instructions: tuple[str, ...]
    failure: str
    statement: str
    fields: tuple[str, ...]
    capabilities: tuple[str, ...]
    processor: tuple[str, ...]
    citation: Citation
    bochs: str
    kvm: str


# --------------------------------------------------------------------------- VMCB layout


def _expand(t: _Table, kind: str, area: str, base: int, members: list[dict[str, int | str]]) -> list[VmcbField]:
    out = []
    for r in t.rows(kind):
        cite = t.cite(kind, r)
        name, offset, size = f"{area}.{r['name']}", base + r["offset"], r["size"]
        if r.get("kind") == "segment":
            out += [VmcbField(f"{name}.{m['name']}", area, offset + int(m["offset"]), int(m["size"]),
                              f"{r['title']}: {m['name']}", cite) for m in members]
        elif "count" in r:
            out += [VmcbField(f"{name}[{i}]", area, offset + i * size, size, f"{r['title']} ({i})", cite)
                    for i in range(r["count"])]
        else:
            out.append(VmcbField(name, area, offset, size, r["title"], cite))
    return out


def _load_vmcb() -> tuple[VmcbLayout, Catalogue[str, VmcbField], Catalogue[str, Alias], Catalogue[int, CleanBit]]:
    t = _Table("svm/vmcb.toml")
    lay = t.data["layout"]
    layout = VmcbLayout(lay["size"], lay["save_offset"], t.cite("layout", lay))
    members = t.rows("segment_member")
    if sum(int(m["size"]) for m in members) != 16:
        raise SpecError(f"{t.relpath} [[segment_member]]", members, "a VMCB segment is 16 bytes")
    fields = _expand(t, "control", "control", 0, []) + _expand(t, "save", "save", layout.save_offset, members)
    areas = {"control": (0, layout.save_offset), "save": (layout.save_offset, layout.size)}
    previous: VmcbField | None = None
    for f in sorted(fields, key=lambda f: f.offset):
        lo, hi = areas[f.area]
        if f.size not in _FIELD_SIZES:
            raise SpecError(f"{t.relpath} {f.name}", f.size, f"a field element is {_FIELD_SIZES} bytes")
        if not (lo <= f.offset and f.end <= hi):
            raise SpecError(f"{t.relpath} {f.name}", hex(f.offset), f"outside the {f.area} area {lo:#x}-{hi - 1:#x}")
        if previous is not None and previous.end > f.offset:
            raise SpecError(f"{t.relpath} {f.name}", hex(f.offset), f"overlaps {previous.name}")
        previous = f
    catalogue = Catalogue(fields, lambda f: f.name, "VMCB field")

    def resolve(name: str, where: str) -> tuple[VmcbField, ...]:
        hit = tuple(f for f in fields if f.name == name or f.name.startswith((name + ".", name + "[")))
        if not hit:
            raise SpecError(where, name, "names no VMCB field")
        return hit

    aliases = []
    for r in t.rows("alias"):
        where = f"{t.relpath} [[alias]] {r['name']}"
        parts = tuple(f for n in r["fields"] for f in resolve(n, where))
        if any(a.end != b.offset for a, b in itertools.pairwise(parts)):
            raise SpecError(where, r["fields"], "an alias covers consecutive fields")
        if r["name"] in catalogue:
            raise SpecError(where, r["name"], "an alias must not shadow a field name")
        aliases.append(Alias(r["name"], parts))
    clean = [CleanBit(r["bit"], r["name"], tuple(f for n in r["fields"] for f in resolve(n, t.where("clean_bit", r))),
                      r["title"], t.cite("clean_bit", r)) for r in t.rows("clean_bit")]
    seen: dict[str, str] = {}
    for c in clean:
        for f in c.fields:
            if f.name in seen:
                raise SpecError(f"{t.relpath} [[clean_bit]] {c.name}", f.name, f"already covered by {seen[f.name]}")
            seen[f.name] = c.name
    return (layout, catalogue, Catalogue(aliases, lambda a: a.name, "VMCB field alias"),
            Catalogue(clean, lambda c: c.bit, "clean bit"))


LAYOUT, VMCB_FIELDS, ALIASES, CLEAN_BITS = _load_vmcb()
"""The VMCB page, its fields by name, the older names Linux used, and the clean bits."""


# --------------------------------------------------------------------------- exit codes, intercepts


def _load_exit_codes() -> Catalogue[str, ExitCode]:
    t = _Table("svm/exit_codes.toml")
    rows = [ExitCode(r["code"], r["name"], r["linux"], r["title"], t.cite("exit_code", r)) for r in t.rows("exit_code")]
    Catalogue(rows, lambda e: e.code, "SVM exit code")  # codes are unique too
    for e in rows:
        if not -(1 << 63) <= e.code < (1 << 63):
            raise SpecError(f"{t.relpath} {e.name}", e.code, "EXITCODE is a signed 64-bit value")
    return Catalogue(rows, lambda e: e.name, "SVM exit code name")


EXIT_CODES = _load_exit_codes()
"""Every #VMEXIT code by APM name (``VMEXIT_NPF``)."""
EXIT_CODES_BY_VALUE: Mapping[int, ExitCode] = {e.value: e for e in EXIT_CODES}
"""The exit codes by the 64-bit value of the EXITCODE field."""

_NPF = EXIT_CODES.get("VMEXIT_NPF")
if _NPF is None or _NPF.value != NPT.exit_code:
    raise SpecError("svm/npt.toml [npf]", hex(NPT.exit_code), "must be the code of VMEXIT_NPF in svm/exit_codes.toml")


def get_exit_code(name: str) -> ExitCode:
    """The exit code named ``name``; SpecError if none."""
    code = EXIT_CODES.get(name)
    if code is None:
        raise SpecError("svm/exit_codes.toml", name, "no such exit code")
    return code


def _load_intercepts() -> Catalogue[str, Intercept]:
    t = _Table("svm/intercepts.toml")
    rows = []
    for r in t.rows("intercept"):
        where = f"{t.relpath} [[intercept]] {r['name']}"
        field = VMCB_FIELDS.get(f"control.intercepts[{r['word']}]")
        if field is None or not 0 <= r["bit"] < field.bits:
            raise SpecError(where, (r["word"], r["bit"]), "no such bit of the intercept vectors")
        exit_code = EXIT_CODES.get(r["exit"])
        if exit_code is None:
            raise SpecError(where, r["exit"], "names no exit code of svm/exit_codes.toml")
        rows.append(Intercept(r["word"], r["bit"], r["name"], field, exit_code, r["title"], t.cite("intercept", r)))
    Catalogue(rows, lambda i: (i.word, i.bit), "intercept bit")
    return Catalogue(rows, lambda i: i.name, "intercept name")


INTERCEPTS = _load_intercepts()
"""Every named intercept bit, by Linux-style name (``INTERCEPT_VMRUN``)."""


def get_intercept(name: str) -> Intercept:
    """The intercept named ``name``; SpecError if none."""
    hit = INTERCEPTS.get(name)
    if hit is None:
        raise SpecError("svm/intercepts.toml", name, "no such intercept")
    return hit


# --------------------------------------------------------------------------- CPUID features


def _load_features() -> tuple[BitRange, Catalogue[str, SvmFeature]]:
    t = _Table("svm/features.toml")
    nasid = _bits(t.data["nasid"]["bits"], f"{t.relpath} [nasid]")
    rows = [SvmFeature(r["bit"], r["name"], r["title"], t.cite("feature", r)) for r in t.rows("feature")]
    Catalogue(rows, lambda f: f.bit, "SVM feature bit")
    return nasid, Catalogue(rows, lambda f: f.name, "SVM feature")


NASID_BITS, SVM_FEATURES = _load_features()
"""The NASID field of Fn8000_000A_EBX, and the feature flags of Fn8000_000A_EDX by Linux name."""


# --------------------------------------------------------------------------- what VMRUN reads


def _load_vmrun() -> tuple[Catalogue[str, Register], VmrunConstants, Catalogue[int, EventType], tuple[FeatureBit, ...]]:
    t = _Table("svm/vmrun.toml")
    regs = []
    for r in t.rows("register"):
        where = t.where("register", r)
        bits = [RegisterBit(b["name"], _bits(b.get("bits", b.get("bit")), f"{where}.{b['name']}"), b["title"])
                for b in r["bits"]]
        regs.append(Register(r["name"], Catalogue(bits, lambda b: b.name, where), t.cite("register", r)))
    c = t.data["constants"]
    where = f"{t.relpath} [constants]"
    vectors = frozenset(c["valid_exception_vectors"])
    if not all(0 <= v < 32 for v in vectors):
        raise SpecError(where, sorted(vectors), "exception vectors are 0-31")
    constants = VmrunConstants(_bits(c["vmcb_align_bits"], where), c["msrpm_size"], c["iopm_size"],
                               _bits(c["cr3_long_mode_mbz"], where), _bits(c["upper_mbz"], where), vectors,
                               t.cite("constants", c))
    types = [EventType(r["value"], r["name"], r["title"], r["valid"]) for r in t.rows("event_type")]
    registers = Catalogue(regs, lambda r: r.name, "SVM register")
    features = []
    for r in t.rows("feature_bit"):
        where = f"{t.relpath} [[feature_bit]] {r['register']}.{r['bit']}"
        reg = registers.get(r["register"])
        bit = reg.bits.get(r["bit"]) if reg else None
        if bit is None or r["fact"] not in CPUID_FACTS or CPUID_FACTS[r["fact"]].kind != "bool":
            raise SpecError(where, r["fact"], "must name a register bit and a bool fact of spec/cpuid.toml")
        features.append(FeatureBit(r["register"], bit, r["fact"]))
    return registers, constants, Catalogue(types, lambda e: e.value, "event type"), tuple(features)


REGISTERS, CONSTANTS, EVENT_TYPES, FEATURE_BITS = _load_vmrun()
"""AMD's CR4 and EFER bits and the VMCB formats VMRUN reads; VMRUN's constants; EVENTINJ types;
the CR4 / EFER bits that exist only with a CPUID feature."""


def reg_bit(register: str, name: str) -> RegisterBit:
    """The named bit of an spec/svm/vmrun.toml register (``reg_bit("AMD_EFER", "SVME")``)."""
    reg = REGISTERS.get(register)
    b = reg.bits.get(name) if reg else None
    if b is None:
        raise SpecError("svm/vmrun.toml", f"{register}.{name}", "no such register bit")
    return b


@checked
def defined_mask(register: str) -> int:
    """Every bit the APM defines for ``register``; the others are reserved, must be zero."""
    return sum(b.mask for b in REGISTERS[register].bits)


def _load_checks() -> Catalogue[str, VmrunCheckSpec]:
    t = _Table("svm/vmrun_checks.toml")
    rows = []
    for r in t.rows("check"):
        where = f"{t.relpath} [[check]] {r.get('id')}"
        problems = [f"group {r['group']!r}" for _ in [0] if r["group"] not in GROUPS]
        problems += [f"failure {r['failure']!r}" for _ in [0] if r["failure"] not in FAILURES]
        problems += [f"field {f!r}" for f in r["fields"] if f not in VMCB_FIELDS]
        problems += [f"capability {c!r}" for c in r["capabilities"] if c not in CPUID_FACTS]
        problems += [f"processor term {p!r}" for p in r["processor"] if p not in PROCESSOR_TERMS]
        problems += [f"instruction {i!r}" for i in r.get("instructions", ()) if i not in SVM_INSTRUCTIONS]
        if (r["group"] == "instruction") != bool(r.get("instructions")):
            problems.append("instructions (given exactly for the instruction group)")
        if problems:
            raise SpecError(where, ", ".join(problems), "unknown name (see vtx/svm/spec.py)")
        rows.append(VmrunCheckSpec(r["id"], r["group"], tuple(r.get("instructions", ())), r["failure"],
                                   r["statement"], tuple(r["fields"]),
                                   tuple(r["capabilities"]), tuple(r["processor"]), t.cite("check", r),
                                   r.get("bochs", ""), r.get("kvm", "")))
    return Catalogue(rows, lambda c: c.id, "VMRUN check id")


VMRUN_CHECKS = _load_checks()
"""Every VMRUN check (instruction checks and VMCB consistency checks), by id, in evaluation order."""


@attrs.frozen
class WorldSwitch:
    """The fields VMRUN, #VMEXIT and VMLOAD / VMSAVE move (spec/svm/world_switch.toml)."""

    host_saves: tuple[VmcbField, ...]
    guest_loads: tuple[VmcbField, ...]
    guest_saves: tuple[VmcbField, ...]
    host_loads: tuple[VmcbField, ...]
    host_dr7: int
    host_cr0_set: tuple[str, ...]
    vmload: tuple[VmcbField, ...]
    vm_hsave_pa: int
    citation: Citation


def _load_world_switch() -> WorldSwitch:
    t = _Table("svm/world_switch.toml")
    d = t.data

    def fields(section: str, key: str) -> tuple[VmcbField, ...]:
        out: list[VmcbField] = []
        for name in d[section][key]:
            hit = [f for f in VMCB_FIELDS if f.name == name or f.name.startswith(name + ".")]
            if not hit or any(f.area != "save" for f in hit):
                raise SpecError(f"{t.relpath} [{section}] {key}", name, "must name state-save fields")
            out += hit
        return tuple(out)

    for section in ("vmrun", "vmexit", "vmload", "msr"):
        t.cite(section, d[section])
    for register_bit in d["vmexit"]["host_cr0_set"]:
        vtx_reg_bit("CR0", register_bit)
    return WorldSwitch(fields("vmrun", "host_saves"), fields("vmrun", "guest_loads"), fields("vmexit", "guest_saves"),
                       fields("vmexit", "host_loads"), d["vmexit"]["host_dr7"], tuple(d["vmexit"]["host_cr0_set"]),
                       fields("vmload", "fields"), d["msr"]["vm_hsave_pa"], t.cite("vmexit", d["vmexit"]))


WORLD_SWITCH = _load_world_switch()
"""What the world switch and VMLOAD / VMSAVE move, from spec/svm/world_switch.toml."""
