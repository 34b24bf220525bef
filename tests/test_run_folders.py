"""Runs that can be found again: caspl distill / adapt write a run folder beside their output (the
resolved options, re-runnable with --config; the log; per-epoch metrics; the result), leave the data
folder and no lock behind, and caspl report reads them."""
import json
import os
import stat

import pytest
import yaml

from caspl_plugin.artifacts.store import load_artifact
from caspl_plugin.cli import main as caspl


@pytest.fixture(scope="module")
def read_only_data(tmp_path_factory):
    """A CoOp-layout toy domain whose folders and files cannot be written."""
    from caspl_plugin.toy import domain

    root = tmp_path_factory.mktemp("ro")
    images = domain.write_coop_layout(root, train_per_class=4, val_per_class=1, test_per_class=2, seed=0) / "images"
    for folder, dirs, files in os.walk(images.parent):
        for name in files:
            os.chmod(os.path.join(folder, name), stat.S_IRUSR | stat.S_IRGRP)
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    yield images
    for folder, dirs, files in os.walk(images.parent):
        os.chmod(folder, stat.S_IRWXU)


def _tree(folder):
    return sorted((p, os.stat(os.path.join(d, p)).st_mtime_ns) for d, _, files in os.walk(folder) for p in files)


def test_adapt_on_a_read_only_data_folder_writes_only_its_run_folder_and_report_reads_it(read_only_data, tmp_path, capsys):
    before = _tree(read_only_data.parent)
    out = tmp_path / "runs" / "coop.safetensors"
    assert caspl(["adapt", "--data", str(read_only_data), "--method", "coop", "--student", "toy-student", "--shots", "2",
                  "--epochs", "1", "--subsample", "base", "--no-progress", "-o", str(out)]) == 0
    assert _tree(read_only_data.parent) == before
    run = tmp_path / "runs" / "coop.run"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "log.txt", "metrics.csv", "metrics.json",
                                                      "result.json", "split_fewshot"]
    assert not list((tmp_path / "runs").glob("*.lock*"))
    result = json.loads((run / "result.json").read_text())
    assert result["method"] == "coop" and set(result["evaluation"]) == {"base", "novel", "hm"}
    assert "wrote " in (run / "log.txt").read_text() and "epoch 1/1" in (run / "log.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["epochs"][0]["epoch"] == 1
    capsys.readouterr()

    assert caspl(["report", str(tmp_path / "runs"), "--no-chart"]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("coop.run"))
    assert "adapt" in row and "coop" in row and f"{result['evaluation']['base']:.2f}" in row


def test_config_round_trip_reproduces_the_run(tmp_path, capsys):
    first = tmp_path / "a" / "boost.safetensors"
    assert caspl(["distill", "--demo", "--out", str(tmp_path / "demo"), "--n-text", "2", "--n-vision", "2",
                  "--epochs", "1", "--seed", "3", "--no-progress", "-o", str(first)]) == 0
    config = tmp_path / "a" / "boost.run" / "config.yaml"
    options = yaml.safe_load(config.read_text())
    assert options["seed"] == 3 and options["epochs"] == 1 and options["batch_size"] == 16 and options["n_text"] == 2
    assert "resume" not in options and "config" not in options

    second = tmp_path / "b" / "boost.safetensors"
    assert caspl(["distill", "--config", str(config), "-o", str(second)]) == 0  # the flag wins over the file
    (a, meta_a), (b, meta_b) = (load_artifact(p, expected_format="caspl-boosting") for p in (first, second))
    assert meta_a["training"] == meta_b["training"]
    assert all((a[k] == b[k]).all() for k in a)
    assert yaml.safe_load((tmp_path / "b" / "boost.run" / "config.yaml").read_text()) == {**options, "output": str(second)}

    capsys.readouterr()
    assert caspl(["report", str(tmp_path), "--no-chart"]) == 0
    assert sum(line.split()[1] == "distill" for line in capsys.readouterr().out.splitlines() if ".run" in line) == 2


@pytest.mark.parametrize("content, message", [
    ("epoch: 3\n", "unknown option 'epoch'; did you mean 'epochs'?"),
    ("epochs: three\n", "epochs: invalid int value"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("teacher_scale: mine\n", "teacher_scale: 'mine' is not one of own, student"),
    ("epochs: [1, 2\n", "not valid YAML"),
])
def test_bad_config_files_are_refused_naming_the_key(tmp_path, capsys, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    assert caspl(["distill", "--demo", "--out", str(tmp_path / "demo"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "demo").exists()
