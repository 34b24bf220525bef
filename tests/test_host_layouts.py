"""Host layouts met in CoOp-family projects, each served by ``CasPL_<X>`` without a change to the host:
a ``train.py`` that cleans its config (``clean_cfg``), a host with its own frozen anchor CLIP in the
loss, an fp16 CLIP, a model wrapped in ``DataParallel`` and a trainer named like one of the plugin's.
Each builds, trains an epoch with the host's own loss, saves and reloads (``--eval-only``) with the
boosting prompts bit-identical and never in the optimizer."""
import io
import sys

import pytest

pytest.importorskip("dassl")

import torch  # noqa: E402

from helpers_dassl import make_dtd, tiny_options  # noqa: E402
from helpers_hosts import build, random_artifact  # noqa: E402
from host_project import trainers as host  # noqa: E402

from caspl_plugin.artifacts.boosting import BoostingArtifact  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dtd(tmp_path_factory.mktemp("layout_data"))


def optimized(trainer) -> set:
    return {id(p) for optim in trainer._optims.values() if optim is not None for g in optim.param_groups for p in g["params"]}


def assert_boosting_is_the_artifact(trainer, path):
    artifact = BoostingArtifact.load(path)
    group = trainer.boosting_group
    assert torch.equal(group.text.detach().cpu(), artifact.text) and torch.equal(group.vision.detach().cpu(), artifact.vision)
    assert not any(p.requires_grad for p in group.parameters())
    assert not any(id(p) in optimized(trainer) for p in group.parameters())


def learned_state(trainer) -> dict:
    return {name: {k: v.clone() for k, v in model.state_dict().items()} for name, model in trainer._models.items()}


def spy_loss(monkeypatch, cls):
    calls = []
    real = cls.compute_loss

    def spy(self, logits, label):
        calls.append(tuple(logits.shape))
        return real(self, logits, label)

    monkeypatch.setattr(cls, "compute_loss", spy)
    return calls


@pytest.fixture
def colliding_coop():
    """The host registers its own ``CoOp`` before the plugin is enabled: the host's is kept."""
    import caspl_plugin
    from dassl.engine import TRAINER_REGISTRY

    saved = {name: TRAINER_REGISTRY._obj_map.pop(name) for name in ("CoOp", "CasPL_CoOp") if name in TRAINER_REGISTRY._obj_map}
    cls = host.colliding_coop()
    TRAINER_REGISTRY.register(cls)
    try:
        caspl_plugin.enable()
        yield cls
    finally:
        for name in ("CoOp", "CasPL_CoOp"):
            TRAINER_REGISTRY._obj_map.pop(name, None)
        TRAINER_REGISTRY._obj_map.update(saved)


LAYOUTS = {
    "anchored": ("HostAnchored", host.HostAnchored, ("TRAINER.CASPL.ANCHOR", "boosted")),
    "fp16": ("HostCoOp", host.HostCoOp, ("TRAINER.HOSTCOOP.PREC", "fp16")),
    "data_parallel": ("HostParallel", host.HostParallel, ()),
    "name_collision": ("CoOp", None, ("TRAINER.COOP.N_CTX", 4, "TRAINER.COOP.CTX_INIT", "")),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_host_layout_trains_saves_and_reloads(layout, data_root, tmp_path, monkeypatch, request):
    name, cls, opts = LAYOUTS[layout]
    if layout == "name_collision":
        cls = request.getfixturevalue("colliding_coop")
    calls = spy_loss(monkeypatch, cls)
    artifact = random_artifact(tmp_path / "boosting.safetensors")
    opts = (*opts, "TRAINER.CASPL.BOOSTING", artifact)
    out = tmp_path / "run"
    trainer = build(data_root, out, "CasPL_" + name, *opts)
    assert isinstance(trainer, cls) and type(trainer).__name__ == "CasPL_" + name
    assert_boosting_is_the_artifact(trainer, artifact)
    before = learned_state(trainer)
    trainer.train()
    assert len(calls) == trainer.num_batches > 0  # the host's own loss, every batch
    assert_boosting_is_the_artifact(trainer, artifact)
    after = learned_state(trainer)
    assert any(not torch.equal(before["prompt_learner"][k], v) for k, v in after["prompt_learner"].items())
    assert (out / "prompt_learner" / "model.pth.tar-1").is_file() and (out / "caspl_boosting" / "model.pth.tar-1").is_file()

    evaluator = build(data_root, tmp_path / "eval", "CasPL_" + name, *opts)  # --eval-only
    evaluator.load_model(str(out), epoch=1)
    assert_boosting_is_the_artifact(evaluator, artifact)
    for key, value in evaluator._models["prompt_learner"].state_dict().items():
        if key not in ("token_prefix", "token_suffix"):
            assert torch.equal(value, after["prompt_learner"][key])
    assert 0.0 <= evaluator.test() <= 100.0

    if layout == "fp16":
        assert trainer.model.prompt_learner.ctx.dtype == torch.float16
    if layout == "data_parallel":
        assert isinstance(trainer.model, torch.nn.DataParallel)
    if layout == "anchored":
        assert [hooks for hooks in trainer.model.caspl_anchor_hooks]


def test_boosted_anchor_matches_the_anchor_clip_with_boosting_by_hand(data_root, tmp_path):
    """ANCHOR boosted: the anchor CLIP's text is ``[SOS][boosting][a photo of a {}. EOS]`` and its images
    ``[CLS][patches][boosting]`` — the prompted path's boosting tokens, in the anchor; ANCHOR clip
    leaves the anchor vanilla."""
    from host_project.openai_clip import build_clip, tokenizer

    artifact = random_artifact(tmp_path / "b.safetensors", text=(2, 2), vision=(2, 3))
    boosted = build(data_root, tmp_path / "b", "CasPL_HostAnchored", "TRAINER.CASPL.BOOSTING", artifact, "TRAINER.CASPL.ANCHOR", "boosted")
    vanilla = build(data_root, tmp_path / "v", "CasPL_HostAnchored", "TRAINER.CASPL.BOOSTING", artifact)
    group, zs = boosted.boosting_group, boosted.model.zs_clip
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    reference = build_clip("host-tiny")
    with torch.no_grad():
        plain_image, plain_text = vanilla.model.anchor_features(pixels)
        image, text = boosted.model.anchor_features(pixels)
        # by hand: the anchor's own modules with the boosting tokens spliced in
        tokens = boosted.model.anchor_tokens
        ids = torch.cat([tokens[:, :1], tokens[:, 1:2].expand(-1, 2), tokens[:, 1:-2]], dim=1)
        x = reference.token_embedding(ids)
        x[:, 1:3] = group.text[0]
        x = (x + reference.positional_embedding).permute(1, 0, 2)
        for i, block in enumerate(reference.transformer.resblocks):
            if i == 1:
                x = torch.cat([x[:1], group.text[1].unsqueeze(1).expand(-1, x.shape[1], -1), x[3:]])
            x = block(x)
        x = reference.ln_final(x.permute(1, 0, 2))
        hand_text = x[torch.arange(len(ids)), ids.argmax(-1)] @ reference.text_projection
    torch.testing.assert_close(text, torch.nn.functional.normalize(hand_text, dim=-1))
    torch.testing.assert_close(plain_text, torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1))
    assert not torch.allclose(image, plain_image) and not torch.allclose(text, plain_text)
    assert tokenizer(32)(["a photo of a x."]).shape == tokens[:1].shape
    assert not any(p.requires_grad for p in zs.parameters())


def test_boosted_anchor_is_refused_when_the_host_has_none(data_root, tmp_path):
    with pytest.raises(ValueError, match="ANCHOR boosted: .* found no frozen anchor CLIP"):
        build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.CASPL.ANCHOR", "boosted",
              "TRAINER.CASPL.BOOSTING", random_artifact(tmp_path / "b.safetensors"))


# --- a host train.py that cleans its config ------------------------------------------------------

def run_host(argv):
    """The host's own ``train.py`` main; Dassl's logger writes OUTPUT_DIR/log.txt (stdout restored after)."""
    from host_project import train

    stdout = sys.stdout
    try:
        return train.main([str(a) for a in argv])
    finally:
        if sys.stdout is not stdout:  # Dassl's Logger closes its console when collected: give it a dummy
            log, sys.stdout = sys.stdout, stdout
            log.file.close()
            log.file, log.console = None, io.StringIO()


def host_argv(root, out, trainer, *opts, eval_from=None):
    argv = ["--root", root, "--output-dir", out, "--seed", 1, "--trainer", trainer]
    if eval_from is not None:
        argv += ["--eval-only", "--model-dir", eval_from, "--load-epoch", 1]
    return argv + tiny_options(root, out, trainer) + list(opts)


def test_clean_cfg_host_runs_phase_1_and_phase_2_from_the_command_line(data_root, tmp_path):
    """The host's setup_cfg keeps only TRAINER.HOSTCOOP before merging: the plugin's nodes survive."""
    phase1 = tmp_path / "boosting"
    run_host(host_argv(data_root, phase1, "BoostDistill", "TRAINER.BOOSTDISTILL.PROMPT_DEPTH_TEXT", 2, "TEST.NO_TEST", True))
    artifact = BoostingArtifact.load(phase1 / "boosting.safetensors")
    assert artifact.depth_text == 2 and artifact.n_text == 2

    phase2 = tmp_path / "caspl"
    opts = ("TRAINER.CASPL.BOOSTING", phase1, "TRAINER.CASPL.BOOSTING_DEPTH", "method", "TRAINER.COOP.N_CTX", 4,
            "TRAINER.COOP.PREC", "fp32", "DATASET.NUM_SHOTS", 1, "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.NO_TEST", True)
    trainer = run_host(host_argv(data_root, phase2, "CasPL_CoOp", *opts))
    assert trainer.cfg.TRAINER.CASPL.BOOSTING_DEPTH == "method" and trainer.cfg.TRAINER.COOP.N_CTX == 4
    assert "HOSTCOOP" in trainer.cfg.TRAINER and "HOSTIVLP" not in trainer.cfg.TRAINER  # the host's clean-up ran
    log = (phase2 / "log.txt").read_text()
    assert f"sha256 {artifact.content_sha256[:16]}" in log and "CasPL: CasPL_CoOp via" in log

    evaluated = run_host(host_argv(data_root, tmp_path / "eval", "CasPL_CoOp", *opts, eval_from=phase2))
    assert torch.equal(evaluated.boosting_group.text, trainer.boosting_group.text)


def test_clean_cfg_host_cascade_round_trip_and_log_line(data_root, tmp_path, monkeypatch):
    calls = spy_loss(monkeypatch, host.HostCoOp)
    artifact = random_artifact(tmp_path / "b.safetensors")
    out = tmp_path / "run"
    opts = ("MODEL.BACKBONE.NAME", "host-tiny", "TRAINER.CASPL.BOOSTING", artifact, "TRAINER.HOSTCOOP.N_CTX", 3,
            "DATASET.NUM_SHOTS", 1, "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.NO_TEST", True)
    trainer = run_host(host_argv(data_root, out, "CasPL_HostCoOp", *opts))
    assert len(calls) == trainer.num_batches and trainer.model.prompt_learner.n_ctx == 3
    assert_boosting_is_the_artifact(trainer, artifact)
    line = next(line for line in (out / "log.txt").read_text().splitlines() if line.startswith("CasPL: "))
    sha = BoostingArtifact.load(artifact).content_sha256
    for expected in (f"boosting {artifact} (sha256 {sha[:16]})", "text 2 tokens x depth 2", "vision 3 tokens x depth 2",
                     f"{2 * 2 * 48 + 2 * 3 * 64} frozen / 0 learnable boosting parameters", "anchor clip",
                     f"host learnable parameters {3 * 48}"):
        assert expected in line, (expected, line)

    evaluator = run_host(host_argv(data_root, tmp_path / "eval", "CasPL_HostCoOp", *opts, eval_from=out))
    assert torch.equal(evaluator.model.prompt_learner.ctx, trainer.model.prompt_learner.ctx)
    assert_boosting_is_the_artifact(evaluator, artifact)
