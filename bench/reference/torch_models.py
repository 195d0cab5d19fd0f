#!/usr/bin/python3
"""fp32 PyTorch reference for qtrain's models (mlp, cnn, resnet8, resnet20) on Fashion-MNIST or CIFAR-10.

Same data, architecture and hyper-parameters as `qtrain train --model M` with its defaults: inputs normalized by
the training set's per-channel mean/std, batch 64 (last partial batch dropped: 937 steps per epoch on
Fashion-MNIST), SGD momentum 0.9, weight decay 5e-4, OneCycleLR peaking at 0.05 over all steps, seed 0. The
convolutional models use BatchNorm where qtrain uses its integer L1 norm: this is the fp32 baseline a user would
otherwise train.
  mlp       784-256-128-10, ReLU
  cnn       conv3x3(32)-BN-ReLU-maxpool2, conv3x3(64)-BN-ReLU-maxpool2, FC128-ReLU, FC10
  resnet8   CIFAR-style ResNet: conv3x3(16)-BN-ReLU, one basic block per stage (16, 32/2, 64/2; 1x1 projection
            shortcuts with BN), global average pool, FC10
  resnet20  the same with three basic blocks per stage
  vit       Vision Transformer as `qtrain train --model vit`: patch 7 (a stride-7 conv), dim 64, learned positional
            embedding, 4 pre-norm blocks (LayerNorm where qtrain uses its integer L1 layer norm, 4-head attention,
            MLP x4 with GELU), final LayerNorm, mean pooling over the tokens, FC10
With --optimizer adamw: AdamW and the linear warm-up + cosine schedule of `qtrain train --optimizer adamw --schedule
warmup-cosine` (the transformer recipe), the same parameters left undecayed.

Prints one line per epoch, then a final JSON line:
  {"framework": "pytorch-fp32", "epochs": N, "test_accuracy": 0..1, "train_images_per_second": X, "threads": T,
   "blas": "openblas" | "blis" | "mkl" | "reference" | "unknown"}
train_images_per_second counts training steps only (forward, backward, optimizer), not evaluation.

Run with Debian's python3-torch:  /usr/bin/python3 bench/reference/torch_models.py --model mlp --epochs 5
"""
import argparse
import gzip
import json
import math
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
    sys.exit(f"torch_models.py: error: {data_dir} has no {name}.gz "
             "(install the data set with: sudo apt-get install dataset-fashion-mnist, or pass --data DIR)")


def load_idx(data_dir, prefix):
    x = read_idx(find(data_dir, f"{prefix}-images-idx3-ubyte"), 16).reshape(-1, 1, 28, 28)
    y = read_idx(find(data_dir, f"{prefix}-labels-idx1-ubyte"), 8)
    return torch.tensor(x, dtype=torch.float32) / 255.0, torch.tensor(y.astype(np.int64))


def load_cifar(data_dir, train):
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    raw = []
    for name in names:
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            sys.exit(f"torch_models.py: error: {path} not found (CIFAR-10 binary version: "
                     "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz)")
        raw.append(np.fromfile(path, np.uint8).reshape(-1, 3073))
    r = np.concatenate(raw)
    x = torch.tensor(r[:, 1:].reshape(-1, 3, 32, 32), dtype=torch.float32) / 255.0
    return x, torch.tensor(r[:, 0].astype(np.int64))


def conv_bn(cin, cout, k, stride):
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3, 1))
        self.short = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


def resnet(channels, blocks_per_stage):
    layers = [*conv_bn(channels, 16, 3, 1), nn.ReLU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for b in range(blocks_per_stage):
            layers.append(Block(cin, cout, stride if b == 0 else 1))
            cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


class ViTBlock(nn.Module):
    def __init__(self, dim, heads, ratio):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Linear(ratio * dim, dim))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, channels, size, patch=7, dim=64, depth=4, heads=4, ratio=4, pool="mean"):
        super().__init__()
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        tokens = (size // patch) ** 2
        self.cls = None
        if pool == "cls":  # qtrain's --pool cls: a learned token in front, the head reads its row
            self.cls = nn.Parameter(torch.empty(1, 1, dim).uniform_(-0.02 * 3 ** 0.5, 0.02 * 3 ** 0.5))
            tokens += 1
        self.pos = nn.Parameter(torch.empty(1, tokens, dim).uniform_(-0.02 * 3 ** 0.5, 0.02 * 3 ** 0.5))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        x = self.norm(self.blocks(x + self.pos))
        return self.head(x[:, 0] if self.cls is not None else x.mean(1))


def blas_library():
    """The BLAS this process loaded (Debian's torch uses the libblas.so.3 the alternatives system selects)."""
    torch.ones(8, 8) @ torch.ones(8, 8)  # make sure the library is mapped
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "blas" in line.lower() or "blis" in line.lower()}
    for path in sorted(paths):
        for name in ("openblas", "blis", "mkl"):
            if name in path:
                return name
    return "reference" if paths else "unknown"


def build(name, channels, size, pool="mean"):
    if name == "vit":
        return ViT(channels, size, pool=pool)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 256), nn.ReLU(), nn.Linear(256, 128),
                             nn.ReLU(), nn.Linear(128, 10))
    if name == "cnn":
        return nn.Sequential(*conv_bn(channels, 32, 3, 1), nn.ReLU(), nn.MaxPool2d(2),
                             *conv_bn(32, 64, 3, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU(), nn.Linear(128, 10))
    return resnet(channels, 1 if name == "resnet8" else 3)


def augment(x, pad, gen):
    """Random crop with zero padding (after normalization: the mean) and random horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(2) if flip[i] else crop
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["mlp", "cnn", "resnet8", "resnet20", "vit"], default="mlp")
    ap.add_argument("--dataset", choices=["fashion-mnist", "cifar10"], default="fashion-mnist")
    ap.add_argument("--augment", type=int, default=0, metavar="PAD",
                    help="random crop with this zero padding plus horizontal flips (0: off)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=None, help="data directory (default: the Debian Fashion-MNIST package path)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                    help="sgd: momentum 0.9, weight decay 5e-4, OneCycleLR (qtrain's defaults); adamw: betas "
                         "(0.9, 0.999), eps 1e-8, decoupled weight decay --wd on all but the norms' parameters and "
                         "the positional embedding (as qtrain), linear warm-up over --warmup-epochs then cosine to 0 "
                         "(qtrain's --schedule warmup-cosine)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.05 for sgd, 1e-3 for adamw)")
    ap.add_argument("--wd", type=float, default=None, help="weight decay (default 5e-4 for sgd, 0.05 for adamw)")
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--pool", choices=["mean", "cls"], default="mean", help="vit: mean of the tokens or a class token")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=0, help="use only the first N training images (0: all)")
    ap.add_argument("--test-limit", type=int, default=0, help="use only the first N test images (0: all)")
    args = ap.parse_args()
    if args.epochs < 1 or args.threads < 1 or args.batch < 1:
        ap.error("--epochs, --threads and --batch must be >= 1")
    if args.train_limit < 0 or args.test_limit < 0:
        ap.error("--train-limit and --test-limit must be >= 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    blas = blas_library()
    if blas == "reference":
        print("torch_models.py: warning: PyTorch runs on the unoptimized reference BLAS, its matrix products are "
              "5-10x slow and images/s are not a fair baseline (install libopenblas0-openmp, or run "
              "scripts/setup.sh --with-bench-extras)", file=sys.stderr, flush=True)

    if args.dataset == "cifar10":
        if not args.data:
            ap.error("--dataset cifar10 needs --data DIR (the extracted binary version)")
        xtr, ytr = load_cifar(args.data, True)
        xte, yte = load_cifar(args.data, False)
    else:
        data = args.data or "/usr/share/datasets/fashion-mnist"
        xtr, ytr = load_idx(data, "train")
        xte, yte = load_idx(data, "t10k")
    if args.train_limit:  # like qtrain's --train-limit: the first N images (statistics from them too)
        xtr, ytr = xtr[:args.train_limit], ytr[:args.train_limit]
    if args.test_limit:
        xte, yte = xte[:args.test_limit], yte[:args.test_limit]
    mu = xtr.mean(dim=(0, 2, 3), keepdim=True)
    sd = xtr.std(dim=(0, 2, 3), keepdim=True)
    xtr = (xtr - mu) / sd
    xte = (xte - mu) / sd

    model = build(args.model, xtr.shape[1], xtr.shape[2], args.pool)
    n = xtr.shape[0]
    steps_per_epoch = n // args.batch  # drop the last partial batch
    total = args.epochs * steps_per_epoch
    if args.optimizer == "sgd":
        lr = 0.05 if args.lr is None else args.lr
        wd = 5e-4 if args.wd is None else args.wd
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=total)
    else:
        lr = 1e-3 if args.lr is None else args.lr
        wd = 0.05 if args.wd is None else args.wd
        no_decay = set()
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                no_decay.update(id(p) for p in m.parameters(recurse=False))
        for name, p in model.named_parameters():
            if name in ("pos", "cls"):
                no_decay.add(id(p))
        groups = [{"params": [p for p in model.parameters() if id(p) not in no_decay], "weight_decay": wd},
                  {"params": [p for p in model.parameters() if id(p) in no_decay], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
        warm = round(args.warmup_epochs * steps_per_epoch)

        def factor(s):  # qtrain's LrSchedule for warmup-cosine (the step index s of the update)
            if s < warm:
                return (s + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(total - warm, 1))))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
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
            xb = augment(xtr[idx], args.augment, gen) if args.augment else xtr[idx]
            logits = model(xb)
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
            acc = sum((model(xte[j:j + 500]).argmax(1) == yte[j:j + 500]).sum().item()
                      for j in range(0, xte.shape[0], 500)) / xte.shape[0]
        seen = steps_per_epoch * args.batch
        print(f"epoch {epoch}/{args.epochs}  loss {loss_sum / steps_per_epoch:.4f}  train {100 * correct / seen:.2f}%  "
              f"test {100 * acc:.2f}%  {seen / seconds:.0f} img/s  {seconds:.1f} s", flush=True)

    print(json.dumps({"framework": "pytorch-fp32", "model": args.model, "dataset": args.dataset,
                      "epochs": args.epochs, "test_accuracy": acc,
                      "train_images_per_second": args.epochs * steps_per_epoch * args.batch / train_seconds,
                      "threads": args.threads, "blas": blas, "optimizer": args.optimizer, "lr": lr}), flush=True)


if __name__ == "__main__":
    main()
