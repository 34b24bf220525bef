"""The thread policy: free CPUs -> torch threads, with the machine's state mocked."""
import pytest
import torch

from caspl_plugin import threads


@pytest.mark.parametrize("cpus, busy, processes, expected", [
    (2, 0, 1, 2),     # idle: every CPU
    (2, 1, 1, 1),     # one CPU taken
    (2, 8, 1, 1),     # oversubscribed: one thread, never zero
    (16, 4, 2, 6),    # torchrun: two processes share the 12 free CPUs
    (16, 20, 2, 1),
    (1, 0, 4, 1),
])
def test_free_cpus_make_the_threads(cpus, busy, processes, expected):
    assert threads.choose_threads(cpus, busy, processes) == expected


@pytest.mark.parametrize("loadavg, expected", [
    ("0.10 0.20 0.30 1/200 12345", 0),   # only this process runs
    ("8.50 7.00 3.00 9/300 12345", 8),   # eight others run, and have for a while
    ("7.90 7.00 3.00 2/300 12345", 1),   # old load, one other running now
    ("0.40 0.10 0.00 9/300 12345", 0),   # a momentary burst: not load yet
    ("garbage", 0),
])
def test_busy_cpus_from_the_run_queue_and_the_load(loadavg, expected):
    assert threads.busy_cpus(loadavg) == expected


def test_configure_applies_and_reports_the_choice(monkeypatch, caplog):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 3)
    monkeypatch.delenv("CASPL_THREADS", raising=False)
    try:
        with caplog.at_level("INFO", logger="caspl_plugin.threads"):
            choice = threads.configure_threads()
        assert choice.threads == 1 and torch.get_num_threads() == 1 and not choice.explicit
        assert "4 CPU(s) usable, 3 busy" in caplog.text
        assert threads.configure_threads(3).threads == 3 and torch.get_num_threads() == 3
        monkeypatch.setenv("CASPL_THREADS", "2")
        assert threads.configure_threads().explicit and torch.get_num_threads() == 2
        monkeypatch.setenv("CASPL_THREADS", "many")
        with pytest.raises(ValueError, match="CASPL_THREADS"):
            threads.configure_threads()
    finally:
        torch.set_num_threads(before)


def test_threads_flag_is_checked(capsys):
    from caspl_plugin.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--threads", "0"])
    assert exit_info.value.code == 2 and "--threads" in capsys.readouterr().err
