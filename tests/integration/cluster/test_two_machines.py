"""Past one machine, for real: a central stack and a worker node (see conftest.py), their
workers serving two models through one Redis over TLS; routing by model; a node killed mid-run;
and what Redis' TLS port refuses."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from celery.result import AsyncResult

from kcdev.queues import model_queue
from kcdev.stack import images
from tests.integration.cluster.conftest import start
from tests.support.stack import StackUnderTest
from tests.support.worker_process import client_app, wait_all

# Its tests build on one another (the node is killed late, and the refusals need its network):
# tests/integration/conftest.py keeps them in one pytest-xdist process.
pytestmark = pytest.mark.integration

TASKS = 200


def send(app: Celery, count: int, *, queue: str = "celery", max_tokens: int = 24) -> list[Any]:
    return [
        app.send_task(
            "worker.tasks.generate",
            kwargs={"prompt": f"task {i}", "max_tokens": max_tokens, "temperature": 0},
            queue=queue,
        )
        for i in range(count)
    ]


def models_of(results: list[AsyncResult[Any]]) -> dict[str, str]:
    """Which model answered each finished task: the node that ran it."""
    done: dict[str, str] = {}
    for r in results:
        if r.state == "SUCCESS":
            answer: Any = r.result
            done[r.id] = str(answer["model"])
    return done


def workers_listed(stack: StackUnderTest) -> str:
    done = stack.invoke("ps")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_worker_of_both_machines_is_on_the_broker(
    central: StackUnderTest, node: StackUnderTest
) -> None:
    for stack in (central, node):
        listed = workers_listed(stack)
        assert listed.count("model.model-a, celery") == 2, listed
        assert listed.count("model.model-b, celery") == 2, listed


def test_a_task_runs_on_the_node_serving_the_model_it_names(
    central: StackUnderTest, node: StackUnderTest
) -> None:
    app = client_app(central.env)
    sent = {model: send(app, 20, queue=model_queue(model)) for model in ("model-a", "model-b")}

    for model, results in sent.items():
        states = wait_all(results, 120)
        assert set(states.values()) == {"SUCCESS"}, states
        assert set(models_of(results).values()) == {model}


def test_ask_for_a_model_no_node_serves_fails_at_once(
    central: StackUnderTest, node: StackUnderTest
) -> None:
    started = time.monotonic()
    done = node.invoke("ask", "Hello", "--model", "model-c")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: no worker serves model 'model-c' (workers serve model-a, model-b): start a "
        "worker beside a server of it, or leave out --model"
    ]
    assert time.monotonic() - started < 30


def flower(stack: StackUnderTest, path: str, auth: bool = True) -> httpx.Response:
    url = f"http://127.0.0.1:{stack.env['FLOWER_PORT']}{path}"
    credentials = ("admin", stack.env["FLOWER_PASSWORD"]) if auth else None
    return httpx.get(url, auth=credentials, timeout=10)


def test_flower_shows_every_worker_and_tasks_live_behind_its_password(
    central: StackUnderTest, node: StackUnderTest
) -> None:
    start(central, "--monitor")  # the workers that run are kept

    assert flower(central, "/api/workers", auth=False).status_code == 401
    workers = flower(central, "/api/workers?refresh=1")
    assert workers.status_code == 200
    assert len(workers.json()) == 4, workers.json()  # both machines' workers

    [sent] = send(client_app(central.env), 1)
    sent.get(timeout=60)
    deadline = time.monotonic() + 30
    while sent.id not in flower(central, "/api/tasks").json():
        assert time.monotonic() < deadline, "Flower never saw the task's events"
        time.sleep(0.5)
    assert flower(central, f"/api/task/info/{sent.id}").json()["state"] == "SUCCESS"
    assert "FLOWER_PASSWORD" not in workers_listed(central)


def test_a_node_killed_mid_run_loses_no_task(central: StackUnderTest, node: StackUnderTest) -> None:
    """200 tasks over both machines' workers; the node (its workers and LLM server) is killed
    with `docker kill` while they run: every task completes, the rest on the central."""
    app = client_app(central.env)
    results = send(app, TASKS, max_tokens=96)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = models_of(results)
        if len(done) >= TASKS // 4 and "model-b" in done.values():
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the node took no task: {len(models_of(results))} done")
    done_before = set(models_of(results))
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={node.project}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    subprocess.run(["docker", "kill", *ids], capture_output=True, check=True)

    # The node's unacknowledged tasks come back after the visibility timeout (60 s here).
    states = wait_all(results, timeout=60 + 10 + 240)
    lost = {task_id: state for task_id, state in states.items() if state != "SUCCESS"}
    print(f"\n{len(done_before)} of {TASKS} done before the kill; {len(lost)} lost")
    assert lost == {}
    after = {i: m for i, m in models_of(results).items() if i not in done_before}
    assert after and set(after.values()) == {"model-a"}, "the rest ran on the surviving node"


# --- what the central's TLS port lets in ------------------------------------------------------


def redis_cli(node: StackUnderTest, gateway: str, port: str, *args: str) -> str:
    """redis-cli run on the node's network, as a program on the second machine would connect;
    the node's credentials mounted read-only."""
    credentials = Path(node.env["CLUSTER_DIR"]) / "node"
    network = f"{node.project}_worker-network"
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", network, "-v", f"{credentials}:/c:ro", "--user", "0",
         "--entrypoint", "redis-cli", images.REDIS_IMAGE, "-h", gateway, "-p", port,
         *args, "PING"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return (done.stdout + done.stderr).strip()


CERT = ["--tls", "--cacert", "/c/ca.pem", "--cert", "/c/client.pem", "--key", "/c/client-key.pem"]


@pytest.mark.parametrize(
    ("case", "args", "refused_with"),
    [
        ("plain text", [], "Server closed the connection"),
        ("TLS without a client certificate", ["--tls", "--cacert", "/c/ca.pem"], "closed"),
        ("no password", CERT, "NOAUTH"),
        ("a wrong password", [*CERT, "--no-auth-warning", "-a", "wrong"], "WRONGPASS"),
    ],
)
def test_the_tls_port_refuses(
    central: StackUnderTest,
    node: StackUnderTest,
    gateway: str,
    case: str,
    args: list[str],
    refused_with: str,
) -> None:
    answer = redis_cli(node, gateway, central.env["REDIS_TLS_PORT"], *args)
    assert "PONG" not in answer and refused_with in answer, f"{case}: {answer}"


def test_the_tls_port_takes_the_nodes_certificate_and_password(
    central: StackUnderTest, node: StackUnderTest, gateway: str
) -> None:
    password = central.env["REDIS_PASSWORD"]
    answer = redis_cli(
        node, gateway, central.env["REDIS_TLS_PORT"], *CERT, "--no-auth-warning", "-a", password
    )
    assert answer == "PONG"


def test_plain_text_redis_is_not_published_beyond_loopback(
    central: StackUnderTest, node: StackUnderTest, gateway: str
) -> None:
    answer = redis_cli(node, gateway, central.env["REDIS_PORT"])
    assert "PONG" not in answer and "refused" in answer.lower()


@pytest.mark.parametrize("broken", ["password", "cert", "ca"])
def test_a_node_with_a_wrong_certificate_or_password_is_refused_in_one_line(
    central: StackUnderTest,
    node: StackUnderTest,
    join_file: Path,
    tmp_path: Path,
    broken: str,
) -> None:
    from kcdev.cluster import bundle

    good = json.loads(join_file.read_text())
    other = bundle.issue(tmp_path / "another-ca", node="x", address="x", port=1, db=0, password="p")
    replacement = {"password": {"password": "wrong"}, "cert": {"cert": other.cert,
                   "key": other.key}, "ca": {"ca": other.ca}}[broken]  # fmt: skip
    bad = tmp_path / "bad.join"
    bad.write_text(json.dumps({**good, **replacement}))
    bad.chmod(0o600)
    kept = (Path(node.env["CLUSTER_DIR"]) / "node" / "join.json").read_bytes()

    done = node.invoke("up", "--join", str(bad))

    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: the central Redis at {good['address']}:{good['port']} ")
    assert "export a new join file" in line
    assert "Traceback" not in done.stdout + done.stderr
    assert (Path(node.env["CLUSTER_DIR"]) / "node" / "join.json").read_bytes() == kept
