"""Dataset readers: split files, base/new classes, few-shot sampling and caching, the CoOp layouts.

The first half needs no Dassl; the Dassl tests import it inside and skip without it.
"""
import json
import os
import random

import pytest

from caspl_plugin.data import catalog
from caspl_plugin.data.layouts import load_benchmark, read_labeled_folder, read_unlabeled_folder
from caspl_plugin.data.splits import (
    SPLIT_LAYOUT,
    Record,
    SplitFormatError,
    fewshot_split_path,
    generate_fewshot,
    load_or_create_fewshot,
    read_split,
    subsample_classes,
)
from helpers_data import make_class_folders, make_imagenet, make_split_dataset, write_image

DTD_CLASSES = ["banded", "blotchy", "braided", "bubbly", "bumpy"]


def records(n_classes: int, per_class: int) -> list[Record]:
    return [Record(f"/img/{c}_{i}.jpg", c, f"class{c}") for c in range(n_classes) for i in range(per_class)]


# -- pure: split files ----------------------------------------------------------------------------


def test_read_split_joins_paths_and_keeps_labels(tmp_path):
    path = tmp_path / "split_zhou_X.json"
    path.write_text(json.dumps({"train": [["a/1.jpg", 0, "a"]], "val": [["b/2.jpg", 1, "b"]], "test": []}))
    train, val, test = read_split(path, "/data/images")
    assert train == [Record("/data/images/a/1.jpg", 0, "a")]
    assert val == [Record("/data/images/b/2.jpg", 1, "b")]
    assert test == []


def test_missing_split_file_names_file_and_layout(tmp_path):
    missing = tmp_path / "dtd" / "split_zhou_DescribableTextures.json"
    with pytest.raises(FileNotFoundError) as info:
        read_split(missing, tmp_path)
    assert str(missing) in str(info.value) and SPLIT_LAYOUT in str(info.value)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        (json.dumps([1, 2]), "top level must be an object"),
        (json.dumps({"train": [], "val": []}), "missing key(s) ['test']"),
        (json.dumps({"train": [["a.jpg", "0", "a"]], "val": [], "test": []}), "train[0] must be [relpath, label,"),
        (json.dumps({"train": [], "val": {"a": 1}, "test": []}), "'val' must be a list"),
        (json.dumps({"train": [["../../etc/a.jpg", 0, "a"]], "val": [], "test": []}), "train[0]: image path '../../etc/a.jpg'"),
        (json.dumps({"train": [], "val": [["/etc/a.jpg", 0, "a"]], "test": []}), "val[0]: image path '/etc/a.jpg'"),
        (json.dumps({"train": [], "val": [], "test": [["a\\..\\..\\b.jpg", 0, "a"]]}), "must be relative to the image folder"),
        (json.dumps({"train": [["C:/x.jpg", 0, "a"]], "val": [], "test": []}), "no absolute path, drive"),
        (json.dumps({"train": [["a.jpg", -1, "a"]], "val": [], "test": []}), "train[0]: label -1 must be >= 0"),
    ],
)
def test_malformed_split_file_names_file_problem_and_layout(tmp_path, content, problem):
    path = tmp_path / "split_zhou_Bad.json"
    path.write_text(content)
    with pytest.raises(SplitFormatError) as info:
        read_split(path, tmp_path)
    message = str(info.value)
    assert str(path) in message and problem in message and SPLIT_LAYOUT in message


# -- pure: base/new classes -----------------------------------------------------------------------


def test_subsample_base_and_new_relabel_from_zero():
    train, test = records(5, 2), records(5, 1)
    base_train, base_test = subsample_classes(train, test, subsample="base")
    new_train, new_test = subsample_classes(train, test, subsample="new")
    assert sorted({r.label for r in base_train}) == [0, 1, 2]  # ceil(5/2) = 3 base classes
    assert [r.classname for r in base_test] == ["class0", "class1", "class2"]
    assert sorted({r.label for r in new_train}) == [0, 1]
    assert [(r.label, r.classname) for r in new_test] == [(0, "class3"), (1, "class4")]
    assert len(base_train) == 6 and len(new_train) == 4


def test_subsample_decides_classes_from_the_first_split():
    train = records(4, 1)[:2]  # labels 0, 1 only -> base = [0], new = [1]
    test = records(4, 1)
    _, base_test = subsample_classes(train, test, subsample="base")
    _, new_test = subsample_classes(train, test, subsample="new")
    assert [r.classname for r in base_test] == ["class0"]
    assert [(r.label, r.classname) for r in new_test] == [(0, "class1")]


def test_subsample_all_is_identity_and_bad_value_fails():
    train = records(3, 2)
    assert subsample_classes(train, subsample="all") == (train,)
    with pytest.raises(ValueError, match="'half'"):
        subsample_classes(train, subsample="half")


# -- pure: few-shot ------------------------------------------------------------------------------


def test_fewshot_counts_and_determinism():
    items = records(3, 5) + [Record("/img/rare.jpg", 3, "class3")]
    picked = generate_fewshot(items, 2, rng=random.Random(7))
    assert picked == generate_fewshot(items, 2, rng=random.Random(7))
    assert [r.label for r in picked] == [0, 0, 1, 1, 2, 2, 3]  # a class with 1 image keeps it
    assert all(r in items for r in picked)
    assert len(generate_fewshot(items, 2, repeat=True, rng=random.Random(7))) == 8
    assert generate_fewshot(items, -1) == items
    # the global random seeded like Dassl's set_random_seed gives the same draw as a seeded Random
    random.seed(7)
    assert generate_fewshot(items, 2) == picked
    seeds = {tuple(r.impath for r in generate_fewshot(items, 2, rng=random.Random(s))) for s in range(5)}
    assert len(seeds) > 1


def test_fewshot_cache_is_relative_json_and_reused(tmp_path):
    image_dir = tmp_path / "images"
    train = [Record(str(image_dir / f"c{c}" / f"{i}.jpg"), c, f"c{c}") for c in range(3) for i in range(6)]
    val = [Record(str(image_dir / f"c{c}" / f"v{i}.jpg"), c, f"c{c}") for c in range(3) for i in range(6)]
    random.seed(1)
    few_train, few_val = load_or_create_fewshot(tmp_path, image_dir, 5, 1, train, val)
    assert len(few_train) == 15 and len(few_val) == 12  # val gets min(K, 4) per class
    path = fewshot_split_path(tmp_path, 5, 1)
    assert path == tmp_path / "split_fewshot" / "shot_5-seed_1.json"
    cached = json.loads(path.read_text())
    assert set(cached) == {"train", "val"}
    assert all(not os.path.isabs(entry[0]) for entry in cached["train"] + cached["val"])
    random.seed(999)  # a different global state: the cache wins
    assert load_or_create_fewshot(tmp_path, image_dir, 5, 1, train, val) == (few_train, few_val)
    assert not list(tmp_path.rglob("*.pkl"))


def test_fewshot_train_only_for_imagenet_style(tmp_path):
    train = [Record(str(tmp_path / f"{c}_{i}.jpg"), c, str(c)) for c in range(2) for i in range(4)]
    few_train, few_val = load_or_create_fewshot(tmp_path, tmp_path, 2, 3, train, None, rng=random.Random(3))
    assert few_val is None and len(few_train) == 4
    assert set(json.loads(fewshot_split_path(tmp_path, 2, 3).read_text())) == {"train"}


# -- pure: catalog and layouts -------------------------------------------------------------------


def test_catalog_names_configs_and_templates():
    assert len(catalog.DATASETS) == 15
    assert catalog.template_for("DescribableTextures") == catalog.template_for("dtd") == "{} texture."
    assert catalog.TEMPLATES["EuroSAT"] == "a centered satellite photo of {}."
    assert catalog.TEMPLATES["OxfordPets"] == "a photo of a {}, a type of pet."
    assert catalog.TEMPLATES["UCF101"] == "a photo of a person doing {}."
    assert catalog.dataset_spec("imagenet_sketch").name == "ImageNetSketch"
    assert catalog.dataset_spec("ImageNetA").test_only and not catalog.dataset_spec("ImageNet").test_only
    assert catalog.dataset_spec("StanfordCars").split_file == "split_zhou_StanfordCars.json"
    assert catalog.template_for("MyDomain", default="a photo of a {}.") == "a photo of a {}."
    with pytest.raises(KeyError, match="MyDomain"):
        catalog.template_for("MyDomain")
    assert len(catalog.IMAGENET_TEMPLATES) == 60 and len(catalog.IMAGENET_TEMPLATES_80) == 80
    assert catalog.IMAGENET_TEMPLATES[0] == "a photo of a {}."
    assert set(catalog.IMAGENET_TEMPLATES) < set(catalog.IMAGENET_TEMPLATES_80)
    assert all(t.count("{}") == 1 for t in catalog.IMAGENET_TEMPLATES_80)
    assert catalog.EUROSAT_NEW_CNAMES["SeaLake"] == "Sea or Lake"


def test_load_benchmark_dtd_without_dassl(tmp_path):
    make_split_dataset(tmp_path / "dtd", "images", "DescribableTextures", DTD_CLASSES)
    splits = load_benchmark(
        "DescribableTextures", str(tmp_path), num_shots=2, seed=1, subsample="new", rng=random.Random(1)
    )
    assert [(r.label, r.classname) for r in splits.test] == [(0, "bubbly")] * 2 + [(1, "bumpy")] * 2
    assert len(splits.train) == 4 and len(splits.val) == 2
    assert all(os.path.isfile(r.impath) for r in splits.train + splits.val + splits.test)


def test_imagenet_scan_is_cached_as_json(tmp_path):
    make_imagenet(tmp_path / "imagenet", ["n02", "n01"], ["goldfish", "tench"])
    splits = load_benchmark("ImageNet", str(tmp_path))
    assert [r.classname for r in splits.train[:3]] == ["tench"] * 3  # folders sorted: n01 first
    assert splits.val == splits.test and len(splits.test) == 4
    cache = tmp_path / "imagenet" / "preprocessed.json"
    assert set(json.loads(cache.read_text())) == {"train", "test"}
    assert load_benchmark("ImageNet", str(tmp_path)).train == splits.train
    assert not list(tmp_path.rglob("*.pkl"))


def test_fgvc_aircraft_txt_splits(tmp_path):
    root = tmp_path / "fgvc_aircraft"
    (root / "images").mkdir(parents=True)
    (root / "variants.txt").write_text("707-320\nA300B4\n")
    for split, rows in {"train": ["1 707-320", "2 A300B4"], "val": ["3 A300B4"], "test": ["4 707-320"]}.items():
        (root / f"images_variant_{split}.txt").write_text("\n".join(rows) + "\n")
    splits = load_benchmark("FGVCAircraft", str(tmp_path))
    assert [(os.path.basename(r.impath), r.label, r.classname) for r in splits.train] == [
        ("1.jpg", 0, "707-320"), ("2.jpg", 1, "A300B4")]
    (root / "images_variant_val.txt").write_text("3 B747\n")
    with pytest.raises(ValueError, match="'B747'"):
        load_benchmark("FGVCAircraft", str(tmp_path))


def test_folder_readers(tmp_path):
    make_class_folders(tmp_path / "dom", ["cat", "dog"], per_class=4)
    splits = read_labeled_folder(str(tmp_path / "dom"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 2)
    assert {(r.label, r.classname) for r in splits.test} == {(0, "cat"), (1, "dog")}
    assert read_labeled_folder(str(tmp_path / "dom")) == splits  # fixed-seed split
    write_image(tmp_path / "raw" / "a" / "deep" / "x.jpg")
    write_image(tmp_path / "raw" / "y.png")
    (tmp_path / "raw" / "notes.txt").write_text("not an image")
    unlabeled = read_unlabeled_folder(str(tmp_path / "raw"))
    assert [os.path.basename(r.impath) for r in unlabeled] == ["x.jpg", "y.png"]
    assert {r.label for r in unlabeled} == {-1}


# -- with Dassl -----------------------------------------------------------------------------------


@pytest.fixture
def dassl_cfg(tmp_path):
    pytest.importorskip("dassl")
    from dassl.config import get_cfg_default

    from caspl_plugin.plugin.dassl_datasets import extend_dataset_cfg, register_datasets

    register_datasets()
    cfg = get_cfg_default()
    extend_dataset_cfg(cfg)
    cfg.DATASET.ROOT = str(tmp_path)
    cfg.SEED = 1
    return cfg


def build(cfg, name, **dataset_keys):
    from dassl.data.datasets import build_dataset
    from dassl.utils import set_random_seed

    cfg = cfg.clone()
    cfg.DATASET.NAME = name
    for key, value in dataset_keys.items():
        setattr(cfg.DATASET, key, value)
    set_random_seed(cfg.SEED)  # as CoOp's train.py does before building the trainer
    return build_dataset(cfg)


def test_dassl_dtd_fewshot_matches_dassl_and_base_new(dassl_cfg, tmp_path):
    from dassl.data.datasets import DatasetBase, Datum
    from dassl.utils import set_random_seed

    split = make_split_dataset(tmp_path / "dtd", "images", "DescribableTextures", DTD_CLASSES, counts=(4, 3, 2))
    dataset = build(dassl_cfg, "DescribableTextures", NUM_SHOTS=2)
    assert dataset.classnames == DTD_CLASSES and dataset.num_classes == 5
    assert (len(dataset.train_x), len(dataset.val), len(dataset.test)) == (10, 10, 10)

    # Dassl's own sampler on the same split, same seed, same order (train then val): same images
    image_dir = tmp_path / "dtd" / "images"
    datums = {key: [Datum(str(image_dir / p), y, c) for p, y, c in rows] for key, rows in split.items()}
    reference = DatasetBase(train_x=datums["train"])
    set_random_seed(1)
    expected_train = reference.generate_fewshot_dataset(datums["train"], num_shots=2)
    expected_val = reference.generate_fewshot_dataset(datums["val"], num_shots=2)
    assert [d.impath for d in dataset.train_x] == [d.impath for d in expected_train]
    assert [d.impath for d in dataset.val] == [d.impath for d in expected_val]

    base = build(dassl_cfg, "DescribableTextures", NUM_SHOTS=2, SUBSAMPLE_CLASSES="base")
    new = build(dassl_cfg, "DescribableTextures", NUM_SHOTS=2, SUBSAMPLE_CLASSES="new")
    assert base.classnames == DTD_CLASSES[:3] and new.classnames == DTD_CLASSES[3:]
    assert sorted({d.label for d in new.test}) == [0, 1] and len(new.test) == 4
    assert [d.impath for d in base.train_x] == [d.impath for d in dataset.train_x if d.label < 3]  # cached draw
    assert (tmp_path / "dtd" / "split_fewshot" / "shot_2-seed_1.json").is_file()


def test_dassl_oxford_pets_full_split(dassl_cfg, tmp_path):
    pets = ["abyssinian", "beagle", "boxer"]
    make_split_dataset(tmp_path / "oxford_pets", "images", "OxfordPets", pets, counts=(2, 1, 3), flat=True)
    dataset = build(dassl_cfg, "OxfordPets")
    assert dataset.classnames == pets and dataset.lab2cname == {0: "abyssinian", 1: "beagle", 2: "boxer"}
    assert (len(dataset.train_x), len(dataset.val), len(dataset.test)) == (6, 3, 9)
    assert os.path.dirname(dataset.test[0].impath) == str(tmp_path / "oxford_pets" / "images")
    assert catalog.template_for(type(dataset).__name__) == "a photo of a {}, a type of pet."


def test_dassl_missing_image_is_named(dassl_cfg, tmp_path):
    make_split_dataset(tmp_path / "oxford_pets", "images", "OxfordPets", ["a", "b"], flat=True)
    (tmp_path / "oxford_pets" / "images" / "b_9.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="b_9.jpg"):
        build(dassl_cfg, "OxfordPets")


def test_dassl_imagenet_folders(dassl_cfg, tmp_path):
    make_imagenet(tmp_path / "imagenet", ["n03", "n01", "n02"], ["tench", "goldfish", "great white shark"])
    dataset = build(dassl_cfg, "ImageNet", NUM_SHOTS=2)
    assert dataset.classnames == ["goldfish", "great white shark", "tench"]  # sorted wnids
    assert len(dataset.train_x) == 6 and dataset.val is dataset.test and len(dataset.test) == 6
    new = build(dassl_cfg, "ImageNet", NUM_SHOTS=2, SUBSAMPLE_CLASSES="new")
    assert new.classnames == ["tench"] and {d.label for d in new.train_x + new.test} == {0}
    assert (tmp_path / "imagenet" / "preprocessed.json").is_file()
    assert not list(tmp_path.rglob("*.pkl"))


def test_dassl_labeled_and_unlabeled_folders(dassl_cfg, tmp_path):
    from dassl.data import DataManager

    make_class_folders(tmp_path / "shapes", ["circle", "square", "triangle"], per_class=4)
    labeled = build(dassl_cfg, "LabeledImageFolder", FOLDER="shapes", NUM_SHOTS=1)
    assert labeled.classnames == ["circle", "square", "triangle"]
    assert (len(labeled.train_x), len(labeled.val), len(labeled.test)) == (3, 3, 3)
    assert (tmp_path / "shapes" / "split_fewshot" / "shot_1-seed_1.json").is_file()
    again = build(dassl_cfg, "LabeledImageFolder", FOLDER="shapes", NUM_SHOTS=1, SUBSAMPLE_CLASSES="new")
    assert again.classnames == ["triangle"]  # the cache folder is not a class
    assert [d.impath for d in again.train_x] == [d.impath for d in labeled.train_x if d.label == 2]

    write_image(tmp_path / "raw" / "batch1" / "a.jpg")
    write_image(tmp_path / "raw" / "b.png")
    (tmp_path / "raw" / "classes.txt").write_text("circle\nsquare\n\ntriangle\n")
    cfg = dassl_cfg.clone()
    cfg.DATASET.NAME, cfg.DATASET.FOLDER, cfg.DATASET.CLASS_NAMES_FILE = "UnlabeledImageFolder", "raw", "classes.txt"
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.SIZE = (8, 8)
    cfg.VERBOSE = False
    dm = DataManager(cfg)
    assert dm.dataset.classnames == ["circle", "square", "triangle"]
    assert dm.num_classes == 3 and dm.lab2cname == {0: "circle", 1: "square", 2: "triangle"}
    assert len(dm.dataset.train_x) == 2 and {d.label for d in dm.dataset.train_x} == {-1}
    batch = next(iter(dm.train_loader_x))
    assert batch["img"].shape[1:] == (3, 8, 8)
    with pytest.raises(ValueError, match="NUM_SHOTS=4"):
        build(cfg, "UnlabeledImageFolder", NUM_SHOTS=4)


def test_register_datasets_only_free_names(dassl_cfg):
    from dassl.data.datasets import DATASET_REGISTRY
    from dassl.utils import Registry

    from caspl_plugin.plugin.dassl_datasets import dataset_classes, register_datasets

    assert register_datasets() == []  # the fixture registered them already
    assert DATASET_REGISTRY.get("EuroSAT") is dataset_classes()["EuroSAT"]
    host = Registry("DATASET")

    @host.register()
    class OxfordPets:  # the host project's own reader
        pass

    registered = register_datasets(host)
    assert "OxfordPets" not in registered and host.get("OxfordPets") is OxfordPets
    assert len(registered) == 16 and host.get("UnlabeledImageFolder") is dataset_classes()["UnlabeledImageFolder"]
