"""PoolConfig: the frozen, validated configuration of a pool (design section 4)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from engine.busy_poll import DEFAULT_BUSY_POLL, MAX_BUSY_POLL
from engine.process.handle import SpawnRequest
from engine.process.launch import LauncherChoice, check_choice, launchers_per_slot
from engine.process.output import WORKER_OUTPUT_MODES
from engine.protocol import DEFAULT_MAX_PICKLE_FRAME_SIZE

AFFINITY_MODES = ("strict", "fail_fast", "hint")


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or math.isnan(value):
        raise ValueError(f"PoolConfig.{attribute.name} must be a positive number, got {value!r}")


def check_seconds(name: str, value: float, default: str) -> None:
    """A per-call ``timeout`` / ``checkout_timeout`` (not None): a positive,
    non-NaN number of seconds, as the pool's own settings are. ``default``
    names the setting that None would use."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None (the pool's "
                        f"{default}), got {type(value).__name__} {value!r}")
    if not value > 0:  # also NaN
        raise ValueError(f"{name} must be a positive number of seconds or None (the "
                         f"pool's {default}), got {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(
            f"PoolConfig.{attribute.name} must be a number >= 0, got {value!r}"
        )


def _grace(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 <= value < math.inf:
        raise ValueError(
            f"PoolConfig.{attribute.name} must be a finite number of seconds >= 0, got "
            f"{value!r}: how long a worker may take to give back a request whose caller "
            "gave up before it is killed (0: kill at once)")


def _busy_poll(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 <= value <= MAX_BUSY_POLL:
        raise ValueError(
            f"PoolConfig.{attribute.name} must be a number of seconds between 0 (off) and "
            f"{MAX_BUSY_POLL:g}, got {value!r}; the default {DEFAULT_BUSY_POLL:g} suits "
            "calls that take microseconds"
        )


def _positive_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"PoolConfig.{attribute.name} must be an integer >= 1, got {value!r}")


def _frame_size(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
        raise ValueError(
            f"PoolConfig.max_frame_size must be an integer >= 1024 bytes, got {value!r}"
        )


def _pickle_frame_size(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value < 1 << 31:
        raise ValueError(
            f"PoolConfig.max_pickle_frame_size must be an integer of bytes from 1024 to "
            f"2**31 - 1, got {value!r}")


def _optional_bool(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"PoolConfig.{attribute.name} must be True, False or None, "
                         f"got {value!r}")


def _app(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value or value.count(":") > 1 \
            or value.startswith(":") or value.endswith(":"):
        raise ValueError(
            f"PoolConfig.app must be 'module' or 'module:attr', got {value!r}"
        )


def _affinity(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in AFFINITY_MODES:
        raise ValueError(
            f"PoolConfig.affinity must be one of {', '.join(AFFINITY_MODES)}, got {value!r}"
        )


def _worker_output(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in WORKER_OUTPUT_MODES:
        raise ValueError(f"PoolConfig.worker_output must be one of "
                         f"{', '.join(WORKER_OUTPUT_MODES)}, got {value!r}")


def _backoff(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    ok = (isinstance(value, tuple) and len(value) == 3
          and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))
    if not ok or not (0 < value[0] <= value[1]) or not (0 <= value[2] <= 1):
        raise ValueError(
            "PoolConfig.restart_backoff must be (min, max, jitter) with 0 < min <= max "
            f"and 0 <= jitter <= 1, got {value!r}"
        )


def _argv(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(
            f"PoolConfig.{attribute.name} must be a sequence of non-empty strings, "
            f"got {value!r}"
        )


def _launcher(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_choice(value, "PoolConfig.launcher")


def _to_launcher(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _env(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"PoolConfig.env must map str to str, got {value!r}")


def _name(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"PoolConfig.name must be a non-empty string or None, got {value!r}")


def _callable_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value) and attribute.name == "worker_factory":
        raise ValueError(f"PoolConfig.worker_factory must be callable, got {value!r}")


def _to_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    return value


def _to_env(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return value


@attrs.frozen(kw_only=True)
class PoolConfig:
    """Everything a pool needs to know. Invalid values raise ``ValueError`` naming the field.

    Times are in seconds. ``None`` disables the feature where noted.
    """

    app: str = attrs.field(default="engine.workers.programs", validator=_app)
    size: int = attrs.field(default=4, validator=_positive_int)
    lazy: bool = False
    min_size: int = attrs.field(default=0, validator=_non_negative)
    start_timeout: float = attrs.field(default=10.0, validator=_positive)
    # None: a checkout waits as long as it takes (run_sync's default pool,
    # where a CapacityLimiter does the queueing).
    checkout_timeout: float | None = attrs.field(default=5.0, validator=_positive)
    call_timeout: float | None = attrs.field(default=30.0, validator=_positive)
    max_waiters: int = attrs.field(default=1000, validator=_positive_int)
    # (min, max, jitter): the first restart is immediate, then min * 2**k capped at
    # max, with `jitter` of it randomised (1.0 = full jitter).
    restart_backoff: tuple[float, float, float] = attrs.field(
        default=(0.05, 5.0, 1.0), converter=_to_tuple, validator=_backoff)
    healthy_period: float = attrs.field(default=10.0, validator=_positive)
    max_restarts: int = attrs.field(default=20, validator=_positive_int)
    restart_period: float = attrs.field(default=10.0, validator=_positive)
    restart_cooldown: float = attrs.field(default=5.0, validator=_positive)
    breaker_threshold: int | None = attrs.field(default=None, validator=_positive_int)
    breaker_window: float = attrs.field(default=10.0, validator=_positive)
    breaker_reset: float = attrs.field(default=2.0, validator=_positive)
    # Idle health checks, on by default: a worker idle (neither used nor probed)
    # for health_interval is probed; no answer within health_timeout replaces it
    # at once. So a worker frozen while idle (stopped, deadlocked, stuck in C)
    # is out of service within health_interval + health_timeout (4 s), and the
    # probe holds its lease meanwhile, so no checkout is handed it. A probe is
    # one small round trip per idle worker per interval: negligible CPU.
    health_interval: float | None = attrs.field(default=2.0, validator=_positive)
    health_timeout: float = attrs.field(default=2.0, validator=_positive)
    max_health_failures: int = attrs.field(default=3, validator=_positive_int)
    max_calls_per_worker: int | None = attrs.field(default=None, validator=_positive_int)
    idle_retire: float | None = attrs.field(default=None, validator=_positive)
    max_rss_mb: float | None = attrs.field(default=None, validator=_positive)
    session_ttl: float | None = attrs.field(default=None, validator=_positive)
    affinity: str = attrs.field(default="strict", validator=_affinity)
    shutdown_grace: float = attrs.field(default=5.0, validator=_non_negative)
    # Cooperative cancellation (design section 8): a call cancelled or timed out
    # with its request in flight has the worker abandon it; a worker that does
    # not give it back within this many seconds is killed and replaced. 0 kills
    # at once (every session on that worker is lost).
    cancel_grace: float = attrs.field(default=1.0, validator=_grace)
    # How each worker is started: a local argv prefix (a wrapper such as
    # ("nice", "-n5"); () runs the interpreter directly) or an engine.Launcher
    # that runs it on another host (ssh, kubectl exec, srun, docker exec).
    # ``launchers`` chooses per slot: a sequence with one entry per slot, or a
    # callable slot index -> launcher, asked once per slot when the config is
    # built; it replaces ``launcher``. See engine.process.launch.
    launcher: LauncherChoice = attrs.field(default=(), converter=_to_launcher,
                                           validator=_launcher)
    launchers: Sequence[LauncherChoice] | Callable[[int], LauncherChoice] | None = None
    python: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple, validator=_argv)
    env: Mapping[str, str] | None = attrs.field(default=None, converter=_to_env,
                                                validator=_env)
    # The worker needs room for its hello and error replies: at least 1 KiB.
    max_frame_size: int = attrs.field(default=16 * 1024 * 1024, validator=_frame_size)
    # run_sync's pickle frames: the largest one either way (1 GiB: a 100 MB
    # bytes value round-trips), and who may get them. None: local workers
    # yes, workers started through a remote Launcher no (unpickling runs
    # code; see the README's trust note); True or False: every worker.
    max_pickle_frame_size: int = attrs.field(default=DEFAULT_MAX_PICKLE_FRAME_SIZE,
                                             validator=_pickle_frame_size)
    allow_pickle: bool | None = attrs.field(default=None, validator=_optional_bool)
    stderr_tail_lines: int = attrs.field(default=20, validator=_positive_int)
    # Busy-polling: how long the parent (for a reply) and the worker (for the
    # next request) keep looking before they sleep. Sleeping costs an idle CPU's
    # wake-up latency on every call, which dwarfs a microsecond call; each side
    # polls only while its frames usually come sooner than this, so slow or
    # sparse calls cost no CPU. 0 turns it off.
    busy_poll: float = attrs.field(default=DEFAULT_BUSY_POLL, validator=_busy_poll)
    policy: Any = None
    name: str | None = attrs.field(default=None, validator=_name)
    # A callable(SpawnRequest) -> async context manager yielding a WorkerHandle
    # (engine.process.handle), e.g. the test kit's FakeWorkerFactory. None means
    # real subprocesses (ProcessWorker). The handle must implement every
    # WorkerHandle method, time_out(timeout) included: the pool ends overdue
    # calls only through it, and refuses a handle without it (TypeError).
    worker_factory: Callable[..., Any] | None = attrs.field(
        default=None, validator=_callable_or_none)
    seed: int | None = None
    # Where the lines workers print (stderr and stdout) go: "forward" (this
    # process's stderr, each line prefixed with the worker id), "log" (logging,
    # INFO, logger "engine.worker") or "discard". Every mode keeps the last
    # lines for crash reports.
    worker_output: str = attrs.field(default="forward", validator=_worker_output)

    # launchers, checked and resolved to one choice per slot (set by
    # __attrs_post_init__, so attrs.evolve with another size re-asks a callable).
    _slot_launchers: tuple[LauncherChoice, ...] | None = attrs.field(
        init=False, default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.min_size > self.size:
            raise ValueError(
                f"PoolConfig.min_size ({self.min_size}) must not exceed size ({self.size})"
            )
        if not isinstance(self.lazy, bool):
            raise ValueError(f"PoolConfig.lazy must be a bool, got {self.lazy!r}")
        if self.launchers is not None:
            if self.launcher != ():
                raise ValueError("PoolConfig.launcher and PoolConfig.launchers are both set: "
                                 "give launchers only (one entry per slot)")
            # A callable is asked here, once per slot: a wrong answer is an
            # error now, not a start failure later.
            object.__setattr__(self, "_slot_launchers",
                               launchers_per_slot(self.launchers, self.size))

    def launcher_for(self, slot: int) -> LauncherChoice:
        """How ``slot``'s workers are started: its entry of ``launchers``, else
        ``launcher``."""
        chosen = self._slot_launchers
        return chosen[slot] if chosen is not None else self.launcher

    @property
    def effective_breaker_threshold(self) -> int:
        # "Most slots failing": by default the breaker needs more consecutive start
        # failures than there are slots, so one bad slot never opens it.
        return self.breaker_threshold or max(3, self.size + 1)


def make_config(config: PoolConfig | None, overrides: Mapping[str, Any]) -> PoolConfig:
    """Build a config from an optional base and keyword overrides, naming bad keys."""
    base = config if config is not None else PoolConfig()
    if not isinstance(base, PoolConfig):
        raise ValueError(f"config must be a PoolConfig, got {type(base).__name__}")
    known = {a.name for a in attrs.fields(PoolConfig) if a.init}
    unknown = sorted(set(overrides) - known)
    if unknown:
        import difflib

        guesses = [f"{key!r} (did you mean {close[0]!r}?)"
                   if (close := difflib.get_close_matches(key, known, n=1)) else repr(key)
                   for key in unknown]
        raise ValueError(
            f"unknown PoolConfig field(s): {', '.join(guesses)}; known fields: "
            f"{', '.join(sorted(known))}"
        )
    try:
        return attrs.evolve(base, **overrides)
    except TypeError as exc:
        raise ValueError(f"invalid PoolConfig: {exc}") from None


# The SpawnRequest fields that are PoolConfig fields too (all but worker_id;
# the launcher is chosen per slot).
_SPAWN_FIELDS = tuple(field.name for field in attrs.fields(SpawnRequest)
                      if field.name in attrs.fields_dict(PoolConfig) and field.name != "launcher")


def spawn_request(config: PoolConfig, pool: str, slot: int, generation: int) -> SpawnRequest:
    """What to start for ``slot``'s ``generation``-th worker of the pool labelled
    ``pool``: every SpawnRequest field named like a PoolConfig field takes the
    config's value, so a new spawn parameter is added in those two places only;
    the launcher is the slot's (``launchers``), else ``launcher``."""
    return SpawnRequest(worker_id=f"{pool}-{slot}.{generation}",
                        launcher=config.launcher_for(slot),
                        **{name: getattr(config, name) for name in _SPAWN_FIELDS})
