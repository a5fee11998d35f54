"""What a job tells its caller: how much there is to do and each record while it runs
(:class:`Progress`), what it did when it ends (:class:`JobRun`)."""

from __future__ import annotations

from dataclasses import dataclass

from camcli.api.predict import exit_code


class Progress:
    """Hooks a job calls while it runs; these do nothing (the CLI's draw a bar, print failures).

    A job calls :meth:`start` once before its first image, :meth:`record` after each record is
    written, and :meth:`stop` once when it ends (also on an error or an interrupt).
    """

    def start(self, todo: int | None, resumed: int, selected: int) -> None:
        """Args:
        todo: inputs this run will process; None when unknown before the end (map files).
        resumed: inputs skipped because an earlier run completed them (``--resume``).
        selected: inputs of this process (its shard), ``todo + resumed`` when known.
        """

    def record(self, rec: dict, *, on_stdout: bool = False) -> None:
        """One input done. Args: rec: its record (``{"image", "error"}`` for a failed one);
        on_stdout: whether the record went to stdout, which already carries its error."""

    def stop(self) -> None:
        """The job ended (completed, failed or interrupted)."""

    def warn(self, message: str) -> None:
        """A one-line warning for people; the job goes on."""


@dataclass
class JobRun:
    """What a folder job (``cam``, ``bbox``) did.

    Attributes:
        stats: this process's counts ``{"ok", "failed"}`` (resumed inputs not included).
        ok, failed, skipped: the counts summed over the torchrun ranks (``skipped``: inputs
            an earlier run completed, ``--resume``).
        selected: inputs of this process (its shard); None from map files.
        total: inputs of the whole run; None from map files.
        main: whether this process wrote the joined outputs (and prints the summary).
    """

    stats: dict
    ok: int
    failed: int
    skipped: int
    selected: int | None
    total: int | None
    main: bool = True

    @property
    def exit_code(self) -> int:
        """0 all done, 1 some inputs failed, 3 all failed; resumed inputs count as done (a
        resumed run whose only new input fails has failed partly, not found no input)."""
        return exit_code({"ok": self.ok + self.skipped, "failed": self.failed})
