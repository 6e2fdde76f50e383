"""Benchmark: `invoke up` against raw `docker compose up --wait`, and the two llama.cpp flavors.

    python -m benchmarks.stack_bench [--rounds 3] [--model FILE] [--requests 16]

Part 1 brings the stack up from nothing (containers removed, images built) with the same compose
files both ways, alternating, and prints the medians and their ratio (goal: invoke/raw <= 1.10;
`invoke up` also checks the model list and a one-token completion, which raw compose does not).
Part 2 serves the same model with each flavor through the stack's published port and prints
tokens per second at 1, 4 and 8 concurrent requests, and the llama-server / llama-cpp-python ratio
(goal at 4: >= 1.7). Uses its own compose project and free ports; talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from kcdev.paths import GGUF_DIR
from kcdev.settings import load_settings
from kcdev.stack.compose import ComposeProject
from kcdev.stack.docker_cli import Docker
from tests.support.stack import StackUnderTest, isolated_stack
from tests.support.tiny_gguf import model_or_tiny

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
NEW_TOKENS = 64


def raw_compose_up(stack: StackUnderTest) -> float:
    project = ComposeProject(load_settings(environ=stack.env), "llamacpp", Docker())
    start = time.monotonic()
    result = subprocess.run(
        project.argv("up", "--detach", "--wait", "--wait-timeout", "600"),
        env=project.environment(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    took = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"raw compose up failed: {result.stderr.strip().splitlines()[-1]}")
    return took


def invoke_up(stack: StackUnderTest, *args: str) -> float:
    start = time.monotonic()
    result = stack.invoke("up", "--backend=llamacpp", *args)
    took = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"invoke up failed: {result.stderr.strip()}")
    return took


def reset(stack: StackUnderTest) -> None:
    result = stack.invoke("down", "--volumes", "--yes")
    if result.returncode != 0:
        sys.exit(f"invoke down failed: {result.stderr.strip()}")


def time_to_ready(model_dir: Path, model_file: str, rounds: int) -> None:
    raw: list[float] = []
    ours: list[float] = []
    with isolated_stack(model_dir, model_file) as stack:
        invoke_up(stack)  # builds anything missing, outside the measurement
        reset(stack)
        for _ in range(rounds):
            raw.append(raw_compose_up(stack))
            reset(stack)
            ours.append(invoke_up(stack))
            reset(stack)
    raw_median, ours_median = statistics.median(raw), statistics.median(ours)
    print(f"time to ready ({model_file}, {rounds} rounds, alternating):")
    print(f"  docker compose up -d --wait : median {raw_median:6.2f} s  {_fmt(raw)}")
    print(f"  invoke up                   : median {ours_median:6.2f} s  {_fmt(ours)}")
    print(f"  ratio invoke/raw            : {ours_median / raw_median:.2f}  (goal <= 1.10)")


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def one_request(client: httpx.Client, model: str) -> int:
    response = client.post(
        "/v1/completions",
        json={"model": model, "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0},
    )
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


def throughput(base_url: str, model: str, concurrency: int, requests: int) -> float:
    with httpx.Client(base_url=base_url, timeout=600) as client:
        one_request(client, model)  # warm-up: the first request pays for cache set-up
        start = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            tokens = sum(pool.map(lambda _: one_request(client, model), range(requests)))
        return tokens / (time.monotonic() - start)


def flavors(model_dir: Path, model_file: str, requests: int) -> None:
    levels = (1, 4, 8)
    results: dict[str, dict[int, float]] = {}
    for flavor in ("llama-server", "llama-cpp-python"):
        with isolated_stack(
            model_dir, model_file, LLAMA_SERVER=flavor, N_CTX="1024", N_PARALLEL="8"
        ) as stack:
            invoke_up(stack)
            model = Path(model_file).stem
            results[flavor] = {
                n: throughput(stack.llm_url, model, n, max(requests, n)) for n in levels
            }
    print(f"serving throughput ({model_file}, {NEW_TOKENS} new tokens/request, temperature 0):")
    print("  concurrent  llama-server  llama-cpp-python  ratio")
    for n in levels:
        fast, slow = results["llama-server"][n], results["llama-cpp-python"][n]
        print(f"  {n:>10}  {fast:9.1f} t/s  {slow:13.1f} t/s  {fast / slow:5.2f}")
    print("  goal: ratio >= 1.7 at 4 concurrent requests")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument(
        "--model", type=Path, default=GGUF_DIR / "gemma-3-270m-q4_k_m.gguf",
        help="GGUF file to serve (default: the default preset; the tiny test model if missing)",
    )  # fmt: skip
    parser.add_argument("--skip", choices=("ready", "throughput"), action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = model_or_tiny(args.model, Path(tmp))
        if "ready" not in args.skip:
            time_to_ready(model.parent.resolve(), model.name, args.rounds)
        if "throughput" not in args.skip:
            flavors(model.parent.resolve(), model.name, args.requests)


if __name__ == "__main__":
    main()
