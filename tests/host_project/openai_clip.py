"""A CLIP in the layout of OpenAI's ``clip`` package (as vendored by CoOp-derived projects), random weights.

Sequence-first transformers whose ``nn.Sequential`` blocks keep their own attention mask, QuickGELU
MLPs, a vision tower ``conv1 -> [CLS] + patches -> + pos -> ln_pre -> blocks -> ln_post([CLS]) @ proj``
and ``encode_text`` read at the argmax of the token ids (the EOT id is the largest). With
``text_prompts`` / ``vision_prompts`` the model is an IVLP fork: the first blocks own deep
``VPT_shallow`` prompts, and the vision tower appends its own ``VPT`` before ``ln_pre``.

Like ``clip/clip.py`` the module has ``_MODELS`` (name -> where the weights come from) and
``tokenize``; the host's trainers import it as ``clip``, as CoOp's do (``from clip import clip``).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

VOCAB_SIZE = 49408

GEOMETRIES = {
    "host-tiny": dict(embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=3, vision_heads=2,
                      context_length=32, text_width=48, text_layers=3, text_heads=2),
    "ViT-B/16": dict(embed_dim=512, image_size=224, patch_size=16, vision_width=768, vision_layers=12, vision_heads=12,
                     context_length=77, text_width=512, text_layers=12, text_heads=8),
}


#: the backbones this "package" can build (OpenAI's maps names to download URLs)
_MODELS = {name: f"random-weights://{name}" for name in GEOMETRIES}


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 for fp16 inputs."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block; with ``n_prompts`` it owns deep prompts that replace its input's prompt slice."""

    def __init__(self, width: int, heads: int, attn_mask=None, n_prompts: int = 0, text_layer: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = LayerNorm(width)
        self.attn_mask = attn_mask
        self.text_layer = text_layer
        self.n_prompts = n_prompts
        if n_prompts:
            self.VPT_shallow = nn.Parameter(torch.randn(n_prompts, width) * 0.02)

    def attention(self, x):
        mask = None if self.attn_mask is None else self.attn_mask.to(dtype=x.dtype, device=x.device)
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def swap_in_prompts(self, x):
        """Text: the prompts take rows ``1 .. n``; vision: the last ``n`` rows (sequence-first)."""
        prompts = self.VPT_shallow.to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)
        if self.text_layer:
            return torch.cat([x[:1], prompts, x[1 + self.n_prompts:]])
        return torch.cat([x[:-self.n_prompts], prompts])

    def forward(self, x):
        if self.n_prompts:
            x = self.swap_in_prompts(x)
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, attn_mask=None, n_prompts=0, prompt_depth=0, text_layer=False):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[
            ResidualAttentionBlock(width, heads, attn_mask, n_prompts if 0 < i < prompt_depth else 0, text_layer)
            for i in range(layers)
        ])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, image_size, patch_size, width, layers, heads, output_dim, n_prompts=0, prompt_depth=0):
        super().__init__()
        self.input_resolution, self.output_dim = image_size, output_dim
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image_size // patch_size) ** 2 + 1, width))
        if n_prompts:
            self.VPT = nn.Parameter(torch.randn(n_prompts, width) * 0.02)
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, n_prompts=n_prompts, prompt_depth=prompt_depth)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [batch, grid**2, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        if hasattr(self, "VPT"):
            x = torch.cat([x, self.VPT.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    def __init__(self, geometry: dict, text_prompts=(0, 0), vision_prompts=(0, 0)):
        super().__init__()
        g = geometry
        self.context_length = g["context_length"]
        self.visual = VisionTransformer(g["image_size"], g["patch_size"], g["vision_width"], g["vision_layers"],
                                        g["vision_heads"], g["embed_dim"], *vision_prompts)
        causal = torch.full((self.context_length, self.context_length), float("-inf")).triu_(1)
        self.transformer = Transformer(g["text_width"], g["text_layers"], g["text_heads"], causal, *text_prompts,
                                       text_layer=True)
        self.token_embedding = nn.Embedding(VOCAB_SIZE, g["text_width"])
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.positional_embedding = nn.Parameter(torch.randn(self.context_length, g["text_width"]) * 0.01)
        self.ln_final = LayerNorm(g["text_width"])
        self.text_projection = nn.Parameter(torch.randn(g["text_width"], g["embed_dim"]) * g["text_width"] ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image(self, image):
        return self.visual(image.to(self.dtype))

    def encode_text(self, token_ids):
        x = self.token_embedding(token_ids).to(self.dtype) + self.positional_embedding.to(self.dtype)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), token_ids.argmax(dim=-1)] @ self.text_projection


def build_clip(name: str, *, text_prompts=(0, 0), vision_prompts=(0, 0), seed: int = 0) -> CLIP:
    """A frozen-weights CLIP of geometry ``name`` (random weights fixed by ``seed``), in eval mode.

    ``text_prompts`` / ``vision_prompts`` = ``(n_prompts, depth)`` make it an IVLP fork.
    """
    if name not in GEOMETRIES:
        raise ValueError(f"Unknown host backbone {name!r}; expected one of {sorted(GEOMETRIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(GEOMETRIES[name], text_prompts, vision_prompts)
    return model.eval()


def to_fp16(model: nn.Module) -> nn.Module:
    """fp16 weights with fp32 LayerNorms, like OpenAI's released models."""
    model.half()
    for module in model.modules():
        if isinstance(module, LayerNorm):
            module.float()
    return model


def tokenizer(context_length: int):
    """open_clip's BPE tokenizer with this CLIP's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def tokenize(texts, context_length: int = 77):
    """``clip.tokenize``: token ids ``[len(texts), context_length]``."""
    return tokenizer(context_length)([texts] if isinstance(texts, str) else list(texts))
