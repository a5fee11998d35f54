"""GAP networks behind one adapter.

Every network camcli runs is a :class:`GapModel`: ``features(x) -> [B, K, h, w]``, a linear
``classifier`` giving ``(W [C, K], b [C])``, a ``pool`` kind (``avg`` or ``max``), the
``preprocess`` spec and the ``categories``. Registry builders make the paper's networks
(vgg-gap, googlenet-gap, alexnet-gap, alexnet-star-gap and their -gmp twins) and wrap
torchvision classifiers that already end in global pooling + one linear layer; any such
torchvision model can be named as ``torchvision:<name>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from camcli.errors import ModelError
from camcli.models import hub
from camcli.models.registry import (
    ModelEntry,
    Preprocess,
    RegistryError,
    get_entry,
    load_categories,
)

TV_PREFIX = "torchvision:"


class GapModel(nn.Module):
    """Adapter: a conv trunk, global pooling, one linear layer.

    ``trunk``: [B, 3, S, S] -> [B, K, h, w]; ``fc``: Linear(K, C); ``pool``: "avg" | "max".
    """

    def __init__(
        self,
        trunk: nn.Module,
        fc: nn.Linear,
        pool: str,
        *,
        name: str,
        preprocess: Preprocess,
        categories: Sequence[str],
    ) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be avg or max, got {pool!r}")
        self.trunk = trunk
        self.fc = fc
        self.pool = pool
        self.name = name
        self.preprocess = preprocess
        self.categories = list(categories)
        self.weights_sha256: str | None = None
        self.weights_source: str | None = None
        self.head_trained = True

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    @property
    def classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [C, K], b [C]) of the linear layer (b zeros when it has no bias)."""
        w = self.fc.weight
        b = self.fc.bias if self.fc.bias is not None else torch.zeros(w.shape[0], device=w.device)
        return w, b

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised float -> last feature map [B, K, h, w]."""
        return self.trunk(x)

    def pooled(self, f: torch.Tensor) -> torch.Tensor:
        """[B, K, h, w] -> [B, K]."""
        return f.mean(dim=(2, 3)) if self.pool == "avg" else f.amax(dim=(2, 3))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (features [B, K, h, w], logits [B, C])."""
        f = self.features(x)
        return f, self.fc(self.pooled(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


class _TransformInput(nn.Module):
    """torchvision GoogLeNet's ``transform_input``: re-normalise ImageNet input to [-1, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ch = [
            x[:, i : i + 1] * (s / 0.5) + (m - 0.5) / 0.5
            for i, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        ]
        return torch.cat(ch, dim=1)


# Pooling that some torchvision models do functionally in forward(): class name -> pool kind.
_FUNCTIONAL_POOL = {"ShuffleNetV2": "avg", "MNASNet": "avg", "MobileNetV2": "avg"}
_SKIP_CHILDREN = ("aux1", "aux2", "AuxLogits")
# Networks whose published torchvision weights expect ``transform_input=True``.
_TRANSFORM_INPUT = ("GoogLeNet", "Inception3")
# DenseNet files published before module names lost their dots: ``...denselayer1.norm.1.weight``.
_LEGACY_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$"
)
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
_NBT = "num_batches_tracked"


def _is_global_pool(m: nn.Module) -> str | None:
    if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        size = m.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if all(s == 1 for s in size):
            return "avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "max"
    return None


def _single_linear(modules: list[nn.Module]) -> nn.Linear | None:
    """The one Linear among modules that may only add Dropout/Flatten/Identity around it."""
    flat: list[nn.Module] = []
    for m in modules:
        flat.extend(m.children() if isinstance(m, nn.Sequential) else [m])
    linears = [m for m in flat if isinstance(m, nn.Linear)]
    rest = [m for m in flat if not isinstance(m, nn.Linear | nn.Dropout | nn.Flatten | nn.Identity)]
    return linears[0] if len(linears) == 1 and not rest else None


def split_gap_classifier(net: nn.Module, name: str) -> tuple[nn.Module, nn.Linear, str]:
    """Find (trunk, fc, pool) of a torchvision classifier ending in global pooling + one linear.

    Raises ModelError naming the registry's paper networks when the head is of another form.
    """
    cls = type(net).__name__
    if cls == "DenseNet":
        return nn.Sequential(net.features, nn.ReLU()), net.classifier, "avg"
    children = [(n, m) for n, m in net.named_children() if n not in _SKIP_CHILDREN]
    pool_at = next((i for i, (_, m) in enumerate(children) if _is_global_pool(m)), None)
    if pool_at is not None:
        pool = _is_global_pool(children[pool_at][1])
        body, head = children[:pool_at], children[pool_at + 1 :]
    elif cls in _FUNCTIONAL_POOL:
        pool = _FUNCTIONAL_POOL[cls]
        head_at = len(children) - 1
        body, head = children[:head_at], children[head_at:]
    else:
        body = head = None
    fc = _single_linear([m for _, m in head]) if head is not None else None
    if fc is None:
        raise ModelError(
            f"{name}: its head is not global pooling + one linear layer, so it gives no exact "
            "CAM; use a registry network (`camcli models`), e.g. vgg-gap in place of vgg16"
        )
    mods: list[nn.Module] = []
    if cls in _TRANSFORM_INPUT and getattr(net, "transform_input", False):
        mods.append(_TransformInput())
    mods.extend(m for _, m in body)
    return nn.Sequential(*mods), fc, pool


def check_gap_head(entry: ModelEntry) -> None:
    """Raise ModelError unless ``entry``'s torchvision network ends in global pooling + one
    linear layer; builds it without real weights where torch allows (meta device)."""
    try:
        with torch.device("meta"):
            net = _tv_model(entry.architecture, entry.num_classes)
    except NotImplementedError:  # builders that compute with tensors (regnet widths)
        net = _tv_model(entry.architecture, entry.num_classes)
    split_gap_classifier(net, entry.name)


def _tv_model(arch: str, num_classes: int, **kwargs) -> nn.Module:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError as exc:
        raise ModelError(
            f"unknown torchvision model {arch!r}: see torchvision.models.list_models()"
        ) from exc
    if arch == "googlenet" or arch.startswith("inception"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", False)
        # torchvision's own weights for these were trained on [-1, 1] input (its builders set
        # transform_input=True whenever weights are given; camcli loads them afterwards).
        kwargs.setdefault("transform_input", True)
    return builder(weights=None, num_classes=num_classes, **kwargs)


def _paper_trunk(
    arch: str, backbone_state: dict | None, star: bool, transform_input: bool | None = None
) -> nn.Module:
    """The paper's trunks (SPEC section 6) with the new conv layer(s) of the GAP head.

    transform_input (googlenet): prepend torchvision's parameter-free input re-normalisation
    (default: yes, so trunk.* keys never shift). Checkpoints record it (``arch_options``).
    """
    import torchvision

    if arch == "vgg16":
        net = torchvision.models.vgg16(weights=None)
        if backbone_state is not None:
            _load_strict(net, backbone_state, "vgg16 backbone")
        body, c = list(net.features[:30]), 512
    elif arch == "alexnet":
        net = torchvision.models.alexnet(weights=None)
        if backbone_state is not None:
            _load_strict(net, backbone_state, "alexnet backbone")
        body, c = list(net.features[:12]), 256
    elif arch == "googlenet":
        net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
        if backbone_state is not None:
            _load_strict(net, _tv_state(net, backbone_state), "googlenet backbone")
        # Present by default (it has no parameters), so trunk.* keys are the same whether the
        # trunk was built from the backbone or from a trained checkpoint.
        if transform_input is None:
            transform_input = True
        body = [_TransformInput()] if transform_input else []
        order = [
            "conv1",
            "maxpool1",
            "conv2",
            "conv3",
            "maxpool2",
            "inception3a",
            "inception3b",
            "maxpool3",
            "inception4a",
            "inception4b",
            "inception4c",
            "inception4d",
            "inception4e",
        ]
        body += [getattr(net, n) for n in order]
        c = 832
    else:
        raise ModelError(f"no paper network on architecture {arch!r}")
    head: list[nn.Module] = [nn.Conv2d(c, 1024, 3, padding=1), nn.ReLU(inplace=True)]
    if star:
        head += [nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*body, *head)


def _tv_state(net: nn.Module, state: dict) -> dict:
    """A published torchvision file in the form ``net`` loads: DenseNet's old ``norm.1`` keys
    renamed, auxiliary classifiers' tensors dropped when ``net`` has none (as torchvision's
    own builders do). Keys ``net`` already has are never touched."""
    own = net.state_dict()
    out = {}
    for k, v in state.items():
        if k not in own:
            m = _LEGACY_DENSE_KEY.match(k)
            if m:
                k = m.group(1) + m.group(2)
            elif k.startswith(_AUX_PREFIXES):
                continue
        out[k] = v
    return out


def _load_strict(net: nn.Module, state: dict, what: str) -> None:
    """load_state_dict with a one-line error naming the first mismatching tensor."""
    own = net.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise hub.WeightsError(
                f"{what}: tensor {k!r} has shape {list(v.shape)} but the architecture expects "
                f"{list(own[k].shape)}; these weights are for another network"
            )
    # Files saved before BatchNorm had num_batches_tracked lack it (torch fills it in too).
    state = {**{k: v for k, v in own.items() if k.endswith(_NBT) and k not in state}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise hub.WeightsError(
            f"{what}: weights do not fit the architecture ({first}; {len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors); these weights are for another network"
        )
    net.load_state_dict(state)


def _classes_in(state: dict, key: str) -> int | None:
    w = state.get(key)
    return int(w.shape[0]) if w is not None and w.ndim == 2 else None


def _fc_key(arch: str) -> str:
    if arch.startswith("densenet"):
        return "classifier.weight"
    if arch.startswith(("mobilenet", "efficientnet", "mnasnet")):
        return "classifier.1.weight"
    return "fc.weight"


@dataclass
class BuildResult:
    model: GapModel
    entry: ModelEntry | None


def entry_for(name: str) -> ModelEntry:
    """Registry entry, or a synthetic entry for ``torchvision:<name>``."""
    if name.startswith(TV_PREFIX):
        arch = name[len(TV_PREFIX) :]
        url = sha = None
        try:
            import torchvision

            w = torchvision.models.get_model_weights(arch).DEFAULT
            url = w.url
            m = hub._HASH_IN_NAME.search(url.rsplit("/", 1)[-1])
            sha = m.group(1) if m else None
            interp = "bicubic" if "BICUBIC" in str(w.transforms().interpolation) else "bilinear"
            size = int(w.transforms().crop_size[0])
        except ValueError as exc:
            raise ModelError(
                f"unknown torchvision model {arch!r}: see torchvision.models.list_models()"
            ) from exc
        return ModelEntry(
            name=name,
            architecture=arch,
            builder="torchvision",
            description="torchvision " + arch,
            url=url,
            sha256=sha,
            pool="avg",
            head="pretrained",
            num_classes=1000,
            categories="imagenet1k",
            feature_channels=0,
            feature_size=(0, 0),
            preprocess=Preprocess(input_size=size, interpolation=interp),
            licence="BSD-3-Clause",
        )
    return get_entry(name)


def build_model(
    entry: ModelEntry,
    state: dict | None,
    *,
    num_classes: int | None = None,
    categories: Sequence[str] | None = None,
    preprocess: Preprocess | None = None,
    pool: str | None = None,
    backbone_state: dict | None = None,
    arch_options: dict | None = None,
) -> GapModel:
    """Build the adapter for ``entry``.

    state: a torchvision-style state_dict for the whole architecture (torchvision builders), or
    a GapModel state_dict (``trunk.*``, ``fc.*``); None for random init.
    backbone_state: paper builders only, torchvision weights of the backbone network.
    """
    pre = preprocess or entry.preprocess
    pool = pool or entry.pool
    if state is not None and num_classes is None:
        num_classes = (
            _classes_in(state, "fc.weight")
            if any(k.startswith("trunk.") for k in state)
            else _classes_in(state, _fc_key(entry.architecture))
        )
    n = num_classes or entry.num_classes
    cats = list(categories) if categories is not None else _default_categories(entry, n)
    gap_state = state is not None and any(k.startswith("trunk.") for k in state)
    if entry.builder == "torchvision":
        net = _tv_model(entry.architecture, n)
        if state is not None and not gap_state:
            _load_strict(net, _tv_state(net, state), entry.name)
        trunk, fc, tv_pool = split_gap_classifier(net, entry.name)
        model = GapModel(trunk, fc, tv_pool, name=entry.name, preprocess=pre, categories=cats)
    elif entry.builder == "paper":
        star = entry.name.startswith("alexnet-star")
        transform = (arch_options or {}).get("transform_input")
        trunk = _paper_trunk(entry.architecture, backbone_state, star, transform)
        model = GapModel(
            trunk, nn.Linear(1024, n), pool, name=entry.name, preprocess=pre, categories=cats
        )
    elif entry.builder == "small":
        from camcli.models.small import build_small_trunk

        trunk, k = build_small_trunk(entry, **(arch_options or {}))
        model = GapModel(
            trunk, nn.Linear(k, n), pool, name=entry.name, preprocess=pre, categories=cats
        )
    else:  # pragma: no cover - registry validation forbids it
        raise ModelError(f"unknown builder {entry.builder!r}")
    if gap_state:
        _load_strict(model, state, entry.name)
    return model.eval()


def _default_categories(entry: ModelEntry, n: int) -> list[str]:
    try:
        cats = list(load_categories(entry.categories))
    except RegistryError:
        cats = []
    return cats if len(cats) == n else [f"class_{i}" for i in range(n)]


def load_model(
    name: str | None,
    weights: str | None = None,
    *,
    offline: bool = False,
    require_trained_head: bool = True,
) -> GapModel:
    """The front door: a registry name (or ``torchvision:<name>``) and a weights spec.

    weights: None (the entry's default), a registry name (its weights), a local file (a
    torchvision-style state_dict, a camcli checkpoint, or .safetensors) or an https URL.
    A camcli checkpoint alone (``name=None``) is enough: it names its architecture.
    """
    loaded = None
    from pathlib import Path

    if name is not None:  # refuse an unknown or unfit network before reading or downloading
        first = entry_for(name)
        if first.builder == "torchvision" and name.startswith(TV_PREFIX):
            check_gap_head(first)
    if weights is not None and not hub.is_url(weights) and Path(weights).exists():
        loaded = hub.load_file(Path(weights))
    elif weights is not None and hub.is_url(weights):
        path = hub.download(weights, None, offline=offline)
        loaded = hub.load_file(path, source=weights)
    ckpt = loaded.checkpoint if loaded else None
    if name is None:
        if ckpt is None:
            raise ModelError("--model is required unless --weights is a camcli checkpoint")
        name = ckpt["model"]
    if weights is not None and loaded is None:
        # A registry name used as a weights name.
        try:
            wentry = get_entry(weights)
        except RegistryError as exc:
            raise hub.WeightsError(
                f"--weights {weights!r}: not a file, URL or registry name; pass a .pt/.pth/"
                ".safetensors file, an https URL or a name from `camcli models`"
            ) from exc
        path = hub.download(wentry.url, wentry.sha256, offline=offline)
        loaded = hub.load_file(path, source=wentry.url)
    entry = entry_for(name)
    if loaded is None and entry.builder != "paper":
        if entry.url is None:
            raise hub.WeightsError(f"{name}: no default weights; pass --weights")
        path = hub.download(entry.url, entry.sha256, offline=offline)
        loaded = hub.load_file(path, source=entry.url)
        ckpt = loaded.checkpoint
    if ckpt is not None:
        if ckpt.get("model") not in (None, name) and entry_for(ckpt["model"]).architecture != (
            entry.architecture
        ):
            raise hub.WeightsError(
                f"{loaded.source}: checkpoint is for {ckpt['model']!r}, not {name!r}; "
                f"use --model {ckpt['model']} or leave --model out"
            )
        pre = ckpt.get("preprocess")
        model = build_model(
            entry,
            loaded.state_dict,
            num_classes=len(ckpt["categories"]),
            categories=ckpt["categories"],
            preprocess=Preprocess.from_dict(pre) if pre else None,
            pool=ckpt.get("pool"),
            arch_options=ckpt.get("arch_options"),
        )
    elif entry.builder == "paper":
        if loaded is None:
            if require_trained_head:  # fail before downloading a backbone that cannot help
                raise hub.WeightsError(
                    f"{name}: no trained GAP head; train it first (`camcli train DATA --model "
                    f"{name} --out RUN`) and pass --weights RUN/best.pt"
                )
            path = hub.download(entry.url, entry.sha256, offline=offline)
            loaded = hub.load_file(path, source=entry.url)
        if any(k.startswith("trunk.") for k in loaded.state_dict):
            model = build_model(entry, loaded.state_dict)
        else:
            if require_trained_head:
                raise hub.WeightsError(
                    f"{name}: {loaded.source} holds backbone weights only and the GAP head is "
                    f"untrained; train it first (`camcli train DATA --model {name} --out RUN`) "
                    "and pass --weights RUN/best.pt"
                )
            model = build_model(entry, None, backbone_state=loaded.state_dict)
            model.head_trained = False
    else:
        model = build_model(entry, loaded.state_dict)
    model.weights_sha256 = loaded.sha256
    model.weights_source = loaded.source
    return model


def random_model(name: str, num_classes: int | None = None) -> GapModel:
    """A randomly initialised network of the registry (tests, benchmarks, training)."""
    return build_model(entry_for(name), None, num_classes=num_classes)
