"""Summarizing a document of any length with a small model: short summaries of chunks, then choose.

Designed for the small models this project serves by default (SmolLM2 135M Instruct, Gemma 3
270M), measured with `nox -s bench -- quality`. Such models summarize a short passage into one
sentence far better than a long text into a paragraph: given 300 words and "one paragraph" they
copy, drift or loop, and asked to summarize their own summaries again they drift into talk about
"the text". So:

- map: the document is cut into chunks of about CHUNK_TOKENS tokens (at paragraph, line, then
  sentence boundaries) and each chunk is summarized in two sentences (instruct models; base
  models in one line), several at once (the server decodes requests in parallel);
- each answer passes the repetition guard (loops cut, an unfinished end dropped); one that looped
  is asked for again with the configured damping, made stronger;
- the sentences are joined in document order, each said once, and when there are more than a
  summary should hold, the ones that carry the document's main subjects are chosen
  (worker/selection.py).

The first request for each chunk is sent without repetition penalties: measured on the default
model, penalties over a window that includes the prompt push it away from the document's own
words (ROUGE-L 0.15 with repeat_penalty 1.1 over 256 tokens, 0.24 without), while a two-sentence
answer rarely loops, and the guard catches it when it does. Greedy decoding (temperature 0, the
task's default) measured better than 0.2 for the same reason.

Instruct models (with a chat template) are asked through the chat endpoint; base models get a
plain completion prompt that ends where a one-sentence summary would start.

Measured on SmolLM2 135M Instruct (`nox -s bench -- quality`, 6 documents, mean ROUGE-L; runs vary
by about 0.02 since parallel decoding is not bit-for-bit repeatable): one paragraph for a whole
short document 0.20; one sentence per chunk of about 150 words 0.22, of about 250 words 0.18; two
sentences per chunk of about 200 words 0.25.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from worker import repetition, selection
from worker.chunking import fit_to_budget
from worker.llm import Completion, ContextExceeded, LLMClient, LLMRejected
from worker.sampling import Sampling

CHAT_PROMPT = "Summarize this text in two sentences.\n\n{text}"
# A base model continues text: the prompt ends on the line where the summary would begin (Gemma 3
# base answers a prompt ending in a colon with a blank line first, which a stop at the blank line
# would make an empty answer), and the answer stops at the next blank line.
COMPLETION_PROMPT = "{text}\n\nSummary in one sentence:\n"
COMPLETION_STOP = ("\n\n",)
# List markers models put before their sentences: the summary is prose.
BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
# Chunk size, in tokens: about 200 words (see the measurements above).
CHUNK_TOKENS = 256
# Tokens one chunk's summary may take: two sentences (120 measured no better, and slower).
SENTENCE_TOKENS = 80
# Words a summary may have (a reader's glance; the references of the quality benchmark run 90 to
# 130 words). Lower when max_tokens asks for less.
SUMMARY_WORDS = 130
WORDS_PER_TOKEN = 0.75
# Tokens kept free beyond the instruction and the answer: the beginning-of-text token and the
# few tokens that tokenizing the instruction and the text apart, then together, can differ by.
MARGIN = 16
# Chunks smaller than this would take a request per sentence: the context is too small to bother.
MIN_CHUNK_TOKENS = 64
MAX_HALVINGS = 3


class SummaryError(LLMRejected):
    """The document cannot be summarized within this server's context: retrying will not help."""


@dataclass(frozen=True)
class Summary:
    text: str
    model: str
    chunks: int  # chunks the document was split into: a short summary asked for each
    rounds: int  # 2 when some chunk's answer looped and was asked again, else 1
    completion_tokens: int


@dataclass(frozen=True)
class _Answer:
    sentences: list[str]
    model: str
    completion_tokens: int
    asked_again: bool = False


def summarize(
    llm: LLMClient,
    document: str,
    *,
    max_tokens: int,
    temperature: float,
    parallel: int = 1,
) -> Summary:
    """A summary of `document` of at most about `max_tokens` tokens, however long the document."""
    chat = llm.has_chat_template()
    template = CHAT_PROMPT if chat else COMPLETION_PROMPT
    room = llm.context_size() - llm.count_tokens(template.format(text="")) - MARGIN
    answer = min(max_tokens, SENTENCE_TOKENS)
    budget = min(CHUNK_TOKENS, room - answer)
    if budget < MIN_CHUNK_TOKENS:
        raise SummaryError(
            f"the server's context ({llm.context_size()} tokens) leaves too little room to "
            "summarize: serve the model with a larger context"
        )
    longest = max(1, min(SUMMARY_WORDS, int(max_tokens * WORDS_PER_TOKEN)))
    call = _Caller(llm, chat, answer, temperature)
    chunks = fit_to_budget(document, budget, llm.count_tokens)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        answers = list(pool.map(call.sentences, chunks))
    model = answers[0].model if answers else llm.model()
    sentences = repetition.without_repeats([s for a in answers for s in a.sentences])
    chosen = selection.select(sentences, document, longest)
    return Summary(
        _finish(" ".join(chosen), longest), model, len(chunks),
        1 + any(a.asked_again for a in answers), sum(a.completion_tokens for a in answers),
    )  # fmt: skip


def _finish(text: str, longest: int) -> str:
    """The summary as returned: said once, ending on a full sentence, at most `longest` words.

    A single chunk's sentences can exceed the length asked for; whole sentences are dropped
    from the end until it fits, never cut mid-sentence (the first is kept whatever its length).
    """
    guarded = repetition.guard(text, finished=False).text
    kept: list[str] = []
    for unit in repetition.units(guarded):
        sentence = guarded[unit.start : unit.end].strip()
        if kept and len(" ".join([*kept, sentence]).split()) > longest:
            break
        kept.append(sentence)
    return " ".join(kept)


class _Caller:
    """One chunk to its summary sentences, through chat or completion."""

    def __init__(self, llm: LLMClient, chat: bool, max_tokens: int, temperature: float) -> None:
        self.llm, self.chat, self.max_tokens, self.temperature = llm, chat, max_tokens, temperature

    def sentences(self, chunk: str, halvings: int = 0) -> _Answer:
        try:
            done = self._ask(chunk, Sampling())
            text, looped = _sentences_of(done)
            tokens = done.completion_tokens
            if looped:
                again = self._ask(chunk, self.llm.sampling.stronger())
                text, _ = _sentences_of(again)
                tokens += again.completion_tokens
        except ContextExceeded:
            # Token counts were estimated (a server without a tokenizer route) or are off by a
            # few. Halving a few times covers any honest miscount; beyond that the context is
            # not what the server said, and halving on would only multiply requests.
            if halvings == MAX_HALVINGS:
                raise
            halves = fit_to_budget(
                chunk, max(1, self.llm.count_tokens(chunk) // 2), self.llm.count_tokens
            )
            answers = [self.sentences(half, halvings + 1) for half in halves]
            return _Answer(
                [s for a in answers for s in a.sentences],
                answers[0].model,
                sum(a.completion_tokens for a in answers),
                any(a.asked_again for a in answers),
            )
        found = [BULLET.sub("", text[u.start : u.end]).strip() for u in repetition.units(text)]
        found = [s for s in found if s]
        # A line without a sentence end is a piece of one: models copy the document's hard-
        # wrapped lines ("... (reports, minutes, specifications,"). Whole sentences only, unless
        # the answer has none at all.
        whole = [s for s in found if repetition.ends_on_sentence(s)]
        return _Answer(whole or found, done.model, tokens, looped)

    def _ask(self, chunk: str, sampling: Sampling) -> Completion:
        if self.chat:
            message = {"role": "user", "content": CHAT_PROMPT.format(text=chunk)}
            return self.llm.chat(
                [message], max_tokens=self.max_tokens, temperature=self.temperature,
                sampling=sampling,
            )  # fmt: skip
        return self.llm.complete(
            COMPLETION_PROMPT.format(text=chunk), max_tokens=self.max_tokens,
            temperature=self.temperature, stop=COMPLETION_STOP, sampling=sampling,
        )  # fmt: skip


def _sentences_of(done: Completion) -> tuple[str, bool]:
    """The answer through the guard, and whether it looped."""
    finished = done.finish_reason == "stop"
    guarded = repetition.guard(done.text, finished=finished)
    text = guarded.text
    if finished and text[-1:].isalnum():
        text += "."  # the model ended its sentence, only without the full stop
    return text, guarded.looped
