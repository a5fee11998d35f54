"""A loaded model on its device, with the options every model-running command shares."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from camcli.data import inputs, loader
from camcli.data.inputs import DEFAULT_MAX_PIXELS
from camcli.errors import CamcliError, UsageError
from camcli.models.fold import fold_for_inference
from camcli.models.gap import GapModel
from camcli.models.load import entry_for, load_model
from camcli.models.samepad import static_same_padding
from camcli.runs.device import resolve_device
from camcli.runs.profiling import Profiler
from camcli.runs.streams import Streams, default_streams, threads_per_stream


def default_batch_size(device: torch.device, model_name: str | None = None) -> int:
    """Images per forward pass when ``--batch-size`` is not given: 64 on CUDA; on a CPU the
    registry entry's ``cpu_batch_size`` (measured with ``benchmarks/limit.py``; e.g. 4 for
    EfficientNet-Lite, whose wide early activations leave the cache at 8), else
    :data:`~camcli.models.registry.DEFAULT_CPU_BATCH_SIZE`."""
    from camcli.models.registry import DEFAULT_CPU_BATCH_SIZE

    if device.type == "cuda":
        return 64
    try:
        entry = entry_for(model_name) if model_name else None
    except CamcliError:
        entry = None
    return (entry.cpu_batch_size if entry else None) or DEFAULT_CPU_BATCH_SIZE


@dataclass
class Session:
    """A loaded model on its device, with the options shared by every command.

    Attributes:
        model: the GAP network, in eval mode on ``device`` (channels-last on the CPU).
        device: where it runs.
        batch_size: images per forward pass.
        workers: decoding worker processes (None: the loader's default).
        max_pixels: larger images are refused (an error record), not decoded.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast of the forward pass.
        profiler: stage timings (``--profile``); a disabled one by default.
        device_codec: JPEG decode (and overlay render/encode) on the device.
        stats: ``{"ok", "failed"}`` inputs counted by the jobs that ran on this session.
        folded_bn: BatchNorm layers folded into their convolutions.
        streams: on the CPU, the batches whose forward pass runs at once, each on its own
            thread with ``torch.get_num_threads() // streams`` torch threads
            (:mod:`camcli.runs.streams`);
            None: one at a time on the calling thread (GPUs, ``--compile``, ``--streams 1``).
    """

    model: GapModel
    device: torch.device
    batch_size: int
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    precision: str = "fp32"
    profiler: Profiler | None = None
    device_codec: bool = False  # JPEG decode (and overlay render/encode) on the device
    stats: dict = field(default_factory=lambda: {"ok": 0, "failed": 0})
    folded_bn: int = 0  # BatchNorm layers folded into their convolutions (fold_for_inference)
    static_pads: int = 0  # "same" paddings made static (static_same_padding)
    streams: Streams | None = None

    def __post_init__(self) -> None:
        if self.profiler is None:
            self.profiler = Profiler(False)

    @classmethod
    def open(
        cls,
        model: str | None,
        weights: str | None = None,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        offline: bool = False,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        precision: str = "fp32",
        profile: bool = False,
        codec: str = "auto",
        compile: bool = False,
        fold: bool = True,
        streams: int | None = None,
    ) -> Session:
        """Load ``model`` with ``weights`` onto ``device`` (the command-line options).

        Args:
            model: a registry name or ``torchvision:<name>``; None when ``weights`` is a camcli
                checkpoint (it names its architecture).
            weights: None (the entry's default), a registry weights name, a local file or an
                https URL (:func:`camcli.models.load.load_model`).
            device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            batch_size: None: :func:`default_batch_size`.
            offline: never touch the network (cached or bundled weights only).
            workers, max_pixels, precision: as the attributes.
            profile: time the stages.
            codec: ``"auto"`` (the device on CUDA), ``"cpu"`` or ``"device"`` (on a CPU device:
                torchvision decodes in the main process; the CLI warns).
            compile: ``torch.compile`` the trunk.
            fold: fold each BatchNorm that follows a convolution into it
                (:func:`camcli.models.fold.fold_for_inference`) and make TensorFlow's "same"
                padding static for the input size
                (:func:`camcli.models.samepad.static_same_padding`); each checked to give the
                same outputs, within a relative 1e-4, or not done.
            streams: CPU forward passes at once, sharing torch's threads (None: 2 when torch
                has 2 or more, else 1: :func:`camcli.runs.streams.default_streams`); ignored
                on a GPU and with ``compile``.

        Raises:
            CamcliError: a bad ``device``, ``precision`` or ``codec``, fp16 on the CPU, or a
                model/weights that cannot be loaded (exit 2, or the error's own code).
        """
        dev = resolve_device(device)
        loader.sequential_opencv()
        if precision not in ("fp32", "bf16", "fp16"):
            raise UsageError(f"--precision {precision!r}: use fp32, bf16 or fp16")
        if precision == "fp16" and dev.type == "cpu":
            raise UsageError("--precision fp16 needs a GPU; on the CPU use bf16")
        m = load_model(model, weights, offline=offline).eval()
        folded = 0
        static = 0
        if fold:  # BatchNorm folded into the convolutions, TensorFlow's "same" padding made
            # static for the input size (same outputs, a faster forward)
            m, folded = fold_for_inference(m, m.preprocess.input_size)
            m, static = static_same_padding(m, m.preprocess.input_size)
        m = m.to(dev)
        if dev.type == "cpu":
            m = m.to(memory_format=torch.channels_last)
        if compile:
            # Compiles the trunk on first use (slow once); shapes vary only with the batch tail.
            m.trunk = torch.compile(m.trunk, dynamic=False)
        bs = batch_size or default_batch_size(dev, m.name)
        if codec not in ("auto", "cpu", "device"):
            raise UsageError(f"--codec {codec!r}: use auto, cpu or device")
        device_codec = codec == "device" or (codec == "auto" and dev.type == "cuda")
        if streams is not None and streams < 1:
            raise UsageError(f"--streams {streams}: use 1 or more")
        pool = None
        if dev.type == "cpu" and not compile:
            n = default_streams() if streams is None else streams
            if n > 1:
                pool = Streams(n, threads_per_stream(n))
        prof = Profiler(profile, dev)
        if pool is not None:
            prof.threaded.update(
                dict.fromkeys(("transfer", "forward", "cam"), "forward streams, overlapped")
            )
        return cls(
            m, dev, bs, workers, max_pixels, precision, prof, device_codec,
            folded_bn=folded, static_pads=static, streams=pool,
        )  # fmt: skip

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of ``precision``; None for fp32 (no autocast)."""
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def loader(
        self, items: list[inputs.InputItem], preprocess, *, keep_image: bool = False
    ) -> Iterator[loader.Batch]:
        """Decoded batches in input order; the time spent waiting for them is profiled.

        Args:
            items: the inputs.
            preprocess: the geometry and normalisation (:class:`camcli.models.registry.Preprocess`).
            keep_image: keep each original image (``Sample.image``, uint8 [3, H, W]).

        Yields:
            :class:`camcli.data.loader.Batch`: ``x`` uint8 [B, 3, S, S] (pinned on CUDA) or
            None when every sample failed; failed samples carry their ``error``.
        """
        it = loader.iter_batches(
            items,
            preprocess,
            batch_size=self.batch_size,
            workers=self.workers,
            keep_image=keep_image,
            max_pixels=self.max_pixels,
            pin_memory=self.device.type == "cuda",
            raw_jpeg=self.device_codec,
        )
        prof = self.profiler
        while True:
            with prof.stage("wait for decode"):
                batch = next(it, None)
            if batch is None:
                return
            prof.decode_worker_s += sum(
                s.decode_s for s in batch.samples + batch.failed + batch.raw
            )
            if self.device_codec:
                with prof.stage("decode (device)"):
                    batch = loader.device_decode(
                        batch, preprocess, self.device, keep_image=keep_image
                    )
            yield batch

    def to_input(self, x_uint8: torch.Tensor, preprocess) -> torch.Tensor:
        """uint8 [B, 3, S, S] (pinned on CUDA) -> normalised float32 [B, 3, S, S] on the device
        (channels-last on the CPU)."""
        with self.profiler.stage("transfer"):
            x = x_uint8.to(self.device, non_blocking=True)
            x = loader.normalize_batch(x, preprocess)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [B, K, h, w], logits [B, C]) under inference_mode and --precision."""
        dtype = self.autocast_dtype
        with (
            self.profiler.stage("forward"),
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None),
        ):
            return self.model.forward_features(x)

    def map_batches(
        self, batches: Iterable[loader.Batch], fn: Callable[[loader.Batch], object]
    ) -> Iterator[tuple[loader.Batch, object]]:
        """``(batch, fn(batch))`` in input order; ``fn`` (to_input, forward, maps) runs on the
        session's :attr:`streams`, several batches at once, or here one at a time. Batches
        without a decoded image (``x`` None) get None. The original images kept in flight are
        bounded (:data:`camcli.runs.streams.MAX_PIXELS_IN_FLIGHT`)."""
        if self.streams is None:
            for batch in batches:
                yield batch, (fn(batch) if batch.x is not None else None)
            return
        yield from self.streams.ordered(
            batches,
            fn,
            needed=lambda b: b.x is not None,
            cost=lambda b: sum(s.size[0] * s.size[1] for s in b.samples if s.image is not None),
            waiting=lambda: self.profiler.stage("wait for forward"),
        )

    def batches(
        self, items: list[inputs.InputItem], *, keep_image: bool = False
    ) -> Iterator[tuple[loader.Batch, torch.Tensor | None, torch.Tensor | None]]:
        """Yield (batch, features [B, K, h, w], logits [B, C]) on the device, input order."""
        pre = self.model.preprocess

        def run(batch):
            return self.forward(self.to_input(batch.x, pre))

        for batch, out in self.map_batches(self.loader(items, pre, keep_image=keep_image), run):
            feats, logits = out if out is not None else (None, None)
            yield batch, feats, logits
