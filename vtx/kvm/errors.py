"""Errors of the /dev/kvm backend: the device is missing or unusable, or an ioctl failed."""

from __future__ import annotations

import errno
import os

from vtx.errors import VtxError
from vtx.typecheck import checked

DEVICE = "/dev/kvm"
"""The KVM device node."""


@checked
def errno_text(code: int) -> str:
    """``ENOENT (2): No such file or directory``."""
    return f"{errno.errorcode.get(code, '?')} ({code}): {os.strerror(code)}"


class KvmError(VtxError):
    """An ioctl on a KVM file descriptor failed; ``where`` names /dev/kvm and the ioctl,
    ``value`` the errno."""


class KvmUnavailable(KvmError):  # noqa: N818 - names a condition of the host, like NotEvaluable
    """/dev/kvm is missing, cannot be opened, or speaks another API version."""
