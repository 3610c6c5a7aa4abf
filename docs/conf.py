"""Sphinx configuration: reference pages are rendered from spec/ at build time."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "vtx"
author = "the vtx developers"
extensions = ["vtxdocs"]
html_theme = "furo"
exclude_patterns = ["_build"]
nitpicky = False
