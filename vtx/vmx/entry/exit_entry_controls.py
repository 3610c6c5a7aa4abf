"""Checks on the VM-exit and VM-entry control fields (SDM Vol. 3C §28.2.1.2 "VM-Exit Control Fields"
and §28.2.1.3 "VM-Entry Control Fields"); a violation makes VM entry fail with VMfailValid(7)."""
