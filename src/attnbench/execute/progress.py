"""One progress bar for a whole distributed sweep, with each worker's throughput beside it."""

from __future__ import annotations

import time


def throughput_text(done: dict[str, int], elapsed_s: float) -> str:
    """'w0/gpu0 12 (0.80/s) · w1/gpu1 9 (0.60/s)': cells returned per worker and per second of the sweep."""
    if not done:
        return "waiting for workers"
    rate = (lambda n: f"{n / elapsed_s:.2f}/s") if elapsed_s > 0 else (lambda n: "-")
    return " · ".join(f"{w} {n} ({rate(n)})" for w, n in sorted(done.items()))


class SweepProgress:
    """A rich bar on stderr over every cell of the sweep; silent when disabled. `done` counts the cells
    each worker returned, for its throughput."""

    def __init__(self, total: int, enabled: bool, already: int = 0):
        self.done: dict[str, int] = {}
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.description}"), console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("waiting for workers", total=total, completed=already)

    def record(self, worker: str | None, cells: int) -> None:
        """`cells` results are stored: returned by `worker`, or (None) recorded here for a lost task."""
        if worker:
            self.done[worker] = self.done.get(worker, 0) + cells
        if self.bar:
            self.bar.update(self.task, advance=cells,
                            description=throughput_text(self.done, time.perf_counter() - self.t0))

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
