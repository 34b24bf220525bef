"""The host's Dassl trainers, CoOp-style: a prompt learner, a text encoder pooling at the argmax of
the token ids, a ``CustomCLIP`` and a trainer with its own loss. ``HostIVLP`` is the IVLP-fork
variant (deep prompts inside the CLIP's blocks); ``HostVPT`` the vision-only one (VPT: prompts in the
image tower, class text features fixed from a template when the model is built, the whole model given
to the optimizer); ``HostZeroshotCLIP`` is CoOp's zero-shot trainer (a CLIP and class text features
from ``CUSTOM_TEMPLATES``, nothing to train) and ``HostZeroshotEnsemble`` its template-ensemble
variant; ``HostNoClip`` has no CLIP at all.

More host layouts: ``HostAnchored`` regularises against its own frozen zero-shot CLIP (hand-crafted
text features and frozen image features, computed in the loss), ``HostParallel`` wraps its model in
``DataParallel`` after registering the prompt learner, and :func:`colliding_coop` makes a host
trainer named ``CoOp`` (a name the plugin also uses) — registered by the test that needs it."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_checkpoint

from . import openai_clip as clip  # noqa: F401  (as CoOp's trainers import OpenAI's: `from clip import clip`)
from .openai_clip import build_clip, to_fp16, tokenizer


def extend_cfg(cfg):
    """The host's own config keys (what its train.py adds)."""
    cfg.TRAINER.HOSTCOOP = CN(dict(N_CTX=4, CTX_INIT="", CLASS_TOKEN_POSITION="end", PREC="fp32"))
    cfg.TRAINER.HOSTIVLP = CN(dict(N_CTX_TEXT=2, N_CTX_VISION=2, PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=2,
                                   CTX_INIT="", PREC="fp32"))
    cfg.TRAINER.HOSTANCHORED = CN(dict(N_CTX=4, CTX_INIT="", CLASS_TOKEN_POSITION="end", PREC="fp32",
                                       TEXT_WEIGHT=8.0, IMAGE_WEIGHT=8.0, TEMPLATE="a photo of a {}."))
    cfg.TRAINER.HOSTPARALLEL = CN(dict(N_CTX=4, CTX_INIT="", CLASS_TOKEN_POSITION="end", PREC="fp32"))
    cfg.TRAINER.HOSTVPT = CN(dict(N_CTX_VISION=2, PROMPT_DEPTH_VISION=2, PREC="fp32"))
    return cfg


class TextEncoder(nn.Module):
    def __init__(self, clip_model):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype

    def forward(self, prompts, tokenized_prompts):
        x = prompts + self.positional_embedding.to(self.dtype)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x).to(self.dtype)
        return x[torch.arange(x.shape[0]), tokenized_prompts.argmax(dim=-1)] @ self.text_projection


class PromptLearner(nn.Module):
    """``[SOS][ctx x n_ctx][class name . EOS]``: learned context, embeddings of the rest kept as buffers."""

    def __init__(self, classnames, clip_model, n_ctx: int, ctx_init: str = "", class_token_position: str = "end"):
        super().__init__()
        tokenize = tokenizer(clip_model.context_length)
        embed = clip_model.token_embedding
        if ctx_init:
            n_ctx = len(tokenize.encode(ctx_init))
            with torch.no_grad():
                ctx = embed(tokenize([ctx_init]))[0, 1:1 + n_ctx].to(clip_model.dtype)
            prefix = ctx_init
        else:
            ctx = torch.randn(n_ctx, embed.embedding_dim, dtype=clip_model.dtype) * 0.02
            prefix = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx)
        self.tokenized_prompts = tokenize([f"{prefix} {name.replace('_', ' ')}." for name in classnames])
        with torch.no_grad():
            embedding = embed(self.tokenized_prompts).to(clip_model.dtype)
        self.register_buffer("token_prefix", embedding[:, :1])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:])
        self.n_cls, self.n_ctx = len(classnames), n_ctx
        self.class_token_position = class_token_position

    def forward(self):
        if self.class_token_position != "end":
            raise NotImplementedError(self.class_token_position)
        ctx = self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


class CustomCLIP(nn.Module):
    def __init__(self, classnames, clip_model, **prompt_options):
        super().__init__()
        self.prompt_learner = PromptLearner(classnames, clip_model, **prompt_options)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def forward(self, image):
        image_features = self.image_encoder(image.to(self.dtype))
        text_features = self.text_encoder(self.prompt_learner(), self.tokenized_prompts)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * image_features @ text_features.t()


@TRAINER_REGISTRY.register()
class HostCoOp(TrainerX):
    """CoOp as a host project writes it: only the prompt learner trains, cross-entropy loss."""

    NODE = "HOSTCOOP"

    def build_clip(self):
        return build_clip(self.cfg.MODEL.BACKBONE.NAME)

    def prompt_options(self) -> dict:
        node = self.cfg.TRAINER[self.NODE]
        return dict(n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, class_token_position=node.CLASS_TOKEN_POSITION)

    def build_model(self):
        clip_model = self.build_clip()
        if self.cfg.TRAINER[self.NODE].PREC == "fp16":
            to_fp16(clip_model)
        self.model = self.custom_clip(clip_model)
        for name, param in self.model.named_parameters():
            param.requires_grad_(self.is_learnable(name))
        self.model.to(self.device)
        self.register_learnable()

    def custom_clip(self, clip_model):
        return CustomCLIP(self.dm.dataset.classnames, clip_model, **self.prompt_options())

    def is_learnable(self, name: str) -> bool:
        return "prompt_learner" in name

    def register_learnable(self):
        self.optim = build_optimizer(self.model.prompt_learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)

    def compute_loss(self, logits, label):
        return F.cross_entropy(logits, label)

    def forward_backward(self, batch):
        image, label = batch["img"].to(self.device), batch["label"].to(self.device)
        output = self.model(image)
        loss = self.compute_loss(output, label)
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}

    def load_model(self, directory, epoch=None):
        """CoOp's loader: the class-dependent token buffers come from the current class names."""
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            state_dict = load_checkpoint(f"{directory}/{name}/{model_file}")["state_dict"]
            for key in ("token_prefix", "token_suffix"):
                state_dict.pop(key, None)
            self._models[name].load_state_dict(state_dict, strict=False)


@TRAINER_REGISTRY.register()
class HostIVLP(HostCoOp):
    """The IVLP fork: deep text and vision prompts live in the CLIP's own blocks and vision tower."""

    NODE = "HOSTIVLP"

    def build_clip(self):
        node = self.cfg.TRAINER.HOSTIVLP
        return build_clip(self.cfg.MODEL.BACKBONE.NAME, text_prompts=(node.N_CTX_TEXT, node.PROMPT_DEPTH_TEXT),
                          vision_prompts=(node.N_CTX_VISION, node.PROMPT_DEPTH_VISION))

    def prompt_options(self) -> dict:
        node = self.cfg.TRAINER.HOSTIVLP
        return dict(n_ctx=node.N_CTX_TEXT, ctx_init=node.CTX_INIT)

    def is_learnable(self, name: str) -> bool:
        return "prompt_learner" in name or "VPT" in name

    def register_learnable(self):  # like IVLP: the whole model is registered (and saved)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("VLPromptLearner", self.model, self.optim, self.sched)


class AnchoredCLIP(CustomCLIP):
    """A ``CustomCLIP`` with its own frozen zero-shot CLIP (same weights) as the regulariser's anchor."""

    def __init__(self, classnames, clip_model, anchor_clip, template: str, **prompt_options):
        super().__init__(classnames, clip_model, **prompt_options)
        self.zs_clip = anchor_clip.requires_grad_(False)
        tokenize = tokenizer(anchor_clip.context_length)
        self.register_buffer("anchor_tokens", tokenize([template.format(n.replace("_", " ")) for n in classnames]))

    def features(self, image):
        image_features = self.image_encoder(image.to(self.dtype))
        text_features = self.text_encoder(self.prompt_learner(), self.tokenized_prompts)
        return F.normalize(image_features.float(), dim=-1), F.normalize(text_features.float(), dim=-1)

    @torch.no_grad()
    def anchor_features(self, image):
        image_features = self.zs_clip.encode_image(image)
        text_features = self.zs_clip.encode_text(self.anchor_tokens)
        return F.normalize(image_features.float(), dim=-1), F.normalize(text_features.float(), dim=-1)


@TRAINER_REGISTRY.register()
class HostAnchored(HostCoOp):
    """CoOp with a PromptSRC-style regulariser: L1 to the frozen zero-shot CLIP's text and image features."""

    NODE = "HOSTANCHORED"

    def custom_clip(self, clip_model):
        node = self.cfg.TRAINER.HOSTANCHORED
        anchor = build_clip(self.cfg.MODEL.BACKBONE.NAME)  # the same frozen weights, loaded again
        return AnchoredCLIP(self.dm.dataset.classnames, clip_model, anchor, node.TEMPLATE, **self.prompt_options())

    def is_learnable(self, name: str) -> bool:
        return "prompt_learner" in name and "zs_clip" not in name

    def regulariser(self, image, image_features, text_features):
        node = self.cfg.TRAINER.HOSTANCHORED
        anchor_image, anchor_text = self.model.anchor_features(image)
        return (node.TEXT_WEIGHT * F.l1_loss(text_features, anchor_text)
                + node.IMAGE_WEIGHT * F.l1_loss(image_features, anchor_image))

    def forward_backward(self, batch):
        image, label = batch["img"].to(self.device), batch["label"].to(self.device)
        image_features, text_features = self.model.features(image)
        output = self.model.logit_scale.exp() * image_features @ text_features.t()
        regulariser = self.regulariser(image, image_features, text_features)
        loss = self.compute_loss(output, label) + regulariser
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "regulariser": regulariser.item(), "acc": compute_accuracy(output, label)[0].item()}


@TRAINER_REGISTRY.register()
class HostParallel(HostCoOp):
    """CoOp as Dassl's trainers write it for several GPUs: the model is wrapped in ``DataParallel``."""

    NODE = "HOSTPARALLEL"

    def build_model(self):
        super().build_model()
        self.model = nn.DataParallel(self.model)


class FixedEmbeddings:
    """VPT's class text features: "a photo of a {class}." through CLIP's text encoder, once (not a module)."""

    def __init__(self, classnames, clip_model):
        tokens = clip.tokenize([f"a photo of a {name.replace('_', ' ')}." for name in classnames], clip_model.context_length)
        with torch.no_grad():
            self.fixed_embeddings = clip_model.encode_text(tokens)

    def return_fixed_embeddings(self):
        return self.fixed_embeddings


class VisionPromptCLIP(nn.Module):
    """VPT's ``CustomCLIP``: the prompted image tower against fixed class text features."""

    def __init__(self, classnames, clip_model):
        super().__init__()
        self.embeddings = FixedEmbeddings(classnames, clip_model)
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def forward(self, image):
        text_features = self.embeddings.return_fixed_embeddings().to(image.device)
        image_features = self.image_encoder(image.to(self.dtype))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * image_features @ text_features.t()


@TRAINER_REGISTRY.register()
class HostVPT(HostCoOp):
    """VPT as its host writes it: ``requires_grad`` on the ``VPT`` prompts only, the whole model in the optimizer."""

    NODE = "HOSTVPT"

    def build_clip(self):
        node = self.cfg.TRAINER.HOSTVPT
        return build_clip(self.cfg.MODEL.BACKBONE.NAME, vision_prompts=(node.N_CTX_VISION, node.PROMPT_DEPTH_VISION))

    def custom_clip(self, clip_model):
        return VisionPromptCLIP(self.dm.dataset.classnames, clip_model)

    def is_learnable(self, name: str) -> bool:
        return "VPT" in name

    def register_learnable(self):
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", self.model, self.optim, self.sched)


CUSTOM_TEMPLATES = {"DescribableTextures": "{} texture."}  # CoOp's zero-shot template per dataset


@TRAINER_REGISTRY.register()
class HostZeroshotCLIP(TrainerX):
    """CoOp's ``ZeroshotCLIP``: the class text features are computed once, from the dataset's template."""

    def templates(self) -> list[str]:
        return [CUSTOM_TEMPLATES[self.cfg.DATASET.NAME]]

    def build_model(self):
        clip_model = build_clip(self.cfg.MODEL.BACKBONE.NAME).to(self.device)
        names = [c.replace("_", " ") for c in self.dm.dataset.classnames]
        features = []
        for template in self.templates():
            prompts = clip.tokenize([template.format(name) for name in names], clip_model.context_length)
            with torch.no_grad():
                text_features = clip_model.encode_text(prompts.to(self.device))
            features.append(text_features / text_features.norm(dim=-1, keepdim=True))
        text_features = torch.stack(features).mean(0)
        self.text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        self.clip_model = clip_model

    def model_inference(self, image):
        image_features = self.clip_model.encode_image(image)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        return self.clip_model.logit_scale.exp() * image_features @ self.text_features.t()


@TRAINER_REGISTRY.register()
class HostZeroshotEnsemble(HostZeroshotCLIP):
    """CoOp's ``ZeroshotCLIP2``: class text features averaged over several templates."""

    def templates(self) -> list[str]:
        return ["a photo of a {}.", "itap of a {}.", "a bad photo of the {}."]


def colliding_coop() -> type:
    """A host trainer named ``CoOp`` — the name of one of the plugin's trainers (not registered here)."""
    return type("CoOp", (HostCoOp,), {"NODE": "COOP", "__module__": __name__,
                                       "__doc__": "The host's own CoOp, reading TRAINER.COOP."})


@TRAINER_REGISTRY.register()
class HostNoClip(TrainerX):
    """A linear probe on raw pixels: nothing CasPL could recognise as a CLIP."""

    def build_model(self):
        size = self.cfg.INPUT.SIZE
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * size[0] * size[1], self.num_classes)).to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.register_model("probe", self.model, self.optim, None)
