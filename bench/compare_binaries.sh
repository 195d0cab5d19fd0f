#!/usr/bin/env bash
# Training speed of two qtrain binaries, run in turn (A B A B …) so a drift of the shared machine's speed hits both:
# images/s of each run from its --metrics file, the median of each, and the median of the per-pair ratios B/A.
#
#   bench/compare_binaries.sh OLD_QTRAIN NEW_QTRAIN [--runs N] [--threads T] [--models "mlp cnn resnet8"] [--bits "4 8"]
#
# Per model, the training-set size keeps a run near a second: mlp 12,800 images, cnn 1,280, resnet8 1,280
# (one epoch, 100 test images). Prints one Markdown table row per model and bit-width.
set -euo pipefail

die() { echo "compare_binaries.sh: $*" >&2; exit 2; }
[[ $# -ge 2 ]] || die "usage: compare_binaries.sh OLD_QTRAIN NEW_QTRAIN [--runs N] [--threads T] [--models LIST] [--bits LIST]"
old=$1 new=$2
shift 2
runs=5 threads=1 models="mlp cnn resnet8" bits="4 8"
while [[ $# -gt 0 ]]; do
  case $1 in
    --runs) runs=${2:?--runs needs a count}; shift 2 ;;
    --threads) threads=${2:?--threads needs a count}; shift 2 ;;
    --models) models=${2:?--models needs a list}; shift 2 ;;
    --bits) bits=${2:?--bits needs a list}; shift 2 ;;
    *) die "unknown option '$1' (valid: --runs, --threads, --models, --bits)" ;;
  esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs '$runs' must be a positive integer"
for b in "$old" "$new"; do [[ -x $b ]] || die "'$b' is not an executable"; done

work=$(mktemp -d "${TMPDIR:-/tmp}/qtrain-compare.XXXXXX")
trap 'rm -rf "$work"' EXIT

limit_of() { case $1 in mlp) echo 12800 ;; *) echo 1280 ;; esac; }
# images/s of one run of binary $1 for model $2 at bits $3
speed() {
  "$1" train --model "$2" --bits "$3" --epochs 1 --train-limit "$(limit_of "$2")" --test-limit 100 \
    --threads "$threads" --metrics "$work/m.jsonl" > "$work/out.txt" 2>&1 || { cat "$work/out.txt" >&2; die "$1 failed"; }
  python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["images_per_second"])' "$work/m.jsonl"
}
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

echo "| model | bits | old img/s (median) | new img/s (median) | new/old per pair: median (min–max) |"
echo "|---|---|---|---|---|"
for m in $models; do
  for b in $bits; do
    speed "$old" "$m" "$b" > /dev/null  # warm-up (page cache, CPU frequency)
    a=() c=() r=()
    for ((i = 0; i < runs; i++)); do
      x=$(speed "$old" "$m" "$b"); y=$(speed "$new" "$m" "$b")
      a+=("$x"); c+=("$y"); r+=("$(python3 -c "print($y / $x)")")
    done
    range=$(python3 -c 'import sys; v=[float(x) for x in sys.argv[1:]]; print(f"{min(v):.3f}–{max(v):.3f}")' "${r[@]}")
    printf '| %s | %s | %.0f | %.0f | %.3f (%s) |\n' "$m" "$b" "$(median "${a[@]}")" "$(median "${c[@]}")" \
      "$(median "${r[@]}")" "$range"
  done
done
kernels=$(grep -m1 -o 'kernels [A-Za-z0-9_]*' "$work/out.txt" || true)
echo "($runs alternated pairs, $threads thread(s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), ${kernels:-kernels ?})"
