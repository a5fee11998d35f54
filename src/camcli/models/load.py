"""Loading a network: registry entry, weights spec -> :class:`GapModel`.

:func:`load_model` is the front door (a name and a weights file, URL or registry name);
:func:`build_model` builds an entry's network around a state_dict; :func:`random_model` builds
one with random weights. Every download is :func:`camcli.models.hub.download`, looked up on the
module when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from camcli.errors import ModelError, WeightsError
from camcli.models import hub
from camcli.models.builders import (
    check_gap_head,
    classes_in,
    fc_key,
    load_strict,
    paper_trunk,
    torchvision_net,
    torchvision_state,
)
from camcli.models.gap import GapModel, split_gap_classifier
from camcli.models.registry import (
    ModelEntry,
    Preprocess,
    RegistryError,
    get_entry,
    load_categories,
)
from camcli.models.timmnet import (
    TIMM_PREFIX,
    split_timm,
    timm_classes,
    timm_entry,
    timm_net,
    timm_state,
)

TV_PREFIX = "torchvision:"
DEFAULT_MODEL = "efficientnet_lite0"
"""The network of ``predict``, ``cam`` and ``bbox`` when neither ``--model`` nor a camcli
checkpoint names one: ImageNet-1k weights that install with camcli (no download)."""


def entry_for(name: str) -> ModelEntry:
    """The registry entry of ``name``, or one made for ``torchvision:<name>`` (its default
    published weights, ImageNet categories, and the weights' input size and interpolation) or
    ``timm:<name>`` (its pretrained config; see :func:`camcli.models.timmnet.timm_entry`).

    Raises:
        RegistryError: no registry network of that name.
        ModelError: torchvision or timm has no model of that name.
    """
    if name.startswith(TIMM_PREFIX):
        return timm_entry(name)
    if name.startswith(TV_PREFIX):
        arch = name[len(TV_PREFIX) :]
        url = sha = None
        try:
            import torchvision

            w = torchvision.models.get_model_weights(arch).DEFAULT
            url = w.url
            sha = hub.split_url(url)[1]
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
    """Build the :class:`GapModel` of ``entry``, in eval mode, on the CPU.

    Args:
        entry: the registry entry (see :func:`entry_for`).
        state: a torchvision-style state_dict of the whole architecture (torchvision builders),
            or a GapModel state_dict (``trunk.*``, ``fc.*``); None for random init.
        num_classes: C; default: read from ``state``'s classifier, else the entry's.
        categories: the C class names; default: the entry's set when it has C names, else
            ``class_0`` ... ``class_{C-1}``.
        preprocess: default: the entry's.
        pool: ``avg`` or ``max``; default: the entry's (torchvision and timm networks: their
            own).
        backbone_state: paper builders only: torchvision weights of the backbone network.
        arch_options: builder options a checkpoint records (googlenet's ``transform_input``,
            camnet-small's ``width``, ``stages``, ...).

    Raises:
        WeightsError: ``state`` or ``backbone_state`` does not fit the architecture.
        ModelError: torchvision has no such network, or its head is not GAP + one linear layer.
        SmallArchError: bad camnet-small options.
    """
    pre = preprocess or entry.preprocess
    asked_pool = pool  # a checkpoint's (e.g. a GMP fine-tune of a torchvision / timm network)
    pool = pool or entry.pool
    if state is not None and num_classes is None:
        if any(k.startswith("trunk.") for k in state):
            num_classes = classes_in(state, "fc.weight")
        elif entry.builder == "timm":
            num_classes = timm_classes(state)
        else:
            num_classes = classes_in(state, fc_key(entry.architecture))
    n = num_classes or entry.num_classes
    cats = list(categories) if categories is not None else default_categories(entry, n)
    gap_state = state is not None and any(k.startswith("trunk.") for k in state)
    if entry.builder == "torchvision":
        net = torchvision_net(entry.architecture, n)
        if state is not None and not gap_state:
            load_strict(net, torchvision_state(net, state), entry.name)
        trunk, fc, tv_pool = split_gap_classifier(net, entry.name)
        model = GapModel(
            trunk, fc, asked_pool or tv_pool, name=entry.name, preprocess=pre, categories=cats
        )
    elif entry.builder == "timm":
        net = timm_net(entry.architecture, n)
        if state is not None and not gap_state:
            load_strict(net, timm_state(net, state), entry.name)
        trunk, fc, t_pool = split_timm(net, entry.name)
        model = GapModel(
            trunk, fc, asked_pool or t_pool, name=entry.name, preprocess=pre, categories=cats
        )
    elif entry.builder == "paper":
        star = entry.name.startswith("alexnet-star")
        transform = (arch_options or {}).get("transform_input")
        trunk = paper_trunk(entry.architecture, backbone_state, star, transform)
        model = GapModel(
            trunk, nn.Linear(1024, n), pool, name=entry.name, preprocess=pre, categories=cats
        )
    elif entry.builder == "small":
        from camcli.models.camnet_small import build_small_trunk

        trunk, k = build_small_trunk(entry, **(arch_options or {}))
        model = GapModel(
            trunk, nn.Linear(k, n), pool, name=entry.name, preprocess=pre, categories=cats
        )
    else:  # pragma: no cover - registry validation forbids it
        raise ModelError(f"unknown builder {entry.builder!r}")
    if gap_state:
        load_strict(model, state, entry.name)
    return model.eval()


def default_categories(entry: ModelEntry, n: int) -> list[str]:
    """The entry's category names when its set has ``n`` of them, else ``class_0`` ..
    ``class_{n-1}``."""
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

    An unknown or unfit network is refused before anything is read or downloaded; downloads
    go through :func:`camcli.models.hub.download` (verified, cached).

    Args:
        name: a registry name, ``torchvision:<name>`` or ``timm:<name>``; None for the
            network a camcli checkpoint in ``weights`` names, or :data:`DEFAULT_MODEL` when
            there are no ``weights``.
        weights: None (the entry's default), a registry name (its weights), a local file (a
            torchvision-style state_dict, a camcli checkpoint, or .safetensors) or an http(s)
            URL (``#sha256=<hex>`` to verify it).
        offline: never touch the network (a file not cached is an error).
        require_trained_head: refuse a paper network whose GAP head is untrained (backbone
            weights only); False builds it anyway (``head_trained`` is then False).

    Returns:
        The model in eval mode on the CPU, ``weights_sha256`` and ``weights_source`` set.

    Raises:
        RegistryError: unknown network name.
        ModelError: no ``name`` and ``weights`` that are not a checkpoint, or a torchvision
            or timm head that is not GAP + one linear layer.
        WeightsError: the weights cannot be found, downloaded, verified or loaded, or do not
            fit the network.
    """
    if name is not None:  # refuse an unknown or unfit network before reading or downloading
        _check_network(name)
    loaded = _load_file_or_url(weights, offline)
    ckpt = loaded.checkpoint if loaded else None
    if name is None:
        if ckpt is None and weights is not None and _registry_name(weights):
            name = weights  # a registry name as --weights: that network, its default weights
            loaded = _load_named_weights(weights, offline)
            ckpt = loaded.checkpoint
        elif ckpt is None and weights is not None:
            if loaded is None:  # no such file (nor URL, nor registry name): say that (exit 4)
                _load_named_weights(weights, offline)
            raise ModelError(
                f"--weights {weights}: not a camcli checkpoint, so it does not say which network "
                "it is for; pass --model too"
            )
        name = ckpt["model"] if ckpt is not None else name or DEFAULT_MODEL
        try:
            entry_for(name)
        except (RegistryError, ModelError):
            if ckpt is None:
                raise
            raise WeightsError(
                f"{loaded.source}: checkpoint field 'model' is {name[:60]!r}, not a network "
                "camcli knows (see `camcli models`)"
            ) from None
    if weights is not None and loaded is None:
        loaded = _load_named_weights(weights, offline)
    entry = entry_for(name)
    if loaded is None and entry.builder != "paper":
        loaded = _load_default_weights(entry, name, offline)
        ckpt = loaded.checkpoint
    if ckpt is not None:
        model = _model_from_checkpoint(entry, name, loaded, ckpt)
    elif entry.builder == "paper":
        if loaded is None:
            loaded = _load_paper_backbone(entry, name, offline, require_trained_head)
        model = _paper_model(entry, name, loaded, require_trained_head)
    else:
        model = build_model(entry, loaded.state_dict)
    model.weights_sha256 = loaded.sha256
    model.weights_source = loaded.source
    return model


def _registry_name(spec: str) -> bool:
    """Whether a ``--weights`` value that is no file or URL is a registry name."""
    try:
        get_entry(spec)
    except RegistryError:
        return False
    return True


def _check_network(name: str) -> None:
    """Refuse an unknown network, or a torchvision one whose head is not GAP + one linear layer."""
    first = entry_for(name)
    if first.builder == "torchvision" and name.startswith(TV_PREFIX):
        check_gap_head(first)
    elif name.startswith(TIMM_PREFIX):
        split_timm(timm_net(first.architecture, first.num_classes), name)


def _load_file_or_url(weights: str | None, offline: bool) -> hub.LoadedWeights | None:
    """The weights of a local file or a URL (downloaded); None for no spec or any other one."""
    if weights is not None and not hub.is_url(weights) and Path(weights).exists():
        return hub.load_file(Path(weights))
    if weights is not None and hub.is_url(weights):
        path = hub.download(weights, None, offline=offline)
        return hub.load_file(path, source=weights)
    return None


def _load_named_weights(weights: str, offline: bool) -> hub.LoadedWeights:
    """The weights of a registry name used as a weights name (downloaded)."""
    try:
        wentry = get_entry(weights)
    except RegistryError as exc:
        raise WeightsError(
            f"--weights {weights!r}: not a file, URL or registry name; pass a .pt/.pth/"
            ".safetensors file, an https URL or a name from `camcli models`"
        ) from exc
    path = hub.download(wentry.url, wentry.sha256, offline=offline)
    return hub.load_file(path, source=wentry.url)


def _load_default_weights(entry: ModelEntry, name: str, offline: bool) -> hub.LoadedWeights:
    """The entry's default weights (downloaded); an error when it has none."""
    if entry.url is None and entry.extra.get("hf_hub_id"):
        return _load_timm_hub_weights(entry, name, offline)
    if entry.url is None:
        raise WeightsError(f"{name}: no default weights; pass --weights")
    path = hub.download(entry.url, entry.sha256, offline=offline)
    return hub.load_file(path, source=entry.url)


def _load_timm_hub_weights(entry: ModelEntry, name: str, offline: bool) -> hub.LoadedWeights:
    """A ``timm:`` model's pretrained weights through timm's own Hugging Face Hub download."""
    hf_id = entry.extra["hf_hub_id"]
    if offline:
        raise WeightsError(
            f"--offline: {name}'s pretrained weights come from the Hugging Face Hub "
            f"({hf_id}); pass --weights FILE (a state_dict or .safetensors of it)"
        )
    import timm

    try:
        net = timm.create_model(entry.architecture, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - network, hub and format failures alike
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{name}: timm could not fetch its pretrained weights from {hf_id} ({msg[:200]}); "
            "check the network or pass --weights FILE"
        ) from exc
    return hub.LoadedWeights(net.state_dict(), f"hf-hub:{hf_id}", None)


def _model_from_checkpoint(
    entry: ModelEntry, name: str, loaded: hub.LoadedWeights, ckpt: dict
) -> GapModel:
    """The model a camcli checkpoint describes; an error when it is for another architecture."""
    if ckpt.get("model") not in (None, name) and entry_for(ckpt["model"]).architecture != (
        entry.architecture
    ):
        raise WeightsError(
            f"{loaded.source}: checkpoint is for {ckpt['model']!r}, not {name!r}; "
            f"use --model {ckpt['model']} or leave --model out"
        )
    n_state = classes_in(loaded.state_dict, "fc.weight")
    if n_state is not None and n_state != len(ckpt["categories"]):
        raise WeightsError(
            f"{loaded.source}: checkpoint field 'categories' has {len(ckpt['categories'])} "
            f"names but the classifier has {n_state} classes; the file is inconsistent"
        )
    pre = ckpt.get("preprocess")
    return build_model(
        entry,
        loaded.state_dict,
        num_classes=len(ckpt["categories"]),
        categories=ckpt["categories"],
        preprocess=Preprocess.from_dict(pre) if pre else None,
        pool=ckpt.get("pool"),
        arch_options=ckpt.get("arch_options"),
    )


def _load_paper_backbone(
    entry: ModelEntry, name: str, offline: bool, require_trained_head: bool
) -> hub.LoadedWeights:
    """A paper network's default (backbone) weights, downloaded only when an untrained head
    is allowed."""
    if require_trained_head:  # fail before downloading a backbone that cannot help
        raise WeightsError(
            f"{name}: no trained GAP head; train it first (`camcli train DATA --model "
            f"{name} --out RUN`) and pass --weights RUN/best.pt"
        )
    path = hub.download(entry.url, entry.sha256, offline=offline)
    return hub.load_file(path, source=entry.url)


def _paper_model(
    entry: ModelEntry, name: str, loaded: hub.LoadedWeights, require_trained_head: bool
) -> GapModel:
    """A paper network from GapModel weights, or around backbone weights (untrained head)."""
    if any(k.startswith("trunk.") for k in loaded.state_dict):
        return build_model(entry, loaded.state_dict)
    if require_trained_head:
        raise WeightsError(
            f"{name}: {loaded.source} holds backbone weights only and the GAP head is "
            f"untrained; train it first (`camcli train DATA --model {name} --out RUN`) "
            "and pass --weights RUN/best.pt"
        )
    model = build_model(entry, None, backbone_state=loaded.state_dict)
    model.head_trained = False
    return model


def random_model(name: str, num_classes: int | None = None) -> GapModel:
    """A randomly initialised network of the registry (tests, benchmarks, training).

    Args:
        name: a registry name or ``torchvision:<name>``.
        num_classes: C; default: the entry's.

    Returns:
        The model in eval mode on the CPU; no weights are read or downloaded.
    """
    return build_model(entry_for(name), None, num_classes=num_classes)
