"""The model registry: ``weights.toml`` read with tomllib into frozen dataclasses.

Importing this module never imports torch, so ``camcli --help`` and ``camcli models`` stay fast.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from camcli.errors import RegistryError

RESIZE_MODES = ("resize", "center_crop")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
POOLS = ("avg", "max")
BUILDERS = ("torchvision", "paper", "small", "timm")
HEADS = ("pretrained", "untrained")
ALIASES = {"demo": "shapes"}
"""Former registry names that still work (not listed by ``camcli models``)."""
#: The largest network input side (pixels): larger sizes cost minutes and gigabytes per image.
MAX_INPUT_SIZE = 1024


@dataclass(frozen=True)
class Preprocess:
    """How an original image becomes the network input.

    ``resize``: anisotropic resize to ``input_size`` x ``input_size`` (default; maps back exactly).
    ``center_crop``: resize the shorter side to ``resize_size`` then centre-crop ``input_size``.
    """

    input_size: int = 224
    resize: str = "resize"
    resize_size: int | None = None
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise RegistryError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise RegistryError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if not 8 <= self.input_size <= MAX_INPUT_SIZE:
            raise RegistryError(f"input_size must be 8..{MAX_INPUT_SIZE}, got {self.input_size}")
        if self.resize == "center_crop" and (self.resize_size or 0) < self.input_size:
            raise RegistryError("center_crop needs resize_size >= input_size")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) < 1e-4:
            raise RegistryError("mean and std need three values, std >= 1e-4")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise RegistryError("mean and std must be finite numbers")

    def to_dict(self) -> dict:
        """Plain JSON-able values (what checkpoints and run.json record)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """The inverse of :meth:`to_dict`; unknown keys are ignored.

        Raises:
            RegistryError: a value out of range (see the class).
        """
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        return cls(**known)


DEFAULT_CPU_BATCH_SIZE = 8
"""Images per CPU forward pass for an entry without ``cpu_batch_size`` (DESIGN.md pitfalls:
on a small CPU, activations fall out of cache at large batches)."""


@dataclass(frozen=True)
class ModelEntry:
    """One network of the registry (a ``[models.<name>]`` table of weights.toml).

    ``builder`` says how the network is made (``torchvision``, ``paper``, ``small``);
    ``url``/``sha256`` its default weights; ``head`` whether those include a trained GAP head;
    ``feature_channels`` and ``feature_size`` the last feature map [K, h, w] at the default
    input size; ``cpu_batch_size`` the images per forward pass on a CPU when ``--batch-size``
    is not given (None: :data:`DEFAULT_CPU_BATCH_SIZE`); ``extra`` the table's keys camcli
    does not know.
    """

    name: str
    architecture: str
    builder: str
    description: str
    url: str | None
    sha256: str | None
    pool: str
    head: str
    num_classes: int
    categories: str
    feature_channels: int
    feature_size: tuple[int, int]
    preprocess: Preprocess
    licence: str
    top1: float | None = None
    notes: str = ""
    cpu_batch_size: int | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def needs_training(self) -> bool:
        """Whether the default weights lack a trained GAP head."""
        return self.head == "untrained"

    @property
    def file_name(self) -> str | None:
        """The default weights' file name (the URL's last part), or None."""
        return self.url.rsplit("/", 1)[-1] if self.url else None

    def to_dict(self) -> dict:
        """Plain JSON-able values (``camcli models --json``), without ``extra``."""
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["feature_size"] = list(self.feature_size)
        d.pop("extra")
        return d


def _find_weights_toml() -> Path:
    packaged = resources.files("camcli") / "weights.toml"
    if packaged.is_file():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[3] / "weights.toml"
    if repo.is_file():
        return repo
    raise RegistryError("weights.toml not found: reinstall camcli (it ships inside the wheel)")


_REQUIRED = ("architecture", "builder", "url", "sha256", "pool", "head", "feature_size")


def parse_registry(data: dict) -> dict[str, ModelEntry]:
    """Validate parsed weights.toml content into ``{name: ModelEntry}`` (file order).

    Raises:
        RegistryError: a wrong schema version, or a model table lacking a key or holding a
            value out of range, naming the table.
    """
    if data.get("schema_version") != 1:
        raise RegistryError("weights.toml: schema_version must be 1")
    defaults = data.get("defaults", {})
    entries: dict[str, ModelEntry] = {}
    for name, raw in data.get("models", {}).items():
        merged = {**defaults, **raw}
        missing = [k for k in _REQUIRED if k not in merged]
        if missing:
            raise RegistryError(f"weights.toml [models.{name}] lacks {', '.join(missing)}")
        if merged["builder"] not in BUILDERS:
            raise RegistryError(f"[models.{name}] builder must be one of {BUILDERS}")
        if merged["pool"] not in POOLS:
            raise RegistryError(f"[models.{name}] pool must be one of {POOLS}")
        if merged["head"] not in HEADS:
            raise RegistryError(f"[models.{name}] head must be one of {HEADS}")
        sha = merged["sha256"]
        if sha and (len(sha) < 8 or len(sha) > 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise RegistryError(f"[models.{name}] sha256 must be 8-64 lowercase hex digits")
        cpu_bs = merged.get("cpu_batch_size")
        if cpu_bs is not None and (
            isinstance(cpu_bs, bool) or not isinstance(cpu_bs, int) or not 1 <= cpu_bs <= 1024
        ):
            raise RegistryError(f"[models.{name}] cpu_batch_size must be an integer in 1..1024")
        pre = Preprocess.from_dict(merged)
        known = set(ModelEntry.__dataclass_fields__) | set(Preprocess.__dataclass_fields__)
        entries[name] = ModelEntry(
            name=name,
            architecture=merged["architecture"],
            builder=merged["builder"],
            description=merged.get("description", ""),
            url=merged["url"] or None,
            sha256=sha or None,
            pool=merged["pool"],
            head=merged["head"],
            num_classes=int(merged["num_classes"]),
            categories=merged["categories"],
            feature_channels=int(merged.get("feature_channels", 0)),
            feature_size=tuple(int(v) for v in merged["feature_size"]),
            preprocess=pre,
            licence=merged.get("licence", ""),
            top1=merged.get("top1"),
            notes=merged.get("notes", ""),
            cpu_batch_size=cpu_bs,
            extra={k: v for k, v in raw.items() if k not in known},
        )
    return entries


@cache
def load_registry() -> dict[str, ModelEntry]:
    """All registry entries, by name, in file order (read once per process).

    Raises:
        RegistryError: weights.toml is missing or invalid.
    """
    path = _find_weights_toml()
    with open(path, "rb") as fh:
        return parse_registry(tomllib.load(fh))


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``.

    Raises:
        RegistryError: no such network (suggesting the closest name).
    """
    reg = load_registry()
    name = ALIASES.get(name, name)
    if name not in reg:
        import difflib

        close = difflib.get_close_matches(name, reg, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RegistryError(
            f"unknown model {name!r}: {hint}run `camcli models` for the list, "
            "or use torchvision:<name> / timm:<name> for any torchvision or timm GAP classifier"
        )
    return reg[name]


@cache
def load_categories(name: str) -> tuple[str, ...]:
    """Category names of a named set (``imagenet1k``), from the package data, in class order.

    Raises:
        RegistryError: no such set.
    """
    path = resources.files("camcli") / "categories" / f"{name}.txt"
    if not path.is_file():
        raise RegistryError(f"unknown categories set {name!r}")
    return tuple(line for line in path.read_text(encoding="utf-8").splitlines() if line)
