"""The live view of a stress run in a terminal (rich): a progress bar plus running
counts and percentiles. Used only when stdout is a terminal."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from engine.stress.runner import LiveStatus


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


class LiveDisplay:
    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=None),
            TaskProgressColumn(), TimeElapsedColumn(), console=console, expand=True)
        self.task = self.progress.add_task("starting pool", total=1.0)
        self.table = Table.grid(padding=(0, 2))
        self.live = Live(Group(self.progress, self.table), console=console,
                         refresh_per_second=8, transient=False)

    def __enter__(self) -> LiveDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.live.__exit__(exc_type, exc, tb)

    def update(self, s: LiveStatus) -> None:
        self.progress.update(self.task, completed=s.progress, description=s.phase)
        grid = Table.grid(padding=(0, 3))
        for _ in range(4):
            grid.add_column()
        failures = ", ".join(f"{k} {n}" for k, n in s.failures.items()) or "none"
        grid.add_row(f"calls [bold]{s.started}[/]", f"ok [green]{s.succeeded}[/]",
                     f"failed [red]{s.failed}[/]", f"in flight {s.in_flight}")
        grid.add_row(f"throughput [bold]{s.throughput:.0f}/s[/]",
                     f"call p50 {_ms(s.call_p50)}", f"call p99 {_ms(s.call_p99)}",
                     f"checkout p99 {_ms(s.checkout_p99)}")
        grid.add_row(f"ready {s.ready}/{s.size}", f"deaths injected {s.injected}",
                     f"detected {s.detected}", f"restarts {s.restarts}")
        self.live.update(Group(self.progress, grid,
                               Text(f"failures: {failures}", style="dim", overflow="ellipsis",
                                    no_wrap=True)))
