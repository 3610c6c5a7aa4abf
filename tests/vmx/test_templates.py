"""Templates pass every VM-entry check under every preset that can run them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx.bits import mask
from vtx.errors import InputError
from vtx.spec import VMCS_FIELDS, VmcsField
from vtx.vmx.capabilities import load_preset
from vtx.vmx.entry import evaluate_vm_entry
from vtx.vmx.templates import FEATURE_FIELDS, TEMPLATES, build_template

PRESETS = ["penryn_server", "ivybridge_client", "skylake_client", "raptorlake_client", "emeraldrapids_server", "max"]


def runnable(preset: str, template: str) -> bool:
    caps = load_preset(preset)
    needs = {"real-mode": ["unrestricted_guest", "enable_ept"], "pae": ["enable_ept"]}.get(template, [])
    return all(caps.allows("proc2", f) for f in needs)


CASES = [(p, t) for p in PRESETS for t in TEMPLATES if runnable(p, t)]


@pytest.mark.parametrize(("preset", "template"), CASES)
def test_template_passes_every_check(preset: str, template: str) -> None:
    caps = load_preset(preset)
    verdict = evaluate_vm_entry(build_template(template, caps), caps)
    assert verdict.violations == () and verdict.not_evaluable == ()
    assert verdict.succeeds


@pytest.mark.parametrize("feature", sorted(FEATURE_FIELDS))
def test_every_feature_template_passes_under_max(feature: str) -> None:
    caps = load_preset("max")
    verdict = evaluate_vm_entry(build_template("long-mode", caps, features=[feature]), caps)
    assert verdict.violations == (), verdict.violations


def test_template_rejects_unknown_names_and_forbidden_features() -> None:
    with pytest.raises(InputError, match="known templates"):
        build_template("smm-mode", load_preset("max"))
    with pytest.raises(InputError, match="do not allow"):
        build_template("long-mode", load_preset("penryn_server"), features=["enable_ept"])
    with pytest.raises(InputError, match="can turn on"):
        build_template("long-mode", load_preset("max"), features=["warp_drive"])


MAX = load_preset("max")
MUTABLE = [f for f in VMCS_FIELDS if MAX.field_exists(f) and not f.is_read_only]


@given(st.sampled_from(TEMPLATES), st.sampled_from(MUTABLE), st.integers(0, mask(64)))
def test_single_field_mutation_is_valid_or_blames_the_field(template: str, field: VmcsField, value: int) -> None:
    """From any template, a random one-field mutation either keeps the entry valid or produces
    violations each of which lists the mutated field among the fields it reads."""
    vmcs = build_template(template, MAX)
    mutated = vmcs.set(field, value & mask(field.bits))
    verdict = evaluate_vm_entry(mutated, MAX)
    for v in verdict.violations:
        assert field.name in v.check.fields, (v.check_id, field.name, v.message)
