"""The authors' depth rule in the library's cascade (``cascade(..., boosting_depth="method")``) and the
Dassl trainers' precision vocabulary."""
import pytest
import torch

from caspl_plugin.artifacts.boosting import BoostingArtifact
from caspl_plugin.methods import cascade
from caspl_plugin.methods.cascade import boosting_group_from_artifact, method_prompt_depth
from caspl_plugin.prompts import PromptedCLIP

CLASSES = ["cat", "dog", "red car"]


def artifact_of(student, depth, seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    geometry = student.describe()
    return BoostingArtifact.from_group_tensors(
        torch.randn(depth, n, geometry["text_width"], generator=g), torch.randn(depth, n, geometry["vision_width"], generator=g),
        student=geometry)


def test_method_depth_fills_deeper_layers_with_seeded_frozen_tokens(tiny_student):
    clip = PromptedCLIP(tiny_student)
    artifact = artifact_of(tiny_student, depth=1)
    model = cascade("promptsrc", clip, CLASSES, artifact, boosting_depth="method", boosting_seed=3,
                    n_ctx_text=2, n_ctx_vision=2, depth_text=3, depth_vision=2, ctx_init="")
    seeded = torch.Generator().manual_seed(3)
    by_hand = {}
    for encoder, depth in (("text", 3), ("vision", 2)):  # one draw per encoder, text first
        trained = artifact.tensors[encoder]
        fill = torch.empty(depth, 2, trained.shape[-1]).normal_(0.0, 0.02, generator=seeded)
        fill[:1] = trained
        by_hand[encoder] = fill
    group = model.boosting
    assert torch.equal(group.text.detach(), by_hand["text"]) and torch.equal(group.vision.detach(), by_hand["vision"])
    assert not group.learnable
    same = cascade("promptsrc", PromptedCLIP(tiny_student), CLASSES, artifact, boosting_depth="method", boosting_seed=3,
                   n_ctx_text=2, n_ctx_vision=2, depth_text=3, depth_vision=2, ctx_init="")
    assert torch.equal(same.boosting.text, group.text)
    plain = cascade("promptsrc", PromptedCLIP(tiny_student), CLASSES, artifact, n_ctx_text=2, n_ctx_vision=2,
                    depth_text=3, depth_vision=2, ctx_init="")
    assert plain.boosting.text.shape[0] == 1
    images = torch.randn(2, 3, 32, 32)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith('boosting.')}, strict=False)
    with torch.no_grad():
        assert not torch.allclose(plain(images), model(images))


def test_method_depth_drops_deeper_trained_layers_and_keeps_coops_artifact_depth(tiny_student):
    artifact = artifact_of(tiny_student, depth=3)
    ivlp = cascade("ivlp", PromptedCLIP(tiny_student), CLASSES, artifact, boosting_depth="method",
                   n_ctx_text=2, n_ctx_vision=2, depth_text=2, depth_vision=1, ctx_init="")
    assert torch.equal(ivlp.boosting.text.detach(), artifact.text[:2]) and torch.equal(ivlp.boosting.vision.detach(), artifact.vision[:1])
    assert method_prompt_depth(ivlp) == (2, 1)
    coop = cascade("coop", PromptedCLIP(tiny_student), CLASSES, artifact, boosting_depth="method", n_ctx=2)
    assert method_prompt_depth(coop) is None and torch.equal(coop.boosting.text.detach(), artifact.text)
    maple = cascade("maple", PromptedCLIP(tiny_student), CLASSES, artifact, boosting_depth="method", n_ctx=2, depth=2, ctx_init="")
    assert method_prompt_depth(maple) == (2, 2) and maple.boosting.vision.shape[0] == 2


def test_depth_rule_errors_and_placement_hash(tiny_student):
    artifact = artifact_of(tiny_student, depth=1)
    with pytest.raises(ValueError, match="boosting depth must be one of"):
        cascade("coop", PromptedCLIP(tiny_student), CLASSES, artifact, boosting_depth="deep")
    group = boosting_group_from_artifact(artifact, tiny_student.describe())
    with pytest.raises(ValueError, match="from an artifact"):
        cascade("coop", PromptedCLIP(tiny_student), CLASSES, group, boosting_depth="method")
    assert group.placement_sha256 == artifact.content_sha256
    seeded = [boosting_group_from_artifact(artifact, tiny_student.describe(), method_depth=(2, 2), seed=s) for s in (0, 0, 1)]
    assert seeded[0].placement_sha256 == seeded[1].placement_sha256 != seeded[2].placement_sha256 != artifact.content_sha256


def test_precision_vocabulary_of_the_dassl_trainers():
    pytest.importorskip("dassl")
    from yacs.config import CfgNode as CN

    from caspl_plugin.engine import PRECISIONS
    from caspl_plugin.trainers.base import precision_of

    assert [precision_of(CN({"PREC": p})) for p in PRECISIONS] == ["fp32", "amp", "bf16", "amp"]
    assert precision_of(CN({"PREC": "FP16"})) == "amp" and precision_of(CN()) == "fp32"
    with pytest.raises(ValueError, match="PREC must be one of fp32, amp, bf16, fp16, got 'half'"):
        precision_of(CN({"PREC": "half"}))


def test_fillers_follow_the_run_seed_by_default(tiny_student):
    """boosting_seed=None draws the depth rule's fillers from the run's seed (torch.manual_seed), as the
    authors' runs do: seeds 1 and 2 differ, the same seed repeats."""
    artifact = artifact_of(tiny_student, depth=1)

    def fillers(seed):
        torch.manual_seed(seed)
        model = cascade("promptsrc", PromptedCLIP(tiny_student), CLASSES, artifact, boosting_depth="method",
                        n_ctx_text=2, n_ctx_vision=2, depth_text=3, depth_vision=2, ctx_init="")
        return model.boosting.text.detach()[1:].clone(), model.boosting.placement_sha256

    (one, hash_one), (two, hash_two), (again, hash_again) = fillers(1), fillers(2), fillers(1)
    assert not torch.equal(one, two) and hash_one != hash_two
    assert torch.equal(one, again) and hash_one == hash_again


def test_caspl_promptsrc_presets_use_the_authors_depth_rule():
    from caspl_plugin.methods import get_method

    presets = get_method("promptsrc").presets
    assert all(p.cascade == {"boosting_depth": "method"} for name, p in presets.items() if name.startswith("caspl_"))
    assert all(p.cascade == {} for name, p in presets.items() if not name.startswith("caspl_"))


def test_adapt_with_a_caspl_promptsrc_preset_places_the_boosting_prompts_at_promptsrcs_depth(tiny_student, tmp_path):
    """caspl adapt and the Dassl configs agree: the same artifact, the same rule."""
    from caspl_plugin.cli import main
    from caspl_plugin.inference import load_classifier
    from caspl_plugin.toy import domain

    artifact = artifact_of(tiny_student, depth=1)
    artifact_path = tmp_path / "boost.safetensors"
    artifact.save(artifact_path)
    data = domain.write_coop_layout(tmp_path / "data", train_per_class=4, val_per_class=1, test_per_class=2) / "images"
    out = tmp_path / "model.safetensors"
    code = main(["adapt", "--data", str(data), "--method", "promptsrc", "--preset", "caspl_base2novel",
                 "--boosting", str(artifact_path), "--student", "caspl-tiny-student", "--student-weights", "random",
                 "--shots", "1", "--epochs", "1", "--no-eval", "--no-progress", "--model-arg", "depth_text=3",
                 "--model-arg", "depth_vision=2", "-o", str(out)])
    assert code == 0
    model = load_classifier(out)
    assert model.boosting.text.shape[0] == 3 and model.boosting.vision.shape[0] == 2  # PromptSRC's depth, not the artifact's 1
