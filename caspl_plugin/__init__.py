"""caspl-plugin: Cascade Prompt Learning (CasPL) for CLIP models.

Layers (each imports only the ones above it):

- :mod:`caspl_plugin.clip`      backbones: open_clip names, OpenAI/local weights, tokenizer
- :mod:`caspl_plugin.prompts`   the one prompt-placement mechanism (groups, layout, prompted encoders)
- :mod:`caspl_plugin.boosting`  phase 1: boosting prompts distilled from a zero-shot teacher
- :mod:`caspl_plugin.methods`   phase 2: CoOp, CoCoOp, IVLP, MaPLe, PromptSRC and the cascade
- :mod:`caspl_plugin.plugin`    pluggy hooks and the Dassl integration (Dassl imported lazily)
"""
from .version import __version__


def enable(compat=None):
    """Plug CasPL into a Dassl project (see :func:`caspl_plugin.plugin.manager.enable`)."""
    from .plugin.manager import enable as _enable

    return _enable(compat)
