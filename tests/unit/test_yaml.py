"""generate/yaml.py: what it writes, PyYAML's safe loader reads back as the same value."""

import pytest
import yaml as pyyaml
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor_fastapi.generate import yaml

from ..hypothesis_profiles import examples
from .test_fuzz import SPECIALS

TRICKY = SPECIALS + ["", "yes", "No", "ON", "off", "y", "N", "true", "False", "null", "Null", "~", "nan", ".nan",
                     ".inf", "-.inf", "inf", "1", "0o17", "0x1F", "012", "1e3", "1_000", "1:20", "2001-12-14", "-",
                     "--", "---", "...", "- a", "-a", "--a", "a: b", "a:b", "a #b", "#a", "&a", "*a", "!a", "|", ">",
                     "%YAML", "@a", "`a", "{a}", "[a]", "a,b", "'a'", '"a"', "<<", "=", "?", "? a", "\ufeff",
                     "\u00a0", "\x7f", "\x9f", "\ud7ff", "\ue000", "\ufffe", "\U0001f4a5", "a\\nb", " a", "a ",
                     "/srv/x", "app.kubernetes.io/name", "--no-access-log", "0.0.0.0", "600Mi"]
texts = st.one_of(st.sampled_from(TRICKY), st.text(max_size=12),
                  st.lists(st.sampled_from(TRICKY), max_size=4).map("".join))
scalars = st.one_of(texts, st.integers(-(2**70), 2**70), st.booleans(), st.none())
values = st.recursive(scalars, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(texts, ch, max_size=4),
                      max_leaves=20)


def roundtrip(docs):
    return list(pyyaml.safe_load_all(yaml.dump_all(docs)))


@pytest.mark.parametrize("text", TRICKY)
def test_every_tricky_string_reads_back_as_itself(text):
    assert roundtrip([{text: text, "list": [text, [text]]}]) == [{text: text, "list": [text, [text]]}]


@settings(max_examples=examples(400), deadline=None)
@given(st.lists(st.dictionaries(texts, values, max_size=5), max_size=3))
def test_generated_documents_round_trip(docs):
    assert roundtrip(docs) == docs


def test_plain_only_where_unambiguous():
    assert yaml.string("web") == "web" and yaml.string("/srv/a_b.c") == "/srv/a_b.c"
    assert yaml.string("--factory") == "--factory"
    for text in ("yes", "8000", "0.0.0.0", "a b", "a:b", "", "-", "---", "-1"):
        assert yaml.string(text).startswith('"'), text


def test_block_style_is_kubectl_style():
    text = yaml.dump_all([{"a": {"b": [1, {"c": "d", "e": []}]}, "f": {}}], ["header"])
    assert text == "# header\n---\na:\n  b:\n  - 1\n  - c: d\n    e: []\nf: {}\n"


def test_floats_and_odd_keys_are_refused():
    with pytest.raises(TypeError):
        yaml.dump_all([{"a": 1.5}])
    with pytest.raises(TypeError):
        yaml.dump_all([{1: "a"}])
    with pytest.raises(ValueError):
        yaml.dump_all([], ["line\nbreak"])
