"""`camcli models`: the registry, without importing torch."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("models")(models)


def models(
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines on stdout.")] = False,
) -> None:
    """List the registry's networks: architecture, feature map, classes, weights status.

    Networks marked `train first` carry only backbone weights: their new GAP head must be trained
    with `camcli train` before they give CAMs.
    """
    rows = _registry_rows()
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r, allow_nan=False))
        return
    _print_table(rows)


def _registry_rows() -> list[dict]:
    """One row per registry entry (the ``--json`` records), with its weights status."""
    from camcli.models import hub
    from camcli.models.registry import DEFAULT_CPU_BATCH_SIZE, load_registry

    rows = []
    for e in load_registry().values():
        bundled = bool(e.url) and e.url.startswith(hub.PACKAGE_PREFIX)
        pypi = bool(e.url) and e.url.startswith(hub.PYPI_PREFIX)
        cached = (
            bool(e.url) and not bundled and not pypi and hub.cached_path(e.url, e.sha256).is_file()
        )
        if e.needs_training:
            status = "train first" + (" (backbone cached)" if cached else "")
        elif pypi:
            status = hub.pypi_status(e.url)
        else:
            status = "bundled" if bundled else "cached" if cached else "download"
        rows.append(
            {
                "name": e.name,
                "architecture": e.architecture,
                "pool": e.pool,
                "feature_map": f"{e.feature_channels}x{e.feature_size[0]}x{e.feature_size[1]}",
                "input_size": e.preprocess.input_size,
                "cpu_batch_size": e.cpu_batch_size or DEFAULT_CPU_BATCH_SIZE,
                "classes": e.num_classes,
                "weights": status,
                "url": e.url,
                "sha256": e.sha256,
                "description": e.description,
            }
        )
    return rows


# Wide enough for any row when stdout is no terminal: nothing is cut for a pipe or file.
_PIPED_WIDTH = 1000


def _print_table(rows: list[dict]) -> None:
    """The rows as a table on stdout: on a terminal, one line per network at 80 columns or more
    (long architecture names cut with an ellipsis); on a narrower one every column is kept, at
    its own width: names fold onto more lines (whole), weights wrap, an architecture too long
    is cut with an ellipsis (:func:`_narrow_widths`). Piped or redirected, every row whole (as
    wide as its longest cell needs)."""
    from rich.measure import Measurement

    from camcli.console import stdout_console

    piped = not stdout_console().is_terminal
    console = stdout_console(_PIPED_WIDTH if piped else None)
    t = _table(rows, piped)
    if not piped:
        wide = console.options.update_width(_PIPED_WIDTH)
        natural = Measurement.get(console, wide, t).maximum
        arch = min(
            _ARCH_MAX, max(len(c) for c in ["architecture"] + [r["architecture"] for r in rows])
        )
        # the wide layout cuts only architectures, to no less than _ARCH_MIN
        if natural - max(0, arch - _ARCH_MIN) > console.width:
            t = _table(rows, piped, widths=_narrow_widths(rows, console.width))
    console.print(t)


_COLUMNS = ("name", "architecture", "pool", "feature map", "classes", "weights")
_ARCH_MAX = 16  # the architecture column's width on a terminal
_ARCH_MIN = 8  # ... and the least the wide layout gives it ("tf_effi…")
# a narrow terminal: the columns' widths but the name's and the architecture's
_NARROW_FIXED = {"pool": 4, "feature map": 10, "classes": 7, "weights": 9}
_NARROW_GAP = 2  # between two columns: the cell's right padding and the divider


def _narrow_widths(rows: list[dict], width: int) -> dict[str, int]:
    """Every column's width on a terminal ``width`` columns wide that the wide layout does not
    fit: pool, feature map, classes and weights their own; the name as wide as its longest
    value allows (at least 8, folded below that); the architecture what is left, 6 at least."""
    room = width - _NARROW_GAP * (len(_COLUMNS) - 1) - sum(_NARROW_FIXED.values())
    longest = max(len(c) for c in ["name"] + [r["name"] for r in rows])
    name = max(8, min(longest, room - 6))
    arch = max(6, min(_ARCH_MAX, room - name))
    return {"name": name, "architecture": arch, **_NARROW_FIXED}


def _table(rows: list[dict], piped: bool, *, widths: dict[str, int] | None = None):
    """The table of ``rows``; ``widths``: the narrow layout's column widths
    (:func:`_narrow_widths`), else the wide layout (80 columns and more, or piped)."""
    from rich import box
    from rich.table import Table

    from camcli.console import cell

    # Fits 80 columns: light borders, the input size (224 throughout) left to --json.
    t = Table(
        title="camcli models",
        caption="torchvision:<name> and timm:<name> also take any torchvision or timm "
        "classifier ending in global pooling + one linear layer",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        **({} if widths is None else {"show_edge": False, "padding": (0, 1, 0, 0)}),
    )
    for col in _COLUMNS:
        if widths is not None:  # names fold (whole); a cut elsewhere shows an ellipsis
            t.add_column(col, width=widths[col], overflow="fold" if col == "name" else "ellipsis")
            continue
        # names are what users copy: never cut or wrapped
        arch = col == "architecture" and not piped  # long timm names cut on a terminal
        t.add_column(
            col,
            no_wrap=not arch,
            overflow="ellipsis" if arch else "fold",
            max_width=_ARCH_MAX if arch else None,
        )
    for r in rows:
        colour = {
            "cached": "green",
            "bundled": "green",
            "installed": "green",
            "download": "cyan",
        }.get(r["weights"], "yellow")
        t.add_row(
            cell(r["name"]),
            cell(r["architecture"]),
            cell(r["pool"].upper().replace("AVG", "GAP").replace("MAX", "GMP")),
            cell(r["feature_map"]),
            str(r["classes"]),
            f"[{colour}]{cell(r['weights'])}[/]",
        )
    return t
