"""testinfra Hosts for the checks: over SSH through a fabric Connection, or on this machine."""
from __future__ import annotations

import codecs
import socket
from collections.abc import Callable, Iterator

import testinfra
from fabric import Config, Connection
from fabric.runners import Remote
from paramiko.ssh_exception import SSHException
from testinfra.backend.base import BaseBackend, CommandResult
from testinfra.host import Host

from lab_tasks.errors import LabError
from lab_tasks.topology import HostInfo

CONNECT_TIMEOUT_S = 10


class WholeCharacterRemote(Remote):
    """fabric's remote runner, decoding output incrementally: invoke decodes each 1000-byte read on its own,
    so a UTF-8 character split between two reads came back as two U+FFFD (a file name like
    `Főtanúsítvány.pem` read differently from one run to the next)."""

    def read_proc_output(self, reader: Callable) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder(self.encoding)("replace")
        while data := reader(self.read_chunk_size):
            if text := decoder.decode(data):
                yield text
        if tail := decoder.decode(b"", final=True):
            yield tail


class FabricBackend(BaseBackend):
    """A testinfra backend that runs commands through one fabric Connection."""

    NAME = "fabric"

    def __init__(self, info: HostInfo, **kwargs):
        super().__init__(info.name, **kwargs)
        self.info = info
        self.connection = Connection(
            host=info.address, user=info.user, port=info.port,
            connect_timeout=CONNECT_TIMEOUT_S, connect_kwargs=_key_kwargs(info),
            config=Config(overrides={"runners": {"remote": WholeCharacterRemote}}),
        )

    def run(self, command: str, *args: str, **kwargs) -> CommandResult:
        """Run a shell command remotely; never raises on a non-zero exit."""
        cmd = self.get_command(command, *args)
        result = self.connection.run(cmd, warn=True, hide=True, in_stream=False)
        return self.result(result.exited, self.encode(cmd), result.stdout, result.stderr)

    def close(self) -> None:
        """Close the SSH connection."""
        self.connection.close()


def _key_kwargs(info: HostInfo) -> dict:
    if not info.key_file:
        return {}
    return {"key_filename": info.key_file, "look_for_keys": False, "allow_agent": False}


def ssh_host(info: HostInfo) -> Host:
    """A testinfra Host over SSH to a lab host."""
    return Host(FabricBackend(info))


def local_host() -> Host:
    """A testinfra Host for this machine (`lab check --local` on the learner's own VM)."""
    return testinfra.get_host("local://")


def ensure_reachable(host: Host, info: HostInfo | None) -> None:
    """Run `true` on the host; a LabError naming the host and the fix if that fails."""
    where = f"{info.name} ({info.user}@{info.address}:{info.port})" if info else "this machine"
    try:
        result = host.run("true")
    except (OSError, EOFError, socket.timeout, SSHException) as exc:
        reason = " ".join(str(exc).replace("[Errno None] ", "").split()) or type(exc).__name__
        raise LabError(f"host {where} unreachable: {reason}; run `lab sandbox up` "
                       "(or check the inventory's address and key)") from exc
    if result.rc != 0:
        raise LabError(f"host {where} cannot run commands (`true` exited {result.rc}); "
                       "check the host's shell and the inventory's user")
