"""Task entries of a gate file: parsing into a TaskSpec, the errors that name the key and the fix, the registry."""

from __future__ import annotations

import pytest

from pytest_longctx.tasks import FAMILIES, TaskError, TaskSpec, build_task, parse_task, uses_depth

EXPECTED_FAMILIES = {
    "niah", "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "variable_tracking",
    "common_words", "frequent_words", "multi_doc_qa",
}


def test_registry_holds_every_family_with_depth_only_where_position_matters():
    assert EXPECTED_FAMILIES <= set(FAMILIES)  # other modules may register more
    assert {name for name in EXPECTED_FAMILIES if not uses_depth(parse_task(name))} == {
        "variable_tracking", "common_words", "frequent_words"}


def test_a_family_name_gets_every_default():
    spec = parse_task("niah_single")

    assert spec == TaskSpec("niah_single", "niah_single", (("haystack", "essay"), ("near_misses", 0), ("value", "number")))
    assert spec.option("value") == "number"
    assert parse_task("niah").options == (("near_misses", 0),)


def test_a_mapping_sets_options_and_names_the_variant():
    spec = parse_task({"family": "niah_single", "value": "uuid", "haystack": "logs", "near_misses": 0})

    assert spec.name == "niah_single(haystack=logs,value=uuid)"  # only options that differ from the defaults
    assert dict(spec.options) == {"haystack": "logs", "near_misses": 0, "value": "uuid"}
    assert parse_task({"family": "niah_single", "value": "number"}) == parse_task("niah_single")
    named = parse_task({"family": "niah_multikey", "name": "mk8", "distractors": 8})
    assert (named.name, named.option("distractors")) == ("mk8", 8)


@pytest.mark.parametrize(
    ("raw", "key", "problem", "fix"),
    [
        ("ruler", "family", "'ruler' is not a task family", "use one of: niah, niah_single"),
        ({"value": "uuid"}, "family", "is missing", "add family: one of niah"),
        ({"family": 3}, "family", "3 is not a task family", "use one of"),
        ({"family": "niah_single", "values": 3}, "values", "is not an option of niah_single",
         "use one of: value, haystack, near_misses"),
        ({"family": "niah", "value": "word"}, "value", "is not an option of niah", "use one of: near_misses"),
        ({"family": "niah_single", "value": "emoji"}, "value", "'emoji' is not supported", "use one of: number, word, uuid"),
        ({"family": "niah_multikey", "distractors": 0}, "distractors", "0 is out of range", "from 1 to 32"),
        ({"family": "niah_multikey", "distractors": "3"}, "distractors", "expected a whole number", "distractors: 3"),
        ({"family": "common_words", "top_k": True}, "top_k", "expected a whole number", "top_k: 10"),
        ({"family": "niah", "name": "two words"}, "name", "is not a usable name", "without spaces"),
        ({"family": "niah", "name": ""}, "name", "is not a usable name", "without spaces"),
        (["niah"], "", "expected a family name or a mapping", "{family: niah_single}"),
    ],
)
def test_bad_entries_name_the_key_the_problem_and_the_fix(raw, key, problem, fix):
    with pytest.raises(TaskError) as raised:
        parse_task(raw)

    error = raised.value
    assert isinstance(error, ValueError)
    assert error.key == key and problem in error.problem and fix in error.fix
    assert str(error) == (f"{key}: " if key else "") + f"{error.problem}; {error.fix}"


def test_build_task_checks_a_hand_made_spec(smollm_tokenizer):
    with pytest.raises(TaskError, match="not a task family"):
        build_task(smollm_tokenizer, TaskSpec("ruler", "ruler", ()), length=512, depth=0.5, seed=0)
    with pytest.raises(TaskError, match="top_k: 0 is out of range"):
        build_task(smollm_tokenizer, TaskSpec("common_words", "cw", (("top_k", 0),)), length=512, depth=0.5, seed=0)
    with pytest.raises(TaskError, match="colour: is not an option"):
        build_task(smollm_tokenizer, TaskSpec("niah", "niah", (("colour", 1),)), length=512, depth=0.5, seed=0)


def test_only_document_families_take_arrange(smollm_tokenizer):
    assert [name for name, family in FAMILIES.items() if family.arranges] == ["multi_doc_qa"]
    with pytest.raises(ValueError, match="niah has no documents to arrange"):
        build_task(smollm_tokenizer, parse_task("niah"), length=512, depth=0.5, seed=0, arrange=list)
