"""The Dassl BoostDistill trainer trains from a teacher-view cache (TRAINER.BOOSTDISTILL.TEACHER_CACHE)
without building the teacher's image tower, and refuses a cache that does not match its config."""
import pytest

pytest.importorskip("dassl")

import torch  # noqa: E402
from helpers_dassl import make_dtd, tiny_cfg  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from caspl_plugin.cli import main as caspl  # noqa: E402


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    from caspl_plugin.clip import create_clip

    base = tmp_path_factory.mktemp("dassl_cache")
    root = make_dtd(base / "data")
    torch.manual_seed(1)
    teacher = create_clip("caspl-tiny-teacher", "random")
    weights = base / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.model.state_dict().items()}, str(weights))
    cache = base / "cache"
    assert caspl(["teacher-cache", "--dataset", "DescribableTextures", "--root", str(root), "--teacher", "caspl-tiny-teacher",
                  "--teacher-weights", str(weights), "--views", "2", "-o", str(cache), "--no-progress"]) == 0
    return root, weights, cache


def test_boost_distill_trains_from_the_cache_without_the_teachers_image_tower(cached, tmp_path, monkeypatch):
    import open_clip
    from dassl.engine import build_trainer

    from caspl_plugin.artifacts.boosting import BoostingArtifact

    root, weights, cache = cached
    built = []
    original = open_clip.model._build_vision_tower
    monkeypatch.setattr(open_clip.model, "_build_vision_tower", lambda *a, **k: built.append(1) or original(*a, **k))
    cfg = tiny_cfg(root, tmp_path, "BoostDistill", "TEST.NO_TEST", True, "TRAINER.BOOSTDISTILL.TEACHER_CACHE", str(cache),
                   "TRAINER.BOOSTDISTILL.TEACHER_WEIGHTS", str(weights), epochs=2)
    trainer = build_trainer(cfg)
    assert len(built) == 1  # the student's image tower only
    assert trainer.distiller.teacher.visual is None
    seen = []
    step = trainer.forward_backward
    monkeypatch.setattr(trainer, "forward_backward", lambda batch: seen.append(batch["teacher_features"].shape) or step(batch))
    trainer.train()
    assert seen and all(shape[1] == 48 for shape in seen)
    assert trainer.cached_views.view == 1  # the second epoch used the second view
    artifact = BoostingArtifact.load(tmp_path / "boosting.safetensors")
    assert artifact.class_names == list(trainer.dm.dataset.classnames)


def test_boost_distill_refuses_a_cache_made_with_other_augmentation(cached, tmp_path):
    from dassl.engine import build_trainer

    from caspl_plugin.cache import CacheMismatchError

    root, weights, cache = cached
    cfg = tiny_cfg(root, tmp_path, "BoostDistill", "TEST.NO_TEST", True, "TRAINER.BOOSTDISTILL.TEACHER_CACHE", str(cache),
                   "TRAINER.BOOSTDISTILL.TEACHER_WEIGHTS", str(weights), "INPUT.RRCROP_SCALE", (0.5, 1.0))
    with pytest.raises(CacheMismatchError, match="augmentation.scale"):
        build_trainer(cfg)
