"""Checks on the VM-execution control fields (SDM Vol. 3C §28.2.1.1 "VM-Execution Control Fields"); a
violation makes VM entry fail with VMfailValid(7)."""
