"""Registry (built-ins, register, entry points, "module:attr") and weighted composition."""
import importlib
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import verifiers
from verifiers import Score, registry
from verifiers.format import FormatVerifier

HERE = str(Path(__file__).parent)


@pytest.fixture(autouse=True)
def plugins(monkeypatch):
    """tests/verifiers/plugin_examples.py, importable by name as a third-party plug-in would be."""
    monkeypatch.syspath_prepend(HERE)
    return importlib.import_module("plugin_examples")


@pytest.fixture
def clean_registry():
    before = dict(registry._registered)
    yield
    registry._registered.clear()
    registry._registered.update(before)


# -- get / resolve ------------------------------------------------------------------------------


def test_builtin_format_is_built_with_options():
    verifier = verifiers.get("format", preset="think_answer")
    assert isinstance(verifier, FormatVerifier)
    assert verifier.name == "format" and verifier.preset == "think_answer"
    assert isinstance(verifier, verifiers.Verifier)


def test_builtins_are_listed_and_imported_lazily(monkeypatch):
    assert {"math", "code", "format"} <= set(verifiers.available())
    # A broken built-in (e.g. a half-written module or a missing optional dependency) only
    # breaks itself.
    monkeypatch.setitem(registry.BUILTINS, "math", ("verifiers._no_such_module", "MathVerifier"))
    with pytest.raises(ImportError):
        verifiers.get("math")
    assert verifiers.get("format").name == "format"


def test_unknown_name_lists_known_ones_and_suggests():
    with pytest.raises(verifiers.UnknownVerifierError) as err:
        verifiers.get("fromat")
    message = str(err.value)
    assert "'fromat'" in message and "Did you mean 'format'?" in message
    assert "code, format, math" in message and "package.module:attr" in message


def test_bad_options_name_the_verifier():
    with pytest.raises(TypeError, match="verifier 'format'.*no_such_option"):
        verifiers.get("format", no_such_option=1)


# -- "package.module:attr" ------------------------------------------------------------------------


def test_module_attr_function_is_wrapped():
    verifier = verifiers.get("plugin_examples:contains_answer")
    assert isinstance(verifier, verifiers.FunctionVerifier)
    assert verifier.name == "contains_answer"
    assert verifier.score("it is 42", {"answer": 42}) == Score(1.0, {})
    assert [s.reward for s in verifier.score_batch(["42", "7"], [{"answer": 42}] * 2)] == [1.0, 0.0]


def test_module_attr_function_options_are_bound_and_checked():
    verifier = verifiers.get("plugin_examples:length_bonus", per_char=0.1)
    assert verifier.score("abcd", {}).reward == pytest.approx(0.4)
    with pytest.raises(TypeError, match="length_bonus"):
        verifiers.get("plugin_examples:length_bonus", per_word=0.1)


def test_module_attr_class_factory_and_instance(plugins):
    cls_built = verifiers.get("plugin_examples:ExactMatch", strip=False)
    assert isinstance(cls_built, plugins.ExactMatch) and cls_built.strip is False
    factory_built = verifiers.get("plugin_examples:make_exact")
    assert factory_built.score(" x ", {"answer": "x"}).reward == 1.0
    instance = verifiers.get("plugin_examples:exact_instance")
    assert instance is plugins.exact_instance
    with pytest.raises(TypeError, match="ready-made instance"):
        verifiers.get("plugin_examples:exact_instance", strip=True)


def test_object_without_score_batch_is_completed():
    verifier = verifiers.get("plugin_examples:OnlyScore")
    assert verifier.name == "OnlyScore"
    assert verifier.score_batch(["a"], [{}]) == [Score(0.5, {})]


def test_module_attr_errors_are_specific():
    with pytest.raises(verifiers.UnknownVerifierError, match="cannot import module 'no_such_pkg.mod'"):
        verifiers.get("no_such_pkg.mod:thing")
    with pytest.raises(verifiers.UnknownVerifierError, match="has no attribute 'missing'"):
        verifiers.get("plugin_examples:missing")


def test_plugin_returning_wrong_type_is_reported():
    verifier = verifiers.FunctionVerifier(lambda c, e: "yes", name="wrong")
    with pytest.raises(TypeError, match="verifier 'wrong' returned str"):
        verifier.score("x", {})


# -- register / entry points ---------------------------------------------------------------------


def test_register_function_and_decorator(clean_registry, plugins):
    verifiers.register("has_42", plugins.contains_answer)
    assert verifiers.get("has_42").score("42", {"answer": 42}).reward == 1.0

    @verifiers.register("shouty")
    def shouty(completion, example):
        return completion.isupper()

    assert verifiers.get("shouty").score("HI", {}).reward == 1.0
    assert {"has_42", "shouty"} <= set(verifiers.available())
    with pytest.raises(ValueError, match="already registered"):
        verifiers.register("has_42", plugins.contains_answer)
    with pytest.raises(ValueError, match="already registered"):
        verifiers.register("math", plugins.contains_answer)
    verifiers.register("has_42", plugins.make_exact, overwrite=True)
    assert isinstance(verifiers.get("has_42"), plugins.ExactMatch)
    with pytest.raises(ValueError, match="':'"):
        verifiers.register("a:b", shouty)


def test_entry_point_group_is_discovered(tmp_path, monkeypatch, plugins):
    # A minimal installed distribution: what `pip install my-plugin` leaves in site-packages.
    dist = tmp_path / "my_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[grpo.verifiers]\nexact_ep = plugin_examples:ExactMatch\nbroken_ep = plugin_examples:nope\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "exact_ep" in verifiers.available()
    verifier = verifiers.get("exact_ep", strip=True)
    assert isinstance(verifier, plugins.ExactMatch)
    assert verifier.score(" a ", {"answer": "a"}).reward == 1.0
    with pytest.raises(verifiers.UnknownVerifierError, match="entry point 'plugin_examples:nope'.*failed to load"):
        verifiers.get("broken_ep")


# -- composition ----------------------------------------------------------------------------------


def test_weighted_sum_and_breakdown():
    composite = verifiers.build([
        {"name": "plugin_examples:contains_answer", "weight": 1.0},
        {"name": "plugin_examples:length_bonus", "weight": 0.5, "per_char": 0.1},
        {"name": "format", "weight": -0.25, "options": {"preset": "none", "max_length": 100,
                                                         "length_unit": "chars"}},
    ])
    assert composite.labels == ["contains_answer", "length_bonus", "format"]
    score = composite.score("42", {"answer": "42"})
    assert score.reward == pytest.approx(1.0 + 0.5 * 0.2 + 0.0)
    assert score.info["rewards"] == {"contains_answer": 1.0, "length_bonus": pytest.approx(0.2), "format": 0.0}
    assert score.info["details"]["length_bonus"] == {"chars": 2}
    assert "errors" not in score.info


def test_same_verifier_twice_gets_distinct_labels():
    composite = verifiers.build([
        {"name": "plugin_examples:length_bonus", "per_char": 0.1},
        {"name": "plugin_examples:length_bonus", "per_char": 0.2, "weight": 2.0},
        {"name": "format", "preset": "none", "max_length": 10, "length_unit": "chars", "label": "length_bonus"},
    ])
    assert composite.labels == ["length_bonus", "length_bonus_2", "length_bonus_3"]
    score = composite.score("abc", {})
    assert score.info["rewards"] == {"length_bonus": pytest.approx(0.3), "length_bonus_2": pytest.approx(0.6),
                                     "length_bonus_3": 0.0}
    assert score.reward == pytest.approx(0.3 + 2 * 0.6)


def test_exceptions_score_zero_are_counted_and_logged(caplog):
    composite = verifiers.build([
        {"name": "plugin_examples:moody", "weight": 2.0},
        {"name": "plugin_examples:contains_answer"},
    ])
    with caplog.at_level(logging.WARNING, logger="verifiers"):
        scores = composite.score_batch(["raise", "ok 1", "nan"], [{"answer": 1}] * 3)
    assert [s.reward for s in scores] == [0.0, 3.0, 0.0]
    assert scores[0].info["errors"] == {"moody": "ValueError: moody verifier refuses"}
    assert scores[0].info["rewards"] == {"moody": 0.0, "contains_answer": 0.0}
    assert "non-finite" in scores[2].info["errors"]["moody"]
    assert "errors" not in scores[1].info
    metrics = composite.metrics()
    assert metrics["verifier/errors"] == 2 and metrics["verifier/errors/moody"] == 2
    assert metrics["verifier/errors/contains_answer"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'moody' raised on 2/3 items" in warnings[0]
    composite.score("raise", {"answer": 1})  # single scoring counts too
    assert composite.metrics()["verifier/errors"] == 3


@dataclass
class _ConfigLikeSpec:  # what grpo.config.VerifierSpec looks like
    name: str
    weight: float = 1.0
    options: dict = field(default_factory=dict)


def test_specs_as_config_objects():
    composite = verifiers.build([_ConfigLikeSpec("plugin_examples:length_bonus", 3.0, {"per_char": 0.5})])
    assert composite.score("ab", {}).reward == pytest.approx(3.0)


@pytest.mark.parametrize("specs, message", [
    ([], "at least one"),
    ([{"weight": 1.0}], r"verifiers\[0\]\.name"),
    ([{"name": "format"}, {"name": "format", "weight": "heavy"}], r"verifiers\[1\]\.weight"),
    ([{"name": "format", "weight": math.inf}], r"verifiers\[0\]\.weight"),
    ([{"name": "format", "options": {"preset": "none"}, "preset": "think"}], "both flat and under 'options'"),
    ({"name": "format"}, "must be a list"),
])
def test_spec_errors_name_the_field(specs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        verifiers.build(specs)


def test_build_errors_say_which_verifier():
    with pytest.raises(TypeError) as err:
        verifiers.build([{"name": "format", "label": "fmt", "bogus": 1}])
    assert "while building verifier 'fmt'" in "".join(getattr(err.value, "__notes__", []))


def test_plugin_example_in_docs_works(tmp_path, monkeypatch):
    """docs/verifiers.md's complete plug-in example, written out and used as documented."""
    doc = (Path(__file__).parents[2] / "docs" / "verifiers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)
    module_source = next(b for b in blocks if b.startswith("# my_rewards.py"))
    (tmp_path / "my_rewards.py").write_text(module_source)
    monkeypatch.syspath_prepend(str(tmp_path))
    penalty = verifiers.get("my_rewards:length_penalty", max_chars=100)
    assert penalty.score("x" * 150, {}).reward == -1.0
    composite = verifiers.build([
        {"name": "my_rewards:KeywordVerifier", "weight": 1.0, "field": "keywords"},
        {"name": "my_rewards:length_penalty", "weight": 0.5, "max_chars": 100},
    ])
    score = composite.score("Paris is the capital of France.", {"keywords": ["paris", "france", "lyon"]})
    assert score.reward == pytest.approx(2 / 3)
    assert score.info["rewards"] == {"KeywordVerifier": pytest.approx(2 / 3), "length_penalty": 0.0}
    assert score.info["details"]["KeywordVerifier"] == {"found": ["paris", "france"]}
    missing = composite.score("text", {})
    assert "KeyError" in missing.info["errors"]["KeywordVerifier"]
    sys.modules.pop("my_rewards", None)


def test_score_extracted_answer_reads_composite_details():
    from verifiers.base import Score

    assert Score(1.0, {"extracted": "42"}).extracted_answer() == "42"
    assert Score(0.0, {"details": {"math": {"extracted": "7"}, "format": {}}}).extracted_answer() == "7"
    assert Score(0.0, {"answer_key": "x", "extracted": "y"}).extracted_answer() == "x"
    assert Score(0.0, {"extracted": ""}).extracted_answer() is None
    assert Score(0.0).extracted_answer() is None
