"""Shared fixtures: tiny random-weight CLIPs (seconds on a CPU) and offline hub settings."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_student():
    from caspl_plugin.clip import create_clip

    torch.manual_seed(0)
    return create_clip("caspl-tiny-student")


@pytest.fixture(scope="session")
def tiny_teacher():
    from caspl_plugin.clip import create_clip

    torch.manual_seed(1)
    return create_clip("caspl-tiny-teacher")


@pytest.fixture(scope="session")
def vit_b16():
    """ViT-B/16 with random weights (built once per session: ~2 s)."""
    from caspl_plugin.clip import create_clip

    torch.manual_seed(0)
    return create_clip("ViT-B/16", weights="random")


@pytest.fixture(autouse=True)
def _deterministic_rng():
    """Every test starts from the same RNG state, whatever ran before it (order-independent results)."""
    import random

    random.seed(0)
    torch.manual_seed(0)
    yield
