"""The one image opener (8-bit RGB from any depth and mode) and the pre-training probe."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from caspl_plugin.data import images as images_module
from helpers_images import write_images_with_bad_ones
from caspl_plugin.data.images import clear_probe_cache, open_rgb, probe_images


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    clear_probe_cache()
    yield
    clear_probe_cache()


def _sixteen_bit_values() -> np.ndarray:
    values = [0, 1, 128, 129, 256, 257, 385, 386, 1000, 32767, 32768, 65278, 65279, 65534, 65535, 12345]
    return np.array(values, dtype=np.uint16).reshape(4, 4)


def _by_hand(value: int) -> int:
    """round(value * 255 / 65535) = round(value / 257) in exact integer arithmetic (no ties occur)."""
    return (2 * value + 257) // (2 * 257)


@pytest.mark.parametrize("fmt, mode", [("png", "I;16"), ("tiff", "I;16"), ("tiff", "I;16B")])
def test_sixteen_bit_greyscale_scales_to_eight_bits(fmt, mode, tmp_path):
    values = _sixteen_bit_values()
    raw = values.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
    path = tmp_path / f"grey16.{fmt}"
    Image.frombytes(mode, (4, 4), raw).save(path)
    with Image.open(path) as written:
        assert written.mode.startswith("I")  # really a high-bit-depth file
    rgb = np.asarray(open_rgb(path))
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    expected = np.array([[_by_hand(int(v)) for v in row] for row in values])
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], expected)
    assert (rgb == 255).mean() < 0.2  # not the washed-out all-white of convert("RGB")


def test_thirty_two_bit_and_float_images(tmp_path):
    sixteen = Image.fromarray(_sixteen_bit_values().astype(np.int32), "I")
    expected = np.array([[_by_hand(int(v)) for v in row] for row in _sixteen_bit_values()])
    assert np.array_equal(np.asarray(open_rgb_image(sixteen))[..., 0], expected)
    wide = Image.fromarray(np.array([[-100, 0], [120, 300]], dtype=np.int32), "I")  # outside 0..65535: min..max
    assert np.asarray(open_rgb_image(wide))[..., 1].tolist() == [[0, 64], [140, 255]]  # 220 * 255 / 400 = 140.25
    unit = Image.fromarray(np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(open_rgb_image(unit))[..., 2].tolist() == [[0, 64], [128, 255]]
    stretched = Image.fromarray(np.array([[2.0, 4.0], [7.0, 10.0]], dtype=np.float32), "F")
    assert np.asarray(open_rgb_image(stretched))[..., 0].tolist() == [[0, 64], [159, 255]]  # 5 * 255 / 8 = 159.4


def open_rgb_image(image: Image.Image) -> Image.Image:
    return images_module.to_rgb(image)


def test_transparency_is_composited_over_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: its colour
    rgba[0, 1] = (10, 20, 30, 0)    # transparent: the background
    rgba[0, 2] = (0, 0, 0, 128)     # half: 0 * 128/255 + 255 * 127/255 ~ 127
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(open_rgb(tmp_path / "rgba.png")).astype(int)
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [255, 255, 255]
    assert all(abs(v - 127) <= 1 for v in out[0, 2])

    la = Image.fromarray(np.array([[40, 200]], np.uint8), "L")
    la.putalpha(Image.fromarray(np.array([[255, 0]], np.uint8), "L"))
    la.save(tmp_path / "la.png")
    assert np.asarray(open_rgb(tmp_path / "la.png")).tolist() == [[[40, 40, 40], [255, 255, 255]]]

    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(open_rgb(tmp_path / "p.png")).tolist() == [[[255, 255, 255], [200, 10, 10]]]


def test_other_modes_follow_pil(tmp_path):
    bits = Image.fromarray(np.array([[True, False]]))
    assert bits.mode == "1"
    assert np.asarray(open_rgb_image(bits)).tolist() == [[[255, 255, 255], [0, 0, 0]]]
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))
    assert np.asarray(open_rgb_image(cmyk))[0, 0].tolist() == list(cmyk.convert("RGB").getpixel((0, 0)))
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    rgb.save(tmp_path / "plain.png")
    assert np.asarray(open_rgb(tmp_path / "plain.png"))[1, 1].tolist() == [1, 2, 3]


# ---- the probe -------------------------------------------------------------------------------

def test_probe_finds_every_unreadable_file_including_truncated_ones(tmp_path):
    files, bad = write_images_with_bad_ones(tmp_path, 9, bad_positions={1, 4, 6, 8})
    truncated_png = bad[1]
    assert truncated_png.read_bytes()[:4] == b"\x89PNG"
    with Image.open(truncated_png) as image:
        image.verify()  # verify() alone lets a truncated file through
    for workers in (1, 3):
        clear_probe_cache()
        result = probe_images(files, workers=workers)
        assert [path for path, _ in result.unreadable] == bad
        assert result.readable == [p for p in files if p not in bad]
        assert all(reason for _, reason in result.unreadable)


def test_probe_remembers_verdicts_until_the_file_changes(tmp_path, monkeypatch):
    files, bad = write_images_with_bad_ones(tmp_path, 4, bad_positions={2})
    opened = []
    real_open = images_module.open_rgb
    monkeypatch.setattr(images_module, "open_rgb", lambda path: (opened.append(Path(path)), real_open(path))[1])
    probe_images(files, workers=2)
    assert sorted(opened) == sorted(files)
    opened.clear()
    assert probe_images(files, workers=2).unreadable[0][0] == bad[0]
    assert opened == []  # every verdict came from the cache
    Image.new("RGB", (8, 8), (5, 6, 7)).save(bad[0], format="PNG")  # repaired: new size and mtime
    result = probe_images(files, workers=2)
    assert opened == [bad[0]] and result.unreadable == [] and result.readable == files


def test_unlabeled_images_open_through_open_rgb(tmp_path):
    from caspl_plugin.data.unlabeled import UnlabeledImages

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((4, 4), 257 * 100, np.uint16)).save(path)
    dataset = UnlabeledImages([path], lambda image: torch.from_numpy(np.asarray(image).copy()))
    image, name = dataset[0]
    assert name == str(path) and image.shape == (4, 4, 3) and int(image.max()) == 100


def test_every_reader_of_training_images_opens_through_open_rgb(tmp_path):
    """Labeled images, the teacher-view datasets (online and the precompute) and export preprocessing
    see a 16-bit image as the probe and UnlabeledImages do: scaled to 8 bits, not clipped to white."""
    from caspl_plugin.cache import AugmentationSettings, TeacherViewDataset
    from caspl_plugin.cache.precompute import _compute_shard, cache_identity
    from caspl_plugin.clip import create_clip
    from caspl_plugin.data.labeled import LabeledImages
    from caspl_plugin.data.splits import Record
    from caspl_plugin.export.preprocess import eval_pixels

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 8), 257 * 100, np.uint16)).save(path)
    as_array = lambda image: torch.from_numpy(np.asarray(image).copy())  # noqa: E731
    image, _, _ = LabeledImages([Record(str(path), 0, "grey")], as_array)[0]
    assert int(image.max()) == 100

    torch.manual_seed(0)
    teacher = create_clip("caspl-tiny-teacher", "random")
    class OnlineTeacher:  # identity "features": the teacher's rendered view itself
        image_size, mean, std, text_features = 8, torch.zeros(3), torch.ones(3), torch.zeros(1)

        def image_features(self, views):
            return views.flatten(1)

    dataset = TeacherViewDataset([path], tmp_path, image_size=8, mean=(0, 0, 0), std=(1, 1, 1), views=1, teacher=OnlineTeacher())
    pixels, _, extras = dataset[0]
    assert abs(float(pixels.max()) - 100 / 255) < 1e-3 and abs(float(extras["teacher_features"].max()) - 100 / 255) < 1e-3
    identity = cache_identity(teacher, 1, 1, AugmentationSettings(scale=(1.0, 1.0), flip_probability=0.0))
    identity["teacher"].update(image_size=8, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])

    rendered = []

    class Encoder:  # the precompute's teacher: records the views it is given
        def encode_image(self, views):
            rendered.append(views)
            return views.flatten(1)

    _compute_shard(type("Teacher", (), {"model": Encoder()})(), [path], ["grey16.png"], identity, 4, torch.device("cpu"), "fp32", torch.float32)
    assert abs(float(rendered[0].max()) - 100 / 255) < 1e-3
    assert abs(float(eval_pixels(Image.open(path), 8, (0, 0, 0), (1, 1, 1)).max()) - 100 / 255) < 1e-3
