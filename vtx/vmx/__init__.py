"""Intel VT-x: the VMCS, capabilities, VMX operation, VM entry and VM exit."""
