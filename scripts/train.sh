#!/usr/bin/env bash
# Installs what is missing, builds, and trains a model with the qtrain CLI.
#
#   scripts/train.sh                 train the default model: --model mlp --bits 4 --epochs 5 (Fashion-MNIST)
#   scripts/train.sh <qtrain flags>  any flags replace the defaults, e.g. --model mlp --bits 8 --epochs 10 --lr 0.05
#                                    (see: build/tools/qtrain/qtrain train --help)
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$QTRAIN_ROOT/scripts/setup.sh"

qtrain=$QTRAIN_BUILD_DIR/tools/qtrain/qtrain
[[ -x $qtrain ]] || qtrain_die "the build finished but $qtrain does not exist"
if (($# == 0)); then
  set -- --model mlp --bits 4 --epochs 5
fi
qtrain_log "running: $qtrain train $*"
exec "$qtrain" train "$@"
