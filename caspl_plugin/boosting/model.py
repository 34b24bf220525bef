"""Phase 1 of CasPL: a frozen student CLIP with learnable boosting prompts, distilled from a frozen
zero-shot teacher CLIP by a temperature-scaled KL loss on unlabeled images (labels are never read).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..methods.base import PromptModel
from ..prompts import PromptedCLIP, PromptGroup, PromptSpec

if TYPE_CHECKING:
    from ..clip import Backbone

#: The official text initialisation, used when the boosting group has at most 4 text tokens.
CTX_INIT = "a photo of a"


@dataclass(frozen=True)
class BoostingConfig:
    """Boosting-prompt geometry (official defaults: 8 text + 8 vision tokens, depth 12 in both)."""

    n_text: int = 8
    n_vision: int = 8
    depth_text: int = 12
    depth_vision: int = 12
    init_std: float = 0.02
    ctx_init: str = CTX_INIT

    def spec_for(self, clip: PromptedCLIP) -> PromptSpec:
        """The spec with depths limited to the student's number of blocks."""
        return PromptSpec(self.n_text, self.n_vision, self.depth_text, self.depth_vision).clamped(
            clip.text_depth, clip.vision_depth
        )


def make_boosting_group(
    clip: PromptedCLIP,
    config: BoostingConfig = BoostingConfig(),
    *,
    learnable: bool = True,
    generator: Optional[torch.Generator] = None,
) -> PromptGroup:
    """A boosting group for ``clip``: random N(0, std) init; text layer 0 from "a photo of a" when
    it has at most 4 tokens (the authors' rule)."""
    spec = config.spec_for(clip)
    text_init = None
    if config.ctx_init and 0 < spec.n_text <= 4:
        text_init = clip.word_embeddings(config.ctx_init, spec.n_text)
    return PromptGroup(
        "boosting", "boosting", spec, clip.text_width, clip.vision_width,
        learnable=learnable, std=config.init_std, text_init=text_init, generator=generator,
    )


def boosting_student(clip: PromptedCLIP, class_names: Sequence[str], group: PromptGroup) -> PromptModel:
    """The phase-1 student: the frozen CLIP with one boosting group and no other prompts.

    Its class prompts are ``[SOS][boosting]{class}.[EOS]`` as in the authors' code.
    """
    return PromptModel(clip, class_names, template="{}.", boosting=group, learnable_boosting=group.learnable)


class ZeroShotTeacher(nn.Module):
    """A frozen zero-shot CLIP: class text features computed once from one template and reused."""

    def __init__(self, clip: PromptedCLIP, class_names: Sequence[str], template: str = "a photo of a {}."):
        super().__init__()
        self.clip = clip
        self.template = template
        self.class_names = tuple(str(n).replace("_", " ") for n in class_names)
        with torch.no_grad():
            features = clip.encode_text(clip.text_inputs(self.class_names, template=template))
        self.register_buffer("text_features", F.normalize(features.float(), dim=-1), persistent=False)

    @torch.no_grad()
    def class_features(self, class_names: Sequence[str], template: str) -> Tensor:
        """Normalised class text features ``[C, D]`` of another class set (multi-domain phase 1)."""
        names = tuple(str(n).replace("_", " ") for n in class_names)
        features = self.clip.encode_text(self.clip.text_inputs(names, template=template))
        return F.normalize(features.float(), dim=-1).to(self.text_features.device)

    def train(self, mode: bool = True) -> "ZeroShotTeacher":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor, scale: Optional[Tensor] = None, text_features: Optional[Tensor] = None) -> Tensor:
        """Teacher logits ``[B, C]`` = scale · cos(image, class text); its own scale and class set by default."""
        image = F.normalize(self.clip.encode_image(images).float(), dim=-1)
        scale = self.clip.logit_scale if scale is None else scale
        text_features = self.text_features if text_features is None else text_features
        return scale * image @ text_features.t()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(softmax(teacher/T) ‖ softmax(student/T)) · T², summed over classes, mean over the batch."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ")
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


class BoostingDistiller(nn.Module):
    """Student + teacher + KD loss: the training objective of the boosting phase.

    ``teacher_scale="own"`` gives each model its own logit scale (the default); ``"student"`` uses
    the student's scale for the teacher too (what the authors' code does; both are 100 with OpenAI
    weights).
    """

    def __init__(self, student: PromptModel, teacher: ZeroShotTeacher, temperature: float = 1.0, teacher_scale: str = "own"):
        super().__init__()
        if teacher_scale not in ("own", "student"):
            raise ValueError(f"teacher_scale must be 'own' or 'student', got {teacher_scale!r}")
        if tuple(student.class_names) != tuple(teacher.class_names):
            raise ValueError("Student and teacher must use the same class names in the same order")
        self.student, self.teacher = student, teacher
        self.temperature, self.teacher_scale = float(temperature), teacher_scale
        self.domains: tuple = ()

    def set_domains(self, domains: Sequence) -> None:
        """Several class sets (multi-domain phase 1), each with ``name``, ``class_names``, ``template``:
        the teacher's class features per domain are computed once here; each batch selects its
        domain's class set (``loss(..., domain=...)``) for the teacher and the student."""
        domains = tuple(domains)
        if not domains:
            raise ValueError("set_domains needs at least one domain")
        for i, d in enumerate(domains):
            self.register_buffer(f"domain_text_features_{i}", self.teacher.class_features(d.class_names, d.template), persistent=False)
        self.domains = domains
        self.student.set_class_names(domains[0].class_names)

    def class_set_identity(self) -> list:
        """What a checkpoint must match: the class names, or every domain's name, classes and template."""
        if not self.domains:
            return list(self.student.class_names)
        return [{"name": d.name, "class_names": list(d.class_names), "template": d.template} for d in self.domains]

    def select_domain(self, domain: Optional[Tensor]) -> Optional[int]:
        """The batch's domain index (None: single class set); switches the student's class set."""
        if domain is None:
            if len(self.domains) > 1:
                raise ValueError(f"this distiller has {len(self.domains)} domains: loss() needs the batch's domain")
            return None
        domain = torch.as_tensor(domain).reshape(-1)
        index = int(domain[0])
        if bool((domain != index).any()):
            raise ValueError(f"a batch mixes domains {sorted(set(domain.tolist()))}: every batch must come from one domain")
        if not self.domains:
            if index != 0:
                raise ValueError(f"domain {index} given, but this distiller has one class set")
            return None
        if not 0 <= index < len(self.domains):
            raise ValueError(f"domain {index} out of range: this distiller has {len(self.domains)} domains")
        names = tuple(str(n).replace("_", " ") for n in self.domains[index].class_names)
        if self.student.class_names != names:
            self.student.set_class_names(names)
        return index

    def teacher_logits(self, images: Tensor, domain: Optional[int] = None) -> Tensor:
        scale = self.student.clip.logit_scale if self.teacher_scale == "student" else None
        images = _resize_for(self.teacher.clip, images)
        features = None if domain is None or not self.domains else getattr(self, f"domain_text_features_{domain}")
        return self.teacher(images, scale=scale, text_features=features)

    def loss(self, images: Tensor, labels: Optional[Tensor] = None, teacher_logits: Optional[Tensor] = None,
             *, domain: Optional[Tensor] = None) -> tuple[Tensor, dict]:
        """KD loss on a batch; ``labels`` are accepted for a uniform signature and never read.

        ``domain`` (multi-domain: one index per sample, all equal) selects the batch's class set.
        """
        del labels
        index = self.select_domain(domain)
        if teacher_logits is None:
            teacher_logits = self.teacher_logits(images, index)
        student_logits = self.student(images)
        loss = kd_loss(student_logits, teacher_logits.to(student_logits.device), self.temperature)
        agree = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()
        return loss, {"loss": loss.detach(), "agree": agree}


def _resize_for(clip: PromptedCLIP, images: Tensor) -> Tensor:
    """The same augmented batch, resized if the teacher's input size differs from the student's."""
    size = clip.geometry["image_size"]
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)


PHASE1_MIN_CLASSES = (
    "phase 1 (boosting distillation) needs at least 2 classes: with one class the softmax is always 1 "
    "and the distillation loss is always 0"
)


def build_distiller(
    student: "Backbone",
    teacher: "Backbone",
    class_names: Sequence[str],
    template: str = "a photo of a {}.",
    config: BoostingConfig = BoostingConfig(),
    *,
    temperature: float = 1.0,
    teacher_scale: str = "own",
    generator: Optional[torch.Generator] = None,
    domains: Optional[Sequence] = None,
) -> BoostingDistiller:
    """Student (frozen CLIP + learnable boosting group) and zero-shot teacher, ready to train.

    ``domains`` (multi-domain phase 1: objects with ``name``, ``class_names``, ``template``, e.g.
    :class:`caspl_plugin.data.domains.DomainClassSet`) replace ``class_names`` and ``template``.
    """
    if domains:
        class_names, template = domains[0].class_names, domains[0].template
    if len(class_names) < 2:
        raise ValueError(f"got {len(class_names)} class name(s); {PHASE1_MIN_CLASSES}")
    student_clip, teacher_clip = PromptedCLIP(student), PromptedCLIP(teacher)
    group = make_boosting_group(student_clip, config, generator=generator)
    distiller = BoostingDistiller(
        boosting_student(student_clip, class_names, group),
        ZeroShotTeacher(teacher_clip, class_names, template),
        temperature=temperature,
        teacher_scale=teacher_scale,
    )
    if domains:
        distiller.set_domains(domains)
    return distiller
