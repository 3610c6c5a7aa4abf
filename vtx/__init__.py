"""vtx: an executable, checkable specification of Intel VT-x and AMD-V.

The architecture facts live in ``spec/`` (machine-readable SDM/APM tables) and are loaded by
:mod:`vtx.spec`. The models (:mod:`vtx.vmx`) are frozen ``attrs`` values; transitions return new
values and architectural outcomes (:mod:`vtx.outcomes`) rather than raising.
"""

__version__ = "0.1.0"
