"""Sphinx configuration: reference pages are rendered from spec/ at build time."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "vtx"
author = "the vtx developers"
extensions = ["sphinx.ext.autodoc", "vtxdocs", "vtxdocs_svm", "vtxdocs_organisations", "vtxdocs_results",
              "vtxdocs_mutations", "vtxdocs_proofs", "vtxdocs_cluster"]
html_theme = "furo"
exclude_patterns = ["_build"]
nitpicky = False
# The API reference documents a thousand objects; listing each in the page's table of contents
# (and so in the navigation tree of every page) made the build several times slower.
toc_object_entries = False
