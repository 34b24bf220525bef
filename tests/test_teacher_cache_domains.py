"""A teacher-view cache per domain for universal boosting prompts: `caspl teacher-cache --domains`,
`caspl distill --domains --teacher-cache` (= the online run, no image tower, under torchrun too),
and clear refusals (a missing domain cache, names that cannot be folders, stale images)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from caspl_plugin.artifacts.boosting import BoostingArtifact
from caspl_plugin.boosting import BoostingConfig, DistillSettings, build_distiller, run_distillation
from caspl_plugin.cache import TeacherViewDataset
from caspl_plugin.cache.dataset import open_cached_domains
from caspl_plugin.cli import main as caspl
from caspl_plugin.clip import create_clip
from caspl_plugin.data.domains import MultiDomainImages, read_manifest

CLASSES = {"plain": ["red circle", "blue square", "green triangle"],
           "outline": ["yellow star", "purple heart", "orange cross", "red square"]}
TEMPLATES = {"plain": "a photo of a {}.", "outline": "a drawing of a {}."}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two toy domains on disk with a manifest, and the tiny teacher's weights in a file."""
    from caspl_plugin.toy import domain

    base = tmp_path_factory.mktemp("domain-caches")
    entries = []
    for seed, (name, classes) in enumerate(CLASSES.items()):
        images = domain.write_image_folder(base / name, num_per_class=1, seed=seed, variant=name).images
        (base / f"{name}.txt").write_text("\n".join(classes) + "\n")
        # 12 images per domain keep the runs short
        for extra in sorted(Path(images).rglob("*.png"))[12:]:
            extra.unlink()
        entries.append({"name": name, "images": str(Path(images).relative_to(base)), "class_names": f"{name}.txt",
                        "template": TEMPLATES[name]})
    (base / "domains.json").write_text(json.dumps({"domains": entries}))
    torch.manual_seed(1)
    weights = base / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip("caspl-tiny-teacher", "random").model.state_dict().items()}, str(weights))
    return {"base": base, "manifest": base / "domains.json", "weights": weights}


def _teacher_cache(world, out, *extra):
    return caspl(["teacher-cache", "--domains", str(world["manifest"]), "--teacher", "caspl-tiny-teacher",
                  "--teacher-weights", str(world["weights"]), "--views", "2", "--seed", "4", "--shard-size", "5",
                  "--dtype", "float32", "--no-progress", "-o", str(out), *extra])


def _distill(world, out, *extra):
    return caspl(["distill", "--domains", str(world["manifest"]), "--student", "caspl-tiny-student",
                  "--teacher", "caspl-tiny-teacher", "--teacher-weights", str(world["weights"]),
                  "--epochs", "2", "--batch-size", "4", "--lr", "0.05", "--n-text", "2", "--n-vision", "2",
                  "--depth-text", "2", "--depth-vision", "2", "--domain-sampling", "even", "--no-progress",
                  "-o", str(out), *extra])


@pytest.fixture(scope="module")
def cache(world):
    folder = world["base"] / "cache"
    assert _teacher_cache(world, folder) == 0
    return folder


def test_teacher_cache_writes_one_cache_per_domain_and_inspect_describes_them(world, cache, capsys):
    index = json.loads((cache / "domains.json").read_text())
    assert index["format"] == "caspl-teacher-cache-domains"
    assert index["domains"] == {"plain": {"folder": "plain", "images": 12}, "outline": {"folder": "outline", "images": 12}}
    for name in CLASSES:
        domain_index = json.loads((cache / name / "index.json").read_text())
        assert len(domain_index["files"]) == 12 and domain_index["views"] == 2 and domain_index["seed"] == 4
    capsys.readouterr()
    assert caspl(["inspect", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "multi-domain teacher-view cache: 2 domains" in out and out.count("(teacher-view cache)") == 2
    # a second run is a no-op per domain
    assert _teacher_cache(world, cache) == 0
    assert capsys.readouterr().out.count("is up to date (12 images)") == 2


def test_cached_multi_domain_run_equals_the_online_run_without_an_image_tower(world, cache, monkeypatch):
    import open_clip

    domains = read_manifest(world["manifest"])
    torch.manual_seed(0)
    student = create_clip("caspl-tiny-student", "random")
    teacher = create_clip("caspl-tiny-teacher", str(world["weights"]))
    settings = DistillSettings(epochs=3, batch_size=4, lr=0.05, warmup_epochs=0, seed=3)
    geometry = dict(image_size=student.image_size, mean=student.mean, std=student.std)

    def train(dataset, teacher, image_tower=True):
        steps = []
        distiller = build_distiller(student, teacher, None, None, BoostingConfig(2, 2, 2, 2), teacher_image_tower=image_tower,
                                    generator=torch.Generator().manual_seed(0), domains=[d.classes for d in domains])
        run_distillation(distiller, dataset, settings, progress=False, on_step=lambda m: steps.append(m["loss"]))
        return steps, distiller.student.boosting.tensors()

    online_teacher = build_distiller(student, teacher, CLASSES["plain"], TEMPLATES["plain"]).teacher
    online = MultiDomainImages(domains, sampling="even", datasets=[
        TeacherViewDataset(d.files, d.root, views=2, seed=4, teacher=online_teacher, **geometry) for d in domains])
    online_steps, online_prompts = train(online, teacher)

    def refuse(*args, **kwargs):
        raise AssertionError("the cached run built an image tower")

    monkeypatch.setattr(open_clip.model, "_build_vision_tower", refuse)
    tower, cached = open_cached_domains(cache, domains, student, "caspl-tiny-teacher", str(world["weights"]), sampling="even")
    assert [len(d.files) for d in cached.domains] == [12, 12]
    cached_steps, cached_prompts = train(cached, tower, image_tower=False)
    assert len(online_steps) == len(cached_steps) == 18  # 3 epochs x 3 batches of 4 x 2 domains
    assert np.allclose(online_steps, cached_steps, rtol=0, atol=1e-5)
    assert len(set(np.round(online_steps, 6))) == 18
    for key in online_prompts:
        assert (online_prompts[key] - cached_prompts[key]).abs().max() < 1e-5


def test_distill_with_domain_caches_writes_a_universal_artifact(world, cache, tmp_path, capsys):
    out = tmp_path / "universal.safetensors"
    assert _distill(world, out, "--teacher-cache", str(cache)) == 0
    artifact = BoostingArtifact.load(out)
    assert [(d["name"], d["num_classes"], d["num_images"]) for d in artifact.domains] == [("plain", 3, 12), ("outline", 4, 12)]
    assert artifact.metadata["training"]["domain_sampling"] == "even"
    assert artifact.metadata["training"]["steps"] == 12  # 2 epochs x 3 batches x 2 domains


@pytest.mark.parametrize("case, message", [
    ("missing domain cache", "has no cache for 1 of the 2 domains"),
    ("other crop scale", "augmentation.scale"),
    ("changed image", "image folder: 1 changed"),
])
def test_distill_refuses_domain_caches_that_do_not_fit_and_writes_nothing(case, message, world, cache, tmp_path, capsys):
    import shutil

    folder = cache
    extra = []
    if case == "missing domain cache":
        folder = tmp_path / "partial"
        shutil.copytree(cache, folder)
        shutil.rmtree(folder / "outline")
    elif case == "other crop scale":
        extra = ["--crop-scale", "0.5", "1.0"]
    else:  # a copy of the domains with one image rewritten after the cache was made
        folder = tmp_path / "cache"
        shutil.copytree(world["base"], tmp_path / "data")
        manifest = tmp_path / "data" / "domains.json"
        assert _teacher_cache({**world, "manifest": manifest}, folder) == 0
        image = sorted((tmp_path / "data" / "plain").rglob("*.png"))[0]
        from PIL import Image

        Image.new("RGB", (32, 32), (1, 2, 3)).save(image)
        world = {**world, "manifest": manifest}
    out = tmp_path / "universal.safetensors"
    capsys.readouterr()
    assert _distill(world, out, "--teacher-cache", str(folder), *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not out.with_name("universal.ckpt.safetensors").exists()


@pytest.mark.parametrize("names, message", [
    (("a b", "c"), "cannot name a cache folder"),
    (("../up", "c"), "cannot name a cache folder"),
    (("Pets", "pets"), "differ only in case"),
])
def test_domain_names_that_cannot_be_cache_folders_are_refused(names, message, world, tmp_path, capsys):
    entries = json.loads(world["manifest"].read_text())["domains"]
    manifest = world["base"] / f"names-{abs(hash(names))}.json"
    manifest.write_text(json.dumps({"domains": [{**entry, "name": name} for entry, name in zip(entries, names)]}))
    out = tmp_path / "cache"
    assert _teacher_cache({**world, "manifest": manifest}, out) == 2
    assert message in capsys.readouterr().err and not out.exists()
    artifact = tmp_path / "universal.safetensors"  # plain distill applies the same name rules
    assert _distill({**world, "manifest": manifest}, artifact) == 2
    assert message in capsys.readouterr().err and not artifact.exists()


def test_single_and_multi_domain_caches_do_not_share_a_folder(world, cache, tmp_path, capsys):
    images = world["base"] / "plain"
    single = tmp_path / "single"
    assert caspl(["teacher-cache", "--images", str(images), "--teacher", "caspl-tiny-teacher", "--teacher-weights",
                  str(world["weights"]), "--views", "1", "--no-progress", "-o", str(single)]) == 0
    assert _teacher_cache(world, single) == 2
    assert "holds a single-folder teacher-view cache" in capsys.readouterr().err
    assert caspl(["teacher-cache", "--images", str(images), "--teacher", "caspl-tiny-teacher", "--teacher-weights",
                  str(world["weights"]), "--views", "1", "--no-progress", "-o", str(cache)]) == 2
    assert "holds a multi-domain teacher-view cache" in capsys.readouterr().err


def test_two_processes_train_from_domain_caches_like_one(world, cache, tmp_path):
    """torchrun: global batch 2 x 2 from the caches equals one process at batch 4 (fixed views)."""
    single = tmp_path / "single.safetensors"
    assert _distill(world, single, "--teacher-cache", str(cache)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "caspl_plugin.cli", "distill", "--domains", str(world["manifest"]), "--student", "caspl-tiny-student",
               "--teacher", "caspl-tiny-teacher", "--teacher-weights", str(world["weights"]), "--teacher-cache", str(cache),
               "--epochs", "2", "--batch-size", "2", "--lr", "0.05", "--n-text", "2", "--n-vision", "2",
               "--depth-text", "2", "--depth-vision", "2", "--domain-sampling", "even", "--no-progress",
               "-o", str(tmp_path / "two.safetensors")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = BoostingArtifact.load(single), BoostingArtifact.load(tmp_path / "two.safetensors")
    for key in ("text", "vision"):
        assert (one.tensors[key] - two.tensors[key]).abs().max() < 1e-5
    assert not torch.equal(one.tensors["text"], torch.zeros_like(one.tensors["text"]))


def test_a_cache_made_with_another_crop_scale_serves_a_run_with_that_crop_scale(world, tmp_path):
    cache = tmp_path / "cache"
    assert _teacher_cache(world, cache, "--crop-scale", "0.5", "1.0") == 0
    out = tmp_path / "universal.safetensors"
    assert _distill(world, out, "--teacher-cache", str(cache)) == 2  # the recipe's 0.08-1 is not the cache's
    assert _distill(world, out, "--teacher-cache", str(cache), "--crop-scale", "0.5", "1.0") == 0
    assert BoostingArtifact.load(out).metadata["training"]["crop_scale"] == [0.5, 1.0]


@pytest.mark.parametrize("entry, message", [
    ({"folder": 5, "images": 1}, "domains['plain']: expected"),
    ({"folder": "../../etc", "images": 1}, "domains['plain']: expected"),
    ("plain", "domains['plain']: expected"),
    ({"folder": "plain", "images": 99}, "does not match its content hash"),
])
def test_inspect_refuses_an_edited_domains_index(entry, message, cache, tmp_path, capsys):
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(cache, edited)
    index = json.loads((edited / "domains.json").read_text())
    index["domains"]["plain"] = entry
    (edited / "domains.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert caspl(["inspect", str(edited)]) == 2
    assert message in capsys.readouterr().err
