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
