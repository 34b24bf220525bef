"""What the ``caspl`` commands share: the user-facing error, the training commands' common options
(precision, TensorBoard, resume, text chunking), the device, torchrun and printing from rank 0."""
from __future__ import annotations

import argparse
import contextlib
import logging


#: what :func:`say` prints is logged here too (a run's log file listens; no console handler)
SAY_LOGGER = logging.getLogger("caspl_plugin.cli.say")
SAY_LOGGER.propagate = False
SAY_LOGGER.setLevel(logging.INFO)


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


#: --batch-size help of every training command (the lr is never rescaled silently)
BATCH_HELP = ("images per step and process; under torchrun the global batch is batch-size x the number of "
              "processes. The lr is used as given: to keep the authors' recipe (their lr at their batch) "
              "keep the global batch equal to theirs, e.g. --batch-size {half} with 2 processes")
PRECISION_HELP = ("fp32 (default); amp = autocast (fp16 on CUDA, bf16 on CPU); bf16 / fp16 = that dtype. "
                  "Weights and prompts stay fp32; fp16 on CUDA uses a gradient scaler")


def add_loop_arguments(group) -> None:
    """--precision, --tensorboard, --resume: the engine's options shared by every training command."""
    from caspl_plugin.engine import PRECISIONS

    group.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    group.add_argument("--tensorboard", metavar="DIR", help="write tensorboard scalars (train/loss, train/lr, ...) to DIR (rank 0)")
    group.add_argument("--resume", action="store_true", help="continue from the checkpoint next to the output (also under torchrun)")
    group.add_argument("--text-chunk", type=rows_per_pass, metavar="ROWS",
                       help="at most ROWS class prompts per text-tower pass, recomputed in the backward pass: the same "
                            "result in less memory, for class sets too large for it (e.g. ImageNet on a small GPU); "
                            "default: all classes in one pass")


def rows_per_pass(text: str) -> int:
    try:
        rows = int(text)
    except ValueError:
        rows = 0
    if rows < 1:
        raise argparse.ArgumentTypeError(f"expected a number of class prompts per pass >= 1, got {text!r}")
    return rows


def check_tensorboard(folder) -> None:
    """A clear error before training when --tensorboard is given but tensorboard is missing."""
    if folder is None:
        return
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise CommandError("--tensorboard needs the tensorboard package: pip install 'caspl-plugin[tensorboard]'") from None


def say(*lines: str) -> None:
    """Print to the user from rank 0 only (one copy under torchrun)."""
    from caspl_plugin import distributed

    if distributed.is_main():
        for line in lines:
            print(line)
            SAY_LOGGER.info("%s", line)


def device_of(value: str):
    import torch

    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(value)
    except RuntimeError as error:
        raise CommandError(f"--device {value!r} is not a device: {error}") from error


def run_distributed(args, body) -> int:
    """``body(args, device)`` in one process or as one rank of a torchrun job (the process group is
    joined first and left at the end; ranks other than 0 log warnings only)."""
    from caspl_plugin import distributed

    device = distributed.setup(device_of(args.device))
    if not distributed.is_main():
        logging.getLogger("caspl_plugin").setLevel(logging.WARNING)
    try:
        return body(args, device)
    finally:
        distributed.cleanup()


@contextlib.contextmanager
def in_user_words(weights_flag: str = "--weights", prompts_hint: str = ""):
    """Library errors re-worded for the command line: weights not found name ``weights_flag`` and
    ``--weights-dir`` (not Python arguments); a prompt that does not fit the context says which flag
    frees tokens (``prompts_hint``)."""
    from caspl_plugin.clip.weights import WeightsNotFoundError
    from caspl_plugin.prompts.layout import ContextTooShortError

    try:
        yield
    except WeightsNotFoundError as error:
        raise CommandError(error.describe(weights=f"{weights_flag} ", weights_dir="--weights-dir")) from None
    except ContextTooShortError as error:
        raise CommandError(f"{error}" + (f"; {prompts_hint}" if prompts_hint else "")) from None


def check_model_names(**flags: str) -> None:
    """Model names checked before any work, each error naming its flag (``student="ViT-B/16"`` ->
    ``--student``)."""
    from caspl_plugin.clip.names import resolve_model_name

    for flag, name in flags.items():
        try:
            resolve_model_name(name)
        except ValueError as error:
            raise CommandError(f"--{flag.replace('_', '-')}: {error}") from None
