"""Phase 1 of CasPL: boosting prompts distilled from a zero-shot teacher on unlabeled images."""
from .model import (
    BoostingConfig,
    BoostingDistiller,
    ZeroShotTeacher,
    boosting_student,
    build_distiller,
    kd_loss,
    make_boosting_group,
)
from .train import DistillReport, DistillSettings, export_artifact, run_distillation

__all__ = [
    "BoostingConfig", "BoostingDistiller", "ZeroShotTeacher", "boosting_student", "build_distiller",
    "kd_loss", "make_boosting_group", "DistillReport", "DistillSettings", "export_artifact", "run_distillation",
]
