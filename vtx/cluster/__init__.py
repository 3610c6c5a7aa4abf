"""The datacenter model: hosts that are machines of the reference executor, VMs with seeded
demand traces, placement (z3 and first-fit-decreasing), HA restart, load balancing and power.

``model`` (hosts, VMs, placements and their rules), ``power`` (the power model of
``spec/cluster/power.toml``), ``ffd`` and ``placement`` (first-fit decreasing and z3), ``hosts``
(the executor machines behind the hosts: the only module touching the executor), ``state`` (what
the management plane acts on), ``ha`` and ``balance`` (failure restart, live migration, power
down), ``simulation`` (a day under a policy), ``scenario`` (the TOML format), ``report`` and
``cluster_cmd`` (``vtx cluster``). The page ``docs/cluster.rst`` describes it.
"""
