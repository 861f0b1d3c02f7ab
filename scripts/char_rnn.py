#!/usr/bin/env python3
"""PyTorch reference for `nabla rnn train`: the same character-level model and training.

one-hot characters -> Elman RNN (tanh, biases; torch.nn.RNN) -> Linear -> softmax cross-entropy,
trained by TBPTT(k1, k2) over `batch` parallel circular streams of the text's head (row b starts
at b*n/batch), Adam, gradient-norm clipping. Every k1 steps the window of the last k2 steps is
run from the detached state at its start and the losses of its last k1 steps are backpropagated.
Validation: the held-out tail read as `batch` contiguous segments from a zero state, in chunks of
256 steps; mean cross-entropy in nats and bits per character.

Prints one JSON line per validation and a final summary line.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


class CharRNN(torch.nn.Module):
    def __init__(self, vocab, hidden, nonlinearity):
        super().__init__()
        self.vocab = vocab
        self.rnn = torch.nn.RNN(vocab, hidden, nonlinearity=nonlinearity, batch_first=True)
        self.out = torch.nn.Linear(hidden, vocab)

    def forward(self, ids, h0):
        x = F.one_hot(ids, self.vocab).float()
        hs, hT = self.rnn(x, h0.unsqueeze(0))
        return self.out(hs), hs


def window(train, offsets, frm, to):
    n = len(train)
    idx = torch.tensor([[(o + s) % n for s in range(frm, to)] for o in offsets])
    return train[idx], train[(idx + 1) % n]


@torch.no_grad()
def evaluate(model, val, batch, hidden, chunk=256):
    b = max(1, min(batch, len(val) - 1))
    seg = (len(val) - 1) // b
    h = torch.zeros(b, hidden)
    total, count = 0.0, 0
    for s in range(0, seg, chunk):
        e = min(s + chunk, seg)
        x = torch.stack([val[r * seg + s: r * seg + e] for r in range(b)])
        y = torch.stack([val[r * seg + s + 1: r * seg + e + 1] for r in range(b)])
        logits, hs = model(x, h)
        total += F.cross_entropy(logits.reshape(-1, model.vocab), y.reshape(-1), reduction="sum").item()
        count += y.numel()
        h = hs[:, -1]
    return total / count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", required=True)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--activation", default="tanh")
    ap.add_argument("--k1", type=int, default=25)
    ap.add_argument("--k2", type=int, default=25)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--time-limit", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-frac", type=float, default=0.05)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    assert a.k2 >= a.k1 >= 1
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    text = open(a.text, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text])
    nv = round(len(ids) * a.val_frac)
    train, val = ids[: len(ids) - nv], ids[len(ids) - nv:]
    model = CharRNN(len(chars), a.hidden, a.activation)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    offsets = [b * len(train) // a.batch for b in range(a.batch)]
    h = torch.zeros(a.batch, a.hidden)
    consumed, start, step, tokens = 0, 0, 0, 0
    run, run_n = 0.0, 0
    t0 = time.perf_counter()
    val_nats = None
    while step < a.steps and not (a.time_limit > 0 and time.perf_counter() - t0 >= a.time_limit):
        end = consumed + a.k1
        start = max(0, end - a.k2)
        x, y = window(train, offsets, start, end)
        logits, hs = model(x, h)
        lf = consumed - start  # losses before this were counted by earlier updates
        loss = F.cross_entropy(logits[:, lf:].reshape(-1, len(chars)), y[:, lf:].reshape(-1))
        if not math.isfinite(loss.item()):
            raise SystemExit(f"non-finite loss at update {step + 1}")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        nxt = max(0, end + a.k1 - a.k2)
        i = nxt - start
        h = (hs[:, i - 1] if i > 0 else h).detach()
        consumed, step = end, step + 1
        tokens += a.batch * a.k1
        run += loss.item()
        run_n += 1
        final = step == a.steps or (a.time_limit > 0 and time.perf_counter() - t0 >= a.time_limit)
        if step % a.eval_every == 0 or final:
            val_nats = evaluate(model, val, a.batch, a.hidden)
            el = time.perf_counter() - t0
            print(json.dumps({"step": step, "train_nats": run / run_n, "val_nats": val_nats,
                              "val_bpc": val_nats / math.log(2), "tokens_per_s": tokens / el,
                              "elapsed_s": el}), flush=True)
            run, run_n = 0.0, 0
    el = time.perf_counter() - t0
    print(json.dumps({"final": True, "steps": step, "seconds": el, "val_nats": val_nats,
                      "val_bpc": val_nats / math.log(2) if val_nats is not None else None,
                      "tokens_per_s": tokens / el}), flush=True)


if __name__ == "__main__":
    main()
