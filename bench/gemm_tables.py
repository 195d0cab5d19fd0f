#!/usr/bin/env python3
"""Markdown tables from bench_gemm's JSON output (the tables of bench/README.md).

    build/bench/bench_gemm --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \\
        --benchmark_format=json > gemm.json
    bench/gemm_tables.py gemm.json

With repetitions the medians are used, else the single runs. Cases missing from the file (filtered out, or oneDNN
not built in) show as "–". Only the Python standard library is needed.
"""
import json
import re
import sys

NAME = re.compile(r"^BM_(?P<impl>[a-z0-9_]+)(<Layout::k(?P<layout>\w+)>)?(?P<args>(/[a-z_]+:\d+)*)(/real_time)?$")

IMPLS = [  # (benchmark name, column title)
    ("qtrain_s8", "qtrain int8"),
    ("qtrain_s8_packed", "qtrain int8, W packed"),
    ("qtrain_s4", "qtrain int4"),
    ("qtrain_s4_packed", "qtrain int4, W packed"),
    ("onednn_s8", "oneDNN int8"),
    ("onednn_s8_plain", "oneDNN int8, plain W"),
    ("xnnpack_qs8", "XNNPACK qs8"),
    ("xnnpack_f32", "XNNPACK fp32"),
]


def load(path):
    with open(path) as f:
        doc = json.load(f)
    runs = {}
    aggregated = any(b.get("run_type") == "aggregate" for b in doc["benchmarks"])
    for b in doc["benchmarks"]:
        if aggregated and b.get("aggregate_name") != "median":
            continue
        if b.get("error_occurred"):
            continue
        m = NAME.match(b["run_name"])
        if not m:
            continue
        args = dict((k, int(v)) for k, v in re.findall(r"([a-z_]+):(\d+)", m.group("args") or ""))
        key = (m.group("impl"), m.group("layout"), args.get("n"), args.get("m"), args.get("k"),
               args.get("threads", args.get("split")))
        runs[key] = (b.get("GOP"), b.get("peak%"))
    return doc["context"], runs


def cell(v, with_peak=True):
    if v is None or v[0] is None:
        return "–"
    gop, peak = v
    return f"{gop:.0f} ({peak:.0f}%)" if with_peak and peak is not None else f"{gop:.0f}"


def shapes_of(runs):
    seen = []
    for (impl, layout, n, m, k, t) in runs:
        if impl in ("qtrain_s8",) and t is None and (n, m, k) not in seen:
            seen.append((n, m, k))
    return seen


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    ctx, runs = load(sys.argv[1])
    print(f"Target {ctx.get('qtrain_kernel_target', '?')}; int8 peak {ctx.get('int8_peak', '?')}; "
          f"oneDNN: {ctx.get('onednn', '?')}; load average {ctx.get('load_avg', '?')}.\n")
    peak = runs.get(("peak", None, None, None, None, None))
    shapes = shapes_of(runs)

    print("GOP/s (share of the int8 peak), one thread:\n")
    for layout in ("Forward", "Dgrad", "Wgrad"):
        impls = [(i, t) for i, t in IMPLS if any(key[0] == i and key[1] == layout for key in runs)]
        print(f"**{layout.lower()}**\n")
        print("| n×m×k | " + " | ".join(t for _, t in impls) + " |")
        print("|---|" + "---|" * len(impls))
        for (n, m, k) in shapes:
            row = [cell(runs.get((i, layout, n, m, k, None))) for i, _ in impls]
            print(f"| {n}×{m}×{k} | " + " | ".join(row) + " |")
        print()

    # Ratios at 256×1024×1024, forward (the "must show").
    big = (256, 1024, 1024)
    if big in shapes:
        def g(i, layout="Forward"):
            v = runs.get((i, layout, *big, None))
            return v[0] if v else None
        print("Ratios at 256×1024×1024, forward (one thread):\n")
        print("| qtrain | GOP/s | ÷ oneDNN int8 | ÷ XNNPACK qs8 | ÷ XNNPACK fp32 |")
        print("|---|---|---|---|---|")
        for i, title in IMPLS[:4]:
            q = g(i)
            if q is None:
                continue
            ratios = [f"{q / g(o):.2f}×" if g(o) else "–" for o in ("onednn_s8", "xnnpack_qs8", "xnnpack_f32")]
            print(f"| {title} | {q:.0f} | " + " | ".join(ratios) + " |")
        s8, s4, w = g("qtrain_s8"), g("qtrain_s4"), g("qtrain_s8", "Wgrad")
        if s8 and s4:
            print(f"\nint4 ÷ int8 (both packed per call): {s4 / s8:.2f}×", end="")
            s8p, s4p = g("qtrain_s8_packed"), g("qtrain_s4_packed")
            if s8p and s4p:
                print(f"; with packed weights: {s4p / s8p:.2f}×", end="")
            print(".")
        if s8 and w:
            print(f"wgrad ÷ forward (both packed per call): {w / s8:.2f}×.")
        print()

    threaded = sorted({(i, l, n, m, k) for (i, l, n, m, k, t) in runs if t is not None and i.endswith("threads")})
    if threaded:
        print("Threads (wall-clock GOP/s; ratio to one thread):\n")
        print("| case | n×m×k | 1 thread | 2 threads | 2 ÷ 1 |")
        print("|---|---|---|---|---|")
        for (i, l, n, m, k) in threaded:
            one, two = runs.get((i, l, n, m, k, 1)), runs.get((i, l, n, m, k, 2))
            ratio = f"{two[0] / one[0]:.2f}×" if one and two else "–"
            print(f"| {i.replace('qtrain_', '')} {l.lower()} | {n}×{m}×{k} | {cell(one, False)} | "
                  f"{cell(two, False)} | {ratio} |")
        print()

    split = sorted({(n, m, k) for (i, l, n, m, k, t) in runs if i == "qtrain_split"}, key=lambda s: s[0] * s[1] * s[2])
    if split:
        print("Pool threshold: forward with packed weights, one call vs the rows in two halves on a 2-thread pool "
              "(wall clock):\n")
        print("| n×m×k | multiply-adds | 1 call (µs) | 2 halves on 2 threads (µs) | 2 threads ÷ 1 |")
        print("|---|---|---|---|---|")
        for (n, m, k) in split:
            one, two = runs.get(("qtrain_split", None, n, m, k, 1)), runs.get(("qtrain_split", None, n, m, k, 2))
            if not one or not two:
                continue
            us1, us2 = 2e-3 * n * m * k / one[0], 2e-3 * n * m * k / two[0]
            print(f"| {n}×{m}×{k} | {n * m * k / 1e6:.1f}M | {us1:.1f} | {us2:.1f} | {two[0] / one[0]:.2f}× |")
        print()
    if peak:
        print(f"BM_peak: {peak[0]:.0f} GOP/s.")


if __name__ == "__main__":
    main()
