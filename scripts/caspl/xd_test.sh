#!/usr/bin/env bash
# Cross-dataset evaluation: the last-epoch model of xd_train.sh (with ImageNet's boosting prompts)
# on each target dataset, into output/xd/test/<TARGET>/shots_16/<TRAINER>/<CFG>/seed<SEED>.
#
#   scripts/caspl/xd_test.sh SEED METHOD [OPTS...]
#
# TARGETS: the datasets to test (default: the 10 cross-dataset targets; dg_test.sh sets the four
# ImageNet variants). LOADEP: the epoch to load (default: the config's OPTIM.MAX_EPOCH). Give the
# same SOURCE, CFG and BOOST_CFG as to xd_train.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

(($# >= 2)) || die "usage: $0 SEED METHOD [OPTS...]"
SEED=$1
METHOD=$2
shift 2
SOURCE=${SOURCE:-imagenet}
TARGETS=${TARGETS:-$XD_TARGETS}
TRAINER=$(trainer_name "$METHOD")
CFG=${CFG:-$(default_cfg xd "$METHOD" "$SOURCE")}
BOOST_CFG=${BOOST_CFG:-$(xd_boost_cfg "$METHOD")}
SHOTS=16

CFG_FILE=$(config_file "$TRAINER" "$CFG")
LOADEP=${LOADEP:-$(max_epoch "$CFG_FILE" "$@")}
set_boost_opts "$SOURCE" "$BOOST_CFG"
COMMON_DIR=shots_$SHOTS/$TRAINER/$(config_name "$CFG")/seed$SEED
MODEL_DIR=$RUNS/xd/train/$SOURCE/$COMMON_DIR
[[ -d $MODEL_DIR ]] || die "no trained model in $MODEL_DIR: run scripts/caspl/xd_train.sh $SEED $METHOD first"

for TARGET in $TARGETS; do
    run "$RUNS/xd/test/$TARGET/$COMMON_DIR" "=> result" \
        --root "$DATA" \
        --seed "$SEED" \
        --trainer "$TRAINER" \
        --dataset-config-file "$(dataset_file "$TARGET")" \
        --config-file "$CFG_FILE" \
        --model-dir "$MODEL_DIR" \
        --load-epoch "$LOADEP" \
        --eval-only \
        ${BOOST_OPTS[@]+"${BOOST_OPTS[@]}"} \
        "$@"
done
