#!/usr/bin/env bash
# Universal boosting prompts: one phase 1 (BoostDistill, seed 1) over several domains, every batch
# from one domain and distilled over that domain's classes and template, into
# output/boosting/universal/<NAME>/<CFG>/seed1. Phase 2 uses them with UNIVERSAL=NAME.
#
#   scripts/caspl/boosting_universal.sh NAME DOMAIN... [OPTS...]
#   scripts/caspl/boosting_universal.sh pets-dtd-eurosat oxford_pets dtd eurosat
#   UNIVERSAL=pets-dtd-eurosat scripts/caspl/base2new.sh caltech101 PromptSRC   # held-out dataset
#
# DOMAIN: a dataset config name (its train split under DATA, every class, its CoOp template) or a
# domain manifest (.json/.yaml; see caspl_plugin.data.domains). EVAL: the dataset config evaluated on
# after training (default: the first dataset among the domains). SAMPLING: size (default) or even.
# CFG: as in boosting.sh (default vit_b16_c2_ep20_batch4_8+8ctx_l12). See scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

(($# >= 2)) || die "usage: scripts/caspl/boosting_universal.sh NAME DOMAIN... [OPTS...]"
NAME=$1
shift
DOMAINS=()
while (($#)) && ! is_opt_key "$1"; do
    DOMAINS+=("$1")
    shift
done
((${#DOMAINS[@]} >= 1)) || die "no DOMAIN given (dataset config names such as dtd, or manifest files)"
CFG=${CFG:-vit_b16_c2_ep20_batch4_8+8ctx_l12}
SAMPLING=${SAMPLING:-size}
TRAINER=BoostDistill
SEED=1

LIST=""
for DOMAIN in "${DOMAINS[@]}"; do
    case "$DOMAIN" in
        *.json | *.yaml | *.yml) [[ -f $DOMAIN ]] || die "domain manifest not found: $DOMAIN" ;;
        *) dataset_file "$DOMAIN" > /dev/null
           EVAL=${EVAL:-$DOMAIN} ;;
    esac
    [[ $DOMAIN != *"'"* ]] || die "domain '$DOMAIN': a quote cannot be part of a domain"
    LIST+="${LIST:+, }'$DOMAIN'"
done
[[ -n ${EVAL:-} ]] || die "no dataset among the domains: set EVAL to the dataset config to evaluate on"

CFG_FILE=$(config_file "$TRAINER" "$CFG")
DIR=$(universal_dir "$NAME" "$CFG")

train "$DIR" "$SEED" "$(dataset_file "$EVAL")" "$CFG_FILE" -1 all \
    TRAINER.BOOSTDISTILL.DOMAINS "[$LIST]" \
    TRAINER.BOOSTDISTILL.DOMAIN_SAMPLING "$SAMPLING" \
    "$@"
