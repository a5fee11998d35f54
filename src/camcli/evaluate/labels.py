"""Labels of ground truth -> class indices: the :class:`LabelMap` and where it comes from.

A ground-truth label is a WordNet id (``n01440764``, mapped through ``--synsets``: class index =
position in the SORTED WNIDs, SPEC.md section 4), a class name (the model's categories,
``--categories`` or the synsets' names; case, ``_`` and runs of spaces ignored; a synset name's
comma-separated parts match too when unambiguous) or a class index. Without any of them the map
is inferred from the names the predictions carry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from camcli.errors import GtError
from camcli.evaluate.synsets import WNID_RE

__all__ = ["Label", "LabelMap", "NeedSynsets", "load_label_map"]

Label = tuple[str, ...]
"""A label and its fallbacks (other label columns of the same CSV row), tried in turn."""


class NeedSynsets(KeyError):
    """A WNID label, and no WNID mapping to read it with."""


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").casefold().split())


class LabelMap:
    """Labels (WNIDs, names, class indices, ILSVRC2012_IDs) -> class indices.

    Args:
        names: class index -> name (``None`` entries unknown).
        wnids: class index -> WNID (sorted order) when known.
        ilsvrc_ids: class index -> ILSVRC2012_ID when known.
        explicit: the map came from the user (categories, synsets, model), so an unknown label
            is an error; False: inferred from the predictions.
        source: what the map came from, for messages.
    """

    def __init__(
        self,
        names: Sequence[str | None] = (),
        *,
        wnids: Sequence[str] | None = None,
        ilsvrc_ids: Sequence[int] | None = None,
        explicit: bool = True,
        source: str = "",
    ) -> None:
        self.names = list(names)
        self.wnids = list(wnids) if wnids is not None else None
        self.ilsvrc_ids = list(ilsvrc_ids) if ilsvrc_ids is not None else None
        self.explicit = explicit
        self.source = source
        self._new: dict[str, int] = {}
        self._reindex()

    def _reindex(self) -> None:
        full: dict[str, int | None] = {}
        part: dict[str, int | None] = {}
        for i, n in enumerate(self.names):
            if not n:
                continue
            k = _norm(n)
            full[k] = i if full.get(k, i) == i else None
            for p in n.split(","):
                kp = _norm(p)
                if kp and kp != k:
                    part[kp] = i if part.get(kp, i) == i else None
        self._full, self._part = full, part
        self._wnid = {w: i for i, w in enumerate(self.wnids)} if self.wnids else {}
        self._id = {d: i for i, d in enumerate(self.ilsvrc_ids)} if self.ilsvrc_ids else {}

    @property
    def num_classes(self) -> int | None:
        """The number of classes known (names or WNIDs), or None when none is."""
        n = max(len(self.names), len(self.wnids or ()))
        return n or None

    def add_names(self, pairs: Iterable[tuple[int, str]]) -> None:
        """Learn ``class_index -> name`` pairs (from prediction records) where unknown."""
        changed = False
        for i, n in pairs:
            i = int(i)
            if i < 0:
                continue
            if i >= len(self.names):
                self.names.extend([None] * (i + 1 - len(self.names)))
            if self.names[i] is None and n:
                self.names[i] = str(n)
                changed = True
        if changed:
            self._reindex()

    def index(self, label: Label | str | int) -> int:
        """Class index of a label, its fallbacks tried in turn.

        Args:
            label: a WNID, a class name or a class index (text or int), or a tuple of them.

        Returns:
            The class index.

        Raises:
            NeedSynsets: a WNID and no WNID mapping (every alternative).
            KeyError: no alternative maps; ``args[0]`` is the one-line reason of the first.
        """
        alts = (label,) if isinstance(label, str | int) else tuple(label)
        errors: list[KeyError] = []
        for alt in alts:
            try:
                return self._one(alt)
            except KeyError as exc:
                errors.append(exc)
        if errors and all(isinstance(e, NeedSynsets) for e in errors):
            raise errors[0]
        raise KeyError(errors[0].args[0] if errors else "empty label")

    def index_or_new(self, label: Label | str) -> int:
        """Like :meth:`index`, but an unknown label gets its own negative index."""
        try:
            return self.index(label)
        except KeyError:
            key = label if isinstance(label, str) else label[0]
            return self._new.setdefault(key, -1 - len(self._new))

    def _one(self, label: str | int) -> int:
        s = str(label).strip()
        if re.fullmatch(r"-?\d+", s):
            i = int(s)
            n = self.num_classes
            if i < 0 or (n is not None and self.explicit and i >= n):
                raise KeyError(f"class index {i} is outside 0..{(n or 1) - 1}")
            return i
        if WNID_RE.match(s):
            if not self.wnids and self._adopt_imagenet1k_wnids():
                pass
            elif not self.wnids:
                raise NeedSynsets(
                    f"label {s!r} is a WordNet id; pass --synsets (Kaggle "
                    "LOC_synset_mapping.txt, devkit map_clsloc.txt or meta.mat) to map WNIDs "
                    "to class indices"
                )
            if s not in self._wnid:
                raise KeyError(f"WNID {s!r} is not in {self.source or 'the synsets'}")
            return self._wnid[s]
        k = _norm(s)
        for table in (self._full, self._part):
            if k in table:
                if table[k] is None:
                    raise KeyError(f"label {s!r} names several classes; use WNIDs or class indices")
                return table[k]  # type: ignore[return-value]
        where = self.source or "the model's categories"
        raise KeyError(f"label {s!r} is not a class of {where}; check --synsets/--categories")

    def _adopt_imagenet1k_wnids(self) -> bool:
        """Take the built-in ImageNet-1k WNIDs when every known class name is ImageNet-1k's
        name of that index (an ImageNet-1k model: registry, torchvision or timm); False when
        the names are another class set or timm's list is unavailable."""
        from camcli.evaluate.synsets import SynsetError, imagenet1k_synsets

        known = [(i, n) for i, n in enumerate(self.names) if n]
        if not known or len(self.names) > 1000:
            return False
        try:
            builtin = imagenet1k_synsets()
        except SynsetError:
            return False
        if any(_norm(builtin.names[i]) != _norm(n) for i, n in known):
            return False
        self.wnids = list(builtin.wnids)
        self.source = (self.source + ", " if self.source else "") + builtin.source
        self._reindex()
        return True

    def index_of_ilsvrc_id(self, ident: int) -> int:
        """Class index of an ILSVRC2012_ID (ILSVRC submissions). Raises KeyError(reason)
        without IDs (a Kaggle mapping) or for an unknown ID."""
        if not self.ilsvrc_ids:
            raise KeyError(
                "an ILSVRC submission labels classes by ILSVRC2012_ID: pass --synsets with the "
                "devkit's map_clsloc.txt or data/meta.mat (LOC_synset_mapping.txt has no IDs)"
            )
        if int(ident) not in self._id:
            raise KeyError(f"ILSVRC2012_ID {ident} is not in {self.source or 'the synsets'}")
        return self._id[int(ident)]


def load_label_map(
    *,
    synsets: str | None = None,
    categories: str | None = None,
    model: str | None = None,
) -> LabelMap | None:
    """The label map the user asked for, or None (then it is inferred from the predictions).

    Names from ``categories`` or ``model`` take precedence over the synsets' names.

    Args:
        synsets: devkit ``meta.mat``, ``map_clsloc.txt`` or Kaggle ``LOC_synset_mapping.txt``
            (read by :func:`camcli.evaluate.synsets.load_synsets`): WNIDs in sorted order =
            class indices, names, ILSVRC IDs.
        categories: a file with one class name per line (class index order) or a packaged set
            name (``imagenet1k``).
        model: a registry name or a camcli checkpoint file, for its class names (when
            ``categories`` is not given), see :func:`_model_categories`.

    Returns:
        An explicit :class:`LabelMap`, or None when no option was given.

    Raises:
        GtError: an unreadable synsets file, an unknown category set, or synsets and categories
            of different sizes.
        RegistryError: an unknown ``model``.
    """
    names: list[str | None] = []
    wnids = ids = None
    src = []
    if synsets:
        wnids, ids, names = _read_synsets(synsets)
        src.append(f"synsets {synsets}")
    cat_names: list[str] | None = None
    if categories:
        cat_names = _read_categories(categories)
        src.append(f"categories {categories}")
    elif model:
        cat_names = _model_categories(model)
        src.append(f"model {model}")
    if cat_names is not None:
        if wnids is not None and len(wnids) != len(cat_names):
            raise GtError(
                f"--synsets has {len(wnids)} classes but the categories have {len(cat_names)}; "
                "use the mapping of the model's class set"
            )
        names = list(cat_names)
    if not src:
        return None
    return LabelMap(names, wnids=wnids, ilsvrc_ids=ids, explicit=True, source=", ".join(src))


def _read_synsets(synsets: str) -> tuple[list[str], list[int] | None, list[str | None]]:
    """The WNIDs (class order), ILSVRC IDs (or None) and names (None where empty) of a synsets
    file; an unreadable one is a GtError."""
    from camcli.evaluate.synsets import SynsetError, load_synsets

    try:
        sm = load_synsets(synsets, num_classes=None)
    except SynsetError as exc:
        raise GtError(str(exc)) from None
    wnids = list(sm.wnids)
    ids = list(sm.ilsvrc_ids) if sm.ilsvrc_ids is not None else None
    names: list[str | None] = [n or None for n in sm.names]
    return wnids, ids, names


def _read_categories(categories: str) -> list[str]:
    """The class names of a file (one per line, blank lines skipped) or a packaged set."""
    p = Path(categories)
    if p.is_file():
        try:
            text = p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise GtError(f"--categories {categories}: not UTF-8 text (byte {exc.start})") from None
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    from camcli.models.registry import RegistryError, load_categories

    try:
        return list(load_categories(categories))
    except RegistryError:
        raise GtError(
            f"--categories {categories!r}: neither a file (one class name per line) "
            "nor a packaged set like imagenet1k"
        ) from None


def _model_categories(model: str) -> list[str]:
    """The class names of a model: ImageNet's for ``torchvision:<name>``; a registry entry's
    category set, or else the names its bundled or cached checkpoint carries (``demo``); the
    names a camcli checkpoint file carries (``--model RUN/best.pt``).

    Raises:
        GtError: the model has no class names of its own (an untrained ``camnet-small``), or
            its checkpoint cannot be read.
        RegistryError: an unknown model name.
    """
    from camcli.errors import CamcliError
    from camcli.models.registry import RegistryError, get_entry, load_categories

    if model.startswith(("torchvision:", "timm:")):
        return list(load_categories("imagenet1k"))
    if Path(model).is_file():
        try:
            return _checkpoint_categories(model, None, f"--model {model}")
        except CamcliError as exc:
            if exc.exit_code != 2:  # unreadable or corrupt weights: their own exit code
                raise
            raise GtError(
                f"--model {model}: not a camcli checkpoint ({exc}); give a registry name, "
                "RUN/best.pt, or --categories FILE"
            ) from None
    entry = get_entry(model)
    try:
        return list(load_categories(entry.categories))
    except RegistryError:
        pass
    if entry.url is None or entry.needs_training:
        raise GtError(
            f"--model {model}: no class names of its own (its weights are trained with "
            "`camcli train`); pass --model RUN/best.pt (a checkpoint carries its class names) "
            "or --categories FILE"
        )
    try:
        return _checkpoint_categories(None, model, f"--model {model}")
    except CamcliError as exc:
        raise GtError(
            f"--model {model}: its class names are in its weights, which cannot be read "
            f"offline ({exc}); pass --categories FILE"
        ) from None


def _checkpoint_categories(path: str | None, name: str | None, what: str) -> list[str]:
    """The categories of the model ``load_model(name, path, offline=True)`` builds."""
    from camcli.models.load import load_model

    m = load_model(name, path, offline=True)
    if not m.categories:
        raise GtError(f"{what}: the weights carry no class names; pass --categories FILE")
    return list(m.categories)
