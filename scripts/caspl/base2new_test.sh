#!/usr/bin/env bash
# Base-to-novel, evaluation: the last-epoch model of base2new_train.sh on the novel classes of
# DATASET, into output/base2new/test_new/<DATASET>/shots_16/<TRAINER>/<CFG>/seed<SEED>.
#
#   scripts/caspl/base2new_test.sh DATASET SEED METHOD [OPTS...]
#
# Same variables as base2new_train.sh (give the same ones); LOADEP: the epoch to load (default: the
# config's OPTIM.MAX_EPOCH). SUB=base evaluates on the base classes instead.
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
SUB=${SUB:-new}

CFG_FILE=$(config_file "$TRAINER" "$CFG")
DATASET_FILE=$(dataset_file "$DATASET")
LOADEP=${LOADEP:-$(max_epoch "$CFG_FILE" "$@")}
set_boost_opts "$DATASET" "$BOOST_CFG"
COMMON_DIR=$DATASET/shots_$SHOTS/$TRAINER/$(config_name "$CFG")/seed$SEED
MODEL_DIR=$RUNS/base2new/train_base/$COMMON_DIR
DIR=$RUNS/base2new/test_$SUB/$COMMON_DIR
[[ -d $MODEL_DIR ]] || die "no trained model in $MODEL_DIR: run scripts/caspl/base2new_train.sh $DATASET $SEED $METHOD first"

run "$DIR" "=> result" \
    --root "$DATA" \
    --seed "$SEED" \
    --trainer "$TRAINER" \
    --dataset-config-file "$DATASET_FILE" \
    --config-file "$CFG_FILE" \
    --model-dir "$MODEL_DIR" \
    --load-epoch "$LOADEP" \
    --eval-only \
    DATASET.NUM_SHOTS "$SHOTS" \
    DATASET.SUBSAMPLE_CLASSES "$SUB" \
    ${BOOST_OPTS[@]+"${BOOST_OPTS[@]}"} \
    "$@"
