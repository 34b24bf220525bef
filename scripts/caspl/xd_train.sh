#!/usr/bin/env bash
# Cross-dataset / domain generalisation, training: CasPL_<METHOD> on ImageNet (16 shots, all
# classes) over ImageNet's boosting prompts (BOOST_CFG, default 4+4 tokens at depth 1, depth 3 for
# CoCoOp: run `scripts/caspl/boosting.sh imagenet <that config>` first), into
# output/xd/train/imagenet/shots_16/<TRAINER>/<CFG>/seed<SEED>.
#
#   scripts/caspl/xd_train.sh SEED METHOD [OPTS...]
#
# SOURCE: the training dataset (default imagenet). See base2new_train.sh for the other variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

(($# >= 2)) || die "usage: $0 SEED METHOD [OPTS...]"
SEED=$1
METHOD=$2
shift 2
SOURCE=${SOURCE:-imagenet}
TRAINER=$(trainer_name "$METHOD")
CFG=${CFG:-$(default_cfg xd "$METHOD" "$SOURCE")}
BOOST_CFG=${BOOST_CFG:-$(xd_boost_cfg "$METHOD")}
SHOTS=16

CFG_FILE=$(config_file "$TRAINER" "$CFG")
DATASET_FILE=$(dataset_file "$SOURCE")
set_boost_opts "$SOURCE" "$BOOST_CFG"
DIR=$RUNS/xd/train/$SOURCE/shots_$SHOTS/$TRAINER/$(config_name "$CFG")/seed$SEED

train "$DIR" "$SEED" "$DATASET_FILE" "$CFG_FILE" "$SHOTS" all \
    ${BOOST_OPTS[@]+"${BOOST_OPTS[@]}"} \
    "$@"
