"""docs/cli.md is generated from the argparse parsers (scripts/cli_reference.py) and must be current."""
import difflib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "cli.md"


def generator():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_current():
    module = generator()
    expected = module.render()
    committed = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    if committed != expected:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), expected.splitlines(True),
                                                 "docs/cli.md (committed)", "docs/cli.md (generated)"))[:60])
        raise AssertionError(f"docs/cli.md is not current; run `{module.COMMAND}` and commit it.\n{diff}")


def test_the_cli_reference_covers_every_command_and_option():
    from caspl_plugin.cli import COMMANDS

    text = REFERENCE.read_text(encoding="utf-8")
    for name in COMMANDS:
        assert f"\n## `caspl {name}`\n" in text, name
    for option in ("--threads N", "--boosting", "--quantize", "--eval-only", "--teacher-cache DIR"):
        assert option in text, option


def test_the_rendering_does_not_depend_on_the_terminal(monkeypatch):
    module = generator()
    first = module.render()
    monkeypatch.setenv("COLUMNS", "37")
    assert module.render() == first
