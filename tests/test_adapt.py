"""`caspl adapt` end to end on the toy domain: base-to-novel with and without boosting prompts, the
classifier it writes loads in `caspl classify`, exact resume, tensorboard tags, and bad inputs."""
from pathlib import Path

import pytest
import torch

from caspl_plugin.cli import main as caspl


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    """One sub-folder per class (36 toy classes, 7 images each: 3 train / 1 val / 3 test by CoOp's rule)."""
    from caspl_plugin.toy import domain

    root = tmp_path_factory.mktemp("toy")
    dataset = domain.write_coop_layout(root, train_per_class=4, val_per_class=1, test_per_class=2, seed=0)
    return dataset / "images"


@pytest.fixture(scope="module")
def boosting_artifact(tmp_path_factory):
    from caspl_plugin.artifacts.boosting import BoostingArtifact
    from caspl_plugin.boosting import BoostingConfig, make_boosting_group
    from caspl_plugin.clip import create_clip
    from caspl_plugin.prompts import PromptedCLIP

    student = create_clip("toy-student")
    group = make_boosting_group(PromptedCLIP(student), BoostingConfig(2, 2, 2, 2), generator=torch.Generator().manual_seed(0))
    tensors = group.tensors()
    path = tmp_path_factory.mktemp("boost") / "boost.safetensors"
    BoostingArtifact.from_group_tensors(tensors["text"], tensors["vision"], student=student.describe(),
                                        teacher="toy-teacher", template="a photo of a {}.").save(path)
    return path


def _adapt(folder, out, *extra):
    return caspl(["adapt", "--data", str(folder), "-o", str(out), "--student", "toy-student", "--shots", "2",
                  "--epochs", "2", "--batch-size", "8", "--no-progress", *extra])


def _tensors(path):
    from caspl_plugin.artifacts.store import load_artifact

    return load_artifact(path, expected_format="caspl-classifier")


def test_adapt_base_to_novel_then_classify(toy_folder, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "coop.safetensors"
    assert _adapt(toy_folder, out, "--method", "coop", "--subsample", "base", "--lr", "0.01",
                  "--tensorboard", str(tmp_path / "tb")) == 0
    printed = capsys.readouterr().out
    assert "base " in printed and "novel " in printed and "HM " in printed
    tensors, metadata = _tensors(out)
    assert metadata["method"] == "coop" and len(metadata["class_names"]) == 18 and metadata["boosting"] is None
    evaluation = metadata["extra"]["evaluation"]
    assert set(evaluation) == {"base", "novel", "hm"} and 0 <= evaluation["hm"] <= 100
    assert metadata["extra"]["training"]["steps"] == 2 * (18 * 2 // 8)
    assert not (toy_folder / "split_fewshot").exists()  # the data folder is only read
    assert (tmp_path / "coop.run" / "split_fewshot" / "shot_2-seed_1.json").is_file()  # the run keeps its split
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"train/loss", "train/acc", "train/lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == list(range(8))  # Dassl: n_iter = epoch * batches + batch

    image = next((toy_folder / metadata["class_names"][0].replace(" ", "_")).glob("*.png"))
    assert caspl(["classify", "--model", str(out), "--topk", "2", str(image)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("coop on toy-student, 18 classes") and str(image) in printed


def test_adapt_with_boosting_bf16_and_exact_resume(toy_folder, boosting_artifact, tmp_path, monkeypatch, capsys):
    from caspl_plugin.inference import load_classifier
    from caspl_plugin.methods import adapt as engine  # where phase 2 saves its checkpoints

    args = ("--method", "coop", "--boosting", str(boosting_artifact), "--subsample", "base", "--no-eval",
            "--precision", "bf16", "--model-arg", "n_ctx=4")
    clean = tmp_path / "clean.safetensors"
    assert _adapt(toy_folder, clean, *args) == 0
    real_save = engine.save_checkpoint

    def save_then_crash(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt("simulated interruption after epoch 1")

    monkeypatch.setattr(engine, "save_checkpoint", save_then_crash)
    resumed = tmp_path / "resumed.safetensors"
    assert _adapt(toy_folder, resumed, *args) == 130  # interrupted: exit 130, the checkpoint kept
    assert not resumed.exists() and resumed.with_name("resumed.ckpt.safetensors").exists()
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    assert _adapt(toy_folder, resumed, *args, "--resume") == 0
    (a, meta_a), (b, meta_b) = _tensors(clean), _tensors(resumed)
    assert meta_a["boosting"]["n_text"] == 2 and set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    model = load_classifier(resumed)
    assert model.boosting is not None and model.method == "coop"
    assert capsys.readouterr().out.count("wrote ") == 2


@pytest.mark.parametrize("case, message", [
    ("no class folders", "No class folders"),
    ("too few images", "--shots 50: 36 class(es) have fewer training images"),
    ("unknown method", "Unknown method 'copo'"),
])
def test_adapt_bad_inputs_fail_clearly_and_write_nothing(case, message, toy_folder, tmp_path, capsys):
    from caspl_plugin.toy import domain

    folder, extra = toy_folder, ["--shots", "2"]
    if case == "no class folders":
        folder = domain.write_image_folder(tmp_path / "flat", num_per_class=1).images.parent / "images" / "part0" / "sub0"
    elif case == "too few images":
        extra = ["--shots", "50"]
    else:
        extra += ["--method", "copo"]
    out = tmp_path / "out" / "model.safetensors"
    assert caspl(["adapt", "--data", str(folder), "-o", str(out), "--student", "toy-student", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.parent.exists()


def test_text_chunk_flag_reaches_the_model_and_changes_nothing(toy_folder, tmp_path, monkeypatch):
    """--text-chunk 5 runs the 18 base classes in passes of at most 5 prompts and ends on the prompts of
    the run without it."""
    from caspl_plugin.prompts import text

    passes = []
    original = text._encode_in_chunks

    def spy(tower, inputs, prompts, blocks, mode, max_rows):
        passes.append(max_rows)
        return original(tower, inputs, prompts, blocks, mode, max_rows)

    monkeypatch.setattr(text, "_encode_in_chunks", spy)
    plain, chunked = tmp_path / "plain.safetensors", tmp_path / "chunked.safetensors"
    common = ("--method", "coop", "--subsample", "base", "--no-eval")
    assert _adapt(toy_folder, plain, *common) == 0
    assert passes == []
    assert _adapt(toy_folder, chunked, *common, "--text-chunk", "5") == 0
    assert passes and set(passes) == {5}
    (a, _), (b, _) = _tensors(plain), _tensors(chunked)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
