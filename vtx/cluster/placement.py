"""Placement on the fewest powered hosts with z3 (a descent of satisfiability queries on the
whole problem, then ``z3.Optimize`` on neighbourhoods), against first-fit decreasing.

The encoding counts instead of assigning. VMs that are interchangeable (same memory, vCPUs,
needs and anti-affinity group) form one *type*; the unknowns are ``n[t][h]``, how many VMs of
type ``t`` host ``h`` carries (only for compatible pairs), and ``on[h]``, whether ``h`` is
powered. A thousand lightly loaded servers come in a few dozen types, so the problem has a few
thousand integer unknowns instead of a hundred thousand Booleans, and none of the symmetry
between identical VMs. Constraints: every VM placed (``sum_h n[t][h] = count(t)``), memory and
vCPU slots within capacity and zero on a host that is off, at most one VM of an anti-affinity
group per host. Symmetry between identical hosts is broken by powering them in order
(``on[h_i+1] -> on[h_i]``, the order first-fit decreasing also uses). The bin-packing lower
bound (:func:`lower_bound`) is asserted, the first-fit-decreasing solution is the starting
point (its host count is the upper bound). The descent asks "a placement on at most k - 1
hosts?" until ``unsat`` proves the optimum; ``z3.Optimize`` (objective: powered hosts) repacks
small groups of hosts on large instances; after the time limit the best placement found and the
best proved lower bound are reported.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence

import attrs
import z3

from vtx.cluster.ffd import first_fit_decreasing, host_order
from vtx.cluster.model import Cluster, ClusterVm, Host, Placement, PowerState
from vtx.errors import InputError
from vtx.typecheck import checked

TypeKey = tuple[int, int, frozenset[str], str]


@attrs.frozen
class PlacementResult:
    """A placement and how good it is known to be.

    ``status``: ``optimal`` (proved: ``proof`` says how), ``bound`` (the start already meets the
    lower bound: optimal without a search), ``timeout`` (the best found when the time limit ran
    out; ``lower_bound`` is what is proved). ``proof``: ``unsat`` (z3 found no placement on one
    host fewer) or ``lower bound`` (the placement meets :func:`lower_bound`); "" without one."""

    placement: Placement
    hosts: int
    lower_bound: int
    status: str
    seconds: float
    start_hosts: int
    types: int = 0
    proof: str = ""

    @property
    def proved_optimal(self) -> bool:
        return self.status in ("optimal", "bound") or self.hosts == self.lower_bound


def _cover(capacities: Sequence[int], demand: int) -> int:
    """The fewest of ``capacities`` whose sum reaches ``demand`` (largest first); a count beyond
    them when even all do not."""
    total = 0
    for k, c in enumerate(sorted(capacities, reverse=True), start=1):
        if total >= demand:
            return k - 1
        total += c
    return len(capacities) if total >= demand else len(capacities) + 1


@checked
def lower_bound(cluster: Cluster, vms: Sequence[ClusterVm] | None = None) -> int:
    """A proved lower bound on the powered hosts any placement of ``vms`` needs: the bin-packing
    bound ``ceil(sum / capacity)`` generalised to unequal hosts (the fewest largest hosts whose
    memory, and vCPU slots, cover the demand), taken also over each set of VMs confined to the
    hosts of one feature set, and the size of the largest anti-affinity group."""
    vms = list(cluster.vms if vms is None else vms)
    hosts = [h for h in cluster.hosts if h.power is PowerState.ON]
    bound = 1 if vms else 0
    for needs, confined in _confinement(vms, hosts).items():
        able = [h for h in hosts if needs <= h.features]
        bound = max(bound, _cover([h.memory_mib for h in able], sum(v.memory_mib for v in confined)),
                    _cover([h.vcpu_slots(cluster.overcommit) for h in able], sum(v.vcpus for v in confined)))
    groups = Counter(v.group for v in vms if v.group)
    return max(bound, max(groups.values(), default=0))


def _confinement(vms: Sequence[ClusterVm], hosts: Sequence[Host]) -> dict[frozenset[str], list[ClusterVm]]:
    """For each feature set some VM needs, the VMs that can run only on hosts offering it."""
    reach = {needs: frozenset(h.name for h in hosts if needs <= h.features) for needs in {v.needs for v in vms}}
    return {needs: [v for v in vms if reach[v.needs] <= names] for needs, names in reach.items()}


@checked
def vm_types(vms: Sequence[ClusterVm]) -> dict[TypeKey, list[str]]:
    """The VMs grouped by what placement sees of them: memory, vCPUs, needs, anti-affinity group."""
    types: dict[TypeKey, list[str]] = defaultdict(list)
    for v in vms:
        types[(v.memory_mib, v.vcpus, v.needs, v.group)].append(v.name)
    return dict(types)


@attrs.frozen
class _Encoding:
    """The counting encoding of placing ``types`` on ``hosts`` (see the module docstring)."""

    solver: z3.Solver | z3.Optimize
    hosts: tuple[Host, ...]
    types: dict[TypeKey, list[str]]
    on: tuple[z3.BoolRef, ...]
    n: dict[tuple[int, int], z3.ArithRef]
    count: z3.ArithRef

    def seed(self, placement: Placement) -> None:
        """Start the search from ``placement`` (z3 initial values)."""
        index = {h.name: i for i, h in enumerate(self.hosts)}
        type_of = {name: t for t, names in enumerate(self.types.values()) for name in names}
        seeded = Counter((type_of[v], index[h]) for v, h in placement.assignment.items() if v in type_of)
        used = set(placement.hosts_used)
        for i, o in enumerate(self.on):
            self.solver.set_initial_value(o, self.hosts[i].name in used)
        for key, x in self.n.items():
            self.solver.set_initial_value(x, seeded.get(key, 0))

    def decode(self, model: z3.ModelRef) -> Placement | None:
        """The placement a model describes (VMs of a type dealt out in name order)."""
        pending = {t: list(names) for t, names in enumerate(self.types.values())}
        assignment = {}
        for (t, i), x in sorted(self.n.items()):
            value = model.eval(x, model_completion=True)
            if not z3.is_int_value(value) or value.as_long() > len(pending[t]):
                return None
            for _ in range(value.as_long()):
                assignment[pending[t].pop(0)] = self.hosts[i].name
        return None if any(pending.values()) else Placement(assignment)


def _encode(cluster: Cluster, vms: Sequence[ClusterVm], hosts: Sequence[Host], *, lower: int, upper: int,
            solver: z3.Solver | z3.Optimize) -> _Encoding:
    """``solver`` given the counting encoding of ``vms`` on ``hosts`` (in power-on order) and
    ``lower <= powered hosts <= upper``."""
    types = vm_types(vms)
    opt = solver
    on = tuple(z3.Bool(f"on_{i}") for i in range(len(hosts)))
    n: dict[tuple[int, int], z3.ArithRef] = {}
    for t, ((memory, vcpus, needs, group), names) in enumerate(types.items()):
        column = []
        for i, h in enumerate(hosts):
            most = min(len(names), h.memory_mib // memory, h.vcpu_slots(cluster.overcommit) // vcpus,
                       1 if group else len(names))
            if not needs <= h.features or most == 0:
                continue
            x = n[t, i] = z3.Int(f"n_{t}_{i}")
            opt.add(x >= 0, x <= z3.If(on[i], most, 0))
            column.append(x)
        if not column:
            raise InputError(f"vm {names[0]}", "unplaced", "no powered host can take it")
        opt.add(z3.Sum(column) == len(names))
    keys = list(types)
    for i, h in enumerate(hosts):
        here = [(keys[t], x) for (t, j), x in n.items() if j == i]
        if not here:
            opt.add(z3.Not(on[i]))
            continue
        opt.add(z3.Sum([k[0] * x for k, x in here]) <= h.memory_mib)
        opt.add(z3.Sum([k[1] * x for k, x in here]) <= h.vcpu_slots(cluster.overcommit))
        for group in {k[3] for k, _ in here if k[3]}:
            opt.add(z3.Sum([x for k, x in here if k[3] == group]) <= 1)
    for i in range(1, len(hosts)):  # identical hosts are powered in order
        a, b = hosts[i - 1], hosts[i]
        if (a.profile, a.memory_mib, a.logical_processors) == (b.profile, b.memory_mib, b.logical_processors):
            opt.add(z3.Implies(on[i], on[i - 1]))
    for needs, confined in _confinement(vms, hosts).items():  # the powered hosts can hold the VMs confined to them
        able = [i for i, h in enumerate(hosts) if needs <= h.features]
        opt.add(z3.Sum([z3.If(on[i], hosts[i].memory_mib, 0) for i in able]) >= sum(v.memory_mib for v in confined))
        opt.add(z3.Sum([z3.If(on[i], hosts[i].vcpu_slots(cluster.overcommit), 0) for i in able])
                >= sum(v.vcpus for v in confined))
    count = z3.Sum([z3.If(o, 1, 0) for o in on])
    opt.add(count >= lower, count <= upper)
    return _Encoding(solver, tuple(hosts), types, on, n, count)


@checked
def place_optimal(cluster: Cluster, *, time_limit_s: float, start: Placement | None = None,
                  seed: int = 0) -> PlacementResult:
    """The placement of every VM on the fewest powered hosts, proved optimal or the best found in
    ``time_limit_s`` seconds, starting from ``start`` (default: first-fit decreasing).

    First z3 descends on the whole problem: "is there a placement on at most k hosts?" for k one
    below the best known, until ``unsat`` (the best is proved optimal), the lower bound is met, or
    its share of the time runs out (all of it on instances of up to :data:`EXACT_VMS` VMs,
    :data:`GLOBAL_SHARE` on larger ones). Then ``z3.Optimize`` repacks small neighbourhoods
    (:func:`_improve`) for the rest of the time. The lower bound reported is :func:`lower_bound`,
    or the best k z3 proved: no placement on k - 1 hosts."""
    began = time.perf_counter()
    deadline = began + time_limit_s
    if start is None:
        start, unplaced = first_fit_decreasing(cluster)
        if unplaced:
            raise InputError(f"vm {unplaced[0]}", "unplaced", "no powered host can take it (capacity, "
                             "compatibility or anti-affinity)")
    start_hosts = len(start.hosts_used)
    lb = lower_bound(cluster)
    n_types = len(vm_types(cluster.vms))

    def done(placement: Placement, status: str, lower: int, proof: str = "") -> PlacementResult:
        return PlacementResult(placement, len(placement.hosts_used), lower, status,
                               round(time.perf_counter() - began, 3), start_hosts, n_types, proof)

    if start_hosts <= lb:
        return done(start, "bound", lb, "lower bound")
    share = 1.0 if len(cluster.vms) <= EXACT_VMS else GLOBAL_SHARE
    hosts = host_order(h for h in cluster.hosts if h.power is PowerState.ON)
    solver = z3.SimpleSolver()
    enc = _encode(cluster, cluster.vms, hosts, lower=lb, upper=start_hosts, solver=solver)
    enc.seed(start)
    best = start
    proof = "lower bound"
    while len(best.hosts_used) > lb:
        left = began + time_limit_s * share - time.perf_counter()
        if left <= 0:
            break
        solver.set(timeout=max(1, int(left * 1000)))
        result = solver.check(enc.count <= len(best.hosts_used) - 1)
        if result == z3.unsat:
            lb, proof = len(best.hosts_used), "unsat"
            break
        found = enc.decode(solver.model()) if result == z3.sat else None
        if found is None or len(found.hosts_used) >= len(best.hosts_used):
            break
        best = found
    if len(best.hosts_used) > lb:
        best = _improve(cluster, best, deadline=deadline, lower=lb, seed=seed)
    if len(best.hosts_used) <= lb:
        return done(best, "optimal", lb, proof)
    return done(best, "timeout", lb)


EXACT_VMS = 60
"""Up to this many VMs z3 gets the whole time limit for the whole problem."""
GLOBAL_SHARE = 0.1
"""On larger instances, the share of the time limit z3 spends on the whole problem first."""
NEIGHBOURHOOD = 8
"""Hosts repacked together in one step of :func:`_improve`."""
STEP_MS = 2000
"""The z3 time limit of one neighbourhood."""


def _fill(cluster: Cluster, placement: Placement, host: Host) -> float:
    vms = [cluster.vm_by_name[v] for v in placement.on(host.name)]
    return max(sum(v.memory_mib for v in vms) / host.memory_mib,
               sum(v.vcpus for v in vms) / host.vcpu_slots(cluster.overcommit))


def _improve(cluster: Cluster, placement: Placement, *, deadline: float, lower: int, seed: int) -> Placement:
    """Large-neighbourhood search with z3 until ``deadline``: repeatedly take the emptiest host
    not yet given up on and :data:`NEIGHBOURHOOD` - 1 others (half the next emptiest, half drawn
    with a seeded generator), and let z3 place their VMs on them with the fewest hosts powered and
    the least memory left on the emptiest. A step that powers a host off or lightens the emptiest
    is kept; a host that cannot be lightened is given up on until every host has been, when the
    search starts over with new draws."""
    rng = random.Random(seed)
    stuck: set[str] = set()
    while time.perf_counter() < deadline and len(placement.hosts_used) > lower:
        used = sorted((cluster.host_by_name[h] for h in placement.hosts_used),
                      key=lambda h: (_fill(cluster, placement, h), h.name))
        victims = [h for h in used if h.name not in stuck]
        if not victims:  # every host given up on: draw new neighbourhoods
            stuck.clear()
            victims = used
        victim = victims[0]
        others = [h for h in used if h is not victim]
        half = NEIGHBOURHOOD // 2
        rest = others[half - 1:]
        chosen = others[:half - 1] + rng.sample(rest, min(len(rest), NEIGHBOURHOOD - half))
        group = host_order([victim, *chosen])
        vms = [cluster.vm_by_name[v] for h in group for v in placement.on(h.name)]
        left = max(0.0, deadline - time.perf_counter())
        opt = z3.Optimize()
        opt.set(timeout=max(1, int(min(STEP_MS, left * 1000))))
        enc = _encode(cluster, vms, group, lower=1, upper=len(group), solver=opt)
        local = Placement({v.name: placement.assignment[v.name] for v in vms})
        enc.seed(local)
        victim_index = group.index(victim)
        on_victim = [x for (t, i), x in enc.n.items() if i == victim_index]
        keys = list(enc.types)
        opt.minimize(enc.count)
        opt.minimize(z3.Sum([keys[t][0] * x for (t, i), x in enc.n.items() if i == victim_index])
                     if on_victim else z3.IntVal(0))
        opt.check()
        found = None
        with contextlib.suppress(z3.Z3Exception):
            found = enc.decode(opt.model())
        before = sum(cluster.vm_by_name[v].memory_mib for v in placement.on(victim.name))
        if found is None:
            stuck.add(victim.name)
            continue
        after = sum(cluster.vm_by_name[v].memory_mib for v in found.on(victim.name))
        if len(found.hosts_used) < len(local.hosts_used) or after < before:
            placement = Placement({**placement.assignment, **found.assignment})
            if len(found.hosts_used) < len(local.hosts_used):
                stuck.clear()
        else:
            stuck.add(victim.name)
    return placement
