"""Two-level translation: one guest access, 4-level guest paging over a 4-level EPT, 4-KiB pages."""

from __future__ import annotations

import json
from pathlib import Path

from bench.harness import Result, measure
from vtx.paging import translate_cmd

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "translate-ept.json"


def run() -> list[Result]:
    inp = translate_cmd.parse(json.loads(EXAMPLE.read_text()))
    assert len(translate_cmd.run(inp).references) == 24
    return [measure("2D translation, TLB cold (4-level over 4-level)", lambda: translate_cmd.run(inp), inner=500,
                    target_per_second=50_000)]
