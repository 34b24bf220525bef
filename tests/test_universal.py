"""Universal boosting prompts: multi-domain batches, per-domain KD, artifacts, resume, bad inputs, demo."""
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from caspl_plugin.boosting import BoostingConfig, build_distiller, kd_loss
from caspl_plugin.boosting.model import ZeroShotTeacher, boosting_student
from caspl_plugin.cli import main as caspl
from caspl_plugin.engine import collate_items
from caspl_plugin.data.domains import (
    DomainClassSet,
    MultiDomainImages,
    plan_batches,
    read_manifest,
)
from caspl_plugin.prompts import PromptedCLIP

DOMAIN_A = DomainClassSet("a", ("red circle", "blue square", "green triangle"), "a photo of a {}.")
DOMAIN_B = DomainClassSet("b", ("yellow star", "purple heart", "orange cross", "red square"), "a drawing of a {}.")


# ---- the batch plan ----------------------------------------------------------------------------

def _by_domain(plan):
    return Counter(d for d, _ in plan)


def test_size_sampling_follows_image_counts_and_sees_every_image_once():
    sizes, bs = [40, 10, 25], 5
    plan = plan_batches(sizes, bs, torch.Generator().manual_seed(3), sampling="size")
    assert _by_domain(plan) == {0: 8, 1: 2, 2: 5}  # proportional to 40 : 10 : 25
    for d, size in enumerate(sizes):
        seen = sorted(i for dd, batch in plan if dd == d for i in batch)
        assert seen == list(range(size))
    assert all(len(batch) == bs for _, batch in plan)
    # the domains are interleaved, not in blocks, and the plan is exactly reproducible by the seed
    assert [d for d, _ in plan] != sorted(d for d, _ in plan)
    assert plan == plan_batches(sizes, bs, torch.Generator().manual_seed(3), sampling="size")
    assert plan != plan_batches(sizes, bs, torch.Generator().manual_seed(4), sampling="size")


def test_even_sampling_gives_every_domain_the_same_number_of_batches():
    sizes, bs = [40, 10, 3], 5
    plan = plan_batches(sizes, bs, torch.Generator().manual_seed(0), sampling="even")
    assert _by_domain(plan) == {0: 8, 1: 8, 2: 8}
    for d, size in enumerate(sizes):
        seen = Counter(i for dd, batch in plan if dd == d for i in batch)
        assert set(seen) == set(range(size))  # every image at least once
        assert max(seen.values()) - min(seen.values()) <= 1 + bs // size  # resampled in whole permutations
    assert Counter(i for dd, batch in plan if dd == 0 for i in batch) == Counter(range(40))


def test_small_domain_is_never_dropped_and_drop_last_drops_only_partial_batches():
    plan = plan_batches([12, 3], 5, torch.Generator().manual_seed(0), drop_last=True, sampling="size")
    assert sorted(len(b) for d, b in plan if d == 0) == [5, 5]
    assert [len(b) for d, b in plan if d == 1] == [3]
    plan = plan_batches([12, 3], 5, torch.Generator().manual_seed(0), drop_last=False, sampling="size")
    assert sorted(len(b) for d, b in plan if d == 0) == [2, 5, 5]
    with pytest.raises(ValueError, match="sampling"):
        plan_batches([4], 2, torch.Generator(), sampling="uniform")


# ---- toy domains on disk -----------------------------------------------------------------------

def _write_domain(root: Path, variant: str, classes, num_per_class: int = 1, seed: int = 0):
    from caspl_plugin.toy import domain

    paths = domain.write_image_folder(root / variant, num_per_class=num_per_class, seed=seed, variant=variant)
    (root / f"{variant}.txt").write_text("\n".join(classes) + "\n")
    return Path(paths.images), root / f"{variant}.txt"


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    a = _write_domain(root, "plain", DOMAIN_A.class_names, seed=1)
    b = _write_domain(root, "outline", DOMAIN_B.class_names, seed=2)
    return root, a, b


def test_dataset_batches_never_mix_domains_and_items_carry_the_domain(two_domains):
    from caspl_plugin.data.domains import load_domain

    _, (a_images, a_names), (b_images, b_names) = two_domains
    domains = [load_domain(a_images, a_names, "a photo of a {}."), load_domain(b_images, b_names, "a drawing of a {}.", "outline")]
    dataset = MultiDomainImages(domains, lambda image: torch.zeros(3, 4, 4), sampling="size")
    assert len(dataset) == 72 and [d.name for d in dataset.domains] == ["images", "outline"]
    batches = dataset.batches(0, 8, torch.Generator().manual_seed(0), drop_last=True)
    assert len(batches) == 8  # 4 full batches of 8 per domain of 36 images
    for batch in batches:
        collated = collate_items([dataset[i] for i in batch])
        images, paths, skipped, extras = collated.images, collated.paths, collated.skipped, collated.extras
        assert images.shape == (8, 3, 4, 4) and not skipped
        assert extras["domain"].dtype == torch.long and len(set(extras["domain"].tolist())) == 1
        folder = a_images if int(extras["domain"][0]) == 0 else b_images
        assert all(Path(p).is_relative_to(folder) for p in paths)


def test_toy_variants_change_image_statistics_not_classes():
    from caspl_plugin.toy import domain

    default = domain.generate(2, seed=0)
    assert torch.equal(default.images, domain.generate(2, seed=0, variant="default").images)
    stats = {}
    for variant in domain.VARIANTS:
        batch = domain.generate(2, seed=0, variant=variant)
        assert torch.equal(batch.labels, default.labels)
        assert torch.equal(batch.images, domain.generate(2, seed=0, variant=variant).images)
        stats[variant] = (round(batch.images.mean().item(), 3), round(batch.images.std().item(), 3))
    assert len(set(stats.values())) == len(stats)
    assert domain.generate(2, seed=0, variant="outline").masks.sum() < default.masks.sum()
    assert domain.generate(2, seed=0, variant="small").sizes.max() < default.sizes.min() + 0.4
    with pytest.raises(ValueError, match="unknown variant"):
        domain.generate(1, variant="sepia")


# ---- the distiller over several class sets -----------------------------------------------------

def test_each_domain_kd_loss_uses_its_own_classes_and_template(tiny_student, tiny_teacher):
    distiller = build_distiller(tiny_student, tiny_teacher, None, None, BoostingConfig(2, 2, 2, 2),
                                generator=torch.Generator().manual_seed(0), domains=[DOMAIN_A, DOMAIN_B])
    images = torch.randn(4, 3, 32, 32)
    for index, classes in enumerate((DOMAIN_A, DOMAIN_B)):
        loss, _ = distiller.loss(images, None, domain=torch.full((4,), index))
        # by hand: a fresh teacher on this domain's classes and template, the same boosting group on
        # a student with this domain's class names
        teacher = ZeroShotTeacher(tiny_teacher, classes.class_names, classes.template)
        student = boosting_student(PromptedCLIP(tiny_student), classes.class_names, distiller.student.boosting)
        expected = kd_loss(student(images), teacher(teacher.prepare(images, tiny_student.mean, tiny_student.std)))
        assert student(images).shape == (4, len(classes.class_names))
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="mixes domains"):
        distiller.loss(images, None, domain=torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="needs the batch's domain"):
        distiller.loss(images)
    with pytest.raises(ValueError, match="out of range"):
        distiller.loss(images, None, domain=torch.full((4,), 2))


def test_switching_domains_tokenizes_each_class_set_once_and_encodes_each_text_once(tiny_student, tiny_teacher, monkeypatch):
    import caspl_plugin.boosting.model as boosting_model

    encoded = []
    encode = boosting_model.encode_token_ids  # the teacher's class texts go through it
    monkeypatch.setattr(boosting_model, "encode_token_ids", lambda model, tokens: encoded.append(len(tokens)) or encode(model, tokens))
    distiller = build_distiller(tiny_student, tiny_teacher, None, None, BoostingConfig(2, 2, 2, 2),
                                generator=torch.Generator().manual_seed(0), domains=[DOMAIN_A, DOMAIN_B])
    assert encoded == [3, 4]  # the first domain's class features serve as the main class set too
    assert distiller.teacher.class_set_features(0) is distiller.teacher.text_features
    tokenized = []
    text_inputs = distiller.student.clip.text_inputs
    monkeypatch.setattr(distiller.student.clip, "text_inputs", lambda names, *a: tokenized.append(len(names)) or text_inputs(names, *a))
    images = torch.randn(2, 3, 32, 32)
    for index in (0, 1, 0, 1, 1, 0):
        distiller.loss(images, None, domain=torch.full((2,), index))
    assert tokenized == [3, 4]  # each class set's prompts once, however often the batches switch


# ---- caspl distill with several domains --------------------------------------------------------

def _distill_domains(out, domains, *extra):
    args = ["distill", "-o", str(out), "--student", "caspl-tiny-student", "--teacher", "caspl-tiny-teacher",
            "--epochs", "2", "--batch-size", "8", "--n-text", "2", "--n-vision", "2", "--no-progress", *extra]
    for value in domains:
        args += ["--domain", *map(str, value)]
    return caspl(args)


def _domain_args(two_domains):
    _, (a_images, a_names), (b_images, b_names) = two_domains
    return [(a_images, a_names, DOMAIN_A.template, "plain"), (b_images, b_names, DOMAIN_B.template, "outline")]


def test_multi_domain_artifact_lists_domains_and_cascades_like_a_per_domain_one(two_domains, tmp_path, tiny_student, capsys):
    from caspl_plugin.artifacts.boosting import BoostingArtifact, class_names_sha256
    from caspl_plugin.methods import cascade

    out = tmp_path / "universal.safetensors"
    assert _distill_domains(out, _domain_args(two_domains), "--domain-sampling", "even") == 0
    assert "wrote" in capsys.readouterr().out
    artifact = BoostingArtifact.load(out)
    assert artifact.class_names is None and artifact.metadata["template"] is None
    assert artifact.metadata["dataset"] == "plain+outline"
    assert [(d["name"], d["num_classes"], d["template"], d["num_images"]) for d in artifact.domains] == [
        ("plain", 3, DOMAIN_A.template, 36), ("outline", 4, DOMAIN_B.template, 36)]
    assert artifact.domains[1]["class_names_sha256"] == class_names_sha256(list(DOMAIN_B.class_names))
    assert artifact.metadata["training"]["domain_sampling"] == "even"

    # phase 2 loads it like any boosting artifact; a cascade with it equals one with the same tensors
    # in a per-domain artifact
    per_domain = BoostingArtifact.from_group_tensors(
        artifact.text, artifact.vision, student=tiny_student, teacher="t", template="a photo of a {}.",
        class_names=list(DOMAIN_A.class_names), dataset="plain")
    per_domain.save(tmp_path / "per_domain.safetensors")
    images = torch.randn(3, 3, 32, 32)
    names = ["red circle", "blue star"]
    logits = []
    for path in (out, tmp_path / "per_domain.safetensors"):
        torch.manual_seed(0)
        model = cascade("coop", PromptedCLIP(tiny_student), names, path, n_ctx=2).eval()
        with torch.no_grad():
            logits.append(model(images))
    assert torch.equal(logits[0], logits[1])
    assert caspl(["inspect", str(out)]) == 0


def test_multi_domain_resume_is_bit_identical(two_domains, tmp_path, monkeypatch, capsys):
    from caspl_plugin.artifacts.boosting import BoostingArtifact
    from caspl_plugin.boosting import train

    domains = _domain_args(two_domains)
    assert _distill_domains(tmp_path / "clean.safetensors", domains) == 0
    real_save = train.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("simulated interruption after epoch 1")

    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    assert _distill_domains(tmp_path / "resumed.safetensors", domains) == 130  # interrupted, checkpoint kept
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    assert not (tmp_path / "resumed.safetensors").exists()
    # a checkpoint of these domains is refused for other domains
    assert _distill_domains(tmp_path / "resumed.safetensors", domains[:1] + [(*domains[1][:3], "renamed")], "--resume") == 2
    # ... and for another domain sampling (the batches would differ from the interrupted run's)
    assert _distill_domains(tmp_path / "resumed.safetensors", domains, "--resume", "--domain-sampling", "even") == 2
    assert "domain_sampling='size', this run has 'even'" in capsys.readouterr().err
    assert _distill_domains(tmp_path / "resumed.safetensors", domains, "--resume") == 0
    clean, resumed = BoostingArtifact.load(tmp_path / "clean.safetensors"), BoostingArtifact.load(tmp_path / "resumed.safetensors")
    for key in ("text", "vision"):
        assert torch.equal(clean.tensors[key], resumed.tensors[key])


@pytest.mark.parametrize("case, message", [
    ("no images", "No images in"),
    ("class file missing", "Class-names file not found"),
    ("one class", "at least 2 classes"),
    ("duplicate names", "duplicate domain name"),
    ("three values short", "takes IMAGES CLASSNAMES TEMPLATE"),
    ("bad template", "has no '{}'"),
    ("with --images", "cannot be combined"),
])
def test_multi_domain_bad_inputs_fail_clearly_and_write_nothing(case, message, two_domains, tmp_path, capsys):
    domains = _domain_args(two_domains)
    extra = []
    if case == "no images":
        (tmp_path / "empty").mkdir()
        domains[1] = (tmp_path / "empty", *domains[1][1:])
    elif case == "class file missing":
        domains[1] = (domains[1][0], tmp_path / "nope.txt", *domains[1][2:])
    elif case == "one class":
        (tmp_path / "one.txt").write_text("red circle\n")
        domains[1] = (domains[1][0], tmp_path / "one.txt", *domains[1][2:])
    elif case == "duplicate names":
        domains[1] = (*domains[1][:3], "plain")
    elif case == "three values short":
        domains[1] = domains[1][:2]
    elif case == "bad template":
        domains[1] = (*domains[1][:2], "NoSuchDataset", "outline")
    else:
        extra = ["--images", str(domains[0][0])]
    out = tmp_path / "out" / "u.safetensors"
    assert _distill_domains(out, domains, *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_manifest_json_and_yaml_with_relative_paths(two_domains, tmp_path):
    root, (a_images, a_names), (b_images, b_names) = two_domains
    entries = [{"name": "p", "images": str(a_images.relative_to(root)), "class_names": a_names.name, "template": "a photo of a {}."},
               {"name": "o", "images": str(b_images.relative_to(root)), "class_names": b_names.name, "template": "DescribableTextures"}]
    (root / "m.json").write_text(json.dumps({"domains": entries}))
    (root / "m.yaml").write_text("domains:\n" + "".join(
        f"  - {{name: {e['name']}, images: {e['images']}, class_names: {e['class_names']}, template: '{e['template']}'}}\n" for e in entries))
    for manifest in (root / "m.json", root / "m.yaml"):
        domains = read_manifest(manifest)
        assert [d.name for d in domains] == ["p", "o"] and len(domains[1].files) == 36
        assert domains[1].classes.template == "{} texture."
    (root / "bad.json").write_text(json.dumps({"domains": [{**entries[0], "colour": "red"}]}))
    with pytest.raises(ValueError, match="unknown field"):
        read_manifest(root / "bad.json")


def test_artifact_domain_records_are_validated(tiny_student):
    from caspl_plugin.artifacts.boosting import BoostingArtifact
    from caspl_plugin.artifacts.store import ArtifactError

    width = tiny_student.describe()["text_width"]
    record = {"name": "a", "num_classes": 2, "class_names_sha256": "x", "template": "{}", "num_images": 3}
    with pytest.raises(ArtifactError, match="duplicate domain names"):
        BoostingArtifact.from_group_tensors(torch.zeros(1, 2, width), None, student=tiny_student, domains=[record, record])
    with pytest.raises(ArtifactError, match="lacks or mistypes num_images"):
        BoostingArtifact.from_group_tensors(torch.zeros(1, 2, width), None, student=tiny_student,
                                            domains=[{k: v for k, v in record.items() if k != "num_images"}])


# ---- `caspl demo --universal` (the demo's chart: tests/test_report.py) --------------------------

def test_demo_universal_quick_prints_the_held_out_table(tmp_path, capsys):
    """The one slower test of this file (the quick universal demo, ~20 s idle)."""
    import csv

    assert caspl(["demo", "--universal", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "held-out domain: pastel" in out
    for row in ("Student, zero-shot", "Student + per-domain boosting", "Student + universal boosting",
                "CoOp", "CasPL_CoOp (universal)", "plain: + universal boosting"):
        assert row in out
    with open(tmp_path / "universal_results.csv") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert len(rows) == 7 and all(0 <= float(r["hm"]) <= 100 for r in rows.values())
    assert "seed 1)" in (tmp_path / "universal_results.md").read_text()
    assert (tmp_path / "universal_results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the in-memory engine with a batch plan (the universal demo's phase 1) ---------------------

class _Recorder(torch.nn.Module):
    """An objective that records every batch it is given."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.batches = []

    def loss(self, images, labels, *, domain):
        self.batches.append((images[:, 0].long().tolist(), domain.tolist()))
        return (self.weight - images.mean()) ** 2, {"loss": torch.tensor(0.0)}


def test_tensor_data_follows_the_batch_plan_one_domain_per_batch_and_the_loop_stops_at_max_steps():
    from caspl_plugin.engine import LoopConfig, TensorData, train_epochs

    sizes, offsets = [5, 9], [0, 5]
    images = torch.arange(14.0).reshape(14, 1)  # image i is the number i
    domain_of = torch.tensor([0] * 5 + [1] * 9)
    epochs_seen = []

    def plan(epoch, batch_size, generator):
        epochs_seen.append(epoch)
        return [[offsets[d] + i for i in index] for d, index in
                plan_batches(sizes, batch_size, generator, drop_last=True, sampling="even")]

    objective = _Recorder()
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.1)
    report = train_epochs(objective, TensorData(images, plan=plan, domain=domain_of), optimizer,
                          LoopConfig(epochs=10, batch_size=2, max_steps=11))
    assert report.steps == 11 and len(report.epoch_losses) == 2
    assert len(objective.batches) == 11  # 4 batches per domain and epoch (even): 8, then 3 of the second epoch
    assert epochs_seen == [0, 1]
    for numbers, domains in objective.batches:
        assert len(set(domains)) == 1 and all(domain_of[n] == domains[0] for n in numbers)
    first_epoch = Counter(domains[0] for _, domains in objective.batches[:8])
    assert first_epoch == {0: 4, 1: 4}
