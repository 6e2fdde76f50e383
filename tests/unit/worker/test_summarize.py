"""Summarizing documents of any length, against in-memory servers that enforce their context."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from kcdev.paths import ROOT
from tests.support.fake_llm import FakeLLMServer
from worker.llm import LLMUnavailable
from worker.repetition import ends_on_sentence
from worker.sampling import Sampling
from worker.summarize import (
    CHAT_PROMPT,
    COMPLETION_PROMPT,
    COMPLETION_STOP,
    SUMMARY_WORDS,
    SummaryError,
    summarize,
)

SAMPLE = ROOT / "worker" / "samples" / "sample-document.md"
DOCUMENT = "\n\n".join(
    f"Section {i}. The queue hands document {i} to one worker. A worker acknowledges the "
    f"message only when the task is done, so a crash loses nothing. Retries back off."
    for i in range(60)
)
DAMPED = Sampling(repeat_penalty=1.1, dry_multiplier=0.8)


def section_sentence(prompt: str, max_tokens: int) -> str:
    """A model that writes one sentence naming the sections it was shown."""
    sections = re.findall(r"Section (\d+)\.", prompt)
    return f"The queue hands sections {' and '.join(sections) or 'none'} to one worker each."


def bodies(server: FakeLLMServer) -> list[dict[str, Any]]:
    return server.generation_requests()


def chat_text(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def test_a_short_document_takes_one_chat_request_for_an_instruct_model() -> None:
    server = FakeLLMServer(n_ctx=2048, reply=lambda p, n: "A short note about nothing much.")
    summary = summarize(server.client(), "A short note.", max_tokens=64, temperature=0)
    assert (summary.chunks, summary.rounds) == (1, 1)
    [sent] = bodies(server)
    assert sent["messages"] == [
        {"role": "user", "content": CHAT_PROMPT.format(text="A short note.")}
    ]
    assert summary.text == "A short note about nothing much."
    assert summary.model == "fake-model"


def test_a_base_model_gets_a_completion_prompt() -> None:
    """No chat template (llama-server reports its ChatML fallback): completion, one line."""
    server = FakeLLMServer(n_ctx=2048, chat_template=None, reply=lambda p, n: "It is short")
    summary = summarize(server.client(), "A short note.", max_tokens=64, temperature=0)
    [sent] = bodies(server)
    assert sent["prompt"] == COMPLETION_PROMPT.format(text="A short note.")
    assert sent["stop"] == list(COMPLETION_STOP)
    assert summary.text == "It is short."  # the model stopped: its sentence, given its full stop


@pytest.mark.parametrize("kind", ["llama-server", "vllm", "llama-cpp-python", "other"])
def test_a_document_longer_than_the_context_is_summarized_in_parts(kind: str) -> None:
    # The fake refuses any request whose prompt plus max_tokens exceeds the context.
    server = FakeLLMServer(kind=kind, n_ctx=400, chars_per_token=3, reply=section_sentence)
    assert server.tokens(DOCUMENT) > 5 * server.n_ctx

    summary = summarize(
        server.client(fallback_context=400), DOCUMENT, max_tokens=256, temperature=0.2
    )

    assert summary.chunks > 5
    for body in bodies(server):
        prompt = chat_text(body) if "messages" in body else body["prompt"]
        assert server.tokens(prompt) + body["max_tokens"] <= server.n_ctx
    assert summary.completion_tokens > 0
    assert len(summary.text.split()) <= SUMMARY_WORDS
    assert ends_on_sentence(summary.text)


def test_every_part_of_the_document_is_read() -> None:
    server = FakeLLMServer(n_ctx=400, reply=section_sentence)
    summarize(server.client(), DOCUMENT, max_tokens=256, temperature=0)
    read = " ".join(chat_text(b) for b in bodies(server))
    assert all(f"Section {i}." in read for i in range(60))


def test_partial_summaries_are_sent_together() -> None:
    server = FakeLLMServer(n_ctx=400, reply=section_sentence)
    summarize(server.client(), DOCUMENT, max_tokens=64, temperature=0, parallel=4)
    assert len(bodies(server)) > 4  # the pool ran them all; order is not guaranteed


def test_the_summary_says_each_sentence_once_in_document_order() -> None:
    """Chunks that give the same sentence give it once; the rest keep the document's order."""
    server = FakeLLMServer(n_ctx=400, reply=lambda p, n: (
        "Workers acknowledge messages when done. "
        + section_sentence(p, n)
    ))  # fmt: skip
    summary = summarize(server.client(), DOCUMENT, max_tokens=256, temperature=0)
    sentences = re.split(r"(?<=\.) ", summary.text)
    assert len(sentences) == len(set(sentences))
    numbers = [int(n) for n in re.findall(r"\d+", summary.text)]
    assert numbers == sorted(numbers)


def test_a_looping_answer_is_cut_and_asked_again_with_stronger_damping() -> None:
    loop = "The worker takes the message. " * 6 + "The worker takes the"
    answers = iter([loop, "The worker acknowledges each message once it is done."])
    server = FakeLLMServer(n_ctx=2048, reply=lambda p, n: next(answers))
    summary = summarize(server.client(sampling=DAMPED), "A short note.", max_tokens=64,
                        temperature=0)  # fmt: skip
    first, second = bodies(server)
    assert "repeat_penalty" not in first  # the first ask: the document's own words, unpenalised
    assert second["repeat_penalty"] == pytest.approx(DAMPED.stronger().repeat_penalty)
    assert second["dry_multiplier"] == pytest.approx(DAMPED.stronger().dry_multiplier)
    assert summary.text == "The worker acknowledges each message once it is done."
    assert summary.rounds == 2


def test_an_answer_cut_by_the_token_limit_ends_on_its_last_full_sentence() -> None:
    server = FakeLLMServer(n_ctx=2048, reply=lambda p, n: "Workers take tasks. They ack them wh")
    server.finish_reason = "length"
    summary = summarize(server.client(), "A short note.", max_tokens=64, temperature=0)
    assert summary.text == "Workers take tasks."


def test_a_context_too_small_for_the_instruction_is_a_final_error() -> None:
    server = FakeLLMServer(n_ctx=64)
    with pytest.raises(SummaryError, match="context"):
        summarize(server.client(), DOCUMENT, max_tokens=64, temperature=0)
    assert server.generation_requests() == []


def test_a_chunk_the_server_still_refuses_is_halved() -> None:
    """Counts estimated (no tokenizer route) can be too low for dense text: halve, not fail."""
    server = FakeLLMServer(kind="other", n_ctx=600, chars_per_token=1,
                           reply=lambda p, n: "Many x characters.")  # fmt: skip
    summary = summarize(
        server.client(fallback_context=600), "x" * 3000, max_tokens=32, temperature=0
    )
    refused = [
        r for r in server.requests
        if r.url.path == "/v1/chat/completions"
        and server.tokens(chat_text(json.loads(r.content))) + json.loads(r.content)["max_tokens"]
        > server.n_ctx
    ]  # fmt: skip
    assert refused, "the test needs the estimate to be wrong at least once"
    assert summary.text == "Many x characters."


def test_the_sample_document_is_longer_than_a_small_models_context() -> None:
    """The demo's document must really be split: Gemma 3 270M at N_CTX=4096 counts it at 4,764
    tokens; about 1.3 tokens a word is typical of English."""
    text = SAMPLE.read_text(encoding="utf-8")
    assert len(text.split()) * 1.2 > 4096
    assert len(text) < 200_000  # and within summarize's limit


def test_retryable_failures_reach_the_caller() -> None:
    """summarize does not retry by itself: the Celery task's declared policy does."""
    server = FakeLLMServer(failures=[httpx.Response(503, json={"error": {"message": "busy"}})])
    with pytest.raises(LLMUnavailable):
        summarize(server.client(), "A short note.", max_tokens=16, temperature=0)


def test_the_summary_does_not_end_on_a_line_without_a_full_stop() -> None:
    """An answer cut by the token limit before any full stop cannot end the summary."""
    document = "Section 1. The queue hands work to workers.\n\nSection 2. Workers ack the work."

    def reply(prompt: str, max_tokens: int) -> str:
        if "Section 2." in prompt and "Section 1." not in prompt:
            return "and then the workers acknowledge the queue work when"
        return "The queue hands work to workers."

    server = FakeLLMServer(n_ctx=190, chars_per_token=1, reply=reply)  # two chunks
    server.finish_reason = "length"
    summary = summarize(server.client(), document, max_tokens=64, temperature=0)
    assert summary.chunks == 2
    assert summary.text == "The queue hands work to workers."


def test_lines_copied_from_a_wrapped_document_are_not_sentences() -> None:
    copied = (
        "The indexer reads uploads (reports, minutes,\nIt runs nightly on one machine.\nA crash"
    )
    server = FakeLLMServer(n_ctx=2048, reply=lambda p, n: copied)
    server.finish_reason = "length"
    summary = summarize(server.client(), "A short note.", max_tokens=64, temperature=0)
    assert summary.text == "It runs nightly on one machine."
