"""docs/config.md covers every config field of stages/defaults.py and is what
scripts/config_doc.py writes now."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import config_doc  # noqa: E402


def test_every_config_field_has_a_meaning_and_every_meaning_a_field():
    assert config_doc.undocumented() == [], "add them to MEANINGS in scripts/config_doc.py"
    assert config_doc.unused_meanings() == []


def test_docs_config_md_is_current():
    with open(config_doc.DOC, encoding="utf-8") as f:
        assert f.read() == config_doc.render(), "run python scripts/config_doc.py"


def test_every_field_appears_in_the_doc():
    text = config_doc.render()
    for path in config_doc.fields():
        assert f"`{config_doc.meaning_key(path)}`" in text, path


def test_a_new_field_without_a_meaning_is_reported(monkeypatch):
    real = config_doc.defaults

    def more():
        c = real()
        c.align.new_knob = 1
        return c

    monkeypatch.setattr(config_doc, "defaults", more)
    assert config_doc.undocumented() == ["align.new_knob"]
