#!/usr/bin/env bash
# Zero-shot CLIP (CoOp's hand-made template per dataset) on the test set of DATASET, evaluation only:
#   all classes  -> output/ZeroshotCLIP/<CFG>/<DATASET>                       (CoOp's layout)
#   base, novel  -> output/base2new/{train_base,test_new}/<DATASET>/shots_0/ZeroshotCLIP/<CFG>/seed1
# (the base-to-novel layout, so that zero-shot CLIP is a row of the base-to-novel table).
#
#   scripts/zeroshot.sh DATASET [OPTS...]
#
# SUBS: the class sets to test (default "all base new"). CFG: a name under
# configs/trainers/ZeroshotCLIP/ or a .yaml path (default vit_b16). See scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# >= 1)) || die "usage: $0 DATASET [OPTS...]"
DATASET=$1
shift
TRAINER=ZeroshotCLIP
CFG=${CFG:-vit_b16}
SUBS=${SUBS:-all base new}

CFG_FILE=$(config_file "$TRAINER" "$CFG")
DATASET_FILE=$(dataset_file "$DATASET")
for SUB in $SUBS; do
    case "$SUB" in
        all) DIR=$OUTPUT/$TRAINER/$(config_name "$CFG")/$DATASET ;;
        base) DIR=$OUTPUT/base2new/train_base/$DATASET/shots_0/$TRAINER/$(config_name "$CFG")/seed1 ;;
        new) DIR=$OUTPUT/base2new/test_new/$DATASET/shots_0/$TRAINER/$(config_name "$CFG")/seed1 ;;
        *) die "SUBS: unknown class set '$SUB' (expected all, base or new)" ;;
    esac
    run "$DIR" "=> result" \
        --root "$DATA" \
        --seed 1 \
        --trainer "$TRAINER" \
        --dataset-config-file "$DATASET_FILE" \
        --config-file "$CFG_FILE" \
        --eval-only \
        DATASET.SUBSAMPLE_CLASSES "$SUB" \
        "$@"
done
