"""Choosing which of many summary sentences make the summary: the ones about the main subjects.

A long document gives a sentence or two per chunk, too many for a summary. Asking a small model to
summarize its own sentences again (the usual reduce step) was measured to make things worse: it
drifts into talk about the text ("This text provides a clear explanation of ...") and loses the
names. Instead the sentences not about the document are dropped (fragments, headings, and those
mostly in words the document never uses: inventions and chatter); the rest are ranked by how much
of the document's main vocabulary they carry (the content words the document uses most, each
counted once per sentence, so long sentences do not win by length alone), picked greedily while
they add something not yet said (maximal marginal relevance), and returned in document order.
Deterministic, and instant.
"""

from __future__ import annotations

import math
import re
from collections import Counter

WORD = re.compile(r"[a-z][a-z0-9'-]*[a-z0-9]|[a-z]")
# Words that carry no subject: function words, and the words small models use to talk about the
# text instead of its subject (which then score nothing, as they should).
_STOPWORDS = """a about above after again against all also an and any are as at be because been
    before being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its itself just
    me more most my no nor not now of off on once only or other our out over own same she should
    so some such than that the their them then there these they this those through to too under
    until up very was we were what when where which while who whom why will with would you your
    text summary summarized document article passage sentence provides explains describes
    discusses overview main points key information details way new one two well"""
STOPWORDS = frozenset(_STOPWORDS.split())
# How much saying something again costs a sentence, against what it adds.
REDUNDANCY = 0.7
# A sentence most of whose content words the document never uses is not about the document: a
# small model's invention or its chatter ("I'm here to help"). Below this share it is dropped.
GROUNDED = 0.5
# Sentences shorter than this say nothing on their own (a heading, a fragment left by a cut).
MIN_WORDS = 4
# A word that starts a sentence, a paragraph, a list item or a heading of the document; not any
# line, since text wrapped at a fixed width starts lines mid-sentence.
OPENER = re.compile(
    r"""(?:\A|[.!?]["')\]]*\s+|\n[ \t]*\n|\n(?=[ \t]*[-*#>]+[ \t]))"""
    r"""[ \t]*(?:[-*#>]+[ \t]+)?(\S+)"""
)


def content_words(text: str) -> list[str]:
    return [w for w in WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 2]


def grounded(sentences: list[str], document: str) -> list[str]:
    """The sentences that are about `document`: whole, and mostly in its own words.

    Headings, fragments and sentences mostly made of words the document never uses go; if that
    would leave nothing, the sentences are returned as they were. A sentence starting in lower
    case is a fragment copied from mid-sentence, unless the document itself starts a sentence
    or paragraph with that word (a name written in lower case, such as a program's).
    """
    vocabulary = set(content_words(document))
    openers = {m.group(1) for m in OPENER.finditer(document)}
    kept = []
    for sentence in sentences:
        words = content_words(sentence)
        first = sentence.split()[0] if sentence.split() else ""
        whole = (
            len(sentence.split()) >= MIN_WORDS
            and not sentence.lstrip().startswith("#")
            and (not first[:1].islower() or first in openers)
        )
        share = sum(w in vocabulary for w in words) / len(words) if words else 0.0
        if whole and share >= GROUNDED:
            kept.append(sentence)
    return kept or sentences


def select(sentences: list[str], document: str, max_words: int) -> list[str]:
    """The sentences (in their order) that best cover `document`'s main words in `max_words`."""
    sentences = grounded(sentences, document)
    if len(" ".join(sentences).split()) <= max_words:
        return sentences
    weights = Counter(content_words(document))
    bags = [set(content_words(s)) for s in sentences]
    chosen: list[int] = []
    covered: set[str] = set()
    words = 0
    while True:
        best, best_score = None, 0.0
        for i, bag in enumerate(bags):
            length = len(sentences[i].split())
            if i in chosen or not bag or (words + length > max_words and chosen):
                continue
            new = sum(math.log1p(weights[w]) for w in bag - covered)
            old = sum(math.log1p(weights[w]) for w in bag & covered)
            score = (new - REDUNDANCY * old) / math.sqrt(len(bag))
            if score > best_score:
                best, best_score = i, score
        if best is None:
            break
        chosen.append(best)
        covered |= bags[best]
        words += len(sentences[best].split())
    return [sentences[i] for i in sorted(chosen)]
