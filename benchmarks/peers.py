"""Peer tools doing camcli's `cam --top-k 1` work: top-1 map, overlay at the original size.

pytorch-grad-cam's GradCAM and torch-cam's CAM, one image at a time as their READMEs show,
on the same model (loaded through camcli so the networks are identical): random weights from
``--weights``, or a registry model with its real weights (``--model efficientnet_lite0``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from camcli.models.load import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tool", choices=["gradcam", "torchcam"])
    ap.add_argument("images")
    ap.add_argument("--weights", default=None, help="a weights file (random-weight models)")
    ap.add_argument("--model", default=None, help="a registry name with real weights")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    m = load_model(args.model, args.weights).to(dev).eval()
    pre = m.preprocess
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mean = np.array(pre.mean, dtype=np.float32)
    std = np.array(pre.std, dtype=np.float32)
    if args.tool == "gradcam":
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.image import show_cam_on_image

        last = m.trunk[-1] if isinstance(m.trunk, torch.nn.Sequential) else m.trunk
        cam = GradCAM(model=m, target_layers=[last])
    else:
        from torchcam.methods import CAM
        from torchcam.utils import overlay_mask

        cam = CAM(
            m, target_layer="trunk", fc_layer="fc", input_shape=(3, pre.input_size, pre.input_size)
        )
    for p in sorted(Path(args.images).glob("*.jpg")):
        rgb = np.asarray(Image.open(p).convert("RGB"))
        h, w = rgb.shape[:2]
        x = cv2.resize(rgb, (pre.input_size, pre.input_size), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(((x / 255.0 - mean) / std).astype(np.float32)).permute(2, 0, 1)
        x = x[None].to(dev)
        if args.tool == "gradcam":
            g = cam(input_tensor=x, targets=None)[0]  # top-1 class
            g = cv2.resize(g, (w, h))
            vis = show_cam_on_image(rgb.astype(np.float32) / 255.0, g, use_rgb=True)
            Image.fromarray(vis).save(out / f"{p.stem}.jpg")
        else:
            with torch.no_grad():
                logits = m(x)
            maps = cam(logits.squeeze(0).argmax().item(), logits)
            mask = Image.fromarray(maps[0].squeeze(0).cpu().numpy(), mode="F")
            vis = overlay_mask(Image.fromarray(rgb), mask, alpha=0.5)
            vis.save(out / f"{p.stem}.jpg")


if __name__ == "__main__":
    main()
