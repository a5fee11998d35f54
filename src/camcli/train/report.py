"""Where training progress goes: the :class:`Reporter` protocol (the CLI prints; the library
never does), a silent one, and the once-per-input warnings of undecodable images."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """Where the loop sends progress (the CLI prints; the library never does)."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, loss: float) -> None: ...
    def epoch_end(self, record: dict) -> None: ...
    def info(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...


class SilentReporter:
    """A :class:`Reporter` that drops everything."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, loss: float) -> None:
        pass

    def epoch_end(self, record: dict) -> None:
        pass

    def info(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass


class SeenErrors:
    """Warns once per undecodable input and remembers them all."""

    def __init__(self, reporter: Reporter) -> None:
        self.seen: set[str] = set()
        self.reporter = reporter

    def __call__(self, errors: list) -> None:
        for path, reason in errors:
            if path not in self.seen:
                self.seen.add(path)
                self.reporter.warn(f"{path}: {reason} (skipped)")
