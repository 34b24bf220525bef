"""Teacher-view cache: deterministic views, cached run = online run, identity checks, --update,
resume after a crash, torchrun sharding, `caspl teacher-cache` / `distill --teacher-cache` / `inspect`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from caspl_plugin.boosting import BoostingConfig, DistillSettings, build_distiller, run_distillation
from caspl_plugin.boosting.teacher import load_text_tower, teacher_identity
from caspl_plugin.cache import (
    AugmentationSettings,
    CacheMismatchError,
    TeacherViewCache,
    TeacherViewDataset,
    build_teacher_cache,
    sample_view,
)
from caspl_plugin.cache import precompute as precompute_module
from caspl_plugin.cli import main as caspl
from caspl_plugin.clip import create_clip

CLASSES = ["red circle", "blue square", "green triangle"]
SIZES = [(40, 30), (64, 64), (33, 50), (20, 90), (48, 36), (36, 36)]
REPO = Path(__file__).resolve().parents[1]


def _write_images(root: Path, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(SIZES):
        path = root / ("a" if i % 2 else "b") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return sorted(root.rglob("*.png"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An image folder, the tiny teacher's weights in a file, the teacher and the student."""
    base = tmp_path_factory.mktemp("cache")
    root = base / "images"
    files = _write_images(root)
    torch.manual_seed(1)
    random_teacher = create_clip("caspl-tiny-teacher", "random")
    weights = base / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in random_teacher.model.state_dict().items()}, str(weights))
    teacher = create_clip("caspl-tiny-teacher", str(weights))
    torch.manual_seed(0)
    student = create_clip("caspl-tiny-student", "random")
    return {"base": base, "root": root, "files": files, "weights": weights, "teacher": teacher, "student": student}


def _cache(world, folder, files=None, root=None, **kwargs):
    options = {"views": 3, "seed": 5, "shard_size": 2, "batch_size": 4, **kwargs}
    return build_teacher_cache(folder, files or world["files"], root or world["root"], world["teacher"], **options)


def _same_shard(a: Path, b: Path) -> bool:
    """Equal tensors (bit for bit) and metadata (safetensors orders the metadata keys arbitrarily)."""
    from safetensors import safe_open

    with safe_open(str(a), framework="pt") as x, safe_open(str(b), framework="pt") as y:
        if x.metadata() != y.metadata() or sorted(x.keys()) != sorted(y.keys()):
            return False
        return all(torch.equal(x.get_tensor(k), y.get_tensor(k)) for k in x.keys())


def _features(folder) -> dict:
    cache = TeacherViewCache.open(folder)
    return {key: torch.stack([cache.view(key, k)[1] for k in range(cache.views)]) for key in cache.files}


# ---- views ---------------------------------------------------------------------------------

def test_views_are_determined_by_seed_file_and_index():
    aug = AugmentationSettings()
    first = [sample_view(40, 30, 5, "a/img1.png", k, aug) for k in range(20)]
    assert first == [sample_view(40, 30, 5, "a/img1.png", k, aug) for k in range(20)]
    assert first != [sample_view(40, 30, 6, "a/img1.png", k, aug) for k in range(20)]
    assert first != [sample_view(40, 30, 5, "b/img0.png", k, aug) for k in range(20)]
    assert len(set(first)) > 15 and 3 < sum(v.flip for v in first) < 17
    for v in first:
        assert 0 <= v.top and v.top + v.height <= 30 and 0 <= v.left and v.left + v.width <= 40
        assert 0.06 <= v.height * v.width / 1200 <= 1.0


# ---- cached run = online run -----------------------------------------------------------------

def _train(world, dataset, teacher, image_tower=True):
    steps = []
    distiller = build_distiller(world["student"], teacher, CLASSES, config=BoostingConfig(2, 2, 2, 2),
                                generator=torch.Generator().manual_seed(0), teacher_image_tower=image_tower)
    settings = DistillSettings(epochs=4, batch_size=3, lr=0.05, warmup_epochs=0, seed=3)
    run_distillation(distiller, dataset, settings, progress=False, on_step=lambda m: steps.append(m["loss"]))
    return steps, distiller.student.boosting.tensors()


def test_cached_run_equals_online_run_and_never_builds_the_image_tower(world, tmp_path, monkeypatch):
    import open_clip

    student = world["student"]
    geometry = dict(image_size=student.image_size, mean=student.mean, std=student.std)
    _cache(world, tmp_path / "cache", feature_dtype="float32")
    online_distiller = build_distiller(student, world["teacher"], CLASSES)
    online = TeacherViewDataset(world["files"], world["root"], views=3, seed=5, teacher=online_distiller.teacher, **geometry)
    online_steps, online_prompts = _train(world, online, world["teacher"])

    def refuse(*args, **kwargs):
        raise AssertionError("the cached run built an image tower")

    monkeypatch.setattr(open_clip.model, "_build_vision_tower", refuse)
    tower = load_text_tower("caspl-tiny-teacher", str(world["weights"]))
    cache = TeacherViewCache.open(tmp_path / "cache")
    cached = TeacherViewDataset.from_cache(cache, world["files"], world["root"], **geometry,
                                           teacher_identity={"arch": tower.arch, "weights_digest": tower.weights_digest})
    cached_steps, cached_prompts = _train(world, cached, tower, image_tower=False)
    assert len(online_steps) == len(cached_steps) == 8
    assert np.allclose(online_steps, cached_steps, rtol=0, atol=1e-5)
    assert len(set(np.round(online_steps, 6))) == 8  # the steps really differ (views change per epoch)
    for key in online_prompts:
        assert (online_prompts[key] - cached_prompts[key]).abs().max() < 1e-5


def test_text_tower_alone_equals_the_full_models_text_side(world):
    tower = load_text_tower("caspl-tiny-teacher", str(world["weights"]))
    tokens = world["teacher"].tokenizer(["a photo of a red circle.", "a star"])
    assert torch.allclose(tower.model.encode_text(tokens), world["teacher"].model.encode_text(tokens), atol=1e-6)
    assert tower.weights_digest == teacher_identity(world["teacher"])["weights_digest"]
    with pytest.raises(ValueError, match="random weights"):
        load_text_tower("caspl-tiny-teacher", "random")


def test_the_distiller_keeps_no_teacher_text_tower(world):
    online = build_distiller(world["student"], world["teacher"], CLASSES)
    assert [name for name, _ in online.teacher.named_children()] == ["visual"]
    kept = {id(p) for p in online.teacher.parameters()}
    assert kept == {id(p) for p in world["teacher"].model.visual.parameters()}
    cached = build_distiller(world["student"], load_text_tower("caspl-tiny-teacher", str(world["weights"])), CLASSES)
    assert list(cached.teacher.children()) == [] and list(cached.teacher.parameters()) == []
    assert torch.allclose(cached.teacher.text_features, online.teacher.text_features, atol=1e-6)


# ---- identity --------------------------------------------------------------------------------

def test_cache_refuses_changed_added_removed_images_and_other_settings(world, tmp_path):
    import shutil

    root = tmp_path / "images"
    shutil.copytree(world["root"], root)
    files = sorted(root.rglob("*.png"))
    folder = tmp_path / "cache"
    _cache(world, folder, files=files, root=root)
    student = world["student"]
    geometry = dict(image_size=student.image_size, mean=student.mean, std=student.std)
    ident = {"arch": "caspl-tiny-teacher", "weights_digest": teacher_identity(world["teacher"])["weights_digest"]}

    def check(files, **kwargs):
        cache = TeacherViewCache.open(folder)
        return TeacherViewDataset.from_cache(cache, files, root, **geometry, **{"teacher_identity": ident, **kwargs})

    assert len(check(files, augmentation=AugmentationSettings(), views=3, seed=5)) == 6
    Image.new("RGB", (40, 30), (1, 2, 3)).save(files[0])  # changed content
    with pytest.raises(CacheMismatchError, match=r"1 changed \(a/img1.png\)"):
        check(files)
    shutil.copyfile(world["files"][0], files[0])
    os.utime(files[0], ns=(1, 1))  # another mtime, same bytes: the sha256 decides, unchanged
    assert len(check(files)) == 6
    extra = root / "b" / "new.png"
    Image.new("RGB", (10, 10)).save(extra)
    with pytest.raises(CacheMismatchError, match=r"1 added \(b/new.png\)"):
        check(files + [extra])
    with pytest.raises(CacheMismatchError, match=r"1 removed \(b/img0.png\)"):
        check([f for f in files if f.name != "img0.png"])
    with pytest.raises(CacheMismatchError, match="teacher.weights_digest"):
        check(files, teacher_identity={**ident, "weights_digest": "sha256:0"})
    with pytest.raises(CacheMismatchError, match="augmentation.scale"):
        check(files, augmentation=AugmentationSettings(scale=(0.5, 1.0)))
    with pytest.raises(CacheMismatchError, match="views: cache has 3, this run 4"):
        check(files, views=4)
    # the precompute refuses too: another K, another teacher
    with pytest.raises(CacheMismatchError, match="views"):
        _cache(world, folder, files=files, root=root, views=4, update=True)
    torch.manual_seed(7)
    other = create_clip("caspl-tiny-teacher", "random")
    with pytest.raises(CacheMismatchError, match="teacher.weights_digest"):
        build_teacher_cache(folder, files, root, other, views=3, seed=5)


def test_update_computes_only_what_changed_and_equals_a_fresh_cache(world, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "images"
    shutil.copytree(world["root"], root)
    folder = tmp_path / "cache"
    _cache(world, folder, files=sorted(root.rglob("*.png")), root=root)
    before = _features(folder)
    Image.new("RGB", (30, 40), (9, 9, 9)).save(root / "a" / "img1.png")  # changed
    (root / "b" / "img2.png").unlink()  # removed
    Image.new("RGB", (25, 25), (200, 9, 9)).save(root / "b" / "img9.png")  # added
    files = sorted(root.rglob("*.png"))
    with pytest.raises(CacheMismatchError, match="--update"):
        _cache(world, folder, files=files, root=root)
    computed = []
    original = precompute_module._compute_shard
    monkeypatch.setattr(precompute_module, "_compute_shard", lambda t, p, keys, *a: computed.extend(keys) or original(t, p, keys, *a))
    report = _cache(world, folder, files=files, root=root, update=True)
    assert sorted(computed) == ["a/img1.png", "b/img9.png"]
    assert (report.computed, report.kept, report.removed) == (2, 4, 1)
    after = _features(folder)
    assert sorted(after) == sorted(k.relative_to(root).as_posix() for k in files)
    for key in ("a/img3.png", "a/img5.png", "b/img0.png", "b/img4.png"):
        assert torch.equal(after[key], before[key])
    fresh_folder = tmp_path / "fresh"
    _cache(world, fresh_folder, files=files, root=root)
    fresh = _features(fresh_folder)
    assert all(torch.equal(after[k], fresh[k]) for k in fresh)
    assert _cache(world, folder, files=files, root=root, update=True).up_to_date


def test_killed_precompute_resumes_and_equals_an_uninterrupted_one(world, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    _cache(world, whole)
    written = []
    original = precompute_module.write_shard

    def crash_after_two(path, tensors, metadata):
        if len(written) == 2:
            raise RuntimeError("killed")
        written.append(path)
        original(path, tensors, metadata)

    monkeypatch.setattr(precompute_module, "write_shard", crash_after_two)
    folder = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="killed"):
        _cache(world, folder)
    assert not TeacherViewCache.exists(folder) and len(list((folder / "shards").glob("*.safetensors"))) == 2
    assert not list((folder / "shards").glob("*.tmp"))
    monkeypatch.setattr(precompute_module, "write_shard", original)
    report = _cache(world, folder)
    assert (report.shards_reused, report.shards_written) == (2, 1)
    assert json.loads((folder / "index.json").read_text())["files"] == json.loads((whole / "index.json").read_text())["files"]
    for name in json.loads((whole / "index.json").read_text())["shards"]:
        assert _same_shard(folder / "shards" / name, whole / "shards" / name)


# ---- torchrun ----------------------------------------------------------------------------------

def test_torchrun_two_process_precompute_equals_one_process(world, tmp_path):
    single = tmp_path / "single"
    args = ["--images", str(world["root"]), "--teacher", "caspl-tiny-teacher", "--teacher-weights", str(world["weights"]),
            "--views", "2", "--seed", "5", "--shard-size", "1", "--device", "cpu", "--no-progress"]
    assert caspl(["teacher-cache", *args, "-o", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "caspl_plugin.cli", "teacher-cache", *args, "-o", str(tmp_path / "multi")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("teacher-view cache") == 1  # only rank 0 reports
    index_single = json.loads((single / "index.json").read_text())
    index_multi = json.loads((tmp_path / "multi" / "index.json").read_text())
    assert index_multi["files"] == index_single["files"] and len(index_single["shards"]) == 6
    for name in index_single["shards"]:
        assert _same_shard(tmp_path / "multi" / "shards" / name, single / "shards" / name)


# ---- the commands ------------------------------------------------------------------------------

def test_teacher_cache_distill_and_inspect_commands(world, tmp_path, capsys):
    from caspl_plugin.artifacts.boosting import BoostingArtifact

    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    cache = tmp_path / "cache"
    teacher = ["--teacher", "caspl-tiny-teacher", "--teacher-weights", str(world["weights"])]
    assert caspl(["teacher-cache", "--images", str(world["root"]), *teacher, "--views", "2", "-o", str(cache), "--no-progress"]) == 0
    assert caspl(["teacher-cache", "--images", str(world["root"]), *teacher, "--views", "2", "-o", str(cache), "--no-progress"]) == 0
    assert "up to date" in capsys.readouterr().out
    out = tmp_path / "boost.safetensors"
    distill = ["distill", "--images", str(world["root"]), "--class-names", str(classes), "-o", str(out),
               "--student", "caspl-tiny-student", *teacher, "--epochs", "2", "--batch-size", "3",
               "--n-text", "2", "--n-vision", "2", "--no-progress", "--teacher-cache", str(cache)]
    assert caspl(distill) == 0
    artifact = BoostingArtifact.load(out)
    assert artifact.class_names == CLASSES
    capsys.readouterr()
    assert caspl(["inspect", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "teacher-view cache" in text and "6 images" in text and "2 per image" in text
    (world["root"] / "b" / "img0.png").rename(world["root"] / "b" / "moved.png")
    try:
        assert caspl([*distill, "-o", str(tmp_path / "other.safetensors")]) == 2
        error = capsys.readouterr().err
        assert "1 added (b/moved.png)" in error and "1 removed (b/img0.png)" in error
    finally:
        (world["root"] / "b" / "moved.png").rename(world["root"] / "b" / "img0.png")
    assert not (tmp_path / "other.safetensors").exists()
