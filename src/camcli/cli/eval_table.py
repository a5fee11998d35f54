"""How ``camcli eval`` (and ``bbox --gt``) shows a result: the warnings about images that were
not scored as predicted, and the metrics table."""

from __future__ import annotations

# (key, label, is a fraction) in table order
_ROWS = (
    ("top1_cls_error", "top-1 classification error", True),
    ("top5_cls_error", "top-5 classification error", True),
    ("top1_loc_error", "top-1 localization error", True),
    ("top5_loc_error", "top-5 localization error", True),
    ("gt_known_loc", "GT-known localization", True),
    ("gt_known_tau", "  at tau (--threshold)", False),
    ("max_gt_known_loc", "best GT-known localization (maps)", True),
    ("best_tau_gt_known", "  best tau (GT-known): pass it to bbox --threshold", False),
    ("maxboxacc_v1", "MaxBoxAccV1 (IoU 0.5, largest box)", True),
    ("best_tau", "  best tau (V1)", False),
    ("maxboxacc_v2", "MaxBoxAccV2 (IoU 0.3/0.5/0.7, all boxes)", True),
    ("pxap", "PxAP", True),
    ("n_images", "images", False),
    ("n_loc_images", "images scored for localization", False),
    ("n_blacklisted", "blacklisted (localization only)", False),
    ("n_missing", "missing", False),
    ("n_failed", "failed (counted wrong)", False),
    ("n_unreadable", "unreadable records / GT files (skipped)", False),
    ("n_missing_gt_class", "no map of the GT class (counted wrong)", False),
    ("n_unmatched", "predictions matching no GT image", False),
)


def _names(xs: list, n: int = 5) -> str:
    shown = ", ".join(
        f"{x.get('image')} ({x.get('error')})" if isinstance(x, dict) else str(x) for x in xs[:n]
    )
    return shown + (f", ... ({len(xs) - n} more)" if len(xs) > n else "")


def warn_mismatches(result: dict) -> None:
    """One warning line per kind of image that was not scored as predicted."""
    from camcli.console import plural, warn
    from camcli.evaluate.report import is_subset

    for why in result.get("unreadable") or []:
        warn(f"{why} (skipped)")
    miss = result.get("missing") or []
    if miss:
        counted = "left out by --subset" if is_subset(result) else "counted wrong"
        warn(
            f"{plural(len(miss), 'ground-truth image has', 'ground-truth images have')} no "
            f"prediction ({counted}): {_names(miss)}"
        )
    if result.get("unmatched"):
        warn(
            f"{plural(len(result['unmatched']), 'prediction matches', 'predictions match')} "
            "no ground-truth image (ignored): "
            f"{_names(result['unmatched'])}"
        )
    if result.get("failed"):
        warn(
            f"{plural(len(result['failed']), 'prediction is an error', 'predictions are errors')}"
            " (counted wrong): "
            f"{_names(result['failed'])}"
        )
    if result.get("n_duplicates"):
        n = plural(result["n_duplicates"], "prediction repeats", "predictions repeat")
        warn(f"{n} an image already scored (ignored)")
    if result.get("missing_gt_class"):
        warn(
            f"{plural(len(result['missing_gt_class']), 'map file holds', 'map files hold')} "
            "no map of the image's GT class "
            f"(counted wrong; save maps with the GT class): {_names(result['missing_gt_class'])}"
        )
    if result.get("n_renormalised"):
        n = plural(result["n_renormalised"], "map was", "maps were")
        w = "was" if result["n_renormalised"] == 1 else "were"
        warn(f"{n} outside [0, 1] and {w} min-max normalised")
    if result.get("unknown_labels"):
        labels = "label" if len(result["unknown_labels"]) == 1 else "labels"
        warn(
            f"ground-truth {labels} no prediction uses (counted wrong): "
            f"{_names(result['unknown_labels'])}; pass --synsets or --categories to check them"
        )
    if result.get("n_missing_gt_known"):
        warn(
            f"{plural(result['n_missing_gt_known'], 'record carries', 'records carry')} "
            "no GT-known box for the GT class "
            "(counted wrong in gt_known_loc)"
        )
    if result.get("pxap_error"):
        warn(result["pxap_error"])


def print_metrics_table(result: dict, title: str = "evaluation", *, stderr: bool = False) -> None:
    """The headline figures (percentages) and counts as a rich table on stdout (or stderr)."""
    from rich.table import Table

    from camcli.console import stderr_console, stdout_console
    from camcli.evaluate.report import is_subset

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    subset = is_subset(result)
    for key, label, frac in _ROWS:
        if key not in result:
            continue
        v = result[key]
        if key == "n_missing":
            label += " (left out, --subset)" if subset else " (counted wrong)"
        if frac:
            table.add_row(label, f"{100 * v:.2f} %")
        else:
            table.add_row(label, f"{v:g}" if isinstance(v, float) else str(v))
        if key == "maxboxacc_v2":
            for d, acc in (result.get("maxboxacc_v2_by_iou") or {}).items():
                tau = (result.get("best_tau_v2") or {}).get(d, float("nan"))
                table.add_row(f"  IoU {d}: MaxBoxAcc (best tau {tau:g})", f"{100 * acc:.2f} %")
    (stderr_console() if stderr else stdout_console()).print(table)
