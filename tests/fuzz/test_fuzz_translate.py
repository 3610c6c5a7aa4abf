"""Fuzzing ``vtx translate``: mutated documents, raw bytes, byte mutations, and arbitrary page-table
graphs (cycles included: a table that points at itself or at an ancestor must give an outcome,
since every walk has a fixed number of levels, SDM Vol. 3A §5.5 "4-Level Paging and 5-Level Paging")."""

from __future__ import annotations

import json
from typing import Any

from fuzz_harness import check_file
from fuzz_strategies import ROOT, byte_mutations, dumps, mutated, odd_ints, raw_inputs
from hypothesis import given
from hypothesis import strategies as st

EXAMPLES = [json.loads(p.read_text()) for p in sorted((ROOT / "docs" / "examples").glob("*.json"))]
_LONG_MODE = {"cr0": "0x80000011", "cr3": "0x1000", "cr4": "0x20", "efer": "0xd00"}
SEEDS: list[Any] = [
    *EXAMPLES,
    {"arch": "svm", "ncr3": "0x100000", "host": {"cr0": "0x80000001", "cr4": "0x20", "efer": "0xd00"},
     "guest": {**_LONG_MODE, "rflags": 2, "cpl": 0, "pkru": 0},
     "memory": [{"address": "0x100000", "value": "0x101007"}, {"address": "0x1000", "bytes": "2710000000000000"}],
     "access": {"address": "0x1234", "kind": "fetch", "size": 4, "implicit": False, "nmi_unblocking": False}},
    {"arch": "vmx", "eptp": "0x10001e", "fields": {"GUEST_PDPTR0": "0x2001", "SECONDARY_VM_EXEC_CONTROL": "0x2"},
     "guest": {"cr0": "0x80000011", "cr3": "0x1000", "cr4": "0x20"}, "access": {"address": "0x1000"}},
]
SEED_BYTES = [dumps(d) for d in SEEDS]
TABLE_PAGES = [0x1000 * n for n in range(1, 9)]
"""The pages an arbitrary page-table graph lives in (entries point among them: cycles are likely)."""


@given(mutated(SEEDS))
def test_mutated_documents(doc: Any) -> None:
    check_file(["translate", "--json"], doc)


@given(raw_inputs)
def test_raw_bytes(data: bytes) -> None:
    check_file(["translate"], data)


@given(byte_mutations(SEED_BYTES))
def test_byte_mutations_of_valid_files(data: bytes) -> None:
    check_file(["translate"], data)


entry_values = st.builds(lambda page, flags, high: page | flags | high << 52, st.sampled_from(TABLE_PAGES),
                         st.integers(0, 0xFFF), st.sampled_from([0, 0, 0, 1, 0x7FF, 0x800]))


@st.composite
def page_table_graphs(draw: st.DrawFn) -> dict[str, Any]:
    """Guest (and EPT / nested) tables whose entries point at any of a few pages, itself included."""
    memory = [{"address": hex(draw(st.sampled_from(TABLE_PAGES)) + 8 * draw(st.integers(0, 511))),
               "value": hex(draw(entry_values))} for _ in range(draw(st.integers(0, 24)))]
    guest = {"cr0": draw(st.sampled_from(["0x80000011", "0x80010011", "0x11", "0x80000001"])),
             "cr3": hex(draw(st.sampled_from(TABLE_PAGES)) | draw(st.integers(0, 0xFFF))),
             "cr4": draw(st.sampled_from(["0x20", "0x1020", "0x0", "0x10", "0x300020", "0x400020"])),
             "efer": draw(st.sampled_from(["0xd00", "0x0", "0x800", "0x500"])), "cpl": draw(st.integers(0, 3))}
    doc: dict[str, Any] = {"guest": guest, "memory": memory,
                           "access": {"address": hex(draw(st.one_of(odd_ints.filter(lambda n: n >= 0),
                                                                    st.integers(0, 2**48)))),
                                      "kind": draw(st.sampled_from(["read", "write", "fetch"]))}}
    nested = draw(st.sampled_from(["none", "ept", "npt"]))
    root = draw(st.sampled_from(TABLE_PAGES))
    if nested == "ept":
        doc["eptp"] = hex(root | draw(st.sampled_from([0x1E, 0x5E, 0x1F, 0x18, 0x26])))
    elif nested == "npt":
        doc.update(arch="svm", ncr3=hex(root))
    return doc


@given(page_table_graphs())
def test_arbitrary_page_table_graphs_terminate(doc: dict[str, Any]) -> None:
    check_file(["translate", "--json"], doc)


def _self_map(root: int, eptp: int | None) -> dict[str, Any]:
    """Every level's entry 0 points back at ``root`` (present, writable, user; EPT: read/write/execute)."""
    value = root | (0x7 if eptp is not None else 0x27)
    doc: dict[str, Any] = {"guest": {**_LONG_MODE, "cr3": hex(root)},
                           "memory": [{"address": hex(root), "value": hex(value)}],
                           "access": {"address": "0x0", "kind": "write"}}
    if eptp is not None:
        doc["eptp"] = hex(eptp)
    return doc


def test_a_table_that_points_at_itself_terminates() -> None:
    """The recursive-mapping trick: PML4[0] -> PML4. The walk reads four levels and stops."""
    r = check_file(["translate", "--json"], _self_map(0x1000, None))
    out = json.loads(r.out)
    assert len(out["references"]) == 4 and out["outcome"] == "ok" and out["hpa"] == "0x1000"


def test_an_ept_and_guest_table_that_point_at_themselves_terminate() -> None:
    """EPT PML4[0] -> itself as well: each guest reference walks four EPT levels, then the data."""
    r = check_file(["translate", "--json"], _self_map(0x1000, 0x101E))
    out = json.loads(r.out)
    assert r.code in (0, 1) and 0 < len(out["references"]) <= 4 * 5 + 5
