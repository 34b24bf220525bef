"""caspl-plugin: Cascade Prompt Learning (CasPL) for CLIP models.

Layers, top to bottom: each imports only the ones below it (function-level imports too), checked by
``lint-imports`` (``.importlinter``); packages on one line do not import each other.

- :mod:`~caspl_plugin.cli`                 the ``caspl`` command: thin commands over the front doors below
- :mod:`~caspl_plugin.demo`, :mod:`~caspl_plugin.validation`
                                           the embedded demos; what ``caspl inspect`` checks per file kind
- :mod:`~caspl_plugin.cache`, :mod:`~caspl_plugin.export`, :mod:`~caspl_plugin.plugin`
                                           the teacher-view cache; ONNX export and its torch-free runtime;
                                           pluggy hooks and the Dassl integration (Dassl imported lazily)
- :mod:`~caspl_plugin.boosting`, :mod:`~caspl_plugin.inference`
                                           phase 1 (distiller, teacher, ``run_distillation``); classifiers
                                           loaded back for prediction
- :mod:`~caspl_plugin.methods`             phase 2: CoOp, CoCoOp, IVLP, MaPLe, PromptSRC, the cascade,
                                           ``run_adaptation``
- :mod:`~caspl_plugin.engine`, :mod:`~caspl_plugin.clip`, :mod:`~caspl_plugin.report`
                                           the one training loop and step; backbones and weights; result tables
- :mod:`~caspl_plugin.prompts`, :mod:`~caspl_plugin.data`, :mod:`~caspl_plugin.toy`, :mod:`~caspl_plugin.threads`,
  :mod:`~caspl_plugin.resources`           the one prompt mechanism; datasets and images; the toy domain;
                                           CPU threads; shipped configs and scripts
- :mod:`~caspl_plugin.artifacts`, :mod:`~caspl_plugin.distributed`, :mod:`~caspl_plugin.prediction`
                                           every file format we write; torch.distributed helpers; a prediction
- :mod:`~caspl_plugin.files`, :mod:`~caspl_plugin.names`, :mod:`~caspl_plugin.version`
                                           atomic writes and canonical JSON; the class-name rule; the version

The repository's ``trainers/`` (installed as ``caspl_plugin.trainers``) are thin Dassl adapters over
the engine and the methods.
"""
from .version import __version__  # noqa: F401  (caspl_plugin.__version__)


def enable(compat=None):
    """Plug CasPL into a Dassl project (see :func:`caspl_plugin.plugin.manager.enable`)."""
    from .plugin.manager import enable as _enable

    return _enable(compat)
