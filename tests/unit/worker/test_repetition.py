"""The repetition guard on the loops small models were seen to write."""

from __future__ import annotations

import pytest

from worker.repetition import ends_on_sentence, guard, loop_start, units, without_repeats

# What `invoke demo` printed before issue 12 (Gemma 3 270M base, asked to summarize).
DEMO_LOOP = (
    "- The model server can be used to store the results of the extraction task, but it can't be "
    "used to store the results of the backfill.\n" * 7
) + "- The model server can be used to store the results of the extraction task, but it can't be"
# SmolLM2 135M chaining one phrase to itself inside a sentence.
PHRASE_LOOP = (
    "The release moves to 9 April. The app is also available for offline mode to work with both "
    "devices, and the app is available for offline mode to work with both devices, and the app "
    "is available for offline mode to work with both devices, and the app is"
)


def test_the_demo_loop_is_cut_to_its_one_sentence() -> None:
    done = guard(DEMO_LOOP, finished=False)
    assert done.text == DEMO_LOOP.splitlines()[0]
    assert done.looped


def test_a_phrase_chained_to_itself_is_cut_to_the_last_clean_sentence() -> None:
    done = guard(PHRASE_LOOP, finished=False)
    assert done.text == "The release moves to 9 April."
    assert done.looped and done.trimmed


def test_a_clean_answer_the_model_finished_is_left_alone() -> None:
    text = "Redis holds the queue.\n\n- one worker per task\n- results kept for a day"
    assert guard(text, finished=True).text == text
    assert loop_start(text) is None


def test_an_answer_cut_by_the_token_limit_ends_on_its_last_sentence() -> None:
    done = guard("The batch ran nightly. The queue runs all d", finished=False)
    assert (done.text, done.looped, done.trimmed) == ("The batch ran nightly.", False, True)


def test_an_unfinished_answer_without_any_sentence_end_is_kept() -> None:
    assert guard("once upon a time there was", finished=False).text == "once upon a time there was"


@pytest.mark.parametrize("short", ["Yes. Yes.", "1. Install.\n2. Install."])
def test_very_short_repeats_are_not_loops(short: str) -> None:
    assert loop_start(short) is None


def test_a_phrase_twice_is_style_three_times_a_loop() -> None:
    twice = "It is fast and it is cheap to run. We chose it because it is fast and it is cheap."
    assert loop_start(twice) is None
    assert loop_start("a b c d e f " * 3) is not None


def test_units_are_sentences_and_lines() -> None:
    text = 'He said "stop." Then left!\n- an item\nAnd a last one'
    assert [text[u.start : u.end].strip() for u in units(text)] == [
        'He said "stop."', "Then left!", "- an item", "And a last one",
    ]  # fmt: skip


def test_ends_on_sentence() -> None:
    assert ends_on_sentence("It ends (here).")
    assert ends_on_sentence('"Done?"')
    assert not ends_on_sentence("It does not")
    assert not ends_on_sentence("")


def test_without_repeats_keeps_the_first_of_each() -> None:
    got = without_repeats(["A cat sat.", "a cat SAT!", "A dog ran.", "", "A cat sat."])
    assert got == ["A cat sat.", "A dog ran."]
