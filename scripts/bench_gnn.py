#!/usr/bin/env python3
"""Reference timing for `nabla bench gnn`: median seconds per full-batch training epoch
(forward with dropout, backward, Adam step) on a random graph of Cora's size -- 2708 nodes,
10556 directed edges (5278 undirected pairs both ways), 1433 binary features at 1.3% density,
7 classes, 140 training nodes -- with PyTorch Geometric (GCNConv, GATConv, TransformerConv) if
`import torch_geometric` works, else plain PyTorch with index_add_ (same math). `dense` is
nn.MultiheadAttention over all nodes (the complete graph).

Features are a dense float tensor, as PyG's Planetoid loader provides them. `--no-input-dropout`
skips the dropout on that dense (2708, 1433) input (on CPU it is a large share of PyTorch's
epoch; nabla drops only the nonzeros of its sparse features, which is exactly equivalent).

    python3 scripts/bench_gnn.py --model gat [--json] [--min-time 0.5] [--threads N]
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

try:
    import torch_geometric
    from torch_geometric.nn import GATConv, GCNConv, TransformerConv

    HAVE_PYG = True
except Exception:  # noqa: BLE001
    HAVE_PYG = False

INPUT_DROPOUT = True


def in_drop(x, p, training):
    return F.dropout(x, p, training) if INPUT_DROPOUT else x


def random_graph(seed=0, n=2708, pairs=5278, width=1433, density=0.013, classes=7):
    g = torch.Generator().manual_seed(seed)
    seen = set()
    src, dst = [], []
    while len(seen) < pairs:
        a, b = torch.randint(0, n, (2,), generator=g).tolist()
        if a != b and (min(a, b), max(a, b)) not in seen:
            seen.add((min(a, b), max(a, b)))
            src += [a, b]
            dst += [b, a]
    edge_index = torch.tensor([src, dst])
    x = (torch.rand(n, width, generator=g) < density).float()
    y = torch.randint(0, classes, (n,), generator=g)
    train = torch.arange(20 * classes)
    return x, edge_index, y, train


class GCN(torch.nn.Module):
    def __init__(self, fin, classes):
        super().__init__()
        self.c1, self.c2 = GCNConv(fin, 16), GCNConv(16, classes)

    def forward(self, x, ei):
        x = in_drop(x, 0.5, self.training)
        x = F.relu(self.c1(x, ei))
        x = F.dropout(x, 0.5, self.training)
        return self.c2(x, ei)


class GAT(torch.nn.Module):
    def __init__(self, fin, classes):
        super().__init__()
        self.c1 = GATConv(fin, 8, heads=8, dropout=0.6)
        self.c2 = GATConv(64, classes, heads=1, dropout=0.6)

    def forward(self, x, ei):
        x = in_drop(x, 0.6, self.training)
        x = F.elu(self.c1(x, ei))
        x = F.dropout(x, 0.6, self.training)
        return self.c2(x, ei)


class GraphTransformer(torch.nn.Module):
    def __init__(self, fin, classes):
        super().__init__()
        self.c1 = TransformerConv(fin, 8, heads=8, dropout=0.6)
        self.c2 = TransformerConv(64, classes, heads=1, dropout=0.6)

    def forward(self, x, ei):
        x = in_drop(x, 0.6, self.training)
        x = F.elu(self.c1(x, ei))
        x = F.dropout(x, 0.6, self.training)
        return self.c2(x, ei)


class Dense(torch.nn.Module):
    def __init__(self, fin, classes):
        super().__init__()
        self.inp = torch.nn.Linear(fin, 64)
        self.attn = torch.nn.MultiheadAttention(64, 8, batch_first=True)
        self.head = torch.nn.Linear(64, classes)

    def forward(self, x, ei):
        x = in_drop(x, 0.6, self.training)
        h = F.dropout(F.elu(self.inp(x)), 0.6, self.training)
        a, _ = self.attn(h[None], h[None], h[None], need_weights=False)
        h = F.dropout(F.elu(h + a[0]), 0.6, self.training)
        return self.head(h)


class PlainGCN(torch.nn.Module):
    """GCN without PyG: Â (X W) by index_add_ over edges with self loops."""

    def __init__(self, fin, classes):
        super().__init__()
        self.l1 = torch.nn.Linear(fin, 16, bias=False)
        self.l2 = torch.nn.Linear(16, classes, bias=False)
        self.b1 = torch.nn.Parameter(torch.zeros(16))
        self.b2 = torch.nn.Parameter(torch.zeros(classes))

    def prop(self, h, ei, w):
        out = torch.zeros_like(h)
        return out.index_add_(0, ei[1], h[ei[0]] * w[:, None])

    def forward(self, x, ei):
        n = x.shape[0]
        loops = torch.arange(n)
        ei = torch.cat([ei, torch.stack([loops, loops])], 1)
        deg = torch.zeros(n).index_add_(0, ei[1], torch.ones(ei.shape[1]))
        w = (deg[ei[0]] * deg[ei[1]]).rsqrt()
        x = in_drop(x, 0.5, self.training)
        x = F.relu(self.prop(self.l1(x), ei, w) + self.b1)
        x = F.dropout(x, 0.5, self.training)
        return self.prop(self.l2(x), ei, w) + self.b2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gcn", choices=["gcn", "gat", "transformer", "dense"])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-input-dropout", action="store_true")
    a = ap.parse_args()
    global INPUT_DROPOUT
    INPUT_DROPOUT = not a.no_input_dropout
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x, ei, y, train = random_graph()
    if a.model in ("gat", "transformer") and not HAVE_PYG:
        raise SystemExit("GAT/TransformerConv need torch_geometric")
    if a.model == "gcn":
        model = GCN(1433, 7) if HAVE_PYG else PlainGCN(1433, 7)
        lr = 0.01
    else:
        model = {"gat": GAT, "transformer": GraphTransformer, "dense": Dense}[a.model](1433, 7)
        lr = 0.005
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    model.train()

    def epoch():
        opt.zero_grad()
        out = model(x, ei)
        loss = F.cross_entropy(out[train], y[train])
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        epoch()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < a.min_time and len(times) < 1000):
        t = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t)
    r = {
        "name": f"pyg_gnn_epoch_{a.model}",
        "model": a.model,
        "backend": f"torch_geometric {torch_geometric.__version__}" if HAVE_PYG else "plain torch index_add_",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "nodes": x.shape[0],
        "edges": ei.shape[1],
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "reps": len(times),
        "input_dropout": INPUT_DROPOUT,
    }
    print(json.dumps(r) if a.json else f"{r['name']:<24} median {r['median_s']*1e3:.3f} ms ({r['reps']} reps, {r['backend']}, {r['threads']} threads)")


if __name__ == "__main__":
    main()
