"""Phase 1 of CasPL: boosting prompts distilled from a zero-shot teacher on unlabeled images — the
distiller and teacher (:mod:`.model`, :mod:`.teacher`), the library's phase-1 front door
(:class:`DistillSettings` + :func:`run_distillation`, :func:`export_artifact`) and the import of the
authors' released phase-1 checkpoints (:mod:`.official`). Imports methods (its student is a prompt
model), engine, prompts, clip, artifacts and data; nothing here knows the CLI or Dassl."""
from .model import (
    BoostingConfig,
    BoostingDistiller,
    ZeroShotTeacher,
    boosting_student,
    build_distiller,
    kd_loss,
    make_boosting_group,
)
from .official import import_official
from .train import DistillReport, DistillSettings, export_artifact, run_distillation

__all__ = [
    "BoostingConfig", "BoostingDistiller", "ZeroShotTeacher", "boosting_student", "build_distiller",
    "kd_loss", "make_boosting_group", "DistillReport", "DistillSettings", "export_artifact", "run_distillation",
    "import_official",
]
