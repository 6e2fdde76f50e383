"""Benchmark: vLLM's CPU build beside llama-server, each on its tiny test model, in one run.

    python -m benchmarks.vllm_bench [--starts 2] [--rounds 3] [--requests 16] [--compare-preload]

Writes the tiny Hugging Face Llama (tests/support/tiny_hf.py) and its GGUF twin (tiny_gguf.py: the
same byte vocabulary and chat template, narrower heads), then for each server prints:
- time to ready: from creating the container until the model is listed and a one-token
  completion answers, which is what `invoke up` waits for (median of --starts cold starts);
- tokens per second at 1, 4 and 8 concurrent requests: --requests completions of 64 new tokens
  (temperature 0, end-of-sequence ignored so each makes all 64), median of --rounds.
llama-server decodes up to 8 requests together (N_PARALLEL=8), as vLLM does by default.
--compare-preload adds vLLM without LD_PRELOAD (glibc malloc, GNU OpenMP) to show what the image's
tcmalloc and Intel OpenMP preload is worth. Builds the images first when missing (IMAGE_SOURCE as
the environment says). Starts its own containers on free 127.0.0.1 ports; talks only to them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from kcdev.settings import load_settings
from kcdev.stack import images
from kcdev.stack.compose import ComposeProject
from kcdev.stack.docker_cli import Docker
from tests.support.containers import LlamaCppContainer, LoopbackContainer
from tests.support.tiny_gguf import write_tiny_llama
from tests.support.tiny_hf import write_tiny_hf_llama
from tests.support.vllm_server import PORT, ServesModel, VllmCpuContainer, ensure_vllm_cpu_image

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
NEW_TOKENS = 64
LEVELS = (1, 4, 8)
MODEL = "tiny-llama"


@dataclass
class Figures:
    server: str
    ready: list[float]
    rates: dict[int, float]


def completions(base_url: str, requests: int, concurrency: int) -> float:
    """Tokens per second over `requests` completions sent `concurrency` at a time."""

    def one(client: httpx.Client) -> int:
        response = client.post(
            "/v1/completions",
            json={
                "model": MODEL, "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0,
                "ignore_eos": True,
            },
        )  # fmt: skip
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    with httpx.Client(base_url=base_url, timeout=300) as client:
        start = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            tokens = sum(pool.map(lambda _: one(client), range(requests)))
        return tokens / (time.monotonic() - start)


def measure(
    name: str, make: Callable[[], LoopbackContainer], starts: int, rounds: int, requests: int
) -> Figures:
    """Time `starts` cold starts; measure throughput on the last one."""
    figures = Figures(name, [], {})
    for attempt in range(starts):
        container = make()
        start = time.monotonic()
        with container:
            figures.ready.append(time.monotonic() - start)
            print(f"  {name}: ready in {figures.ready[-1]:.1f} s")
            if attempt < starts - 1:
                continue
            url = container.url(PORT)
            for level in LEVELS:
                completions(url, level, level)  # warm-up
                rates = [completions(url, requests, level) for _ in range(rounds)]
                figures.rates[level] = statistics.median(rates)
                print(f"  {name}: {level} concurrent: {figures.rates[level]:.1f} tokens/s")
    return figures


def report(rows: list[Figures], starts: int, rounds: int, requests: int) -> None:
    print(f"\ntime to ready (median of {starts} cold starts) and tokens/s ({requests} requests "
          f"of {NEW_TOKENS} new tokens, median of {rounds} rounds):")  # fmt: skip
    print(f"  {'server':<34} {'ready':>8}  " + "  ".join(f"{n:>2} concurrent" for n in LEVELS))
    for row in rows:
        rates = "  ".join(f"{row.rates[n]:13.1f}" for n in LEVELS)
        print(f"  {row.server:<34} {statistics.median(row.ready):6.1f} s  {rates}")


def run(starts: int, rounds: int, requests: int, compare_preload: bool) -> None:
    vllm_image = ensure_vllm_cpu_image()
    settings = load_settings()
    images.ensure_images(ComposeProject(settings, "llamacpp", Docker()))
    llama_image = images.image_names(settings, "llamacpp")["LLAMACPP_IMAGE"]
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)  # the servers run as unprivileged users
        hf_model = write_tiny_hf_llama(folder / "hf" / MODEL)
        (folder / "hf").chmod(0o755)
        gguf = write_tiny_llama(folder / "gguf" / f"{MODEL}.gguf")
        (folder / "gguf").chmod(0o755)

        def llama_server() -> LoopbackContainer:
            container = LlamaCppContainer(llama_image, "llama-server", gguf.parent, gguf.name)
            container.with_envs(N_CTX="512", N_PARALLEL=str(max(LEVELS)))
            # Ready as `invoke up` and the vLLM container define it, not just /v1/models = 200.
            container.waiting_for(ServesModel(MODEL).with_startup_timeout(120))
            return container

        def vllm(preload: bool = True) -> LoopbackContainer:
            container = VllmCpuContainer(vllm_image, hf_model)
            if not preload:
                container.with_env("LD_PRELOAD", "")
            return container

        servers: list[tuple[str, Callable[[], LoopbackContainer]]] = [
            ("vLLM cpu (tiny HF Llama)", vllm),
            ("llama-server (tiny GGUF twin)", llama_server),
        ]
        if compare_preload:
            servers.insert(1, ("vLLM cpu, no LD_PRELOAD", lambda: vllm(preload=False)))
        rows = [measure(name, make, starts, rounds, requests) for name, make in servers]
    report(rows, starts, rounds, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=2, help="cold starts timed per server")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per concurrency")
    parser.add_argument("--requests", type=int, default=16, help="completions per round")
    parser.add_argument(
        "--compare-preload", action="store_true", help="also run vLLM without LD_PRELOAD"
    )
    args = parser.parse_args()
    # Ryuk, testcontainers' reaper, must be pulled from a registry; these containers are removed
    # by their context managers instead.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    run(args.starts, args.rounds, args.requests, args.compare_preload)


if __name__ == "__main__":
    main()
