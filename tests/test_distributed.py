"""torchrun, 2 processes on CPU (gloo): the same trajectory as one process with the same global batch,
exact resume under torchrun, and only rank 0 writes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from caspl_plugin.artifacts.store import load_artifact

WORKER = Path(__file__).with_name("distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
import distributed_worker  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from caspl_plugin.toy import domain

    return domain.write_image_folder(tmp_path_factory.mktemp("toy") / "data", num_per_class=1, seed=0).images


@pytest.fixture(scope="module")
def one_process(images, tmp_path_factory):
    """The reference: one process, global batch 4."""
    out = tmp_path_factory.mktemp("single")
    return distributed_worker.run(out, images, batch_size=4)


def _torchrun(out: Path, images: Path, *extra: str) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(WORKER), str(out), "--images", str(images), "--batch-size", "2", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _prompts(out: Path) -> dict:
    return load_artifact(out / "prompts.safetensors", expected_format="test-prompts")[0]


def _assert_same(prompts: dict, reference: dict) -> None:
    assert set(prompts) == set(reference)
    for key in reference:
        assert (prompts[key] - reference[key]).abs().max().item() < 1e-5, key
    assert any((reference[k] != 0).any() for k in reference)


def test_two_processes_equal_one_process_resume_under_torchrun_and_only_rank_0_writes(images, one_process, tmp_path):
    """Epoch 1 under torchrun, interrupted; epoch 2 resumed under torchrun: the prompts of one process."""
    crashed = _torchrun(tmp_path, images, "--crash-after", "1")
    assert crashed.returncode != 0 and "simulated interruption after epoch 1" in crashed.stderr
    assert (tmp_path / "run.ckpt.safetensors").exists() and not (tmp_path / "prompts.safetensors").exists()
    after_epoch_1 = load_artifact(tmp_path / "run.ckpt.safetensors", expected_format="caspl-distill-checkpoint")[1]
    assert after_epoch_1["next_epoch"] == 1 and after_epoch_1["identity"]["world_size"] == 2
    resumed = _torchrun(tmp_path, images, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same(_prompts(tmp_path), one_process)
    metadata = load_artifact(tmp_path / "run.ckpt.safetensors", expected_format="caspl-distill-checkpoint")[1]
    assert metadata["next_epoch"] == 2 and metadata["steps"] == 6  # 12 images / global batch 4, per epoch
    assert not (tmp_path / "writes-rank1.log").exists()
    writes = (tmp_path / "writes-rank0.log").read_text().split()
    assert writes == ["run.ckpt.safetensors", "run.ckpt.safetensors", "prompts.safetensors"]


def test_resume_with_another_world_size_is_refused(images, tmp_path):
    from caspl_plugin.artifacts.store import ArtifactError

    distributed_worker.run(tmp_path, images, batch_size=2, epochs=1)
    metadata = load_artifact(tmp_path / "run.ckpt.safetensors", expected_format="caspl-distill-checkpoint")[1]
    assert metadata["identity"]["world_size"] == 1
    with pytest.raises(ArtifactError, match="world_size"):
        from caspl_plugin import engine

        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        engine.load_checkpoint(tmp_path / "run.ckpt.safetensors", format="caspl-distill-checkpoint", optimizer=optimizer,
                               identity={**metadata["identity"], "world_size": 2})


def test_caspl_distill_demo_runs_under_torchrun(tmp_path):
    """The documented command: ``torchrun --standalone --nproc-per-node 2 -m caspl_plugin.cli distill
    --demo --epochs 2 --out DIR`` trains with a global batch of 2 x 16 and rank 0 writes the artifact."""
    from caspl_plugin.artifacts.boosting import BoostingArtifact

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "caspl_plugin.cli", "distill", "--demo", "--epochs", "2", "--out", str(tmp_path), "--no-progress"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1 and "global batch 16 x 2 = 32" in result.stdout
    artifact = BoostingArtifact.load(tmp_path / "boosting.safetensors")
    assert artifact.metadata["training"]["steps"] == 8  # 144 images // 32, two epochs
    assert not list(tmp_path.glob(".*.tmp"))
