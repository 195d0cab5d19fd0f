#!/usr/bin/python3
"""fp32 PyTorch reference for qtrain's MLP (784-256-128-10, ReLU) on Fashion-MNIST.

Same data, architecture and hyper-parameters as `qtrain train --model mlp` with its defaults: inputs normalized by
the training set's mean/std, batch 64 (last partial batch dropped: 937 steps per epoch), SGD momentum 0.9, weight
decay 5e-4, OneCycleLR peaking at 0.05 over all steps, seed 0.

Prints one line per epoch, then a final JSON line:
  {"framework": "pytorch-fp32", "epochs": N, "test_accuracy": 0..1, "train_images_per_second": X, "threads": T}
train_images_per_second counts training steps only (forward, backward, optimizer), not evaluation.

Run with Debian's python3-torch:  /usr/bin/python3 bench/reference/torch_mlp.py --epochs 5 --threads 1
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path, header_bytes):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header_bytes)


def find(data_dir, name):
    for candidate in (name + ".gz", name):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    sys.exit(f"torch_mlp.py: error: {data_dir} has no {name}.gz "
             "(install the data set with: sudo apt-get install dataset-fashion-mnist, or pass --data DIR)")


def load(data_dir, prefix):
    x = read_idx(find(data_dir, f"{prefix}-images-idx3-ubyte"), 16).reshape(-1, 784)
    y = read_idx(find(data_dir, f"{prefix}-labels-idx1-ubyte"), 8)
    return torch.tensor(x, dtype=torch.float32) / 255.0, torch.tensor(y.astype(np.int64))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.epochs < 1 or args.threads < 1 or args.batch < 1:
        ap.error("--epochs, --threads and --batch must be >= 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    xtr, ytr = load(args.data, "train")
    xte, yte = load(args.data, "t10k")
    mu, sd = xtr.mean(), xtr.std()
    xtr = (xtr - mu) / sd
    xte = (xte - mu) / sd

    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    n = xtr.shape[0]
    steps_per_epoch = n // args.batch  # drop the last partial batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(args.seed)

    train_seconds = 0.0
    acc = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            logits = model(xtr[idx])
            loss = F.cross_entropy(logits, ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
            correct += (logits.argmax(1) == ytr[idx]).sum().item()
        seconds = time.perf_counter() - t0
        train_seconds += seconds

        model.eval()
        with torch.no_grad():
            acc = sum((model(xte[j:j + 1000]).argmax(1) == yte[j:j + 1000]).sum().item()
                      for j in range(0, xte.shape[0], 1000)) / xte.shape[0]
        seen = steps_per_epoch * args.batch
        print(f"epoch {epoch}/{args.epochs}  loss {loss_sum / steps_per_epoch:.4f}  train {100 * correct / seen:.2f}%  "
              f"test {100 * acc:.2f}%  {seen / seconds:.0f} img/s  {seconds:.1f} s", flush=True)

    print(json.dumps({"framework": "pytorch-fp32", "epochs": args.epochs, "test_accuracy": acc,
                      "train_images_per_second": args.epochs * steps_per_epoch * args.batch / train_seconds,
                      "threads": args.threads}), flush=True)


if __name__ == "__main__":
    main()
