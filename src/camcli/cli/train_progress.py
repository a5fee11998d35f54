"""`camcli train`'s progress on stderr: a bar per epoch on a terminal, a line per epoch else."""

from __future__ import annotations

import sys
import time


class CliReporter:
    """Progress on stderr: a rich bar per epoch on a terminal, one plain line per epoch
    otherwise; warnings always (every rank), info and epoch lines unless quiet."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._t0 = time.perf_counter()

    def info(self, text: str) -> None:
        from camcli.console import info

        info(text, self.quiet)

    def warn(self, text: str) -> None:
        from camcli.console import warn

        warn(text)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if self.quiet or not self.tty:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        from camcli.console import stderr_console

        self._bar = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=stderr_console(),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("train", total=steps, loss="-")

    def step(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, loss=f"{loss:.4f}")

    def epoch_end(self, record: dict) -> None:
        self.close()
        if self.quiet:
            return
        self.info(format_record(record))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def format_record(r: dict) -> str:
    """One line per epoch: losses, top-1/top-5, lr, throughput."""

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    val = (
        f"val loss {r['val_loss']:.4f} top-1 {pct(r['val_top1'])} top-5 {pct(r['val_top5'])}"
        if r.get("val_loss") is not None
        else "no validation"
    )
    ips = r.get("images_per_s") or 0.0
    return (
        f"epoch {r['epoch']}/{r['epochs']}  train loss {r['train_loss']:.4f} "
        f"top-1 {pct(r['train_top1'])}  {val}  lr {r['lr']:.3g}  "
        f"{ips:.0f} img/s  {r['epoch_seconds']:.1f} s" + ("  *best" if r.get("best") else "")
    )
