"""The host's TPM: finding one, and what the agent does without one.

A TPM is used when ``VEU_TPM_TCTI`` names one (a TSS TCTI string, e.g.
``swtpm:host=127.0.0.1,port=2321`` or ``device:/dev/tpmrm0``) or the kernel's resource manager
``/dev/tpmrm0`` exists. The TSS bindings (``tpm2-pytss``, the ``tpm`` extra) are imported only
here and in :mod:`agent.tpm.keys`; without them the agent keeps a host key in a file, as before,
and says so. The key material is :mod:`agent.tpm.keys`.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable naming the TPM's TCTI.
TCTI_ENV = "VEU_TPM_TCTI"
#: The kernel's TPM resource manager (safe for several users at once, unlike /dev/tpm0).
DEVICE = Path("/dev/tpmrm0")


class TpmError(Exception):
    """A TPM that cannot be used as asked. ``code`` is stable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def detect() -> str | None:
    """The TCTI of this host's TPM, or None when it has none."""
    named = os.environ.get(TCTI_ENV, "").strip()
    if named:
        return named
    if DEVICE.exists():
        return f"device:{DEVICE}"
    return None


def pytss_missing() -> str | None:
    """Why the TSS bindings cannot be used here (None: they can)."""
    # The TSS logs to stderr by default, also for an NV index that is only probed; the agent
    # reports what fails itself.
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError as exc:
        return f"tpm2-pytss is not installed ({exc}); install veu-attest[tpm]"
    return None
