"""Errors in the user's words: the flag they typed, how many tokens the context has and which flag
frees some, and a did-you-mean for every name."""
import pytest

from caspl_plugin.cli import main as caspl


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from caspl_plugin.toy import domain

    root = tmp_path_factory.mktemp("errors")
    unlabeled = domain.write_image_folder(root / "unlabeled", num_per_class=1, seed=0)
    labeled = domain.write_coop_layout(root / "labeled", train_per_class=4, val_per_class=1, test_per_class=2) / "images"
    return unlabeled, labeled, root


def _error(capsys, argv) -> str:
    assert caspl(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_weights_name_the_flags(toy, tmp_path, capsys, monkeypatch):
    unlabeled, _, _ = toy
    monkeypatch.delenv("CASPL_WEIGHTS_DIR", raising=False)
    err = _error(capsys, ["distill", "--images", str(unlabeled.images), "--class-names", str(unlabeled.class_names),
                          "--student", "ViT-B/16", "-o", str(tmp_path / "b.safetensors")])
    assert "--student-weights '/path/to/ViT-B-16.pt'" in err and "--weights-dir" in err and "weights=" not in err
    err = _error(capsys, ["distill", "--images", str(unlabeled.images), "--class-names", str(unlabeled.class_names),
                          "--student", "toy-student", "--teacher", "ViT-L/14", "-o", str(tmp_path / "b.safetensors")])
    assert "--teacher-weights 'random'" in err and "weights=" not in err


def test_a_prompt_that_does_not_fit_says_how_many_tokens_and_which_flag(toy, tmp_path, capsys):
    _, labeled, _ = toy
    err = _error(capsys, ["adapt", "--data", str(labeled), "--method", "coop", "--student", "toy-student",
                          "--model-arg", "n_ctx=16", "--model-arg", "ctx_init=", "--shots", "1",
                          "-o", str(tmp_path / "c.safetensors")])
    assert "the text tower's context has 20 tokens" in err and "16 prompt tokens" in err
    assert "--model-arg n_ctx=K" in err
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("argv, expected", [
    (["adapt", "--data", "{labeled}", "--method", "promtsrc"], "Did you mean promptsrc?"),
    (["adapt", "--data", "{labeled}", "--method", "coop", "--preset", "basenovel"], "Did you mean base2novel"),
    (["adapt", "--dataset", "OxfordPet", "--root", "{root}"], "Did you mean OxfordPets"),
    (["adapt", "--data", "{labeled}", "--student", "ViT-B/61"], "--student: Unknown CLIP model"),
    (["distill", "--images", "{images}", "--class-names", "{names}", "--teacher", "ViT-L/41"], "--teacher: Unknown CLIP model"),
    (["distill", "--images", "{images}", "--class-names", "{names}", "--template", "OxfordPet"], "Did you mean OxfordPets"),
])
def test_names_get_a_did_you_mean(toy, tmp_path, capsys, argv, expected):
    unlabeled, labeled, root = toy
    values = {"labeled": str(labeled), "root": str(root), "images": str(unlabeled.images), "names": str(unlabeled.class_names)}
    argv = [a.format(**values) for a in argv] + ["-o", str(tmp_path / "x.safetensors")]
    assert expected in _error(capsys, argv)
