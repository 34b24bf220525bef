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
from ..prompts.text import encode_token_ids

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

    def __init__(self, teacher, class_names: Sequence[str], template: str = "a photo of a {}.", *, image_tower: bool = True,
                 class_sets: Sequence = ()):
        super().__init__()
        from .teacher import image_size_of

        model = teacher.model
        self.name = teacher.name
        self.template = template
        self.class_names = tuple(str(n).replace("_", " ") for n in class_names)
        device = model.logit_scale.device

        def encode(names: Sequence[str], template: str) -> Tensor:
            with torch.no_grad():
                tokens = teacher.tokenizer([template.format(str(n).replace("_", " ")) for n in names]).to(device)
                return F.normalize(encode_token_ids(model, tokens).float(), dim=-1)

        self.register_buffer("text_features", encode(self.class_names, template), persistent=False)
        # multi-domain phase 1: every domain's class features, computed now (the text tower is not
        # kept); a class set equal to the main one (the first domain's) shares its features
        self.num_class_sets = len(class_sets)
        for i, class_set in enumerate(class_sets):
            names = tuple(str(n).replace("_", " ") for n in class_set.class_names)
            same = names == self.class_names and class_set.template == template
            self.register_buffer(f"class_set_features_{i}", self.text_features if same else encode(names, class_set.template),
                                 persistent=False)
        self.register_buffer("log_logit_scale", model.logit_scale.detach().float().clone().reshape(()), persistent=False)
        self.visual: Optional[nn.Module] = None
        if image_tower:
            if getattr(model, "visual", None) is None:
                raise ValueError(f"Teacher {teacher.name!r} was built without its image tower")
            self.visual = model.visual
            self.image_size = image_size_of(model)
            self.register_buffer("mean", torch.tensor([float(v) for v in teacher.mean]).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor([float(v) for v in teacher.std]).view(1, -1, 1, 1), persistent=False)

    def class_set_features(self, index: Optional[int]) -> Tensor:
        """Class text features ``[C, D]`` of class set ``index`` (None: the main class set)."""
        if index is None:
            return self.text_features
        if not 0 <= index < self.num_class_sets:
            raise ValueError(f"class set {index} out of range: the teacher has {self.num_class_sets}")
        return getattr(self, f"class_set_features_{index}")

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

    def logits_from_features(self, features: Tensor, scale: Optional[Tensor] = None, class_set: Optional[int] = None) -> Tensor:
        """Teacher logits from L2-normalised image features (e.g. read from a teacher-view cache)
        over the main class set, or over class set ``class_set`` (multi-domain)."""
        scale = self.logit_scale if scale is None else scale
        text = self.class_set_features(class_set)
        return scale * features.float().to(text.device) @ text.t()

    @torch.no_grad()
    def forward(self, images: Tensor, scale: Optional[Tensor] = None, class_set: Optional[int] = None) -> Tensor:
        """Teacher logits ``[B, C]`` = scale · cos(image, class text); its own scale and main class set by default."""
        return self.logits_from_features(self.image_features(images), scale, class_set)


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
        """Several class sets (multi-domain phase 1), each with ``name``, ``class_names``, ``template``,
        in the order the teacher computed their class features (``ZeroShotTeacher(class_sets=...)``);
        each batch selects its domain's class set (``loss(..., domain=...)``) for teacher and student."""
        domains = tuple(domains)
        if not domains:
            raise ValueError("set_domains needs at least one domain")
        if self.teacher.num_class_sets != len(domains):
            raise ValueError(f"{len(domains)} domains, but the teacher has class features for {self.teacher.num_class_sets}: "
                             "build the teacher with class_sets=domains")
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

    def _teacher_scale(self) -> Optional[Tensor]:
        return self.student.clip.logit_scale if self.teacher_scale == "student" else None

    def teacher_logits(self, images: Tensor, domain: Optional[int] = None) -> Tensor:
        """Teacher logits of student-normalised views (re-normalised and resized for the teacher),
        over the class set of ``domain`` (a domain index; None: the single class set)."""
        clip = self.student.clip
        return self.teacher(self.teacher.prepare(images, clip.mean, clip.std), scale=self._teacher_scale(),
                            class_set=domain if self.domains else None)

    @torch.no_grad()
    def teacher_features(self, images: Tensor) -> Tensor:
        """The teacher's L2-normalised image features ``[B, D]`` of student-normalised views: what
        :meth:`loss` takes as ``teacher_features`` (independent of the class set, so one tensor
        serves every domain)."""
        clip = self.student.clip
        return self.teacher.image_features(self.teacher.prepare(images, clip.mean, clip.std))

    def loss(
        self,
        images: Tensor,
        labels: Optional[Tensor] = None,
        *,
        teacher_logits: Optional[Tensor] = None,
        teacher_features: Optional[Tensor] = None,
        domain: Optional[Tensor] = None,
    ) -> tuple[Tensor, dict]:
        """KD loss on a batch; ``labels`` are accepted for a uniform signature and never read.

        The teacher's side comes from ``teacher_logits``, else from its L2-normalised image
        features ``teacher_features`` ``[B, D]`` (a teacher-view cache), else from its image tower.
        ``domain`` (multi-domain: one index per sample, all equal) selects the batch's class set.
        """
        del labels
        index = self.select_domain(domain)
        if teacher_logits is None and teacher_features is not None:
            teacher_logits = self.teacher.logits_from_features(teacher_features, self._teacher_scale(),
                                                               index if self.domains else None)
        if teacher_logits is None:
            teacher_logits = self.teacher_logits(images, index)
        student_logits = self.student(images)
        loss = kd_loss(student_logits, teacher_logits.to(student_logits.device), self.temperature)
        agree = (student_logits.argmax(-1) == teacher_logits.to(student_logits.device).argmax(-1)).float().mean()
        return loss, {"loss": loss.detach(), "agree": agree}


PHASE1_MIN_CLASSES = (
    "phase 1 (boosting distillation) needs at least 2 classes: with one class the softmax is always 1 "
    "and the distillation loss is always 0"
)


def build_distiller(
    student: "Backbone",
    teacher,
    class_names: Optional[Sequence[str]],
    template: Optional[str] = "a photo of a {}.",
    config: BoostingConfig = BoostingConfig(),
    *,
    temperature: float = 1.0,
    teacher_scale: str = "own",
    generator: Optional[torch.Generator] = None,
    teacher_image_tower: bool = True,
    domains: Optional[Sequence] = None,
) -> BoostingDistiller:
    """Student (frozen CLIP + learnable boosting group) and zero-shot teacher, ready to train.

    ``teacher`` is a :class:`~caspl_plugin.clip.Backbone` (any open_clip CLIP), a text-only
    :class:`~caspl_plugin.boosting.teacher.TextTower`, or a ready :class:`ZeroShotTeacher` for
    ``class_names`` and ``template`` (used as is); ``teacher_image_tower=False`` keeps no
    image tower (the teacher's image features then come from a cache). Drop your own reference to
    ``teacher`` afterwards to free its text tower: the distiller keeps only the class features.
    ``domains`` (multi-domain phase 1: objects with ``name``, ``class_names``, ``template``, e.g.
    :class:`caspl_plugin.data.domains.DomainClassSet`) replace ``class_names`` and ``template``.
    """
    if domains:
        class_names, template = domains[0].class_names, domains[0].template
    if len(class_names) < 2:
        raise ValueError(f"got {len(class_names)} class name(s); {PHASE1_MIN_CLASSES}")
    student_clip = PromptedCLIP(student)
    group = make_boosting_group(student_clip, config, generator=generator)
    if not isinstance(teacher, ZeroShotTeacher):
        has_image_tower = teacher_image_tower and getattr(teacher.model, "visual", None) is not None
        teacher = ZeroShotTeacher(teacher, class_names, template, image_tower=has_image_tower, class_sets=domains or ())
    distiller = BoostingDistiller(
        boosting_student(student_clip, class_names, group),
        teacher,
        temperature=temperature,
        teacher_scale=teacher_scale,
    )
    if domains:
        distiller.set_domains(domains)
    return distiller
