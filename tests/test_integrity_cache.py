"""Integrity of teacher-view caches (and of the other inputs of phase 1): an outsider's edits of the
index, the shards and the image folder are refused by `caspl distill --teacher-cache` and `caspl
inspect CACHE` with one line and nothing written; names in the index never reach outside the cache;
interrupted precomputes leave no temporary files; manifests, class names and outputs get the same care.
Random corruption only ever raises the package's own errors."""
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from caspl_plugin.cache import TeacherViewCache, build_teacher_cache
from caspl_plugin.cache.store import CacheError, index_content_hash
from caspl_plugin.cli import main as caspl
from caspl_plugin.clip import create_clip

CLASSES = ["red circle", "blue square", "green triangle"]
SIZES = [(40, 30), (64, 64), (33, 50), (20, 90), (48, 36), (36, 36)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An image folder, the tiny teacher's weights file, a class-names file and a cache of 3 shards."""
    base = tmp_path_factory.mktemp("integrity-cache")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        path = base / "images" / ("a" if i % 2 else "b") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    torch.manual_seed(1)
    teacher = create_clip("caspl-tiny-teacher", "random")
    weights = base / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.model.state_dict().items()}, str(weights))
    teacher = create_clip("caspl-tiny-teacher", str(weights))
    files = sorted((base / "images").rglob("*.png"))
    build_teacher_cache(base / "cache", files, base / "images", teacher, views=2, seed=5, shard_size=2, batch_size=8)
    (base / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return {"base": base, "cache": base / "cache", "images": base / "images", "weights": weights, "teacher": teacher,
            "files": files}


def copy_cache(world, tmp_path) -> Path:
    folder = tmp_path / "cache"
    shutil.copytree(world["cache"], folder, symlinks=True)
    return folder


def shard_names(folder) -> list:
    return sorted(json.loads((folder / "index.json").read_text())["shards"])


def edit_index(folder, edit, reseal=False):
    path = folder / "index.json"
    index = json.loads(path.read_text())
    edit(index)
    if reseal:  # an editor who also recomputes the index's own hash
        index["content_sha256"] = index_content_hash(index)
    path.write_text(json.dumps(index))


def distill(world, folder, out, capsys):
    capsys.readouterr()
    code = caspl(["distill", "--images", str(world["images"]), "--class-names", str(world["base"] / "classes.txt"),
                  "-o", str(out), "--student", "caspl-tiny-student", "--teacher", "caspl-tiny-teacher",
                  "--teacher-weights", str(world["weights"]), "--epochs", "2", "--batch-size", "3", "--n-text", "2",
                  "--n-vision", "2", "--no-progress", "--teacher-cache", str(folder)])
    return code, capsys.readouterr().err


def inspect(folder, capsys):
    capsys.readouterr()
    code = caspl(["inspect", str(folder)])
    return code, capsys.readouterr()


# ---- what must hold: swapped shards, a flipped byte, a name pointing outside --------------------


def swap_two_shards(folder):
    a, b = [folder / "shards" / n for n in shard_names(folder)[:2]]
    a.rename(folder / "shards" / "x"), b.rename(a), (folder / "shards" / "x").rename(b)


def flip_a_byte(folder):
    path = folder / "shards" / shard_names(folder)[0]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # inside the features
    path.write_bytes(bytes(data))


def name_outside(folder):
    name = shard_names(folder)[0]
    outside = folder.parent / "outside.safetensors"
    shutil.copyfile(folder / "shards" / name, outside)
    escape = "../../" + outside.name

    def edit(index):
        index["shards"][escape] = index["shards"].pop(name)
        for entry in index["files"].values():
            if entry["shard"] == name:
                entry["shard"] = escape
    edit_index(folder, edit, reseal=True)


@pytest.mark.parametrize("tamper, message", [
    (swap_two_shards, "does not match its sha256 in the index"),
    (flip_a_byte, "does not match its sha256 in the index"),
    (name_outside, "is a path, expected a plain file name inside shards/"),
])
def test_tampered_caches_are_refused_by_distill_and_inspect(tamper, message, world, tmp_path, capsys):
    folder = copy_cache(world, tmp_path)
    assert inspect(folder, capsys)[0] == 0
    tamper(folder)
    out = tmp_path / "boost.safetensors"
    code, err = distill(world, folder, out, capsys)
    errors = [line for line in err.splitlines() if line.startswith("caspl distill: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not out.exists() and not out.with_name("boost.ckpt.safetensors").exists()
    code, captured = inspect(folder, capsys)
    assert code == 2 and message in captured.err and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_symbolic_links_leaving_the_cache_are_refused(world, tmp_path):
    folder = copy_cache(world, tmp_path)
    name = shard_names(folder)[0]
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copyfile(folder / "shards" / name, outside)  # the same bytes: only the place is wrong
    (folder / "shards" / name).unlink()
    (folder / "shards" / name).symlink_to(outside)
    with pytest.raises(CacheError, match="outside the cache folder"):
        TeacherViewCache.open(folder)
    (folder / "shards" / name).unlink()
    (folder / "shards" / name).symlink_to(f"../{name}.moved")  # a link that stays inside is followed
    shutil.copyfile(outside, folder / f"{name}.moved")
    assert TeacherViewCache.open(folder).views == 2


# ---- every field validated, naming the field -----------------------------------------------------

FIRST = "a/img1.png"
INDEX_EDITS = {
    "row out of range": (lambda i: i["files"][FIRST].update(row=9), "files['a/img1.png'].row: expected an integer in 0..1"),
    "row a string": (lambda i: i["files"][FIRST].update(row="0"), "files['a/img1.png'].row: expected an integer"),
    "views 0": (lambda i: i.update(views=0), "views: expected an integer >= 1, got 0"),
    "views above the stored": (lambda i: i.update(views=7), "expected {'features': ([2, 7"),
    "files a list": (lambda i: i.update(files=[]), "files: expected an object"),
    "file entry a string": (lambda i: i["files"].update({FIRST: "x"}), "files['a/img1.png']: expected an object with"),
    "absolute shard name": (lambda i: i["files"][FIRST].update(shard="/etc/passwd"),
                            "files['a/img1.png'].shard: expected one of the index's shards, got '/etc/passwd'"),
    "two files on one row": (lambda i: i["files"]["a/img3.png"].update(shard=i["files"][FIRST]["shard"],
                                                                      row=i["files"][FIRST]["row"]),
                             "is also the row of"),
    "file key with ..": (lambda i: i["files"].update({"../x.png": i["files"].pop(FIRST)}), "is not a plain relative path"),
    "teacher image size": (lambda i: i["teacher"].update(image_size=10**6), "teacher.image_size: expected an integer in 1..4096"),
    "std zero": (lambda i: i["teacher"].update(std=[0, 1, 1]), "teacher.std: expected 3 non-zero numbers"),
    "scale above 1": (lambda i: i["augmentation"].update(scale=[0.5, 2]), "augmentation.scale: expected [min, max]"),
    "dtype": (lambda i: i.update(dtype="int8"), "dtype: expected one of float16, float32"),
    "shard bytes": (lambda i: next(iter(i["shards"].values())).update(bytes=-1), ".bytes: expected an integer >= 1"),
    "unknown field": (lambda i: i.update(extra=1), "unknown field(s) ['extra']"),
}


@pytest.mark.parametrize("edit", sorted(INDEX_EDITS))
def test_each_index_field_is_validated_by_name(edit, world, tmp_path, capsys):
    folder = copy_cache(world, tmp_path)
    change, message = INDEX_EDITS[edit]
    edit_index(folder, change, reseal=True)  # even with a recomputed index hash
    with pytest.raises(CacheError) as error:
        TeacherViewCache.open(folder)
    assert message in str(error.value) and str(folder) in str(error.value)
    code, captured = inspect(folder, capsys)
    assert code == 2 and message in captured.err and "Traceback" not in captured.err


def test_index_edits_without_a_new_hash_are_refused(world, tmp_path):
    folder = copy_cache(world, tmp_path)
    edit_index(folder, lambda i: i.update(seed=99))  # well formed, but not what was written
    with pytest.raises(CacheError, match="index.json does not match its content hash"):
        TeacherViewCache.open(folder)


def test_a_shard_changed_after_opening_is_not_read(world, tmp_path):
    folder = copy_cache(world, tmp_path)
    cache = TeacherViewCache.open(folder)
    path = folder / "shards" / cache.files[FIRST]["shard"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="changed after it was verified"):
        cache.view(FIRST, 0)


def test_digests_are_computed_once_per_path_size_and_mtime(world, tmp_path, monkeypatch):
    from caspl_plugin.clip import weights as weights_module

    folder = copy_cache(world, tmp_path)
    TeacherViewCache.open(folder)
    monkeypatch.setattr(weights_module, "open", lambda *a, **k: pytest.fail("re-hashed"), raising=False)
    TeacherViewCache.open(folder)  # every shard's digest comes from the cache of digests


def test_older_caches_are_refused_by_readers_and_rebuilt_by_the_precompute(world, tmp_path):
    folder = copy_cache(world, tmp_path)
    edit_index(folder, lambda i: i.update(format_version=2))
    with pytest.raises(CacheError, match="format version 2; this version reads 3"):
        TeacherViewCache.open(folder)
    build_teacher_cache(folder, world["files"], world["images"], world["teacher"], views=2, seed=5, shard_size=2)
    assert TeacherViewCache.open(folder).index["format_version"] == 3


def test_a_rerun_removes_the_temporary_files_of_a_killed_precompute(world, tmp_path):
    folder = copy_cache(world, tmp_path)
    left = [folder / "shards" / f".{shard_names(folder)[0]}.0123abcd.tmp", folder / ".index.json.89ef0123.tmp"]
    for path in left:
        path.write_bytes(b"partial")
    report = build_teacher_cache(folder, world["files"], world["images"], world["teacher"], views=2, seed=5, shard_size=2)
    assert report.up_to_date and not any(path.exists() for path in left)


def test_a_damaged_shard_is_recomputed_on_resume(world, tmp_path):
    folder = copy_cache(world, tmp_path)
    (folder / "index.json").unlink()  # as after a killed precompute: shards, no index
    name = shard_names(world["cache"])[0]
    data = bytearray((folder / "shards" / name).read_bytes())
    data[-5] ^= 0x10
    (folder / "shards" / name).write_bytes(bytes(data))
    report = build_teacher_cache(folder, world["files"], world["images"], world["teacher"], views=2, seed=5, shard_size=2)
    assert (report.shards_written, report.shards_reused) == (1, 2)
    with safe_open(str(folder / "shards" / name), framework="pt") as a, safe_open(str(world["cache"] / "shards" / name), framework="pt") as b:
        assert torch.equal(a.get_tensor("features"), b.get_tensor("features"))
    TeacherViewCache.open(folder)


def test_multi_domain_caches_are_verified_domain_by_domain(world, tmp_path, capsys):
    from caspl_plugin.cache.store import write_domains_index

    folder = tmp_path / "set"
    shutil.copytree(world["cache"], folder / "pets")
    shutil.copytree(world["cache"], folder / "dtd")
    write_domains_index(folder, {"pets": 6, "dtd": 6})
    assert inspect(folder, capsys)[0] == 0
    swap_two_shards(folder / "dtd")
    code, captured = inspect(folder, capsys)
    assert code == 2 and "domain dtd: shard shards/" in captured.err and "pets" not in captured.err
    shutil.rmtree(folder / "dtd")
    shutil.copytree(world["cache"], tmp_path / "elsewhere")
    (folder / "dtd").symlink_to(tmp_path / "elsewhere")
    code, captured = inspect(folder, capsys)
    assert code == 2 and "outside the cache folder" in captured.err


# ---- random corruption: only the package's errors -------------------------------------------------

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats(allow_nan=True)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=5)


def _paths(document, prefix=()):
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(document, list):
        for i, value in enumerate(document):
            yield from _paths(value, prefix + (i,))


@pytest.fixture(scope="module")
def fuzz_cache(world, tmp_path_factory):
    return copy_cache(world, tmp_path_factory.mktemp("fuzz"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_index_edits_raise_only_cache_errors(fuzz_cache, tmp_path, data):
    index = json.loads((fuzz_cache / "index.json").read_text())
    path = data.draw(st.sampled_from([p for p in _paths(index) if p]))
    parent = index
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.booleans()) or isinstance(parent, list):
        parent[path[-1]] = data.draw(JSON_VALUES)
    else:
        del parent[path[-1]]
    if data.draw(st.booleans()):  # an editor who also recomputes the index's own hash
        try:
            index["content_sha256"] = index_content_hash(index)
        except (ValueError, TypeError):
            pass
    folder = Path(tempfile.mkdtemp(dir=tmp_path)) / "cache"
    shutil.copytree(fuzz_cache, folder)
    (folder / "index.json").write_text(json.dumps(index))
    try:
        cache = TeacherViewCache.open(folder)
    except CacheError:
        pass
    else:  # what opens must read: every view of every file
        for key in cache.files:
            for view in range(cache.views):
                cache.view(key, view)
    assert caspl(["inspect", str(folder)]) in (0, 2)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_shard_corruption_raises_only_cache_errors(fuzz_cache, tmp_path, data):
    folder = Path(tempfile.mkdtemp(dir=tmp_path)) / "cache"
    shutil.copytree(fuzz_cache, folder)
    path = folder / "shards" / data.draw(st.sampled_from(shard_names(folder)))
    raw = bytearray(path.read_bytes())
    for position, value in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)),
                                              min_size=1, max_size=4)):
        raw[position] = value
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path.write_bytes(bytes(raw))
    changed = bytes(raw) != (fuzz_cache / "shards" / path.name).read_bytes()
    if changed:
        with pytest.raises(CacheError):
            TeacherViewCache.open(folder)
        assert caspl(["inspect", str(folder)]) == 2


# ---- manifests, class names, outputs -------------------------------------------------------------


def test_manifest_entries_are_checked_field_by_field(world, tmp_path, capsys):
    (tmp_path / "pets.txt").write_text("cat\ndog\n")
    shutil.copytree(world["images"], tmp_path / "pets")
    good = {"name": "pets", "images": "pets", "class_names": "pets.txt", "template": "a photo of a {}."}
    cases = [
        ("name: 123\n", "field 'name': the name must be a string"),
        ("name: .inf\n", "field 'name': the name must be a string"),
        ("name: [a, b]\n", "field 'name': the name must be a string"),
        ("name: ../up\n", "field 'name': the name '../up' cannot name a cache folder"),
        ("template: 'a {} {}'\n", "field 'template': template 'a {} {}' must contain exactly one '{}'"),
        ("template: 'a {name}'\n", "field 'template': template 'a {name}' must contain exactly one '{}'"),
        ("images: 5\n", "field 'images': expected a folder path"),
        ("class_names: [cat, dog]\n", "field 'class_names': expected a file path"),
        ("colour: red\n", "unknown field(s) ['colour']"),
    ]
    for override, message in cases:
        manifest = tmp_path / "domains.yaml"
        import yaml

        entry = {**good, **yaml.safe_load(override)}
        manifest.write_text(yaml.safe_dump({"domains": [entry]}))
        for command in (["distill", "-o", str(tmp_path / "out.safetensors")], ["teacher-cache", "-o", str(tmp_path / "c")]):
            capsys.readouterr()
            assert caspl([command[0], "--domains", str(manifest), *command[1:], "--teacher", "caspl-tiny-teacher",
                          "--teacher-weights", str(world["weights"]), "--no-progress"]) == 2
            errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line or "Traceback" in line]
            assert len(errors) == 1 and f"domain manifest {manifest}, entry 0" in errors[0] and message in errors[0], \
                (override, errors)
    manifest.write_bytes(b"\xff\xfedomains: []")
    assert caspl(["distill", "--domains", str(manifest), "-o", str(tmp_path / "out.safetensors")]) == 2
    assert f"domain manifest {manifest} is not UTF-8 text" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("name, message", [
    ("c\x00at", "control character U+0000"),
    ("cat\u202e", "bidirectional control U+202E"),
    ("d\u2066og", "bidirectional control U+2066"),
])
def test_class_names_with_control_or_bidi_characters_are_refused(name, message, tmp_path):
    from caspl_plugin.artifacts import ArtifactError
    from caspl_plugin.data.classnames import ClassNamesError, read_class_names
    from caspl_plugin.inference import save_classifier
    from caspl_plugin.methods import get_method
    from caspl_plugin.prompts import PromptedCLIP

    path = tmp_path / "classes.txt"
    path.write_text(f"bird\n{name}\n", encoding="utf-8")
    with pytest.raises(ClassNamesError, match=f"line 2: .*{re.escape(message)}"):
        read_class_names(path)
    model = get_method("zeroshot")(PromptedCLIP(create_clip("caspl-tiny-student", "random")), ["bird", name])
    with pytest.raises(ArtifactError, match=re.escape(message)):
        save_classifier(tmp_path / "clf.safetensors", model)
    assert not (tmp_path / "clf.safetensors").exists()
    assert read_class_names(_write(tmp_path / "ok.txt", "caf\u00e9\n\u05d0\u05d1\u200f\n")) == ["caf\u00e9", "\u05d0\u05d1\u200f"]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_an_output_that_cannot_be_replaced_is_refused_before_training(world, tmp_path, capsys, monkeypatch):
    import subprocess

    from caspl_plugin.cli import runguard

    out = tmp_path / "boost.safetensors"
    out.write_bytes(b"an earlier result")
    immutable = subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode == 0 if shutil.which("chattr") else False
    if not immutable:  # not root, or no inode flags here: the flag reader reports what chattr +i sets
        monkeypatch.setattr(runguard, "_inode_flags", lambda path: runguard._FS_IMMUTABLE_FL if Path(path) == out else 0)
    try:
        code, err = distill(world, world["cache"], out, capsys)
        assert code == 2 and "cannot replace --output" in err and "immutable" in err
        assert out.read_bytes() == b"an earlier result" and not out.with_name("boost.ckpt.safetensors").exists()
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(out)], check=True)
    monkeypatch.undo()
    assert runguard.replace_blocker(out) is None
