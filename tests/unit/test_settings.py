"""Settings: precedence, validation messages, secrecy, and agreement with `.env.sample`."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from kcdev import paths
from kcdev.errors import UserError
from kcdev.settings import Settings, load_settings
from tests.unit.conftest import MakeSettings

PASSWORD = "s3cret-Pa55word"
API_KEY = "k3y-0123456789abcdef_XYZ"


def write_env(path: Path, **values: str) -> Path:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


def error_of(env_file: Path, environ: dict[str, str]) -> str:
    with pytest.raises(UserError) as caught:
        load_settings(env_file, environ=environ)
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

    assert message.startswith(f"{name}={value!r} (from {env_file} line 1) is invalid: ")
    assert reason in message
    assert f"fix it in {env_file} or" in message
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

    assert set(env) == {f.name.upper() for f in Settings.fields()} | {"LLM_API_KEY_ID"}
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
                "llm_api_key": API_KEY,
                "redis_cpus": "0.5",
                "redis_memory": "512m",
                "llm_cpus": "",
                "llm_memory": "",
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


# --- .env mistakes stop every task; they never fall back to the defaults ------------------------


def test_an_unparsable_line_stops_instead_of_using_the_default_project(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LLM_BACKEND=none\nCOMPOSE_PROJECT_NAME kc-adv\n")

    message = error_of(env_file, {})

    assert message == (
        f"{env_file} line 2 is not KEY=value: no '=' after COMPOSE_PROJECT_NAME: "
        "write COMPOSE_PROJECT_NAME=value (see .env.sample)"
    )


def test_an_unterminated_quote_does_not_turn_the_password_off(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f'REDIS_PASSWORD="{PASSWORD}\nREDIS_DB=1\n')

    message = error_of(env_file, {})

    assert message.startswith(f"{env_file} line 1 is not KEY=value: the quote that opens ")
    assert PASSWORD not in message


def test_a_known_key_without_equals_is_refused(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# mine\nREDIS_PASSWORD\n")

    message = error_of(env_file, {})

    assert message == (
        f"{env_file} line 2 names REDIS_PASSWORD without '=': "
        "write REDIS_PASSWORD=value (REDIS_PASSWORD= for empty)"
    )


def test_a_bare_key_of_another_tool_is_left_alone(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SOME_TOOL_FLAG\nREDIS_DB=2\n")

    assert load_settings(env_file, environ={}, warn=pytest.fail).redis_db == 2


def test_a_misspelt_key_warns_naming_the_likely_setting(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("REDIS_DB=1\nREDIS_PASWORD=x\nHF_TOKEN=t\nPIP_INDEX_URL=u\n")
    warnings: list[str] = []

    settings = load_settings(env_file, environ={}, warn=warnings.append)

    assert warnings == [
        f"{env_file} line 2 sets REDIS_PASWORD, which no setting reads: "
        "did you mean REDIS_PASSWORD?"
    ]
    assert settings.redis_password == ""


def test_a_warning_is_printed_once_per_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("N_THREAD=2\n")

    load_settings(env_file, environ={})
    load_settings(env_file, environ={})

    err = capsys.readouterr().err
    assert err == (
        f"warning: {env_file} line 1 sets N_THREAD, which no setting reads: "
        "did you mean N_THREADS?\n"
    )


def test_an_unusable_env_file_stops_loading(tmp_path: Path) -> None:
    (tmp_path / ".env").mkdir()

    assert "is a folder, not a file" in error_of(tmp_path / ".env", {})


# --- secrets that every tool can carry --------------------------------------------------------

BAD_PASSWORDS = [
    pytest.param('"ab\\ncd-Pa55"', "line break", id="newline"),
    pytest.param('"   "', "is only spaces", id="space-only"),
    pytest.param('" s3cret-Pa55"', "starts or ends with a space", id="leading-space"),
    pytest.param('"s3cret\\tPa55"', "line break, tab", id="tab"),
    pytest.param("s3cret-Pä55", "non-ASCII", id="non-ascii"),
]


@pytest.mark.parametrize(("written", "reason"), BAD_PASSWORDS)
def test_a_password_redis_cannot_take_is_refused_unprinted(
    tmp_path: Path, written: str, reason: str
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"REDIS_PASSWORD={written}\n", encoding="utf-8")

    message = error_of(env_file, {})

    assert message.startswith(f"REDIS_PASSWORD=******** (from {env_file} line 1) is invalid: ")
    assert reason in message
    assert "Pa55" not in message and "Pä55" not in message and "\n" not in message


@pytest.mark.parametrize("password", ["p@ss:w/rd?#%\"\\'`$x{}", "two words inside"])
def test_a_password_with_punctuation_and_inner_spaces_is_kept_exactly(
    missing_env_file: Path, password: str
) -> None:
    settings = load_settings(missing_env_file, environ={"REDIS_PASSWORD": password})

    assert settings.redis_password == password


@pytest.mark.parametrize(
    "key", ["short", "has space inside-0123456", "comma,separated-0123456", "#comment-0123456789"]
)
def test_an_api_key_servers_would_misread_is_refused_unprinted(
    missing_env_file: Path, key: str
) -> None:
    message = error_of(missing_env_file, {"LLM_API_KEY": key})

    assert message.startswith("LLM_API_KEY=******** (from environment) is invalid: ")
    assert key not in message


def test_an_api_key_is_masked_in_redacted(make_settings: MakeSettings) -> None:
    shown = make_settings(llm_api_key=API_KEY).redacted()

    assert shown["LLM_API_KEY"] == "********"
    assert API_KEY not in "".join(shown.values())


# --- resource limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "size"),
    [("512m", 512 * 1024**2), ("1g", 1024**3), ("1.5G", 1536 * 1024**2), ("2GiB", 2 * 1024**3),
     ("104857600", 104857600), ("", None)],
)  # fmt: skip
def test_memory_limits_read_as_docker_writes_them(
    missing_env_file: Path, raw: str, size: int | None
) -> None:
    assert load_settings(missing_env_file, environ={"LLM_MEMORY": raw}).llm_memory == size


@pytest.mark.parametrize(
    ("name", "raw", "reason"),
    [
        ("REDIS_MEMORY", "lots", "not a size such as 512m or 2g"),
        ("REDIS_MEMORY", "4m", "below 6m"),
        ("LLM_CPUS", "0", "greater than 0"),
        ("LLM_CPUS", "0.001", "outside 0.01..1024"),
        ("REDIS_CPUS", "nan", "not a finite number"),
        ("LLM_TIMEOUT", "inf", "not a finite number"),
        ("REDIS_CPUS", "two", "not a number"),
    ],
)
def test_invalid_resource_limits_name_the_variable(
    missing_env_file: Path, name: str, raw: str, reason: str
) -> None:
    message = error_of(missing_env_file, {name: raw})

    assert message.startswith(f"{name}={raw!r} (from environment) is invalid: ")
    assert reason in message


def test_resource_limits_default_to_redis_bounded_llm_memory_bounded(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()

    assert (settings.redis_cpus, settings.redis_memory) == (1.0, 1024**3)
    assert (settings.llm_cpus, settings.llm_memory) == (None, 8 * 1024**3)


def test_the_worker_stops_in_one_line_on_a_bad_setting(tmp_path: Path) -> None:
    """The worker loads the same settings as the tasks, outside invoke: no traceback either."""
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"],
        cwd=paths.ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "N_CTX": "abc"},
    )  # fmt: skip

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: N_CTX='abc' (from environment) is invalid: not a whole number; fix it in .env "
        "or the environment (see .env.sample)"
    ]


def test_the_api_key_id_changes_with_the_key_and_does_not_show_it(
    make_settings: MakeSettings,
) -> None:
    one, other = make_settings(llm_api_key=API_KEY), make_settings(llm_api_key=API_KEY + "x")

    assert re.fullmatch(r"[0-9a-f]{8}", one.api_key_id())
    assert one.api_key_id() != other.api_key_id()
    assert one.as_environment()["LLM_API_KEY_ID"] == one.api_key_id()
    assert make_settings().api_key_id() == ""


def test_redact_masks_every_form_of_a_secret(make_settings: MakeSettings) -> None:
    settings = make_settings(redis_password="p@ss w/rd", llm_api_key=API_KEY)
    text = (
        "auth p@ss w/rd; redis://:p%40ss%20w%2Frd@h:1/0; "
        f"Authorization: Bearer {API_KEY}x; requirepass anything-else\n"
    )

    shown = settings.redact(text)

    assert shown == (
        "auth ********; redis://:********@h:1/0; Authorization: Bearer ********; "
        "requirepass ********\n"
    )


def test_redact_masks_even_a_short_password(make_settings: MakeSettings) -> None:
    assert make_settings(redis_password="ab1").redact("x ab1 y") == "x ******** y"
