"""Argument checks at the public API boundary: a wrong-typed argument is a ``TypeError`` naming it.

:func:`checked` decorates a public function, method or class: it reads the annotations once (with
:func:`typing.get_type_hints`, at the first call, so that forward references resolve) and checks
each argument with plain ``isinstance`` tests before the body runs. A misuse then fails at the
call, with the parameter's name and the expected type, never later as an ``AttributeError`` deep
inside a rule. Values are not judged here: an architecturally invalid VMCS is a legitimate
argument, and a value out of range is a :class:`~vtx.errors.VtxError` of the callee.

What is checked, shallowly (containers by their own type, not their elements):

* classes (``Vmcs``, ``Path``, ``Mapping``, ``Sequence``, ``tuple``...) with ``isinstance``;
  ``bool`` is not accepted for ``int`` or ``float`` unless annotated; ``int`` is accepted for
  ``float``; a ``NewType`` is checked as its base type;
* ``X | Y`` and ``Optional[X]``; ``Literal[...]`` by value (and type); ``Callable`` by
  ``callable``; a protocol that is not runtime-checkable by the presence of its members;
* ``Any``, ``object`` and unconstrained type variables accept anything.

The cost, measured against an undecorated function of the same signature: 0.2-0.4 µs per call of
:func:`vtx.paging.walk2d.translate` (under 1 % of a 2D walk) and under 0.1 µs per call of
:func:`vtx.vmx.entry.evaluate_vm_entry` (0.1 %). The primitives of the executor's inner loop, called
thousands of times per thousand steps, are not decorated (``tests/fuzz/test_api_sweep.py`` lists them
with their call counts): their callers check, or they detect a wrong type where it costs nothing, in
an ``except`` clause (:func:`argument_error`; ``Vmcs.get``, ``Vmcs.set``).
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

F = TypeVar("F", bound=Callable[..., Any])
Accepts = Callable[[object], bool]


def _anything(value: object) -> bool:
    return True


def _protocol(cls: type) -> Accepts:
    """A protocol that is not runtime-checkable: every member it declares is present."""
    members = tuple(sorted({name for base in cls.__mro__[:-1] if base is not typing.Generic
                            for name in (*vars(base), *getattr(base, "__annotations__", {}))
                            if not name.startswith("_")}))
    return lambda value: all(hasattr(value, name) for name in members)


def _parts(hint: object) -> tuple[tuple[type, ...], list[Accepts], str]:
    """``hint`` as classes to test with one ``isinstance``, other tests, and a readable name."""
    if hint is Any or hint is object:
        return (), [_anything], "any value"
    if hint is None or hint is type(None):
        return (type(None),), [], "None"
    if isinstance(hint, TypeVar):
        return _parts(hint.__bound__) if hint.__bound__ is not None else ((), [_anything], "any value")
    supertype = getattr(hint, "__supertype__", None)
    if supertype is not None:  # a NewType
        return _parts(supertype)
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        classes: tuple[type, ...] = ()
        others: list[Accepts] = []
        names: list[str] = []
        for member in typing.get_args(hint):
            c, o, n = _parts(member)
            classes, others, names = classes + c, others + o, [*names, n]
        return classes, others, " | ".join(names)
    if origin is typing.Literal:
        values = typing.get_args(hint)
        return (), [lambda value: any(value == v and type(value) is type(v) for v in values)], \
            " | ".join(map(repr, values))
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return (), [callable], "a callable"
    if origin is type:
        return (type,), [], "a class"
    if origin is not None:  # a parameterized container or generic class: its own type only
        return _parts(origin)
    if hint is float:
        return (float, int), [], "float"
    if isinstance(hint, type):
        if getattr(hint, "_is_protocol", False) and not getattr(hint, "_is_runtime_protocol", False):
            return (), [_protocol(hint)], hint.__name__
        return (hint,), [], hint.__name__
    return (), [_anything], "any value"  # a typing construct vtx does not use for arguments


def _hints(fn: Callable[..., Any], cls: type | None) -> dict[str, object]:
    """The resolved parameter annotations of ``fn`` (of the attrs fields of ``cls``); ones that do not
    resolve (names imported only for type checking) are left out."""
    attrs_class = cls is not None and attrs.has(cls)
    target: Any = cls if attrs_class else fn
    try:
        hints: dict[str, object] = typing.get_type_hints(target)
    except (NameError, TypeError, AttributeError):  # resolve what can be resolved, one annotation at a time
        module_globals = vars(inspect.getmodule(target) or typing)
        hints = {}
        for name, annotation in getattr(target, "__annotations__", {}).items():
            try:
                hints[name] = typing.get_type_hints(types.SimpleNamespace(__annotations__={name: annotation}),
                                                    globalns=module_globals)[name]
            except (NameError, TypeError, SyntaxError, AttributeError):
                continue
    if attrs_class:
        assert cls is not None
        return {a.alias: hints[a.name] for a in attrs.fields(cls) if a.init and a.name in hints}
    return hints


def _test(name: str, hint: object, namespace: dict[str, Any], shown: str | None = None) -> str:
    """The condition, in Python source, under which the value of variable ``name`` is of type ``hint``
    (the objects it uses are put in ``namespace``), or "" if every value is; a failure names ``shown``."""
    classes, others, expected = _parts(hint)
    if (not classes and not others) or _anything in others:
        return ""
    n = len(namespace)
    namespace[f"_expected{n}"] = expected
    parts = []
    if classes:
        namespace[f"_classes{n}"] = classes
        numeric = any(c in (int, float, complex) for c in classes) and bool not in classes
        parts.append(f"isinstance({name}, _classes{n})" + (f" and {name}.__class__ is not bool" if numeric else ""))
    for m, other in enumerate(others):
        namespace[f"_other{n}_{m}"] = other
        parts.append(f"_other{n}_{m}({name})")
    return f"({' or '.join(f'({p})' for p in parts)}) or _fail({shown or repr(name)}, {name}, _expected{n})"


def _specialize(fn: Callable[..., Any], owner: str, cls: type | None, wrapper: Callable[..., Any]) -> None:
    """Compile the checks of ``fn``'s arguments into ``wrapper`` (same signature): one ``isinstance`` line
    per annotated parameter, then the call of ``fn``."""
    hints = _hints(fn, cls)
    namespace: dict[str, Any] = wrapper.__globals__  # the new code runs with the wrapper's globals
    namespace.update(_fn=fn, _fail=functools.partial(_fail, owner))
    lines = []
    for p in inspect.signature(fn).parameters.values():
        if p.name not in hints:
            continue
        if p.kind is p.VAR_POSITIONAL:
            test = _test("_v", hints[p.name], namespace, repr(f"*{p.name}"))
            lines += [f"    for _v in {p.name}:", f"        {test}"] if test else []
        elif p.kind is p.VAR_KEYWORD:
            test = _test("_v", hints[p.name], namespace, "_k")
            lines += [f"    for _k, _v in {p.name}.items():", f"        {test}"] if test else []
        else:
            test = _test(p.name, hints[p.name], namespace)
            lines += [f"    {test}"] if test else []
    source = _source(fn, [*lines, f"    return _fn({_arguments(fn)})"])
    exec(source, namespace)  # generated from the signature alone
    wrapper.__code__ = namespace.pop("_checked").__code__


def argument_error(owner: str, name: str, value: object, expected: str) -> TypeError:
    """The error for argument ``name`` of ``owner`` whose ``value`` is not ``expected`` (for the hot paths
    that detect a wrong type where it costs nothing: in an ``except`` clause or a slow path)."""
    return TypeError(f"{owner}(): argument '{name}' must be {expected}, not {type(value).__name__}")


def _fail(owner: str, name: str, value: object, expected: str) -> bool:
    raise argument_error(owner, name, value, expected)


_STARS: dict[object, str] = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}


def _parameters(fn: Callable[..., Any]) -> str:
    """``fn``'s parameter list without annotations or defaults (the defaults are the wrapper's own)."""
    params = list(inspect.signature(fn).parameters.values())
    out: list[str] = []
    for n, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and (n == 0 or params[n - 1].kind not in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)):
            out.append("*")
        out.append(_STARS.get(p.kind, "") + p.name)
        if p.kind is p.POSITIONAL_ONLY and (n + 1 == len(params) or params[n + 1].kind is not p.POSITIONAL_ONLY):
            out.append("/")
    return ", ".join(out)


def _arguments(fn: Callable[..., Any]) -> str:
    """The call passing ``fn``'s parameters on."""
    return ", ".join(f"{p.name}={p.name}" if p.kind is p.KEYWORD_ONLY else _STARS.get(p.kind, "") + p.name
                     for p in inspect.signature(fn).parameters.values())


def _source(fn: Callable[..., Any], body: list[str]) -> str:
    return "\n".join([f"def _checked({_parameters(fn)}):", *body]) + "\n"


def checked(fn: F) -> F:
    """Check the arguments of ``fn`` (a function, or a class: its ``__init__``) against its annotations
    at every call; a mismatch is a ``TypeError`` naming the parameter, raised before the body runs.

    The annotations are resolved at the first call (forward references are defined by then); the
    checks are then compiled into the wrapper, one ``isinstance`` test per annotated parameter."""
    if isinstance(fn, type):
        cls = fn
        cls.__init__ = _wrap(cls.__init__, cls.__qualname__, cls)  # type: ignore[misc]
        return fn
    return _wrap(fn, fn.__qualname__, None)  # type: ignore[return-value]


def _wrap(fn: Callable[..., Any], owner: str, cls: type | None) -> Callable[..., Any]:
    """A function with ``fn``'s signature whose first call compiles the checks into itself, then calls again."""
    namespace: dict[str, Any] = {}
    exec(_source(fn, ["    _specialize()", f"    return _self({_arguments(fn)})"]), namespace)
    wrapper: types.FunctionType = namespace["_checked"]
    functools.update_wrapper(wrapper, fn)
    wrapper.__defaults__ = getattr(fn, "__defaults__", None)
    wrapper.__kwdefaults__ = getattr(fn, "__kwdefaults__", None)
    namespace["_self"] = wrapper
    namespace["_specialize"] = lambda: _specialize(fn, owner, cls, wrapper)
    return wrapper
