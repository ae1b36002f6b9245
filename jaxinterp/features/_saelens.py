"""Saving and loading dictionaries in SAELens's folder layout (``cfg.json`` + safetensors).

SAELens (6.x) keeps one dictionary per folder: ``sae_weights.safetensors`` with tensors
``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]`` (``[d_sae, d_out]`` for
transcoders), ``b_dec`` and, for JumpReLU, ``threshold [d_sae]``; and ``cfg.json`` with
``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``,
``normalize_activations``, ``reshape_activations``, ``k`` (TopK), ``d_out`` (transcoders) and a
``metadata`` object (``hook_name``, ``model_name``, ``sae_lens_version``, ...). The layout was
read from SAELens 6.54's ``SAEConfig.to_dict`` / ``SAE.save_model`` and checked by loading our
files in SAELens itself (``scripts/make_saelens_fixture.py``).

Architecture names: ``relu`` ↔ ``"standard"`` (``"transcoder"`` for a transcoder), ``topk`` ↔
``"topk"``, ``jumprelu`` ↔ ``"jumprelu"`` (``"jumprelu_transcoder"``). A BatchTopK dictionary
is saved as ``"jumprelu"`` with its estimated threshold on every latent, as SAELens does with
its own BatchTopK SAEs. SAELens's JumpReLU computes ``relu(pre) · [pre > θ]``; ours
``pre · [pre > θ]``: the same for ``θ >= 0`` (saving refuses a negative threshold).

Loading folds ``apply_b_dec_to_input=True`` (SAELens's default: the encoder reads
``x − b_dec``) into the encoder bias, ``b_enc − b_dec @ W_enc``, which is exact. Crosscoders
have no SAELens layout; activation normalisation other than ``"none"`` is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxinterp.features._arch import ARCHS, Params, Setting, jumprelu, relu, topk

WEIGHTS = "sae_weights.safetensors"
CONFIG = "cfg.json"
SAELENS_VERSION = "6.54.12"


def save_saelens(
    path: str | Path,
    params: Params,
    setting: Setting,
    *,
    hook_name: str,
    model_name: str = "",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Writes one dictionary as a SAELens folder.

    Args:
      path: the folder (created).
      params: one dictionary (no ``[dict]`` axis): an SAE or a transcoder.
      setting: its :class:`Setting`.
      hook_name: where it reads, e.g. ``"block_0"`` (stored in ``metadata.hook_name``).
      model_name: stored in ``metadata.model_name``.
      metadata: more metadata entries (JSON-serialisable).

    Returns:
      The folder.

    Raises:
      ValueError: a crosscoder, a stacked ``params``, a TopK transcoder (no SAELens class),
        or a negative JumpReLU threshold.

    >>> import tempfile, jax
    >>> from jaxinterp.features import init_params
    >>> p = init_params(jax.random.key(0), 4, 8)
    >>> folder = save_saelens(tempfile.mkdtemp(), p, topk(2), hook_name="block_0")
    >>> sorted(f.name for f in folder.iterdir())
    ['cfg.json', 'sae_weights.safetensors']
    >>> back, setting, cfg = load_saelens(folder)
    >>> cfg["architecture"], int(setting.k), bool(jnp.array_equal(back.W_dec, p.W_dec))
    ('topk', 2, True)
    """
    try:
        from safetensors.numpy import save_file
    except ImportError as e:  # pragma: no cover - safetensors is a dependency
        raise ImportError("save_saelens needs the safetensors package") from e
    if not isinstance(hook_name, str) or not hook_name:
        raise ValueError(
            f"hook_name: expected the site the dictionary reads (e.g. 'block_0'), got "
            f"{hook_name!r}; SAELens needs it to place the dictionary"
        )
    if not isinstance(params, Params) or params.W_enc.ndim != 2:
        shape = getattr(getattr(params, "W_enc", None), "shape", None)
        raise ValueError(
            f"params: expected one SAE or transcoder (W_enc [d_in, d_sae]), got W_enc of shape "
            f"{shape} (crosscoders and stacks have no SAELens layout; save each dictionary)"
        )
    if np.ndim(setting.arch) != 0:
        raise ValueError(f"setting: expected one Setting, got arch {np.asarray(setting.arch)}")
    arch = ARCHS[int(setting.arch)]
    d_in, d_sae = params.W_enc.shape
    d_out = params.W_dec.shape[1]
    transcoder = d_in != d_out
    cfg: dict[str, Any] = {
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": SAELENS_VERSION,
            "hook_name": hook_name,
            "model_name": model_name,
            "hook_head_index": None,
            "prepend_bos": True,
            "trained_with": "jaxinterp.features",
            "trained_architecture": arch,
            **(metadata or {}),
        },
    }
    tensors = {
        "W_enc": np.asarray(params.W_enc, np.float32),
        "b_enc": np.asarray(params.b_enc, np.float32),
        "W_dec": np.asarray(params.W_dec, np.float32),
        "b_dec": np.asarray(params.b_dec, np.float32),
    }
    if arch == "relu":
        cfg["architecture"] = "transcoder" if transcoder else "standard"
    elif arch == "topk":
        if transcoder:
            raise ValueError("setting: SAELens has no TopK transcoder class; save an SAE")
        cfg["architecture"] = "topk"
        cfg["k"] = int(setting.k)
        cfg["rescale_acts_by_decoder_norm"] = False
    else:
        thr = np.asarray(params.threshold, np.float32)
        if (thr < 0).any():
            raise ValueError(
                f"params: SAELens's JumpReLU needs thresholds >= 0, got min {thr.min():.4g}"
            )
        cfg["architecture"] = "jumprelu_transcoder" if transcoder else "jumprelu"
        tensors["threshold"] = thr
    if transcoder:
        cfg["d_out"] = int(d_out)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / WEIGHTS))
    (path / CONFIG).write_text(json.dumps(cfg, indent=2))
    return path


_FROM = {
    "standard": "relu",
    "transcoder": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "jumprelu_transcoder": "jumprelu",
}


def load_saelens(
    path: str | Path, *, l1: float = 0.0, l0: float = 0.0, bandwidth: float = 1e-3
) -> tuple[Params, Setting, dict[str, Any]]:
    """Reads a SAELens folder (ours, or SAELens's / Gemma Scope-style in the same layout).

    Args:
      path: a folder with ``cfg.json`` and ``sae_weights.safetensors``.
      l1, l0, bandwidth: the training settings to attach (the files do not hold them).

    Returns:
      ``(params, setting, cfg)``: :class:`Params` (``apply_b_dec_to_input`` folded into
      ``b_enc``), the :class:`Setting` and the parsed ``cfg.json``.

    Raises:
      FileNotFoundError: a missing file.
      ValueError: an architecture other than standard, topk, jumprelu and their transcoders,
        or ``normalize_activations`` other than ``"none"``.
    """
    from jaxinterp.models import read_safetensors

    path = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"path: expected {name} in {str(path)!r}")
    cfg = json.loads((path / CONFIG).read_text())
    arch = cfg.get("architecture", "standard")
    if arch not in _FROM:
        raise ValueError(
            f"path: architecture {arch!r} is not supported; expected one of {sorted(_FROM)}"
        )
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise ValueError(f"path: normalize_activations={norm!r} is not supported (expected 'none')")
    t = read_safetensors(path / WEIGHTS)
    W_enc = np.asarray(t["W_enc"], np.float32)
    b_enc = np.asarray(t["b_enc"], np.float32)
    b_dec = np.asarray(t["b_dec"], np.float32)
    if cfg.get("apply_b_dec_to_input", True) and arch in ("standard", "topk", "jumprelu"):
        b_enc = b_enc - b_dec @ W_enc
    d_sae = W_enc.shape[1]
    thr = np.asarray(t.get("threshold", np.zeros(d_sae)), np.float32)
    params = Params(
        jnp.asarray(W_enc),
        jnp.asarray(b_enc),
        jnp.asarray(np.asarray(t["W_dec"], np.float32)),
        jnp.asarray(b_dec),
        jnp.asarray(thr),
    )
    ours = _FROM[arch]
    if ours == "relu":
        setting = relu(l1)
    elif ours == "topk":
        setting = topk(int(cfg["k"]))
    else:
        setting = jumprelu(l0, bandwidth=bandwidth)
    return params, setting, cfg
