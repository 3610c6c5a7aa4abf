"""The reference executor: a machine of logical processors running VMs under a hypervisor design.

``model`` (the frozen machine and trace values), ``memory_map`` (EPT and guest paging built in
host memory), ``cost`` (the transition cost model of ``spec/machine/costs.toml``), ``designs``
(hosted, bare-metal and hybrid hypervisors), ``executor`` (``run``), ``scenario`` (the TOML
format) and ``run_cmd`` (``vtx run`` and the ``vtx verify`` report).
"""
