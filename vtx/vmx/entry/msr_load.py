"""VM-entry MSR loading (SDM Vol. 3C §28.4 "Loading MSRs"); a failure is a VM-entry failure with exit
reason 34 and the 1-based index of the failing entry as qualification."""
