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
from kcdev.settings import Settings
from kcdev.stack import lifecycle, preflight
from kcdev.stack.compose import ComposeProject, Topology

JOIN_TIMEOUT = 10.0


def for_project(
    project: ComposeProject,
    *,
    workers: int | None = None,
    monitor: bool = False,
    look: bool = True,
) -> ComposeProject:
    """The project with its topology: the flags where given, else what runs (unless not `look`:
    `down` and `build` need not know), else the settings."""
    settings = project.settings
    joined = node.joined(Path(settings.cluster_dir))
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


def join(path: Path, settings: Settings, say: Say = print) -> node.Joined:
    """Make this machine a worker node of the central in join file `path`: its credentials are
    kept only once the central accepted them, so a bad file leaves an earlier join as it was."""
    from kcdev.cluster import bundle

    cluster_dir = Path(settings.cluster_dir)
    staged = node.keep(bundle.read(path), cluster_dir, staged=True)
    say(f"joining the central Redis at {staged.address}:{staged.port} as node {staged.node}")
    try:
        check_central(staged)
    except BaseException:
        node.discard(cluster_dir)
        raise
    return node.promote(cluster_dir)


def check_central(joined: node.Joined | None) -> None:
    """Reach the central Redis as the node's workers will, or say in one line why not: a node
    with a wrong certificate or password must not start workers that retry forever."""
    import redis

    from kcdev import redis_client

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
    where = f"the central Redis at {joined.address}:{joined.port}"  # the subject of each line
    try:
        client.ping()
    except redis.AuthenticationError:
        raise UserError(
            f"{where} refused the join file's password: export a new join file on the central "
            "machine (`invoke cluster-export`) and join with it"
        ) from None
    except redis.ConnectionError as exc:
        raise UserError(f"{where} {_connection_problem(exc)}") from None
    except redis.RedisError as exc:
        raise UserError(f"{where} answered an error ({exc}): see its log") from None
    finally:
        client.close()


def _connection_problem(exc: Exception) -> str:
    text = str(exc).lower()
    cause = exc.__cause__ or exc.__context__
    if "certificate verify failed" in text or isinstance(cause, ssl.SSLCertVerificationError):
        return (
            "presented a certificate the join file's CA did not sign (or for another address): "
            "export a new join file on the central machine (`invoke cluster-export`)"
        )
    if "ssl" in text or "tls" in text or isinstance(cause, ssl.SSLError):
        return (
            "refused this node's certificate (another cluster's, or expired): export a new join "
            "file on the central machine (`invoke cluster-export`)"
        )
    return (
        f"cannot be reached ({exc}): is the central stack up with BIND_HOST on that address, "
        "and REDIS_TLS_PORT open between the machines?"
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


def point_clients_at_central(
    settings: Settings, environ: MutableMapping[str, str] = os.environ
) -> bool:
    """On a worker node, make this process's Celery clients (`ps`, `ask`, `invoke worker`, the
    readiness checks) use the central Redis, as the node's workers do: the environment overrides
    `.env`. Returns whether this machine is a node."""
    joined = node.joined(Path(settings.cluster_dir))
    if joined is None:
        return False
    environ.update(
        REDIS_HOST=joined.address,
        REDIS_PORT=str(joined.port),
        REDIS_DB=str(joined.db),
        REDIS_PASSWORD=joined.password,
        REDIS_TLS_DIR=str(joined.folder),
    )
    return True


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


def flower_check(project: ComposeProject) -> lifecycle.Check | None:
    """Ready when Flower answers its health route (its port opens only once it runs)."""
    if not project.topology.monitor:
        return None
    url = f"http://127.0.0.1:{project.settings.flower_port}/healthcheck"

    def check() -> str | None:
        import httpx

        try:
            answer = httpx.get(url, timeout=2)
        except httpx.HTTPError as exc:
            return f"Flower does not answer ({type(exc).__name__})"
        return None if answer.status_code == 200 else f"Flower answered {answer.status_code}"

    return (FLOWER, check)
