#!/usr/bin/env bash
# Few-shot: CasPL_<METHOD> on all classes of DATASET with K shots (SHOTS_LIST, default 1 2 4 8 16)
# and each seed (SEEDS, default 1 2 3), over the boosting prompts of the full train set (phase 1 runs
# first, skipped when done), into output/few_shot/<DATASET>/shots_<K>/<TRAINER>/<CFG>/seed<SEED>.
# PromptSRC gets its GPA mean/std per dataset group (30/30, or 45/5 for Cars, Flowers, Aircraft,
# DTD and EuroSAT); OPTS come after and win.
#
#   scripts/caspl/few_shot.sh DATASET METHOD [OPTS...]
#   SHOTS_LIST="1 16" scripts/caspl/few_shot.sh eurosat PromptSRC
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../common.sh"

(($# >= 2)) || die "usage: $0 DATASET METHOD [OPTS...]"
DATASET=$1
METHOD=$2
shift 2
TRAINER=$(trainer_name "$METHOD")
BOOST_CFG=${BOOST_CFG:-$(default_boost_cfg "$DATASET")}
SHOTS_LIST=${SHOTS_LIST:-1 2 4 8 16}

DATASET_FILE=$(dataset_file "$DATASET")
phase_one "$DATASET"
set_boost_opts "$DATASET" "$BOOST_CFG"
set_gpa_opts "$METHOD" "$DATASET"

for SHOTS in $SHOTS_LIST; do
    RUN_CFG=${CFG:-$(default_cfg few_shot "$METHOD" "$DATASET" "$SHOTS")}
    CFG_FILE=$(config_file "$TRAINER" "$RUN_CFG")
    for SEED in $SEEDS; do
        DIR=$RUNS/few_shot/$DATASET/shots_$SHOTS/$TRAINER/$(config_name "$RUN_CFG")/seed$SEED
        train "$DIR" "$SEED" "$DATASET_FILE" "$CFG_FILE" "$SHOTS" all \
            ${BOOST_OPTS[@]+"${BOOST_OPTS[@]}"} \
            ${GPA_OPTS[@]+"${GPA_OPTS[@]}"} \
            "$@"
    done
done
