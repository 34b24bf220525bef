"""The pre-trained toy CLIPs shipped as package data: loading, hash pinning, accuracies, and boosting."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import shutil

import pytest
import torch

from caspl_plugin.artifacts import ArtifactError, content_hash, load_artifact, save_artifact
from caspl_plugin.clip import create_clip
from caspl_plugin.clip.names import MODEL_CONFIG_DIR
from caspl_plugin.methods.base import ZeroShotCLIP
from caspl_plugin.prompts import PromptedCLIP
from caspl_plugin.toy import base_labels, captions, class_names, generate, novel_labels
from caspl_plugin.toy.weights import (
    MANIFEST_FILE, TOY_MODELS, ToyWeightsError, load_toy_weights, read_weights_manifest, toy_metadata, weights_path,
)

TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def toy_student():
    return create_clip("toy-student")


@pytest.fixture(scope="module")
def toy_teacher():
    return create_clip("toy-teacher")


@pytest.fixture(scope="module")
def test_set():
    """The held-out set the shipped accuracies were measured on."""
    return generate(num_per_class=20, seed=12345)


def normalised(backbone, images):
    mean, std = torch.tensor(backbone.mean)[:, None, None], torch.tensor(backbone.std)[:, None, None]
    return (images - mean) / std


@torch.no_grad()
def split_accuracy(model, images, labels):
    """Base accuracy among base classes and novel accuracy among novel classes (%), as in base-to-novel."""
    logits = model(images)
    result = {}
    for split, classes in (("base", base_labels()), ("novel", novel_labels())):
        classes = torch.tensor(classes)
        rows = torch.isin(labels, classes)
        predicted = classes[logits[rows][:, classes].argmax(dim=1)]
        result[split] = 100.0 * (predicted == labels[rows]).float().mean().item()
    return result


def zero_shot(backbone, batch):
    model = ZeroShotCLIP(PromptedCLIP(backbone), class_names(), template=TEMPLATE).eval()
    return split_accuracy(model, normalised(backbone, batch.images), batch.labels)


# --- loading and hashes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOY_MODELS)
def test_create_clip_loads_the_shipped_weights_in_fp32(name):
    backbone = create_clip(name)
    assert backbone.weights.kind == "package" and backbone.weights.location == name
    config = json.loads((MODEL_CONFIG_DIR / f"{name}.json").read_text())
    geometry = backbone.describe()
    assert geometry["vision_width"] == config["vision_cfg"]["width"] and geometry["text_depth"] == 4
    assert geometry["image_size"] == 32 and geometry["context_length"] == 20
    assert all(p.dtype == torch.float32 for p in backbone.model.parameters())
    # the stored fp16 tensors, widened, are what the model holds; the trimmed embedding rows are restored in place
    tensors, metadata = load_artifact(weights_path(name))
    state = backbone.model.state_dict()
    assert torch.equal(state["visual.proj"], tensors["visual.proj"].float())
    assert torch.equal(state["token_embedding.weight"][tensors["token_embedding.ids"]], tensors["token_embedding.rows"].float())
    assert state["token_embedding.weight"].shape[0] == metadata["vocab_size"] == 49408
    assert 12 <= backbone.model.logit_scale.exp().item() <= 100


def test_weights_are_deterministic_and_small():
    first, second = load_toy_weights("toy-student"), load_toy_weights("toy-student")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    sizes = {name: weights_path(name).stat().st_size for name in TOY_MODELS}
    assert sum(sizes.values()) < 6 * 2 ** 20, sizes
    assert sizes["toy-student"] < sizes["toy-teacher"]


@pytest.mark.parametrize("name", TOY_MODELS)
def test_manifest_pins_each_file_and_metadata_records_the_recipe(name):
    manifest = read_weights_manifest()
    tensors, metadata = load_artifact(weights_path(name))
    assert manifest["models"][name]["content_sha256"] == content_hash(tensors, metadata) == metadata["content_sha256"]
    assert "pretrain_toy_clips.py" in manifest["regenerate"] and metadata["regenerate"] == manifest["regenerate"]
    assert metadata["recipe"]["classes"] == ("all" if name == "toy-teacher" else "base")
    assert metadata["zero_shot"]["template"] == TEMPLATE
    assert set(metadata["zero_shot"]["accuracy"]) >= {"base", "novel"}
    assert all(t.dtype in (torch.float16, torch.int64) for t in tensors.values())


def test_every_token_the_domain_uses_is_kept(toy_student):
    kept = set(load_artifact(weights_path("toy-student"))[0]["token_embedding.ids"].tolist())
    batch = generate(num_per_class=3, seed=7)
    texts = captions(batch.labels, batch.sizes, batch.positions, torch.Generator().manual_seed(7))
    texts += [TEMPLATE.format(name) for name in class_names()] + ["X X X X " + name + "." for name in class_names()]
    used = set(toy_student.tokenizer(texts).flatten().tolist()) - {0}
    assert used <= kept, sorted(used - kept)


def test_a_tampered_copy_is_refused_naming_the_file(tmp_path):
    source = weights_path("toy-teacher")
    flipped = tmp_path / "flipped.safetensors"
    shutil.copyfile(source, flipped)
    data = bytearray(flipped.read_bytes())
    data[-100] ^= 0x01  # a bit of the last tensor's data
    flipped.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="flipped.safetensors"):
        load_toy_weights("toy-teacher", flipped)

    # a consistent file with other tensors (its own hash rewritten) does not match the pinned hash
    tensors, metadata = load_artifact(source)
    tensors["visual.proj"] = tensors["visual.proj"] * 2
    resaved = tmp_path / "resaved.safetensors"
    save_artifact(resaved, tensors, {k: v for k, v in metadata.items() if k != "content_sha256"})
    with pytest.raises(ToyWeightsError, match=f"resaved.safetensors.*{MANIFEST_FILE}"):
        load_toy_weights("toy-teacher", resaved)
    with pytest.raises(ToyWeightsError, match="holds weights of 'toy-teacher', expected 'toy-student'"):
        toy_metadata("toy-student", source)


def test_unknown_toy_model_is_named():
    with pytest.raises(ValueError, match="'toy-giant'"):
        weights_path("toy-giant")


# --- what the demo relies on ------------------------------------------------------------------------


def test_teacher_beats_student_on_novel_classes(toy_student, toy_teacher, test_set):
    student, teacher = zero_shot(toy_student, test_set), zero_shot(toy_teacher, test_set)
    assert student["base"] >= 80.0, student
    assert teacher["novel"] >= student["novel"] + 15.0, (student, teacher)
    assert teacher["base"] >= 85.0 and teacher["novel"] >= 80.0, teacher
    # the recorded accuracies are what these weights give
    for name, measured in (("toy-student", student), ("toy-teacher", teacher)):
        recorded = toy_metadata(name)["zero_shot"]["accuracy"]
        assert recorded["base"] == pytest.approx(measured["base"], abs=0.5)
        assert recorded["novel"] == pytest.approx(measured["novel"], abs=0.5)


def test_boosting_raises_the_students_novel_accuracy(toy_student, toy_teacher, test_set):
    """The issue's acceptance test: boosting prompts distilled from the teacher (cached logits, unlabeled
    images of all classes, 4+4 deep prompts, AdamW) lift the student's zero-shot novel accuracy."""
    from caspl_plugin.boosting import BoostingConfig, build_distiller

    torch.manual_seed(0)
    distiller = build_distiller(toy_student, toy_teacher, class_names(), TEMPLATE, BoostingConfig(4, 4, 4, 4),
                                generator=torch.Generator().manual_seed(0))
    images = normalised(toy_student, generate(num_per_class=24, seed=777).images)
    teacher_logits = distiller.teacher_logits(images)
    test_images = normalised(toy_student, test_set.images)
    zero_shot_student = zero_shot(toy_student, test_set)

    student = distiller.student
    optimizer = torch.optim.AdamW(student.learnable_parameters(), lr=5e-3)
    sampler = torch.Generator().manual_seed(0)
    student.train()
    for _ in range(80):
        batch = torch.randint(len(images), (64,), generator=sampler)
        loss, _ = distiller.loss(images[batch], teacher_logits=teacher_logits[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    boosted = split_accuracy(student.eval(), test_images, test_set.labels)

    assert boosted["novel"] >= zero_shot_student["novel"] + 5.0, (zero_shot_student, boosted)
    assert boosted["base"] >= zero_shot_student["base"] - 8.0, (zero_shot_student, boosted)
    assert all(not p.requires_grad for p in toy_student.model.parameters())


def test_create_clip_finds_the_toy_loader_without_importing_the_toy_package_first():
    import subprocess
    import sys

    code = (
        "import sys; from caspl_plugin.clip import create_clip; "
        "assert 'caspl_plugin.toy.weights' not in sys.modules; "
        "backbone = create_clip('toy-teacher'); "
        "assert backbone.weights.kind == 'package' and 'caspl_plugin.toy.weights' in sys.modules; "
        "print(round(backbone.model.logit_scale.exp().item(), 2))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) == pytest.approx(toy_metadata("toy-teacher")["logit_scale"], abs=0.05)
