"""How the residual blocks are run, measured side by side (random weights, nothing downloaded):

(a) 12 ViT-B/16 vision blocks (and 12 text blocks), forward + backward to the input:
    ``block_mode="module"`` (each block's own forward, batch-first; nn.MultiheadAttention
    transposes inside) vs ``"fused"`` (sequence-first stream, scaled_dot_product_attention on the
    blocks' weights), with a third column: the same weights in the authors' layout (OpenAI CLIP's
    sequence-first nn.MultiheadAttention);
(b) one phase-1 boosting step and one CasPL_PromptSRC training step (default batch 4, 10 classes)
    in both modes, the same models and weights;
(c) against the authors' implementation (megvii-research/CasPL): the script locates a local checkout
    (``--casplrepo PATH`` or ``CASPL_REPO``; only read, never copied) but does not drive the authors'
    trainers yet (they need a Dassl config, their forked OpenAI CLIP and CUDA while building), and
    says so; (a)'s third column times their block layout on the same weights. Target: ours <= 1.0 x.

    python benchmarks/bench_layout.py [--device cpu|cuda] [--repeats 3] [--batch 4]
        [--teacher ViT-L/14] [--skip-steps] [--casplrepo PATH]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from caspl_plugin.boosting import BoostingConfig, build_distiller, make_boosting_group  # noqa: E402
from caspl_plugin.clip import create_clip  # noqa: E402
from caspl_plugin.engine import make_optimizer, training_step  # noqa: E402
from caspl_plugin.methods import get_method  # noqa: E402
from caspl_plugin.prompts import PromptedCLIP  # noqa: E402
from caspl_plugin.prompts.blocks import BLOCK_MODES, BlockRunner  # noqa: E402
from timing import interleaved  # noqa: E402  (benchmarks/timing.py)



def _openai_layout_block(block, x, mask):
    """The same block as OpenAI CLIP's (the authors' ``clip/model.py``) runs it: a sequence-first
    ``nn.MultiheadAttention`` call on ``[L, N, D]``, here through the functional form on this
    block's weights."""
    attn = block.attn
    h = block.ln_1(x)
    out = torch.nn.functional.multi_head_attention_forward(
        h, h, h, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False,
        attn_mask=None if mask is None else mask.to(x.dtype))[0]
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _blocks_fwd_bwd(blocks, x, mask, mode):
    run = BlockRunner("fused" if mode == "openai" else mode)
    forward = _openai_layout_block if mode == "openai" else run

    def fn():
        inputs = x.detach().requires_grad_(True)
        y = run.enter(inputs)
        for block in blocks:
            y = forward(block, y, mask)
        run.leave(y).float().square().mean().backward()
    return fn


def bench_blocks(clip: PromptedCLIP, device, repeats, batch, classes):
    model = clip.clip
    vision = list(model.visual.transformer.resblocks)
    text = list(model.transformer.resblocks)
    images = torch.randn(batch, 197 + 16, clip.vision_width, device=device)  # 196 patches + CLS + 8+8 prompts
    prompts = torch.randn(classes, model.attn_mask.shape[0], clip.text_width, device=device)
    print(f"\n(a) 12 ViT-B/16 blocks forward + backward (to the input), {device}, median of {repeats}")
    for name, blocks, x, mask in (("vision", vision, images, None), ("text", text, prompts, model.attn_mask)):
        t = interleaved({mode: _blocks_fwd_bwd(blocks, x, mask, mode) for mode in (*BLOCK_MODES, "openai")}, device, repeats)
        print(f"  {name:<6} {tuple(x.shape)}  module (batch-first) {t['module'] * 1000:7.0f} ms   "
              f"fused (sequence-first, SDPA) {t['fused'] * 1000:7.0f} ms (x{t['fused'] / t['module']:.3f})   "
              f"sequence-first MHA, the authors' layout {t['openai'] * 1000:7.0f} ms (fused x{t['fused'] / t['openai']:.3f})")


def _in_both_modes(clips, step):
    def run_in(mode):
        def fn():
            for c in clips:
                c.block_mode = mode
            step()
        return fn
    return {mode: run_in(mode) for mode in BLOCK_MODES}


def bench_steps(student, teacher_name, device, repeats, batch, classes):
    names = [f"class number {i}" for i in range(classes)]
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.arange(batch, device=device) % classes
    results = {}

    teacher = create_clip(teacher_name, "random", device=device)
    distiller = build_distiller(student, teacher, names, config=BoostingConfig()).to(device)
    optimizer = make_optimizer(distiller.student.learnable_parameters(), lr=0.0025)
    clips = [m for m in distiller.modules() if isinstance(m, PromptedCLIP)]  # student and teacher
    results["phase 1 (boosting)"] = interleaved(
        _in_both_modes(clips, lambda: training_step(distiller, images, None, optimizer)), device, repeats)
    del distiller, teacher, optimizer

    clip = PromptedCLIP(student)
    boosting = make_boosting_group(clip, BoostingConfig(8, 8, 12, 12), learnable=False)
    kwargs = dict(n_ctx_text=8, n_ctx_vision=8, depth_text=12, depth_vision=12, gpa_mean=None)  # caspl preset
    model = get_method("promptsrc")(clip, names, boosting=boosting, **kwargs).to(device)
    model.train()  # prepares the 60-template anchor text features (logged), outside the timed steps
    optimizer = make_optimizer(model.learnable_parameters(), lr=0.0025)
    results["CasPL_PromptSRC"] = interleaved(
        _in_both_modes([clip], lambda: training_step(model, images, labels, optimizer)), device, repeats)

    print(f"\n(b) one training step, batch {batch}, {classes} classes, ViT-B/16 student"
          f" (phase 1: teacher {teacher_name}), {device}, median of {repeats}")
    for name, t in results.items():
        print(f"  {name:<20} module {t['module']:8.3f} s   fused {t['fused']:8.3f} s   x{t['fused'] / t['module']:.3f}")
    return results


def bench_authors(repo, results):
    print("\n(c) against the authors' implementation")
    if not repo:
        print("  skipped: no checkout of megvii-research/CasPL given (--casplrepo PATH or CASPL_REPO)")
        return
    if not os.path.isfile(os.path.join(repo, "trainers", "caspl_promptsrc.py")) or not os.path.isfile(
            os.path.join(repo, "clip", "clip.py")):
        print(f"  skipped: {repo} is not a complete CasPL checkout (needs trainers/caspl_promptsrc.py and clip/clip.py)")
        return
    print(f"  not measured: driving the authors' trainers (a Dassl config, their forked OpenAI CLIP, .cuda() calls"
          f" while building) on these weights is not automated yet; (a) times their block layout on the same"
          f" weights (checkout at {repo}).")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--teacher", default="ViT-L/14", help="phase-1 teacher (ViT-B/16 for a quicker run)")
    parser.add_argument("--skip-steps", action="store_true", help="only the block-level comparison")
    parser.add_argument("--casplrepo", default=os.environ.get("CASPL_REPO"),
                        help="local checkout of megvii-research/CasPL (default: $CASPL_REPO)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    student = create_clip("ViT-B/16", "random", device=device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ViT-B/16 random weights")
    bench_blocks(PromptedCLIP(student), device, args.repeats, args.batch, args.classes)
    results = {} if args.skip_steps else bench_steps(student, args.teacher, device, args.repeats, args.batch, args.classes)
    bench_authors(args.casplrepo, results)


if __name__ == "__main__":
    main()
