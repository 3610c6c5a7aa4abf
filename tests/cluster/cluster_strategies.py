"""Hypothesis strategies for random clusters: hosts of the presets the executor designs run on,
VMs with seeded demand traces, needs and anti-affinity groups."""

from __future__ import annotations

import random

from hypothesis import strategies as st

from vtx.cluster.model import Cluster, ClusterVm, Host, demand_trace

PROFILES = ("skylake_client", "ivybridge_client", "raptorlake_client")
NONE: frozenset[str] = frozenset()
RARE_NEEDS = (NONE, NONE, NONE, frozenset({"enable_pml"}), frozenset({"use_tsc_scaling"}))
GIB = 1024


@st.composite
def clusters(draw: st.DrawFn, *, max_hosts: int = 6, max_vms: int = 14, slots: int = 6) -> Cluster:
    """A cluster of up to ``max_hosts`` hosts (a few classes of identical hosts) and ``max_vms``
    VMs; every VM has at least one host whose features it needs."""
    classes = draw(st.lists(st.tuples(st.sampled_from(PROFILES), st.sampled_from((8, 16, 32)),
                                      st.sampled_from((2, 4, 8)), st.integers(1, 3)), min_size=1, max_size=3))
    hosts = []
    for c, (profile, gib, lps, count) in enumerate(classes):
        hosts += [Host(f"h{c}-{k}", profile, gib * GIB, lps) for k in range(count)]
    hosts = hosts[:max_hosts]
    offered = frozenset().union(*(h.features for h in hosts))
    seed = draw(st.integers(0, 2**16))
    rng = random.Random(seed)
    vms = []
    for n in range(draw(st.integers(1, max_vms))):
        needs = draw(st.sampled_from(RARE_NEEDS))
        vcpus = draw(st.integers(1, 4))
        vms.append(ClusterVm(f"v{n:02d}", draw(st.sampled_from((1, 2, 3, 4, 6))) * GIB, vcpus,
                             needs if needs <= offered else frozenset(), draw(st.sampled_from(("", "", "a", "b"))),
                             "compute", demand_trace(rng, slots=slots, vcpus=vcpus, load=rng.random() / 3,
                                                    peak=0.4 + rng.random() / 2, pattern="diurnal")))
    overcommit = draw(st.sampled_from((1.0, 2.0, 4.0)))
    return Cluster(tuple(hosts), tuple(vms), overcommit, slots)
