"""The tau grid: the map thresholds BoxAcc and PxAP sweep (SPEC.md section 5).

Taus are fractions of a map's maximum in [0, 1), ascending; the default grid is
``0, 0.01, ..., 0.99``, wsolevaluation's ``np.arange(0, 1, cam_curve_interval)`` with its
default interval 0.01. ONE tau is chosen for the whole split, never per image.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["DEFAULT_TAUS", "MAX_TAUS", "parse_taus", "tau_grid"]

#: The most thresholds a grid may have (each costs memory and time per image).
MAX_TAUS = 10_000


def tau_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.01) -> np.ndarray:
    """``start, start + step, ...`` below ``stop`` (exclusive).

    Values are ``start + i * step``, the same floats as ``np.arange(start, stop, step)`` (and so
    as wsolevaluation's ``np.arange(0, 1, cam_curve_interval)``), but the count is computed with a
    tolerance so that ``0:1:0.01`` gives exactly 100 values.

    Args:
        start: the first tau.
        stop: the end, excluded.
        step: the spacing, > 0.

    Returns:
        float64 [T].

    Raises:
        ValueError: ``step <= 0``, ``stop <= start``, a non-finite value, or more than
            :data:`MAX_TAUS` values.
    """
    if not all(math.isfinite(v) for v in (start, stop, step)):
        raise ValueError(f"taus must be finite numbers, got {start}:{stop}:{step}")
    if not step > 0:
        raise ValueError(f"tau step must be > 0, got {step}")
    if not stop > start:
        raise ValueError(f"tau stop must be > start, got {start}:{stop}")
    n = math.ceil((stop - start) / step - 1e-9)
    if n > MAX_TAUS:
        raise ValueError(f"{n} thresholds, more than {MAX_TAUS}; use a larger step")
    return start + np.arange(n, dtype=np.float64) * step


DEFAULT_TAUS = tau_grid(0.0, 1.0, 0.01)
"""float64 [100]: 0, 0.01, ..., 0.99 (wsolevaluation's default grid)."""


def parse_taus(spec: str) -> np.ndarray:
    """The ``--taus`` option: ``START:STOP:STEP`` (stop exclusive) or a list ``0.1,0.2,0.5``.

    Args:
        spec: the option's text.

    Returns:
        float64 [T], ascending, unique, in [0, 1).

    Raises:
        ValueError: a one-line reason naming ``--taus`` (not numbers, empty, out of order or
            outside [0, 1)).
    """
    s = spec.strip()
    try:
        if ":" in s:
            parts = [float(p) for p in s.split(":")]
            if len(parts) != 3:
                raise ValueError
            taus = tau_grid(*parts)
        else:
            taus = np.asarray([float(p) for p in s.split(",") if p.strip()], dtype=np.float64)
    except ValueError as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise ValueError(
            f"--taus {spec!r}: give START:STOP:STEP like 0:1:0.01, or values like 0.1,0.2{detail}"
        ) from None
    if taus.size == 0:
        raise ValueError(f"--taus {spec!r}: no thresholds")
    if taus.size > MAX_TAUS:
        raise ValueError(f"--taus {spec[:40]!r}: more than {MAX_TAUS} thresholds")
    if not np.isfinite(taus).all():
        raise ValueError(f"--taus {spec!r}: thresholds must be finite numbers (no nan, inf)")
    if np.any(taus < 0) or np.any(taus >= 1) or np.any(np.diff(taus) <= 0):
        raise ValueError(f"--taus {spec!r}: thresholds must be ascending, unique, in [0, 1)")
    return taus
