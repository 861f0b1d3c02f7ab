#!/usr/bin/env python3
"""Loads a nabla-written ResNet checkpoint into timm and compares the logits.

    python scripts/check_resnet_timm.py --checkpoint runs/cnn/best/model.safetensors \
        [--nabla target/release/nabla] [--batch 4] [--size 28]

The architecture is read from the state dict as nabla reads it (block type from
`layer1.0.conv3`, blocks per stage from `layer{i}.{j}.conv1`, widths from `layer{i}.0.conv1`,
the stem from the kernel of `conv1`). A 3x3 `conv1` is nabla's small-image stem, which timm has
no option for: the script builds `timm.models.resnet.ResNet` and then replaces `conv1` by a
3x3 stride-1 convolution and `maxpool` by `nn.Identity()`; every tensor name stays the same.
It then loads the state dict strictly (no missing or unexpected keys), runs timm in eval mode
and `nabla cnn predict --json` on the same random input, and exits 1 if the logits differ by
more than 1e-4 x max |logit|. Needs torch, timm and safetensors.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from timm.models.resnet import BasicBlock, Bottleneck, ResNet


def build(sd):
    bottleneck = "layer1.0.conv3.weight" in sd
    layers, channels = [], []
    while f"layer{len(layers) + 1}.0.conv1.weight" in sd:
        i = len(layers) + 1
        n = 0
        while f"layer{i}.{n}.conv1.weight" in sd:
            n += 1
        layers.append(n)
        channels.append(sd[f"layer{i}.0.conv1.weight"].shape[0])
    stem_width, in_chans, k, _ = sd["conv1.weight"].shape
    classes = sd["fc.weight"].shape[0]
    model = ResNet(
        Bottleneck if bottleneck else BasicBlock,
        layers,
        num_classes=classes,
        in_chans=in_chans,
        stem_width=stem_width,
        channels=tuple(channels),
    )
    if k == 3:
        model.conv1 = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif k != 7:
        raise SystemExit(f"conv1 has a {k}x{k} kernel: not a nabla/timm ResNet stem")
    desc = dict(block="bottleneck" if bottleneck else "basic", layers=layers,
                channels=channels, stem_width=stem_width, stem="small" if k == 3 else "default",
                in_chans=in_chans, classes=classes)
    return model, desc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--nabla", default="target/release/nabla")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=28)
    a = ap.parse_args()
    sd = load_file(a.checkpoint)
    model, desc = build(sd)
    # num_batches_tracked is an integer buffer in PyTorch; nabla stores it as a float.
    sd = {k: (v.long() if k.endswith("num_batches_tracked") else v) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, desc["in_chans"], a.size, a.size, generator=g)
    with torch.no_grad():
        want = model(x)
    with tempfile.TemporaryDirectory() as tmp:
        xp = Path(tmp) / "x.safetensors"
        save_file({"x": x.contiguous()}, str(xp))
        out = subprocess.run(
            [a.nabla, "cnn", "predict", "--checkpoint", a.checkpoint, "--input", str(xp), "--json"],
            check=True, capture_output=True, text=True,
        ).stdout
    got = torch.tensor(json.loads(out)["logits"], dtype=torch.float32)
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    ok = err <= 1e-4 * max(scale, 1e-30)
    print(json.dumps({"checkpoint": a.checkpoint, "architecture": desc,
                      "params": sum(p.numel() for p in model.parameters()),
                      "max_abs_diff": err, "max_abs_logit": scale, "ok": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
