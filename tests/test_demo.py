"""`caspl demo --quick` end to end: the table, CSV and chart it writes, every number from the run."""
import csv

from caspl_plugin.cli import main as caspl


def test_demo_quick_writes_table_and_chart(tmp_path, capsys):
    assert caspl(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for row in ("Teacher, zero-shot", "Student, zero-shot", "Student + boosting", "CoOp", "CasPL_CoOp", "PromptSRC", "CasPL_PromptSRC"):
        assert row in out
    with open(tmp_path / "demo_results.csv") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert len(rows) == 7
    for r in rows.values():
        base, novel, hm = float(r["base_mean"]), float(r["novel_mean"]), float(r["hm"])
        assert 0 <= base <= 100 and 0 <= novel <= 100
        assert abs(hm - (2 * base * novel / (base + novel) if base + novel else 0)) < 0.01
    # the shipped teacher is much better than the student on novel classes
    assert float(rows["Teacher, zero-shot"]["novel_mean"]) > float(rows["Student, zero-shot"]["novel_mean"]) + 10
    markdown = (tmp_path / "demo_results.md").read_text()
    assert "| CasPL_PromptSRC |" in markdown
    assert (tmp_path / "demo_results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_tables_are_written_and_the_chart_skipped_with_one_line(tmp_path, monkeypatch, caplog):
    import builtins

    from caspl_plugin.demo import DemoResult, DemoSettings, write_outputs

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = DemoResult()
    result.add("Student, zero-shot", 90.0, 70.0)
    with caplog.at_level("WARNING"):
        paths = write_outputs(result, tmp_path, DemoSettings(seeds=(1,)))
    assert set(paths) == {"markdown", "csv"} and all(p.is_file() for p in paths.values())
    assert not (tmp_path / "demo_results.png").exists()
    assert [r.getMessage() for r in caplog.records] == ["matplotlib is not installed, charts skipped (pip install 'caspl-plugin[plots]')"]


def test_ctrl_c_writes_the_rows_finished_marked_partial(tmp_path, capsys, monkeypatch):
    import caspl_plugin.demo.per_domain as per_domain

    calls = []
    adapt = per_domain.adapt_toy_method

    def interrupted_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return adapt(*args, **kwargs)

    monkeypatch.setattr(per_domain, "adapt_toy_method", interrupted_second_time)
    assert caspl(["demo", "--quick", "--no-progress", "--out", str(tmp_path)]) == 130
    markdown = (tmp_path / "demo_results.md").read_text()
    assert "**Partial: interrupted after 4 finished run(s)" in markdown  # 2 zero-shot, boosting, CoOp
    assert "| CoOp |" in markdown and "CasPL_CoOp" not in markdown and "PromptSRC" not in markdown
    assert "partial results written" in capsys.readouterr().err
