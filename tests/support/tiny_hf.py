"""A tiny Llama in Hugging Face format made on the spot, for tests that need a real vLLM server.

vLLM serves Hugging Face model folders, and a real one is gigabytes that cannot be downloaded here.
This one is a few hundred thousand seeded random weights: vLLM's CPU build serves it, and answers
completions and chat completions with meaningless text. It is the Hugging Face twin of
tiny_gguf.py's model: the same 260-token byte vocabulary (four specials, then one token per byte,
so no prompt can hit an unknown token) and the same chat template. Its attention heads are wider
(head_dim 64) because vLLM's CPU attention refuses narrow ones such as the GGUF model's 16.

Everything is written with `tokenizers`, `safetensors` and numpy: no torch or transformers on the
host, and the files come out byte-identical for the same seed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from tests.support.tiny_gguf import CHAT_TEMPLATE, SPECIAL_TOKENS

HIDDEN = 128
N_HEAD = 2
N_HEAD_KV = 2
HEAD_DIM = HIDDEN // N_HEAD  # 64: vLLM's CPU attention has kernels for 32, 64, 80, 96, ...
INTERMEDIATE = 256
N_LAYER = 2
UNK, BOS, EOS, PAD = SPECIAL_TOKENS
BOS_ID, EOS_ID, PAD_ID = 1, 2, 3
# Matches the stack's default MAX_MODEL_LEN, so the model also serves without that setting.
MAX_POSITIONS = 4096


def _tokenizer() -> Tokenizer:
    """Byte-level BPE without merges: every byte is one token, so any text round-trips."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *alphabet])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
    )
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def vocab_size() -> int:
    return len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())


def _config() -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": N_LAYER,
        "num_attention_heads": N_HEAD,
        "num_key_value_heads": N_HEAD_KV,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size(),
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": "float32",
    }


def _tokenizer_config() -> dict[str, object]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "chat_template": CHAT_TEMPLATE,
    }


def _tensors(seed: int) -> dict[str, npt.NDArray[np.float32]]:
    # Hugging Face layout: Linear weights are (out_features, in_features).
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> npt.NDArray[np.float32]:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    def norm() -> npt.NDArray[np.float32]:
        return np.ones(HIDDEN, dtype=np.float32)

    tensors = {"model.embed_tokens.weight": weight(vocab_size(), HIDDEN)}
    for i in range(N_LAYER):
        layer = f"model.layers.{i}"
        tensors |= {
            f"{layer}.input_layernorm.weight": norm(),
            f"{layer}.self_attn.q_proj.weight": weight(N_HEAD * HEAD_DIM, HIDDEN),
            f"{layer}.self_attn.k_proj.weight": weight(N_HEAD_KV * HEAD_DIM, HIDDEN),
            f"{layer}.self_attn.v_proj.weight": weight(N_HEAD_KV * HEAD_DIM, HIDDEN),
            f"{layer}.self_attn.o_proj.weight": weight(HIDDEN, N_HEAD * HEAD_DIM),
            f"{layer}.post_attention_layernorm.weight": norm(),
            f"{layer}.mlp.gate_proj.weight": weight(INTERMEDIATE, HIDDEN),
            f"{layer}.mlp.up_proj.weight": weight(INTERMEDIATE, HIDDEN),
            f"{layer}.mlp.down_proj.weight": weight(HIDDEN, INTERMEDIATE),
        }
    tensors |= {"model.norm.weight": norm(), "lm_head.weight": weight(vocab_size(), HIDDEN)}
    return tensors


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write(folder: Path, seed: int) -> None:
    _write_json(folder / "config.json", _config())
    _write_json(
        folder / "generation_config.json",
        {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID},
    )
    _tokenizer().save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", _tokenizer_config())
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD},
    )
    # transformers and vLLM only load safetensors files whose metadata names the "pt" format.
    save_file(_tensors(seed), str(folder / "model.safetensors"), metadata={"format": "pt"})


def write_tiny_hf_llama(folder: Path, *, seed: int = 0) -> Path:
    """Write the tiny model's folder, byte-identical for the same seed; returns the folder.

    The folder appears under its name only once complete, so a server started on it (or a parallel
    test writing the same path) never sees half a model. An existing folder is replaced.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        _write(tmp, seed)
        # mkdtemp makes the folder 0700, and the server container runs as another user.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
