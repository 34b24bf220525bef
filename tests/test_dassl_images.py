"""Dassl's image reads go through the package's reader once the plugin is enabled (real Dassl; skipped
without it): a truncated JPEG in a CoOp split neither hangs nor stops a run, it is skipped and reported
in log.txt; 16-bit images read as everywhere else in the package."""
import json

import numpy as np
import pytest

pytest.importorskip("dassl")

from PIL import Image  # noqa: E402

import caspl_plugin  # noqa: E402
from caspl_plugin.data.images import open_rgb  # noqa: E402
from caspl_plugin.plugin import dassl_compat  # noqa: E402
from helpers_dassl import make_dtd, tiny_cfg  # noqa: E402


def truncated_jpeg(path, seed=0):
    """A JPEG cut in half, written under ``path``'s name (the split file keeps pointing at it)."""
    full = path.with_suffix(".full.jpg")
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(full, "JPEG")
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


class _Tee:
    """Writes to the console and a log file (what ``dassl.utils.logger.Logger`` does, without closing
    the console when it is collected)."""

    def __init__(self, console, file):
        self.console, self.file = console, file

    def write(self, text):
        self.console.write(text)
        self.file.write(text)

    def flush(self):
        self.console.flush()
        self.file.flush()


def test_a_truncated_jpeg_in_a_coop_split_is_skipped_and_reported(tmp_path, monkeypatch):
    import sys

    from dassl.engine import build_trainer

    caspl_plugin.enable()
    root = make_dtd(tmp_path / "data", train_per_class=1, test_per_class=1)
    split = json.loads((root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    bad_train = truncated_jpeg(root / "dtd" / "images" / split["train"][0][0])
    bad_test = truncated_jpeg(root / "dtd" / "images" / split["test"][1][0], seed=1)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / "log.txt", "w") as log_file:  # Dassl's setup_logger tees sys.stdout into log.txt like this
        monkeypatch.setattr(sys, "stdout", _Tee(sys.stdout, log_file))
        try:
            trainer = build_trainer(tiny_cfg(root, out, "CoOp", "DATALOADER.TRAIN_X.BATCH_SIZE", 4))
            trainer.train()  # one epoch, then the test split: neither hangs nor raises
        finally:
            monkeypatch.undo()
    log = (out / "log.txt").read_text()
    assert f"Skipped 1 unreadable image(s) in this pass over the training data: {bad_train} (OSError: image file is truncated" in log
    assert f"Skipped 1 unreadable image(s) in this pass over the evaluation data: {bad_test}" in log
    assert "=> result" in log and "* accuracy" in log
    loader = trainer.train_loader_x
    assert set(loader.caspl_skipped) == {str(bad_train)}
    total = len(trainer.dm.dataset.test)
    assert f"* total: {total - 1:,}" in log  # evaluated on the readable test images only


def test_read_image_is_the_package_reader_without_retries(tmp_path):
    import dassl.data.data_manager
    import dassl.utils

    caspl_plugin.enable()
    assert dassl.utils.read_image is dassl_compat.read_image is dassl.data.data_manager.read_image
    deep = tmp_path / "sixteen.png"
    Image.fromarray(np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)).save(deep)
    image = dassl.utils.read_image(str(deep))
    assert np.array_equal(np.asarray(image), np.asarray(open_rgb(deep)))
    plain = np.asarray(Image.open(deep).convert("RGB"))  # what Dassl's own read_image returns
    assert np.asarray(image)[32, 0, 0] == 128 and plain[32, 0, 0] == 255  # scaled, not clipped to white
    attempts = []
    original = Image.open

    def counting_open(*args, **kwargs):
        attempts.append(args[0])
        return original(*args, **kwargs)

    bad = truncated_jpeg(tmp_path / "bad.jpg")
    Image.open = counting_open
    try:
        with pytest.raises(dassl_compat.UnreadableImageError, match="Cannot read image .*bad.jpg: OSError"):
            dassl.utils.read_image(str(bad))
    finally:
        Image.open = original
    assert len(attempts) == 1


def test_a_wrapper_used_outside_dassls_loaders_gives_the_next_readable_item(tmp_path, capsys):
    from dassl.data.data_manager import DatasetWrapper
    from dassl.data.datasets import Datum

    caspl_plugin.enable()
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(good)
    bad = truncated_jpeg(tmp_path / "bad.jpg")
    cfg = tiny_cfg(tmp_path, tmp_path / "out", "CoOp")
    wrapper = DatasetWrapper(cfg, [Datum(str(bad), 0, "a"), Datum(str(good), 1, "b")], transform=None)
    item = wrapper[0]
    assert item["impath"] == str(good) and item["label"] == 1
    assert f"Skipping unreadable image {bad}" in capsys.readouterr().out
