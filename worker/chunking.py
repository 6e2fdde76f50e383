"""Splitting a long document into chunks that each fit a token budget.

Text is cut at the largest boundary that keeps a piece short enough (paragraphs, then lines,
then sentences, then words, then anywhere), so chunks stay readable. Sizes are measured in
characters first, from the document's own characters-per-token ratio, then checked with the
server's token count: one count for the whole text and one per chunk, whatever its length.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Boundaries from the most to the least natural place to cut.
SEPARATORS = (
    re.compile(r"\n\s*\n"),  # paragraphs
    re.compile(r"\n"),  # lines
    re.compile(r"(?<=[.!?;:])\s+"),  # sentences
    re.compile(r"\s+"),  # words
)
# Characters per token vary along a document; aim this much under the budget so the first cut
# usually fits and a chunk is rarely counted twice.
SAFETY = 0.9


class ChunkingError(ValueError):
    """The budget is too small for any text to fit."""


def split_text(text: str, max_chars: int) -> list[str]:
    """Pieces of `text` of at most `max_chars` characters, cut at the most natural boundaries.

    Neighbouring pieces are packed together while they fit, so chunks come out close to
    `max_chars` rather than one per paragraph. Whitespace at the cuts is dropped.
    """
    if max_chars < 1:
        raise ChunkingError(f"cannot split text into pieces of {max_chars} characters")
    return [chunk for chunk in _split(text.strip(), max_chars, 0) if chunk]


def _split(text: str, max_chars: int, level: int) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    if level == len(SEPARATORS):
        return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
    separator = SEPARATORS[level]
    chunks: list[str] = []
    current = ""
    for part, joiner in _parts(text, separator):
        pieces = _split(part, max_chars, level + 1) if len(part) > max_chars else [part]
        for piece in pieces:
            candidate = f"{current}{joiner}{piece}" if current else piece
            if len(candidate) <= max_chars:
                current = candidate
            else:
                chunks.append(current)
                current = piece
            # The cut inside `part` dropped its whitespace: a space stands in for it.
            joiner = " "
    if current:
        chunks.append(current)
    return [chunk.strip() for chunk in chunks]


def _parts(text: str, separator: re.Pattern[str]) -> list[tuple[str, str]]:
    """(part, the separator that preceded it) pairs: joining them gives back `text`."""
    parts: list[tuple[str, str]] = []
    start = 0
    joiner = ""
    for match in separator.finditer(text):
        parts.append((text[start : match.start()], joiner))
        joiner = match.group()
        start = match.end()
    parts.append((text[start:], joiner))
    return [(part, joiner) for part, joiner in parts if part]


def fit_to_budget(text: str, budget: int, count_tokens: Callable[[str], int]) -> list[str]:
    """`text` as chunks of at most `budget` tokens each, as `count_tokens` counts them.

    A chunk that still counts too many tokens (a dense passage) is split again by its own
    ratio; each pass cuts at least a tenth, so this ends.
    """
    if budget < 1:
        raise ChunkingError(f"a budget of {budget} tokens leaves no room for text")
    text = text.strip()
    total = count_tokens(text)
    if total <= budget:
        return [text] if text else []
    max_chars = int(len(text) * budget / total * SAFETY)
    chunks: list[str] = []
    for chunk in split_text(text, max_chars):
        if count_tokens(chunk) <= budget:
            chunks.append(chunk)
        else:
            chunks.extend(fit_to_budget(chunk, budget, count_tokens))
    return chunks
