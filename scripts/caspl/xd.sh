#!/usr/bin/env bash
# Cross-dataset and domain generalisation, the whole protocol for one method: phase 1 on ImageNet
# (skipped when done), then for each seed (SEEDS, default 1 2 3) training on ImageNet and testing on
# the 10 cross-dataset targets and the 4 ImageNet variants.
#
#   scripts/caspl/xd.sh METHOD [OPTS...]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../common.sh"

(($# >= 1)) || die "usage: $0 METHOD [OPTS...]"
METHOD=$1
SOURCE=${SOURCE:-imagenet}
BOOST_CFG=${BOOST_CFG:-$(xd_boost_cfg "$METHOD")}
export SOURCE BOOST_CFG

phase_one "$SOURCE"
for SEED in $SEEDS; do
    "$HERE/xd_train.sh" "$SEED" "$@"
    "$HERE/xd_test.sh" "$SEED" "$@"
    "$HERE/dg_test.sh" "$SEED" "$@"
done
