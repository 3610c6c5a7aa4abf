"""vtx benchmarks (not tests): ``python -m bench`` runs them all and writes a JSON report."""
