"""Run guard of the training commands, exercised through `caspl distill`: exact skip counts,
preflight, one-line OSError messages with the checkpoint intact, the output lock, stale temporary
files, Ctrl-C (exit 130), SIGKILL + --resume (bit-identical prompts), and a closed stdout pipe."""
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from caspl_plugin.artifacts.store import load_artifact, save_artifact
from caspl_plugin.cli import CommandError
from caspl_plugin.cli import main as caspl
from caspl_plugin.cli import runguard
from caspl_plugin.files import stale_temporaries
from helpers_images import write_images_with_bad_ones

CLASSES = ["red circle", "blue square", "green triangle", "yellow star"]
BAD_POSITIONS = {0, 6, 12}  # of 13 files: 10 readable
CHECKPOINT_FORMAT = "caspl-distill-checkpoint"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("runguard")
    files, bad = write_images_with_bad_ones(root / "images", 13, BAD_POSITIONS)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root / "images", root / "classes.txt", bad


def _args(folder, out, *extra):
    images, classes, _ = folder
    return [
        "distill", "--images", str(images), "--class-names", str(classes), "-o", str(out),
        "--student", "caspl-tiny-student", "--teacher", "caspl-tiny-teacher", "--epochs", "2",
        "--batch-size", "4", "--n-text", "2", "--n-vision", "2", "--no-progress", "--device", "cpu", *extra,
    ]


def _checkpoint(out: Path) -> Path:
    return out.with_name(out.stem + ".ckpt.safetensors")


def _no_temporaries(out: Path) -> bool:
    return not stale_temporaries(out) and not stale_temporaries(_checkpoint(out)) and not list(out.parent.glob(".*.tmp"))


# ---- exact counts ------------------------------------------------------------------------------

def test_skip_count_is_exact_for_every_batch_size(folder, tiny_student, tiny_teacher, monkeypatch):
    from caspl_plugin.boosting import BoostingConfig, DistillSettings, build_distiller, run_distillation
    from caspl_plugin.engine import loop
    from caspl_plugin.data.images import probe_images
    from caspl_plugin.data.unlabeled import UnlabeledImages, list_images, train_transform

    batches = []  # the batches the loop trains on (the optimisation itself is tested elsewhere)
    monkeypatch.setattr(loop, "synced_step", lambda objective, images, *a, **k: batches.append(len(images)) or {"loss": 1.0})

    images, _, bad = folder
    probe = probe_images(list_images(images), workers=2)
    assert [path for path, _ in probe.unreadable] == bad and len(probe.readable) == 10
    dataset = UnlabeledImages(probe.readable, train_transform(32, tiny_student.mean, tiny_student.std))
    distiller = build_distiller(tiny_student, tiny_teacher, CLASSES, config=BoostingConfig(2, 2, 1, 1))
    for batch_size in range(1, 9):
        batches.clear()
        report = run_distillation(distiller, dataset, DistillSettings(epochs=1, batch_size=batch_size), progress=False,
                                  known_unreadable=[str(path) for path, _ in probe.unreadable])
        assert report.skipped == sorted(str(path) for path in bad), batch_size
        assert report.left_out_per_epoch == 10 % batch_size
        assert report.steps == 10 // batch_size and batches == [batch_size] * (10 // batch_size)


def test_distill_records_the_true_skip_count_and_warns_about_warmup_only_runs(folder, tmp_path, capsys):
    from caspl_plugin.artifacts.boosting import BoostingArtifact

    out = tmp_path / "boost.safetensors"
    assert caspl(_args(folder, out, "--epochs", "1", "--batch-size", "7")) == 0
    captured = capsys.readouterr()
    assert "warning: --epochs 1 does not exceed the 1 warm-up epoch(s)" in captured.err
    assert "skipped 3 unreadable image(s):" in captured.out
    assert all(str(path) in captured.out for path in folder[2])
    assert "each epoch left out 3 of 10 readable image(s)" in captured.out
    training = BoostingArtifact.load(out).metadata["training"]
    assert training["skipped_images"] == 3 and training["left_out_per_epoch"] == 3
    assert _no_temporaries(out) and not Path(f"{out}.lock.json").exists()


# ---- preflight ---------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["output is a folder", "parent is a file", "folder refuses new files", "checkpoint is a folder"])
def test_preflight_fails_before_any_model_is_built(case, folder, tmp_path, monkeypatch, capsys):
    import caspl_plugin.clip

    monkeypatch.setattr(caspl_plugin.clip, "create_clip", lambda *a, **k: pytest.fail("a model was built"))
    out = tmp_path / "out" / "boost.safetensors"
    out.parent.mkdir()
    keep = out.parent / "earlier.safetensors"
    keep.write_bytes(b"earlier work")
    if case == "output is a folder":
        out.mkdir()
        expected = "is a folder; expected the path of a file"
    elif case == "parent is a file":
        (tmp_path / "plain").write_text("a file")
        out = tmp_path / "plain" / "sub" / "boost.safetensors"
        expected = "is a file, not a folder"
    elif case == "checkpoint is a folder":
        _checkpoint(out).mkdir()
        expected = "checkpoint " + str(_checkpoint(out)) + " is a folder"
    else:  # root ignores permission bits, so the refusal is simulated where the probe file is created
        real_open = os.open

        def refusing_open(path, flags, *args, **kwargs):
            if str(path).endswith(".tmp"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(runguard.os, "open", refusing_open)
        expected = "does not accept new files (Permission denied (EACCES)"
    assert caspl(_args(folder, out)) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and err.count("\n") == 1
    assert keep.read_bytes() == b"earlier work"
    if case == "parent is a file":
        assert (tmp_path / "plain").read_text() == "a file"
    assert not out.is_file() and _no_temporaries(out)


# ---- OSErrors during the run -------------------------------------------------------------------

class _FailingWrite:
    """A file handle whose write stores half the data, then fails like a full disk or an I/O error."""

    def __init__(self, handle, code):
        self.handle, self.code = handle, code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name):
        return getattr(self.handle, name)


@pytest.mark.parametrize("target, code, ticket, epochs_saved", [
    ("checkpoint", errno.ENOSPC, 2, 1),   # the disk fills while the 2nd epoch's checkpoint is written
    ("artifact", errno.EIO, 1, 2),        # an I/O error while the artifact is written
])
def test_os_errors_print_one_line_and_keep_the_checkpoint(target, code, ticket, epochs_saved, folder, tmp_path, monkeypatch, capsys):
    from caspl_plugin import files

    out = tmp_path / "boost.safetensors"
    name = (_checkpoint(out) if target == "checkpoint" else out).name
    writes = []
    real_open = open

    def failing_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if Path(file).name[1:].rsplit(".", 2)[0] == name and "x" in mode:
            writes.append(file)
            if len(writes) == ticket:
                return _FailingWrite(handle, code)
        return handle

    monkeypatch.setattr(files, "open", failing_open, raising=False)
    assert caspl(_args(folder, out)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"caspl distill: error: {os.strerror(code)} ({errno.errorcode[code]}): ")
    assert name in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and _no_temporaries(out) and not Path(f"{out}.lock.json").exists()
    _, metadata = load_artifact(_checkpoint(out), expected_format=CHECKPOINT_FORMAT)
    assert metadata["next_epoch"] == epochs_saved
    monkeypatch.setattr(files, "open", real_open, raising=False)
    assert caspl(_args(folder, out, "--resume")) == 0  # nothing lost: the run completes from it
    assert out.is_file() and _no_temporaries(out)


# ---- the output lock and temporary files -------------------------------------------------------

def test_a_second_run_on_the_same_output_refuses_at_once(folder, tmp_path, capsys):
    out = tmp_path / "boost.safetensors"
    with runguard.output_lock(out, command="distill"):
        assert caspl(_args(folder, out)) == 2
    err = capsys.readouterr().err
    assert "is being written by another run" in err
    assert f"pid {os.getpid()} on {socket.gethostname()}, started " in err
    assert not out.exists() and not _checkpoint(out).exists()


def test_lock_names_the_other_process_and_dies_with_it(tmp_path):
    out = tmp_path / "boost.safetensors"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom caspl_plugin.cli.runguard import output_lock\n"
         "with output_lock(sys.argv[1], command='distill'):\n    print('held', flush=True)\n    time.sleep(120)\n", str(out)],
        stdout=subprocess.PIPE, env=ENV, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CommandError, match=rf"pid {holder.pid} on .*caspl distill"):
            with runguard.output_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert Path(f"{out}.lock").exists()  # a killed holder leaves the file, not the lock
    with runguard.output_lock(out):  # the operating system released the killed holder's lock
        assert f"pid {os.getpid()}" in runguard._owner_text(Path(f"{out}.lock.json"))
    assert not Path(f"{out}.lock.json").exists() and not Path(f"{out}.lock").exists()  # a finished run leaves nothing


def test_remove_stale_temps_removes_only_the_outputs_own(tmp_path):
    out = tmp_path / "boost.safetensors"
    own = [tmp_path / ".boost.safetensors.deadbeef.tmp", tmp_path / ".boost.safetensors.0123abcd.tmp"]
    others = [tmp_path / ".boost.ckpt.safetensors.deadbeef.tmp", tmp_path / ".other.safetensors.deadbeef.tmp",
              tmp_path / "boost.safetensors.deadbeef.tmp", tmp_path / ".boost.safetensors.lock.json.deadbeef.tmp",
              tmp_path / "boost.safetensors"]
    for path in own + others:
        path.write_bytes(b"x")
    assert runguard.remove_stale_temps(out) == 2
    assert not any(path.exists() for path in own) and all(path.exists() for path in others)
    assert runguard.remove_stale_temps(tmp_path / "missing" / "boost.safetensors") == 0


# ---- interruptions: SIGKILL and Ctrl-C, then --resume --------------------------------------------

KILL_TEST_ARGS = ("--epochs", "3", "--batch-size", "2")


def _start(folder, out, *extra):
    command = [sys.executable, "-m", "caspl_plugin.cli", *_args(folder, out, *KILL_TEST_ARGS, *extra)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)


def _single_threaded_run(folder, out, *extra) -> int:
    """An in-process run with the subprocesses' thread count (OMP_NUM_THREADS=1), so floats match."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return caspl(_args(folder, out, *KILL_TEST_ARGS, *extra))
    finally:
        torch.set_num_threads(threads)


def _prompts(out: Path) -> dict[str, torch.Tensor]:
    from caspl_plugin.artifacts.boosting import BoostingArtifact

    return BoostingArtifact.load(out).tensors


def _signal_when(victims: dict, running: dict, outs: dict) -> None:
    """Send each victim its signal at its moment: ``"lock"`` = once the run holds its output lock
    (before any checkpoint), ``"checkpoint"`` = once the first epoch's checkpoint exists; plus a delay."""
    seen, deadline = {}, time.monotonic() + 600
    while len(seen) < len(victims) or any(value is not True for value in seen.values()):
        if time.monotonic() > deadline:
            return
        for name, (sig, when, delay) in victims.items():
            if seen.get(name) is True or running[name].poll() is not None:
                seen[name] = True
                continue
            marker = Path(f"{outs[name]}.lock.json") if when == "lock" else _checkpoint(outs[name])
            if name not in seen and marker.exists():
                seen[name] = time.monotonic()
            if name in seen and time.monotonic() - seen[name] >= delay:
                running[name].send_signal(sig)
                seen[name] = True
        time.sleep(0.005)


def test_killed_and_interrupted_runs_resume_bit_identically(folder, tmp_path):
    import threading

    victims = {"killed-in-setup": (signal.SIGKILL, "lock", 0.0),
               "killed-at-checkpoint": (signal.SIGKILL, "checkpoint", 0.0),
               "ctrl-c-mid-epoch": (signal.SIGINT, "checkpoint", 0.05)}
    outs = {name: tmp_path / name / "boost.safetensors" for name in victims}
    running = {name: _start(folder, outs[name]) for name in victims}
    killer = threading.Thread(target=_signal_when, args=(victims, running, outs), daemon=True)
    killer.start()
    reference_out = tmp_path / "reference" / "boost.safetensors"
    assert _single_threaded_run(folder, reference_out) == 0
    killer.join(timeout=600)
    results = {name: (proc.wait(timeout=600), proc.communicate()) for name, proc in running.items()}
    assert results["killed-in-setup"][0] == -signal.SIGKILL
    assert results["killed-at-checkpoint"][0] == -signal.SIGKILL
    code, (_, err) = results["ctrl-c-mid-epoch"]
    assert code == 130, err
    assert "caspl distill: interrupted at epoch " in err and "; resume with --resume" in err and "Traceback" not in err

    expected = _prompts(reference_out)
    for name, out in outs.items():
        (out.parent / f".{out.name}.deadbeef.tmp").write_bytes(b"partial")  # what a write killed half-way leaves
        (out.parent / f".{_checkpoint(out).name}.0badf00d.tmp").write_bytes(b"partial")
        assert _single_threaded_run(folder, out, "--resume") == 0, name
        prompts = _prompts(out)
        assert prompts.keys() == expected.keys()
        assert all(torch.equal(prompts[key], expected[key]) for key in expected), name
        assert _no_temporaries(out), name


# ---- stdout closed by the reader ---------------------------------------------------------------

def test_inspect_json_into_a_closed_pipe_exits_quietly(tmp_path):
    path = tmp_path / "a.safetensors"
    save_artifact(path, {"x": torch.zeros(4)}, {"format": "demo", "format_version": 1, "class_names": [f"class {i}" for i in range(5000)]})
    proc = subprocess.Popen([sys.executable, "-m", "caspl_plugin.cli", "inspect", "--json", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    proc.stdout.close()  # the reader is gone before anything is printed, as with `| head` that exited
    code = proc.wait(timeout=120)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert code == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err
