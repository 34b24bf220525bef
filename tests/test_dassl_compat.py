"""The Dassl compatibility layer against the real Dassl (skipped without it)."""
import inspect
import logging
import math
import pickle

import pytest

pytest.importorskip("dassl")

import numpy
import torch
from dassl.config import get_cfg_default
from dassl.engine.trainer import TrainerBase
from dassl.optim import build_lr_scheduler, build_optimizer, lr_scheduler
from PIL import Image

from caspl_plugin.plugin import dassl_compat


@pytest.fixture
def fresh():
    """Start unpatched (yields the original warm-up ``__init__``); afterwards restore the session's state."""
    before = dassl_compat.applied_patches()
    dassl_compat.revert()
    yield lr_scheduler._BaseWarmupScheduler.__init__
    dassl_compat.revert()
    if before:
        dassl_compat.apply()


@pytest.fixture
def patched(fresh, monkeypatch):
    monkeypatch.delenv(dassl_compat.ENV_SWITCH, raising=False)
    return dassl_compat.apply()


def optim_cfg(max_epoch=4):
    cfg = get_cfg_default().OPTIM
    cfg.NAME, cfg.LR, cfg.LR_SCHEDULER, cfg.MAX_EPOCH = "sgd", 0.1, "cosine", max_epoch
    cfg.WARMUP_EPOCH, cfg.WARMUP_TYPE, cfg.WARMUP_CONS_LR = 1, "constant", 1e-5
    return cfg


def training_state(epochs=2):
    """A model, SGD and warm-up+cosine scheduler after ``epochs`` epochs of one step each."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, optim_cfg())
    scheduler = build_lr_scheduler(optimizer, optim_cfg())
    for _ in range(epochs):
        model(torch.randn(4, 3)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def lr_trace(optimizer, scheduler, epochs):
    trace = []
    for _ in range(epochs):
        trace.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return trace


def test_warmup_cosine_scheduler_builds_after_apply(fresh):
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, optim_cfg())
    if "verbose" not in inspect.signature(torch.optim.lr_scheduler.LRScheduler.__init__).parameters:
        with pytest.raises(TypeError):
            build_lr_scheduler(optimizer, optim_cfg())
    assert "warmup_init" in dassl_compat.apply()
    scheduler = build_lr_scheduler(optimizer, optim_cfg())
    trace = lr_trace(optimizer, scheduler, 4)
    cosine = [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(3)]  # successor restarts after warm-up
    assert trace[0] == 1e-5 and trace[1:] == pytest.approx(cosine)


def test_new_checkpoint_is_weights_only_and_resumes(patched, tmp_path):
    from dassl.utils import resume_from_checkpoint, save_checkpoint

    model, optimizer, scheduler = training_state(epochs=2)
    state = {"state_dict": model.state_dict(), "epoch": 2, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "val_result": None}
    save_checkpoint(state, str(tmp_path))
    raw = torch.load(tmp_path / "model.pth.tar-2", weights_only=True)
    assert isinstance(raw["scheduler"]["successor"], dict)

    fresh_model, fresh_optimizer, fresh_scheduler = training_state(epochs=0)
    with torch.no_grad():
        fresh_model.weight.zero_()
    assert resume_from_checkpoint(str(tmp_path), fresh_model, fresh_optimizer, fresh_scheduler) == 2
    assert torch.equal(fresh_model.weight, model.weight)
    assert lr_trace(fresh_optimizer, fresh_scheduler, 2) == lr_trace(optimizer, scheduler, 2)


def test_load_model_of_epoch_checkpoint_with_val_result_none(patched, tmp_path):
    from dassl.utils import save_checkpoint

    model, optimizer, scheduler = training_state()
    save_checkpoint({"state_dict": model.state_dict(), "epoch": 2, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "val_result": None}, str(tmp_path / "net"))
    trainer = TrainerBase()
    target = torch.nn.Linear(3, 2)
    trainer.register_model("net", target, None, None)
    trainer.load_model(str(tmp_path), epoch=2)
    assert torch.equal(target.weight, model.weight)


class _Tripwire:
    """Unpickled plainly, this would create ``path`` (i.e. run code named by the file)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_legacy_checkpoint_loads_weights_without_executing(patched, tmp_path, caplog):
    import dassl.engine.trainer
    import dassl.utils
    from dassl.utils import resume_from_checkpoint

    model, optimizer, scheduler = training_state()
    legacy_scheduler = torch.optim.lr_scheduler.LRScheduler.state_dict(scheduler)  # pickles the successor
    legacy_scheduler["tripwire"] = _Tripwire(tmp_path / "executed")
    path = tmp_path / "net" / "model.pth.tar-2"
    path.parent.mkdir()
    torch.save({"state_dict": model.state_dict(), "epoch": 2, "optimizer": optimizer.state_dict(),
                "scheduler": legacy_scheduler, "val_result": 61.5}, path)
    (path.parent / "checkpoint").write_text("model.pth.tar-2\n")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    assert dassl.engine.trainer.load_checkpoint is dassl_compat.load_checkpoint
    with caplog.at_level(logging.WARNING, logger=dassl_compat.__name__):
        checkpoint = dassl.utils.load_checkpoint(str(path))
    assert "scheduler" not in checkpoint and checkpoint["val_result"] == 61.5
    assert torch.equal(checkpoint["state_dict"]["weight"], model.weight)
    assert "dropped the scheduler state" in caplog.text
    assert not (tmp_path / "executed").exists()

    fresh_model, fresh_optimizer, fresh_scheduler = training_state(epochs=0)
    assert resume_from_checkpoint(str(path.parent), fresh_model, fresh_optimizer, fresh_scheduler) == 2
    assert torch.equal(fresh_model.bias, model.bias)
    momentum = fresh_optimizer.state[fresh_model.weight]["momentum_buffer"]
    assert torch.equal(momentum, optimizer.state[model.weight]["momentum_buffer"])
    assert not (tmp_path / "executed").exists()


def test_objects_outside_the_scheduler_are_refused(patched, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 1, "extra": _Tripwire(tmp_path / "executed")}, path)
    with pytest.raises(pickle.UnpicklingError, match="outside its scheduler entry"):
        dassl_compat.load_checkpoint(path)
    assert not (tmp_path / "executed").exists()


def test_numpy_int_for_augmentation_policies(fresh):
    from dassl.data.transforms import autoaugment, randaugment

    if hasattr(numpy, "int"):
        pytest.skip("this numpy still has np.int: nothing to patch")
    with pytest.raises(AttributeError):
        autoaugment.ImageNetPolicy()
    assert "numpy_int" in dassl_compat.apply()
    image = Image.new("RGB", (8, 8), (120, 30, 200))
    assert autoaugment.ImageNetPolicy()(image).size == (8, 8)
    assert randaugment.SolarizeAdd(image, addition=50).size == (8, 8)
    assert not hasattr(numpy, "int")  # the global numpy is untouched


def test_env_switch_disables(fresh, monkeypatch):
    monkeypatch.setenv(dassl_compat.ENV_SWITCH, "0")
    assert dassl_compat.apply() == []
    monkeypatch.delenv(dassl_compat.ENV_SWITCH)
    assert dassl_compat.apply(enable=False) == []
    assert dassl_compat.applied_patches() == []
    assert lr_scheduler._BaseWarmupScheduler.__init__ is fresh


def test_apply_twice_is_harmless_and_revert_restores(fresh, monkeypatch, caplog):
    import dassl.utils

    monkeypatch.delenv(dassl_compat.ENV_SWITCH, raising=False)
    with caplog.at_level(logging.INFO, logger=dassl_compat.__name__):
        first = dassl_compat.apply()
        patched_init = lr_scheduler._BaseWarmupScheduler.__init__
        assert dassl_compat.apply() == []
    assert {"warmup_init", "warmup_state", "load_checkpoint", "load_model"} <= set(first)
    assert [r.message for r in caplog.records].count(
        f"Dassl compatibility patches applied: {', '.join(first)} (disable with CASPL_DASSL_COMPAT=0)") == 1
    assert lr_scheduler._BaseWarmupScheduler.__init__ is patched_init
    training_state()  # builds and steps as usual
    dassl_compat.revert()
    assert lr_scheduler._BaseWarmupScheduler.__init__ is fresh
    assert dassl.utils.load_checkpoint is not dassl_compat.load_checkpoint
