"""The one class-names reader: encodings, line endings, comments, invisible names, duplicates as the
text encoder sees them, and every command using it."""
import logging
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caspl_plugin.boosting import official
from caspl_plugin.boosting import build_distiller
from caspl_plugin.data import unlabeled
from caspl_plugin.data.classnames import ClassNamesError, read_class_names, read_class_names_file


def write(tmp_path, data: bytes, name="classes.txt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_every_command_uses_the_one_reader():
    assert unlabeled.read_class_names is read_class_names
    assert official.read_class_names is read_class_names


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_bom_line_endings_whitespace_and_blank_lines(tmp_path, ending):
    data = b"\xef\xbb\xbf" + ending.join([b"  cat ", b"", b"\tdog", b"   ", b"sea lion", b""])
    assert read_class_names(write(tmp_path, data)) == ["cat", "dog", "sea lion"]


def test_a_bom_does_not_hide_a_duplicate(tmp_path):
    with pytest.raises(ClassNamesError, match=r"line 2: duplicate class name: 'cat' duplicates 'cat' \(line 1\)"):
        read_class_names(write(tmp_path, "\ufeffcat\ncat\n".encode("utf-8")))


def test_comments_are_counted_and_logged_and_can_be_escaped(tmp_path, caplog):
    path = write(tmp_path, "# pets\ncat\n  # a comment\n\\#hashtag\ndog\n".encode())
    with caplog.at_level(logging.INFO):
        result = read_class_names_file(path)
    assert result.names == ["cat", "#hashtag", "dog"] and result.comments == 2
    assert "Read 3 class names" in caplog.text and "2 comment line(s)" in caplog.text


@pytest.mark.parametrize("names, first, second", [
    ("Sea_Lion\nsea lion\n", "Sea_Lion", "sea lion"),          # underscores and case
    ("sea  lion\nsea lion\n", "sea  lion", "sea lion"),        # whitespace collapsing
    ("ca\u200bt\ncat\n", "ca\u200bt", "cat"),                  # zero-width characters
    ("Caf&amp;e\ncaf&e\n", "Caf&amp;e", "caf&e"),              # HTML entities (open_clip's cleaning)
])
def test_duplicates_after_the_text_encoders_normalisation(tmp_path, names, first, second):
    expected = re.escape(f"classes.txt, line 2: duplicate class name: {second!r} duplicates {first!r}")
    with pytest.raises(ClassNamesError, match=expected):
        read_class_names(write(tmp_path, names.encode()))


@pytest.mark.parametrize("invisible", ["\u200b", "\u200d\u200c", "\ufeff", "\u2060"])
def test_invisible_only_names_are_refused(tmp_path, invisible):
    with pytest.raises(ClassNamesError, match=r"classes.txt, line 2: .*invisible characters only"):
        read_class_names(write(tmp_path, f"cat\n{invisible}\ndog\n".encode()))


def test_non_utf8_files_name_the_file_and_the_encoding(tmp_path):
    path = write(tmp_path, "cat\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ClassNamesError, match=r"classes.txt is not UTF-8 text \(byte 0xe9 at offset 7, line 2\)"):
        read_class_names(path)


def test_empty_missing_and_too_few(tmp_path):
    with pytest.raises(ClassNamesError, match="classes.txt is empty"):
        read_class_names(write(tmp_path, b"\n  \n# only a comment\n"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_class_names(tmp_path / "missing.txt")
    with pytest.raises(ClassNamesError, match="1 class name.*at least 2"):
        read_class_names(write(tmp_path, b"cat\n"), min_classes=2)


def test_phase1_refuses_a_single_class(tiny_student, tiny_teacher):
    with pytest.raises(ValueError, match="at least 2 classes.*distillation loss is always 0"):
        build_distiller(tiny_student, tiny_teacher, ["cat"])


def test_distill_command_refuses_a_single_class_before_building_models(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from caspl_plugin import clip
    from caspl_plugin.cli import main

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    monkeypatch.setattr(clip, "create_clip", lambda *a, **k: pytest.fail("a model was built"))
    code = main(["distill", "--images", str(images), "--class-names", str(write(tmp_path, b"cat\n")),
                 "-o", str(tmp_path / "out.safetensors")])
    assert code == 2 and "at least 2 classes" in capsys.readouterr().err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_random_bytes_raise_only_the_class_names_error(tmp_path, data):
    path = write(tmp_path, data)
    try:
        names = read_class_names(path)
    except ClassNamesError:
        return
    assert names and all(name == name.strip() and name for name in names)
