"""The repetition guard: find where an answer starts looping, and end answers on a full sentence.

Small models fall into loops: the same sentence again and again, or one phrase chained to itself
("... the app is available for offline mode, and the app is available for offline mode, and ...")
until the token limit cuts it mid-sentence. Sampling penalties (worker/sampling.py) make loops
rarer; this guard catches the ones that get through, so no answer repeats itself:

- a loop starts at the first sentence (or line) that repeats an earlier one, or at the second of
  three or more occurrences of the same run of LOOP_NGRAM words;
- the answer is cut there, then back to its last sentence end, so it ends cleanly;
- an answer the token limit cut short (finish_reason "length") is also taken back to its last
  sentence end; one the model ended itself is left as it ended (a list, a code block).

It works on words and punctuation only, so it serves any model and any server.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

# A sentence ends at . ! ? or an ellipsis (closing quotes and brackets stay with it) followed by
# whitespace or the end; a line break ends a unit too (list items, headings).
SENTENCE_END = re.compile(r"""[.!?\u2026]+["'\u201d\u2019)\]]*(?=\s|$)""")
UNIT_BREAK = re.compile(r"""[.!?\u2026]+["'\u201d\u2019)\]]*(?:[ \t]+|(?=\n)|$)|\n+""")
WORD = re.compile(r"\w+(?:['\u2019]\w+)?")
# Runs this long recurring three times are a loop, not style: in answers of a few hundred words
# a legitimate phrase of six words seldom comes back once, let alone twice.
LOOP_NGRAM = 6
LOOP_OCCURRENCES = 3
# Units shorter than this many words ("Yes.", "1.") may well repeat on purpose.
MIN_UNIT_WORDS = 3


@dataclass(frozen=True)
class Unit:
    start: int
    end: int
    key: str  # the words, lower-cased: two units with the same key say the same thing


@dataclass(frozen=True)
class Guarded:
    text: str
    looped: bool  # a loop was found and cut off
    trimmed: bool  # an unfinished last sentence was dropped


def units(text: str) -> list[Unit]:
    """The sentences and lines of `text`, with their spans."""
    found, start = [], 0
    for match in UNIT_BREAK.finditer(text):
        if match.end() > start:
            piece = text[start : match.end()]
            if piece.strip():
                found.append(Unit(start, match.end(), _key(piece)))
            start = match.end()
    if text[start:].strip():
        found.append(Unit(start, len(text), _key(text[start:])))
    return found


def _key(piece: str) -> str:
    return " ".join(WORD.findall(piece.lower()))


def loop_start(text: str) -> int | None:
    """Where the answer starts repeating itself: the offset to cut at, or None."""
    seen: set[str] = set()
    sentence_repeat = None
    all_units = units(text)
    for unit in all_units:
        if len(unit.key.split()) >= MIN_UNIT_WORDS and unit.key in seen:
            sentence_repeat = unit.start
            break
        seen.add(unit.key)
    phrase_repeat = _phrase_loop(text, all_units)
    starts = [s for s in (sentence_repeat, phrase_repeat) if s is not None]
    return min(starts) if starts else None


def _phrase_loop(text: str, all_units: list[Unit]) -> int | None:
    """The cut for a run of LOOP_NGRAM words occurring LOOP_OCCURRENCES times, or None."""
    words = [(m.group().lower(), m.start()) for m in WORD.finditer(text)]
    where: dict[tuple[str, ...], list[int]] = defaultdict(list)
    first_loop = None
    for i in range(len(words) - LOOP_NGRAM + 1):
        gram = tuple(w for w, _ in words[i : i + LOOP_NGRAM])
        where[gram].append(i)
        if len(where[gram]) == LOOP_OCCURRENCES:
            second = words[where[gram][1]][1]
            first_loop = second if first_loop is None else min(first_loop, second)
            break
    if first_loop is None:
        return None
    # Cut at the start of the first unit past the one holding the first occurrence (the loop
    # goes from sentence to sentence), or, when all three are in that one unit (a phrase chained
    # to itself within a sentence), at the second occurrence.
    first_unit = _unit_at(all_units, words[where[gram][0]][1])
    for index in where[gram][1:]:
        unit = _unit_at(all_units, words[index][1])
        if unit is not None and unit != first_unit:
            return unit.start
    return first_loop


def _unit_at(all_units: list[Unit], offset: int) -> Unit | None:
    return next((u for u in all_units if u.start <= offset < u.end), None)


def last_sentence_end(text: str) -> int | None:
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    return ends[-1] if ends else None


def ends_on_sentence(text: str) -> bool:
    stripped = text.rstrip()
    return bool(stripped) and last_sentence_end(stripped) == len(stripped)


def guard(text: str, *, finished: bool) -> Guarded:
    """`text` without its loop, ending on a full sentence where it was cut or unfinished.

    `finished` is whether the model ended the answer itself (finish_reason "stop"). Where no
    sentence ends before the cut, the words up to it are kept: an unfinished answer is still
    more use than none.
    """
    looped = False
    cut = loop_start(text)
    if cut is not None:
        text, looped = text[:cut], True
    trimmed = False
    if looped or not finished:
        end = last_sentence_end(text)
        if end is not None and text[end:].strip():
            text, trimmed = text[:end], True
    return Guarded(text.strip(), looped, trimmed)


def without_repeats(sentences: list[str]) -> list[str]:
    """`sentences` in order, each said once (those with the same words count as the same)."""
    kept, seen = [], set()
    for sentence in sentences:
        key = _key(sentence)
        if key and key not in seen:
            kept.append(sentence)
            seen.add(key)
    return kept
