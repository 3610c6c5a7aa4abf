"""Tests against /dev/kvm: skipped, with the reason, where KVM is absent or unusable; the KVM
backend (kvm_intel, kvm_amd, kvm_pvm) is printed in the report header."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vtx.kvm.device import Kvm, available, backend

UNAVAILABLE = available()


def pytest_report_header() -> str:
    return f"vtx kvm backend: {backend()} ({'usable' if UNAVAILABLE is None else UNAVAILABLE})"


@pytest.fixture(scope="session")
def kvm() -> Iterator[Kvm]:
    """An open /dev/kvm, or a skip naming why there is none."""
    if UNAVAILABLE is not None:
        pytest.skip(f"/dev/kvm unusable on this host: {UNAVAILABLE}")
    with Kvm() as k:
        yield k

