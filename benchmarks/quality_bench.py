"""Benchmark: how good the `summarize` task's summaries are, model by model, side by side.

    python -m benchmarks.quality_bench [--models PRESET ...] [--docs NAME ...]

For each model preset whose GGUF file is on disk (`invoke fetch-model --preset NAME` gets it), a
llama-server container serves it with the stack's own N_CTX and N_PARALLEL, and the worker's
`summarize` task, run in this process exactly as a worker runs it (its defaults, its client, its
prompts), summarizes every document of benchmarks/quality_corpus/ (and the repo's sample
document). Each summary is compared with the reference summary written for that document.

Printed side by side, one column per model:
- ROUGE-L F1 against the references (the `rouge-score` package; stemmed), mean over documents,
  and its ratio to the base model's (goal: 1.5 or more for instruct models);
- distinct-2: distinct word pairs over all word pairs of a summary (1.0 = nothing repeated);
- the share of summaries with a repeated sentence (goal: 0);
- the share cut mid-sentence, i.e. not ending in . ! ? or a closing quote or bracket after one,
  empty summaries included (goal: 0);
- seconds per summary (wall clock; the machine may be shared, so compare columns of one run).

The checks here are the benchmark's own, written apart from the worker's repetition guard, so the
guard is not graded by itself. Summaries are kept under .cache/quality-bench/ for reading.
Starts its own containers on 127.0.0.1 and removes them; talks to nothing else.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kcdev import paths
from kcdev.errors import UserError
from kcdev.models.catalog import Catalog, Preset, load_catalog
from kcdev.settings import Settings, load_settings
from kcdev.stack import images
from kcdev.stack.compose import ComposeProject
from kcdev.stack.docker_cli import Docker
from tests.support.containers import LlamaCppContainer

CORPUS = Path(__file__).with_name("quality_corpus")
SAMPLE = paths.ROOT / "worker" / "samples" / "sample-document.md"
RESULTS = paths.CACHE_DIR / "quality-bench"
REQUEST_TIMEOUT = 900
BASE_PRESET = "gemma-3-270m"  # the base model the ratios are taken against
FALLBACK_PRESET = "smollm2-135m-instruct"
# Sentence ends: . ! ? or an ellipsis, possibly followed by closing quotes or brackets.
FINISHED = re.compile(r"""[.!?\u2026]["'\u201d\u2019)\]]*$""")
SENTENCE_END = re.compile(r"""(?<=[.!?])["'\u201d\u2019)\]]*\s+""")
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    reference: str


@dataclass(frozen=True)
class Scored:
    rouge_l: float
    distinct_2: float
    repeated_sentence: bool
    cut_mid_sentence: bool
    seconds: float


def corpus(names: list[str] | None) -> list[Document]:
    """The sample document and every benchmarks/quality_corpus/NAME.md with its NAME.ref.md."""
    sources = {"sample-document": SAMPLE}
    sources |= {p.stem: p for p in sorted(CORPUS.glob("*.md")) if not p.stem.endswith(".ref")}
    chosen = names or list(sources)
    unknown = set(chosen) - set(sources)
    if unknown:
        raise UserError(f"unknown documents {sorted(unknown)}: known are {', '.join(sources)}")
    return [
        Document(name, sources[name].read_text(), (CORPUS / f"{name}.ref.md").read_text())
        for name in chosen
    ]


# --- the benchmark's own measures ------------------------------------------------------------


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def has_repeated_sentence(text: str) -> bool:
    normalised = [" ".join(WORD.findall(s.lower())) for s in sentences(text)]
    normalised = [s for s in normalised if s]
    return len(set(normalised)) < len(normalised)


def cut_mid_sentence(text: str) -> bool:
    return not FINISHED.search(text.strip())


def distinct_2(text: str) -> float:
    words = WORD.findall(text.lower())
    pairs = list(itertools.pairwise(words))
    return len(set(pairs)) / len(pairs) if pairs else 0.0


def rouge_l(summary: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(reference, summary)["rougeL"].fmeasure)


def score(summary: str, reference: str, seconds: float) -> Scored:
    return Scored(
        rouge_l(summary, reference),
        distinct_2(summary),
        has_repeated_sentence(summary),
        cut_mid_sentence(summary),
        seconds,
    )


# --- serving and summarizing -----------------------------------------------------------------


@contextmanager
def served(settings: Settings, model: Path) -> Iterator[str]:
    """llama-server on `model`, with the stack's context and slots; yields its base URL."""
    names = images.image_names(settings, "llamacpp")
    server = LlamaCppContainer(names["LLAMACPP_IMAGE"], "llama-server", model.parent, model.name)
    server.with_envs(N_CTX=str(settings.n_ctx), N_PARALLEL=str(settings.n_parallel))
    with server:
        yield server.base_url


def summarize_all(base_url: str, documents: list[Document], out: Path) -> list[Scored]:
    """Each document through the worker's own `summarize` task, run in this process."""
    os.environ["LLM_SERVER_URL"] = base_url
    os.environ["SERVED_MODEL_NAME"] = ""
    # Quality, not latency, is measured: on a machine shared with other work one request may wait
    # long for a slot, which must not count as a failed summary.
    os.environ["LLM_TIMEOUT"] = str(REQUEST_TIMEOUT)
    from worker import tasks
    from worker.llm import LLMError

    tasks._clients.clear()  # a client of the previous model's server
    out.mkdir(parents=True, exist_ok=True)
    scored = []
    for doc in documents:
        start = time.monotonic()
        try:
            text = str(tasks.summarize(document=doc.text)["text"]).strip()
        except LLMError as exc:  # counted as an empty summary: cut, and scoring nothing
            print(f"  {doc.name}: no summary ({type(exc).__name__}: {exc})")
            text = ""
        seconds = time.monotonic() - start
        (out / f"{doc.name}.txt").write_text(text + "\n")
        scored.append(score(text, doc.reference, seconds))
    return scored


def models(catalog: Catalog, names: list[str] | None, settings: Settings) -> list[Preset]:
    """The presets asked for (default: the llamacpp default, the fallback, the base model)."""
    if names is None:
        names = [catalog.defaults["llamacpp"], FALLBACK_PRESET, BASE_PRESET]
    chosen: list[Preset] = []
    for name in dict.fromkeys(names):
        if name not in catalog.presets:
            print(f"{name}: no such preset here: skipped")
            continue
        preset = catalog.presets[name]
        if preset.backend != "llamacpp" or preset.file is None:
            print(f"{name}: not a llama.cpp preset: skipped")
            continue
        if not (Path(settings.gguf_dir) / preset.file).is_file():
            where = paths.shown(Path(settings.gguf_dir))
            print(f"{name}: {preset.file} is not in {where}: skipped "
                  f"(get it with `invoke fetch-model --preset {name} --no-env`)")  # fmt: skip
            continue
        chosen.append(preset)
    return chosen


# --- the table -------------------------------------------------------------------------------

Row = tuple[str, Callable[[list[Scored]], str]]


def share(flag: Callable[[Scored], bool]) -> Callable[[list[Scored]], str]:
    return lambda s: f"{sum(map(flag, s))}/{len(s)}"


ROWS: list[Row] = [
    ("ROUGE-L F1 (mean)", lambda s: f"{statistics.mean(x.rouge_l for x in s):.3f}"),
    ("distinct-2 (mean)", lambda s: f"{statistics.mean(x.distinct_2 for x in s):.3f}"),
    ("with a repeated sentence", share(lambda x: x.repeated_sentence)),
    ("cut mid-sentence", share(lambda x: x.cut_mid_sentence)),
    ("seconds per summary", lambda s: f"{statistics.mean(x.seconds for x in s):.1f}"),
]


def table(results: dict[str, list[Scored]], documents: list[Document]) -> str:
    names = list(results)
    width = max(12, *(len(n) for n in names))
    lines = [f"{'':<26}" + "".join(f"{n:>{width + 2}}" for n in names)]
    for label, cell in ROWS:
        lines.append(f"{label:<26}" + "".join(f"{cell(results[n]):>{width + 2}}" for n in names))
    if BASE_PRESET in results:
        base = statistics.mean(x.rouge_l for x in results[BASE_PRESET])
        ratios = [
            f"{statistics.mean(x.rouge_l for x in results[n]) / base:.2f}x" if base else "-"
            for n in names
        ]
        lines.append(f"{'ROUGE-L / ' + BASE_PRESET:<26}" + "".join(f"{r:>{width + 2}}"
                                                                    for r in ratios))  # fmt: skip
    lines.append("")
    lines.append("ROUGE-L per document:")
    for i, doc in enumerate(documents):
        cells = "".join(f"{results[n][i].rouge_l:>{width + 2}.3f}" for n in names)
        lines.append(f"  {doc.name:<24}{cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", metavar="PRESET",
                        help="presets to compare (default: the llamacpp default, "
                             f"{FALLBACK_PRESET}, {BASE_PRESET})")  # fmt: skip
    parser.add_argument("--docs", nargs="+", metavar="NAME", help="documents (default: all)")
    args = parser.parse_args()
    # Ryuk, testcontainers' reaper, must be pulled from a registry; the container is removed by
    # its context manager instead.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    settings = load_settings()
    documents = corpus(args.docs)
    chosen = models(load_catalog(), args.models, settings)
    if not chosen:
        raise SystemExit("no model to compare: fetch one with `invoke fetch-model --preset NAME`")
    docker = Docker()
    docker.ensure_daemon()
    images.ensure_images(ComposeProject(settings, "llamacpp", docker))
    words = sum(len(d.text.split()) for d in documents)
    print(f"{len(documents)} documents ({words} words), llama-server with N_CTX={settings.n_ctx}, "
          f"N_PARALLEL={settings.n_parallel}; the summarize task's own defaults")  # fmt: skip
    results: dict[str, list[Scored]] = {}
    for preset in chosen:
        assert preset.file is not None
        model = (Path(settings.gguf_dir) / preset.file).resolve()
        with served(settings, model) as base_url:
            print(f"{preset.name}: serving {model.name} on {base_url}", flush=True)
            results[preset.name] = summarize_all(base_url, documents, RESULTS / preset.name)
    print()
    print(table(results, documents))
    print(f"\nsummaries: {paths.shown(RESULTS)}/<model>/<document>.txt")


if __name__ == "__main__":
    main()
