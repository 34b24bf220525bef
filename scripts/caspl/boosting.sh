#!/usr/bin/env bash
# CasPL phase 1: distil the boosting prompts of one dataset (BoostDistill, seed 1, every train image
# and every class) into output/boosting/<DATASET>/<CFG>/seed1, the folder phase 2 reads them from.
#
#   scripts/caspl/boosting.sh DATASET [CFG] [OPTS...]
#   scripts/caspl/boosting.sh dtd
#   scripts/caspl/boosting.sh imagenet vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1   # for xd / DG
#
# CFG: a name under configs/trainers/BoostDistill/ or a .yaml path (also from the CFG variable);
# default vit_b16_c2_ep20_batch4_8+8ctx_l12 (ImageNet: ..._batch128_lr0025_8+8ctx_l12).
# OPTS: trailing config options, e.g. MODEL.BACKBONE.WEIGHTS_DIR /path/to/clip. See scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

(($# >= 1)) || die "usage: scripts/caspl/boosting.sh DATASET [CFG] [OPTS...]"
DATASET=$1
shift
if (($#)) && ! is_opt_key "$1"; then CFG=$1; shift; fi
CFG=${CFG:-$(default_boost_cfg "$DATASET")}
TRAINER=BoostDistill
SEED=1

CFG_FILE=$(config_file "$TRAINER" "$CFG")
DATASET_FILE=$(dataset_file "$DATASET")
DIR=$(boosting_dir "$DATASET" "$CFG")

train "$DIR" "$SEED" "$DATASET_FILE" "$CFG_FILE" -1 all \
    "$@"
