"""A phase-1 run on the tiny CLIPs, launched by tests/test_distributed.py under torchrun (or in one process).

Deterministic views (resize + centre crop), so one process and N processes with the same global
batch must end on the same prompts. Every artifact write is logged per rank in ``<out>/writes-rank<R>.log``.

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_worker.py OUT --batch-size 2
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch


def run(out: Path, images: Path, batch_size: int, epochs: int = 2, resume: bool = False, crash_after: int = 0) -> dict:
    from caspl_plugin import distributed
    from caspl_plugin.artifacts import store
    from caspl_plugin.boosting import BoostingConfig, DistillSettings, build_distiller, run_distillation
    from caspl_plugin.clip import create_clip
    from caspl_plugin.data.unlabeled import UnlabeledImages, eval_transform, list_images

    distributed.setup(torch.device("cpu"))
    real_write = store.atomic_write

    def logged_write(path, *args, **kwargs):
        with open(out / f"writes-rank{distributed.rank()}.log", "a", encoding="utf-8") as log:
            log.write(f"{Path(path).name}\n")
        return real_write(path, *args, **kwargs)

    store.atomic_write = logged_write
    torch.manual_seed(0)
    student = create_clip("caspl-tiny-student")
    torch.manual_seed(1)
    teacher = create_clip("caspl-tiny-teacher")
    names = ["red circle", "blue square", "green triangle", "yellow star"]
    distiller = build_distiller(student, teacher, names, config=BoostingConfig(2, 2, 2, 2), generator=torch.Generator().manual_seed(0))
    dataset = UnlabeledImages(list_images(images)[:12], eval_transform(32, student.mean, student.std))

    def crash(epoch: int, loss: float) -> None:
        if crash_after and epoch + 1 == crash_after:
            raise KeyboardInterrupt(f"simulated interruption after epoch {epoch + 1}")

    settings = DistillSettings(epochs=epochs, batch_size=batch_size, lr=0.05, warmup_epochs=0)
    report = run_distillation(distiller, dataset, settings, checkpoint=out / "run.ckpt.safetensors", resume=resume,
                              progress=False, on_epoch_end=crash)
    prompts = {k: v.detach().clone() for k, v in distiller.student.boosting.tensors().items()}
    if distributed.is_main():
        store.save_artifact(out / "prompts.safetensors", prompts, {"format": "test-prompts", "format_version": 1, "losses": report.epoch_losses})
    distributed.cleanup()
    return prompts


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--crash-after", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(run(args.out, args.images, args.batch_size, resume=args.resume, crash_after=args.crash_after) and 0)
