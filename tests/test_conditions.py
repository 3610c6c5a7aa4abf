import pytest

from vtx.conditions import (
    Always,
    ControlAllowed,
    Cr3TargetSupported,
    InSeam,
    MsrBitfield,
    ProcessorFact,
    VmFunctionAllowed,
    parse_condition,
)
from vtx.errors import SpecError


def test_parse_every_term_kind() -> None:
    cond = parse_condition(
        "ctl:entry.load_ia32_pat | vmfunc:eptp_switching | cpuid:CPUID_FRED | "
        "msr:IA32_VMX_BASIC.true_controls | cr3_target:2 | seam | always", "t")
    assert cond.terms == (
        ControlAllowed("entry", "load_ia32_pat"), VmFunctionAllowed("eptp_switching"),
        ProcessorFact("CPUID_FRED"), MsrBitfield("IA32_VMX_BASIC", "true_controls"),
        Cr3TargetSupported(2), InSeam(), Always())
    assert cond.is_always
    assert str(parse_condition("ctl:proc2.enable_ept", "t")) == "ctl:proc2.enable_ept"


@pytest.mark.parametrize("text", ["", "ctl:proc2", "ctl:proc2.enable_ept |", "sometimes", "cr3_target:x"])
def test_malformed_conditions_are_spec_errors_naming_the_row(text: str) -> None:
    with pytest.raises(SpecError, match="row-7"):
        parse_condition(text, "row-7")
