"""Splitting documents into chunks: sizes respected, boundaries natural, no text lost."""

from __future__ import annotations

import math
import re

import pytest

from worker.chunking import ChunkingError, fit_to_budget, split_text

PARAGRAPH = (
    "The indexer reads each upload. It splits the text into passages! Then it writes the "
    "entries; an abstract follows: a few sentences long."
)
DOCUMENT = "\n\n".join(f"{i}. {PARAGRAPH}" for i in range(40))


def words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("max_chars", [7, 40, 150, 400, 5000])
def test_pieces_fit_and_keep_every_word(max_chars: int) -> None:
    pieces = split_text(DOCUMENT, max_chars)
    assert all(0 < len(p) <= max_chars for p in pieces)
    if max_chars >= max(len(w) for w in words(DOCUMENT)):
        assert [w for p in pieces for w in words(p)] == words(DOCUMENT)


def test_paragraphs_are_kept_whole_when_they_fit() -> None:
    pieces = split_text(DOCUMENT, 2 * len(PARAGRAPH) + 10)
    assert all(p.endswith("few sentences long.") for p in pieces)
    assert all(p[0].isdigit() for p in pieces)


def test_pieces_are_packed_close_to_the_limit() -> None:
    pieces = split_text(DOCUMENT, 1000)
    assert len(pieces) <= math.ceil(len(DOCUMENT) / 1000) + 1


def test_a_paragraph_too_long_is_cut_between_sentences() -> None:
    pieces = split_text(PARAGRAPH, 70)
    assert all(re.search(r"[.!;:]$", p) for p in pieces), pieces


def test_a_word_longer_than_the_limit_is_cut_anywhere() -> None:
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_nothing_to_split_gives_no_pieces() -> None:
    assert split_text("  \n\n ", 10) == []


def test_a_limit_below_one_character_is_refused() -> None:
    with pytest.raises(ChunkingError):
        split_text("text", 0)


def count_by_words(text: str) -> int:
    return len(words(text))


def test_text_within_the_budget_is_one_chunk() -> None:
    assert fit_to_budget(PARAGRAPH, 100, count_by_words) == [PARAGRAPH]


def test_every_chunk_fits_the_budget_by_the_servers_count() -> None:
    chunks = fit_to_budget(DOCUMENT, 50, count_by_words)
    assert len(chunks) > 1
    assert all(count_by_words(c) <= 50 for c in chunks)
    assert [w for c in chunks for w in words(c)] == words(DOCUMENT)


def test_dense_passages_are_split_again() -> None:
    """The first cut assumes the document's average density; a denser part must still fit."""
    dense = "\n\n".join([PARAGRAPH] * 10 + ["z" * 900] + [PARAGRAPH] * 10)

    def count(text: str) -> int:  # a "z" costs a token each, other text a token a word
        return text.count("z") + len(words(text.replace("z", "")))

    chunks = fit_to_budget(dense, 60, count)
    assert all(count(c) <= 60 for c in chunks)
    assert "".join(c for c in chunks).count("z") == 900


def test_counts_are_few_whatever_the_length() -> None:
    calls: list[str] = []

    def count(text: str) -> int:
        calls.append(text)
        return count_by_words(text)

    chunks = fit_to_budget(DOCUMENT, 50, count)
    assert len(calls) == len(chunks) + 1  # the whole text once, then each chunk once


def test_a_budget_below_one_token_is_refused() -> None:
    with pytest.raises(ChunkingError):
        fit_to_budget(DOCUMENT, 0, count_by_words)
