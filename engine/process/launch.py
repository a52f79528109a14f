"""Launchers: how a worker is started on another host (ssh, kubectl, srun, docker).

A :class:`Launcher` is a command run *here* that runs the worker *there*:
``ssh db1``, ``kubectl exec -i pod --``, ``srun -N1 -n1``, ``docker exec -i box``.
The pool spawns that local process, talks frames through its stdin and stdout,
and signals only it (the worker's own pid, from its hello, belongs to the far
host). What the far end needs is given explicitly, because launchers forward
none of this process's environment: the interpreter there (``python``), the
working directory (``workdir``, where the app's modules are) and environment
variables (``env``, e.g. ``PYTHONPATH`` so that ``engine`` and the app import).

A plain argv tuple as ``PoolConfig.launcher`` is a *local* wrapper (``nice``,
``taskset``, a script that execs its arguments): the worker runs on this host
with this process's environment and interpreter, as before launchers existed.

How a remote worker ends (it cannot be signalled from here):

* the pool closes: the shutdown command, then stdin EOF (a worker still busy
  after ``shutdown_grace``: its local launcher is killed, as below);
* the local launcher process dies (killed, or the connection drops): the far
  end sees stdin EOF, and the worker's parent there (sshd's session) usually
  exits too, which the worker's watchdog notices within 0.1 s;
* this process is SIGKILLed: the launcher's stdin closes, so the far end sees
  stdin EOF. A worker busy in a handler does not read stdin, so the worker's
  watchdog polls it for a hang-up and ends the process shortly after (see
  ``engine.workers.runtime``).
"""

from __future__ import annotations

import re
import shlex
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import attrs

__all__ = ["LAUNCHER_FIELD_HELP", "Launcher", "LauncherChoice", "check_choice",
           "launchers_per_slot"]

# Environment variable names a POSIX shell and ``env`` accept.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# The far end changes directory without relying on GNU ``env -C``: ``sh`` is
# everywhere a worker can run, and ``exec`` leaves no shell in between.
_CD_THEN_EXEC = 'cd -- "$0" && exec "$@"'

LAUNCHER_FIELD_HELP = (
    "a tuple of strings (a local wrapper such as ('nice', '-n5')) or an "
    "engine.Launcher (a worker on another host, e.g. engine.Launcher.ssh('db1'))")


def _to_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, str):
        return (value,)  # python="python3": one word is the usual case
    return value


def _strings(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not value \
            or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"Launcher.{attribute.name} must be a non-empty sequence of "
                         f"non-empty strings, got {value!r}")


def _env(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"Launcher.env must map names to strings, got {value!r}")
    for name, text in value.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"Launcher.env: {name!r} is not an environment variable name "
                             "(letters, digits and _, not starting with a digit)")
        if not isinstance(text, str) or "\0" in text:
            raise ValueError(f"Launcher.env[{name!r}] must be a string without NUL, "
                             f"got {text!r}")


def _workdir(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        raise ValueError(f"Launcher.workdir must be a non-empty path or None, got {value!r}")


def _optional_text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"Launcher.{attribute.name} must be a non-empty string or None, "
                         f"got {value!r}")


def _status(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 0 <= value <= 255):
        raise ValueError(f"Launcher.failure_status must be an exit status 0-255 or None, "
                         f"got {value!r}")


def _flag(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"Launcher.{attribute.name} must be True or False, got {value!r}")


def _to_env(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return value


@attrs.frozen(kw_only=True)
class Launcher:
    """A command that runs a worker on another host, and what that host needs.

    ``argv``: the local command, the worker's command line follows it
    (``("kubectl", "exec", "-i", "pod", "--")``). ``python``: the interpreter
    at the far end (default ``python3`` from its PATH). ``workdir``: the
    directory the worker starts in there (the app's modules are imported from
    it), None: wherever the launcher starts it. ``env``: variables set at the
    far end (this process's environment is not passed; ``PoolConfig.env`` is
    added under these). ``shell``: the launcher hands its arguments to a shell
    at the far end as one string (ssh does; kubectl, docker and srun pass argv
    as is), so the worker's command line is quoted into one argument.
    ``name``: how reports call the launcher (default: its command line).
    ``failure_status``: the exit status the launcher uses for its own failures
    (ssh: 255), and ``failure_meaning`` says what that status covers; crash
    reports tell it apart from the worker's own exit status.

    :meth:`ssh` builds one for ssh.
    """

    argv: tuple[str, ...] = attrs.field(converter=_to_tuple, validator=_strings)
    python: tuple[str, ...] = attrs.field(default=("python3",), converter=_to_tuple,
                                          validator=_strings)
    workdir: str | None = attrs.field(default=None, validator=_workdir)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_to_env, validator=_env)
    shell: bool = attrs.field(default=False, validator=_flag)
    name: str | None = attrs.field(default=None, validator=_optional_text)
    failure_status: int | None = attrs.field(default=None, validator=_status)
    failure_meaning: str = attrs.field(default="the launcher's own failure",
                                       validator=_optional_text)

    @classmethod
    def ssh(cls, destination: str, *, options: Sequence[str] = (),
            python: str | Sequence[str] = ("python3",), workdir: str | None = None,
            env: Mapping[str, str] | None = None, program: str = "ssh") -> Launcher:
        """Workers on ``destination`` (``host`` or ``user@host``) through ssh.

        ``options`` go before the destination (``("-p", "2222", "-i", key)``).
        Always added: ``-T`` (no terminal: it would mangle frames), ``-e none``
        (no escape character in the frame stream) and ``BatchMode=yes`` (a
        password prompt nobody can answer fails the start at once instead of
        hanging until ``start_timeout``).
        """
        if not isinstance(destination, str) or not destination \
                or destination.startswith("-"):
            raise ValueError(f"Launcher.ssh: destination must be a host name such as "
                             f"'db1' or 'user@db1', got {destination!r}")
        if isinstance(options, str):
            raise ValueError("Launcher.ssh: options must be a sequence of arguments such as "
                             f"('-p', '2222'), not one string {options!r}")
        argv = (program, "-T", "-e", "none", "-o", "BatchMode=yes", *options, destination)
        return cls(argv=argv, python=python, workdir=workdir, env=env or {}, shell=True,
                   name=f"ssh {destination}", failure_status=255,
                   failure_meaning="ssh's own failure (connection or authentication), or the "
                                   "remote worker killed by a signal: ssh reports both as 255")

    @property
    def label(self) -> str:
        """How reports and statistics name this launcher."""
        return self.name if self.name is not None else shlex.join(self.argv)

    def command(self, worker_args: Sequence[str],
                extra_env: Mapping[str, str] | None = None) -> list[str]:
        """The local argv that starts ``python -m engine.workers.runtime *worker_args``
        at the far end, in ``workdir`` with ``env`` (over ``extra_env``)."""
        env = {**(extra_env or {}), **self.env}
        far: list[str] = []
        if self.workdir is not None:
            far += ["sh", "-c", _CD_THEN_EXEC, self.workdir]
        if env:
            far += ["env", *(f"{name}={value}" for name, value in env.items())]
        far += [*self.python, "-m", "engine.workers.runtime", *worker_args]
        if self.shell:
            return [*self.argv, shlex.join(far)]
        return [*self.argv, *far]

    def describe_exit(self, exit_code: int | None, signal_number: int | None) -> str:
        """What the local launcher's exit says about the remote worker, for reports."""
        label = self.label
        if signal_number is not None:
            return (f"the local launcher {label!r} was killed by "
                    f"{_signal_name(signal_number)}; the remote worker ends when its "
                    "stdin closes")
        if exit_code is None:
            return f"the local launcher {label!r} is still running"
        if exit_code == self.failure_status:
            return f"{label!r} exited with status {exit_code}: {self.failure_meaning}"
        return f"{label!r} reported the remote command's exit status {exit_code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


LauncherChoice: TypeAlias = "tuple[str, ...] | Launcher"
"""What one slot is started through: a local argv prefix (possibly empty) or a
:class:`Launcher` for another host."""


def check_choice(value: Any, where: str) -> LauncherChoice:
    """``value`` as a launcher choice, or ValueError saying what ``where`` needs."""
    if isinstance(value, Launcher):
        return value
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple) and all(isinstance(v, str) and v for v in value):
        return value
    raise ValueError(f"{where} must be {LAUNCHER_FIELD_HELP}, got {value!r}")


def launchers_per_slot(launchers: Sequence[Any] | Callable[[int], Any], size: int,
                       where: str = "PoolConfig.launchers") -> tuple[LauncherChoice, ...]:
    """One launcher choice per slot, checked: from a sequence (its length must
    be ``size``) or from a callable asked once for each slot index. Raises
    ValueError saying which entry is wrong and why."""
    if callable(launchers):
        chosen = []
        for slot in range(size):
            try:
                value = launchers(slot)
            except Exception as exc:
                raise ValueError(f"{where}({slot}) raised {type(exc).__name__}: {exc}") \
                    from exc
            chosen.append(check_choice(value, f"{where}({slot})"))
        return tuple(chosen)
    if isinstance(launchers, str | bytes | Mapping) or not isinstance(launchers, Sequence):
        raise ValueError(f"{where} must be a sequence with one launcher per slot or a "
                         f"callable slot -> launcher (each {LAUNCHER_FIELD_HELP}), "
                         f"got {launchers!r}")
    if len(launchers) != size:
        raise ValueError(f"{where} has {len(launchers)} entries for size={size}: give one "
                         "per slot (() starts that slot's worker here), or a callable "
                         "slot -> launcher")
    return tuple(check_choice(value, f"{where}[{slot}]")
                 for slot, value in enumerate(launchers))
