"""The lab SSH key (generated once) and ssh command lines that use it."""
from __future__ import annotations

import subprocess

from lab_tasks.sandbox.paths import SSH_DIR, SSH_KEY

SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=3",
)


def ensure_key() -> str:
    """Create the lab key pair once; return the public key line."""
    if not SSH_KEY.exists():
        SSH_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "opslab-lab", "-f", str(SSH_KEY)],
            check=True,
        )
    return SSH_KEY.with_suffix(".pub").read_text().strip()


def ssh_argv(address: str, *command: str, tty: bool = False) -> list[str]:
    """ssh as root to a lab address with the lab key; `tty` forces a terminal for interactive use."""
    return ["ssh", "-i", str(SSH_KEY), *SSH_OPTIONS, "-t" if tty else "-T", f"root@{address}", *command]
