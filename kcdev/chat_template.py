"""Whether a model on disk carries a chat template: what `invoke models` and `invoke ps` show.

Instruct models ship the template that turns a conversation into their prompt format; base models
ship none, and a server asked to chat with one guesses a format the model never learnt (llama-server
falls back to ChatML, llama-cpp-python to Llama 2's) and the answer is junk. The template lives in
a GGUF file's `tokenizer.chat_template` metadata, or in a Hugging Face folder's
`tokenizer_config.json` (`chat_template`) or, in newer snapshots, `chat_template.jinja`.
"""

from __future__ import annotations

import json
from pathlib import Path

from kcdev.gguf_meta import GGUFError, read_string_value
from kcdev.settings import Settings

GGUF_KEY = "tokenizer.chat_template"


def gguf_has_template(path: Path) -> bool | None:
    """True or False for a readable GGUF file; None when it cannot be read as one."""
    try:
        return bool(read_string_value(path, GGUF_KEY))
    except (OSError, GGUFError):
        return None


def folder_has_template(folder: Path) -> bool | None:
    """True or False for a Hugging Face model folder; None when it has no tokenizer config."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    return bool(config.get("chat_template")) if isinstance(config, dict) else None


def has_template(path: Path) -> bool | None:
    """For a GGUF file or a Hugging Face folder; None when it cannot tell."""
    return folder_has_template(path) if path.is_dir() else gguf_has_template(path)


def shown(has: bool | None) -> str:
    return {True: "chat template", False: "no chat template (completions only)", None: "?"}[has]


def configured_model(settings: Settings, backend: str) -> Path:
    """The model file or folder the settings point the backend's server at, on this machine."""
    if backend == "vllm":
        return Path(settings.hf_dir) / settings.model_name.removeprefix("/models/")
    return Path(settings.gguf_dir) / settings.model_path.removeprefix("/models/")


def describe_configured(settings: Settings, backend: str) -> str:
    """One line for `invoke ps`: the configured model and whether it can chat."""
    path = configured_model(settings, backend)
    if not path.exists():
        return f"model: {path.name} (not on this machine)"
    has = has_template(path)
    advice = "; the chat task refuses it" if has is False else ""
    return f"model: {path.name} ({shown(has)}{advice})"
