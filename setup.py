"""Install caspl-plugin: CasPL (Cascade Prompt Learning, ECCV 2024) for open_clip and Dassl."""
import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).parent
#: top-level folders shipped as caspl_plugin/bundled/<folder>: the selection of caspl_plugin.resources.PATTERNS
BUNDLED = {"configs": ("*.yaml",), "scripts": ("*.sh", "*.md")}
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "caspl_plugin" / "version.py").read_text()).group(1)


def _packages():
    """The library packages, plus the repository's trainers/ installed as caspl_plugin.trainers."""
    found = [
        ".".join(p.relative_to(HERE).parts[:-1])
        for p in sorted((HERE / "caspl_plugin").rglob("__init__.py"))
    ]
    found += [
        "caspl_plugin.trainers" + "".join("." + part for part in p.relative_to(HERE / "trainers").parts[:-1])
        for p in sorted((HERE / "trainers").rglob("__init__.py"))
    ]
    return found


def _bundled_files():
    """The shipped configs and shell scripts, relative to the repository root."""
    return sorted({
        path.relative_to(HERE)
        for folder, patterns in BUNDLED.items()
        for pattern in patterns
        for path in (HERE / folder).rglob(pattern)
    })


class BuildPyWithBundle(build_py):
    """build_py that also copies configs/ and scripts/ into caspl_plugin/bundled/ (editable installs
    read them from the checkout instead)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "caspl_plugin" / "bundled"
        for relative in _bundled_files():
            self.mkpath(str((target / relative).parent))
            self.copy_file(str(HERE / relative), str(target / relative))


class SDistWithBundle(sdist):
    """sdist that carries configs/ and scripts/, so that wheels built from it ship them too."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, sorted(set(files) | {str(relative) for relative in _bundled_files()}))


setup(
    name="caspl-plugin",
    version=VERSION,
    description="Cascade Prompt Learning (CasPL) for CLIP: boosting prompts, cascades with CoOp/CoCoOp/IVLP/MaPLe/PromptSRC, and a Dassl plugin",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=_packages(),
    package_dir={"caspl_plugin.trainers": "trainers"},
    include_package_data=True,
    package_data={"caspl_plugin": ["clip/model_configs/*.json", "toy/weights/*"]},
    cmdclass={"build_py": BuildPyWithBundle, "sdist": SDistWithBundle},
    install_requires=[
        "torch>=2.1",
        "torchvision",
        # the prompt mechanism drives open_clip's towers from outside (VisionTransformer._embeds/_pool
        # order, batch-first ModuleList resblocks): tested on 3.x, guarded by the equivalence tests
        "open_clip_torch>=3.0,<4",
        "yacs>=0.1.8",
        "pluggy>=1.0",
        "safetensors>=0.4",
        "tqdm",
        "pillow",
        "numpy",
        # domain manifests may be YAML (caspl distill --domains x.yaml)
        "pyyaml",
        # one run per output file (caspl distill / adapt take a lock on their outputs)
        "filelock>=3.0",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "tensorboard", "onnx>=1.15", "onnxscript", "onnxruntime>=1.17", "matplotlib"],
        # the import rules of .importlinter (lint-imports), checked by CI
        "lint": ["import-linter>=2.0"],
        # charts: the demo's and caspl report's PNGs (without it the tables are written, the charts skipped)
        "plots": ["matplotlib"],
        # caspl export / caspl classify on .onnx
        "export": ["onnx>=1.15", "onnxscript", "onnxruntime>=1.17"],
        # --tensorboard DIR
        "tensorboard": ["tensorboard"],
    },
    entry_points={
        "console_scripts": ["caspl=caspl_plugin.cli:main"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
