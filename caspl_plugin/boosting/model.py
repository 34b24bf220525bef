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
    """A frozen zero-shot CLIP teacher, read through open_clip's own towers (no prompts needed).

    Any open_clip model can teach (attention-pooled or ModifiedResNet image towers, timm trunks).
    The class text features are computed once from one template; the text tower is then not kept
    (only the image tower and the logit scale are, or nothing but the scale when
    ``image_tower=False``: a run that reads the teacher's image features from a cache).
    ``teacher`` is a :class:`~caspl_plugin.clip.Backbone` or a text-only
    :class:`~caspl_plugin.boosting.teacher.TextTower`.
    """

    def __init__(self, teacher, class_names: Sequence[str], template: str = "a photo of a {}.", *, image_tower: bool = True):
        super().__init__()
        from .teacher import image_size_of

        model = teacher.model
        self.name = teacher.name
        self.template = template
        self.class_names = tuple(str(n).replace("_", " ") for n in class_names)
        device = model.logit_scale.device
        with torch.no_grad():
            tokens = teacher.tokenizer([template.format(name) for name in self.class_names]).to(device)
            features = model.encode_text(tokens)
        self.register_buffer("text_features", F.normalize(features.float(), dim=-1), persistent=False)
        self.register_buffer("log_logit_scale", model.logit_scale.detach().float().clone().reshape(()), persistent=False)
        self.visual: Optional[nn.Module] = None
        if image_tower:
            if getattr(model, "visual", None) is None:
                raise ValueError(f"Teacher {teacher.name!r} was built without its image tower")
            self.visual = model.visual
            self.image_size = image_size_of(model)
            self.register_buffer("mean", torch.tensor([float(v) for v in teacher.mean]).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor([float(v) for v in teacher.std]).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "ZeroShotTeacher":
        return super().train(False)

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp()

    def _image_tower(self) -> nn.Module:
        if self.visual is None:
            raise RuntimeError(f"Teacher {self.name!r} has no image tower here: pass its cached image features (teacher_features)")
        return self.visual

    def prepare(self, images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
        """Views normalised with ``mean``/``std`` (e.g. the student's), as the teacher's input:
        un-normalised, resized (bicubic) to the teacher's size and normalised with its mean/std."""
        self._image_tower()
        size = self.image_size
        mean_in = torch.as_tensor([float(v) for v in mean], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std_in = torch.as_tensor([float(v) for v in std], dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        same_norm = torch.equal(mean_in, self.mean.to(images)) and torch.equal(std_in, self.std.to(images))
        same_size = images.shape[-1] == size and images.shape[-2] == size
        if same_norm and same_size:
            return images
        pixels = images * std_in + mean_in
        if not same_size:
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
        return (pixels - self.mean.to(images)) / self.std.to(images)

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        """L2-normalised image features ``[B, D]`` (fp32) of views already prepared for the teacher."""
        return F.normalize(self._image_tower()(images).float(), dim=-1)

    def logits_from_features(self, features: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        """Teacher logits from L2-normalised image features (e.g. read from a teacher-view cache)."""
        scale = self.logit_scale if scale is None else scale
        return scale * features.float().to(self.text_features.device) @ self.text_features.t()

    @torch.no_grad()
    def forward(self, images: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        """Teacher logits ``[B, C]`` = scale · cos(image, class text); its own scale by default."""
        return self.logits_from_features(self.image_features(images), scale)


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

    def _teacher_scale(self) -> Optional[Tensor]:
        return self.student.clip.logit_scale if self.teacher_scale == "student" else None

    def teacher_logits(self, images: Tensor) -> Tensor:
        """Teacher logits of student-normalised views (re-normalised and resized for the teacher)."""
        clip = self.student.clip
        return self.teacher(self.teacher.prepare(images, clip.mean, clip.std), scale=self._teacher_scale())

    def loss(
        self,
        images: Tensor,
        labels: Optional[Tensor] = None,
        *,
        teacher_logits: Optional[Tensor] = None,
        teacher_features: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict]:
        """KD loss on a batch; ``labels`` are accepted for a uniform signature and never read.

        The teacher's side comes from ``teacher_logits``, else from its L2-normalised image
        features ``teacher_features`` ``[B, D]`` (a teacher-view cache), else from its image tower.
        """
        del labels
        if teacher_logits is None and teacher_features is not None:
            teacher_logits = self.teacher.logits_from_features(teacher_features, self._teacher_scale())
        if teacher_logits is None:
            teacher_logits = self.teacher_logits(images)
        student_logits = self.student(images)
        loss = kd_loss(student_logits, teacher_logits.to(student_logits.device), self.temperature)
        agree = (student_logits.argmax(-1) == teacher_logits.to(student_logits.device).argmax(-1)).float().mean()
        return loss, {"loss": loss.detach(), "agree": agree}


def build_distiller(
    student: "Backbone",
    teacher,
    class_names: Sequence[str],
    template: str = "a photo of a {}.",
    config: BoostingConfig = BoostingConfig(),
    *,
    temperature: float = 1.0,
    teacher_scale: str = "own",
    generator: Optional[torch.Generator] = None,
    teacher_image_tower: bool = True,
) -> BoostingDistiller:
    """Student (frozen CLIP + learnable boosting group) and zero-shot teacher, ready to train.

    ``teacher`` is a :class:`~caspl_plugin.clip.Backbone` (any open_clip CLIP), a text-only
    :class:`~caspl_plugin.boosting.teacher.TextTower`, or a ready :class:`ZeroShotTeacher` for
    ``class_names`` and ``template`` (used as is); ``teacher_image_tower=False`` keeps no
    image tower (the teacher's image features then come from a cache). Drop your own reference to
    ``teacher`` afterwards to free its text tower: the distiller keeps only the class features.
    """
    student_clip = PromptedCLIP(student)
    group = make_boosting_group(student_clip, config, generator=generator)
    if not isinstance(teacher, ZeroShotTeacher):
        has_image_tower = teacher_image_tower and getattr(teacher.model, "visual", None) is not None
        teacher = ZeroShotTeacher(teacher, class_names, template, image_tower=has_image_tower)
    return BoostingDistiller(
        boosting_student(student_clip, class_names, group),
        teacher,
        temperature=temperature,
        teacher_scale=teacher_scale,
    )
