"""The ``>>>`` examples of the documentation pages run as doctests, from the docs directory
(so that paths such as ``examples/walk-2d.json`` resolve as the pages say)."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.parts and ">>>" in p.read_text())
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_the_tutorials_have_doctests() -> None:
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {"tutorials/why-entry-failed.rst", "tutorials/two-level-translation.rst"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_doctests(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DOCS)
    result = doctest.testfile(str(page), module_relative=False, optionflags=FLAGS, raise_on_error=False,
                              verbose=False, encoding="utf-8")
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {page.name} failed (see above)"
