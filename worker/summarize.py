"""Summarizing a document longer than the model's context: summarize the parts, then the summaries.

Each round splits the text into chunks that fit the server's context with room left for the
instruction and the answer, summarizes the chunks (several at once, as the server decodes
requests in parallel) and joins the partial summaries; the next round does the same to that
join, until it fits one request. Plain completions, not chat: base models have no chat template.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from worker.chunking import fit_to_budget
from worker.llm import ContextExceeded, LLMClient, LLMRejected

WHOLE = (
    "Summarize the following document in one short paragraph. Keep the names, numbers and "
    "decisions that matter.\n\nDocument:\n{text}\n\nSummary:"
)
PART = (
    "Summarize the following part of a longer document in a few sentences. Keep the names, "
    "numbers and decisions that matter.\n\nPart:\n{text}\n\nSummary:"
)
# Tokens kept free beyond the instruction and the answer: the beginning-of-text token and the
# few tokens that tokenizing the instruction and the text apart, then together, can differ by.
MARGIN = 16
# Chunks smaller than this would take a request per sentence: the context is too small to bother.
MIN_CHUNK_TOKENS = 64
# Rounds after which a summary that still does not fit means the partial summaries do not shrink.
MAX_ROUNDS = 6
MAX_HALVINGS = 3


class SummaryError(LLMRejected):
    """The document cannot be summarized within this server's context: retrying will not help."""


@dataclass(frozen=True)
class Summary:
    text: str
    model: str
    chunks: int  # chunks the document itself was split into
    rounds: int  # 1 when the document fit one request
    completion_tokens: int


def summarize(
    llm: LLMClient,
    document: str,
    *,
    max_tokens: int,
    temperature: float,
    parallel: int = 1,
) -> Summary:
    """A summary of `document` at most `max_tokens` long, however long the document."""
    context = llm.context_size()
    instruction = max(
        llm.count_tokens(WHOLE.format(text="")), llm.count_tokens(PART.format(text=""))
    )
    room = context - instruction - MARGIN
    # Partial summaries must be much shorter than the chunks they summarize, or the rounds do
    # not shrink the text: an answer takes at most a quarter of what is left.
    answer = min(max_tokens, room // 4)
    budget = room - answer
    if answer < 1 or budget < MIN_CHUNK_TOKENS:
        raise SummaryError(
            f"the server's context ({context} tokens) leaves too little room to summarize: "
            "serve the model with a larger context"
        )
    text, first_chunks, used = document, 0, 0
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for rounds in range(1, MAX_ROUNDS + 1):
            chunks = fit_to_budget(text, budget, llm.count_tokens)
            first_chunks = first_chunks or len(chunks)
            if len(chunks) == 1:
                # The last answer may be longer than a partial one, as far as the context allows.
                longest = max(answer, min(max_tokens, room - llm.count_tokens(chunks[0])))
                final = _summarize_chunk(llm, WHOLE, chunks[0], longest, temperature)
                return Summary(
                    final.text.strip(), final.model, first_chunks, rounds,
                    used + final.completion_tokens,
                )  # fmt: skip
            partials = list(
                pool.map(lambda c: _summarize_chunk(llm, PART, c, answer, temperature), chunks)
            )
            used += sum(p.completion_tokens for p in partials)
            text = "\n\n".join(p.text.strip() for p in partials if p.text.strip())
            if not text:
                return Summary("", partials[0].model, first_chunks, rounds, used)
    raise SummaryError(
        f"the partial summaries did not fit the context after {MAX_ROUNDS} rounds: "
        "lower max_tokens or serve the model with a larger context"
    )


@dataclass(frozen=True)
class _Answer:
    text: str
    model: str
    completion_tokens: int


def _summarize_chunk(
    llm: LLMClient,
    template: str,
    chunk: str,
    max_tokens: int,
    temperature: float,
    halvings: int = 0,
) -> _Answer:
    """One chunk's summary; a chunk the server still finds too long is halved and retried."""
    try:
        done = llm.complete(
            template.format(text=chunk), max_tokens=max_tokens, temperature=temperature
        )
        return _Answer(done.text, done.model, done.completion_tokens)
    except ContextExceeded:
        # Token counts were estimated (a server without a tokenizer route) or are off by a few.
        # Halving a few times covers any honest miscount; beyond that the context is not what
        # the server said (or the fallback assumed), and halving on would only multiply requests.
        if halvings == MAX_HALVINGS:
            raise
        halves = fit_to_budget(chunk, max(1, llm.count_tokens(chunk) // 2), llm.count_tokens)
        answers = [
            _summarize_chunk(llm, template, half, max_tokens, temperature, halvings + 1)
            for half in halves
        ]
        return _Answer(
            "\n".join(a.text.strip() for a in answers),
            answers[0].model,
            sum(a.completion_tokens for a in answers),
        )
