"""Settings: precedence, validation messages, secrecy, and agreement with `.env.sample`."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from kcdev import paths
from kcdev.errors import UserError
from kcdev.settings import Settings, load_settings
from tests.unit.conftest import MakeSettings

PASSWORD = "s3cret-Pa55word"


def write_env(path: Path, **values: str) -> Path:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


def error_of(env_file: Path, environ: dict[str, str], **overrides: str) -> str:
    with pytest.raises(UserError) as caught:
        load_settings(env_file, environ=environ, **overrides)
    return str(caught.value)


# --- precedence ------------------------------------------------------------------------------


def test_defaults_apply_when_env_file_is_missing(missing_env_file: Path) -> None:
    settings = load_settings(missing_env_file, environ={})

    assert settings.llm_backend == "llamacpp"
    assert settings.compose_project_name == "kc-devenv"
    assert settings.bind_host == "127.0.0.1"
    assert settings.redis_port == 6379
    assert settings.redis_db == 0
    assert settings.redis_password == ""
    assert settings.llm_server_url == "http://127.0.0.1:8000"
    assert settings.llm_timeout == 120.0
    assert settings.n_threads is None
    assert settings.n_gpu_layers == 0
    assert settings.gpu_memory_utilization == 0.9
    assert settings.image_source == "auto"
    assert settings.build_ca_bundle == "auto"


def test_defaults_are_the_declared_ones_for_every_field(missing_env_file: Path) -> None:
    settings = load_settings(missing_env_file, environ={})

    shown = settings.as_environment()
    for f in Settings.fields():
        declared = f.metadata["default"]
        assert shown[f.name.upper()] in (declared, str(f.metadata["parse"](declared)))


def test_env_file_overrides_defaults(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", REDIS_PORT="6380", LLM_BACKEND="none")

    settings = load_settings(env_file, environ={})

    assert settings.redis_port == 6380
    assert settings.llm_backend == "none"
    assert settings.redis_db == 0  # untouched: still the default


def test_environment_overrides_env_file(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", REDIS_PORT="6380", REDIS_DB="2")

    settings = load_settings(env_file, environ={"REDIS_PORT": "6381"})

    assert settings.redis_port == 6381
    assert settings.redis_db == 2


def test_keyword_overrides_beat_environment_and_env_file(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", LLM_BACKEND="llamacpp")

    settings = load_settings(env_file, environ={"LLM_BACKEND": "none"}, llm_backend="vllm")

    assert settings.llm_backend == "vllm"


def test_process_environment_is_used_when_environ_is_not_given(
    missing_env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_DB", "3")

    assert load_settings(missing_env_file).redis_db == 3


def test_values_are_stripped_and_url_trailing_slash_dropped(missing_env_file: Path) -> None:
    settings = load_settings(
        missing_env_file, environ={"REDIS_PORT": " 6390 ", "LLM_SERVER_URL": "http://llm:9000/"}
    )

    assert settings.redis_port == 6390
    assert settings.llm_server_url == "http://llm:9000"


def test_unknown_keyword_override_is_refused(missing_env_file: Path) -> None:
    message = error_of(missing_env_file, {}, no_such_setting="1")

    assert message == "unknown setting(s): no_such_setting"


# --- validation ------------------------------------------------------------------------------

INVALID = [
    pytest.param("REDIS_PORT", "abc", "not a whole number", id="port-not-a-number"),
    pytest.param("PORT", "70000", "outside 1..65535", id="port-too-high"),
    pytest.param("REDIS_PORT", "0", "outside 1..65535", id="port-zero"),
    pytest.param("REDIS_DB", "16", "outside 0..15", id="redis-db-16"),
    pytest.param("GPU_MEMORY_UTILIZATION", "1.5", "must be in (0, 1]", id="gpu-fraction"),
    pytest.param("GPU_MEMORY_UTILIZATION", "0", "greater than 0", id="gpu-zero"),
    pytest.param("LLM_BACKEND", "ollama", "must be one of llamacpp, vllm, none", id="backend"),
    pytest.param("MODEL_PATH", "/tmp/model.gguf", "under /models/", id="model-outside"),
    pytest.param("MODEL_PATH", "/models/../etc/passwd", "under /models/", id="model-dotdot"),
    pytest.param("MODEL_NAME", "models/model", "under /models/", id="model-name-relative"),
    pytest.param("LLM_SERVER_URL", "localhost:8000", "not an http(s) URL", id="url-no-scheme"),
    pytest.param("LLM_SERVER_URL", "http://", "not an http(s) URL", id="url-no-host"),
    pytest.param("LLM_SERVER_URL", "http://127.0.0.1:80x0", "malformed port", id="url-port"),
    pytest.param("BIND_HOST", "localhost", "not an IP address", id="bind-host-name"),
    pytest.param("COMPOSE_PROJECT_NAME", "KC DevEnv", "lowercase", id="project-name"),
    pytest.param("IMAGE_SOURCE", "cloud", "must be one of auto, registry, local", id="source"),
    pytest.param("N_THREADS", "0", "outside 1..", id="threads-zero"),
]


@pytest.mark.parametrize(("name", "value", "reason"), INVALID)
def test_invalid_environment_value_names_variable_and_origin(
    missing_env_file: Path, name: str, value: str, reason: str
) -> None:
    message = error_of(missing_env_file, {name: value})

    assert message.startswith(f"{name}={value!r} (from environment) is invalid: ")
    assert reason in message
    assert "\n" not in message


@pytest.mark.parametrize(("name", "value", "reason"), INVALID)
def test_invalid_env_file_value_names_the_file(
    tmp_path: Path, name: str, value: str, reason: str
) -> None:
    env_file = write_env(tmp_path / ".env", **{name: value})

    message = error_of(env_file, {})

    assert message.startswith(f"{name}={value!r} (from .env) is invalid: ")
    assert reason in message
    assert "fix it in .env" in message
    assert "\n" not in message


def test_invalid_keyword_override_is_reported_as_argument(missing_env_file: Path) -> None:
    message = error_of(missing_env_file, {"LLM_BACKEND": "none"}, llm_backend="bogus")

    assert message.startswith("LLM_BACKEND='bogus' (from argument) is invalid: ")
    assert "\n" not in message


def test_environment_value_is_blamed_not_the_valid_env_file(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", REDIS_DB="1")

    message = error_of(env_file, {"REDIS_DB": "99"})

    assert message.startswith("REDIS_DB='99' (from environment)")


# --- secrecy ---------------------------------------------------------------------------------


def test_password_is_not_in_error_from_environment(missing_env_file: Path) -> None:
    message = error_of(missing_env_file, {"REDIS_PASSWORD": PASSWORD, "REDIS_DB": "16"})

    assert "REDIS_DB" in message
    assert PASSWORD not in message


def test_password_is_not_in_error_from_env_file(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", REDIS_PASSWORD=PASSWORD, PORT="abc")

    message = error_of(env_file, {})

    assert "PORT" in message
    assert PASSWORD not in message


def test_redacted_masks_the_password(make_settings: MakeSettings) -> None:
    settings = make_settings(redis_password=PASSWORD)

    shown = settings.redacted()

    assert shown["REDIS_PASSWORD"] == "********"
    assert PASSWORD not in "".join(shown.values())
    assert shown["REDIS_PORT"] == "6379"  # everything else is shown as is


def test_redacted_leaves_an_empty_password_empty(make_settings: MakeSettings) -> None:
    assert make_settings().redacted()["REDIS_PASSWORD"] == ""


# --- as_environment --------------------------------------------------------------------------


def test_as_environment_has_one_string_per_field(make_settings: MakeSettings) -> None:
    env = make_settings().as_environment()

    assert set(env) == {f.name.upper() for f in Settings.fields()}
    assert all(isinstance(value, str) for value in env.values())
    assert env["N_THREADS"] == ""  # None becomes empty, which parses back to None
    assert env["REDIS_PORT"] == "6379"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "llm_backend": "vllm",
                "redis_password": PASSWORD,
                "n_threads": "3",
                "n_gpu_layers": "-1",
                "gpu_memory_utilization": "0.5",
                "llm_timeout": "2.5",
                "llm_server_url": "https://llm.example:9000/",
                "bind_host": "::1",
            },
            id="customised",
        ),
    ],
)
def test_as_environment_round_trips(
    missing_env_file: Path, make_settings: MakeSettings, overrides: dict[str, str]
) -> None:
    settings = make_settings(**overrides)

    again = load_settings(missing_env_file, environ=settings.as_environment())

    assert again == settings
    assert dataclasses.asdict(again) == dataclasses.asdict(settings)


# --- .env.sample -----------------------------------------------------------------------------


def sample_lines() -> list[str]:
    return paths.ENV_SAMPLE.read_text().splitlines()


def assignment_indexes(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]


def test_env_sample_lists_exactly_the_settings() -> None:
    sample = dotenv_values(paths.ENV_SAMPLE)
    lines = sample_lines()
    names = [lines[i].split("=", 1)[0] for i in assignment_indexes(lines)]

    assert sorted(sample) == sorted(f.name.upper() for f in Settings.fields())
    assert len(names) == len(set(names)), "a variable is assigned twice"


def test_env_sample_values_are_the_declared_defaults() -> None:
    sample = dotenv_values(paths.ENV_SAMPLE)

    declared = {f.name.upper(): f.metadata["default"] for f in Settings.fields()}
    assert dict(sample) == declared


def test_every_env_sample_assignment_follows_a_comment() -> None:
    lines = sample_lines()
    indexes = assignment_indexes(lines)

    assert indexes, ".env.sample assigns nothing"
    for i in indexes:
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", lines[i]), lines[i]
        assert i > 0 and lines[i - 1].startswith("# "), f"no comment above {lines[i]!r}"


def test_env_sample_comments_are_the_declared_docs() -> None:
    lines = sample_lines()
    docs = {f.name.upper(): f.metadata["doc"] for f in Settings.fields()}

    for i in assignment_indexes(lines):
        name = lines[i].split("=", 1)[0]
        assert lines[i - 1] == f"# {docs[name]}"


def test_env_sample_as_env_file_gives_the_defaults(missing_env_file: Path) -> None:
    assert load_settings(paths.ENV_SAMPLE, environ={}) == load_settings(
        missing_env_file, environ={}
    )


# --- host folders and the served model name --------------------------------------------------


@pytest.mark.parametrize("name", ["GGUF_DIR", "HF_DIR"])
def test_relative_host_dir_is_relative_to_the_project(missing_env_file: Path, name: str) -> None:
    settings = load_settings(missing_env_file, environ={name: "elsewhere/models"})

    assert getattr(settings, name.lower()) == str(paths.ROOT / "elsewhere" / "models")


def test_host_dir_defaults_are_the_project_model_folders(make_settings: MakeSettings) -> None:
    settings = make_settings()

    assert settings.gguf_dir == str(paths.GGUF_DIR)
    assert settings.hf_dir == str(paths.HF_DIR)


def test_absolute_host_dir_is_kept(missing_env_file: Path, tmp_path: Path) -> None:
    settings = load_settings(missing_env_file, environ={"GGUF_DIR": str(tmp_path)})

    assert settings.gguf_dir == str(tmp_path)


def test_empty_host_dir_is_invalid(missing_env_file: Path) -> None:
    message = error_of(missing_env_file, {"GGUF_DIR": ""})

    assert message.startswith("GGUF_DIR='' (from environment) is invalid: must not be empty")


@pytest.mark.parametrize(
    ("overrides", "backend", "served"),
    [
        ({}, "llamacpp", "model"),
        ({"model_path": "/models/qwen2.5-0.5b-q4.gguf"}, "llamacpp", "qwen2.5-0.5b-q4"),
        ({"model_name": "/models/Qwen2.5-7B"}, "vllm", "Qwen2.5-7B"),
        ({"served_model_name": "chat", "model_name": "/models/x"}, "vllm", "chat"),
        ({"served_model_name": "chat"}, "llamacpp", "chat"),
    ],
)
def test_served_model(
    make_settings: MakeSettings, overrides: dict[str, str], backend: str, served: str
) -> None:
    assert make_settings(**overrides).served_model(backend) == served
