"""Choosing summary sentences: grounded in the document, about its main subjects, in order."""

from __future__ import annotations

from worker.selection import grounded, select

DOCUMENT = (
    "The flood barrier closed for the first time. The barrier has four steel gates. "
    "The gates rise from the riverbed in forty minutes. Fishing crews want compensation for "
    "barrier closures. The barrier cost 310 million euros. The mayor watched the gates close."
)


def test_sentences_not_about_the_document_are_dropped() -> None:
    sentences = [
        "The barrier closed its four steel gates for the first time.",
        "I'm here to help with your coding challenges!",
        "## Summary",
        "Gates rose.",
    ]
    assert grounded(sentences, DOCUMENT) == sentences[:1]


def test_if_nothing_is_grounded_the_sentences_stay() -> None:
    invented = ["Completely unrelated musings about astronomy and telescopes."]
    assert grounded(invented, DOCUMENT) == invented


def test_short_enough_sentences_are_all_kept_in_order() -> None:
    sentences = ["The barrier cost 310 million euros.", "Fishing crews want compensation."]
    assert select(sentences, DOCUMENT, max_words=50) == sentences


def test_the_main_subjects_win_within_the_word_budget_in_document_order() -> None:
    sentences = [
        "The mayor watched.",
        "The flood barrier closed its steel gates for the first time.",
        "The mayor watched from the building.",
        "The barrier gates rise from the riverbed in forty minutes.",
    ]
    assert select(sentences, DOCUMENT, max_words=12) == [sentences[1]]
    both = select(sentences, DOCUMENT, max_words=22)
    assert both[0] == sentences[1] and len(both) == 2
    assert both == sorted(both, key=sentences.index)


def test_a_sentence_repeating_what_is_chosen_loses_to_a_new_one() -> None:
    sentences = [
        "The flood barrier gates closed.",
        "The barrier gates closed, the flood barrier gates.",
        "Fishing crews want compensation for closures.",
    ]
    chosen = select(sentences, DOCUMENT, max_words=12)
    assert chosen == [sentences[0], sentences[2]]


def test_a_fragment_starting_mid_sentence_goes_but_a_lower_case_name_stays() -> None:
    document = "tidewatch checks websites. Fishing crews want compensation for closures."
    sentences = [
        "tidewatch checks websites every minute.",
        "crews want compensation for barrier closures.",
        "Fishing crews want compensation.",
    ]
    assert grounded(sentences, document) == [sentences[0], sentences[2]]


def test_a_word_that_only_starts_a_wrapped_line_is_no_opener() -> None:
    document = (
        "# tidewatch\n\ntidewatch checks sites. We run it because several\n"
        "teams' documents may not leave our own servers.\n- uptime checks run every minute"
    )
    sentences = [
        "tidewatch checks sites for several teams.",
        "teams' documents may not leave our own servers.",
        "uptime checks run every minute for several teams.",
    ]
    assert grounded(sentences, document) == [sentences[0], sentences[2]]
