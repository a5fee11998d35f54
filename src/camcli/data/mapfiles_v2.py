"""Map files v2: each class's map at feature resolution plus what rebuilds it on the image.

``camcli cam --save-maps`` writes one ``.npz`` per image (``np.savez``, arrays only):

- ``version``: int64 scalar, 2;
- ``cams``: float32 [k, h, w], the RAW (unnormalised) maps of the image's k classes at the
  network's feature resolution (``7 x 7`` for resnet50 at 224; with ``--ten-crop`` the ten
  crops' maps merged on their ``S' x S'`` canvas);
- ``class_indices`` int64 [k] (most confident first), ``scores`` float32 [k], ``labels``
  str [k], ``image`` str (the image's path);
- ``norm`` str (``minmax``, ``max`` or ``none``), ``interpolation`` str (``bilinear`` or
  ``bicubic``);
- ``height``, ``width`` int64: the ORIGINAL image size; ``input_size`` int64: the side S the
  maps were upsampled to first; ``resize`` str (``resize`` or ``center_crop``) and
  ``short_side`` int64 (the centre-crop resize target, 0 for ``resize``): the geometry of
  :class:`camcli.cam.upsample.Geometry`.

The map ``cam`` rendered for class i is ``upsample_one(normalize_cams(cams[i]), geometry,
interpolation)``, the same functions (:mod:`camcli.cam.pipeline`, :mod:`camcli.cam.upsample`):
:meth:`MapFileV2.class_map` gives it exactly, so boxes from the file equal boxes from the image.
Files without ``version`` (or with version 1) are v1 files, read by
:mod:`camcli.data.mapfiles`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from camcli.data.inputs import DEFAULT_MAX_PIXELS

__all__ = ["VERSION", "MapFileV2", "is_v2", "read_v2", "v2_arrays"]

VERSION = 2
"""The ``version`` field of a v2 map file."""


MAX_INPUT_SIZE = 8192
"""The largest network input side a v2 file may name (bounds the first upsampling)."""


def is_v2(z) -> bool:
    """True when the opened ``np.load`` archive ``z`` is a v2 map file (``version`` 2).

    Raises:
        ValueError: a ``version`` this camcli does not know.
    """
    if "version" not in z.files:
        return False
    v = int(np.asarray(z["version"]).reshape(-1)[0])
    if v in (1, VERSION):
        return v == VERSION
    raise ValueError(f"map file version {v}; this camcli reads versions 1 and 2 (upgrade it)")


def v2_arrays(
    raw: np.ndarray,
    *,
    class_indices,
    scores,
    labels,
    image: str,
    geometry: dict,
    norm: str,
    interpolation: str,
) -> dict[str, np.ndarray]:
    """The arrays of a v2 map file (see the module docstring), for ``np.savez``.

    Args:
        raw: float [k, h, w] unnormalised maps.
        class_indices, scores, labels: k entries each.
        image: the image's path.
        geometry: :meth:`camcli.cam.upsample.Geometry.to_dict`.
        norm, interpolation: as the maps were normalised and upsampled.
    """
    return {
        "version": np.asarray(VERSION, dtype=np.int64),
        "cams": np.asarray(raw, dtype=np.float32),
        "class_indices": np.asarray(class_indices, dtype=np.int64),
        "scores": np.asarray(scores, dtype=np.float32),
        "labels": np.asarray(labels),
        "image": np.asarray(image),
        "norm": np.asarray(norm),
        "interpolation": np.asarray(interpolation),
        "height": np.asarray(geometry["height"], dtype=np.int64),
        "width": np.asarray(geometry["width"], dtype=np.int64),
        "input_size": np.asarray(geometry["size"], dtype=np.int64),
        "resize": np.asarray(geometry["mode"]),
        "short_side": np.asarray(geometry["short_side"] or 0, dtype=np.int64),
    }


@dataclass(frozen=True)
class MapFileV2:
    """The content of a v2 map file.

    Attributes:
        raw: float32 [k, h, w], the raw maps.
        geometry: a :class:`camcli.cam.upsample.Geometry`.
        norm: the normalisation mode.
        interpolation: the upsampling.
        scores: float32 [k] or None.
    """

    raw: np.ndarray
    geometry: object
    norm: str
    interpolation: str
    scores: np.ndarray | None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return self.geometry.height, self.geometry.width  # type: ignore[attr-defined]

    def normalized(self):
        """float32 torch [k, h, w]: the maps normalised as ``cam`` normalised them."""
        import torch

        from camcli.cam.pipeline import normalize_cams

        return normalize_cams(torch.from_numpy(self.raw), self.norm)

    def class_map(self, i: int) -> np.ndarray:
        """float32 [H, W]: map ``i`` on the original image, exactly as ``cam`` computed it."""
        from camcli.cam.upsample import upsample_one

        up, _ = upsample_one(self.normalized()[i : i + 1], self.geometry, self.interpolation)  # type: ignore[arg-type]
        return up[0].numpy()

    def stack(self) -> np.ndarray:
        """float32 [k, H, W]: every map on the original image (k full-size maps in memory)."""
        h, w = self.size
        out = np.empty((self.raw.shape[0], h, w), dtype=np.float32)
        for i in range(self.raw.shape[0]):
            out[i] = self.class_map(i)
        return out


def _scalar(z, name: str):
    if name not in z.files:
        raise ValueError(f"v2 map file without {name!r}")
    a = np.asarray(z[name])
    if a.size != 1:
        raise ValueError(f"{name} has shape {list(a.shape)}, expected a scalar")
    return a.reshape(-1)[0]


def read_v2(z, k: int) -> MapFileV2:
    """The v2 content of an opened ``np.load`` archive whose ``class_indices`` has k entries.

    Raises:
        ValueError: a one-line reason: a missing field, a ``cams`` shape other than
            [k, h, w], an unknown normalisation, interpolation or geometry, an original size
            over the decoder's pixel limit.
    """
    from camcli.cam.pipeline import NORMALIZATIONS
    from camcli.cam.upsample import INTERPOLATIONS, Geometry

    raw = np.asarray(z["cams"])
    if raw.ndim != 3 or raw.shape[0] != k or min(raw.shape[1:]) < 1:
        raise ValueError(
            f"cams has shape {list(raw.shape)}, expected [k, h, w] with k = {k} class_indices"
        )
    if raw.dtype.kind != "f":
        raise ValueError(f"cams has dtype {raw.dtype}, expected float")
    norm, interp = str(_scalar(z, "norm")), str(_scalar(z, "interpolation"))
    if norm not in NORMALIZATIONS:
        raise ValueError(f"unknown norm {norm!r}")
    if interp not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interp!r}")
    h, w = int(_scalar(z, "height")), int(_scalar(z, "width"))
    if h < 1 or w < 1 or h * w > DEFAULT_MAX_PIXELS:
        raise ValueError(f"image size {w}x{h} is not between 1 and {DEFAULT_MAX_PIXELS} pixels")
    size = int(_scalar(z, "input_size"))
    if not 1 <= size <= MAX_INPUT_SIZE:
        raise ValueError(f"input_size {size} is not between 1 and {MAX_INPUT_SIZE}")
    mode = str(_scalar(z, "resize"))
    short = int(_scalar(z, "short_side"))
    if mode == "center_crop" and not 1 <= short <= MAX_INPUT_SIZE:
        raise ValueError(f"short_side {short} is not between 1 and {MAX_INPUT_SIZE}")
    geom = Geometry.from_dict(
        {
            "height": h,
            "width": w,
            "size": size,
            "mode": mode,
            "short_side": short if mode == "center_crop" else None,
        }
    )
    scores = np.asarray(z["scores"], dtype=np.float32).reshape(-1) if "scores" in z.files else None
    return MapFileV2(raw.astype(np.float32), geom, norm, interp, scores)
