"""Shared pieces of the Dassl tests: a tiny DTD-layout dataset and tiny-CLIP configs (CPU, seconds)."""
from __future__ import annotations

from pathlib import Path

DTD_SPLIT = "split_zhou_DescribableTextures.json"


def make_dtd(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    """The toy domain written in the DTD layout: ``root/dtd/images/<class>/*.png`` + its split file."""
    from caspl_plugin.toy import domain

    folder = domain.write_coop_layout(
        root, dataset_dir="dtd", train_per_class=train_per_class, val_per_class=1,
        test_per_class=test_per_class, seed=0,
    )
    (Path(folder) / domain.COOP_SPLIT_FILE).rename(Path(folder) / DTD_SPLIT)
    return root


def tiny_options(root: Path, output_dir: Path, trainer: str, epochs: int = 1) -> list:
    """The command-line options of a run of ``trainer`` on the tiny CLIPs and the DTD-layout data."""
    return [
        "DATASET.NAME", "DescribableTextures", "DATASET.ROOT", str(root),
        "OUTPUT_DIR", str(output_dir), "TRAINER.NAME", trainer, "SEED", 1, "USE_CUDA", False,
        "MODEL.BACKBONE.NAME", "caspl-tiny-student",
        "INPUT.SIZE", (32, 32), "INPUT.INTERPOLATION", "bicubic",
        "INPUT.PIXEL_MEAN", [0.48145466, 0.4578275, 0.40821073],
        "INPUT.PIXEL_STD", [0.26862954, 0.26130258, 0.27577711],
        "INPUT.TRANSFORMS", ["random_resized_crop", "random_flip", "normalize"],
        "DATALOADER.NUM_WORKERS", 0, "DATALOADER.TRAIN_X.BATCH_SIZE", 8, "DATALOADER.TEST.BATCH_SIZE", 64,
        "OPTIM.NAME", "sgd", "OPTIM.LR", 0.01, "OPTIM.MAX_EPOCH", epochs, "OPTIM.LR_SCHEDULER", "cosine",
        "OPTIM.WARMUP_EPOCH", 1, "OPTIM.WARMUP_TYPE", "constant", "OPTIM.WARMUP_CONS_LR", 1e-5,
        "TRAIN.PRINT_FREQ", 100, "TRAINER.BOOSTDISTILL.TEACHER", "caspl-tiny-teacher",
        "TRAINER.BOOSTDISTILL.N_CTX_TEXT", 2, "TRAINER.BOOSTDISTILL.N_CTX_VISION", 2,
    ]


def tiny_cfg(root: Path, output_dir: Path, trainer: str, *opts, epochs: int = 1):
    """A Dassl config for ``trainer`` on the tiny CLIPs and the DTD-layout dataset at ``root``."""
    import caspl_plugin
    from dassl.config import get_cfg_default

    caspl_plugin.enable()
    cfg = get_cfg_default()
    cfg.merge_from_list(tiny_options(root, output_dir, trainer, epochs))
    for node in ("COOP", "COCOOP", "IVLP", "MAPLE", "PROMPTSRC"):
        cfg.TRAINER[node].PREC = "fp32"
    cfg.TRAINER.COOP.N_CTX = 4
    cfg.TRAINER.COCOOP.N_CTX = 2
    cfg.TRAINER.COCOOP.CTX_INIT = ""
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg
