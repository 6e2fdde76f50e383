"""Settings: built-in defaults, overridden by `.env`, overridden by the environment.

Every setting is declared once here, with its default and its documentation; `.env.sample` is
checked against this table by a unit test, so the two cannot drift apart. Values are validated on
load, so a malformed `.env` fails in one line before anything starts, in every task and in the
worker alike: `.env` mistakes never fall back to the defaults (see kcdev.envfile).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from kcdev import envfile
from kcdev.backends import BACKENDS
from kcdev.errors import UserError
from kcdev.paths import ENV_FILE, ROOT, shown

Parser = Callable[[str], Any]
REDACTED = "********"
# Where a log line carries a secret whatever its value: a Redis config line, an HTTP header.
SECRET_CONTEXT = re.compile(
    r"((?:requirepass|masterauth)\s+|authorization:\s*bearer\s+|api[-_]key[\"']?\s*[:=]\s*)"
    r"[^\s,;}\]]+",
    re.IGNORECASE,
)


def _text(raw: str) -> str:
    return raw


def _int_between(low: int, high: int | None = None) -> Parser:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("not a whole number") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"outside {low}..{high if high is not None else '∞'}")
        return value

    return parse


def _optional_int(low: int) -> Parser:
    inner = _int_between(low)
    return lambda raw: None if raw == "" else inner(raw)


def _port(raw: str) -> int:
    return int(_int_between(1, 65535)(raw))


def _positive_number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _fraction(raw: str) -> float:
    value = _positive_number(raw)
    if value > 1:
        raise ValueError("must be in (0, 1]")
    return value


def _choice(*options: str) -> Parser:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw

    return parse


def _ip(raw: str) -> str:
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise ValueError("not an IP address") from None
    return raw


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError("has a malformed port") from None
    return raw.rstrip("/")


def _container_path(prefix: str) -> Parser:
    def parse(raw: str) -> str:
        if not raw.startswith(prefix) or ".." in raw.split("/"):
            raise ValueError(f"must be a path under {prefix} as the container sees it")
        return raw

    return parse


def _host_dir(raw: str) -> str:
    """A folder on this machine; relative paths are relative to the project, as in .env.sample."""
    if not raw:
        raise ValueError("must not be empty")
    path = Path(raw).expanduser()
    return str(path if path.is_absolute() else ROOT / path)


def _optional_host_dir(raw: str) -> str:
    return "" if raw == "" else _host_dir(raw)


def _project_name(raw: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", raw):
        raise ValueError("must be lowercase letters, digits, '-' or '_'")
    return raw


def _redis_password(raw: str) -> str:
    """A password Redis' config file, redis-cli and the redis:// URL all carry unchanged."""
    if raw and not raw.strip():
        raise ValueError("is only spaces, which would mean no password at all")
    if raw != raw.strip():
        raise ValueError("starts or ends with a space, which .env files and tools drop")
    if any(not " " <= char <= "~" for char in raw):
        raise ValueError(
            "holds a line break, tab, control or non-ASCII character, which Redis' config file "
            "cannot take: use printable ASCII"
        )
    return raw


API_KEY = re.compile(r"[A-Za-z0-9._~+/-]{16,}=*")


def _api_key(raw: str) -> str:
    """Empty (`invoke up` generates one), or a bearer token every server takes as one key:
    llama-server splits --api-key on commas and skips key-file lines starting with #."""
    if raw and not API_KEY.fullmatch(raw):
        raise ValueError(
            "must be at least 16 letters, digits or . _ ~ + / - characters; leave it empty "
            "and `invoke up` generates one"
        )
    return raw


def _optional_cpus(raw: str) -> float | None:
    if raw == "":
        return None
    value = _positive_number(raw)
    if value < 0.01 or value > 1024:
        raise ValueError("outside 0.01..1024 CPUs")
    return value


MEMORY = re.compile(r"(\d+(?:\.\d+)?) ?([kmgt]?)i?b?", re.IGNORECASE)
UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _optional_memory(raw: str) -> int | None:
    """Bytes, from Docker's notation (512m, 1.5g, 1GiB, or bytes); empty means no limit."""
    if raw == "":
        return None
    found = MEMORY.fullmatch(raw)
    if found is None:
        raise ValueError("not a size such as 512m or 2g")
    size = int(float(found.group(1)) * UNITS[found.group(2).lower()])
    if size < 6 * 1024**2:
        raise ValueError("below 6m, the least Docker accepts")
    return size


def _number_between(low: float, high: float) -> Parser:
    """A decimal number within [low, high] (the sampling settings' ranges)."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("not a number") from None
        if not low <= value <= high:
            raise ValueError(f"outside {low:g}..{high:g}")
        return value

    return parse


def _setting(default: str, doc: str, parse: Parser = _text, *, secret: bool = False) -> Any:
    return field(
        repr=not secret,
        metadata={"default": default, "doc": doc, "parse": parse, "secret": secret},
    )


@dataclass(frozen=True)
class Settings:
    """Typed, validated settings. Field names are the lowercase of the variables' names."""

    # --- stack -------------------------------------------------------------------------------
    llm_backend: str = _setting(
        "llamacpp",
        "LLM server that `invoke up` starts: llamacpp, vllm (NVIDIA GPU, or VLLM_VARIANT=cpu), "
        "or none (Redis alone)",
        _choice(*BACKENDS),
    )
    compose_project_name: str = _setting(
        "kc-devenv",
        "Compose project name: every task finds the stack's containers and volumes by it",
        _project_name,
    )
    bind_host: str = _setting(
        "127.0.0.1",
        "Host address the services' ports are published on; any other than loopback (e.g. "
        "0.0.0.0: every network) needs REDIS_PASSWORD and LLM_API_KEY",
        _ip,
    )
    # --- redis -------------------------------------------------------------------------------
    redis_host: str = _setting("127.0.0.1", "Redis host the worker and tasks connect to")
    redis_port: int = _setting("6379", "Redis port, published on BIND_HOST", _port)
    redis_db: int = _setting("0", "Redis database number (0-15)", _int_between(0, 15))
    redis_password: str = _setting(
        "",
        "Redis password (printable ASCII); empty means none, allowed only on a loopback "
        "BIND_HOST. Never printed",
        _redis_password,
        secret=True,
    )
    # --- llm client --------------------------------------------------------------------------
    llm_api_key: str = _setting(
        "",
        "Key the LLM server requires of every client (Authorization: Bearer); empty = `invoke up` "
        "generates one into .env. Never printed",
        _api_key,
        secret=True,
    )
    llm_server_url: str = _setting(
        "http://127.0.0.1:8000", "Base URL of the OpenAI-compatible LLM server", _http_url
    )
    llm_timeout: float = _setting(
        "120", "Seconds to wait for one LLM server response", _positive_number
    )
    # --- celery worker -----------------------------------------------------------------------
    worker_concurrency: int = _setting(
        "4", "Tasks one worker runs at once (match N_PARALLEL to keep the server busy)",
        _int_between(1, 256),
    )  # fmt: skip
    task_time_limit: int = _setting(
        "900", "Seconds a task may run before the worker kills it", _int_between(10)
    )
    visibility_timeout: int = _setting(
        "3600",
        "Seconds before Redis redelivers an unacknowledged task; must exceed TASK_TIME_LIMIT, or "
        "long tasks run twice",
        _int_between(60),
    )
    result_expires: int = _setting(
        "86400", "Seconds task results are kept in Redis", _int_between(60)
    )
    llm_max_retries: int = _setting(
        "10",
        "Retries of a task after a retryable LLM server failure (waits up to 2, 4, 8 ... 300 s, "
        "random; 10 outlast a server restart)",
        _int_between(0, 100),
    )
    # --- llama.cpp server --------------------------------------------------------------------
    llama_server: str = _setting(
        "llama-server",
        "llama.cpp server flavor: llama-server (faster: continuous batching, /health) "
        "or llama-cpp-python",
        _choice("llama-server", "llama-cpp-python"),
    )
    gguf_dir: str = _setting(
        "models/gguf",
        "Folder of GGUF models on this machine, mounted read-only at /models (relative = to repo)",
        _host_dir,
    )
    model_path: str = _setting(
        "/models/model.gguf",
        "GGUF model as the container sees it (GGUF_DIR is mounted at /models)",
        _container_path("/models/"),
    )
    n_ctx: int = _setting("4096", "Context window in tokens (per request slot)", _int_between(64))
    n_gpu_layers: int = _setting(
        "0", "Layers offloaded to an NVIDIA GPU: 0 = CPU only, -1 = all", _int_between(-1)
    )
    n_parallel: int = _setting(
        "4", "Requests llama-server decodes together (continuous batching)", _int_between(1, 256)
    )
    n_threads: int | None = _setting(
        "", "CPU threads for decoding; empty = every core the container may use", _optional_int(1)
    )
    served_model_name: str = _setting(
        "", "Model name the server reports; empty = the model file's name without .gguf"
    )
    host: str = _setting("0.0.0.0", "Address the LLM server binds to inside its container", _ip)
    port: int = _setting("8000", "LLM server port, published on BIND_HOST", _port)
    llamacpp_accel: str = _setting(
        "cpu",
        "llama.cpp image build: cpu, or cuda (CUDA base image, -DGGML_CUDA=on; needs a registry)",
        _choice("cpu", "cuda"),
    )
    # --- vllm server -------------------------------------------------------------------------
    hf_dir: str = _setting(
        "models/hf",
        "Folder of Hugging Face models on this machine, mounted read-only at /models",
        _host_dir,
    )
    model_name: str = _setting(
        "/models/model",
        "Hugging Face model folder as the vLLM container sees it (HF_DIR is at /models)",
        _container_path("/models/"),
    )
    vllm_variant: str = _setting(
        "cuda",
        "vLLM image: cuda (NVIDIA GPU required) or cpu (vLLM's CPU build; slow, but runs anywhere)",
        _choice("cuda", "cpu"),
    )
    vllm_cpu_kvcache_space: int = _setting(
        "1", "GiB of memory for vLLM's KV cache with the cpu variant", _int_between(1, 1024)
    )
    tensor_parallel_size: int = _setting(
        "1", "GPUs vLLM splits the model across", _int_between(1, 64)
    )
    gpu_memory_utilization: float = _setting(
        "0.9", "Fraction of GPU memory vLLM may use", _fraction
    )
    max_model_len: int = _setting(
        "4096", "Longest sequence vLLM accepts, in tokens", _int_between(16)
    )
    # --- resources (empty = no limit) ---------------------------------------------------------
    redis_cpus: float | None = _setting(
        "1", "CPUs Redis may use, e.g. 0.5 or 2; empty = no limit", _optional_cpus
    )
    redis_memory: int | None = _setting(
        "1g",
        "Memory Redis may use, e.g. 512m or 2g (Docker kills it past that); empty = no limit",
        _optional_memory,
    )
    llm_cpus: float | None = _setting(
        "", "CPUs the LLM server may use; empty = no limit (every core)", _optional_cpus
    )
    llm_memory: int | None = _setting(
        "8g",
        "Memory the LLM server may use (model, context and runtime; raise it for models over "
        "about 6 GB); empty = no limit",
        _optional_memory,
    )
    # --- images ------------------------------------------------------------------------------
    image_source: str = _setting(
        "auto",
        "Where base images come from: registry (official images), local (built from Debian "
        "packages, no registry needed) or auto (detect)",
        _choice("auto", "registry", "local"),
    )
    build_ca_bundle: str = _setting(
        "auto",
        "Extra CA bundle given to pip inside image builds (TLS-intercepting proxies): a path, "
        "none, or auto (PIP_CERT, REQUESTS_CA_BUNDLE, SSL_CERT_FILE or the system bundle)",
    )
    debian_mirror: str = _setting(
        "http://deb.debian.org/debian",
        "Debian mirror for local base images (registry-less mode)",
        _http_url,
    )
    # --- past one machine --------------------------------------------------------------------
    workers: int = _setting(
        "0",
        "Celery workers `invoke up` runs as containers beside the stack (`invoke up --workers N`); "
        "0 = none, `invoke worker` runs one from the venv",
        _int_between(0, 64),
    )
    redis_tls_port: int = _setting(
        "6380",
        "Redis' TLS port, published on BIND_HOST when that is not loopback: worker nodes join "
        "there (plain-text Redis stays on 127.0.0.1)",
        _port,
    )
    redis_tls_dir: str = _setting(
        "",
        "Folder holding ca.pem, client.pem and client-key.pem: when set, clients reach Redis over "
        "TLS with them (a joined node's workers); empty = plain text on loopback",
        _optional_host_dir,
    )
    cluster_dir: str = _setting(
        "cluster",
        "Folder of the cluster's CA, Redis' certificate and a joined node's credentials; keep it "
        "private (relative = to repo)",
        _host_dir,
    )
    flower_port: int = _setting(
        "5555", "Flower's port (`invoke up --monitor`), published on 127.0.0.1 only", _port
    )
    flower_password: str = _setting(
        "",
        "Password of Flower's user `admin`; empty = generated into .env on the first "
        "`invoke up --monitor`. Never printed",
        secret=True,
    )

    # --- sampling: damping repetition in the worker's requests (issue 12) ---------------------
    # Small models fall into loops (the same sentence again and again) without these. Each is
    # sent where the server supports it: llama-server takes all; vLLM takes the repeat penalty
    # as repetition_penalty plus the frequency and presence penalties; llama-cpp-python all but
    # DRY. generate and chat send them on every request, one step stronger when an answer
    # looped anyway; summarize sends none on its first ask (measured with `nox -s bench --
    # quality`: over a window that includes the document they push a small model away from the
    # document's own words) and these, one step stronger, when a chunk's answer looped.
    llm_repeat_penalty: float = _setting(
        "1.1",
        "Penalty on tokens already in the last LLM_REPEAT_LAST_N tokens (llama.cpp repeat_penalty, "
        "vLLM repetition_penalty); 1 = off",
        _number_between(1, 2),
    )
    llm_repeat_last_n: int = _setting(
        "256", "Tokens the repeat penalty looks back over (llama.cpp only)", _int_between(0, 8192)
    )
    llm_frequency_penalty: float = _setting(
        "0", "OpenAI frequency_penalty: grows with each repetition of a token; 0 = off",
        _number_between(-2, 2),
    )  # fmt: skip
    llm_presence_penalty: float = _setting(
        "0", "OpenAI presence_penalty: once a token has appeared at all; 0 = off",
        _number_between(-2, 2),
    )  # fmt: skip
    llm_dry_multiplier: float = _setting(
        "0.8",
        "DRY (don't repeat yourself) penalty on extending a sequence already seen, llama-server "
        "only; 0 = off",
        _number_between(0, 5),
    )

    @classmethod
    def fields(cls) -> tuple[dataclasses.Field[Any], ...]:
        return dataclasses.fields(cls)

    def as_environment(self) -> dict[str, str]:
        """The settings as variables, for compose files and child processes; plus
        LLM_API_KEY_ID, which the compose files label the LLM server with (see api_key_id)."""
        env = {}
        for f in self.fields():
            value = getattr(self, f.name)
            env[f.name.upper()] = "" if value is None else str(value)
        env["LLM_API_KEY_ID"] = self.api_key_id()
        return env

    def api_key_id(self) -> str:
        """A fingerprint of LLM_API_KEY, not the key: 8 hex digits of its sha256, empty without
        a key. It changes when the key does, so compose recreates the server with the new key;
        anyone who can read the label can read the container's key file anyway."""
        if not self.llm_api_key:
            return ""
        return hashlib.sha256(self.llm_api_key.encode()).hexdigest()[:8]

    def served_model(self, backend: str) -> str:
        """The model name the backend's server reports, which clients ask for."""
        if self.served_model_name:
            return self.served_model_name
        if backend == "vllm":
            return Path(self.model_name).name
        return Path(self.model_path).name.removesuffix(".gguf")

    def secrets(self) -> list[str]:
        """The secret values that are set (REDIS_PASSWORD, LLM_API_KEY)."""
        return [
            getattr(self, f.name)
            for f in self.fields()
            if f.metadata["secret"] and getattr(self, f.name)
        ]

    def redact(self, text: str) -> str:
        """`text` (a container's log, a command's output) with every secret masked: as written,
        URL-encoded, or a line of it (a config file broken by a line break echoes one), and
        whatever follows `requirepass` or `Authorization: Bearer`."""
        for value in self.secrets():
            lines = [line for line in re.split(r"[\r\n]+", value) if len(line) >= 4]
            for piece in sorted({value, quote(value, safe=""), *lines}, key=len, reverse=True):
                text = text.replace(piece, REDACTED)
        return SECRET_CONTEXT.sub(lambda m: m.group(1) + REDACTED, text)

    def redacted(self) -> dict[str, str]:
        """The settings for display, secrets masked."""
        env = self.as_environment()
        for f in self.fields():
            if f.metadata["secret"] and env[f.name.upper()]:
                env[f.name.upper()] = REDACTED
        return env


def load_settings(
    env_file: Path = ENV_FILE,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """Read the settings; raises UserError naming the first invalid value and where it came from.

    The environment beats `.env`, which beats the defaults; a missing `.env` simply means the
    defaults, an unusable one stops here (kcdev.envfile). Keys in `.env` that look like a
    misspelt setting are reported through `warn` (default: once per process, on stderr): other
    tools may share the file, so unknown keys are not errors.
    """
    environ = os.environ if environ is None else environ
    found = envfile.read(env_file)
    where = shown(env_file)
    _warn_about_misspellings(found, warn or _warn_once)
    values: dict[str, Any] = {}
    for f in Settings.fields():
        name = f.name.upper()
        secret = f.metadata["secret"]
        if name in environ:
            raw, origin = environ[name], "environment"
        elif name in found.values:
            origin = f"{where} line {found.lines[name]}"
            written = found.values[name]
            if written is None:
                raise UserError(
                    f"{origin} names {name} without '=': write {name}=value ({name}= for empty)"
                )
            raw = written
        else:
            raw, origin = f.metadata["default"], "default"
        try:
            # Secrets are taken as written: stripping "   " would silently mean "no password".
            values[f.name] = f.metadata["parse"](raw if secret else raw.strip())
        except ValueError as exc:
            shown_value = "********" if secret else repr(raw)
            raise UserError(
                f"{name}={shown_value} (from {origin}) is invalid: {exc}; fix it in {where} "
                "or the environment (see .env.sample)"
            ) from None
    settings = Settings(**values)
    if settings.visibility_timeout <= settings.task_time_limit:
        raise UserError(
            f"VISIBILITY_TIMEOUT={settings.visibility_timeout} must exceed "
            f"TASK_TIME_LIMIT={settings.task_time_limit}: Redis would redeliver tasks still running"
        )
    return settings


def load_settings_or_exit() -> Settings:
    """The settings, for entry points that are not invoke tasks (the Celery worker): a UserError
    ends the process with its one line and exit status 1 instead of a traceback."""
    try:
        return load_settings()
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Tasks and the worker load the settings several times; say each warning once."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _warn_about_misspellings(found: envfile.EnvFile, warn: Callable[[str], None]) -> None:
    known = [f.name.upper() for f in Settings.fields()]
    for key in found.values:
        if key in known:
            continue
        likely = difflib.get_close_matches(key.upper(), known, n=1, cutoff=0.85)
        if likely:
            warn(
                f"{shown(found.path)} line {found.lines[key]} sets {key}, which no setting "
                f"reads: did you mean {likely[0]}?"
            )
