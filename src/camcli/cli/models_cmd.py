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
    """The rows as a table on stdout: on a terminal, 80 columns wide (long architecture names
    cut); piped or redirected, every row whole (as wide as its longest cell needs)."""
    from rich import box
    from rich.table import Table

    from camcli.console import cell, stdout_console

    piped = not stdout_console().is_terminal
    console = stdout_console(_PIPED_WIDTH if piped else None)
    # Fits 80 columns: light borders, the input size (224 throughout) left to --json.
    t = Table(
        title="camcli models",
        caption="torchvision:<name> and timm:<name> also take any torchvision or timm "
        "classifier ending in global pooling + one linear layer",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col in ("name", "architecture", "pool", "feature map", "classes", "weights"):
        # names are what users copy: never cut or wrapped
        arch = col == "architecture" and not piped  # long timm names cut on a terminal
        t.add_column(
            col,
            no_wrap=not arch,
            overflow="ellipsis" if arch else "fold",
            max_width=16 if arch else None,
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
    console.print(t)
