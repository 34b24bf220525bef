"""The README's library example runs as written, on the shipped toy CLIPs; the reference sections
exist on the pages the README links to.

Only the upper-case settings lines of the block are replaced (toy models and their package weights,
a generated image folder, one short epoch with few tokens); every other line is the README's text.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTION = "### 1. A Python library (no Dassl)"


def library_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {SECTION!r}"
    return match.group(1)


def substitute(code: str, values: dict) -> str:
    for names, replacement in values.items():
        pattern = re.compile(rf"^{re.escape(names)} = .*$", re.MULTILINE)
        code, count = pattern.subn(f"{names} = {replacement}", code)
        assert count == 1, f"the README example no longer assigns {names} once"
    return code


def test_the_library_example_runs_on_the_toy_models(tmp_path, monkeypatch, capsys):
    from caspl_plugin.toy.domain import write_image_folder

    from caspl_plugin.toy.domain import write_coop_layout

    folder = write_image_folder(tmp_path / "pets", num_per_class=1, seed=0)
    labeled = write_coop_layout(tmp_path / "labeled", train_per_class=2, val_per_class=1, test_per_class=1) / "images"
    code = substitute(library_example(), {
        "STUDENT, STUDENT_WEIGHTS": '"toy-student", None',
        "TEACHER, TEACHER_WEIGHTS": '"toy-teacher", None',
        "IMAGES, CLASS_NAMES": f"{str(folder.images)!r}, {str(folder.class_names)!r}",
        "LABELED, SHOTS": f"{str(labeled)!r}, 1",
        "CONFIG": "BoostingConfig(2, 2, 1, 1)",
        "SETTINGS": "DistillSettings(epochs=1, batch_size=16)",
        "RECIPE": "AdaptSettings(epochs=2, batch_size=8)",
    })
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # the README's own text

    from caspl_plugin.artifacts import BoostingArtifact

    artifact = BoostingArtifact.load(tmp_path / "pets_boosting.safetensors")
    assert artifact.n_text == 2 and artifact.class_names == namespace["read_class_names"](namespace["CLASS_NAMES"])
    assert len(namespace["report"].epoch_losses) == 1
    assert len(namespace["adapted"].epoch_losses) == 2 and namespace["adapted"].steps >= 2
    model = namespace["model"]
    assert model.boosting is not None and not model.boosting.learnable and model.gpa is not None and model.gpa.complete
    assert (tmp_path / "pets_promptsrc.safetensors").is_file()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all(line.split(" ", 1)[0].endswith(".png") for line in printed)


#: reference sections (page, heading); those behind the README are reachable from it by a link
SECTIONS = [
    ("README.md", "## Citation"),
    ("README.md", "## License"),
    ("docs/dassl.md", "## Installing Dassl"),
    ("docs/datasets.md", "## Datasets (CoOp layout)"),
    ("docs/recipes/base-to-novel.md", "## Evaluating a trained model (`--eval-only`)"),
    ("docs/troubleshooting.md", "## Where are CLIP weights looked for?"),
]


@pytest.mark.parametrize("page, heading", SECTIONS)
def test_the_reference_sections_exist_and_the_readme_reaches_them(page, heading):
    assert f"\n{heading}\n" in (ROOT / page).read_text(encoding="utf-8"), f"{page} has no {heading!r}"
    if page != "README.md":
        assert f"]({page}" in README.read_text(encoding="utf-8"), f"the README does not link to {page}"


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").rglob("*.md"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_docs_do_not_use_torch_jit_load(page):
    for line in page.read_text(encoding="utf-8").splitlines():
        if "jit.load" in line:
            assert "not used" in line or "never" in line or "reference" in line, line
