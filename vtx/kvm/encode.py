"""An encoder for the few x86-64 instructions vtx's KVM guest programs use (64-bit mode).

Opcodes, prefixes and the ModR/M / SIB formats come from spec/kvm/encodings.toml (SDM Vol. 2A
Chapter 2 "Instruction Format" and the opcode tables of the instruction reference). Operand
size follows SDM Vol. 2A §2.2.1 "REX Prefixes": the 8-bit form has its own opcode, 66H selects
16 bits, the default is 32 bits and REX.W selects 64. Memory operands are 32-bit absolute
addresses (ModR/M + SIB with no base and no index, disp32 sign-extended).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from vtx.bits import BitRange, mask
from vtx.errors import InputError
from vtx.spec import Catalogue, _bits, _Table
from vtx.typecheck import checked

_T = _Table("kvm/encodings.toml")
_PREFIX = _T.data["prefix"]
_MODRM: Mapping[str, BitRange] = {k: _bits(v, "[modrm]") for k, v in _T.data["modrm"].items() if k != "cite"}
_SIB: Mapping[str, BitRange] = {k: _bits(v, "[sib]") for k, v in _T.data["sib"].items() if k != "cite"}
_ABS = _T.data["absolute"]
REGISTERS: Mapping[str, int] = {r["name"]: r["number"] for r in _T.rows("register")}
"""Register name (``rax`` ... ``r15``) -> its 4-bit number in instruction encodings."""
REGISTER_NAMES: tuple[str, ...] = tuple(sorted(REGISTERS, key=REGISTERS.__getitem__))
_LOW = _MODRM["reg"].width
_DISP_BITS = 8 * _ABS["disp_bytes"]
_REL8_BITS = 8
_FIRST_REX_BYTE_REGISTER = REGISTERS["rsp"]
"""Without REX, byte registers 4-7 are AH, CH, DH, BH; with any REX they are SPL, BPL, SIL, DIL
(SDM Vol. 2A §2.2.1 "REX Prefixes")."""


@attrs.frozen
class Encoding:
    name: str
    opcode: bytes
    byte_opcode: bytes | None
    form: str


def _encoding(r: Mapping[str, Any]) -> Encoding:
    _T.cite("instruction", r)
    byte = r.get("byte_opcode")
    return Encoding(r["name"], bytes(r["opcode"]), bytes(byte) if byte else None, r["form"])


ENCODINGS: Catalogue[str, Encoding] = Catalogue([_encoding(r) for r in _T.rows("instruction")], lambda e: e.name,
                                                "instruction")
IO_SIZES = (1, 2, 4)
"""Operand sizes of IN and OUT."""
MOV_SIZES = (1, 2, 4, 8)
"""Operand sizes of MOV between a register and memory."""

# ------------------------------------------------------------------ instructions as values


@attrs.frozen
class Out:
    """OUT to port ``port`` (imm8), or to the port in DX when ``port`` is None, of the low
    ``size`` bytes of RAX."""

    size: int
    port: int | None


@attrs.frozen
class In:
    """IN of ``size`` bytes into AL / AX / EAX from ``port`` (imm8) or from DX (``port`` None)."""

    size: int
    port: int | None


@attrs.frozen
class Store:
    """MOV [address], reg: store the low ``size`` bytes of register ``reg``."""

    size: int
    reg: str
    address: int


@attrs.frozen
class Load:
    """MOV reg, [address]: load ``size`` bytes into register ``reg``."""

    size: int
    reg: str
    address: int


@attrs.frozen
class MovImm:
    """MOV reg, imm64."""

    reg: str
    value: int


@attrs.frozen
class Hlt:
    """HLT."""


@attrs.frozen
class Cpuid:
    """CPUID."""


@attrs.frozen
class Jmp:
    """JMP rel8 (relative to the next instruction)."""

    rel: int


@attrs.frozen
class Loop:
    """LOOP rel8: decrement RCX and jump (relative to the next instruction) while RCX != 0."""

    rel: int


Instruction = Out | In | Store | Load | MovImm | Hlt | Cpuid | Jmp | Loop

# ------------------------------------------------------------------ encoding


def _rex(*, w: bool = False, r: int = 0, b: int = 0, force: bool = False) -> bytes:
    bits = (int(w) << _PREFIX["w"]) | ((r >> _LOW) << _PREFIX["r"]) | ((b >> _LOW) << _PREFIX["b"])
    return bytes([_PREFIX["rex"] | bits]) if bits or force else b""


def _reg(name: str) -> int:
    if name not in REGISTERS:
        raise InputError("instruction.reg", name, f"must be one of {', '.join(REGISTER_NAMES)}")
    return REGISTERS[name]


def _sized(enc: Encoding, size: int, sizes: tuple[int, ...]) -> tuple[bytes, bytes]:
    """(legacy prefix, opcode) for an operand size."""
    if size not in sizes:
        raise InputError(f"{enc.name}.size", size, f"must be one of {sizes}")
    if size == 1:
        assert enc.byte_opcode is not None
        return b"", enc.byte_opcode
    return (bytes([_PREFIX["operand_size"]]) if size == 2 else b""), enc.opcode


def _imm(value: int, bits: int, where: str, *, signed: bool = False) -> bytes:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, mask(bits))
    if not lo <= value <= hi:
        raise InputError(where, value, f"must fit in {bits} {'signed' if signed else 'unsigned'} bits")
    return value.to_bytes(bits // 8, "little", signed=signed)


def _absolute(reg: int, address: int) -> bytes:
    """ModR/M, SIB and disp32 of ``[address]`` with ``reg`` in ModR/M.reg."""
    if not 0 <= address < 1 << (_DISP_BITS - 1):
        raise InputError("instruction.address", hex(address),
                         f"an absolute disp32 operand reaches [0, {1 << (_DISP_BITS - 1):#x}) (sign-extended)")
    modrm = _MODRM["mod"].put(_MODRM["reg"].put(_MODRM["rm"].put(0, _ABS["rm"]), reg), _ABS["mod"])
    sib = _SIB["scale"].put(_SIB["index"].put(_SIB["base"].put(0, _ABS["sib_base"]), _ABS["sib_index"]),
                            _ABS["sib_scale"])
    return bytes([modrm, sib]) + address.to_bytes(_ABS["disp_bytes"], "little")


@checked
def encode(ins: Instruction) -> bytes:
    """The machine code of one instruction."""
    if isinstance(ins, Out | In):
        kind = "out" if isinstance(ins, Out) else "in"
        enc = ENCODINGS[f"{kind}_{'dx' if ins.port is None else 'imm8'}"]
        prefix, opcode = _sized(enc, ins.size, IO_SIZES)
        port = b"" if ins.port is None else _imm(ins.port, 8, f"{enc.name}.port")
        return prefix + opcode + port
    if isinstance(ins, Store | Load):
        enc = ENCODINGS["mov_store" if isinstance(ins, Store) else "mov_load"]
        reg = _reg(ins.reg)
        prefix, opcode = _sized(enc, ins.size, MOV_SIZES)
        rex = _rex(w=ins.size == 8, r=reg, force=ins.size == 1 and reg >= _FIRST_REX_BYTE_REGISTER)
        return prefix + rex + opcode + _absolute(reg & mask(_LOW), ins.address)
    if isinstance(ins, MovImm):
        reg = _reg(ins.reg)
        enc = ENCODINGS["mov_imm64"]
        return _rex(w=True, b=reg) + bytes([enc.opcode[0] + (reg & mask(_LOW))]) + _imm(ins.value, 64, "mov.value")
    if isinstance(ins, Hlt | Cpuid):
        return ENCODINGS["hlt" if isinstance(ins, Hlt) else "cpuid"].opcode
    enc = ENCODINGS["jmp_rel8" if isinstance(ins, Jmp) else "loop_rel8"]
    return enc.opcode + _imm(ins.rel, _REL8_BITS, f"{enc.name}.rel", signed=True)


@checked
def assemble(program: Iterable[Instruction]) -> bytes:
    """The machine code of a sequence of instructions."""
    return b"".join(encode(i) for i in program)
