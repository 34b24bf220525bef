# Shared settings and helpers of the experiment scripts (sourced by them, not run); usage and the
# output layout: scripts/caspl/README.md.
#
# The scripts run from the project root: the folder holding scripts/, configs/ and train.py (this
# repository, or a host project the files were copied into with `caspl configs --copy`). Relative
# paths in the variables below are relative to that root.
#
#   DATA         dataset root, CoOp layout (default: data)
#   OUTPUT       output root (default: output)
#   PYTHON       interpreter (default: python)
#   TRAIN_PY     CoOp-style entry point with the CasPL plugin enabled (default: train.py)
#   TRAIN_FLAGS  extra train.py flags, e.g. "--no-env-info" (this repository's train.py only)
#   SEEDS        seeds of the multi-seed scripts (default: "1 2 3")
#   CFG          trainer config: a name under configs/trainers/<TRAINER>/ or a path to a .yaml file
#   BOOST_CFG    phase-1 config the CasPL scripts read the boosting prompts of (same forms as CFG)
#   CASCADE      1 (default): train CasPL_<METHOD>; 0: the method alone (what scripts/methods/ set)
#   UNIVERSAL    NAME: phase 2 uses the universal boosting prompts NAME (scripts/caspl/boosting_universal.sh)
#                instead of each dataset's, and writes its runs under OUTPUT/universal/NAME/

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$PROJECT_ROOT"

DATA=${DATA:-data}
OUTPUT=${OUTPUT:-output}
PYTHON=${PYTHON:-python}
TRAIN_PY=${TRAIN_PY:-train.py}
SEEDS=${SEEDS:-1 2 3}
CASCADE=${CASCADE:-1}
UNIVERSAL=${UNIVERSAL:-}
#: where the phase-2 runs go: OUTPUT, or OUTPUT/universal/NAME with universal boosting prompts
RUNS=$OUTPUT${UNIVERSAL:+/universal/$UNIVERSAL}
read -r -a TRAIN_FLAG_LIST <<< "${TRAIN_FLAGS:-}"

METHODS="CoOp CoCoOp IVLP MaPLe PromptSRC"
#: the 10 cross-dataset targets and the 4 domain-generalisation targets (ImageNet is the source)
XD_TARGETS="caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101"
DG_TARGETS="imagenetv2 imagenet_sketch imagenet_a imagenet_r"
#: the file BoostDistill writes into its output folder (and CasPL_<X> reads from it)
BOOSTING_FILE=boosting.safetensors

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 2
}

# is_opt_key WORD: WORD looks like a yacs key (DATASET.NUM_SHOTS), i.e. the start of trailing options
is_opt_key() {
    [[ $1 =~ ^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$ ]]
}

# trainer_name METHOD: CasPL_<METHOD>, or METHOD itself with CASCADE=0
trainer_name() {
    [[ -n $1 ]] || die "no METHOD given (one of: $METHODS)"
    if [[ $CASCADE == 1 ]]; then echo "CasPL_$1"; else echo "$1"; fi
}

# config_file TRAINER CFG: configs/trainers/TRAINER/CFG.yaml, or CFG itself when it is a .yaml path
config_file() {
    local path
    if [[ $2 == *.yaml ]]; then path=$2; else path=configs/trainers/$1/$2.yaml; fi
    [[ -f $path ]] || die "config not found: $path (TRAINER=$1, CFG=$2)"
    echo "$path"
}

# config_name CFG: the config's name in output paths (the file name without .yaml)
config_name() {
    local name=${1##*/}
    echo "${name%.yaml}"
}

# dataset_file DATASET: configs/datasets/DATASET.yaml
dataset_file() {
    local path=configs/datasets/$1.yaml
    [[ -f $path ]] || die "unknown dataset '$1': no $path (expected a config name such as dtd or imagenet)"
    echo "$path"
}

# max_epoch CFG_FILE [OPTS...]: OPTIM.MAX_EPOCH from the options when set there, else from the file
max_epoch() {
    local file=$1 value=""
    shift
    while (($#)); do
        if [[ $1 == OPTIM.MAX_EPOCH ]]; then value=${2:-}; fi
        shift
    done
    [[ -n $value ]] || value=$(sed -n 's/^[[:space:]]*MAX_EPOCH:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$file" | head -n 1)
    [[ -n $value ]] || die "no OPTIM.MAX_EPOCH in $file: set LOADEP to the epoch to load"
    echo "$value"
}

# default_boost_cfg DATASET: the phase-1 config of base-to-novel and few-shot (ImageNet: batch 128)
default_boost_cfg() {
    if [[ $1 == imagenet ]]; then
        echo vit_b16_c2_ep20_batch128_lr0025_8+8ctx_l12
    else
        echo vit_b16_c2_ep20_batch4_8+8ctx_l12
    fi
}

# xd_boost_cfg METHOD: the phase-1 config (on ImageNet) of cross-dataset / domain generalisation
xd_boost_cfg() {
    if [[ $1 == CoCoOp ]]; then
        echo vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l3
    else
        echo vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1
    fi
}

# boosting_dir DATASET BOOST_CFG: where scripts/caspl/boosting.sh writes the phase-1 run
boosting_dir() {
    echo "$OUTPUT/boosting/$1/$(config_name "$2")/seed1"
}

# universal_dir NAME BOOST_CFG: where scripts/caspl/boosting_universal.sh writes universal prompts NAME
universal_dir() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "universal prompts name '$1': use letters, digits, '.', '_' and '-'"
    echo "$OUTPUT/boosting/universal/$1/$(config_name "$2")/seed1"
}

# set_boost_opts DATASET BOOST_CFG: BOOST_OPTS=(the phase-2 option naming the boosting prompts: the
# dataset's, or with UNIVERSAL=NAME the universal ones); empty with CASCADE=0
set_boost_opts() {
    BOOST_OPTS=()
    [[ $CASCADE == 1 ]] || return 0
    local dir
    if [[ -n $UNIVERSAL ]]; then
        dir=$(universal_dir "$UNIVERSAL" "$2")
        [[ -f $dir/$BOOSTING_FILE ]] ||
            die "no universal boosting prompts at $dir/$BOOSTING_FILE: run CFG=$2 scripts/caspl/boosting_universal.sh $UNIVERSAL DOMAIN... first"
    else
        dir=$(boosting_dir "$1" "$2")
        [[ -f $dir/$BOOSTING_FILE ]] ||
            die "no boosting prompts at $dir/$BOOSTING_FILE: run scripts/caspl/boosting.sh $1 $2 first"
    fi
    BOOST_OPTS=(TRAINER.CASPL.BOOSTING "$dir")
}

# phase_one DATASET: run the dataset's phase 1 (boosting.sh with BOOST_CFG) unless CASCADE=0 or UNIVERSAL is set
phase_one() {
    [[ $CASCADE == 1 && -z $UNIVERSAL ]] || return 0
    CFG=$BOOST_CFG "$PROJECT_ROOT/scripts/caspl/boosting.sh" "$1"
}

# default_cfg PROTOCOL METHOD DATASET [SHOTS]: the trainer config of a protocol (base2new, few_shot,
# xd): the authors' phase-2 configs with CASCADE=1, the methods' published ones with CASCADE=0
default_cfg() {
    local protocol=$1 method=$2 dataset=$3 shots=${4:-16}
    if [[ $CASCADE == 1 ]]; then
        case "$protocol/$method" in
            base2new/CoOp | few_shot/CoOp) echo vit_b16_ep50 ;;
            base2new/CoCoOp | few_shot/CoCoOp) echo vit_b16_c8_ep10_batch1 ;;
            base2new/MaPLe | few_shot/MaPLe) echo vit_b16_c8_ep5_batch4_8ctx_l12 ;;
            base2new/IVLP | base2new/PromptSRC) echo vit_b16_c2_ep20_batch4_8+8ctx_l12 ;;
            few_shot/IVLP | few_shot/PromptSRC) echo vit_b16_c2_ep50_batch4_8+8ctx_few_shot_l12 ;;
            xd/CoOp) echo vit_b16_ep10_ctxv1 ;;
            xd/CoCoOp) echo vit_b16_c4_ep10_batch1_ctxv1 ;;
            xd/MaPLe) echo vit_b16_c8_ep5_batch4_8ctx_cross_datasets_l12 ;;
            xd/IVLP | xd/PromptSRC) echo vit_b16_c2_ep20_batch4_8+8ctx_cross_datasets_l3 ;;
            *) die "no default $protocol config for method '$method' (one of: $METHODS): set CFG" ;;
        esac
        return
    fi
    case "$protocol/$method" in
        base2new/CoOp) if [[ $dataset == imagenet ]]; then echo vit_b16_ep50_ctxv1; else echo vit_b16_ctxv1; fi ;;
        few_shot/CoOp)  # CoOp's epochs by shots: 50 (1 shot, ImageNet), 100 (2, 4), 200 (8, 16)
            if [[ $dataset == imagenet || $shots == 1 ]]; then echo vit_b16_ep50
            elif ((shots <= 4)); then echo vit_b16_ep100
            else echo vit_b16; fi ;;
        xd/CoOp) echo vit_b16_ep50_ctxv1 ;;
        */CoCoOp) echo vit_b16_c4_ep10_batch1_ctxv1 ;;
        */IVLP) echo vit_b16_c2_ep20_batch4_4+4ctx ;;
        xd/MaPLe) echo vit_b16_c2_ep5_batch4_2ctx_cross_datasets ;;
        */MaPLe) echo vit_b16_c2_ep5_batch4_2ctx ;;
        base2new/PromptSRC) echo vit_b16_c2_ep20_batch4_4+4ctx ;;
        few_shot/PromptSRC) echo vit_b16_c2_ep50_batch4_4+4ctx_few_shot ;;
        xd/PromptSRC) echo vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets ;;
        *) die "no default $protocol config for method '$method' (one of: $METHODS): set CFG" ;;
    esac
}

# set_gpa_opts METHOD DATASET: GPA_OPTS=(PromptSRC's few-shot GPA mean/std for the dataset's group)
set_gpa_opts() {
    GPA_OPTS=()
    [[ $1 == PromptSRC ]] || return 0
    case "$2" in
        stanford_cars | oxford_flowers | fgvc_aircraft | dtd | eurosat) GPA_OPTS=(TRAINER.PROMPTSRC.GPA_MEAN 45 TRAINER.PROMPTSRC.GPA_STD 5) ;;
        *) GPA_OPTS=(TRAINER.PROMPTSRC.GPA_MEAN 30 TRAINER.PROMPTSRC.GPA_STD 30) ;;
    esac
}

# finished DIR MARKER: a Dassl log in DIR holds MARKER ("Elapsed:" ends training, "=> result" a test)
finished() {
    grep -qsF -- "$2" "$1"/log.txt*
}

# train DIR SEED DATASET_FILE CFG_FILE SHOTS SUBSAMPLE [OPTS...]: one training run of $TRAINER
train() {
    local dir=$1 seed=$2 dataset_file=$3 cfg_file=$4 shots=$5 subsample=$6
    shift 6
    run "$dir" "Elapsed:" \
        --root "$DATA" \
        --seed "$seed" \
        --trainer "$TRAINER" \
        --dataset-config-file "$dataset_file" \
        --config-file "$cfg_file" \
        DATASET.NUM_SHOTS "$shots" \
        DATASET.SUBSAMPLE_CLASSES "$subsample" \
        "$@"
}

# run DIR MARKER ARGS...: `python train.py --output-dir DIR ARGS...`, unless DIR holds a finished run
run() {
    local dir=$1 marker=$2
    shift 2
    if finished "$dir" "$marker"; then
        echo "Finished run in $dir: skipped (delete the folder to run it again)"
        return 0
    fi
    if [[ -d $dir ]]; then echo "Unfinished run in $dir: running it again"; fi
    echo "Running $TRAIN_PY into $dir"
    "$PYTHON" "$TRAIN_PY" --output-dir "$dir" ${TRAIN_FLAG_LIST[@]+"${TRAIN_FLAG_LIST[@]}"} "$@"
}
