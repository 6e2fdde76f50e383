"""A tiny llama GGUF model made on the spot, for tests that need a real llama.cpp server.

Tests of the llama.cpp image must load a model, but a real one is gigabytes, has to be downloaded
and loads in tens of seconds. This model is a few hundred KB of seeded random weights: any llama.cpp
server flavor loads it in well under a second and answers completions and chat completions with
meaningless text, so those tests stay fast, offline and self-contained. Only the file format and
the server plumbing are under test, never the quality of what the model says.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

# Small enough to write and load in milliseconds, yet every tensor llama.cpp's llama graph needs.
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
N_LAYER = 2
HEAD_DIM = N_EMBD // N_HEAD

# Specials first, then one token per byte: with no multi-byte pieces, SentencePiece byte fallback
# turns any text into byte tokens, so no prompt can hit an unknown token.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(len(SPECIAL_TOKENS))
FIRST_BYTE_ID = len(SPECIAL_TOKENS)
N_VOCAB = FIRST_BYTE_ID + 256

# Without a template llama-server and llama-cpp-python fall back to guessing a chat format; this
# one is plain enough for both their Jinja engines and ends with the assistant's turn to speak.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _tokenizer() -> tuple[list[str], list[float], list[int]]:
    tokens = [*SPECIAL_TOKENS, *(f"<0x{b:02X}>" for b in range(256))]
    scores = [0.0] * N_VOCAB
    types = [
        int(gguf.TokenType.UNKNOWN),
        *(int(gguf.TokenType.CONTROL) for _ in SPECIAL_TOKENS[1:]),
        *(int(gguf.TokenType.BYTE) for _ in range(256)),
    ]
    return tokens, scores, types


def _tensors(seed: int) -> dict[str, npt.NDArray[np.float32]]:
    # numpy shapes are (rows, cols) = (out, in); gguf writes them reversed as ggml's ne = [in, out].
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> npt.NDArray[np.float32]:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    def norm() -> npt.NDArray[np.float32]:
        return np.ones(N_EMBD, dtype=np.float32)

    tensors = {"token_embd.weight": weight(N_VOCAB, N_EMBD)}
    for i in range(N_LAYER):
        blk = f"blk.{i}"
        tensors |= {
            f"{blk}.attn_norm.weight": norm(),
            f"{blk}.attn_q.weight": weight(N_HEAD * HEAD_DIM, N_EMBD),
            f"{blk}.attn_k.weight": weight(N_HEAD_KV * HEAD_DIM, N_EMBD),
            f"{blk}.attn_v.weight": weight(N_HEAD_KV * HEAD_DIM, N_EMBD),
            f"{blk}.attn_output.weight": weight(N_EMBD, N_HEAD * HEAD_DIM),
            f"{blk}.ffn_norm.weight": norm(),
            f"{blk}.ffn_gate.weight": weight(N_FF, N_EMBD),
            f"{blk}.ffn_up.weight": weight(N_FF, N_EMBD),
            f"{blk}.ffn_down.weight": weight(N_EMBD, N_FF),
        }
    tensors |= {"output_norm.weight": norm(), "output.weight": weight(N_VOCAB, N_EMBD)}
    return tensors


def _write(path: Path, *, seed: int, n_ctx_train: int, chat_template: bool) -> None:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("kc-devenv tiny llama")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens, scores, types = _tokenizer()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(CHAT_TEMPLATE)

    for name, tensor in _tensors(seed).items():
        writer.add_tensor(name, tensor)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_tiny_llama(
    path: Path, *, seed: int = 0, n_ctx_train: int = 2048, chat_template: bool = True
) -> Path:
    """Write the tiny model to path, byte-identical for the same seed and n_ctx_train.

    `chat_template=False` makes it a "base model" without one, as Gemma 3 270M base is.

    The file appears under its name only once complete, so a server started on it (or a parallel
    test writing the same path) never sees half a model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write(tmp, seed=seed, n_ctx_train=n_ctx_train, chat_template=chat_template)
        # mkstemp makes the file 0600, and the server container runs as another user.
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def model_or_tiny(model: Path, scratch: Path) -> Path:
    """`model` when it exists, else the tiny model written into `scratch` (for benchmarks that
    must run without the default preset; their figures then say so)."""
    if model.is_file():
        return model
    print(f"{model} missing: using the tiny test model (figures not comparable)")
    scratch.chmod(0o755)  # the server runs as an unprivileged user
    return write_tiny_llama(scratch / "tiny-llama.gguf")
