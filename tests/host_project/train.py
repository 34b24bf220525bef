"""The host's ``train.py``, as CoOp-family forks write it: ``clean_cfg`` imported by name at the top
(before ``caspl_plugin.enable()`` runs) and called in ``setup_cfg`` before the config files and the
command-line options are merged, keeping only the host's own trainer node."""
import argparse

import torch
from dassl.config import clean_cfg, get_cfg_default
from dassl.engine import build_trainer
from dassl.utils import set_random_seed, setup_logger

from . import trainers

import caspl_plugin; caspl_plugin.enable()  # noqa: E402,E702  the one line the host adds

#: the trainer whose node this host keeps when it cleans its config
HOST_TRAINER = "HostCoOp"


def reset_cfg(cfg, args):
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.seed:
        cfg.SEED = args.seed
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer


def setup_cfg(args):
    cfg = get_cfg_default()
    trainers.extend_cfg(cfg)
    clean_cfg(cfg, HOST_TRAINER)  # only show the host's trainer in print(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    reset_cfg(cfg, args)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--root", type=str, default="")
    p.add_argument("--output-dir", type=str, default="")
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--trainer", type=str, default="")
    p.add_argument("--config-file", type=str, default="")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--model-dir", type=str, default="")
    p.add_argument("--load-epoch", type=int)
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER)
    return p


def main(argv):
    args = parser().parse_args(argv)
    cfg = setup_cfg(args)
    if cfg.SEED >= 0:
        set_random_seed(cfg.SEED)
    setup_logger(cfg.OUTPUT_DIR)
    torch.manual_seed(0)  # the host's context init
    trainer = build_trainer(cfg)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return trainer
    trainer.train()
    return trainer
