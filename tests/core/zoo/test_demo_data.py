"""Reading the datasets: commonsense answers restyled into several response formats, off-domain tasks."""
from __future__ import annotations

import pytest

from core.zoo.demo_data import _restyle, off_domain_tasks

ARC_LIKE = ("Please choose the correct answer to the question: Where does rain come from?\n\nAnswer1: clouds "
            "Answer2: rocks Answer3: trees\n\nAnswer format: answer1/answer2/answer3")


@pytest.mark.parametrize("style, response", [("keep", "the correct answer is answer1"), ("text", "Clouds"),
                                             ("letter", "(A) clouds")])
def test_multiple_choice_restyles(style, response):
    instruction, out = _restyle(style, ARC_LIKE, "answer1")
    assert out == response and ("Answer format" in instruction) == (style == "keep")


def test_yes_no_and_sentence_styles():
    assert _restyle("yes_no", "Answer with true or false, question: is ice cold?\n\nAnswer format: true/false",
                    "true")[1] == "Yes."
    sentence = ("Please choose the correct answer to fill in the blank to complete the given sentence: Ann lent Bo "
                "a pen because _ had two.\n\nOption1: Ann Option2: Bo Answer format: option1/option2")
    assert _restyle("sentence", sentence, "option1")[1] == "Ann lent Bo a pen because Ann had two."


def test_unparseable_records_are_dropped():
    assert _restyle("text", ARC_LIKE, "answer9") is None
    assert _restyle("yes_no", "is it?", "maybe") is None


def test_off_domain_tasks_come_from_pretrain_text(tmp_path):
    (tmp_path / "pretrain/nltk_inaugural/inaugural").mkdir(parents=True)
    speech = " ".join(f"We shall build the road number {i} across the wide green valley." for i in range(30))
    (tmp_path / "pretrain/nltk_inaugural/inaugural/1900-Someone.txt").write_text(speech)
    tasks = off_domain_tasks(tmp_path, 5)
    assert list(tasks) == ["speeches"] and len(tasks["speeches"]) == 5
    assert all(ex.instruction.startswith("Write the next sentence") for ex in tasks["speeches"])


# -- restyled datasets: the same records in another answer form ------------------------------------------------
import random  # noqa: E402

from core.reuse.train import Example  # noqa: E402
from core.zoo import demo_data  # noqa: E402

WORKED = [Example(f"Ann has {a} pens and gets {a} more. How many?", f"{a} + {a} = {2 * a}\nThe answer is {2 * a}")
          for a in range(1, 9)]
CRUX = [Example(f"What does this Python function return for the input {k}?\ndef f(x):\n    return x * 2", str(2 * k))
        for k in range(8)]


def test_final_number_and_answer_check():
    numbers = demo_data.final_number(WORKED, random.Random(0))
    assert [e.response for e in numbers] == [str(2 * a) for a in range(1, 9)]
    checks = demo_data.answer_check(WORKED, random.Random(0))
    assert {e.response for e in checks} == {"Yes.", "No."}
    for e, source in zip(checks, WORKED):
        shown = e.instruction.split(" ")[1]
        assert e.instruction.endswith(source.instruction)
        assert (e.response == "Yes.") == (shown == str(source.response.rsplit(" ", 1)[1]))


def test_output_check_and_letter_keep_the_true_output_findable():
    for e, source in zip(demo_data.output_check(CRUX, random.Random(1)), CRUX):
        assert (e.response == "Yes.") == (f"return {source.response} for" in e.instruction)
    for e, source in zip(demo_data.output_letter(CRUX, random.Random(1)), CRUX):
        letter = e.response[1]
        assert e.response == f"({letter}) {source.response}" and f"({letter}) {source.response}" in e.instruction


def test_decision_chosen_text_and_code_explained():
    assert demo_data.decision_only([Example("q", "Maybe. It depends.")], random.Random(0))[0].response == "Maybe."
    chosen = demo_data.chosen_text([Example("q\nOptions: (A) x (B) y", "The answer is (B) y"),
                                    Example("q", "no option here")], random.Random(0))
    assert [e.response for e in chosen] == ["y"]
    explained = demo_data.code_explained([Example("Write a python function to add two numbers.", "def add(a, b): ...")],
                                         random.Random(0))[0]
    assert explained.response == "A function to add two numbers." and "def add" in explained.instruction


def test_a_restyled_dataset_keeps_its_sources_held_out_part(tmp_path):
    from tests.core.zoo.test_demo_build import write_micro_corpus

    data = write_micro_corpus(tmp_path)
    for key in ("gsm8k_number", "gsm8k_check", "cruxeval_check", "cruxeval_letter", "mbpp_explained"):
        source = demo_data.DATASETS[key].source
        held = demo_data.held_out(data, key)
        assert held and demo_data.trainable(data, key)
        # each held-out record restyles a held-out record of its source, never a trainable one
        for e in held:
            assert any(s.instruction in e.instruction or s.response in e.instruction or
                       s.instruction == e.instruction for s in demo_data.held_out(data, source))
        assert demo_data.DATASETS[key].domain == demo_data.DATASETS[source].domain
