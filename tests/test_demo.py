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
