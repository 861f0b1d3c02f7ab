#!/usr/bin/env python3
"""PyTorch eager reference for `nabla bench vit`: the same ViT built from torch.nn modules
(Conv2d patch embedding, class token, position embeddings, pre-norm blocks with LayerNorm(eps=1e-6),
a packed qkv Linear + softmax attention + proj Linear, Linear-GELU-Linear MLP, final LayerNorm,
Linear head), one training step = forward + cross-entropy + backward + AdamW step on random data.

Prints one JSON object per line with the median seconds per step and images/s, in the same
format as `nabla bench vit --json`.

    python3 scripts/bench_vit.py [--image-size 28 --channels 1 --patch 7 --dim 64 --depth 4
                                  --heads 4 --mlp-dim 128 --batch 128 --threads 2 --min-time 3]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        a = a.softmax(dim=-1)
        o = (a @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(o)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, image_size, channels, patch, dim, depth, heads, mlp_dim, classes):
        super().__init__()
        n = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.blocks(x)
        return self.head(self.norm(x[:, 0]))


def main():
    p = argparse.ArgumentParser()
    for k, v in [("image-size", 28), ("channels", 1), ("patch", 7), ("dim", 64), ("depth", 4),
                 ("heads", 4), ("mlp-dim", 128), ("classes", 10), ("batch", 128), ("threads", 0),
                 ("warmup", 3)]:
        p.add_argument("--" + k, type=int, default=v)
    p.add_argument("--min-time", type=float, default=3.0)
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = ViT(a.image_size, a.channels, a.patch, a.dim, a.depth, a.heads, a.mlp_dim, a.classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(a.batch, a.channels, a.image_size, a.image_size)
    y = torch.randint(0, a.classes, (a.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < a.min_time:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(json.dumps({
        "name": "torch_vit_train_step", "image_size": a.image_size, "channels": a.channels,
        "patch": a.patch, "dim": a.dim, "depth": a.depth, "heads": a.heads, "mlp_dim": a.mlp_dim,
        "batch": a.batch, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "median_s": med, "min_s": min(times), "max_s": max(times), "reps": len(times),
        "images_per_s": a.batch / med,
    }))


if __name__ == "__main__":
    main()
