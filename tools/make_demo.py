"""Regenerate the bundled shapes model (registry name `shapes`) and its sample images.

1. camcli.data.synthetic writes a labelled set of coloured shapes on textured backgrounds
   (5 classes x 300 train + 60 val images, 64 x 64, seed 0) into a temporary folder;
2. `camcli train` trains camnet-small on it from scratch (the real command, in a subprocess);
3. best.pt becomes src/camcli/assets/shapes.pt (a camcli checkpoint named "shapes", < 2 MB);
4. a few sample images (128 x 128 JPEGs, a few KB each) go to tests/data/shapes/;
5. the sha256 to put into weights.toml [models.shapes] is printed (--update-registry writes it).

Usage: python tools/make_demo.py [--epochs 15] [--work DIR] [--update-registry]
Takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from camcli.data import synthetic as synthetic  # noqa: E402

ASSET = ROOT / "src" / "camcli" / "assets" / "shapes.pt"
EXAMPLES = ROOT / "tests" / "data" / "shapes"
MAX_BYTES = 2 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--train-per-class", type=int, default=300)
    ap.add_argument("--val-per-class", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep the data and run here")
    ap.add_argument(
        "--update-registry", action="store_true", help="write the sha256 into weights.toml"
    )
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="camcli-demo-") as tmp:
        work = args.work or Path(tmp)
        data, run = work / "shapes", work / "run"
        print(f"generating the synthetic set in {data}", file=sys.stderr)
        synthetic.generate(
            data,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            size=64,
            seed=args.seed,
        )
        cmd = [
            sys.executable, "-m", "camcli", "train", str(data),
            "--model", "camnet-small", "--out", str(run), "--no-pretrained",
            "--epochs", str(args.epochs), "--image-size", "64", "--seed", str(args.seed),
            "--batch-size", "64", "--device", "cpu", "--arch-option", "downsamplings=2",
        ]  # fmt: skip
        print("running: " + " ".join(cmd), file=sys.stderr)
        env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")}
        subprocess.run(cmd, check=True, env=env)
        write_asset(run / "best.pt")
    write_examples(args.seed)
    digest = _sha256(ASSET)
    size = ASSET.stat().st_size
    print(f"{ASSET.relative_to(ROOT)}: {size} bytes, sha256 {digest}")
    if size >= MAX_BYTES:
        print("error: the demo weights are over 2 MB", file=sys.stderr)
        return 1
    if args.update_registry:
        update_registry(digest)
        print("weights.toml [models.shapes] sha256 updated")
    else:
        print(f'put into weights.toml [models.shapes]: sha256 = "{digest}"')
    check()
    return 0


def write_asset(best: Path) -> None:
    """best.pt -> assets/shapes.pt: named "shapes", nothing machine-specific, no optimizer state."""
    import torch

    from camcli.train.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(best)
    ck.pop("training_state", None)
    ck["model"] = "shapes"
    ck["created"] = "by tools/make_demo.py"
    ck["data"] = "camcli.data.synthetic.generate(seed=0): coloured shapes, 64 x 64"
    ck["state_dict"] = {k: v.contiguous() for k, v in ck["state_dict"].items()}
    torch.manual_seed(0)
    save_checkpoint(ck, ASSET)


def write_examples(seed: int) -> None:
    """One 128 x 128 JPEG per shape, plus a second circle, in tests/data/shapes/."""
    from PIL import Image

    EXAMPLES.mkdir(exist_ok=True)
    picks = [(i, s, 0) for i, s in enumerate(synthetic.SHAPES)] + [(0, "circle", 1)]
    for ci, shape, j in picks:
        im = synthetic.render(shape, size=128, seed=synthetic.image_seed(seed, "examples", ci, j))
        name = f"{shape}{'' if j == 0 else f'_{j + 1}'}.jpg"
        Image.fromarray(im.pixels).save(EXAMPLES / name, quality=85)
        print(f"tests/data/shapes/{name}: box {list(im.box)}", file=sys.stderr)


def update_registry(digest: str) -> None:
    path = ROOT / "weights.toml"
    text = path.read_text(encoding="utf-8")
    block = re.search(r"\[models\.shapes\][^\[]*", text)
    if block is None:
        raise SystemExit("weights.toml has no [models.shapes] entry")
    new = re.sub(r'sha256 = "[0-9a-f]*"', f'sha256 = "{digest}"', block.group(0), count=1)
    path.write_text(text[: block.start()] + new + text[block.end() :], encoding="utf-8")


def check() -> None:
    """Predict the examples with the new weights and print the classes."""
    from camcli.models.load import load_model

    m = load_model(None, str(ASSET))
    import torch

    from camcli.data.codec import decode_image
    from camcli.data.loader import normalize_batch, preprocess_uint8

    for p in sorted(EXAMPLES.glob("*.jpg")):
        x = preprocess_uint8(torch.from_numpy(decode_image(str(p))).permute(2, 0, 1), m.preprocess)
        with torch.no_grad():
            prob = torch.softmax(m(normalize_batch(x[None], m.preprocess)), 1)[0]
        i = int(prob.argmax())
        print(f"{p.name}: {m.categories[i]} ({prob[i]:.3f})", file=sys.stderr)


def _sha256(path: Path) -> str:
    from camcli.models.hub import sha256_file

    return sha256_file(path)


if __name__ == "__main__":
    raise SystemExit(main())
