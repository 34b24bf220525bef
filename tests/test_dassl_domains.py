"""Universal boosting prompts through a Dassl config: TRAINER.BOOSTDISTILL.DOMAINS (a CoOp dataset and
a manifest domain), one domain per batch with its own class set, evaluation on DATASET.NAME, the
artifact's domain list, per-domain teacher-view caches, and config errors."""
import json
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("dassl")

import torch  # noqa: E402
from helpers_dassl import make_dtd, tiny_cfg  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from caspl_plugin.artifacts.boosting import BoostingArtifact  # noqa: E402
from caspl_plugin.cli import main as caspl  # noqa: E402

SHAPES = ["red circle", "blue square", "green triangle", "yellow star"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """DTD in its CoOp layout, a folder domain 'outline' in a manifest, and the tiny teacher's weights."""
    from caspl_plugin.clip import create_clip
    from caspl_plugin.toy import domain

    base = tmp_path_factory.mktemp("dassl_domains")
    root = make_dtd(base / "data", train_per_class=1, test_per_class=1)
    images = domain.write_image_folder(base / "outline", num_per_class=1, seed=3, variant="outline").images
    for extra in sorted(Path(images).rglob("*.png"))[20:]:
        extra.unlink()
    (base / "outline.txt").write_text("\n".join(SHAPES) + "\n")
    manifest = base / "domains.json"
    manifest.write_text(json.dumps({"domains": [
        {"name": "outline", "images": str(Path(images).relative_to(base)), "class_names": "outline.txt",
         "template": "a drawing of a {}."}]}))
    torch.manual_seed(1)
    weights = base / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip("caspl-tiny-teacher", "random").model.state_dict().items()}, str(weights))
    return {"root": root, "manifest": manifest, "images": Path(images), "weights": weights, "base": base}


def _cfg(world, out, *opts, epochs=2):
    return tiny_cfg(world["root"], out, "BoostDistill", "TRAINER.BOOSTDISTILL.DOMAINS",
                    ["DescribableTextures", str(world["manifest"])], "TRAINER.BOOSTDISTILL.DOMAIN_SAMPLING", "even",
                    "TRAINER.BOOSTDISTILL.TEACHER_WEIGHTS", str(world["weights"]), *opts, epochs=epochs)


def _record_batches(trainer, monkeypatch):
    """Every training batch's domains and the student's class count at its loss."""
    seen = []
    loss = trainer.distiller.loss

    def recorded(images, labels=None, **extras):  # the engine's step passes the (unread) labels
        result = loss(images, labels, **extras)
        seen.append((sorted(set(extras["domain"].tolist())), len(trainer.model.class_names), sorted(extras)))
        return result

    monkeypatch.setattr(trainer.distiller, "loss", recorded)
    return seen


def test_boost_distill_with_domains_trains_one_domain_per_batch_and_evaluates_on_the_dataset(world, tmp_path, monkeypatch):
    from dassl.engine import build_trainer

    trainer = build_trainer(_cfg(world, tmp_path))
    assert [d.name for d in trainer.domains] == ["DescribableTextures", "outline"]
    assert [len(d.files) for d in trainer.domains] == [36, 20]
    seen = _record_batches(trainer, monkeypatch)
    tested = []
    test = trainer.test
    monkeypatch.setattr(trainer, "test", lambda split=None: tested.append(len(trainer.model.class_names)) or test(split))
    trainer.train()
    # even sampling at batch 8: 4 batches per domain and epoch (the larger domain's 36 // 8)
    assert len(seen) == 16 and Counter(domains[0] for domains, _, _ in seen) == {0: 8, 1: 8}
    for domains, classes, keys in seen:
        assert len(domains) == 1 and classes == (36 if domains[0] == 0 else 4) and keys == ["domain"]
    assert tested and tested[-1] == 36  # the final test ran on DescribableTextures' classes
    artifact = BoostingArtifact.load(tmp_path / "boosting.safetensors")
    assert artifact.class_names is None and artifact.metadata["dataset"] == "DescribableTextures+outline"
    assert [(d["name"], d["num_classes"], d["num_images"], d["template"]) for d in artifact.domains] == [
        ("DescribableTextures", 36, 36, "{} texture."), ("outline", 4, 20, "a drawing of a {}.")]
    assert artifact.metadata["training"]["domain_sampling"] == "even"


def test_boost_distill_with_domains_trains_from_one_cache_per_domain(world, tmp_path, monkeypatch):
    import open_clip
    from dassl.engine import build_trainer

    cache = tmp_path / "cache"
    common = ["--teacher", "caspl-tiny-teacher", "--teacher-weights", str(world["weights"]), "--views", "2", "--no-progress"]
    assert caspl(["teacher-cache", "--dataset", "DescribableTextures", "--root", str(world["root"]),
                  "-o", str(cache / "DescribableTextures"), *common]) == 0
    assert caspl(["teacher-cache", "--images", str(world["images"]), "-o", str(cache / "outline"), *common]) == 0
    built = []
    original = open_clip.model._build_vision_tower
    monkeypatch.setattr(open_clip.model, "_build_vision_tower", lambda *a, **k: built.append(1) or original(*a, **k))
    trainer = build_trainer(_cfg(world, tmp_path / "run", "TEST.NO_TEST", True, "TRAINER.BOOSTDISTILL.TEACHER_CACHE", str(cache)))
    assert len(built) == 1 and trainer.distiller.teacher.visual is None  # the student's image tower only
    seen = _record_batches(trainer, monkeypatch)
    trainer.train()
    assert len(seen) == 16 and all(keys == ["domain", "teacher_features"] for _, _, keys in seen)
    assert trainer.train_views.datasets[0].view == 1  # the second epoch used each cache's second view
    artifact = BoostingArtifact.load(tmp_path / "run" / "boosting.safetensors")
    assert [d["name"] for d in artifact.domains] == ["DescribableTextures", "outline"]


@pytest.mark.parametrize("opts, error, message", [
    (("TRAINER.BOOSTDISTILL.TEMPLATE", "a photo of a {}."), ValueError, "with DOMAINS every domain has its own template"),
    (("TRAINER.BOOSTDISTILL.DOMAIN_SAMPLING", "uniform"), ValueError, "DOMAIN_SAMPLING must be 'size' or 'even'"),
    (("TRAINER.BOOSTDISTILL.DOMAINS", ["DescribableTextures", "NoSuchSet"]), ValueError, "domain 'NoSuchSet': Unknown dataset"),
    (("TRAINER.BOOSTDISTILL.DOMAINS", ["DescribableTextures", "EuroSAT"]), ValueError, "domain 'EuroSAT'"),
    (("TRAINER.BOOSTDISTILL.DOMAINS", ["DescribableTextures", "DescribableTextures"]), ValueError, "duplicate domain name"),
    (("TRAINER.BOOSTDISTILL.TEACHER_CACHE", "no-such-cache"), FileNotFoundError, "has no cache for domain(s)"),
])
def test_boost_distill_domain_config_errors_are_clear(opts, error, message, world, tmp_path):
    from dassl.engine import build_trainer

    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_trainer(_cfg(world, tmp_path, "TEST.NO_TEST", True, *opts))
    assert not (tmp_path / "boosting.safetensors").exists()


def test_boost_distill_with_domains_equals_caspl_distill_with_domains(world, tmp_path):
    """The same domains, caches, seed and recipe: Dassl's loop and the engine's end on the same prompts."""
    from dassl.engine import build_trainer

    from caspl_plugin.clip import create_clip

    torch.manual_seed(5)
    student = tmp_path / "student.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip("caspl-tiny-student", "random").model.state_dict().items()}, str(student))
    cache = tmp_path / "cache"
    common = ["--teacher", "caspl-tiny-teacher", "--teacher-weights", str(world["weights"])]
    manifest = world["base"] / "two.json"
    entries = json.loads(world["manifest"].read_text())["domains"]
    shapes = world["base"] / "shapes.txt"
    shapes.write_text("\n".join(["circle", "square", "triangle"]) + "\n")
    manifest.write_text(json.dumps({"domains": [*entries, {**entries[0], "name": "shapes", "class_names": "shapes.txt",
                                                           "template": "a photo of a {}."}]}))
    assert caspl(["teacher-cache", "--domains", str(manifest), "--views", "3", "--no-progress", "-o", str(cache), *common]) == 0
    out = tmp_path / "cli.safetensors"
    assert caspl(["distill", "--domains", str(manifest), "--domain-sampling", "size", "--teacher-cache", str(cache),
                  "--student", "caspl-tiny-student", "--student-weights", str(student), *common,
                  "--epochs", "3", "--batch-size", "8", "--lr", "0.01", "--seed", "1", "--n-text", "2", "--n-vision", "2",
                  "--depth-text", "12", "--depth-vision", "12", "--no-progress", "-o", str(out)]) == 0
    cfg = tiny_cfg(world["root"], tmp_path / "dassl", "BoostDistill", "TEST.NO_TEST", True,
                   "TRAINER.BOOSTDISTILL.DOMAINS", [str(manifest)], "TRAINER.BOOSTDISTILL.DOMAIN_SAMPLING", "size",
                   "TRAINER.BOOSTDISTILL.TEACHER_CACHE", str(cache), "TRAINER.BOOSTDISTILL.TEACHER_WEIGHTS", str(world["weights"]),
                   "MODEL.BACKBONE.WEIGHTS", str(student), epochs=3)
    build_trainer(cfg).train()
    cli, dassl = BoostingArtifact.load(out), BoostingArtifact.load(tmp_path / "dassl" / "boosting.safetensors")
    assert cli.domains == dassl.domains
    for key in ("text", "vision"):
        assert cli.tensors[key].shape == dassl.tensors[key].shape
        assert (cli.tensors[key] - dassl.tensors[key]).abs().max() < 1e-5, key
    # and training moved the prompts (epochs 2 and 3 at lr 0.01, after the warm-up epoch)
    initial = build_trainer(cfg).model.boosting.tensors()
    assert (initial["text"] - cli.tensors["text"]).abs().max() > 1e-4
