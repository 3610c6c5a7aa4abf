"""Checks on the guest segment registers (SDM Vol. 3C §28.3.1.2 "Checks on Guest Segment Registers");
a violation is a VM-entry failure with exit reason 33."""
