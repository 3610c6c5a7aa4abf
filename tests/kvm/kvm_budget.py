"""How many hypothesis examples each /dev/kvm property runs.

Measured on the kvm_pvm host (2 cores, Linux 6.18), per example with a fresh VM and hypothesis's
own work: about 41 ms for the KVM_TRANSLATE property and 37 ms for each program property.
CI runs 200 examples each (the issue's floor; about 25 s serially); a profile with more examples
(``deep``: 10,000) wins.
"""

from __future__ import annotations

from hypothesis import settings

KVM_EXAMPLES = max(200, settings.default.max_examples)
