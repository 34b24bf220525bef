"""Boosting phase: KD loss, what a training step may change, the teacher cache, and `caspl distill`."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from caspl_plugin.boosting import (
    BoostingConfig,
    DistillSettings,
    build_distiller,
    kd_loss,
    make_boosting_group,
    run_distillation,
)
from caspl_plugin.cli import main as caspl
from caspl_plugin.engine import epoch_lr, make_optimizer, training_step
from caspl_plugin.methods import PromptModel
from caspl_plugin.prompts import PromptedCLIP, PromptGroup, PromptSpec

CLASSES = ["red circle", "blue square", "green triangle", "yellow star"]


def test_kd_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    for t in (1.0, 2.0):
        p_t = torch.softmax(teacher / t, -1)
        p_s = torch.softmax(student / t, -1)
        by_hand = sum(
            float(p_t[b, c] * (math.log(p_t[b, c]) - math.log(p_s[b, c]))) for b in range(3) for c in range(5)
        ) / 3 * t * t
        assert kd_loss(student, teacher, t).item() == pytest.approx(by_hand, rel=1e-5)
    assert kd_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="differ"):
        kd_loss(student, teacher[:, :4])


def test_epoch_lr_is_dassl_constant_warmup_then_cosine():
    assert epoch_lr(0, 0.0025, 20) == 1e-5
    assert epoch_lr(1, 0.0025, 20) == pytest.approx(0.0025)
    assert epoch_lr(11, 0.0025, 20) == pytest.approx(0.0025 * 0.5 * (1 + math.cos(math.pi * 10 / 20)))


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_training_step_changes_only_learnable_groups(tiny_student):
    clip = PromptedCLIP(tiny_student)

    class TwoGroups(PromptModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.adapting = PromptGroup("ctx", "adapting", PromptSpec(2, 2, 2, 2), clip.text_width, clip.vision_width)

        def own_groups(self):
            return [self.adapting]

    boosting = make_boosting_group(clip, BoostingConfig(3, 3, 2, 3), learnable=False)
    model = TwoGroups(clip, CLASSES, boosting=boosting)
    before = _params(model)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    training_step(model, images, labels, make_optimizer(model.parameters(), lr=0.1))
    after = _params(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"adapting.text", "adapting.vision"}


def test_distiller_trains_only_the_boosting_prompts_and_never_reads_labels(tiny_student, tiny_teacher):
    distiller = build_distiller(tiny_student, tiny_teacher, CLASSES, config=BoostingConfig(4, 4, 3, 3))
    before = _params(distiller)
    training_step(distiller, torch.randn(4, 3, 32, 32), "labels are never read", make_optimizer(distiller.parameters(), lr=0.1))
    after = _params(distiller)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"student.boosting.text", "student.boosting.vision"}


def test_teacher_text_features_are_computed_once(tiny_student, tiny_teacher, monkeypatch):
    distiller = build_distiller(tiny_student, tiny_teacher, CLASSES, template="a photo of a {}, a shape.")
    expected = F.normalize(tiny_teacher.model.encode_text(tiny_teacher.tokenizer([f"a photo of a {c}, a shape." for c in CLASSES])), dim=-1)
    calls = []
    monkeypatch.setattr(tiny_teacher.model, "encode_text", lambda *a, **k: calls.append(1))
    for _ in range(3):
        distiller.loss(torch.randn(2, 3, 32, 32))
    assert calls == []
    assert (distiller.teacher.text_features - expected).abs().max() < 1e-5


def test_teacher_scale_option(tiny_student, tiny_teacher):
    distiller = build_distiller(tiny_student, tiny_teacher, CLASSES, teacher_scale="student")
    with torch.no_grad():
        distiller.student.clip.clip.logit_scale.fill_(math.log(7.0))
        distiller.teacher.log_logit_scale.fill_(math.log(3.0))
        images = torch.randn(2, 3, 32, 32)
        own = distiller.teacher(images)
        student_scaled = distiller.teacher_logits(images)
    assert torch.allclose(student_scaled, own * 7.0 / 3.0, atol=1e-5)


# ---- caspl distill end to end ---------------------------------------------------------------

@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from caspl_plugin.toy import domain

    root = tmp_path_factory.mktemp("toy")
    paths = domain.write_image_folder(root / "data", num_per_class=1, seed=0)
    names = Path(paths.class_names).read_text().splitlines()[:8]
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    return Path(paths.images), root / "classes.txt"


def _distill(images, classes, out, *extra):
    return caspl([
        "distill", "--images", str(images), "--class-names", str(classes), "-o", str(out),
        "--student", "caspl-tiny-student", "--teacher", "caspl-tiny-teacher", "--epochs", "2",
        "--batch-size", "8", "--n-text", "4", "--n-vision", "4", "--no-progress", *extra,
    ])


def test_distill_cli_end_to_end(image_folder, tmp_path, capsys):
    from caspl_plugin.artifacts.boosting import BoostingArtifact

    images, classes = image_folder
    corrupt = images / "part0" / "broken.png"
    corrupt.write_bytes(b"not an image at all")
    try:
        assert _distill(images, classes, tmp_path / "boost.safetensors", "--lr", "0.05") == 0
    finally:
        corrupt.unlink()
    out = capsys.readouterr().out
    losses = [float(x) for x in out.split("KD loss per epoch:")[1].splitlines()[0].split(",")]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert "skipped 1 unreadable image(s)" in out and "broken.png" in out
    artifact = BoostingArtifact.load(tmp_path / "boost.safetensors")
    assert artifact.n_text == 4 and artifact.depth_text == 3  # clamped to the tiny student's 3 blocks
    assert artifact.class_names == classes.read_text().split("\n")[:-1]
    assert artifact.metadata["training"]["skipped_images"] == 1


def test_distill_resume_continues_exactly(image_folder, tmp_path, monkeypatch, capsys):
    from caspl_plugin.artifacts.boosting import BoostingArtifact
    from caspl_plugin.boosting import train

    images, classes = image_folder
    assert _distill(images, classes, tmp_path / "clean.safetensors") == 0

    real_save = train.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("simulated interruption after epoch 1")

    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    assert _distill(images, classes, tmp_path / "resumed.safetensors") == 130  # Ctrl-C: exit 130
    assert not (tmp_path / "resumed.safetensors").exists()
    assert (tmp_path / "resumed.ckpt.safetensors").exists()
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    capsys.readouterr()
    assert _distill(images, classes, tmp_path / "resumed.safetensors", "--resume") == 0
    clean = BoostingArtifact.load(tmp_path / "clean.safetensors")
    resumed = BoostingArtifact.load(tmp_path / "resumed.safetensors")
    for key in ("text", "vision"):
        assert torch.allclose(clean.tensors[key], resumed.tensors[key], atol=1e-6)
    assert resumed.metadata["training"]["steps"] == clean.metadata["training"]["steps"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty folder", "No images in"),
        ("missing names", "Class-names file not found"),
        ("empty names", "is empty"),
        ("duplicate names", "duplicate class name"),
    ],
)
def test_distill_bad_inputs_fail_clearly_and_write_nothing(case, message, image_folder, tmp_path, capsys):
    images, classes = image_folder
    if case == "empty folder":
        images = tmp_path / "empty"
        images.mkdir()
    elif case == "missing names":
        classes = tmp_path / "nope.txt"
    elif case == "empty names":
        classes = tmp_path / "empty.txt"
        classes.write_text("\n# only a comment\n")
    else:
        classes = tmp_path / "dupes.txt"
        classes.write_text("red circle\nblue square\nred_circle\n")
    out = tmp_path / "out" / "boost.safetensors"
    assert _distill(images, classes, out) == 2
    assert message in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_run_distillation_rejects_checkpoint_of_another_run(tiny_student, tiny_teacher, image_folder, tmp_path):
    from caspl_plugin.artifacts.store import ArtifactError
    from caspl_plugin.data.unlabeled import UnlabeledImages, list_images, train_transform

    images, _ = image_folder
    dataset = UnlabeledImages(list_images(images)[:8], train_transform(32, tiny_student.mean, tiny_student.std))
    distiller = build_distiller(tiny_student, tiny_teacher, CLASSES, config=BoostingConfig(2, 2, 1, 1))
    ckpt = tmp_path / "run.ckpt.safetensors"
    run_distillation(distiller, dataset, DistillSettings(epochs=1, batch_size=4), checkpoint=ckpt, progress=False)
    with pytest.raises(ArtifactError, match="batch_size"):
        run_distillation(distiller, dataset, DistillSettings(epochs=1, batch_size=2), checkpoint=ckpt, resume=True, progress=False)
