"""The experiment configs, the shell scripts and ``caspl configs``.

Without Dassl every YAML is still parsed and checked against the plugin's own config nodes, the
file names and the official values; with Dassl each one is merged into the real config, checked
against the library's method presets, and the scripts run end to end on the tiny CLIPs.
"""
from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from yacs.config import CfgNode

from caspl_plugin import resources
from caspl_plugin.cli import main as caspl_main
from caspl_plugin.data.catalog import DATASETS
from caspl_plugin.plugin.config import BOOSTING_FILE, method_defaults, plugin_defaults

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SCRIPTS = REPO / "scripts"
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))
TRAINER_YAML = sorted((CONFIGS / "trainers").rglob("*.yaml"))
TINY_YAML = sorted((CONFIGS / "tiny").glob("*.yaml"))
ALL_SCRIPTS = sorted(SCRIPTS.rglob("*.sh"))
METHODS = ("CoOp", "CoCoOp", "IVLP", "MaPLe", "PromptSRC")

#: trainer -> the TRAINER.<NODE> its configs may set (CasPL_X reads X's node, plus the cascade's)
NODES = {"BoostDistill": {"BOOSTDISTILL"}, "ZeroshotCLIP": {"ZEROSHOTCLIP"}}
NODES.update({m: {m.upper()} for m in METHODS})
NODES.update({f"CasPL_{m}": {m.upper(), "CASPL"} for m in METHODS})
#: tiny config stem -> its node
TINY_NODES = {"boostdistill": "BOOSTDISTILL", "zeroshot": "ZEROSHOTCLIP", **{m.lower(): m.upper() for m in METHODS}}
SECTIONS = {"DATASET", "DATALOADER", "INPUT", "OPTIM", "TRAIN", "TEST", "MODEL", "TRAINER"}
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def rel(path: Path) -> str:
    return path.relative_to(CONFIGS).with_suffix("").as_posix()


def load(path: Path) -> CfgNode:
    """A YAML file as yacs reads it (string leaves decoded as yacs decodes them when merging)."""
    with open(path, encoding="utf-8") as handle:
        cfg = CfgNode.load_cfg(handle)

    def decode(node: CfgNode) -> None:
        for key, value in node.items():
            if isinstance(value, CfgNode):
                decode(value)
            else:
                node[key] = CfgNode._decode_cfg_value(value)

    decode(cfg)
    return cfg


def get(cfg: CfgNode, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def leaves(cfg: CfgNode, prefix: str = ""):
    """(dotted key, value) of every leaf."""
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def trainer_of(path: Path) -> str:
    return path.parent.name


# ---------------------------------------------------------------------------------------- YAML shape


def test_dataset_configs_are_the_catalog():
    folder = CONFIGS / "datasets"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(spec.config for spec in DATASETS.values())
    for spec in DATASETS.values():
        assert load(folder / f"{spec.config}.yaml") == CfgNode({"DATASET": CfgNode({"NAME": spec.name})})


def test_trainer_folders_are_known_trainers():
    assert {p.parent.name for p in TRAINER_YAML} == set(NODES)
    assert {p.stem for p in TINY_YAML} == set(TINY_NODES)


@pytest.mark.parametrize("path", TRAINER_YAML + TINY_YAML, ids=rel)
def test_trainer_config_sets_only_known_keys_of_its_node(path):
    cfg = load(path)
    assert set(cfg) <= SECTIONS - {"DATASET"}, f"{path}: unexpected sections {set(cfg) - SECTIONS}"
    allowed = {TINY_NODES[path.stem]} if path.parent.name == "tiny" else NODES[trainer_of(path)]
    assert set(cfg.TRAINER) <= allowed and set(cfg.TRAINER) & allowed, f"{path}: TRAINER nodes {set(cfg.TRAINER)}"
    defaults = {**method_defaults(), **plugin_defaults()}
    for node, values in cfg.TRAINER.items():
        for key, value in values.items():
            assert key in defaults[node], f"{path}: TRAINER.{node}.{key} is not a plugin key"
            expected = type(defaults[node][key])
            assert type(value) is expected, f"{path}: TRAINER.{node}.{key}={value!r} is not {expected.__name__}"


@pytest.mark.parametrize("path", TRAINER_YAML, ids=rel)
def test_vit_b16_configs_share_the_reference_settings(path):
    cfg = load(path)
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16"
    assert cfg.INPUT.SIZE == (224, 224) and cfg.INPUT.INTERPOLATION == "bicubic"
    assert cfg.INPUT.PIXEL_MEAN == CLIP_MEAN and cfg.INPUT.PIXEL_STD == CLIP_STD
    assert cfg.INPUT.TRANSFORMS == ["random_resized_crop", "random_flip", "normalize"]
    assert cfg.DATALOADER.TEST.BATCH_SIZE == 100
    for name, node in cfg.TRAINER.items():
        assert name == "CASPL" or node.PREC == "fp16"
    if trainer_of(path) != "ZeroshotCLIP":
        optim = cfg.OPTIM
        assert (optim.NAME, optim.LR_SCHEDULER, optim.WARMUP_EPOCH, optim.WARMUP_TYPE, optim.WARMUP_CONS_LR) == (
            "sgd", "cosine", 1, "constant", 1e-5)


@pytest.mark.parametrize("path", TINY_YAML, ids=rel)
def test_tiny_configs_are_small(path):
    cfg = load(path)
    assert cfg.MODEL.BACKBONE.NAME == "caspl-tiny-student" and cfg.INPUT.SIZE == (32, 32)
    assert cfg.DATALOADER.NUM_WORKERS == 0 and cfg.DATALOADER.TRAIN_X.BATCH_SIZE <= 8
    assert cfg.OPTIM.MAX_EPOCH <= 2
    node = next(iter(cfg.TRAINER.values()))
    assert node.PREC == "fp32"
    if path.stem == "boostdistill":
        assert node.TEACHER == "caspl-tiny-teacher"
    for key in ("PROMPT_DEPTH", "PROMPT_DEPTH_TEXT", "PROMPT_DEPTH_VISION"):
        assert node.get(key, 0) <= 3  # the tiny CLIPs have 3 (student) and 4 (teacher) layers


#: file names that say otherwise than the file: the published name, 2 epochs inside
NAMED_EP5_TRAINS_2 = {"MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets", "CasPL_MaPLe/vit_b16_c8_ep5_batch4_8ctx_cross_datasets_l12"}


@pytest.mark.parametrize("path", TRAINER_YAML, ids=rel)
def test_file_name_states_the_values(path):
    cfg, name, trainer = load(path), path.stem, trainer_of(path)
    node = next(iter(cfg.TRAINER.values()))
    if m := re.search(r"_ep(\d+)", name):
        assert cfg.OPTIM.MAX_EPOCH == (2 if rel(path).removeprefix("trainers/") in NAMED_EP5_TRAINS_2 else int(m[1]))
    if m := re.search(r"batch(\d+)", name):
        assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == int(m[1])
    if m := re.search(r"_lr(\d+)", name):
        assert cfg.OPTIM.LR == float("0." + m[1])
    if m := re.search(r"(\d+)\+(\d+)ctx", name):
        assert (node.N_CTX_TEXT, node.N_CTX_VISION) == (int(m[1]), int(m[2]))
    if m := re.search(r"_(\d+)ctx", name):
        assert node.N_CTX == int(m[1])
    if (m := re.search(r"_c(\d+)_", name)) and trainer.endswith(("CoCoOp", "MaPLe")):
        assert node.N_CTX == int(m[1])
    if m := re.search(r"_l(\d+)$", name):
        depths = [node[k] for k in ("PROMPT_DEPTH", "PROMPT_DEPTH_TEXT", "PROMPT_DEPTH_VISION") if k in node]
        assert depths and set(depths) == {int(m[1])}
    if "ctxv1" in name:
        assert node.CTX_INIT == "a photo of a"


#: the authors' phase-1 and phase-2 settings (reference spec §2.5 and §4.6) and the anchors' ones
OFFICIAL = {
    "BoostDistill/vit_b16_c2_ep20_batch4_8+8ctx_l12": {
        "OPTIM.LR": 0.0025, "OPTIM.MAX_EPOCH": 20, "DATALOADER.TRAIN_X.BATCH_SIZE": 4,
        "TRAINER.BOOSTDISTILL.N_CTX_TEXT": 8, "TRAINER.BOOSTDISTILL.PROMPT_DEPTH_VISION": 12,
        "TRAINER.BOOSTDISTILL.TEACHER": "ViT-L/14", "TRAINER.BOOSTDISTILL.TEMPERATURE": 1.0},
    "BoostDistill/vit_b16_c2_ep20_batch128_lr0025_8+8ctx_l12": {
        "OPTIM.LR": 0.0025, "DATALOADER.TRAIN_X.BATCH_SIZE": 128, "TRAINER.BOOSTDISTILL.N_CTX_VISION": 8,
        "TRAINER.BOOSTDISTILL.TEACHER": "ViT-L/14"},
    "BoostDistill/vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1": {
        "TRAINER.BOOSTDISTILL.N_CTX_TEXT": 4, "TRAINER.BOOSTDISTILL.PROMPT_DEPTH_TEXT": 1, "OPTIM.MAX_EPOCH": 20},
    "BoostDistill/vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l3": {
        "TRAINER.BOOSTDISTILL.N_CTX_VISION": 4, "TRAINER.BOOSTDISTILL.PROMPT_DEPTH_VISION": 3},
    "CasPL_PromptSRC/vit_b16_c2_ep20_batch4_8+8ctx_l12": {
        "OPTIM.LR": 0.0025, "OPTIM.MAX_EPOCH": 20, "TRAINER.PROMPTSRC.N_CTX_TEXT": 8,
        "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT": 12, "TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT": 25,
        "TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT": 10, "TRAINER.PROMPTSRC.GPA_MEAN": 15, "TRAINER.PROMPTSRC.GPA_STD": 1,
        "TRAINER.CASPL.BOOSTING_DEPTH": "method"},
    "CasPL_PromptSRC/vit_b16_c2_ep50_batch4_8+8ctx_few_shot_l12": {
        "OPTIM.MAX_EPOCH": 50, "TRAINER.PROMPTSRC.GPA_MEAN": 30, "TRAINER.PROMPTSRC.GPA_STD": 30,
        "TRAINER.CASPL.BOOSTING_DEPTH": "method"},
    # the authors' rule here: boosting trained at depth 1 gets frozen random prompts at blocks 1-2
    "CasPL_PromptSRC/vit_b16_c2_ep20_batch4_8+8ctx_cross_datasets_l3": {
        "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION": 3, "TRAINER.PROMPTSRC.GPA_MEAN": 6, "TRAINER.PROMPTSRC.GPA_STD": 10,
        "TRAINER.CASPL.BOOSTING_DEPTH": "method"},
    "CasPL_CoOp/vit_b16_ep50": {
        "OPTIM.LR": 0.002, "OPTIM.MAX_EPOCH": 50, "DATALOADER.TRAIN_X.BATCH_SIZE": 32,
        "TRAINER.COOP.N_CTX": 8, "TRAINER.COOP.CTX_INIT": "", "TRAINER.COOP.CSC": False,
        "TRAINER.COOP.CLASS_TOKEN_POSITION": "end"},
    # the authors' run adds N_CTX 8 to these 4 init words, which overwrites the class tokens: not copied
    "CasPL_CoOp/vit_b16_ep10_ctxv1": {
        "OPTIM.LR": 0.0035, "OPTIM.MAX_EPOCH": 10, "DATALOADER.TRAIN_X.BATCH_SIZE": 4,
        "TRAINER.COOP.N_CTX": 4, "TRAINER.COOP.CTX_INIT": "a photo of a"},
    "CasPL_CoCoOp/vit_b16_c8_ep10_batch1": {"OPTIM.LR": 0.002, "TRAINER.COCOOP.N_CTX": 8, "TRAINER.COCOOP.CTX_INIT": ""},
    "CasPL_MaPLe/vit_b16_c8_ep5_batch4_8ctx_l12": {
        "OPTIM.LR": 0.0035, "OPTIM.MAX_EPOCH": 5, "TRAINER.MAPLE.N_CTX": 8, "TRAINER.MAPLE.PROMPT_DEPTH": 12},
    "CasPL_MaPLe/vit_b16_c8_ep5_batch4_8ctx_cross_datasets_l12": {
        "OPTIM.LR": 0.0026, "OPTIM.MAX_EPOCH": 2, "TRAINER.MAPLE.PROMPT_DEPTH": 12},
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx": {"OPTIM.LR": 0.0035, "OPTIM.MAX_EPOCH": 5, "TRAINER.MAPLE.PROMPT_DEPTH": 9},
    "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets": {
        "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT": 3, "TRAINER.PROMPTSRC.GPA_MEAN": 6, "TRAINER.PROMPTSRC.GPA_STD": 10},
    "CoOp/vit_b16": {"OPTIM.MAX_EPOCH": 200, "TRAINER.COOP.N_CTX": 16, "TRAINER.COOP.CTX_INIT": ""},
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_values(name):
    cfg = load(CONFIGS / "trainers" / f"{name}.yaml")
    assert {key: get(cfg, key) for key in OFFICIAL[name]} == OFFICIAL[name]


@pytest.mark.parametrize("path", TRAINER_YAML, ids=rel)
def test_the_authors_depth_rule_only_where_their_code_has_it(path):
    """Only the authors' CasPL_PromptSRC gives the boosting prompts the method's depth; CoOp, CoCoOp and
    MaPLe follow the phase-1 depth (the artifact's)."""
    cfg = load(path)
    depth = cfg.TRAINER.get("CASPL", {}).get("BOOSTING_DEPTH", "artifact")
    assert depth == ("method" if trainer_of(path) == "CasPL_PromptSRC" else "artifact")


# ------------------------------------------------------------------------------------------ scripts


@pytest.mark.parametrize("script", ALL_SCRIPTS + [SCRIPTS / "common.sh"], ids=lambda p: p.relative_to(SCRIPTS).as_posix())
def test_script_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_protocol_script_has_a_base_method_twin_and_is_executable():
    caspl = {p.name for p in (SCRIPTS / "caspl").glob("*.sh")}
    assert {p.name for p in (SCRIPTS / "methods").glob("*.sh")} == caspl - {"boosting.sh", "boosting_universal.sh"}
    assert all(os.access(p, os.X_OK) for p in ALL_SCRIPTS if p.name != "common.sh")  # common.sh is sourced


def bash(snippet: str, **env) -> subprocess.CompletedProcess:
    """Run ``snippet`` after sourcing scripts/common.sh (helpers only, no train.py)."""
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "{SCRIPTS / "common.sh"}"; {snippet}'],
        capture_output=True, text=True, env={**os.environ, **env},
    )


@pytest.mark.parametrize("cascade", ["1", "0"])
def test_default_configs_of_the_scripts_exist(cascade):
    checks, folders = [], []
    for protocol in ("base2new", "few_shot", "xd"):
        for method in METHODS:
            for dataset, shots in (("dtd", 1), ("dtd", 4), ("dtd", 16), ("imagenet", 16)):
                checks.append(f'config_file "$(trainer_name {method})" "$(default_cfg {protocol} {method} {dataset} {shots})"')
                folders.append(f"CasPL_{method}" if cascade == "1" else method)
    for command in ("default_boost_cfg dtd", "default_boost_cfg imagenet", *(f"xd_boost_cfg {m}" for m in METHODS)):
        checks.append(f'config_file BoostDistill "$({command})"')
        folders.append("BoostDistill")
    result = bash("; ".join(checks), CASCADE=cascade)
    assert result.returncode == 0, result.stderr
    paths = [Path(p) for p in result.stdout.split()]
    assert [p.parent.name for p in paths] == folders and all((REPO / p).is_file() for p in paths)


def test_script_defaults_follow_the_protocols():
    result = bash(
        "default_cfg few_shot CoOp dtd 1; default_cfg few_shot CoOp dtd 4; default_cfg few_shot CoOp dtd 16; "
        "default_cfg few_shot CoOp imagenet 16; default_cfg base2new CoOp imagenet; "
        "set_gpa_opts PromptSRC dtd; echo ${GPA_OPTS[*]}; set_gpa_opts PromptSRC sun397; echo ${GPA_OPTS[*]}; "
        "set_gpa_opts MaPLe dtd; echo \"[${GPA_OPTS[*]}]\"; xd_boost_cfg CoCoOp; xd_boost_cfg PromptSRC",
        CASCADE="0",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "vit_b16_ep50", "vit_b16_ep100", "vit_b16", "vit_b16_ep50", "vit_b16_ep50_ctxv1",
        "TRAINER.PROMPTSRC.GPA_MEAN 45 TRAINER.PROMPTSRC.GPA_STD 5",
        "TRAINER.PROMPTSRC.GPA_MEAN 30 TRAINER.PROMPTSRC.GPA_STD 30", "[]",
        "vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l3", "vit_b16_c2_ep20_batch128_lr0025_4+4ctx_l1",
    ]


def test_script_helpers_resolve_names_paths_and_epochs(tmp_path):
    result = bash(
        'config_file CasPL_CoOp configs/tiny/coop.yaml; config_name configs/tiny/coop.yaml; '
        'max_epoch "$(config_file PromptSRC vit_b16_c2_ep50_batch4_4+4ctx_few_shot)"; '
        'max_epoch configs/tiny/coop.yaml TRAINER.COOP.N_CTX 2 OPTIM.MAX_EPOCH 7; '
        'boosting_dir dtd configs/tiny/boostdistill.yaml; is_opt_key OPTIM.LR && ! is_opt_key vit_b16_ep50 && echo keys',
        OUTPUT=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "configs/tiny/coop.yaml", "coop", "50", "7", f"{tmp_path}/boosting/dtd/boostdistill/seed1", "keys"]
    missing = bash("config_file CoOp no_such_config")
    assert missing.returncode == 2 and "configs/trainers/CoOp/no_such_config.yaml" in missing.stderr


def test_phase_two_without_boosting_prompts_names_the_command(tmp_path):
    result = subprocess.run(
        [str(SCRIPTS / "caspl" / "base2new_train.sh"), "dtd", "1", "PromptSRC"],
        capture_output=True, text=True, env={**os.environ, "OUTPUT": str(tmp_path), "PYTHON": "false"},
    )
    assert result.returncode == 2
    assert "scripts/caspl/boosting.sh dtd vit_b16_c2_ep20_batch4_8+8ctx_l12 first" in result.stderr
    assert not any(tmp_path.iterdir())


def test_universal_phase_two_without_its_prompts_names_the_command_and_bad_names_are_refused(tmp_path):
    env = {**os.environ, "OUTPUT": str(tmp_path), "PYTHON": "false", "UNIVERSAL": "pets-dtd"}
    result = subprocess.run([str(SCRIPTS / "caspl" / "base2new_train.sh"), "dtd", "1", "PromptSRC"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "scripts/caspl/boosting_universal.sh pets-dtd DOMAIN... first" in result.stderr
    assert f"{tmp_path}/boosting/universal/pets-dtd/vit_b16_c2_ep20_batch4_8+8ctx_l12/seed1" in result.stderr
    bad = subprocess.run([str(SCRIPTS / "caspl" / "boosting_universal.sh"), "../up", "dtd"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "universal prompts name '../up'" in bad.stderr
    unknown = subprocess.run([str(SCRIPTS / "caspl" / "boosting_universal.sh"), "u", "dtd", "no_such_set"],
                             capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and "unknown dataset 'no_such_set'" in unknown.stderr
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- caspl configs


def test_resources_come_from_the_checkout():
    assert resources.configs_dir() == CONFIGS and resources.scripts_dir() == SCRIPTS
    shipped = resources.list_resources()
    assert {p for p in shipped if p.suffix == ".yaml"} == {p.relative_to(REPO) for p in ALL_YAML}
    assert {p for p in shipped if p.suffix == ".sh"} == {p.relative_to(REPO) for p in SCRIPTS.rglob("*.sh")}
    assert Path("scripts/caspl/README.md") in shipped and not [p for p in shipped if p.suffix == ".py"]


def test_copy_resources_keeps_existing_files_unless_forced(tmp_path):
    report = resources.copy_resources(tmp_path)
    shipped = resources.list_resources()
    assert sorted(report.copied) == shipped and not (report.skipped or report.unchanged or report.overwritten)
    assert os.access(tmp_path / "scripts" / "caspl" / "boosting.sh", os.X_OK)
    edited = tmp_path / "configs" / "datasets" / "dtd.yaml"
    edited.write_text("DATASET:\n  NAME: MyTextures\n")
    again = resources.copy_resources(tmp_path)
    assert again.skipped == [Path("configs/datasets/dtd.yaml")] and len(again.unchanged) == len(shipped) - 1
    assert "MyTextures" in edited.read_text()
    forced = resources.copy_resources(tmp_path, force=True)
    assert forced.overwritten == [Path("configs/datasets/dtd.yaml")]
    assert edited.read_bytes() == (CONFIGS / "datasets" / "dtd.yaml").read_bytes()
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="already are"):
        resources.copy_resources(REPO)


def test_caspl_configs_command(tmp_path, capsys):
    assert caspl_main(["configs", "--path"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"configs: {CONFIGS}", f"scripts: {SCRIPTS}"]
    host = tmp_path / "host"
    host.mkdir()
    (host / "train.py").write_text("from dassl.config import get_cfg_default\n")
    assert caspl_main(["configs", "--copy", str(host)]) == 0
    out = capsys.readouterr().out
    assert f"{len(resources.list_resources())} copied" in out and "caspl_plugin.enable()" in out
    (host / "scripts" / "zeroshot.sh").write_text("#!/bin/sh\n")
    assert caspl_main(["configs", "--copy", str(host)]) == 1
    assert "scripts/zeroshot.sh" in capsys.readouterr().out
    assert caspl_main(["configs", "--copy", str(host), "--force"]) == 0
    assert "1 overwritten" in capsys.readouterr().out
    assert caspl_main(["configs", "--force"]) == 2
    (tmp_path / "file").write_text("")
    assert caspl_main(["configs", "--copy", str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_setup_build_ships_the_configs_and_scripts(tmp_path):
    """``setup.py build_py`` (what a wheel is built from) puts exactly the shipped files in the package."""
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    bundle = tmp_path / "caspl_plugin" / "bundled"
    built = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file())
    assert built == resources.list_resources()
    assert os.access(bundle / "scripts" / "caspl" / "base2new.sh", os.X_OK)


# ------------------------------------------------------------------------------------- with Dassl


@pytest.fixture(scope="module")
def dassl_cfg():
    """``get_cfg_default`` with the plugin's keys, as train.py builds it."""
    pytest.importorskip("dassl")
    import caspl_plugin
    from dassl.config import get_cfg_default

    caspl_plugin.enable()

    def make():
        return caspl_plugin.plugin.extend_cfg(get_cfg_default())

    return make


@pytest.mark.parametrize("path", ALL_YAML, ids=rel)
def test_yaml_merges_into_the_dassl_config(dassl_cfg, path):
    cfg = dassl_cfg()
    cfg.merge_from_file(str(CONFIGS / "datasets" / "dtd.yaml"))
    cfg.merge_from_file(str(path))  # yacs refuses unknown keys and type changes
    for key, value in leaves(load(path)):
        merged = get(cfg, key)
        assert (tuple(merged) if isinstance(merged, list) else merged) == (
            tuple(value) if isinstance(value, list) else value), key  # yacs turns a list into a default's tuple


def test_trainer_folders_resolve_in_the_registry(dassl_cfg):
    from dassl.engine import TRAINER_REGISTRY

    for name in NODES:
        assert TRAINER_REGISTRY.get(name).__name__ == name


#: config -> (method, library preset) it is the Dassl form of
PRESETS = {
    "CoOp/vit_b16": ("coop", "few_shot"),
    "CoOp/vit_b16_ctxv1": ("coop", "base2novel"),
    "CoOp/vit_b16_ep50_ctxv1": ("coop", "cross_dataset"),
    "CasPL_CoOp/vit_b16_ep50": ("coop", "caspl_base2novel"),
    "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1": ("cocoop", "base2novel"),
    "CasPL_CoCoOp/vit_b16_c8_ep10_batch1": ("cocoop", "caspl_base2novel"),
    "CasPL_CoCoOp/vit_b16_c4_ep10_batch1_ctxv1": ("cocoop", "caspl_cross_dataset"),
    "IVLP/vit_b16_c2_ep20_batch4_4+4ctx": ("ivlp", "base2novel"),
    "IVLP/vit_b16_c2_ep5_batch4_2+2ctx": ("ivlp", "base2novel_maple"),
    "CasPL_IVLP/vit_b16_c2_ep20_batch4_8+8ctx_l12": ("ivlp", "caspl_base2novel"),
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx": ("maple", "base2novel"),
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets": ("maple", "cross_dataset"),
    "CasPL_MaPLe/vit_b16_c8_ep5_batch4_8ctx_l12": ("maple", "caspl_base2novel"),
    "CasPL_MaPLe/vit_b16_c8_ep5_batch4_8ctx_cross_datasets_l12": ("maple", "caspl_cross_dataset"),
    "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx": ("promptsrc", "base2novel"),
    "PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot": ("promptsrc", "few_shot"),
    "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets": ("promptsrc", "cross_dataset"),
    "CasPL_PromptSRC/vit_b16_c2_ep20_batch4_8+8ctx_l12": ("promptsrc", "caspl_base2novel"),
    "CasPL_PromptSRC/vit_b16_c2_ep50_batch4_8+8ctx_few_shot_l12": ("promptsrc", "caspl_few_shot"),
    "CasPL_PromptSRC/vit_b16_c2_ep20_batch4_8+8ctx_cross_datasets_l3": ("promptsrc", "caspl_cross_dataset"),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_builds_the_library_preset(dassl_cfg, name):
    """The trainer turns the file into the constructor arguments and schedule of the library's preset."""
    from dassl.engine import TRAINER_REGISTRY

    from caspl_plugin.methods import get_preset

    cfg = dassl_cfg()
    cfg.merge_from_file(str(CONFIGS / "trainers" / f"{name}.yaml"))
    preset = get_preset(*PRESETS[name])
    trainer = object.__new__(TRAINER_REGISTRY.get(name.split("/")[0]))  # model_kwargs only reads the config
    kwargs = trainer.model_kwargs(cfg)
    assert {key: kwargs[key] for key in preset.model} == preset.model
    train = preset.train
    assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == (
        train["lr"], train["epochs"], train["batch_size"])
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_CONS_LR) == (train["warmup_epochs"], train["warmup_lr"])


def script_runner(data: Path, output: Path):
    """``script(name, *args, **env)``: run scripts/caspl/<name> on DATA/OUTPUT with this interpreter,
    offline and on the CPU; asserts it succeeded and returns its stdout."""
    env = {**os.environ, "DATA": str(data), "OUTPUT": str(output), "PYTHON": sys.executable,
           "TRAIN_FLAGS": "--no-env-info", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}

    def script(name, *args, **extra):
        result = subprocess.run([str(SCRIPTS / "caspl" / name), *args], capture_output=True, text=True,
                                env={**env, **extra}, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    return script


def test_scripts_end_to_end_on_tiny_clips(dassl_cfg, tmp_path):
    """SLOW (two train.py processes on the tiny CLIPs, about 30 s of CPU): phase 1 with
    scripts/caspl/boosting.sh, then CasPL_CoOp with base2new_train.sh reading its prompts."""
    from helpers_dassl import make_dtd

    data = make_dtd(tmp_path / "data", train_per_class=2, test_per_class=1)
    output = tmp_path / "output"
    script = script_runner(data, output)

    start, cpu_start = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    script("boosting.sh", "dtd", CFG="configs/tiny/boostdistill.yaml")
    phase1 = output / "boosting" / "dtd" / "boostdistill" / "seed1"
    assert (phase1 / BOOSTING_FILE).is_file()

    script("base2new_train.sh", "dtd", "1", "CoOp", "OPTIM.LR", "0.02",
           CFG="configs/tiny/coop.yaml", BOOST_CFG="configs/tiny/boostdistill.yaml")
    phase2 = output / "base2new" / "train_base" / "dtd" / "shots_16" / "CasPL_CoOp" / "coop" / "seed1"
    log = (phase2 / "log.txt").read_text()
    assert f"BOOSTING: {phase1}" in log and "SUBSAMPLE_CLASSES: base" in log and "LR: 0.02" in log
    assert "# classes  18" in log and "=> result" in log and "Elapsed:" in log
    assert (phase2 / "caspl_boosting" / "model.pth.tar-1").is_file()  # the cascade's artifact record
    elapsed, cpu_end = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_end.ru_utime + cpu_end.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime

    again = script("base2new_train.sh", "dtd", "1", "CoOp", PYTHON="false",
                   CFG="configs/tiny/coop.yaml", BOOST_CFG="configs/tiny/boostdistill.yaml")
    assert "skipped" in again and len(list(phase2.glob("log.txt*"))) == 1
    print(f"boosting.sh + base2new_train.sh on the tiny CLIPs: {elapsed:.1f} s wall, {cpu:.1f} s CPU")


def test_universal_scripts_end_to_end_on_tiny_clips(dassl_cfg, tmp_path):
    """SLOW (two train.py processes): boosting_universal.sh over DTD and a manifest domain, then
    CasPL_CoOp on DTD with UNIVERSAL=NAME, its runs under OUTPUT/universal/NAME."""
    import json

    from helpers_dassl import make_dtd

    from caspl_plugin.artifacts.boosting import BoostingArtifact
    from caspl_plugin.toy import domain

    data = make_dtd(tmp_path / "data", train_per_class=1, test_per_class=1)
    images = domain.write_image_folder(tmp_path / "outline", num_per_class=1, seed=3, variant="outline").images
    (tmp_path / "outline.txt").write_text("\n".join(domain.class_names()) + "\n")
    manifest = tmp_path / "outline.json"
    manifest.write_text(json.dumps({"domains": [{"name": "outline", "images": str(images), "class_names": "outline.txt",
                                                 "template": "a drawing of a {}."}]}))
    output = tmp_path / "output"
    script = script_runner(data, output)
    script("boosting_universal.sh", "dtd-outline", "dtd", str(manifest), CFG="configs/tiny/boostdistill.yaml", SAMPLING="even")
    phase1 = output / "boosting" / "universal" / "dtd-outline" / "boostdistill" / "seed1"
    artifact = BoostingArtifact.load(phase1 / BOOSTING_FILE)
    assert [(d["name"], d["num_images"]) for d in artifact.domains] == [("dtd", 36), ("outline", 36)]
    assert artifact.metadata["training"]["domain_sampling"] == "even"
    script("base2new_train.sh", "dtd", "1", "CoOp", CFG="configs/tiny/coop.yaml", BOOST_CFG="configs/tiny/boostdistill.yaml",
           UNIVERSAL="dtd-outline")
    phase2 = output / "universal" / "dtd-outline" / "base2new" / "train_base" / "dtd" / "shots_16" / "CasPL_CoOp" / "coop" / "seed1"
    log = (phase2 / "log.txt").read_text()
    assert f"BOOSTING: {phase1}" in log and "=> result" in log
    assert not (output / "base2new").exists()  # the per-dataset runs' folders are untouched

