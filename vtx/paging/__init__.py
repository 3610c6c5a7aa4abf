"""Address translation: guest paging, EPT, the two-dimensional walk, AMD nested paging and the
TLBs (SDM Vol. 3A Chapter 5 "Paging", Vol. 3C Chapter 30 "VMX Support for Address Translation";
AMD APM Vol. 2 §15.25 "Nested Paging"). See ``docs/architecture.rst`` for the modules.
"""
