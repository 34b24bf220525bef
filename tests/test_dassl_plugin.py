"""The Dassl plugin against the real Dassl: enable(), entry points, name clashes, every trainer for an
epoch on a tiny DTD-layout dataset, checkpoints (save, resume, eval-only) and the CasPL_<X> record."""
import sys
import textwrap

import pytest

pytest.importorskip("dassl")

import torch  # noqa: E402

import caspl_plugin  # noqa: E402
from helpers_dassl import make_dtd, tiny_cfg  # noqa: E402

from caspl_plugin.plugin import manager  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dtd(tmp_path_factory.mktemp("dassl_data"))


@pytest.fixture(scope="module")
def boosting_dir(data_root, tmp_path_factory):
    """A BoostDistill run (phase 1) shared by the cascade tests."""
    from dassl.engine import build_trainer

    out = tmp_path_factory.mktemp("boost")
    trainer = build_trainer(tiny_cfg(data_root, out, "BoostDistill", "TEST.NO_TEST", True))
    trainer.train()
    return out


def test_enable_is_idempotent_and_registers_everything():
    from dassl.config import get_cfg_default
    from dassl.data.datasets import DATASET_REGISTRY
    from dassl.engine import TRAINER_REGISTRY

    first = caspl_plugin.enable()
    second = caspl_plugin.enable()
    assert second["registered_trainers"] == first["registered_trainers"]
    names = TRAINER_REGISTRY.registered_names()
    for trainer in ("BoostDistill", "ZeroshotCLIP", "CoOp", "CoCoOp", "IVLP", "MaPLe", "PromptSRC", "CasPL_PromptSRC", "CasPL_CoOp"):
        assert trainer in names
    assert "DescribableTextures" in DATASET_REGISTRY.registered_names()
    cfg = get_cfg_default()  # the host's own default config has the plugin's keys
    assert cfg.TRAINER.CASPL.BOOSTING == "" and cfg.TRAINER.PROMPTSRC.GPA_MEAN == 15
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "all"


def _write_plugin(tmp_path, name="caspl_probe_plugin"):
    """An installed third-party plugin: a module + a dist-info declaring the entry point."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent('''
        from caspl_plugin.plugin import hookimpl
        from caspl_plugin.plugin.adapters import ClipAdapter

        class ProbeAdapter(ClipAdapter):
            name = "probe adapter"
            def find(self, trainer):
                return None

        @hookimpl
        def caspl_clip_adapters():
            return [ProbeAdapter()]

        @hookimpl
        def caspl_extend_config(cfg):
            from yacs.config import CfgNode as CN
            if "PROBE" not in cfg.TRAINER:
                cfg.TRAINER.PROBE = CN()
                cfg.TRAINER.PROBE.ANSWER = 42
    '''))
    dist = tmp_path / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[caspl_plugin]\nprobe = {name}\n")
    return name


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    from yacs.config import CfgNode as CN

    name = _write_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    manager.get_plugin_manager.cache_clear()
    try:
        pm = manager.get_plugin_manager()
        adapters = [a.name for result in pm.hook.caspl_clip_adapters() for a in result]
        assert "probe adapter" in adapters and adapters[0] == "probe adapter"  # later plugins first
        cfg = CN()
        cfg.TRAINER = CN()
        cfg.DATASET = CN()
        cfg.MODEL = CN()
        cfg.MODEL.BACKBONE = CN()
        manager.extend_cfg(cfg)
        assert cfg.TRAINER.PROBE.ANSWER == 42 and "CASPL" in cfg.TRAINER
    finally:
        manager.get_plugin_manager.cache_clear()
        sys.modules.pop(name, None)


def test_name_clash_keeps_the_host_trainer_and_dataset(caplog):
    from dassl.data.datasets import DATASET_REGISTRY, DatasetBase
    from dassl.engine import TRAINER_REGISTRY, TrainerX

    saved_trainer = TRAINER_REGISTRY._obj_map.pop("IVLP")
    saved_dataset = DATASET_REGISTRY._obj_map.pop("EuroSAT")
    try:
        host_trainer = type("IVLP", (TrainerX,), {"__module__": "host_project.trainers"})
        host_dataset = type("EuroSAT", (DatasetBase,), {"__module__": "host_project.datasets"})
        TRAINER_REGISTRY.register(host_trainer)
        DATASET_REGISTRY.register(host_dataset)
        with caplog.at_level("INFO", logger="caspl_plugin"):
            caspl_plugin.enable()
        assert TRAINER_REGISTRY.get("IVLP") is host_trainer
        assert DATASET_REGISTRY.get("EuroSAT") is host_dataset
        assert "'IVLP' is already registered by host_project.trainers; keeping the host's" in caplog.text
        assert "'EuroSAT' is already registered by host_project.datasets" in caplog.text
    finally:
        TRAINER_REGISTRY._obj_map["IVLP"] = saved_trainer
        DATASET_REGISTRY._obj_map["EuroSAT"] = saved_dataset


@pytest.mark.parametrize("trainer_name", ["CoOp", "CoCoOp", "IVLP", "MaPLe", "PromptSRC"])
def test_method_trainer_epoch_save_resume_eval(trainer_name, data_root, tmp_path):
    from dassl.engine import build_trainer

    out = tmp_path / "run"
    trainer = build_trainer(tiny_cfg(data_root, out, trainer_name, "DATASET.NUM_SHOTS", 1, "DATASET.SUBSAMPLE_CLASSES", "base"))
    before = {k: v.clone() for k, v in trainer._models["prompt_learner"].state_dict().items()}
    trainer.train()
    learned = trainer._models["prompt_learner"].state_dict()
    assert any(not torch.equal(before[k], learned[k]) for k in before)
    assert (out / "prompt_learner" / "model.pth.tar-1").is_file()
    size = (out / "prompt_learner" / "model.pth.tar-1").stat().st_size
    assert size < 2_000_000  # learnable tensors only, not a CLIP
    assert (out / "classifier.safetensors").is_file()
    accuracy = trainer.test()

    # resume: a longer run in the same OUTPUT_DIR continues from epoch 1
    resumed = build_trainer(tiny_cfg(data_root, out, trainer_name, "DATASET.NUM_SHOTS", 1, "DATASET.SUBSAMPLE_CLASSES", "base", epochs=2))
    resumed.before_train()
    assert resumed.start_epoch == 1
    for k, v in resumed._models["prompt_learner"].state_dict().items():
        assert torch.equal(v, learned[k])

    # --eval-only on new classes from the saved epoch
    evaluator = build_trainer(tiny_cfg(data_root, tmp_path / "eval", trainer_name, "DATASET.NUM_SHOTS", 1, "DATASET.SUBSAMPLE_CLASSES", "new"))
    evaluator.load_model(str(out), epoch=1)
    for k, v in evaluator._models["prompt_learner"].state_dict().items():
        assert torch.equal(v, learned[k])
    assert 0.0 <= evaluator.test() <= 100.0 and 0.0 <= accuracy <= 100.0


def test_zeroshot_trainer_evaluates(data_root, tmp_path):
    from dassl.engine import build_trainer

    trainer = build_trainer(tiny_cfg(data_root, tmp_path, "ZeroshotCLIP"))
    assert 0.0 <= trainer.test() <= 100.0


def test_boost_distill_writes_the_artifact_and_never_reads_labels(boosting_dir, data_root, tmp_path, monkeypatch):
    from caspl_plugin.artifacts.boosting import BoostingArtifact
    from dassl.engine import build_trainer

    artifact = BoostingArtifact.load(boosting_dir / "boosting.safetensors")
    assert artifact.n_text == 2 and artifact.depth_text == 3
    assert len(artifact.class_names) == 36  # all classes (transductive protocol)
    trainer = build_trainer(tiny_cfg(data_root, tmp_path, "BoostDistill", "TEST.NO_TEST", True))

    class Untouchable(dict):
        def __getitem__(self, key):
            if key == "label":
                raise AssertionError("BoostDistill read a label")
            return super().__getitem__(key)

    batch = Untouchable(img=torch.randn(4, 3, 32, 32), label=torch.zeros(4, dtype=torch.long))
    trainer.batch_idx, trainer.num_batches = 0, 2
    assert "loss" in trainer.forward_backward(batch)


def test_cascade_trainer_keeps_boosting_frozen_and_records_its_hash(boosting_dir, data_root, tmp_path):
    from caspl_plugin.artifacts.boosting import ArtifactMismatchError, BoostingArtifact
    from dassl.engine import build_trainer

    out = tmp_path / "caspl"
    cfg = tiny_cfg(data_root, out, "CasPL_PromptSRC", "DATASET.NUM_SHOTS", 1, "DATASET.SUBSAMPLE_CLASSES", "base",
                   "TRAINER.CASPL.BOOSTING", str(boosting_dir))
    trainer = build_trainer(cfg)
    group = trainer.boosting_group
    before = {k: v.clone() for k, v in group.state_dict().items()}
    in_optimizer = {id(p) for g in trainer.optim.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in group.parameters())
    trainer.train()
    assert all(torch.equal(before[k], v) for k, v in group.state_dict().items())
    assert (out / "caspl_boosting" / "model.pth.tar-1").is_file()

    # reload with a different artifact is refused
    other = BoostingArtifact.load(boosting_dir / "boosting.safetensors")
    other.tensors["text"] = other.tensors["text"] + 1.0
    other.save(tmp_path / "other.safetensors")
    cfg2 = tiny_cfg(data_root, tmp_path / "eval", "CasPL_PromptSRC", "DATASET.SUBSAMPLE_CLASSES", "new",
                    "TRAINER.CASPL.BOOSTING", str(tmp_path / "other.safetensors"))
    with pytest.raises(ArtifactMismatchError, match="trained with boosting artifact"):
        build_trainer(cfg2).load_model(str(out), epoch=1)
    cfg3 = tiny_cfg(data_root, tmp_path / "eval2", "CasPL_PromptSRC", "DATASET.SUBSAMPLE_CLASSES", "new",
                    "TRAINER.CASPL.BOOSTING", str(boosting_dir / "boosting.safetensors"))
    ok = build_trainer(cfg3)
    ok.load_model(str(out), epoch=1)
    assert 0.0 <= ok.test() <= 100.0


def test_learnable_boosting_prompts_are_trained_by_the_plugins_method_trainers(boosting_dir, data_root, tmp_path):
    """TRAINER.CASPL.LEARNABLE_BOOSTING: the boosting group's own optimizer steps with the method's."""
    from dassl.engine import build_trainer

    cfg = tiny_cfg(data_root, tmp_path / "learn", "CasPL_CoOp", "DATASET.NUM_SHOTS", 1, "DATASET.SUBSAMPLE_CLASSES", "base",
                   "TRAINER.CASPL.BOOSTING", str(boosting_dir), "TRAINER.CASPL.LEARNABLE_BOOSTING", True)
    trainer = build_trainer(cfg)
    group = trainer.boosting_group
    before = {k: v.clone() for k, v in group.state_dict().items()}
    trainer.train()
    assert all(not torch.equal(before[k], v) for k, v in group.state_dict().items())


def test_cascade_trainer_errors(data_root, tmp_path):
    from dassl.engine import build_trainer

    with pytest.raises(FileNotFoundError, match="TRAINER.CASPL.BOOSTING"):
        build_trainer(tiny_cfg(data_root, tmp_path, "CasPL_CoOp"))
    with pytest.raises(FileNotFoundError, match="no boosting artifact"):
        build_trainer(tiny_cfg(data_root, tmp_path, "CasPL_CoOp", "TRAINER.CASPL.BOOSTING", str(tmp_path / "missing")))


def test_promptsrc_resume_keeps_prompt_aggregation(data_root, tmp_path, monkeypatch):
    """Interrupt a 2-epoch PromptSRC run after epoch 1: the resumed run restores the GPA state from
    Dassl's checkpoint and ends with w1 * (epoch-1 prompts) + w2 * (epoch-2 prompts)."""
    from dassl.engine import build_trainer

    from caspl_plugin.methods.promptsrc import GaussianPromptAggregation, gaussian_weights

    opts = ("DATASET.NUM_SHOTS", 1, "DATASET.SUBSAMPLE_CLASSES", "base", "TRAINER.PROMPTSRC.GPA_MEAN", 1,
            "TRAINER.PROMPTSRC.GPA_STD", 1, "TRAIN.CHECKPOINT_FREQ", 1, "TEST.NO_TEST", True)
    first = build_trainer(tiny_cfg(data_root, tmp_path / "cut", "PromptSRC", *opts, epochs=2))
    real_after_epoch = first.after_epoch

    def after_epoch_then_crash():
        real_after_epoch()  # saves the epoch-1 checkpoints, GPA state included
        raise KeyboardInterrupt("simulated interruption after epoch 1")

    first.after_epoch = after_epoch_then_crash
    with pytest.raises(KeyboardInterrupt):
        first.train()
    after_epoch1 = {k: v.clone() for k, v in first._models["prompt_learner"].state_dict().items()}
    assert (tmp_path / "cut" / "aggregation" / "model.pth.tar-1").is_file()

    before_apply = {}
    real_apply = GaussianPromptAggregation.apply

    def spy(self):
        before_apply.update({k: p.detach().clone() for k, p in self.params.items()})
        real_apply(self)

    monkeypatch.setattr(GaussianPromptAggregation, "apply", spy)
    resumed = build_trainer(tiny_cfg(data_root, tmp_path / "cut", "PromptSRC", *opts, epochs=2))
    resumed.train()
    assert resumed.model.gpa.recorded == [0, 1]
    w = gaussian_weights(2, 1.0, 1.0)
    final = resumed._models["prompt_learner"].state_dict()
    for key, value in final.items():
        name = key.replace("__", ".")
        expected = w[0] * after_epoch1[key] + w[1] * before_apply[name]
        assert torch.allclose(value, expected, atol=1e-6)


def test_plugin_nodes_survive_clean_cfg_and_lost_nodes_are_named(data_root, tmp_path):
    """Dassl's clean_cfg, imported before enable(), keeps the plugin's nodes (and X's for CasPL_X);
    where they are lost anyway, CasPL_X says so and what to do."""
    from dassl.config import clean_cfg, get_cfg_default
    from dassl.engine import build_trainer
    from yacs.config import CfgNode as CN

    from caspl_plugin.plugin import cfg_guard

    caspl_plugin.enable()
    cfg = get_cfg_default()
    cfg.TRAINER.HOSTX = CN({"A": 1})
    cfg.TRAINER.OTHER = CN({"B": 2})
    clean_cfg(cfg, "SomethingElse")
    assert {"CASPL", "BOOSTDISTILL", "PROMPTSRC", "COOP"} <= set(cfg.TRAINER) and "HOSTX" not in cfg.TRAINER
    cfg.merge_from_list(["TRAINER.CASPL.BOOSTING", "x.safetensors", "TRAINER.BOOSTDISTILL.N_CTX_TEXT", 4])
    assert cfg.clone().TRAINER.__dict__[cfg_guard.FLAG]  # clones stay guarded

    named = get_cfg_default()
    named.TRAINER.HOSTX = CN({"A": 1})
    named.TRAINER.NAME = "CasPL_HostX"
    del named.TRAINER["CASPL"]  # a guarded `del` keeps it too
    clean_cfg(named, named.TRAINER.NAME)
    assert "HOSTX" in named.TRAINER and "CASPL" in named.TRAINER  # the cascaded trainer's own node

    cfg_guard.restore_node(cfg, "HOSTX")  # cleaned before TRAINER.NAME was set: CasPL_X puts it back
    assert cfg.TRAINER.HOSTX.A == 1

    lost = tiny_cfg(data_root, tmp_path, "CasPL_CoOp")
    lost.defrost()
    dict.pop(lost.TRAINER, "CASPL")  # removed behind the guard's back
    lost.freeze()
    with pytest.raises(KeyError, match=r"no TRAINER\.CASPL: it was removed .*clean_cfg.*caspl_plugin\.enable\(\).*extend_cfg"):
        build_trainer(lost)


def test_text_chunk_reaches_the_student_and_bad_values_are_refused(data_root, tmp_path):
    from dassl.engine import build_trainer

    for name in ("IVLP", "BoostDistill"):
        trainer = build_trainer(tiny_cfg(data_root, tmp_path / name, name, "MODEL.BACKBONE.TEXT_CHUNK", 2))
        assert trainer.model.clip.text_chunk == 2
    trainer = build_trainer(tiny_cfg(data_root, tmp_path / "default", "CoOp"))
    assert trainer.model.clip.text_chunk is None
    with pytest.raises(ValueError, match="TEXT_CHUNK"):
        build_trainer(tiny_cfg(data_root, tmp_path / "bad", "CoOp", "MODEL.BACKBONE.TEXT_CHUNK", -1))


@pytest.mark.parametrize("trainer_name", ["CoOp", "BoostDistill"])
def test_dassl_steps_are_the_engines_step(trainer_name, data_root, tmp_path, monkeypatch):
    """forward_backward goes through engine.training_step (autocast, GradScaler, finite check) with
    Dassl's optimizer, for the method trainers and BoostDistill alike."""
    from dassl.engine import build_trainer

    import caspl_plugin.trainers.base as base_module
    import caspl_plugin.trainers.boost_distill as distill_module

    calls = []
    step = base_module.training_step

    def recording_step(objective, images, labels, optimizer, precision="fp32", **batch):
        calls.append((type(objective).__name__, precision, optimizer))
        return step(objective, images, labels, optimizer, precision, **batch)

    monkeypatch.setattr(base_module, "training_step", recording_step)
    monkeypatch.setattr(distill_module, "training_step", recording_step)
    trainer = build_trainer(tiny_cfg(data_root, tmp_path, trainer_name, "DATASET.NUM_SHOTS", 1))
    trainer.train()
    assert len(calls) == trainer.num_batches and calls
    assert all(optimizer == [trainer.optim] and precision == "fp32" for _, precision, optimizer in calls)
    assert {name for name, _, _ in calls} == {"BoostingDistiller" if trainer_name == "BoostDistill" else "CoOp"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 loss scaling is a CUDA matter")
def test_prec_fp16_on_cuda_scales_the_loss(data_root, tmp_path):
    from dassl.engine import build_trainer

    from caspl_plugin.engine import grad_scaler

    trainer = build_trainer(tiny_cfg(data_root, tmp_path, "CoOp", "DATASET.NUM_SHOTS", 1, "TRAINER.COOP.PREC", "fp16",
                                     "USE_CUDA", True))
    assert trainer.precision == "amp" and trainer.device.type == "cuda"
    trainer.train()
    scaler = grad_scaler(trainer.optim, trainer.device, trainer.precision)
    assert scaler is not None and scaler.is_enabled() and scaler.get_scale() > 1.0


def test_enable_honours_caspl_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("CASPL_THREADS", "1")
    try:
        caspl_plugin.enable()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
