"""Any open_clip CLIP as teacher: towers the prompt mechanism refuses (attention pooling, a timm
trunk) distil end to end, online and from a cache, and receive views normalised with their own
mean/std at their own size (checked against hand computations)."""
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from caspl_plugin.boosting import BoostingConfig, DistillSettings, build_distiller, run_distillation
from caspl_plugin.boosting.teacher import load_text_tower, teacher_identity
from caspl_plugin.cache import TeacherViewCache, TeacherViewDataset, build_teacher_cache
from caspl_plugin.clip import create_clip
from caspl_plugin.data.unlabeled import UnlabeledImages, train_transform
from caspl_plugin.prompts import PromptedCLIP

CLASSES = ["red circle", "blue square", "green triangle"]
TEXT = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
TOWERS = {
    "test-attnpool-teacher": {"embed_dim": 32, "text_cfg": TEXT, "vision_cfg": {
        "image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16,
        "attentional_pool": True, "attn_pooler_queries": 1, "attn_pooler_heads": 2}},
    "test-timm-teacher": {"embed_dim": 32, "text_cfg": TEXT, "vision_cfg": {
        "image_size": 160, "timm_model_name": "test_vit", "timm_model_pretrained": False,
        "timm_pool": "", "timm_proj": "linear"}},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import open_clip

    base = tmp_path_factory.mktemp("towers")
    for name, cfg in TOWERS.items():
        (base / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(base)
    root = base / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(40, 30), (64, 64), (33, 50), (50, 20)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    teachers, weights = {}, {}
    for i, name in enumerate(TOWERS):
        torch.manual_seed(10 + i)
        random = create_clip(name, "random")
        weights[name] = base / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in random.model.state_dict().items()}, str(weights[name]))
        teachers[name] = create_clip(name, str(weights[name]))
    torch.manual_seed(0)
    student = create_clip("caspl-tiny-student", "random")
    return {"base": base, "root": root, "files": sorted(root.glob("*.png")), "teachers": teachers, "weights": weights, "student": student}


@pytest.mark.parametrize("name", list(TOWERS))
def test_tower_the_prompt_mechanism_refuses_distils_online_and_from_a_cache(setup, name, tmp_path):
    teacher, student = setup["teachers"][name], setup["student"]
    with pytest.raises(ValueError, match="Unsupported CLIP"):
        PromptedCLIP(teacher)
    settings = DistillSettings(epochs=2, batch_size=2, lr=0.05, warmup_epochs=0)
    config = BoostingConfig(2, 2, 2, 2)
    online = build_distiller(student, teacher, CLASSES, config=config, generator=torch.Generator().manual_seed(0))
    before = online.student.boosting.tensors()["vision"].clone()
    report = run_distillation(online, UnlabeledImages(setup["files"], train_transform(32, student.mean, student.std)), settings, progress=False)
    assert len(report.epoch_losses) == 2 and all(np.isfinite(report.epoch_losses))
    assert not torch.equal(before, online.student.boosting.tensors()["vision"])

    build_teacher_cache(tmp_path / "cache", setup["files"], setup["root"], teacher, views=2, seed=1, shard_size=2)
    tower = load_text_tower(name, str(setup["weights"][name]))
    cached = build_distiller(student, tower, CLASSES, config=config, generator=torch.Generator().manual_seed(0))
    assert cached.teacher.visual is None
    dataset = TeacherViewDataset.from_cache(
        TeacherViewCache.open(tmp_path / "cache"), setup["files"], setup["root"], image_size=32, mean=student.mean, std=student.std,
        teacher_identity={"arch": tower.arch, "weights_digest": tower.weights_digest})
    report = run_distillation(cached, dataset, settings, progress=False)
    assert len(report.epoch_losses) == 2 and all(np.isfinite(report.epoch_losses))


def _other_normalisation(teacher):
    return dataclasses.replace(teacher, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def test_online_views_are_renormalised_and_resized_for_the_teacher(setup):
    teacher = _other_normalisation(setup["teachers"]["test-timm-teacher"])
    student = setup["student"]
    distiller = build_distiller(student, teacher, CLASSES)
    images = torch.randn(2, 3, 32, 32)
    s_mean, s_std = torch.tensor(student.mean).view(1, 3, 1, 1), torch.tensor(student.std).view(1, 3, 1, 1)
    t_mean, t_std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    pixels = F.interpolate(images * s_std + s_mean, size=(160, 160), mode="bicubic", align_corners=False)
    by_hand = (pixels - t_mean) / t_std
    assert torch.allclose(distiller.teacher.prepare(images, student.mean, student.std), by_hand, atol=1e-5)
    with torch.no_grad():
        features = F.normalize(teacher.model.encode_image(by_hand), dim=-1)
        tokens = teacher.tokenizer([f"a photo of a {c}." for c in CLASSES])
        text = F.normalize(teacher.model.encode_text(tokens), dim=-1)
        logits = teacher.model.logit_scale.exp() * features @ text.t()
    assert torch.allclose(distiller.teacher_logits(images), logits, atol=1e-4)


def test_cached_views_are_rendered_with_the_teachers_size_and_normalisation(setup, tmp_path):
    teacher = _other_normalisation(setup["teachers"]["test-attnpool-teacher"])
    build_teacher_cache(tmp_path / "cache", setup["files"], setup["root"], teacher, views=2, seed=4,
                        shard_size=8, feature_dtype="float32")
    cache = TeacherViewCache.open(tmp_path / "cache")
    assert cache.index["teacher"]["mean"] == [0.5, 0.4, 0.3] and cache.index["teacher"] == teacher_identity(teacher)
    for path in setup["files"][:2]:
        for k in range(2):
            (top, left, height, width, flip), features = cache.view(path.name, k)
            crop = Image.open(path).convert("RGB").crop((left, top, left + width, top + height)).resize((64, 64), Image.BICUBIC)
            if flip:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            array = np.asarray(crop, dtype=np.float32) / 255.0
            by_hand = (torch.from_numpy(array).permute(2, 0, 1) - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
            with torch.no_grad():
                expected = F.normalize(teacher.model.encode_image(by_hand[None]), dim=-1)[0]
            assert torch.allclose(features, expected, atol=1e-5)
