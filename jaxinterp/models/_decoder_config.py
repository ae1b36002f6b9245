"""The decoder's hyperparameters and their reading from Hugging Face ``config.json`` files.

``config.json`` is written differently by transformers 4.x and 5.x: 4.x keeps ``rope_theta``
and ``rope_scaling`` at the top level (Gemma 3: ``rope_local_base_freq`` for its local layers);
5.x moves them into ``rope_parameters`` (``{"rope_type", "rope_theta", "factor", ...}``, or one
such dict per layer type, ``{"full_attention": ..., "sliding_attention": ...}``, for Gemma 3).
:meth:`DecoderConfig.from_hf` reads both and gives the same :class:`DecoderConfig` for the
same model.

The rule for keys: a key that changes the maths of the model is either implemented or refused
with a ``ValueError`` naming it, never ignored. Keys known not to change the forward pass
(dropout rates, token ids, ``use_cache``, ...) and keys transformers' own model class for that
``model_type`` does not read (e.g. ``attention_bias`` for Mistral, ``pretraining_tp``, which
only split the same matmuls in older versions) pass. Any other key with a value that is not
``None`` raises a ``UserWarning`` naming it: a key this reader does not know may change the
model.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

_GEMMA_DEFAULTS: dict[str, dict[str, Any]] = {  # transformers 4.57 config defaults
    "gemma2": {
        "vocab_size": 256000,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
    },
    "gemma3_text": {
        "vocab_size": 262208,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
        "attention_bias": False,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "final_logit_softcapping": None,
        "rope_local_base_freq": 10000.0,
    },
}
_ACTS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}

# Keys that never change the forward pass of these models (metadata, dropout, token ids,
# generation defaults), and the keys each family reads.
_NO_MATHS = frozenset(
    """architectures model_type transformers_version dtype torch_dtype use_cache bos_token_id
    eos_token_id pad_token_id sep_token_id decoder_start_token_id initializer_range
    attention_dropout attn_pdrop embd_pdrop resid_pdrop summary_activation summary_first_dropout
    summary_proj_to_labels summary_type summary_use_proj _name_or_path name_or_path id2label
    label2id num_labels problem_type output_attentions output_hidden_states return_dict
    torchscript tokenizer_class task_specific_params prefix chunk_size_feed_forward is_decoder
    is_encoder_decoder tie_encoder_decoder cross_attention_hidden_size finetuning_task
    max_length min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty
    temperature top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size
    encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens pruned_heads
    add_cross_attention_to_decoder use_return_dict _attn_implementation_autoset
    n_ctx is_llama_config transformers.js_config""".split()
)
_READ = {
    "gpt2": """vocab_size n_embd n_head n_layer n_positions n_inner layer_norm_epsilon
        activation_function scale_attn_weights scale_attn_by_inverse_layer_idx
        reorder_and_upcast_attn add_cross_attention tie_word_embeddings""",
    "llama": """vocab_size hidden_size num_attention_heads num_key_value_heads num_hidden_layers
        head_dim intermediate_size max_position_embeddings rms_norm_eps rope_theta rope_scaling
        rope_parameters attention_bias mlp_bias tie_word_embeddings hidden_act pretraining_tp
        rope_interleaved""",
    "mistral": """vocab_size hidden_size num_attention_heads num_key_value_heads
        num_hidden_layers head_dim intermediate_size max_position_embeddings rms_norm_eps
        rope_theta rope_scaling rope_parameters sliding_window tie_word_embeddings hidden_act""",
    "qwen2": """vocab_size hidden_size num_attention_heads num_key_value_heads num_hidden_layers
        head_dim intermediate_size max_position_embeddings rms_norm_eps rope_theta rope_scaling
        rope_parameters sliding_window use_sliding_window max_window_layers layer_types
        tie_word_embeddings hidden_act""",
    "gemma2": """vocab_size hidden_size num_attention_heads num_key_value_heads
        num_hidden_layers head_dim intermediate_size max_position_embeddings rms_norm_eps
        rope_theta rope_scaling rope_parameters attention_bias tie_word_embeddings hidden_act
        hidden_activation query_pre_attn_scalar sliding_window layer_types
        final_logit_softcapping attn_logit_softcapping use_bidirectional_attention
        cache_implementation""",
}
_READ["qwen3"] = _READ["qwen2"] + " attention_bias"
_READ["gemma3_text"] = (
    _READ["gemma2"] + " rope_local_base_freq sliding_window_pattern _sliding_window_pattern"
)
# rope dict keys each supported type reads (4.x rope_scaling or 5.x rope_parameters)
_ROPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}


def _check_keys(config: dict[str, Any], mt: str) -> None:
    known = _NO_MATHS | set(_READ[mt].split())
    unknown = sorted(k for k, v in config.items() if k not in known and v is not None)
    if unknown:
        warnings.warn(
            f"config: keys {unknown} of model_type {mt!r} are not read; if they change the "
            "model, its outputs will differ from transformers'",
            UserWarning,
            stacklevel=3,
        )


def _rope_dict(rope: Any, where: str, default_theta: float) -> tuple[float, tuple]:
    """``(theta, sorted scaling items)`` of one rope dict; refuses what is not implemented."""
    if not isinstance(rope, dict):
        raise ValueError(f"config: {where} must be a dict, got {rope!r}")
    rope = dict(rope)
    kind, old_kind = rope.pop("rope_type", None), rope.pop("type", None)
    if kind is not None and old_kind is not None and kind != old_kind:
        raise ValueError(f"config: {where} has rope_type {kind!r} and type {old_kind!r}")
    kind = kind or old_kind or "default"
    theta = float(rope.pop("rope_theta", default_theta))
    if kind not in _ROPE_KEYS:
        raise ValueError(
            f"config: {where} rope_type {kind!r} is not supported (default, linear, llama3)"
        )
    factor = rope.pop("partial_rotary_factor", 1.0)
    if factor not in (None, 1, 1.0):
        raise ValueError(
            f"config: {where} partial_rotary_factor={factor} is not supported (only 1.0)"
        )
    extra = sorted(set(rope) - _ROPE_KEYS[kind])
    if kind in ("default",) and extra == ["factor"] and rope["factor"] in (None, 1, 1.0):
        extra = []  # some writers leave factor 1.0 beside the default type
    if extra:
        raise ValueError(f"config: {where} keys {extra} are not supported for rope_type {kind!r}")
    missing = sorted(_ROPE_KEYS[kind] - set(rope))
    if missing:
        raise ValueError(f"config: {where} rope_type {kind!r} lacks {missing}")
    if kind == "default":
        return theta, ()
    return theta, tuple(sorted({**rope, "rope_type": kind}.items()))


def _read_rope(config: dict[str, Any], default_theta: float, local_default: float | None):
    """``(theta, scaling, local_theta)`` from either layout (see the module docstring)."""
    params = config.get("rope_parameters")
    old = {k: config[k] for k in ("rope_theta", "rope_scaling") if config.get(k) is not None}
    if params:
        nested = set(params) & {"full_attention", "sliding_attention"}
        full = params.get("full_attention", params) if nested else params
        theta, scaling = _rope_dict(full, "rope_parameters", default_theta)
        local = None
        if nested and params.get("sliding_attention") is not None:
            local, lscale = _rope_dict(
                params["sliding_attention"], "rope_parameters['sliding_attention']", theta
            )
            if lscale:
                raise ValueError(
                    "config: rope_parameters['sliding_attention'] with scaling "
                    f"{dict(lscale)['rope_type']!r} is not supported (only the default type)"
                )
        if old:  # both layouts: must agree, never pick one silently
            o_theta, o_scaling = _rope_dict(
                {**(old.get("rope_scaling") or {}), "rope_theta": old.get("rope_theta", theta)},
                "rope_scaling",
                default_theta,
            )
            if (o_theta, o_scaling) != (theta, scaling):
                raise ValueError(
                    f"config: rope_theta/rope_scaling {old} disagree with rope_parameters "
                    f"{params}; keep one of them"
                )
        if local is None and local_default is not None:
            local = float(config.get("rope_local_base_freq", local_default))
        return theta, scaling, local
    theta, scaling = _rope_dict(
        {
            **(config.get("rope_scaling") or {}),
            "rope_theta": config.get("rope_theta", default_theta),
        },
        "rope_scaling",
        default_theta,
    )
    local = (
        None if local_default is None else float(config.get("rope_local_base_freq", local_default))
    )
    return theta, scaling, local


def _local_layers(config: dict[str, Any], n: int, sliding: list[bool]) -> tuple[int, ...]:
    types = config.get("layer_types")
    if types is None:
        return tuple(i for i in range(n) if sliding[i])
    if len(types) != n or not set(types) <= {"sliding_attention", "full_attention"}:
        raise ValueError(f"config: layer_types must be {n} of sliding/full_attention, got {types}")
    return tuple(i for i, t in enumerate(types) if t == "sliding_attention")


def _act(config: dict[str, Any], key: str, default: str) -> str:
    act = config.get(key) or default
    if act not in _ACTS:
        raise ValueError(f"config: {key} {act!r} is not one of {sorted(_ACTS)}")
    return _ACTS[act]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyperparameters of a decoder LM (``family`` ``"gpt2"``, ``"llama"`` or ``"gemma"``).

    ``sliding_window`` applies to the layers in ``local_layers`` (all layers when that is
    ``None``); ``query_scale`` is ``query_pre_attn_scalar`` (scores are multiplied by
    ``query_scale ** -0.5``, ``None`` means ``d_head``); ``scale_scores=False`` leaves GPT-2's
    scores unscaled (its ``scale_attn_weights``); ``attn_softcap`` / ``final_softcap`` cap
    scores / logits as ``cap * tanh(x / cap)``; ``rope_local_theta`` is the RoPE base of the
    local layers (Gemma 3; no scaling there); ``mlp_act`` is ``"silu"``, ``"gelu_tanh"`` or
    ``"gelu"`` (gated for the llama and gemma families).
    """

    family: str = "llama"
    vocab_size: int = 128
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_head: int = 16
    d_mlp: int = 128
    max_positions: int = 128
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()  # sorted (key, value) items of HF rope_scaling
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    sliding_window: int | None = None
    local_layers: tuple[int, ...] | None = None
    qk_norm: bool = False
    query_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    rope_local_theta: float | None = None
    mlp_act: str = "silu"
    scale_scores: bool = True

    def is_local(self, layer: int) -> bool:
        """Whether ``layer`` attends through the sliding window."""
        if self.sliding_window is None:
            return False
        return self.local_layers is None or layer in self.local_layers

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> DecoderConfig:
        """Builds the config from a Hugging Face ``config.json`` dict (transformers 4.x or 5.x).

        Supported ``model_type``: ``gpt2``, ``llama``, ``mistral``, ``qwen2``, ``qwen3``,
        ``gemma2``, ``gemma3_text`` and ``gemma3`` (the text part of its ``text_config``; the
        vision tower is not loaded). Keys a Gemma ``config.json`` leaves out take the
        ``transformers`` defaults. RoPE settings are read from ``rope_theta`` /
        ``rope_scaling`` (4.x) or ``rope_parameters`` (5.x); see the module docstring for the
        rule on keys.

        Raises:
          ValueError: an unsupported ``model_type`` or option; the message names it.

        Warns:
          UserWarning: a key this reader does not know has a value (named in the message).

        >>> DecoderConfig.from_hf({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2,
        ...     "vocab_size": 128, "n_positions": 32, "layer_norm_epsilon": 1e-5}).d_head
        16
        >>> c = DecoderConfig.from_hf({"model_type": "gemma2", "hidden_size": 64,
        ...     "intermediate_size": 128, "num_hidden_layers": 4})
        >>> c.family, c.local_layers, c.attn_softcap, c.final_softcap
        ('gemma', (0, 2), 50.0, 30.0)
        >>> base = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
        ...     "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 128,
        ...     "rms_norm_eps": 1e-5}
        >>> v4 = DecoderConfig.from_hf({**base, "rope_theta": 500.0,
        ...     "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
        >>> v5 = DecoderConfig.from_hf({**base, "rope_parameters": {"rope_type": "linear",
        ...     "factor": 2.0, "rope_theta": 500.0}})
        >>> v4 == v5, v5.rope_theta
        (True, 500.0)
        """
        if not isinstance(config, dict):
            raise TypeError(f"config: expected a dict, got {type(config).__name__}")
        mt = config.get("model_type")
        if mt == "gemma3":  # multimodal wrapper: the language model's config
            text = dict(config.get("text_config") or {})
            text.setdefault("tie_word_embeddings", config.get("tie_word_embeddings", True))
            config = {**text, "model_type": "gemma3_text"}
            mt = "gemma3_text"
        if mt not in _READ:
            raise ValueError(
                f"config: model_type {mt!r} is not one of gpt2, llama, mistral, qwen2, qwen3, "
                "gemma2, gemma3_text, gemma3"
            )
        _check_keys(config, mt)
        if mt == "gpt2":
            return cls._from_gpt2(config)
        if mt in ("gemma2", "gemma3_text"):
            return cls._from_gemma(config, mt)
        return cls._from_llama(config, mt)

    @classmethod
    def _from_gpt2(cls, config: dict[str, Any]) -> DecoderConfig:
        for key in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if config.get(key):
                raise ValueError(f"config: GPT-2 option {key}=True is not supported")
        # reorder_and_upcast_attn only computes the same scores in float32, as done here
        d, h = config["n_embd"], config["n_head"]
        return cls(
            family="gpt2",
            vocab_size=config["vocab_size"],
            d_model=d,
            n_layers=config["n_layer"],
            n_heads=h,
            n_kv_heads=h,
            d_head=d // h,
            d_mlp=config.get("n_inner") or 4 * d,
            max_positions=config["n_positions"],
            norm_eps=config["layer_norm_epsilon"],
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
            tie_embeddings=bool(config.get("tie_word_embeddings", True)),
            mlp_act=_act(config, "activation_function", "gelu_new"),
            scale_scores=bool(config.get("scale_attn_weights", True)),
        )

    @classmethod
    def _from_llama(cls, config: dict[str, Any], mt: str) -> DecoderConfig:
        act = _act(config, "hidden_act", "silu")
        if config.get("rope_interleaved"):  # SmolLM's configs carry it (False: HF's rotate-half)
            raise ValueError("config: rope_interleaved=True is not supported (rotate-half only)")
        d, h = config["hidden_size"], config["num_attention_heads"]
        kvh = config.get("num_key_value_heads") or h
        if h % kvh:
            raise ValueError(f"config: {h} heads not divisible by {kvh} kv heads")
        n = config["num_hidden_layers"]
        window = config.get("sliding_window")
        sliding = [window is not None] * n
        if mt in ("qwen2", "qwen3"):
            if not config.get("use_sliding_window", False):
                window = None
            first = config.get("max_window_layers", 28)
            sliding = [window is not None and i >= first for i in range(n)]
        if mt == "llama":
            window = None
        local = _local_layers(config, n, sliding) if window is not None else None
        theta, scaling, _ = _read_rope(config, 10000.0, None)
        # biases as each transformers model class builds them
        attn_bias = bool(config.get("attention_bias", False)) and mt in ("llama", "qwen3")
        return cls(
            family="llama",
            vocab_size=config["vocab_size"],
            d_model=d,
            n_layers=n,
            n_heads=h,
            n_kv_heads=kvh,
            d_head=config.get("head_dim") or d // h,
            d_mlp=config["intermediate_size"],
            max_positions=config.get("max_position_embeddings", 2048),
            norm_eps=config["rms_norm_eps"],
            rope_theta=theta,
            rope_scaling=scaling,
            qkv_bias=attn_bias or mt == "qwen2",
            o_bias=attn_bias,
            mlp_bias=bool(config.get("mlp_bias", False)) and mt == "llama",
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            sliding_window=window,
            local_layers=local,
            qk_norm=mt == "qwen3",
            mlp_act=act,
        )

    @classmethod
    def _from_gemma(cls, config: dict[str, Any], mt: str) -> DecoderConfig:
        c = {**_GEMMA_DEFAULTS[mt], **config}
        act_key = "hidden_activation" if c.get("hidden_activation") else "hidden_act"
        act = _act(c, act_key, "gelu_pytorch_tanh")
        if c.get("use_bidirectional_attention"):
            raise ValueError("config: use_bidirectional_attention is not supported")
        d, h, kvh, n = (
            c["hidden_size"],
            c["num_attention_heads"],
            c["num_key_value_heads"],
            c["num_hidden_layers"],
        )
        if h % kvh:
            raise ValueError(f"config: {h} heads not divisible by {kvh} kv heads")
        every = (
            2
            if mt == "gemma2"
            else c.get("sliding_window_pattern", c.get("_sliding_window_pattern", 6))
        )
        sliding = [bool((i + 1) % every) for i in range(n)]
        gemma3 = mt == "gemma3_text"
        theta, scaling, local_theta = _read_rope(
            config, c["rope_theta"], c["rope_local_base_freq"] if gemma3 else None
        )
        return cls(
            family="gemma",
            vocab_size=c["vocab_size"],
            d_model=d,
            n_layers=n,
            n_heads=h,
            n_kv_heads=kvh,
            d_head=c["head_dim"],
            d_mlp=c["intermediate_size"],
            max_positions=c["max_position_embeddings"],
            norm_eps=c["rms_norm_eps"],
            rope_theta=theta,
            rope_scaling=scaling,
            qkv_bias=bool(c["attention_bias"]),
            o_bias=bool(c["attention_bias"]),
            tie_embeddings=bool(c["tie_word_embeddings"]),
            sliding_window=c["sliding_window"],
            local_layers=_local_layers(c, n, sliding),
            qk_norm=gemma3,
            query_scale=float(c["query_pre_attn_scalar"]),
            # transformers' Gemma 3 attention (4.57 and 5.x) does not use attn_logit_softcapping
            attn_softcap=None if gemma3 else c.get("attn_logit_softcapping"),
            final_softcap=c.get("final_logit_softcapping"),
            rope_local_theta=local_theta,
            mlp_act=act,
        )
