"""The limit: decode + preprocess + forward only, with camcli's own loader (no CAM, no writes),
of the bare model (or, with ``--fold --streams 2 --tuned-malloc``, of the network as camcli runs
it on a CPU: BatchNorm folded, "same" padding static, two batches at once on single-threaded
streams, glibc's allocator tuned as the command line tunes it).

Prints one JSON line: images/s over the whole process and in steady state (after the first
batch), for ``bench_cam.py``.
"""

from __future__ import annotations

import argparse
import json
import time

t_start = time.perf_counter()

import torch  # noqa: E402

from camcli.data import inputs, loader  # noqa: E402
from camcli.models.load import load_model  # noqa: E402
from camcli.runs.device import resolve_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images")
    ap.add_argument("--weights", default=None, help="a weights file (random-weight models)")
    ap.add_argument("--model", default=None, help="a registry name with real weights")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument(
        "--fold",
        action="store_true",
        help="fold BatchNorm into the convolutions and make same-padding static, as camcli's "
        "sessions do (else the bare model)",
    )
    ap.add_argument(
        "--streams",
        type=int,
        default=1,
        help="CPU forward passes at once, as camcli's --streams (1: the plain loop)",
    )
    ap.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="tune glibc's allocator as the camcli command line does (camcli.sysinfo)",
    )
    args = ap.parse_args()
    if args.tuned_malloc:
        from camcli.sysinfo import tune_allocator

        tune_allocator()
    dev = resolve_device(args.device)
    m = load_model(args.model, args.weights).eval()
    if args.fold:
        from camcli.models.fold import fold_for_inference
        from camcli.models.samepad import static_same_padding

        m, _ = fold_for_inference(m, m.preprocess.input_size)
        m, _ = static_same_padding(m, m.preprocess.input_size)
    m = m.to(dev)
    if dev.type == "cpu":
        m = m.to(memory_format=torch.channels_last)
    items = inputs.discover([args.images])[: args.max_images]
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    n, t_first = 0, None

    def forward(b):
        x = loader.normalize_batch(b.x.to(dev, non_blocking=True), m.preprocess)
        if dev.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None),
        ):
            m(x)
        return x.shape[0]

    batches = loader.iter_batches(
        items, m.preprocess, batch_size=args.batch_size, pin_memory=dev.type == "cuda"
    )
    if args.streams > 1 and dev.type == "cpu":
        from camcli.runs.streams import Streams, threads_per_stream

        pool = Streams(args.streams, threads_per_stream(args.streams))
        done = (r for _, r in pool.ordered(batches, forward))
    else:
        done = (forward(b) for b in batches)
    for size in done:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if t_first is None:
            t_first = time.perf_counter()
        else:
            n += size
    end = time.perf_counter()
    print(
        json.dumps(
            {
                "images_per_s": n / max(end - t_first, 1e-9),
                "process_images_per_s": len(items) / (end - t_start),
            }
        )
    )


if __name__ == "__main__":
    main()
