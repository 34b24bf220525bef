"""The ToyShapes domain: determinism, class semantics of the rendered images, split, captions, writers."""
import colorsys
import json
import math
import os
import re
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from caspl_plugin.toy import domain as toy  # noqa: E402


def _assert_batches_equal(a, b):
    for field, x, y in zip(a._fields, a, b):
        assert torch.equal(x, y), field


# --- determinism and labels ---

def test_same_seed_same_batch_different_seed_different_images():
    rng_state = torch.get_rng_state()
    first, again = toy.generate(2, seed=7), toy.generate(2, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_state), "the global RNG must not be used"
    _assert_batches_equal(first, again)
    other = toy.generate(2, seed=8)
    assert torch.equal(first.labels, other.labels)
    assert not torch.equal(first.images, other.images)
    assert not torch.equal(first.positions, other.positions)


def test_images_and_labels_have_the_documented_layout():
    batch = toy.generate(3, seed=0, image_size=40)
    n = 3 * toy.NUM_CLASSES
    assert batch.images.shape == (n, 3, 40, 40) and batch.images.dtype == torch.float32
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert torch.equal(batch.labels, torch.arange(toy.NUM_CLASSES).repeat_interleave(3))
    assert batch.sizes.shape == (n,) and batch.positions.shape == (n, 2) and batch.masks.shape == (n, 40, 40)
    # the whole shape (inside the unit disk scaled by size) stays inside the image
    assert ((batch.positions.abs() + batch.sizes[:, None]) <= 1 + 1e-6).all()

    chosen = toy.generate(labels=[35, 0, 35, 17], seed=1)
    assert chosen.labels.tolist() == [35, 0, 35, 17]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one"),
    ({"num_per_class": 2, "labels": [0]}, "exactly one"),
    ({"num_per_class": 0}, "positive int"),
    ({"labels": [0, 36]}, "label 36 out of range"),
    ({"labels": [-1]}, "label -1 out of range"),
    ({"num_per_class": 1, "image_size": 4}, "image_size"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        toy.generate(**kwargs)


def test_generation_is_vectorised_fast():
    toy.generate(1, seed=0)  # warm-up
    start = time.perf_counter()
    toy.generate(50, seed=0)  # 1800 images at 32 px
    assert time.perf_counter() - start < 3.0  # typically ~0.25 s on 2 CPU cores


# --- the rendered images carry their class ---

def _hue_distance(a, b):
    d = abs(a - b) % 360
    return min(d, 360 - d)


def test_foreground_colour_matches_the_class_colour():
    batch = toy.generate(3, seed=3)
    colour_names = list(toy.COLOURS)
    for image, label, mask in zip(batch.images, batch.labels.tolist(), batch.masks):
        colour = colour_names[toy.CLASSES[label][0]]
        assert toy.class_names()[label].startswith(colour + " ")
        # shrink the mask by one pixel so anti-aliased edges do not mix in the background
        core = -torch.nn.functional.max_pool2d(-mask[None, None].float(), 3, 1, 1)[0, 0] > 0.5
        assert core.sum() >= 10
        r, g, b = image[:, core].mean(dim=1).tolist()
        hue = colorsys.rgb_to_hsv(r, g, b)[0] * 360
        nearest = min(colour_names, key=lambda name: _hue_distance(hue, toy.COLOURS[name]))
        assert nearest == colour, (toy.class_names()[label], hue)
        # independent of the hue table: the primaries dominate their own channel
        if colour in ("red", "green", "blue"):
            assert [r, g, b].index(max(r, g, b)) == ("red", "green", "blue").index(colour)
        background = image[:, ~mask].mean(dim=1)
        assert (image[:, core].mean(dim=1) - background).abs().max() > 0.15


def _canonical_areas():
    axis = torch.linspace(-1.05, 1.05, 1501)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    cell = (2.1 / 1500) ** 2
    return {name: toy.shape_mask(name, x, y).sum().item() * cell for name in toy.SHAPES}


def test_canonical_shapes_have_distinct_known_areas():
    areas = _canonical_areas()
    assert areas["circle"] == pytest.approx(math.pi * 0.95 ** 2, rel=0.01)
    assert areas["square"] == pytest.approx(1.4 ** 2, rel=0.01)
    assert areas["triangle"] == pytest.approx(3 * math.sqrt(3) / 4, rel=0.01)
    ordered = sorted(areas.values())
    assert all(b / a > 1.12 for a, b in zip(ordered, ordered[1:])), areas


def test_rendered_mask_area_and_centre_identify_shape_and_position():
    areas = _canonical_areas()
    shape_names = list(toy.SHAPES)
    size = 64
    batch = toy.generate(4, seed=5, image_size=size)
    pixel = 2 / size
    axis = (torch.arange(size) + 0.5) * pixel - 1
    for mask, label, scale, (px, py) in zip(batch.masks, batch.labels.tolist(), batch.sizes.tolist(),
                                            batch.positions.tolist()):
        shape = shape_names[toy.CLASSES[label][1]]
        normalised_area = mask.sum().item() * pixel ** 2 / scale ** 2
        nearest = min(areas, key=lambda name: abs(math.log(normalised_area / areas[name])))
        assert nearest == shape, (toy.class_names()[label], normalised_area, areas)
        if shape in ("circle", "square", "cross"):  # point-symmetric: the mask centroid is the position
            rows, cols = mask.nonzero(as_tuple=True)
            assert axis[cols].mean().item() == pytest.approx(px, abs=pixel)
            assert axis[rows].mean().item() == pytest.approx(py, abs=pixel)


# --- classes and split ---

def test_checkerboard_split():
    names, base, novel = toy.class_names(), toy.base_classes(), toy.novel_classes()
    assert len(names) == len(set(names)) == 36 and len(base) == len(novel) == 18
    assert set(base) | set(novel) == set(names) and not set(base) & set(novel)
    colours, shapes = list(toy.COLOURS), list(toy.SHAPES)
    for name in names:
        colour, shape = name.split()
        assert (name in base) == ((colours.index(colour) + shapes.index(shape)) % 2 == 0)
    for half in (base, novel):
        assert {n.split()[0] for n in half} == set(colours)
        assert {n.split()[1] for n in half} == set(shapes)
    assert names[:18] == base and [names[i] for i in toy.base_labels()] == base
    assert [names[i] for i in toy.novel_labels()] == novel


def test_class_words_are_single_clip_tokens():
    open_clip = pytest.importorskip("open_clip")
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    words = {word for name in toy.class_names() for word in name.split()}
    assert {word: len(tokenizer.encode(word)) for word in words} == {word: 1 for word in words}


# --- captions ---

def test_captions_name_the_class_and_describe_size_and_position():
    batch = toy.generate(4, seed=2)
    names = toy.class_names()
    texts = toy.captions(batch.labels, batch.sizes, batch.positions, torch.Generator().manual_seed(0))
    assert len(texts) == len(batch.labels)
    assert texts == toy.captions(batch.labels, batch.sizes, batch.positions, torch.Generator().manual_seed(0))
    assert texts != toy.captions(batch.labels, batch.sizes, batch.positions, torch.Generator().manual_seed(1))
    for text, label, size, (x, y) in zip(texts, batch.labels.tolist(), batch.sizes.tolist(), batch.positions.tolist()):
        assert names[label] in text
        assert not re.search(r"\ba [aeiou]", text), text  # "an orange ...", never "a orange ..."
        for word in ("small", "medium", "large"):
            if f" {word} " in text:
                assert word == toy.size_word(size)
        if text.rstrip(".").endswith(("corner", "left", "right", "top", "bottom", "center")):
            assert text.rstrip(".").endswith(toy.position_phrase(x, y))
    assert len({t.replace(n, "{}") for t, n in zip(texts, (names[i] for i in batch.labels))}) >= 10
    assert all("{name}" in template for template in toy.CAPTION_TEMPLATES)


def test_size_and_position_words():
    low, high = toy.SIZE_RANGE
    assert [toy.size_word(s) for s in (low, (low + high) / 2, high)] == ["small", "medium", "large"]
    assert toy.position_phrase(-0.9, -0.9) == "in the top left corner"
    assert toy.position_phrase(0.0, 0.0) == "in the center"
    assert toy.position_phrase(0.9, 0.1) == "on the right"
    assert toy.position_phrase(0.1, 0.9) == "at the bottom"
    with pytest.raises(ValueError, match="differ in length"):
        toy.captions([0, 1], [0.5], [[0.0, 0.0]])


# --- writers ---

def _png_bytes(path):
    from PIL import Image

    with Image.open(path) as image:
        assert image.mode == "RGB"
        return image.size, image.tobytes()


def _quantised(images):
    return {bytes(a.tobytes()) for a in toy._to_uint8_hwc(images)}


def test_write_image_folder(tmp_path):
    paths = toy.write_image_folder(tmp_path / "unlabeled", num_per_class=2, seed=4)
    files = sorted(paths.images.rglob("*.png"))
    assert len(files) == 72
    assert {len(f.relative_to(paths.images).parts) for f in files} == {3}  # two nested folder levels
    words = set(toy.COLOURS) | set(toy.SHAPES)
    assert not any(word in str(f.relative_to(paths.images)) for f in files for word in words)
    contents = [_png_bytes(f) for f in files]
    assert {size for size, _ in contents} == {(32, 32)}
    assert {data for _, data in contents} == _quantised(toy.generate(2, seed=4).images)
    assert paths.class_names.read_text(encoding="utf-8").splitlines() == toy.class_names()

    with pytest.raises(FileExistsError, match="overwrite=True"):
        toy.write_image_folder(tmp_path / "unlabeled", num_per_class=1, seed=4)
    toy.write_image_folder(tmp_path / "unlabeled", num_per_class=1, seed=4, overwrite=True)
    assert len(list(paths.images.rglob("*.png"))) == 36
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unlabeled"]  # no staging left behind


def test_write_coop_layout_split_json_and_base_subsampling(tmp_path):
    dataset = toy.write_coop_layout(tmp_path, train_per_class=2, val_per_class=1, test_per_class=1, seed=9)
    assert dataset == tmp_path / toy.COOP_DATASET_DIR
    split = json.loads((dataset / toy.COOP_SPLIT_FILE).read_text(encoding="utf-8"))
    assert set(split) == {"train", "val", "test"}
    assert [len(split[k]) for k in ("train", "val", "test")] == [72, 36, 36]
    names = toy.class_names()
    for relpath, label, classname in split["train"] + split["val"] + split["test"]:
        assert classname == names[label] and relpath.split("/")[0] == classname.replace(" ", "_")
        assert _png_bytes(dataset / "images" / relpath)[0] == (32, 32)
    assert len({r for r, _, _ in split["train"] + split["val"] + split["test"]}) == 144

    # CoOp's subsample_classes: sorted labels, the first ceil(n / 2) are base
    labels = sorted({label for _, label, _ in split["train"]})
    m = math.ceil(len(labels) / 2)
    lab2name = {label: name for _, label, name in split["train"]}
    assert [lab2name[label] for label in labels[:m]] == toy.base_classes()
    assert [lab2name[label] for label in labels[m:]] == toy.novel_classes()

    # train and test come from independent streams; the same seed reproduces the files
    train_images = {_png_bytes(dataset / "images" / r)[1] for r, _, _ in split["train"]}
    assert not train_images & {_png_bytes(dataset / "images" / r)[1] for r, _, _ in split["test"]}
    again = toy.write_coop_layout(tmp_path / "again", train_per_class=2, val_per_class=1, test_per_class=1, seed=9)
    assert json.loads((again / toy.COOP_SPLIT_FILE).read_text(encoding="utf-8")) == split
    relpath = split["val"][5][0]
    assert _png_bytes(again / "images" / relpath) == _png_bytes(dataset / "images" / relpath)


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail(images, paths):
        paths[0].parent.mkdir(parents=True)
        paths[0].write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(toy, "_save_pngs", fail)
    with pytest.raises(OSError, match="disk full"):
        toy.write_coop_layout(tmp_path, train_per_class=1, val_per_class=1, test_per_class=1)
    assert list(tmp_path.iterdir()) == []
