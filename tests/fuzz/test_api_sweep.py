"""Every public callable of vtx, called with one argument of a clearly wrong type.

The sweep walks the ``vtx`` packages, collects the public functions, classes and methods (no leading
underscore, defined in the module, listed in ``__all__`` where the module has one), builds valid
example arguments from their annotations (:data:`EXAMPLES`, then attrs classes and other annotated
classes from their own fields, recursively), and replaces ONE argument at a time with a wrong-typed
value: an instance of an unrelated class, ``None`` where the annotation does not allow it, a string
for an ``int``. The oracle: the call returns, or raises a ``TypeError`` that names the parameter and
is raised at the boundary (by :mod:`vtx.typecheck`, attrs' validators, or the callee's own module),
or a :class:`~vtx.errors.VtxError` naming where and the rule. An ``AttributeError``, ``KeyError``,
``IndexError``, ``ValueError`` (or a ``TypeError`` that does not name the argument) is a failure.

A callable one of whose parameters has no example (argparse namespaces, z3 terms, callbacks,
/dev/kvm handles) is not collectable; the collectable ones that are skipped anyway are listed in
:data:`SKIPPED` with the reason.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import itertools
import pkgutil
import random
import re
import time
import traceback
import types
import typing
from collections.abc import Callable, Hashable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
from fuzz_harness import TIME_LIMIT_S, scratch

import vtx
from vtx.errors import VtxError
from vtx.machine import model
from vtx.machine.scenario import Scenario, build_machine, parse_scenario
from vtx.paging.ept import Ept, ept_from_eptp
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import VMCS_FIELDS
from vtx.svm import checks as svm_checks
from vtx.svm.templates import build_svm_template
from vtx.svm.vmcb import Vmcb
from vtx.typecheck import checked
from vtx.vmx import entry
from vtx.vmx.capabilities import Capabilities, load_preset
from vtx.vmx.operation import LogicalProcessor, MemoryReader
from vtx.vmx.templates import build_template
from vtx.vmx.vmcs import Vmcs

MIN_SWEPT = 690
"""The sweep reaches at least this many callables (a guard against the collection silently shrinking)."""

SKIPPED_MODULES: dict[str, str] = {
    "vtx.kvm.device": "opens /dev/kvm and issues ioctls; its argument checks are the kernel's (tests/kvm/)",
    "vtx.kvm.runner": "runs programs on /dev/kvm (tests/kvm/)",
    "vtx.cli": "argparse plumbing: main(argv) is fuzzed through every verb by tests/fuzz/test_fuzz_*.py",
}
"""Modules not swept, with the reason."""


def _registered_checks() -> dict[Callable[..., Any], str]:
    reason = ("a registered rule of the evaluator's inner loop, called only by {} (which checks its arguments at "
              "the boundary); a check per rule would slow every VM entry")
    out: dict[Callable[..., Any], str] = {}
    for check in entry.REGISTRY.values():
        out[check.fn] = reason.format("evaluate_vm_entry / evaluate_every_check")
    for svm_check in svm_checks.REGISTRY.values():
        out[svm_check.fn] = reason.format("vtx.svm.vmrun.vmrun")
    return out


_HOT = "a primitive of the executor's inner loop (about {} calls in 2,700 steps of the default scenario); " \
    "argument checks on the inner loop made the executor 50 % slower: its callers check at the boundary"
SKIPPED: dict[str, str] = {
    "vtx.bits.mask": _HOT.format("7,900"),
    "vtx.bits.BitRange.get": _HOT.format("3,500"),
    "vtx.bits.BitRange.put": _HOT.format("1,100"),
    "vtx.machine.model.Machine.vm": _HOT.format("3,900"),
    "vtx.machine.model.Machine.vcpu": _HOT.format("1,100"),
    "vtx.machine.model.Machine.processor": _HOT.format("1,200"),
    "vtx.machine.executor.in_guest": _HOT.format("1,200"),
    "vtx.paging.memory.PhysicalMemory.read_int": _HOT.format("3,400"),
    "vtx.paging.memory.PhysicalMemory.entry_views": _HOT.format("3,300"),
    "vtx.paging.memory.PhysicalMemory.read_entry": _HOT.format("3,000"),
    "vtx.vmx.exits.rules.is_set": _HOT.format("1,900"),
    "vtx.vmx.entry.common.ControlFlag.on": _HOT.format("1,700"),
    "vtx.vmx.entry.common.is_canonical_for": _HOT.format("1,200"),
    "vtx.machine.executor.guest_context": _HOT.format("400"),
    "vtx.machine.executor.paging_state": _HOT.format("190"),
    "vtx.machine.executor.translate": _HOT.format("190"),
    "vtx.vmx.eptp.ept_in_force": _HOT.format("450"),
    "vtx.machine.executor.memory_op": _HOT.format("190"),
    "vtx.machine.executor.in_pv_guest": _HOT.format("990"),
    "vtx.machine.executor.resolved": _HOT.format("390"),
    "vtx.machine.executor.perform": _HOT.format("110"),
    "vtx.machine.model.Machine.with_vcpu": _HOT.format("650"),
    "vtx.machine.model.Machine.with_vm": _HOT.format("700"),
    "vtx.machine.model.Machine.with_lp": _HOT.format("810"),
    "vtx.vmx.entry.applicability.conditions_holding": _HOT.format("240"),
    "vtx.vmx.entry.applicability.condition_of": _HOT.format("800"),
    "vtx.vmx.entry.applicability.conditions": _HOT.format("700"),
    "vtx.vmx.vmcs.Vmcs": _HOT.format("710"),
    "vtx.vmx.vmcs.slot": _HOT.format("790"),
    "vtx.paging.ept.Ept": _HOT.format("430"),
    "vtx.paging.ept.walk_ept": _HOT.format("770"),
    "vtx.paging.ept.allows": _HOT.format("210"),
    "vtx.paging.ept.qualification": _HOT.format("170"),
    "vtx.paging.ept.memory_type_name": _HOT.format("210"),
    "vtx.paging.ept.effective_memory_type": _HOT.format("210"),
    "vtx.paging.memory.PhysicalMemory.write": _HOT.format("490"),
    "vtx.paging.memory.PhysicalMemory.write_int": _HOT.format("490"),
    "vtx.paging.memory.PhysicalMemory.set_bits": _HOT.format("630"),
    "vtx.vmx.entry.common.control_flag": _HOT.format("240"),
    "vtx.vmx.entry.common.is_unrestricted_guest": _HOT.format("350"),
    "vtx.vmx.entry.common.is_ia32e_guest": _HOT.format("260"),
    "vtx.vmx.entry.common.is_64bit_guest": _HOT.format("360"),
    "vtx.vmx.entry.common.is_64bit_host": _HOT.format("260"),
    "vtx.vmx.entry.common.ia32e_guest_sets_cr4_fred": _HOT.format("260"),
    "vtx.vmx.entry.common.fixed_bit_problems": _HOT.format("350"),
    "vtx.vmx.entry.common.linear_width": _HOT.format("610"),
    "vtx.vmx.entry.common.non_canonical": _HOT.format("430"),
    "vtx.vmx.entry.common.upper_bits_equal": _HOT.format("180"),
    "vtx.vmx.entry.common.required_msr_field": _HOT.format("260"),
    "vtx.vmx.capabilities.Capabilities.allowed_settings": _HOT.format("500"),
    "vtx.bits.is_canonical": _HOT.format("420"),
    "vtx.bits.fits_physical_width": _HOT.format("330"),
    "vtx.vmx.operation.physical_address_width": _HOT.format("390"),
    "vtx.paging.guest.Access": _HOT.format("190"),
    "vtx.paging.guest.paging_mode": _HOT.format("340"),
    "vtx.paging.guest.compile_for": _HOT.format("340"),
    "vtx.paging.guest.access_allowed": _HOT.format("140"),
    "vtx.paging.guest.rights_allow": _HOT.format("260"),
    "vtx.paging.guest.pat_index": _HOT.format("190"),
    "vtx.paging.guest.linear_address_fault": _HOT.format("340"),
    "vtx.paging.guest.crosses_page": _HOT.format("390"),
    "vtx.paging.walk2d.translate_readable": _HOT.format("140"),
    "vtx.vmx.instructions.vmsucceed": _HOT.format("100"),
    "vtx.vmx.entry.EntryContext.from_processor": _HOT.format("240"),
    "vtx.vmx.entry.EntryEvaluation.update": _HOT.format("240"),
    "vtx.guest_ops.Instruction": _HOT.format("200"),
    "vtx.guest_ops.MemoryAccess": _HOT.format("190"),
    "vtx.paging.walk2d.translate_page": "the layer under vtx.paging.walk2d.translate (which checks), called by it on "
                                        "every translation: a second check would double the boundary's cost",
    "vtx.paging.walk2d.translate_fast": "the fast path of vtx.paging.walk2d.translate_page (which checks), "
                                        "called by it on every translation",
    "vtx.vmx.exits.rules.privilege_fault": "the dispatch of the exit rules' privilege checks, shared by "
                                           "vtx.vmx.exits.rules.decide and vtx.svm.intercepts.decide (which check); "
                                           "SVM passes it operations its annotation (the VMX vocabulary) omits",
}
"""Collectable callables (by qualified name) that are not swept, with the reason."""


# ------------------------------------------------------------------ examples


@cache
def caps() -> Capabilities:
    return load_preset("skylake_client")


@cache
def scenario() -> Scenario:
    return parse_scenario({"seed": 1, "steps": 4, "vm": [{"name": "a", "program": [{"op": "cpuid"}]}]})


@cache
def machine() -> model.Machine:
    return build_machine(scenario(), "hosted")


EXAMPLES: dict[object, Callable[[], object]] = {
    int: lambda: 0,
    float: lambda: 0.5,
    bool: lambda: False,
    str: lambda: "long-mode",
    bytes: lambda: bytes(8),
    Path: lambda: scratch() / "api-sweep.json",
    random.Random: lambda: random.Random(0),
    Capabilities: caps,
    Vmcs: lambda: build_template("long-mode", caps()),
    Vmcb: lambda: build_svm_template("long-mode", load_preset("amd_genoa_server")),
    PhysicalMemory: lambda: PhysicalMemory().write_int(HostPhysAddr(0x1000), 8, 0x2003),
    Scenario: scenario,
    model.Machine: machine,
    model.Vm: lambda: machine().vms[0],
    model.Vcpu: lambda: machine().vms[0].vcpus[0],
    LogicalProcessor: lambda: machine().processor(0),
    entry.EntryContext: entry.EntryContext,
    Ept: lambda: ept_from_eptp(build_template("long-mode", caps(), features=["enable_ept"]).get(
        VMCS_FIELDS["EPT_POINTER"]), caps()),
    MemoryReader: lambda: example(PhysicalMemory),
    type(VMCS_FIELDS["GUEST_CR0"]): lambda: VMCS_FIELDS["GUEST_CR0"],
}
"""Valid example values by annotated type (the roots; other classes are built from their fields)."""

NO_EXAMPLE: frozenset[object] = frozenset({argparse.Namespace, argparse.ArgumentParser})
"""Types the sweep never builds: CLI plumbing (see :data:`SKIPPED_MODULES`)."""


class Wrong:
    """An unrelated class: an instance of it is a wrong argument for every annotation but ``Any``/``object``."""

    def __repr__(self) -> str:
        return "Wrong()"


class NoExample(Exception):  # noqa: N818 - a control-flow signal of the example builder
    """No example value can be built for an annotation."""


_MAX_DEPTH = 4


def _accepts_anything(hint: object) -> bool:
    return hint is Any or hint is object or hint is Hashable or (isinstance(hint, typing.TypeVar) and
                                                                 hint.__bound__ is None)


def example(hint: object, depth: int = 0) -> object:
    """A valid value of the annotated type ``hint``."""
    return _example(hint, depth)


_built: dict[object, object] = {}


def _example(hint: object, depth: int) -> object:
    key = hint if isinstance(hint, Hashable) else repr(hint)
    if key not in _built:
        try:
            _built[key] = _make(hint, depth)
        except NoExample:
            _built[key] = NoExample
    if _built[key] is NoExample:
        raise NoExample(hint)
    return _built[key]


def _make(hint: object, depth: int) -> object:
    if depth > _MAX_DEPTH or hint in NO_EXAMPLE:
        raise NoExample(hint)
    if hint in EXAMPLES:
        return EXAMPLES[hint]()
    if _accepts_anything(hint):
        return 1
    if hint is None or hint is type(None):
        return None
    supertype = getattr(hint, "__supertype__", None)
    if supertype is not None:
        return _example(supertype, depth)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        for member in args:
            try:
                return _example(member, depth)
            except NoExample:
                continue
        raise NoExample(hint)
    if origin is typing.Literal:
        return args[0]
    if origin is tuple:
        if (len(args) == 2 and args[1] is Ellipsis) or not args:
            return ()
        return tuple(_example(a, depth + 1) for a in args)
    if origin in (list, typing.Sequence, Iterator) or (origin is not None and origin.__name__ in (
            "Sequence", "Iterable", "Collection", "list", "Iterator")):
        return [] if origin is not Iterator and getattr(origin, "__name__", "") != "Iterator" else iter(())
    if origin is not None and getattr(origin, "__name__", "") in ("Mapping", "dict", "MutableMapping"):
        return {}
    if origin in (frozenset, set) or getattr(origin, "__name__", "") in ("Set", "AbstractSet"):
        return origin() if origin in (frozenset, set) else frozenset()
    if not isinstance(hint, type):
        raise NoExample(hint)
    if issubclass(hint, enum.Enum):
        return next(iter(hint))
    if issubclass(hint, BaseException) or inspect.isabstract(hint) or getattr(hint, "_is_protocol", False):
        raise NoExample(hint)
    return _construct(hint, depth)


def _construct(cls: type, depth: int) -> object:
    """``cls`` built from examples of its required constructor parameters."""
    try:
        hints = typing.get_type_hints(cls) if attrs.has(cls) else typing.get_type_hints(cls.__init__)
        parameters = inspect.signature(cls).parameters.values()
    except (NameError, TypeError, ValueError) as e:
        raise NoExample(cls) from e
    kwargs: dict[str, object] = {}
    aliases = {a.alias: a.name for a in attrs.fields(cls)} if attrs.has(cls) else {}
    for p in parameters:
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(aliases.get(p.name, p.name), p.empty)
        if hint is p.empty:
            raise NoExample(cls)
        kwargs[p.name] = _example(hint, depth + 1)
    try:
        return cls(**kwargs)
    except Exception as e:  # an example that breaks a rule of cls: none can be built this way
        raise NoExample(cls) from e


def wrong_values(hint: object) -> list[object]:
    """Values whose type ``hint`` does not allow: a :class:`Wrong`, ``None`` unless optional, a str for an int."""
    if _accepts_anything(hint):
        return []
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    out: list[object] = [Wrong()]
    if all(m is not None and m is not type(None) for m in members):
        out.append(None)
    bases = {getattr(m, "__supertype__", m) for m in members}
    if int in bases and str not in bases and not any(typing.get_origin(m) is typing.Literal for m in members):
        out.append("7")
    return out


# ------------------------------------------------------------------ collection


@attrs.frozen
class Target:
    """One public callable: how to call it and where it is defined."""

    name: str
    module: types.ModuleType
    function: Callable[..., Any]
    signature_of: Callable[..., Any]
    owner: type | None
    bound: bool

    def hints(self) -> dict[str, object]:
        if self.owner is not None and self.function is self.owner:
            return typing.get_type_hints(self.owner) if attrs.has(self.owner) else \
                typing.get_type_hints(self.owner.__init__)
        return typing.get_type_hints(self.signature_of)


def _public(module: types.ModuleType) -> Iterator[tuple[str, object]]:
    names = getattr(module, "__all__", None)
    for name in names if names is not None else sorted(vars(module)):
        value = getattr(module, name, None)
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__ and \
                (inspect.isfunction(value) or inspect.isclass(value)):
            yield name, value


@cache
def targets() -> tuple[Target, ...]:
    out: list[Target] = []
    for info in pkgutil.walk_packages(vtx.__path__, "vtx."):
        if info.name in SKIPPED_MODULES:
            continue
        module = importlib.import_module(info.name)
        for name, value in _public(module):
            qualified = f"{module.__name__}.{name}"
            if inspect.isfunction(value):
                out.append(Target(qualified, module, value, value, None, False))
                continue
            assert isinstance(value, type)
            if issubclass(value, BaseException | enum.Enum) or getattr(value, "_is_protocol", False):
                continue
            out.append(Target(qualified, module, value, value, value, False))
            for member, raw in vars(value).items():
                if member.startswith("_"):
                    continue
                if isinstance(raw, classmethod | staticmethod):
                    out.append(Target(f"{qualified}.{member}", module, getattr(value, member), raw.__func__, value,
                                      False))
                elif inspect.isfunction(raw):
                    out.append(Target(f"{qualified}.{member}", module, raw, raw, value, True))
    return tuple(out)


@attrs.frozen
class Plan:
    """How to sweep one target: its valid arguments and the parameters to replace."""

    target: Target
    args: tuple[object, ...]
    kwargs: dict[str, object]
    parameters: tuple[tuple[str, object, bool], ...]
    """(name, annotation, keyword-only) of each parameter that has wrong values."""


def plan(target: Target) -> Plan | None:
    """The valid call of ``target`` (None if an argument has no example)."""
    if target.function in _registered_checks():
        return None
    try:
        hints = target.hints()
        signature = inspect.signature(target.function)  # a classmethod's is bound: no cls
    except (NameError, TypeError, ValueError):
        return None
    aliases = {a.alias: a.name for a in attrs.fields(target.owner)} \
        if target.owner is not None and target.function is target.owner and attrs.has(target.owner) else {}
    params = list(signature.parameters.values())
    if target.bound:
        params = params[1:]
    args: list[object] = []
    kwargs: dict[str, object] = {}
    swept: list[tuple[str, object, bool]] = []
    try:
        this = [example(target.owner)] if target.bound else []
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            hint = hints.get(aliases.get(p.name, p.name), p.empty)
            if hint is p.empty:
                if p.default is p.empty:
                    return None
                continue
            keyword = p.kind is p.KEYWORD_ONLY
            if p.default is p.empty:
                value = example(hint)
                if keyword:
                    kwargs[p.name] = value
                else:
                    args.append(value)
            if wrong_values(hint):
                swept.append((p.name, hint, keyword))
    except NoExample:
        return None
    return Plan(target, (*this, *args), kwargs, tuple(swept))


@cache
def plans() -> dict[str, Plan]:
    out = {}
    for t in targets():
        if t.name in SKIPPED:
            continue
        p = plan(t)
        if p is not None and p.parameters:
            out[t.name] = p
    return out


# ------------------------------------------------------------------ oracle


_BOUNDARY_FILES = ("vtx/typecheck.py", "/attr/", "<attrs generated")


def _call(p: Plan, name: str, keyword: bool, value: object) -> None:
    """Call the target with parameter ``name`` replaced by ``value``; judge the outcome."""
    target = p.target
    kwargs = dict(p.kwargs)
    args = list(p.args)
    if keyword:
        kwargs[name] = value
    else:
        positional = [q.name for q in inspect.signature(target.function).parameters.values()
                      if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
        index = positional.index(name)
        if index < len(args):
            args[index] = value
        else:
            kwargs[name] = value
    fn = target.function if not target.bound else getattr(type(args[0]), target.function.__name__)
    start = time.monotonic()
    try:
        result = fn(*args, **kwargs)
        if inspect.isgenerator(result) or isinstance(result, Iterator):
            list(itertools.islice(result, 1000))
    except VtxError as e:
        assert e.where and e.rule, f"{target.name}({name}={value!r}): a VtxError without where or rule: {e}"
    except TypeError as e:
        where = traceback.extract_tb(e.__traceback__)[-1].filename
        module_file = str(getattr(target.module, "__file__", ""))
        assert re.search(rf"(?<![A-Za-z0-9]){re.escape(name.lstrip('_'))}\b", str(e)), \
            f"{target.name}({name}={value!r}): a TypeError that does not name the argument:\n" + \
            "".join(traceback.format_exception(e))
        assert where == module_file or any(b in where for b in _BOUNDARY_FILES), \
            f"{target.name}({name}={value!r}): a TypeError raised past the boundary, in {where}"
    except Exception as e:  # anything else escaped from inside: the bug this sweep looks for
        pytest.fail(f"{target.name}({name}={value!r}) raised {type(e).__name__} inside:\n" +
                    "".join(traceback.format_exception(e)))
    assert time.monotonic() - start < TIME_LIMIT_S, f"{target.name}({name}={value!r}) is too slow"


@pytest.mark.parametrize("name", sorted(plans()))
def test_wrong_typed_argument_fails_at_the_boundary(name: str) -> None:
    p = plans()[name]
    for parameter, hint, keyword in p.parameters:
        for value in wrong_values(hint):
            _call(p, parameter, keyword, value)


def test_the_sweep_covers_most_of_the_public_api() -> None:
    assert len(plans()) >= MIN_SWEPT, f"the sweep reaches {len(plans())} callables"


def test_skipped_names_exist() -> None:
    names = {t.name for t in targets()}
    assert set(SKIPPED) <= names, set(SKIPPED) - names


# ------------------------------------------------------------------ the checks themselves


@checked
def _annotated(address: HostPhysAddr, ratio: float, flag: bool, mode: Literal["a", "b"], memory: MemoryReader,  # noqa: PLR0917
               /, name: str | None, *values: int, path: Path = Path(), **options: bytes) -> int:
    return 0


@checked
@attrs.frozen
class _Model:
    count: int
    _label: str = "x"


def test_checked_accepts_what_the_annotations_allow() -> None:
    assert _annotated(HostPhysAddr(1), 1, True, "a", PhysicalMemory(), None, 1, 2, path=Path("p"), o=b"") == 0
    assert _annotated(1, 0.5, False, "b", example(PhysicalMemory), "n") == 0
    assert attrs.evolve(_Model(1, label="y"), count=2).count == 2


@pytest.mark.parametrize(("args", "kwargs", "named"), [
    ((True, 1.0, True, "a", PhysicalMemory(), None), {}, "address"),  # bool is not an int
    ((1, True, True, "a", PhysicalMemory(), None), {}, "ratio"),
    ((1, 1.0, 1, "a", PhysicalMemory(), None), {}, "flag"),  # nor an int a bool
    ((1, 1.0, True, "c", PhysicalMemory(), None), {}, "mode"),
    ((1, 1.0, True, "a", Wrong(), None), {}, "memory"),  # a protocol: its members are missing
    ((1, 1.0, True, "a", PhysicalMemory(), 3), {}, "name"),
    ((1, 1.0, True, "a", PhysicalMemory(), None, 1, "2"), {}, "*values"),
    ((1, 1.0, True, "a", PhysicalMemory(), None), {"path": "p"}, "path"),
    ((1, 1.0, True, "a", PhysicalMemory(), None), {"extra": "s"}, "extra"),
])
def test_checked_names_the_wrong_argument(args: tuple[object, ...], kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(TypeError, match=re.escape(f"_annotated(): argument '{named}' must be ")):
        _annotated(*args, **kwargs)


def test_checked_class_names_the_wrong_field() -> None:
    with pytest.raises(TypeError, match=re.escape("_Model(): argument 'count' must be int, not str")):
        _Model("1")
    with pytest.raises(TypeError, match="argument 'label' must be str, not int"):
        attrs.evolve(_Model(1), label=2)


def test_vmcs_get_and_set_name_a_wrong_field() -> None:
    """Regression: ``vmcs.get("GUEST_CR0")`` was an AttributeError about ``encoding`` from inside."""
    vmcs = example(Vmcs)
    assert isinstance(vmcs, Vmcs)
    with pytest.raises(TypeError, match=re.escape("Vmcs.get(): argument 'field' must be VmcsField, not str")):
        vmcs.get("GUEST_CR0")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=re.escape("Vmcs.set(): argument 'field' must be VmcsField, not str")):
        vmcs.set("GUEST_CR0", 0)  # type: ignore[arg-type]


# ------------------------------------------------------------------ frozen values


@cache
def frozen_samples() -> dict[str, object]:
    """An example of every public attrs class the examples can build, by qualified name."""
    out = {}
    for t in targets():
        if t.owner is not None and t.function is t.owner and attrs.has(t.owner) and attrs.fields(t.owner):
            try:
                out[t.name] = example(t.owner)
            except NoExample:
                continue
    return out


MUST_BE_FROZEN = ("vtx.vmx.vmcs.Vmcs", "vtx.vmx.capabilities.Capabilities", "vtx.paging.memory.PhysicalMemory",
                  "vtx.machine.model.Machine", "vtx.machine.model.Vm", "vtx.machine.model.Vcpu",
                  "vtx.vmx.operation.LogicalProcessor", "vtx.svm.vmcb.Vmcb", "vtx.outcomes.VmFailValid",
                  "vtx.vmx.exits.info.ExitInfo", "vtx.vmx.entry.EntryContext", "vtx.paging.outcomes.Translated")
"""The model values the frozen sweep must reach (a guard against its examples silently shrinking)."""


def test_frozen_sweep_reaches_the_model_values() -> None:
    assert set(MUST_BE_FROZEN) <= set(frozen_samples()), set(MUST_BE_FROZEN) - set(frozen_samples())


@pytest.mark.parametrize("name", sorted(frozen_samples()))
def test_setting_an_attribute_of_a_model_value_is_refused(name: str) -> None:
    value = frozen_samples()[name]
    for field in attrs.fields(type(value)):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(value, field.name, getattr(value, field.name))
