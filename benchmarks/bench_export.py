"""Deploy benchmark: PyTorch eager vs onnxruntime fp32 vs onnxruntime int8, side by side in one run.

1. Toy domain, shipped toy CLIPs: a CasPL_PromptSRC classifier trained by the demo recipe (one
   seed), saved, exported (`export_classifier`) and quantised; accuracy on base / novel classes
   and images/s (batch 1 and 64) for PyTorch eager fp32, onnxruntime fp32, onnxruntime int8 and
   the zero-shot teacher in PyTorch; max |logit difference| and top-1 agreement vs PyTorch.
2. ViT-B/16 with random weights, CasPL_PromptSRC geometry (boosting 8+8 at depth 12, PromptSRC
   defaults): latency at batch 1 and 32, PyTorch eager vs onnxruntime fp32 vs int8.

Both runtimes get the same number of threads (torch.get_num_threads()). Prints numbers only.

    python benchmarks/bench_export.py            # full
    python benchmarks/bench_export.py --quick    # the demo's quick recipe, fewer repetitions
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def ort_session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_torch(model, images, batch):
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)]).numpy()


def run_ort(session, images, batch):
    pixels = images.numpy()
    return np.concatenate([session.run(["logits"], {"images": pixels[i:i + batch]})[0] for i in range(0, len(pixels), batch)])


def images_per_second(fn, images, batch, limit):
    images = images[:limit]
    fn(images[:batch], batch)  # warm-up
    started = time.perf_counter()
    fn(images, batch)
    return len(images) / (time.perf_counter() - started)


def accuracy(logits, labels, columns):
    """Top-1 (%) among ``columns`` for the images whose label is one of them."""
    columns = list(columns)
    keep = np.isin(labels, columns)
    predicted = np.asarray(columns)[logits[keep][:, columns].argmax(-1)]
    return 100.0 * float((predicted == labels[keep]).mean())


def train_caspl_promptsrc(settings):
    """The demo recipe for one seed: boosting prompts distilled from the toy teacher, then PromptSRC
    cascaded on the base shots. Returns (model over all classes, student, teacher)."""
    from caspl_plugin.clip import create_clip
    from caspl_plugin.data.domains import DomainClassSet
    from caspl_plugin.demo import TEMPLATE, normalise, adapt_toy_method, distill_toy_boosting
    from caspl_plugin.methods import get_method
    from caspl_plugin.prompts import PromptedCLIP
    from caspl_plugin.toy import domain

    torch.manual_seed(0)
    student, teacher = create_clip("toy-student"), create_clip("toy-teacher")
    names, base_labels = domain.class_names(), domain.base_labels()
    unlabeled = normalise(domain.generate(settings.unlabeled_per_class, seed=20_000).images, student)
    toy = DomainClassSet("toy-shapes", tuple(names), TEMPLATE)
    boosting = distill_toy_boosting(student, teacher, [(toy, unlabeled)], settings).student.boosting

    seed = settings.seeds[0]
    shots = domain.generate(labels=[l for l in base_labels for _ in range(settings.shots)], seed=seed)
    shot_labels = torch.tensor([base_labels.index(int(l)) for l in shots.labels])
    torch.manual_seed(seed)
    model = get_method("promptsrc")(
        PromptedCLIP(student), [names[l] for l in base_labels], boosting=boosting,
        n_ctx_text=4, n_ctx_vision=4, depth_text=4, depth_vision=4,
        gpa_mean=settings.method_epochs * 0.75, gpa_std=max(settings.method_epochs / 8, 1.0))
    adapt_toy_method(model, normalise(shots.images, student), shot_labels, settings, seed)
    model.set_class_names(names)  # logits per class do not depend on the others: one graph for base and novel
    return model.eval(), student, teacher


def toy_benchmark(quick, folder):
    from caspl_plugin.demo import TEMPLATE, DemoSettings, normalise
    from caspl_plugin.export.onnx_export import export_classifier, quantize_onnx
    from caspl_plugin.inference import load_classifier, save_classifier
    from caspl_plugin.methods import ZeroShotCLIP
    from caspl_plugin.prompts import PromptedCLIP
    from caspl_plugin.toy import domain

    settings = DemoSettings.quick() if quick else DemoSettings(seeds=(1,))
    started = time.perf_counter()
    trained, student, teacher = train_caspl_promptsrc(settings)
    print(f"trained CasPL_PromptSRC by the demo recipe ({'quick' if quick else 'full'}, seed {settings.seeds[0]}) "
          f"in {time.perf_counter() - started:.0f} s")
    classifier = folder / "toy.safetensors"
    save_classifier(classifier, trained)
    fp32, int8 = folder / "toy.onnx", folder / "toy-int8.onnx"
    export_classifier(classifier, fp32)
    quantize_onnx(fp32, int8)
    model = load_classifier(classifier)  # what users deploy: the artifact, reloaded
    test = domain.generate(settings.test_per_class, seed=10_000)
    images, labels = normalise(test.images, student), test.labels.numpy()
    teacher_model = ZeroShotCLIP(PromptedCLIP(teacher), domain.class_names(), template=TEMPLATE).eval()
    sessions = {"fp32": ort_session(fp32), "int8": ort_session(int8)}
    runners = {
        "PyTorch eager fp32 (CasPL_PromptSRC)": lambda x, b: run_torch(model, x, b),
        "onnxruntime fp32": lambda x, b: run_ort(sessions["fp32"], x, b),
        "onnxruntime int8": lambda x, b: run_ort(sessions["int8"], x, b),
        "teacher zero-shot, PyTorch": lambda x, b: run_torch(teacher_model, x, b),
    }
    reference = runners["PyTorch eager fp32 (CasPL_PromptSRC)"](images, 64)
    base, novel = domain.base_labels(), domain.novel_labels()
    print(f"\nToy domain: {len(images)} test images ({settings.test_per_class}/class), {len(base)} base + {len(novel)} novel classes, "
          f"{torch.get_num_threads()} threads")
    print(f"{'runtime':40s} {'base':>6s} {'novel':>6s} {'HM':>6s} {'img/s b1':>9s} {'img/s b64':>10s} {'max|dlogit|':>12s} {'top1 agree':>10s}")
    for name, fn in runners.items():
        logits = reference if name.startswith("PyTorch") else fn(images, 64)
        b, n = accuracy(logits, labels, base), accuracy(logits, labels, novel)
        hm = 0.0 if b + n == 0 else 2 * b * n / (b + n)
        speed1 = images_per_second(fn, images, 1, 64 if quick else 256)
        speed64 = images_per_second(fn, images, 64, len(images))
        student_side = not name.startswith("teacher")
        difference = f"{np.abs(logits - reference).max():.2e}" if student_side else "-"
        agreement = f"{100 * (logits.argmax(-1) == reference.argmax(-1)).mean():.2f}%" if student_side else "-"
        print(f"{name:40s} {b:6.1f} {n:6.1f} {hm:6.1f} {speed1:9.0f} {speed64:10.0f} {difference:>12s} {agreement:>10s}")


def vit_benchmark(quick, folder):
    from caspl_plugin.boosting import BoostingConfig, make_boosting_group
    from caspl_plugin.clip import create_clip
    from caspl_plugin.export.onnx_export import export_model, quantize_onnx
    from caspl_plugin.methods import get_method
    from caspl_plugin.prompts import PromptedCLIP

    torch.manual_seed(0)
    clip = PromptedCLIP(create_clip("ViT-B/16", weights="random"))
    boosting = make_boosting_group(clip, BoostingConfig(), learnable=False, generator=torch.Generator().manual_seed(0))
    model = get_method("promptsrc")(clip, [f"class {i}" for i in range(10)], boosting=boosting).eval()
    fp32, int8 = folder / "vit.onnx", folder / "vit-int8.onnx"
    started = time.perf_counter()
    export_model(model, fp32)
    exported = time.perf_counter()
    quantize_onnx(fp32, int8)
    print(f"\nViT-B/16 (random weights) CasPL_PromptSRC: export {exported - started:.0f} s, int8 quantisation "
          f"{time.perf_counter() - exported:.0f} s; {fp32.stat().st_size / 1e6:.0f} MB fp32, {int8.stat().st_size / 1e6:.0f} MB int8; "
          f"{torch.get_num_threads()} threads")
    sessions = {"fp32": ort_session(fp32), "int8": ort_session(int8)}
    runners = {
        "PyTorch eager fp32": lambda x: run_torch(model, x, len(x)),
        "onnxruntime fp32": lambda x: run_ort(sessions["fp32"], x, len(x)),
        "onnxruntime int8": lambda x: run_ort(sessions["int8"], x, len(x)),
    }
    print(f"{'runtime':24s} {'batch':>5s} {'median ms':>10s} {'img/s':>8s} {'vs eager':>9s}")
    for batch, reps in ((1, 5 if quick else 20), (32, 2 if quick else 5)):
        images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        eager = None
        for name, fn in runners.items():
            fn(images)  # warm-up
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                fn(images)
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            eager = eager or median
            print(f"{name:24s} {batch:5d} {1000 * median:10.1f} {batch / median:8.1f} {eager / median:8.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the demo's quick recipe and fewer repetitions")
    parser.add_argument("--skip-toy", action="store_true")
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--keep", help="keep the classifier and ONNX files in this folder")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="caspl-bench-export-") as folder:
        if args.keep:
            folder = args.keep
            Path(folder).mkdir(parents=True, exist_ok=True)
        if not args.skip_toy:
            toy_benchmark(args.quick, Path(folder))
        if not args.skip_vit:
            vit_benchmark(args.quick, Path(folder))


if __name__ == "__main__":
    main()
