"""Every domain error of camcli, each carrying its exit code: the one error table.

torch-free and import-light. ``camcli.cli.main`` maps any :class:`CamcliError` to its
``exit_code`` in one place and prints its one-line message (a traceback only with
``CAMCLI_DEBUG=1``). Exit codes are public API (README, "Exit codes").

==============================  ====  ==================================================
error                           exit  raised for
==============================  ====  ==================================================
:class:`CamcliError`            2     a usage error: a bad option value or combination
:class:`NoInputError`           3     no usable input (no images, empty ground truth, ...)
:class:`GtError`                2/3   a ground-truth file that cannot be read
:class:`SynsetError`            2     a synset / label mapping that cannot be used
:class:`SubmissionError`        2     a submission that cannot be written or read
:class:`RegistryError`          2     an unknown or malformed ``weights.toml`` entry
:class:`ModelError`             2     a network camcli cannot use (no GAP + linear head)
:class:`SmallArchError`         2     bad ``camnet-small`` architecture options
:class:`TrainingError`          2     training cannot start or go on
:class:`TrainOptionError`       2     a bad training option value (also a usage error)
:class:`NonFiniteError`         1     training stopped on a non-finite loss or weight
:class:`WeightsError`           4     weights unavailable, unreadable or a checksum mismatch
:class:`WriteError`             5     an output could not be written (disk full, rights)
==============================  ====  ==================================================
"""

from __future__ import annotations

import errno
from enum import IntEnum


class Exit(IntEnum):
    """Exit codes (public API, documented in the README)."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    NO_INPUT = 3
    WEIGHTS = 4
    WRITE = 5  # an output could not be written (disk full, permissions); rerun with --resume
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    TERMINATED = 143  # SIGTERM (128 + 15), handled as Ctrl-C is


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (Slurm, Kubernetes, ``kill``): raised in the main thread by
    ``camcli.cli.main``'s handler and handled exactly as Ctrl-C (outputs complete or absent,
    records and run.json written); the exit code is :attr:`Exit.TERMINATED` (143)."""


class CamcliError(Exception):
    """An error ending the run with a one-line message and an exit code.

    Args:
        message: one line naming the value, what is wrong and the fix.
        code: the exit code; defaults to the class's ``exit_code``.
    """

    exit_code: int = Exit.USAGE

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.exit_code = int(code)

    @property
    def code(self) -> int:
        """The exit code (an alias of ``exit_code``)."""
        return int(self.exit_code)


class UsageError(CamcliError, ValueError):
    """A bad option value or combination of options (exit 2). The command line adds where the
    command's help is (``(see 'camcli cam -h')``), as it does for the option errors that the
    parser finds."""


class NoInputError(CamcliError):
    """No usable input: nothing to read, or an input file that is empty or incomplete."""

    exit_code = Exit.NO_INPUT


class WriteError(CamcliError):
    """An output could not be written (disk full, quota, permissions)."""

    exit_code = Exit.WRITE


class WeightsError(CamcliError, RuntimeError):
    """Weights unavailable (offline, download failed), unreadable, or a sha256 mismatch."""

    exit_code = Exit.WEIGHTS


class RegistryError(CamcliError, ValueError):
    """An unknown registry name or a malformed ``weights.toml`` entry."""


class ModelError(CamcliError, ValueError):
    """A network camcli cannot build or use (e.g. its head is not GAP + one linear layer)."""


class SmallArchError(ModelError):
    """Bad ``camnet-small`` architecture options (``--arch-option``)."""


class GtError(CamcliError):
    """A ground-truth file that cannot be read (exit 2, or 3 when nothing usable is in it)."""


class SynsetError(CamcliError, ValueError):
    """A synset / label mapping file that cannot be read or does not fit the model."""


class SubmissionError(CamcliError, ValueError):
    """A submission that cannot be written (bad box, missing WNID) or read."""


class TrainingError(CamcliError, RuntimeError):
    """Training cannot start or go on (bad data folder, options, checkpoint)."""


class TrainOptionError(TrainingError, UsageError):
    """A training option out of bounds or of the wrong form (``--lr 0``, ``--image-size
    100000``, a bad ``--arch-option``), exit 2: a :class:`TrainingError` for callers of
    ``camcli.train``, and a :class:`UsageError` of the command line, which adds where the
    command's help is. An invalid option SAVED in a checkpoint is no usage error: the reader of
    the checkpoint turns it into a :class:`WeightsError`."""


class NonFiniteError(TrainingError):
    """Training stopped because the loss or the weights became non-finite (exit 1)."""

    exit_code = Exit.SOME_FAILED


def write_error(exc: OSError, where: object, *, resumable: bool = True) -> WriteError:
    """The one-line error (exit 5) of an output that could not be written.

    Args:
        exc: the OSError of the failed write.
        where: the target named in the message (never a temporary name).
        resumable: whether the message suggests ``--resume``.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ELOOP and exc.filename:  # a link on the way (camcli.atomic.LinkError)
        return WriteError(f"cannot write to {where}: {reason}")
    fix = "free space or fix permissions, then rerun"
    return WriteError(
        f"cannot write to {where}: {reason}; {fix}" + (" with --resume" if resumable else "")
    )
