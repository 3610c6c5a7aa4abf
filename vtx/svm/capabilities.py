"""The SVM capabilities of a processor, read from the shared :class:`~vtx.vmx.capabilities.Capabilities`.

An SVM processor reports SVM in CPUID Fn8000_0001_ECX[SVM] (fact ``CPUID_SVM``), the number of
ASIDs in Fn8000_000A_EBX and its SVM features in Fn8000_000A_EDX (facts ``CPUID_Fn8000_000A_EBX``
/ ``_EDX``; AMD APM Vol. 3 Appendix E "Function 8000_000Ah"). Whatever the profile does not say
is ``None`` (not evaluable), never false.
"""

from __future__ import annotations

from vtx.errors import InputError
from vtx.svm.spec import NASID_BITS, SVM_FEATURES
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities

EDX_FACT = "CPUID_Fn8000_000A_EDX"
EBX_FACT = "CPUID_Fn8000_000A_EBX"


@checked
def has_svm(caps: Capabilities) -> bool | None:
    """Whether the processor implements SVM (CPUID Fn8000_0001_ECX[SVM]); None if unknown."""
    value = caps.fact("CPUID_SVM")
    return None if value is None else bool(value)


def has_feature(caps: Capabilities, name: str) -> bool | None:
    """Whether Fn8000_000A_EDX reports the feature ``name`` (``NPT``, ``VGIF``, ...); None if unknown."""
    feature = SVM_FEATURES.get(name)
    if feature is None:
        raise InputError("feature", name, f"unknown SVM feature (known: {', '.join(SVM_FEATURES.keys())})")
    edx = caps.fact(EDX_FACT)
    return None if edx is None else bool(edx & feature.mask)


@checked
def features(caps: Capabilities) -> frozenset[str] | None:
    """The names of every SVM feature the processor reports; None if Fn8000_000A_EDX is unknown."""
    edx = caps.fact(EDX_FACT)
    return None if edx is None else frozenset(f.name for f in SVM_FEATURES if edx & f.mask)


@checked
def nasid(caps: Capabilities) -> int | None:
    """The number of ASIDs (Fn8000_000A_EBX NASID); None if unknown."""
    ebx = caps.fact(EBX_FACT)
    return None if ebx is None else NASID_BITS.get(ebx)
