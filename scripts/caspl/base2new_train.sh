#!/usr/bin/env bash
# Base-to-novel, training: CasPL_<METHOD> on the base classes (16 shots) of DATASET, over the
# dataset's boosting prompts, into output/base2new/train_base/<DATASET>/shots_16/<TRAINER>/<CFG>/seed<SEED>.
# The base-class accuracy is the test at the end of this run.
#
#   scripts/caspl/base2new_train.sh DATASET SEED METHOD [OPTS...]
#   scripts/caspl/base2new_train.sh dtd 1 PromptSRC
#
# METHOD: CoOp, CoCoOp, IVLP, MaPLe or PromptSRC. CFG: the trainer config (default: the authors'
# phase-2 config of METHOD); BOOST_CFG: the phase-1 config whose prompts are used (default as in
# boosting.sh; run that first). CASCADE=0 trains METHOD alone. See scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

(($# >= 3)) || die "usage: $0 DATASET SEED METHOD [OPTS...]"
DATASET=$1
SEED=$2
METHOD=$3
shift 3
TRAINER=$(trainer_name "$METHOD")
CFG=${CFG:-$(default_cfg base2new "$METHOD" "$DATASET")}
BOOST_CFG=${BOOST_CFG:-$(default_boost_cfg "$DATASET")}
SHOTS=16

CFG_FILE=$(config_file "$TRAINER" "$CFG")
DATASET_FILE=$(dataset_file "$DATASET")
set_boost_opts "$DATASET" "$BOOST_CFG"
DIR=$RUNS/base2new/train_base/$DATASET/shots_$SHOTS/$TRAINER/$(config_name "$CFG")/seed$SEED

train "$DIR" "$SEED" "$DATASET_FILE" "$CFG_FILE" "$SHOTS" base \
    ${BOOST_OPTS[@]+"${BOOST_OPTS[@]}"} \
    "$@"
