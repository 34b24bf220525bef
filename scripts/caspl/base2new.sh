#!/usr/bin/env bash
# Base-to-novel, the whole protocol for one dataset and method: phase 1 once (skipped when done),
# then for each seed (SEEDS, default 1 2 3) training on the base classes and testing on the novel ones.
#
#   scripts/caspl/base2new.sh DATASET METHOD [OPTS...]
#   scripts/caspl/base2new.sh oxford_pets MaPLe
#
# OPTS go to the phase-2 runs only (run boosting.sh yourself for other phase-1 options).
# Report base, novel and their harmonic mean from the seed-averaged accuracies.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../common.sh"

(($# >= 2)) || die "usage: $0 DATASET METHOD [OPTS...]"
DATASET=$1
METHOD=$2
shift 2
BOOST_CFG=${BOOST_CFG:-$(default_boost_cfg "$DATASET")}
export BOOST_CFG

phase_one "$DATASET"
for SEED in $SEEDS; do
    "$HERE/base2new_train.sh" "$DATASET" "$SEED" "$METHOD" "$@"
    "$HERE/base2new_test.sh" "$DATASET" "$SEED" "$METHOD" "$@"
done
