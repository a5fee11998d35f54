"""The network a run starts from, and which of its layers are new (trained at a higher lr).

finetune / linear-probe: backbone weights from the registry URL (torchvision and timm: the whole
network, classifier replaced; ``timm:<name>`` without a URL: timm's Hugging Face Hub weights;
paper: the backbone, a new conv head; small: a camcli checkpoint's trunk).
scratch: random initialisation (seeded by the caller).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from camcli.errors import TrainingError
from camcli.models.gap import GapModel
from camcli.models.load import build_model
from camcli.models.registry import ModelEntry
from camcli.train.options import TrainOptions


def _load_state(url: str, sha: str | None, offline: bool) -> tuple[dict, dict | None]:
    """(state_dict, camcli checkpoint dict | None) of the weights at ``url`` (cached)."""
    from camcli.models import hub

    path = hub.download(url, sha, offline=offline)
    loaded = hub.load_file(path, source=url)
    return loaded.state_dict, loaded.checkpoint


def initial_model(
    entry: ModelEntry, o: TrainOptions, categories: Sequence[str], *, offline: bool = False
) -> tuple[GapModel, list[str]]:
    """The network to train and the parameter-name prefixes of its untrained layers.

    Args:
        entry: the registry entry of ``o.model``.
        o: resolved options; ``o.arch_options`` is updated in place where the weights decide
            it (paper GoogLeNet: ``transform_input``; small: the checkpoint's options).
        categories: the class names (the new classifier's outputs).
        offline: never download; use cached weights only.

    Returns:
        (the model on the CPU, :func:`new_layer_prefixes`).

    Raises:
        TrainingError: ``--arch-option`` values or a trunk that do not fit the weights.
        WeightsError: the weights cannot be had.
    """
    pre = replace(entry.preprocess, input_size=o.image_size, resize="resize", resize_size=None)
    kw = {"categories": list(categories), "preprocess": pre, "pool": o.pool}
    if not o.pretrained:
        model = build_model(
            entry, None, num_classes=len(categories), arch_options=o.arch_options or None, **kw
        )
    else:
        if entry.url is None and entry.extra.get("hf_hub_id"):  # timm:<name>: timm's hub
            from camcli.models.load import _load_timm_hub_weights

            state, ck = _load_timm_hub_weights(entry, entry.name, offline).state_dict, None
        else:
            state, ck = _load_state(entry.url, entry.sha256, offline)
        build = {
            "torchvision": _torchvision_model,
            "timm": _torchvision_model,
            "paper": _paper_model,
        }.get(entry.builder, _trunk_from_checkpoint)
        model = build(entry, o, state, ck, kw)
    return model, new_layer_prefixes(entry, o, model)


def _torchvision_model(
    entry: ModelEntry, o: TrainOptions, state: dict, ck: dict | None, kw: dict
) -> GapModel:
    """The whole pretrained network (torchvision or timm) with a new linear classifier."""
    base = build_model(entry, state)
    k = base.fc.in_features
    fc = nn.Linear(k, len(kw["categories"]))
    return GapModel(
        base.trunk,
        fc,
        o.pool,
        name=entry.name,
        preprocess=kw["preprocess"],
        categories=kw["categories"],
    )


def _paper_model(
    entry: ModelEntry, o: TrainOptions, state: dict, ck: dict | None, kw: dict
) -> GapModel:
    """The pretrained backbone under the paper's new conv head (GoogLeNet: transform_input)."""
    if entry.architecture == "googlenet":
        o.arch_options = {**o.arch_options, "transform_input": True}
    return build_model(
        entry,
        None,
        num_classes=len(kw["categories"]),
        backbone_state=state,
        arch_options=o.arch_options,
        **kw,
    )


def _trunk_from_checkpoint(
    entry: ModelEntry, o: TrainOptions, state: dict, ck: dict | None, kw: dict
) -> GapModel:
    """small (or any builder whose default weights are a camcli checkpoint): reuse the trunk,
    built with the checkpoint's architecture options."""
    if ck is not None and ck.get("arch_options"):
        if o.arch_options and o.arch_options != ck["arch_options"]:
            raise TrainingError(
                f"--arch-option {o.arch_options} does not fit the pretrained {entry.name} "
                f"({ck['arch_options']}); drop it or use --no-pretrained"
            )
        o.arch_options = dict(ck["arch_options"])
    model = build_model(
        entry, None, num_classes=len(kw["categories"]), arch_options=o.arch_options or None, **kw
    )
    trunk = {k[len("trunk.") :]: v for k, v in state.items() if k.startswith("trunk.")}
    try:
        model.trunk.load_state_dict(trunk)
    except RuntimeError as exc:
        raise TrainingError(f"{entry.url}: its trunk does not fit {entry.name} ({exc})") from exc
    return model


def new_layer_prefixes(entry: ModelEntry, o: TrainOptions, model: GapModel) -> list[str]:
    """Parameter-name prefixes of the layers that start untrained.

    Everything from scratch; the paper's new conv head (the last 2 trunk modules, 4 for
    alexnet-star) and the classifier for paper models; else the classifier alone.
    """
    if not o.pretrained:
        return ["trunk.", "fc."]
    if entry.builder == "paper":
        n_new = 4 if entry.name.startswith("alexnet-star") else 2
        first = len(model.trunk) - n_new
        return [f"trunk.{i}." for i in range(first, len(model.trunk))] + ["fc."]
    return ["fc."]
