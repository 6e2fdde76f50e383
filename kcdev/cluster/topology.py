"""What a command works on: the stack with its workers and Flower, Redis over TLS, or a node.

Like the backend, the topology is kept from one command to the next by what runs: `invoke up`
without --workers keeps the workers that run (or starts WORKERS of them), and Flower stays once
started, so `up` never removes a running service unasked. A machine that joined a central Redis
(`invoke up --join FILE`) stays a worker node until `invoke cluster-leave`.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import ssl
from collections.abc import MutableMapping
from pathlib import Path

from kcdev import envfile, paths
from kcdev.backends import FLOWER, WORKER
from kcdev.cluster import node
from kcdev.console import Say
from kcdev.errors import UserError
from kcdev.stack import lifecycle, preflight
from kcdev.stack.compose import ComposeProject, Topology

JOIN_TIMEOUT = 10.0


def for_project(
    project: ComposeProject,
    *,
    workers: int | None = None,
    monitor: bool = False,
    join: Path | None = None,
    look: bool = True,
    say: Say = print,
) -> ComposeProject:
    """The project with its topology: the flags where given, else what runs (unless not `look`:
    `down` and `build` need not know), else the settings."""
    settings = project.settings
    cluster_dir = Path(settings.cluster_dir)
    if join is not None:
        from kcdev.cluster import bundle

        joined: node.Joined | None = node.keep(bundle.read(join), cluster_dir)
        assert joined is not None
        say(f"joining the central Redis at {joined.address}:{joined.port} as node {joined.node}")
    else:
        joined = node.joined(cluster_dir)
    running = lifecycle.service_states(project).values() if look else []
    running_workers = sum(s.service == WORKER and s.state != "exited" for s in running)
    count = workers if workers is not None else running_workers or settings.workers
    if joined is not None:
        if monitor:
            raise UserError("Flower runs on the central machine: leave out --monitor on a node")
        count = max(count, 1)  # a node is there for its workers
    elif count and project.backend == "none":
        raise UserError(
            "workers need an LLM server to call: use --backend llamacpp or vllm, or --workers 0"
        )
    tls = joined is None and preflight.redis_tls(settings)
    if joined is not None:
        environment = joined.environment()
    elif tls:
        from kcdev.cluster import central  # cryptography: imported only where TLS is needed

        environment = central.tls_environment(settings)
    else:
        environment = {}
    topology = Topology(
        workers=count,
        monitor=monitor or any(s.service == FLOWER for s in running),
        node=joined is not None,
        redis_tls=tls,
        environment=environment,
    )
    return project.with_topology(topology)


def check_central(project: ComposeProject) -> None:
    """Reach the central Redis as the node's workers will, or say in one line why not: a node
    with a wrong certificate or password must not start workers that retry forever."""
    import redis

    from kcdev import redis_client

    joined = node.joined(Path(project.settings.cluster_dir))
    if joined is None:
        return
    folder = joined.folder
    tls = {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": str(folder / "ca.pem"),
        "ssl_certfile": str(folder / "client.pem"),
        "ssl_keyfile": str(folder / "client-key.pem"),
    }
    client = redis_client.client(
        joined.address, joined.port, joined.password, db=joined.db, timeout=JOIN_TIMEOUT,
        connect_timeout=JOIN_TIMEOUT, tls=tls,
    )  # fmt: skip
    where = f"the central Redis at {joined.address}:{joined.port}"
    try:
        client.ping()
    except redis.AuthenticationError:
        raise UserError(
            f"{where} refused the join file's password: export a new join file on the central "
            "machine (`invoke cluster-export`) and join with it"
        ) from None
    except redis.ConnectionError as exc:
        raise UserError(f"{where}: {_connection_problem(exc)}") from None
    except redis.RedisError as exc:
        raise UserError(f"{where} answered an error ({exc}): see its log") from None
    finally:
        client.close()


def _connection_problem(exc: Exception) -> str:
    text = str(exc).lower()
    cause = exc.__cause__ or exc.__context__
    if "certificate verify failed" in text or isinstance(cause, ssl.SSLCertVerificationError):
        return (
            "its certificate is not from the cluster CA in the join file (or does not name that "
            "address): export a new join file on the central machine"
        )
    if "ssl" in text or "tls" in text or isinstance(cause, ssl.SSLError):
        return (
            "it refused this node's certificate (another cluster's, or expired): export a new "
            "join file on the central machine (`invoke cluster-export`)"
        )
    return (
        f"cannot reach it ({exc}): is the central stack up with BIND_HOST on that address, and "
        "REDIS_TLS_PORT open between the machines?"
    )


def workers_check(project: ComposeProject) -> lifecycle.Check | None:
    """Ready when every worker container of the project answers on the broker (a worker that
    runs but cannot reach Redis, or crashes at start, is not ready)."""
    if not project.topology.workers:
        return None
    expected = project.topology.workers

    def check() -> str | None:
        from worker import roster
        from worker.celery_app import app

        ids = {
            c.container_id[:12]
            for c in lifecycle.containers(project).values()
            if c.service == WORKER and c.status == "running"
        }
        if len(ids) < expected:
            return f"{len(ids)} of {expected} worker containers running"
        try:
            answering = {w.name.split("@", 1)[0] for w in roster.workers(app, timeout=1.0)}
        except Exception as exc:  # kombu and redis-py raise many types for a broker not there
            return f"the broker does not answer ({type(exc).__name__})"
        ready = len(ids & answering)
        return None if ready == len(ids) else f"{ready} of {len(ids)} workers answer on the broker"

    return (WORKER, check)


def point_clients_at(
    project: ComposeProject, environ: MutableMapping[str, str] = os.environ
) -> None:
    """On a worker node, make this process's Celery clients (`ps`, `ask`, the readiness checks)
    use the central Redis, as the node's workers do: the environment overrides `.env`."""
    joined = node.joined(Path(project.settings.cluster_dir)) if project.topology.node else None
    if joined is None:
        return
    environ.update(
        REDIS_HOST=joined.address,
        REDIS_PORT=str(joined.port),
        REDIS_DB=str(joined.db),
        REDIS_PASSWORD=joined.password,
        REDIS_TLS_DIR=str(joined.folder),
    )


def ensure_flower_password(
    project: ComposeProject, env_file: Path = paths.ENV_FILE, say: Say = print
) -> ComposeProject:
    """Flower always asks for a password: when FLOWER_PASSWORD is empty, generate one into
    `.env` (never printed) and use it from now on."""
    if not project.topology.monitor or project.settings.flower_password:
        return project
    password = secrets.token_urlsafe(18)
    envfile.set_value(env_file, "FLOWER_PASSWORD", password)
    say(f"generated FLOWER_PASSWORD into {paths.shown(env_file)} (Flower's user is admin)")
    settings = dataclasses.replace(project.settings, flower_password=password)
    return dataclasses.replace(project, settings=settings)


def endpoints(project: ComposeProject) -> list[str]:
    """What `invoke up` prints once the stack serves: where each part is reached."""
    s, t = project.settings, project.topology
    lines = []
    if t.node:
        joined = node.joined(Path(s.cluster_dir))
        central_at = f"{joined.address}:{joined.port}" if joined else "?"
        lines.append(f"redis      the central's, rediss://{central_at}/{s.redis_db} (worker node)")
    else:
        lines.append(f"redis      redis://{s.redis_host}:{s.redis_port}/{s.redis_db}")
        if t.redis_tls:
            lines.append(
                f"redis      rediss://{s.bind_host}:{s.redis_tls_port} for worker nodes "
                "(`invoke cluster-export --node NAME` makes a join file)"
            )
    if project.backend != "none":
        lines.append(f"llm-server {s.llm_server_url}/v1 (model {s.served_model(project.backend)})")
    if t.workers:
        lines.append(f"workers    {t.workers} container(s); `invoke ps` lists every worker")
    if t.monitor:
        lines.append(f"flower     http://127.0.0.1:{s.flower_port} (user admin, FLOWER_PASSWORD)")
    return lines
