"""The method registry: built-in methods without importing anything by hand, other packages' methods
through the entry-point group, helpful errors."""
import sys

import pytest

from caspl_plugin.methods import PromptModel, get_method, list_methods, registry


def test_builtin_methods_are_registered_by_importing_the_package():
    assert {"zeroshot", "coop", "cocoop", "ivlp", "maple", "promptsrc"} <= set(list_methods())


def test_entry_point_methods_are_loaded_once(tmp_path, monkeypatch):
    (tmp_path / "third_party_method.py").write_text(
        "from caspl_plugin.methods import PromptModel, register_method\n"
        "@register_method\n"
        "class ThirdParty(PromptModel):\n"
        "    method = 'third_party'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loads = []

    class Entry:
        name = "third_party"

        def load(self):
            loads.append(self.name)
            import third_party_method  # noqa: F401

    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [Entry()] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_loaded_entry_points", False)
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    try:
        cls = get_method("Third_Party")
        assert issubclass(cls, PromptModel) and cls.method == "third_party"
        assert "third_party" in list_methods()
        assert loads == ["third_party"]
    finally:
        sys.modules.pop("third_party_method", None)


def test_unknown_method_gets_suggestions():
    with pytest.raises(KeyError, match="Did you mean promptsrc"):
        get_method("promptsrcc")
