"""The KVM user-space API as data: spec/kvm/api.toml loaded into ioctl numbers and ctypes layouts.

Every ioctl request number is composed from its row (direction, ``KVMIO``, number, and the size
of its structure) with the ``_IOC`` encoding of include/uapi/asm-generic/ioctl.h; every
structure becomes a ctypes structure whose field offsets and size are checked against the
offsets and size the table states, so a wrong row is a :class:`~vtx.errors.SpecError` at import
rather than memory corruption in the kernel.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Any

import attrs

from vtx.bits import BitRange
from vtx.errors import SpecError
from vtx.spec import Catalogue, _bits, _load

_RELPATH = "kvm/api.toml"
_SCALARS: Mapping[str, type[ctypes._SimpleCData[int]]] = {
    "u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32, "u64": ctypes.c_uint64,
}
_DIRECTIONS = ("none", "read", "write", "readwrite")
_FDS = ("system", "vm", "vcpu")


@attrs.frozen
class Header:
    """A Linux user-space header the table cites."""

    key: str
    path: str
    title: str


@attrs.frozen
class Ioctl:
    """One ioctl: its name, the fd kind it is issued on, and its composed request number."""

    name: str
    fd: str
    direction: str
    nr: int
    struct: str | None
    number: int
    header: Header


@attrs.frozen
class ExitReason:
    """A ``KVM_EXIT_*`` value of ``kvm_run.exit_reason``."""

    number: int
    name: str
    header: Header


def _where(kind: str, row: Mapping[str, Any]) -> str:
    return f"{_RELPATH} [[{kind}]] {row.get('name', row.get('number', '?'))}"


def _header(headers: Mapping[str, Header], key: object, where: str) -> Header:
    if key not in headers:
        raise SpecError(where, key, "cite must name a [headers] key")
    return headers[str(key)]


def _struct(row: Mapping[str, Any], done: Mapping[str, type[ctypes.Structure]]) -> type[ctypes.Structure]:
    """A ctypes structure from a [[struct]] row, checked against the row's offsets and size."""
    where = _where("struct", row)
    fields: list[tuple[str, Any]] = []
    for f in row["field"]:
        base = _SCALARS.get(f["type"]) or done.get(f["type"])
        if base is None:
            raise SpecError(f"{where}.{f['name']}", f["type"], "type must be u8/u16/u32/u64 or an earlier [[struct]]")
        count = f.get("count", 1)
        fields.append((f["name"], base * count if count != 1 else base))
    cls = type(row["name"], (ctypes.Structure,), {"_fields_": fields})
    for f in row["field"]:
        actual = getattr(cls, f["name"]).offset
        if actual != f["offset"]:
            raise SpecError(f"{where}.{f['name']}", f["offset"], f"the C layout puts this field at offset {actual}")
    if ctypes.sizeof(cls) != row["size"]:
        raise SpecError(where, row["size"], f"the C layout has size {ctypes.sizeof(cls)}")
    return cls


@attrs.frozen
class KvmApi:
    """Everything spec/kvm/api.toml says."""

    headers: Mapping[str, Header]
    constants: Mapping[str, int]
    ioctls: Catalogue[str, Ioctl]
    structs: Mapping[str, type[ctypes.Structure]]
    exit_reasons: Catalogue[int, ExitReason]
    run_union_offset: int
    ioc: Mapping[str, BitRange]

    def ioctl(self, name: str) -> int:
        """The request number of the ioctl ``name``."""
        return self.ioctls[name].number

    def exit_name(self, number: int) -> str:
        """``KVM_EXIT_<name>`` of an exit reason, or ``KVM_EXIT_<number>`` if not catalogued."""
        reason = self.exit_reasons.get(number)
        return f"KVM_EXIT_{reason.name if reason else number}"


def _load_api() -> KvmApi:
    data = _load(_RELPATH)
    headers = {k: Header(k, h["path"], h["title"]) for k, h in data["headers"].items()}
    ioc_row = data["ioc"]
    _header(headers, ioc_row.get("cite"), f"{_RELPATH} [ioc]")
    ioc = {k: _bits(ioc_row[k], f"{_RELPATH} [ioc].{k}") for k in ("nr", "type", "size", "dir")}
    codes = {"none": ioc_row["none"], "write": ioc_row["write"], "read": ioc_row["read"]}
    codes["readwrite"] = codes["read"] | codes["write"]
    constants: dict[str, int] = dict(data["constants"])
    for name in constants:
        _header(headers, data["constants_cite"].get(name), f"{_RELPATH} [constants].{name}")
    structs: dict[str, type[ctypes.Structure]] = {}
    for row in data["struct"]:
        _header(headers, row.get("cite"), _where("struct", row))
        if row["name"] in structs:
            raise SpecError(_where("struct", row), row["name"], "duplicate struct")
        structs[row["name"]] = _struct(row, structs)
    ioctls = []
    for row in data["ioctl"]:
        where = _where("ioctl", row)
        if row["dir"] not in _DIRECTIONS or row["fd"] not in _FDS:
            raise SpecError(where, f"{row['dir']}/{row['fd']}", f"dir must be one of {_DIRECTIONS}, fd of {_FDS}")
        struct = row.get("struct")
        if (struct is None) != (row["dir"] == "none"):
            raise SpecError(where, struct, "an _IO ioctl has no struct; _IOR/_IOW/_IOWR ioctls name one")
        if struct is not None and struct not in structs:
            raise SpecError(where, struct, "struct must name a [[struct]] row")
        size = ctypes.sizeof(structs[struct]) if struct else 0
        if size >> ioc["size"].width:
            raise SpecError(where, size, "the structure is too large for the _IOC size field")
        number = ioc["dir"].put(0, codes[row["dir"]])
        number = ioc["type"].put(number, constants["KVMIO"])
        number = ioc["size"].put(number, size)
        number = ioc["nr"].put(number, row["nr"])
        ioctls.append(Ioctl(row["name"], row["fd"], row["dir"], row["nr"], struct, number,
                            _header(headers, row.get("cite"), where)))
    reasons = [ExitReason(r["number"], r["name"], _header(headers, r.get("cite"), _where("exit_reason", r)))
               for r in data["exit_reason"]]
    union = data["kvm_run_union"]
    _header(headers, union.get("cite"), f"{_RELPATH} [kvm_run_union]")
    if union["offset"] != ctypes.sizeof(structs["kvm_run"]):
        raise SpecError(f"{_RELPATH} [kvm_run_union]", union["offset"], "the exit union follows the kvm_run head")
    return KvmApi(headers, constants, Catalogue(ioctls, lambda i: i.name, "ioctl"), structs,
                  Catalogue(reasons, lambda r: r.number, "exit_reason"), union["offset"], ioc)


API = _load_api()
"""The KVM API of spec/kvm/api.toml."""
