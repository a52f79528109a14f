"""A throwaway sshd on 127.0.0.1, to test workers started through ssh.

``loopback_sshd(directory)`` generates a host key and a client key in
``directory``, writes an sshd configuration there (nothing of the machine's
own ssh configuration is read or changed), starts ``sshd -D -e`` as a child
on a free port, checks that a login works, and stops and waits for it at the
end::

    with loopback_sshd(tmp_path) as sshd:
        launcher = engine.Launcher.ssh("127.0.0.1", options=sshd.client_options,
                                       python=sys.executable, env={"PYTHONPATH": ...})

Raises :class:`SshdUnavailable` when sshd (or ssh, ssh-keygen) is not
installed (Debian: ``apt-get install openssh-server``); a daemon that is
installed but does not work raises ``RuntimeError`` with its log.

Running as root, sshd needs its privilege separation directory (``/run/sshd``
on Debian, normally made by its service unit): it is created when missing,
the one thing done outside ``directory``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LoopbackSshd", "SshdUnavailable", "find_sshd", "loopback_sshd"]

_SSHD_PLACES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
_MISSING_PRIVSEP = re.compile(r"Missing privilege separation directory: (\S+)")


class SshdUnavailable(Exception):
    """sshd, ssh or ssh-keygen is not installed."""


def find_sshd() -> str | None:
    """The sshd binary (it is usually outside a normal user's PATH), or None."""
    found = shutil.which("sshd")
    if found is not None:
        return found
    return next((p for p in _SSHD_PLACES if os.access(p, os.X_OK)), None)


class LoopbackSshd:
    """A running sshd (see :func:`loopback_sshd`): where it listens and how to log in."""

    def __init__(self, directory: Path, port: int, key: Path,
                 process: subprocess.Popen[bytes], log: collections.deque[str]) -> None:
        self.directory = directory
        self.host = "127.0.0.1"
        self.port = port
        self.key = key  # the client's private key, authorized for this user
        self.process = process
        self._log = log

    @property
    def client_options(self) -> tuple[str, ...]:
        """ssh options for this server, before the destination: its port and
        key, no user configuration, and no known_hosts (a fresh host key each
        run); only errors are printed."""
        return ("-F", "/dev/null", "-p", str(self.port), "-i", str(self.key),
                "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "BatchMode=yes")

    def ssh_argv(self, *command: str) -> list[str]:
        """``ssh ... 127.0.0.1 command...``: a command line for this server."""
        return ["ssh", *self.client_options, self.host, *command]

    def log(self) -> str:
        """sshd's last log lines (it logs to stderr, ``-e``)."""
        return "\n".join(self._log)


def _free_port() -> int:
    # The port is free when asked; sshd binds it a moment later (a small
    # race, which the start check would report).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(port: int, host_key: Path, authorized: Path) -> str:
    root = os.geteuid() == 0
    return "\n".join([
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # This instance only: the keys live in a temporary directory whose
        # modes sshd's ownership checks were not written for.
        "StrictModes no",
        f"PermitRootLogin {'prohibit-password' if root else 'no'}",
        "PidFile none",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        # Pools open several connections at once; the default (10:30:100)
        # starts dropping unauthenticated ones at random above 10.
        "MaxStartups 100",
        # bash sources ~/.bashrc for ssh commands only at shell level 1: a
        # user's rc (pyenv init takes ~0.3 s here) is kept out of the timing
        # of every worker start. The far end's rc files are not the launcher's
        # business.
        "SetEnv SHLVL=1",
        "",
    ])


def _keygen(path: Path) -> None:
    """A fresh key pair at ``path`` (an earlier run's, in a reused directory,
    is replaced: ssh-keygen would refuse to overwrite it)."""
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "engine-test",
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=30)


def _ensure_privsep_dir(sshd: str, config: Path) -> None:
    """Create sshd's privilege separation directory if it says it is missing."""
    check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=30)
    missing = _MISSING_PRIVSEP.search(check.stderr)
    if missing is not None:
        os.makedirs(missing.group(1), mode=0o755, exist_ok=True)
        check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"sshd rejects the test configuration {config}: {check.stderr}")


@contextlib.contextmanager
def loopback_sshd(directory: Path, *, start_timeout: float = 10.0) -> Iterator[LoopbackSshd]:
    """Run a private sshd on 127.0.0.1 for the block (see the module docstring)."""
    sshd = find_sshd()
    missing = [name for name, path in (("sshd", sshd), ("ssh", shutil.which("ssh")),
                                       ("ssh-keygen", shutil.which("ssh-keygen")))
               if path is None]
    if sshd is None or missing:
        raise SshdUnavailable(f"{' and '.join(missing)} not installed (Debian: apt-get "
                              "install openssh-server openssh-client)")
    directory.mkdir(parents=True, exist_ok=True)
    host_key, client_key = directory / "host_key", directory / "client_key"
    _keygen(host_key)
    _keygen(client_key)
    authorized = directory / "authorized_keys"
    shutil.copyfile(f"{client_key}.pub", authorized)
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text(_config(port, host_key, authorized))
    _ensure_privsep_dir(sshd, config)

    log: collections.deque[str] = collections.deque(maxlen=200)
    listening = threading.Event()
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr
    ready_line = f"Server listening on 127.0.0.1 port {port}."

    def read_log() -> None:
        # Drain sshd's log for as long as it runs (an unread pipe would block
        # it); its "listening" line is the start acknowledgement.
        for raw in stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            log.append(line)
            if line == ready_line:
                listening.set()
        listening.set()  # it exited: stop waiting, the returncode says why

    reader = threading.Thread(target=read_log, name="sshd-log", daemon=True)
    reader.start()
    server = LoopbackSshd(directory, port, client_key, process, log)
    try:
        if not listening.wait(start_timeout) or process.poll() is not None:
            raise RuntimeError(f"sshd did not start listening within {start_timeout:g} s; "
                               f"its log:\n{server.log()}")
        probe = subprocess.run(server.ssh_argv("true"), capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=start_timeout)
        if probe.returncode != 0:
            raise RuntimeError(f"ssh login to the test sshd failed ({probe.returncode}): "
                               f"{probe.stderr.strip()}; sshd log:\n{server.log()}")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        stderr.close()
