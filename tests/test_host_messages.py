"""What ``CasPL_<X>`` tells a user, and when (real Dassl): the host's learnable parameters counted as
the host trains them, every refusal the trainer class or the config already shows made before the host
builds anything (its ``build_model`` is never called), unknown names answered with the registered
trainers and a did-you-mean, ``CasPL_ZeroshotCLIP`` evaluating zero-shot CLIP with the boosting
prompts, and a vision-only host (VPT) getting the vision boosting tokens."""
import re

import pytest

pytest.importorskip("dassl")

import torch  # noqa: E402

from helpers_dassl import make_dtd, tiny_cfg  # noqa: E402
from helpers_hosts import BASE, VISION_WIDTH, build, hand_image, images, random_artifact, save_artifact  # noqa: E402
from host_project import trainers as host  # noqa: E402  (registers the host's trainers)

from caspl_plugin.artifacts.boosting import ArtifactMismatchError, BoostingArtifact  # noqa: E402
from caspl_plugin.plugin.adapters import CascadeRefused, backbone_geometry  # noqa: E402
from caspl_plugin.plugin.manager import UnknownTrainerError  # noqa: E402

STUDENT = "caspl-tiny-student"  # the plugin's own trainers' backbone in tiny_cfg


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dtd(tmp_path_factory.mktemp("messages_data"))


def student_artifact(path, text=(2, 2), vision=(2, 2), seed=0) -> str:
    """Boosting prompts ``(depth, n)`` per encoder for the tiny student of the plugin's own trainers."""
    geometry = backbone_geometry(STUDENT)
    g = torch.Generator().manual_seed(seed)
    BoostingArtifact.from_group_tensors(torch.randn(*text, geometry["text_width"], generator=g),
                                        torch.randn(*vision, geometry["vision_width"], generator=g), student=geometry).save(path)
    return str(path)


def build_own(root, out, trainer, *opts):
    """One of the plugin's own trainers (or its ``CasPL_`` form) on the tiny student, 1 shot of the base classes
    (the student's random weights from one seed: the same in every build)."""
    from dassl.engine import build_trainer

    torch.manual_seed(0)
    return build_trainer(tiny_cfg(root, out, trainer, "DATASET.NUM_SHOTS", 1, "DATASET.SUBSAMPLE_CLASSES", "base",
                                  "TEST.NO_TEST", True, *opts))


def summary(capsys) -> str:
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("CasPL: "))


def own_requires_grad(trainer) -> int:
    """The host's own count, as CoOp-family trainers print it: parameters of its model with requires_grad."""
    model = trainer.model.module if isinstance(trainer.model, torch.nn.DataParallel) else trainer.model
    boosting = {id(p) for p in trainer.boosting_group.parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in boosting)


# --- learnable parameters, as the host counts them -----------------------------------------------

HOSTS = {  # host trainer -> options; HostIVLP and HostVPT give Dassl's build_optimizer their whole model
    "HostCoOp": (), "HostIVLP": (), "HostAnchored": (), "HostParallel": (), "HostVPT": (),
}
OWN = ("ZeroshotCLIP", "CoOp", "CoCoOp", "IVLP", "MaPLe", "PromptSRC")


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_host_learnable_count_is_the_hosts_requires_grad_count(name, data_root, tmp_path, capsys):
    trainer = build(data_root, tmp_path, "CasPL_" + name, *HOSTS[name],
                    "TRAINER.CASPL.BOOSTING", random_artifact(tmp_path / "b.safetensors"))
    expected = own_requires_grad(trainer)
    frozen = sum(p.numel() for p in trainer.boosting_group.parameters())
    line = summary(capsys)
    assert f"host learnable parameters {expected} (requires_grad, in its optimizers), beside {frozen} frozen / 0 learnable" in line
    everything = {id(p): p.numel() for o in trainer._optims.values() if o is not None for g in o.param_groups for p in g["params"]}
    if name in ("HostIVLP", "HostVPT"):  # what the line said before: every parameter in the optimizer
        assert sum(everything.values()) > 100 * expected


@pytest.mark.parametrize("name", OWN)
def test_own_trainers_learnable_count_is_their_requires_grad_count(name, data_root, tmp_path, capsys):
    trainer = build_own(data_root, tmp_path, "CasPL_" + name, "TRAINER.CASPL.BOOSTING", student_artifact(tmp_path / "b.safetensors"))
    assert f"host learnable parameters {own_requires_grad(trainer)} (requires_grad" in summary(capsys)


def test_learnable_boosting_is_counted_beside_not_in_the_host(data_root, tmp_path, capsys):
    trainer = build(data_root, tmp_path, "CasPL_HostIVLP", "TRAINER.CASPL.LEARNABLE_BOOSTING", True,
                    "TRAINER.CASPL.BOOSTING", random_artifact(tmp_path / "b.safetensors"))
    n = sum(p.numel() for p in trainer.boosting_group.parameters())
    assert f"host learnable parameters {own_requires_grad(trainer)} (requires_grad, in its optimizers), beside 0 frozen / {n} learnable" in summary(capsys)


# --- refusals before the host builds anything ------------------------------------------------------

@pytest.fixture
def nothing_built(monkeypatch):
    """Records every model build and data-loader build (a refusal before the build leaves it empty)."""
    from dassl.engine.trainer import SimpleTrainer

    from caspl_plugin.trainers import BoostDistill
    from caspl_plugin.trainers.base import PromptTrainer

    built = []
    for cls in (host.HostCoOp, PromptTrainer, BoostDistill, SimpleTrainer):
        monkeypatch.setattr(cls, "build_model", lambda self, cls=cls: built.append(f"{cls.__name__}.build_model"))
    monkeypatch.setattr(SimpleTrainer, "build_data_loader", lambda self: built.append("data"))
    yield built
    assert built == []


def test_unknown_cascade_lists_the_registered_trainers_with_a_did_you_mean(data_root, tmp_path, nothing_built):
    from dassl.engine import TRAINER_REGISTRY

    with pytest.raises(UnknownTrainerError) as error:
        build(data_root, tmp_path, "CasPL_DoesNotExist")
    message = str(error.value)
    assert message.startswith("Unknown trainer 'CasPL_DoesNotExist': 'DoesNotExist' is not a registered trainer")
    assert re.search(r"Did you mean CasPL_\w+\?", message)
    listed = message.split("each also as CasPL_<name>: ")[1].split(".")[0].split(", ")
    assert {"CoOp", "PromptSRC", "ZeroshotCLIP", "HostCoOp", "HostVPT"} <= set(listed)
    assert "BoostDistill" not in listed and "Vanilla" not in listed  # no CasPL_ form: listed apart
    assert "without a CasPL_ form: " in message and "BoostDistill" in message.split("without a CasPL_ form: ")[1]

    with pytest.raises(UnknownTrainerError, match=r"Did you mean CasPL_HostCoOp\b"):
        build(data_root, tmp_path, "CasPL_HostCoop")
    with pytest.raises(UnknownTrainerError, match=r"no trainer 'HostCoop' is registered\. Did you mean HostCoOp\b"):
        build(data_root, tmp_path, "HostCoop")
    with pytest.raises(UnknownTrainerError, match="Did you mean"):  # a host looking the name up itself
        TRAINER_REGISTRY.get("CasPL_DoesNotExist")


@pytest.mark.parametrize("name, reason", [
    ("CasPL_BoostDistill", "BoostDistill is phase 1: it learns the boosting prompts itself"),
    ("CasPL_Vanilla", "Vanilla is one of Dassl's own trainers (dassl.engine.dg.vanilla)"),
    ("CasPL_CasPL_HostCoOp", "the CasPL_ prefix is not applied twice"),
])
def test_trainers_that_cannot_take_boosting_prompts_are_refused_at_once(name, reason, data_root, tmp_path, nothing_built):
    from dassl.engine import TRAINER_REGISTRY

    artifact = random_artifact(tmp_path / "b.safetensors")
    TRAINER_REGISTRY.get("CasPL_HostCoOp")  # made on lookup: now in the registry itself
    with pytest.raises(CascadeRefused, match=re.escape(reason)):
        build(data_root, tmp_path, name, "TRAINER.CASPL.BOOSTING", artifact)
    with pytest.raises(CascadeRefused, match=re.escape(reason)):
        TRAINER_REGISTRY.get(name)
    assert name not in TRAINER_REGISTRY.registered_names()
    assert "CasPL_HostCoOp" in TRAINER_REGISTRY.registered_names()


def test_config_problems_are_refused_before_the_host_builds(data_root, tmp_path, nothing_built):
    """Backbone, adapter and anchor problems the config shows: the host's build_model is never called."""
    host_artifact = random_artifact(tmp_path / "host.safetensors")
    own_artifact = student_artifact(tmp_path / "own.safetensors")
    # a backbone open_clip knows by name, other widths than the artifact's (ViT-B/16 would take the host seconds)
    with pytest.raises(ArtifactMismatchError, match=r"MODEL.BACKBONE.NAME ViT-B/16 \(checked before the host builds its "
                                                    r"model\): .*text_width: artifact 48 vs student 512"):
        build(data_root, tmp_path, "CasPL_HostCoOp", "MODEL.BACKBONE.NAME", "ViT-B/16", "TRAINER.CASPL.BOOSTING", host_artifact)
    with pytest.raises(ArtifactMismatchError, match="vision_width: artifact 64 vs student 768"):
        build_own(data_root, tmp_path, "CasPL_CoOp", "MODEL.BACKBONE.NAME", "ViT-B/16", "TRAINER.CASPL.BOOSTING", own_artifact)
    # a ResNet CLIP: nowhere to put vision tokens, and the OpenAI-clip adapters need ViT towers even for text ones
    with pytest.raises(CascadeRefused, match="RN50: its image encoder is a ResNet"):
        build(data_root, tmp_path, "CasPL_HostCoOp", "MODEL.BACKBONE.NAME", "RN50", "TRAINER.CASPL.BOOSTING", host_artifact)
    text_only = save_artifact(tmp_path / "text.safetensors", torch.randn(1, 2, 48), torch.zeros(1, 0, VISION_WIDTH))
    with pytest.raises(CascadeRefused, match="OpenAI-clip adapters place boosting prompts in CLIP's ViT towers only"):
        build(data_root, tmp_path, "CasPL_HostCoOp", "MODEL.BACKBONE.NAME", "RN50", "TRAINER.CASPL.BOOSTING", text_only)
    # the plugin's own trainers: a backbone they cannot build, an anchor they do not have
    with pytest.raises(CascadeRefused, match=r"MODEL.BACKBONE.NAME: Unknown CLIP model 'ViT-B/61'.*Did you mean"):
        build_own(data_root, tmp_path, "CasPL_CoOp", "MODEL.BACKBONE.NAME", "ViT-B/61", "TRAINER.CASPL.BOOSTING", own_artifact)
    with pytest.raises(CascadeRefused, match=r"ANCHOR boosted: CoOp's method 'coop' regularises against no frozen anchor"):
        build_own(data_root, tmp_path, "CasPL_CoOp", "TRAINER.CASPL.ANCHOR", "boosted", "TRAINER.CASPL.BOOSTING", own_artifact)
    # the host's prompt layout: the class token must end the sentence
    with pytest.raises(CascadeRefused, match="TRAINER.HOSTCOOP.CLASS_TOKEN_POSITION is 'front'"):
        build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.HOSTCOOP.CLASS_TOKEN_POSITION", "front",
              "TRAINER.CASPL.BOOSTING", host_artifact)


def test_a_host_every_adapter_disowns_is_refused_before_the_build(data_root, tmp_path, nothing_built, monkeypatch):
    from caspl_plugin.plugin import cascade_trainer
    from caspl_plugin.plugin.adapters import PromptModelAdapter

    monkeypatch.setattr(cascade_trainer, "clip_adapters", lambda: [PromptModelAdapter()])  # knows its own trainers only
    with pytest.raises(CascadeRefused, match=r"CasPL_HostCoOp: no CLIP adapter \(caspl PromptModel \(open_clip\)\) serves "
                                             r"trainer HostCoOp \(host_project.trainers\)"):
        build(data_root, tmp_path, "CasPL_HostCoOp", "TRAINER.CASPL.BOOSTING", random_artifact(tmp_path / "b.safetensors"))


def test_the_same_config_with_a_fitting_backbone_builds(data_root, tmp_path):
    """The control: the checks above refuse on what differs, not on the checking itself."""
    trainer = build_own(data_root, tmp_path, "CasPL_PromptSRC", "TRAINER.CASPL.ANCHOR", "boosted",
                        "TRAINER.CASPL.BOOSTING", student_artifact(tmp_path / "own.safetensors"))
    assert trainer.model.anchor == "boosted"


# --- CasPL_ZeroshotCLIP: zero-shot CLIP with the boosting prompts --------------------------------

def test_zeroshot_clip_evaluates_with_the_boosting_prompts(data_root, tmp_path, monkeypatch):
    """Boosting text tokens = the words "a photo of a" with template "{}.": the class features are CLIP's own
    features of "a photo of a {class}."; the boosting vision tokens follow [CLS][patches] at ln_pre."""
    plain = build_own(data_root, tmp_path / "plain", "ZeroshotCLIP", "TRAINER.ZEROSHOTCLIP.TEMPLATE", "{}.")
    words = plain.clip.word_embeddings("a photo of a").detach()
    geometry = backbone_geometry(STUDENT)
    vision = torch.randn(2, 3, geometry["vision_width"], generator=torch.Generator().manual_seed(2))
    path = tmp_path / "words.safetensors"
    BoostingArtifact.from_group_tensors(words[None], vision, student=geometry).save(path)

    trainer = build_own(data_root, tmp_path / "zs", "CasPL_ZeroshotCLIP", "TRAINER.ZEROSHOTCLIP.TEMPLATE", "{}.",
                        "TRAINER.CASPL.BOOSTING", str(path))
    clip, names = trainer.clip, trainer.dm.dataset.classnames
    assert torch.equal(clip.clip.token_embedding.weight, plain.clip.clip.token_embedding.weight)  # the same CLIP
    with torch.no_grad():
        expected = clip.clip.encode_text(clip.tokenizer([f"a photo of a {n.replace('_', ' ')}." for n in names]))
        torch.testing.assert_close(trainer.model.encode_classes(), expected, rtol=0, atol=1e-5)
    seen = []
    clip.clip.visual.ln_pre.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    accuracy = trainer.test()  # Dassl's evaluation path, as --eval-only runs it
    assert 0.0 <= accuracy <= 100.0 and seen
    base = clip.clip.visual.positional_embedding.shape[0]  # [CLS] + patches
    assert seen[0].shape[1] == base + 3 and torch.equal(seen[0][:, base:], vision[0].expand(len(seen[0]), -1, -1))

    forward_backward = []
    monkeypatch.setattr(type(trainer), "forward_backward", lambda self, batch: forward_backward.append(1))
    with pytest.raises(CascadeRefused, match=r"CasPL_ZeroshotCLIP has nothing to train: .* run it with --eval-only"):
        trainer.train()
    assert forward_backward == [] and not (tmp_path / "zs" / "tensorboard").exists()


# --- a vision-only host (VPT) ----------------------------------------------------------------------

def test_vpt_host_gets_the_vision_boosting_tokens(data_root, tmp_path, capsys):
    g = torch.Generator().manual_seed(9)
    text, vision = torch.randn(2, 2, 48, generator=g), torch.randn(2, 3, VISION_WIDTH, generator=g)
    artifact = save_artifact(tmp_path / "b.safetensors", text, vision)
    plain = build(data_root, tmp_path / "plain", "HostVPT")
    trainer = build(data_root, tmp_path / "vpt", "CasPL_HostVPT", "TRAINER.CASPL.BOOSTING", artifact)
    line = summary(capsys)
    assert "via OpenAI clip fork with vision prompts only (VPT)" in line
    assert "text 2 tokens NOT placed (the VPT host's class text features are fixed" in line
    assert "vision 3 tokens x depth 2" in line
    model, pixels = trainer.model, images()
    assert torch.equal(model.embeddings.fixed_embeddings, plain.model.embeddings.fixed_embeddings)
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(pixels), hand_image(model.image_encoder, pixels, vision))
        assert not torch.allclose(model.image_encoder(pixels), plain.model.image_encoder(pixels))

    vpt_before = model.image_encoder.VPT.detach().clone()
    trainer.train()
    assert not torch.equal(model.image_encoder.VPT, vpt_before)
    assert torch.equal(trainer.boosting_group.vision.detach(), vision)

    text_only = save_artifact(tmp_path / "text.safetensors", text, torch.zeros(1, 0, VISION_WIDTH))
    with pytest.raises(CascadeRefused, match=r"has text tokens only, and OpenAI clip fork with vision prompts only \(VPT\) "
                                             "cannot place them"):
        build(data_root, tmp_path / "t", "CasPL_HostVPT", "TRAINER.CASPL.BOOSTING", text_only)


def test_vpt_base_length_is_the_hosts(data_root, tmp_path):
    """The boosting vision tokens sit right after [CLS][patches], before the host's own VPT tokens."""
    trainer = build(data_root, tmp_path, "CasPL_HostVPT", "TRAINER.CASPL.BOOSTING", random_artifact(tmp_path / "b.safetensors"))
    hooks = trainer.model.caspl_boosting
    assert hooks.vision_start == BASE and hooks.handle.n_text == 0 and hooks.handle.n_vision == 2


# --- CoOp's own ZeroshotCLIP in a host project --------------------------------------------------

def test_host_zeroshot_clip_evaluates_with_the_boosting_prompts(data_root, tmp_path, monkeypatch, capsys):
    """Boosting text tokens = the words "a photo of a" before the host's template "{} texture.": the class
    features are CLIP's own features of "a photo of a {class} texture."; images get [CLS][patches][boosting]."""
    from host_project.openai_clip import build_clip, tokenizer

    reference, tokenize = build_clip("host-tiny"), tokenizer(32)
    with torch.no_grad():
        words = reference.token_embedding(tokenize(["a photo of a"]))[0, 1:5]
    vision = torch.randn(2, 3, VISION_WIDTH, generator=torch.Generator().manual_seed(4))
    trainer = build(data_root, tmp_path, "CasPL_HostZeroshotCLIP",
                    "TRAINER.CASPL.BOOSTING", save_artifact(tmp_path / "b.safetensors", words[None], vision))
    line = summary(capsys)
    assert "via OpenAI clip, zero-shot CLIP trainer (ZeroshotCLIP)" in line and "text 4 tokens x depth 1" in line
    assert "host learnable parameters 0 (requires_grad" in line
    names = [n.replace("_", " ") for n in trainer.dm.dataset.classnames]
    pixels = images()
    with torch.no_grad():
        expected = reference.encode_text(tokenize([f"a photo of a {name} texture." for name in names]))
        torch.testing.assert_close(trainer.text_features, expected / expected.norm(dim=-1, keepdim=True))
        torch.testing.assert_close(trainer.clip_model.encode_image(pixels), hand_image(reference.visual, pixels, vision))
    assert 0.0 <= trainer.test() <= 100.0
    with pytest.raises(CascadeRefused, match="CasPL_HostZeroshotCLIP has nothing to train"):
        trainer.train()


def test_host_zeroshot_ensemble_gets_the_vision_tokens_only(data_root, tmp_path, capsys):
    artifact = random_artifact(tmp_path / "b.safetensors")
    plain = build(data_root, tmp_path / "plain", "HostZeroshotEnsemble")
    trainer = build(data_root, tmp_path / "boosted", "CasPL_HostZeroshotEnsemble", "TRAINER.CASPL.BOOSTING", artifact)
    line = summary(capsys)
    assert "text 2 tokens NOT placed (its class text features are not CLIP's features of '{} texture.'" in line
    assert "vision 3 tokens x depth 2" in line
    assert torch.equal(trainer.text_features, plain.text_features)
    with torch.no_grad():
        assert not torch.allclose(trainer.clip_model.encode_image(images()), plain.clip_model.encode_image(images()))
