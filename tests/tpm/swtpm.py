"""A real software TPM for tests: Debian's swtpm, manufactured by swtpm_setup with endorsement
key certificates from a certificate authority of the test's own (swtpm_localca), one swtpm
process per test on free loopback ports.

Nothing here imitates a TPM: the agent and tpm2-tools talk to the swtpm process through the TSS
"swtpm" TCTI, and a reboot is swtpm's own (``swtpm_ioctl -i``: the TPM is re-initialized, as at
power-on). Where a tool is missing, :func:`require_swtpm` skips the test with the reason, except
in CI (``CI=true``), where it fails: CI installs them (scripts/setup).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: The programs the fixture runs (Debian: swtpm, swtpm-tools, tpm2-tools).
TOOLS = ("swtpm", "swtpm_setup", "swtpm_ioctl", "swtpm_localca", "tpm2_startup", "tpm2_shutdown")
#: The NV index of the RSA 2048 endorsement key's certificate (TCG EK Credential Profile).
EK_RSA_CERT_INDEX = 0x01C00002
#: How long a starting swtpm may take to listen; generous for a shared 2-core machine.
_START_DEADLINE_S = 60.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason}; CI must run the TPM tests (scripts/setup installs them)")
    pytest.skip(reason)


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def require_swtpm() -> None:
    """Skip (or, in CI, fail) unless swtpm and tpm2-tools are installed."""
    missing = missing_tools()
    if missing:
        _unavailable(
            f"swtpm is not installed ({', '.join(missing)} missing: "
            "apt-get install swtpm swtpm-tools tpm2-tools)"
        )


def require_pytss() -> None:
    """Skip (or, in CI, fail) unless tpm2-pytss imports."""
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError as exc:
        _unavailable(f"tpm2-pytss is not importable ({exc}): pip install 'veu-attest[tpm]'")


def free_port_pair() -> int:
    """A free loopback port P whose neighbour P + 1 is free too: the TSS swtpm TCTI reaches the
    control channel at the command port + 1."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port


@dataclass(frozen=True)
class LocalCA:
    """swtpm_localca's certificate authority, in a directory of the test's own."""

    root: Path

    @property
    def root_cert(self) -> Path:
        return self.root / "ca" / "swtpm-localca-rootca-cert.pem"

    @property
    def issuer_cert(self) -> Path:
        return self.root / "ca" / "issuercert.pem"

    @property
    def setup_config(self) -> Path:
        return self.root / "swtpm_setup.conf"

    def pem_dir(self, into: Path) -> Path:
        """A directory of this CA's PEM certificates (root and issuer), as a verifier's vendor
        CA store takes them."""
        into.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.root_cert, into / "swtpm-localca-root.pem")
        shutil.copy(self.issuer_cert, into / "swtpm-localca-issuer.pem")
        return into


def make_ca(root: Path) -> LocalCA:
    """Config files for swtpm_setup and swtpm_localca that keep the CA under ``root`` (the
    system's defaults write to /var/lib/swtpm-localca); the CA itself is made on first use."""
    ca = root / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    (root / "swtpm-localca.conf").write_text(
        f"statedir = {ca}\n"
        f"signingkey = {ca}/signkey.pem\n"
        f"issuercert = {ca}/issuercert.pem\n"
        f"certserial = {ca}/certserial\n"
    )
    (root / "swtpm-localca.options").write_text(
        "--platform-manufacturer VEU-Attest-tests\n--platform-version 2.1\n--platform-model swtpm\n"
    )
    (root / "swtpm_setup.conf").write_text(
        f"create_certs_tool = {shutil.which('swtpm_localca') or '/usr/bin/swtpm_localca'}\n"
        f"create_certs_tool_config = {root}/swtpm-localca.conf\n"
        f"create_certs_tool_options = {root}/swtpm-localca.options\n"
        "active_pcr_banks = sha256\n"
    )
    return LocalCA(root)


def manufacture(ca: LocalCA, state: Path) -> Path:
    """A new TPM's state in ``state``: a fresh RSA 2048 endorsement key with its certificate
    (signed by ``ca``) in NV, and the SHA-256 PCR bank."""
    state.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            "swtpm_setup",
            "--tpm2",
            "--tpmstate",
            str(state),
            "--create-ek-cert",
            "--create-platform-cert",
            "--config",
            str(ca.setup_config),
            "--overwrite",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"swtpm_setup failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return state


@dataclass
class Swtpm:
    """One running swtpm over a state directory."""

    state: Path
    port: int = 0
    ctrl_port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def tcti(self) -> str:
        """The TSS TCTI configuration string (tpm2-pytss ``ESAPI(tcti)``, tpm2-tools ``-T``)."""
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> Swtpm:
        for _ in range(5):  # a free port can be taken by another process before swtpm binds it
            self.port = free_port_pair()
            self.ctrl_port = self.port + 1
            self.process = subprocess.Popen(
                [
                    "swtpm",
                    "socket",
                    "--tpm2",
                    "--tpmstate",
                    f"dir={self.state}",
                    "--server",
                    f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                    "--ctrl",
                    f"type=tcp,port={self.ctrl_port},bindaddr=127.0.0.1",
                    "--flags",
                    "not-need-init,startup-clear",
                    "--log",
                    f"file={self.state / 'swtpm.log'},level=1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_listening():
                return self
            self.stop()
        raise RuntimeError(f"swtpm did not start; see {self.state / 'swtpm.log'}")

    def _wait_listening(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + _START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1):
                    pass
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def _ctrl(self, *args: str) -> None:
        subprocess.run(
            ["swtpm_ioctl", "--tcp", f"127.0.0.1:{self.ctrl_port}", *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def _tool(self, *argv: str) -> None:
        subprocess.run([*argv, "-T", self.tcti], check=True, capture_output=True, timeout=60)

    def reboot(self, *, orderly: bool = True) -> None:
        """A power cycle: an orderly shutdown first (TPM2_Shutdown) unless ``orderly`` is
        false, then swtpm's re-initialization (``swtpm_ioctl -i``) and TPM2_Startup(CLEAR)."""
        if orderly:
            self._tool("tpm2_shutdown", "-c")
        self._ctrl("-i")
        self._tool("tpm2_startup", "-c")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self._ctrl("-s")  # swtpm saves its state and exits
                self.process.wait(timeout=30)
            except (subprocess.SubprocessError, OSError):
                self.process.kill()
                self.process.wait(timeout=30)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
