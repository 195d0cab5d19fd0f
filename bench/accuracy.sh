#!/usr/bin/env bash
# Accuracy / throughput bench: qtrain W8A8G8 and W4A4G4 against the fp32 PyTorch reference, same data
# (Fashion-MNIST), same architecture and hyper-parameters (batch 64, SGD momentum 0.9, wd 5e-4, one-cycle lr
# peaking at 0.05, seed 0 unless --seed). Prints a markdown table: run | test accuracy | training images/s | ratio to PyTorch
# fp32 images/s. Training images/s counts training steps only (no evaluation), over all epochs.
#
# Usage: bench/accuracy.sh [--model M] [--norms LIST] [--epochs N] [--threads T] [--build DIR] [--data DIR] [--out FILE]
#                          [--train-limit N] [--test-limit N] [--bits LIST] [--seed S] [--optimizer O] [--lr LR]
#                          [--pool mean|cls] [-- EXTRA QTRAIN FLAGS]
#   --model M     mlp (default), cnn, resnet8, resnet20 or vit (PyTorch uses BatchNorm for the convolutional models,
#                 LayerNorm for the ViT)
#   --norms LIST  convolutional models: the qtrain norms to run, comma-separated (default l1; e.g. l1,l2)
#   --epochs N    epochs per run (default 5)
#   --threads T   threads for every run (default 1)
#   --build DIR   CMake build directory holding tools/qtrain/qtrain (default: build, relative to the repository)
#   --data DIR    data directory (default /usr/share/datasets/fashion-mnist)
#   --out FILE    also write the table (with its heading) to FILE
#   --train-limit N, --test-limit N   the first N training / test images only, in every run (quick speed tables;
#                 accuracies of such runs are not comparable to full ones)
#   --bits LIST   the qtrain bit-widths to run, comma-separated (default 8,4)
#   --seed S      seed of every run, qtrain's and PyTorch's (default 0)
#   --optimizer O sgd (default: the recipe above) or adamw (AdamW betas 0.9/0.999, decoupled weight decay 0.05,
#                 one epoch of linear warm-up then cosine to 0, peak lr 1e-3: the transformer recipe) in both
#   --lr LR       peak learning rate of both (default 0.05 for sgd, 1e-3 for adamw)
#   --pool P      vit: mean (default) or cls (a class token), in both
#   -- FLAGS      passed to every qtrain run (e.g. -- --scale mse --act-groups 4)
# Exits non-zero if any run fails.
set -euo pipefail

usage() { sed -n '7,27p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "accuracy.sh: error: $*" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
epochs=5 threads=1 build=build data=/usr/share/datasets/fashion-mnist out="" model=mlp norms=l1
train_limit=0 test_limit=0 bits_list=8,4 qflags=() seed=0 optimizer=sgd lr="" pool=mean
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) [[ $# -ge 2 ]] || die "--model needs a value"; model=$2; shift 2 ;;
    --norms) [[ $# -ge 2 ]] || die "--norms needs a value"; norms=$2; shift 2 ;;
    --epochs) [[ $# -ge 2 ]] || die "--epochs needs a value"; epochs=$2; shift 2 ;;
    --threads) [[ $# -ge 2 ]] || die "--threads needs a value"; threads=$2; shift 2 ;;
    --build) [[ $# -ge 2 ]] || die "--build needs a value"; build=$2; shift 2 ;;
    --data) [[ $# -ge 2 ]] || die "--data needs a value"; data=$2; shift 2 ;;
    --out) [[ $# -ge 2 ]] || die "--out needs a value"; out=$2; shift 2 ;;
    --train-limit) [[ $# -ge 2 ]] || die "--train-limit needs a value"; train_limit=$2; shift 2 ;;
    --test-limit) [[ $# -ge 2 ]] || die "--test-limit needs a value"; test_limit=$2; shift 2 ;;
    --bits) [[ $# -ge 2 ]] || die "--bits needs a value"; bits_list=$2; shift 2 ;;
    --seed) [[ $# -ge 2 ]] || die "--seed needs a value"; seed=$2; shift 2 ;;
    --optimizer) [[ $# -ge 2 ]] || die "--optimizer needs a value"; optimizer=$2; shift 2 ;;
    --lr) [[ $# -ge 2 ]] || die "--lr needs a value"; lr=$2; shift 2 ;;
    --pool) [[ $# -ge 2 ]] || die "--pool needs a value"; pool=$2; shift 2 ;;
    --) shift; qflags=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
[[ $epochs =~ ^[1-9][0-9]*$ ]] || die "--epochs '$epochs' must be an integer >= 1"
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "--threads '$threads' must be an integer >= 1"
[[ $train_limit =~ ^[0-9]+$ ]] || die "--train-limit '$train_limit' must be an integer >= 0"
[[ $test_limit =~ ^[0-9]+$ ]] || die "--test-limit '$test_limit' must be an integer >= 0"
[[ $bits_list =~ ^[2-8](,[2-8])*$ ]] || die "--bits '$bits_list' must list bit-widths 2..8, e.g. 8,4"
[[ $seed =~ ^[0-9]+$ ]] || die "--seed '$seed' must be an integer >= 0"
limits=(--train-limit "$train_limit" --test-limit "$test_limit")
case "$optimizer" in
  sgd) lr=${lr:-0.05}; recipe=(--lr "$lr"); torch_recipe=(--optimizer sgd --lr "$lr") ;;
  adamw) lr=${lr:-1e-3}; recipe=(--optimizer adamw --schedule warmup-cosine --lr "$lr")
         torch_recipe=(--optimizer adamw --lr "$lr") ;;
  *) die "--optimizer '$optimizer' must be sgd or adamw" ;;
esac
case "$pool" in mean) ;; cls) [[ $model == vit ]] || die "--pool cls needs --model vit"
  recipe+=(--pool cls); torch_recipe+=(--pool cls) ;; *) die "--pool '$pool' must be mean or cls" ;; esac
case "$model" in mlp|cnn|resnet8|resnet20|vit) ;; *) die "--model '$model' must be mlp, cnn, resnet8, resnet20 or vit" ;; esac
[[ $model == mlp || $model == vit ]] && norms=none

# A relative build directory is taken relative to the current directory if it exists there, else to the repository.
if [[ $build != /* && ! -d $build ]]; then build=$repo/$build; fi
qtrain=$build/tools/qtrain/qtrain
[[ -x $qtrain ]] || die "$qtrain not found; build it with: cmake -S $repo -B $build && cmake --build $build --target qtrain"

# JSON is read with the standard library of any python3 (torch is needed only for the reference run).
py=/usr/bin/python3
[[ -x $py ]] || py=$(command -v python3) || die "python3 is needed to read the metrics files"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qtrain_accuracy_bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

failed=0
rows=()     # "name<TAB>accuracy<TAB>images/s", accuracy as a fraction; FAILED / skipped rows have empty numbers
kernels=""

# qtrain run: $1 = row name, $2 = --bits value, $3 = norm (none for the MLP).
run_qtrain() {
  local name=$1 bits=$2 norm=$3 file=$tmp/qtrain_$2_$3.jsonl log=$tmp/qtrain_$2_$3.log
  local extra=()
  [[ $norm == none ]] || extra=(--norm "$norm")
  extra+=("${limits[@]}" "${recipe[@]}" "${qflags[@]}")
  echo "== $name: qtrain train --model $model ${extra[*]} --bits $bits --epochs $epochs --seed $seed --threads $threads"
  if "$qtrain" train --data "$data" --model "$model" "${extra[@]}" --bits "$bits" --epochs "$epochs" --seed "$seed" \
       --threads "$threads" --metrics "$file" 2>&1 | tee "$log"; then
    [[ -n $kernels ]] || kernels=$(sed -n 's/.*kernels \([A-Za-z0-9_]*\).*/\1/p' "$log" | head -n 1)
    # Accuracy of the last epoch; images/s over all epochs = images / training seconds.
    local summary
    if summary=$("$py" -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if len(lines) != int(sys.argv[2]): sys.exit("expected %s metrics lines, found %d" % (sys.argv[2], len(lines)))
images = sum(l["images_per_second"] * l["seconds"] for l in lines)
seconds = sum(l["seconds"] for l in lines)
print("%s\t%.6f\t%.1f" % (lines[-1]["model"], lines[-1]["test_accuracy"], images / seconds))
' "$file" "$epochs"); then
      local model_desc=${summary%%$'\t'*}
      rows+=("qtrain ${model_desc#* * }"$'\t'"${summary#*$'\t'}")
      return
    fi
  fi
  echo "accuracy.sh: $name FAILED" >&2
  rows+=("$name (FAILED)"$'\t\t')
  failed=1
}

IFS=',' read -r -a norm_list <<<"$norms"
for norm in "${norm_list[@]}"; do
  label=${norm/none/}
  IFS=',' read -r -a bit_list <<<"$bits_list"
  for b in "${bit_list[@]}"; do run_qtrain "qtrain W${b}A${b}G${b}${label:+ $label}" "$b" "$norm"; done
done

torch_ips=""
torch_py=${QTRAIN_TORCH_PYTHON:-/usr/bin/python3}  # the python3 that has torch (Debian python3-torch)
if "$torch_py" -c "import torch" >/dev/null 2>&1; then
  echo "== PyTorch fp32: bench/reference/torch_models.py --model $model --epochs $epochs --threads $threads"
  if "$torch_py" "$repo/bench/reference/torch_models.py" --model "$model" --epochs "$epochs" --threads "$threads" --data "$data" \
       "${limits[@]}" "${torch_recipe[@]}" --seed "$seed" \
       2>&1 | tee "$tmp/torch.log" &&
     summary=$(grep '^{' "$tmp/torch.log" | tail -n 1 | "$py" -c '
import json, sys
j = json.loads(sys.stdin.read())
print("%.6f\t%.1f" % (j["test_accuracy"], j["train_images_per_second"]))'); then
    rows+=("PyTorch fp32"$'\t'"$summary")
    torch_ips=${summary#*$'\t'}
  else
    echo "accuracy.sh: PyTorch fp32 reference FAILED" >&2
    rows+=("PyTorch fp32 (FAILED)"$'\t\t')
    failed=1
  fi
else
  echo "python3-torch not installed: skipping the fp32 PyTorch reference (apt-get install python3-torch)"
  rows+=("PyTorch fp32 (skipped: python3-torch not installed)"$'\t\t')
fi

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
table=$(
  subset=""
  [[ $train_limit == 0 ]] || subset=" (first $train_limit training images)"
  [[ $test_limit == 0 ]] || subset+=" (first $test_limit test images)"
  echo "$model on Fashion-MNIST$subset: $epochs epoch(s), batch 64, $optimizer lr $lr, seed $seed, $threads thread(s)," \
       "CPU ${cpu:-unknown}, qtrain kernels ${kernels:-unknown}${qflags[*]:+, qtrain flags ${qflags[*]}}"
  echo
  echo "| run | test accuracy | training images/s | ratio to PyTorch fp32 images/s |"
  echo "|---|---|---|---|"
  for row in "${rows[@]}"; do
    IFS=$'\t' read -r name acc ips <<<"$row" || true
    if [[ -z $acc ]]; then echo "| $name | – | – | – |"; continue; fi
    "$py" -c '
import sys
name, acc, ips, ref = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ratio = "%.2f×" % (ips / float(ref)) if ref else "n/a"
print("| %s | %.2f%% | %s | %s |" % (name, 100 * acc, format(round(ips), ","), ratio))
' "$name" "$acc" "$ips" "$torch_ips"
  done
)
echo
echo "$table"
if [[ -n $out ]]; then
  printf '%s\n' "$table" >"$out"
  echo
  echo "table written to $out"
fi
exit "$failed"
