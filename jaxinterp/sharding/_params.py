"""Placing model parameters on a 2-D device mesh (``data``, ``model``) by path rules.

A parameter's *path* is its key path in the pytree joined with ``/``: linen variables give
``"params/blocks_0/attn/q/kernel"``, an nnx state ``"blocks_0/attn/q/kernel"`` (the ``.value``
of a ``Variable`` is dropped). A *rule* is a ``(regex, PartitionSpec)`` pair; the first rule
whose regex matches the path (``re.search``) gives the leaf's spec. A leaf no rule matches gets
the *fallback*: ``"fsdp"`` (default) shards its largest axis divisible by the device count over
all mesh axes (else over the largest single mesh axis that divides one of its axes) and
replicates leaves smaller than ``min_size`` elements; ``"replicate"`` replicates it; ``"error"``
raises. A rule that names an axis not divisible by its mesh axes raises ``ValueError`` naming the
path, the shape and the mesh axis: a rule you asked for is never replaced by replication.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxinterp._checks import check_int, is_traced

Rules = Sequence[tuple[str, P]]


def model_mesh(
    model: int = 1, data: int | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A 2-D mesh ``('data', 'model')`` of ``data × model`` devices (automatic axes).

    ``model`` devices hold the tensor-parallel slices of one layer (heads, MLP hidden units);
    ``data`` devices split the batch and, with the default rules, the other weight axis
    (FSDP-style). With ``data=None`` it is ``len(devices) // model``.

    Raises:
      TypeError: ``model`` or ``data`` is not an int.
      ValueError: ``model < 1``; ``data × model`` exceeds the device count.

    Warns:
      UserWarning: ``data × model`` is smaller than the device count (devices left unused;
        pass exactly the ``devices`` to use to silence it).

    >>> mesh = model_mesh(model=1)
    >>> mesh.axis_names, mesh.shape["model"]
    (('data', 'model'), 1)
    """
    devices = list(jax.devices() if devices is None else devices)
    model = check_int(model, "model", lo=1)
    if data is None:
        if len(devices) % model:
            raise ValueError(
                f"model: expected a divisor of the {len(devices)} devices, got {model}"
            )
        data = len(devices) // model
    data = check_int(data, "data", lo=1)
    if data * model > len(devices):
        raise ValueError(
            f"data: data × model = {data} × {model} exceeds the {len(devices)} devices"
        )
    if data * model < len(devices):
        warnings.warn(
            f"data: a mesh of data × model = {data} × {model} devices leaves "
            f"{len(devices) - data * model} of the {len(devices)} devices unused; pass "
            f"devices=jax.devices()[:{data * model}] to use fewer on purpose, or data=None to "
            "use them all",
            stacklevel=2,
        )
    devices = devices[: data * model]
    return jax.make_mesh(
        (data, model), ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=devices
    )


def decoder_rules(data: str = "data", model: str = "model") -> list[tuple[str, P]]:
    """Default rules for :class:`jaxinterp.models.Decoder` (GPT-2 and Llama paths).

    Tensor parallel over ``model``: attention heads (``q``/``k``/``v`` kernels and biases,
    ``o`` kernel) and MLP hidden units (``gate``/``up``/``fc_in`` columns, ``fc_out`` rows);
    FSDP over ``data``: the ``d_model`` axis of the same weights. Embedding and unembedding
    split ``d_model`` over both axes (vocabularies such as GPT-2's 50257 divide by nothing).
    Norm scales and the ``[d_model]`` output biases are left to the fallback (small: replicated).

    The stacked layout (``Decoder(cfg, scan_layers=True)``, weights ``blocks/...`` with a
    leading ``[layer]`` axis) gets the same specs with that axis unsharded (the rules for
    ``blocks/`` paths come first).

    >>> [r for r, _ in decoder_rules()][-8:-6]
    ['attn/[qkv]/kernel$', 'attn/[qkv]/bias$']
    >>> decoder_rules()[0]
    ('(^|/)blocks/attn/[qkv]/kernel$', P(None, 'data', 'model', None))
    """
    both = (data, model)
    per_layer = [
        (r"attn/[qkv]/kernel$", P(data, model, None)),  # [d_model, head, d_head]
        (r"attn/[qkv]/bias$", P(model, None)),  # [head, d_head]
        (r"attn/o/kernel$", P(model, None, data)),  # [head, d_head, d_model]
        (r"mlp/(gate|up|fc_in)/kernel$", P(data, model)),  # [d_model, d_mlp]
        (r"mlp/(gate|up|fc_in)/bias$", P(model)),  # [d_mlp]
        (r"mlp/fc_out/kernel$", P(model, data)),  # [d_mlp, d_model]
    ]
    stacked = [(r"(^|/)blocks/" + r, P(None, *spec)) for r, spec in per_layer]
    return (
        stacked
        + per_layer
        + [
            (r"embed/(tok|pos)/embedding$", P(None, both)),  # [vocab | positions, d_model]
            (r"unembed/kernel$", P(both, None)),  # [d_model, vocab]
        ]
    )


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def param_path(key_path: Sequence[Any]) -> str:
    """``"a/b/c"`` from a ``jax.tree_util`` key path (an nnx ``Variable``'s ``value`` dropped).

    >>> import jax
    >>> [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path({"a": {"b": 1}})[0]]
    ['a/b']
    """
    names = [_key_name(k) for k in key_path]
    if len(names) > 1 and names[-1] in ("value", "raw_value"):
        names = names[:-1]
    return "/".join(names)


def _axis_names(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def _check_rules(rules: Any) -> list[tuple[str, re.Pattern[str], P]]:
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise TypeError(
            "rules: expected a sequence of (regex, PartitionSpec) pairs, got "
            f"{type(rules).__name__}"
        )
    out = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, tuple) and len(rule) == 2):
            raise TypeError(f"rules: rule {i} must be a (regex, PartitionSpec) pair, got {rule!r}")
        regex, spec = rule
        if not isinstance(regex, str):
            raise TypeError(f"rules: rule {i} regex must be a str, got {type(regex).__name__}")
        if not isinstance(spec, P):
            raise TypeError(
                f"rules: rule {i} ({regex!r}) needs a jax.sharding.PartitionSpec, got {spec!r}"
            )
        try:
            compiled = re.compile(regex)
        except re.error as e:
            raise ValueError(f"rules: rule {i} regex {regex!r} does not compile: {e}") from None
        out.append((regex, compiled, spec))
    return out


def _restrict(spec: P, names: Sequence[str]) -> P:
    """Drops mesh axis names not in ``names`` (for the default rules on other meshes)."""

    def keep(entry: Any) -> Any:
        kept = tuple(a for a in _axis_names(entry) if a in names)
        return None if not kept else kept[0] if len(kept) == 1 else kept

    return P(*(keep(e) for e in spec))


def _validate(spec: P, shape: tuple[int, ...], mesh: Mesh, path: str, why: str) -> None:
    if len(spec) > len(shape):
        raise ValueError(
            f"rules: {why} gives {spec} ({len(spec)} axes) for {path!r} of shape {shape}"
        )
    used: list[str] = []
    for entry in spec:
        for a in _axis_names(entry):
            if a not in mesh.shape:
                raise ValueError(
                    f"rules: {why} names mesh axis {a!r} for {path!r}; the mesh has "
                    f"{dict(mesh.shape)}"
                )
            if a in used:
                raise ValueError(f"rules: {why} uses mesh axis {a!r} twice for {path!r}: {spec}")
            used.append(a)
    for dim, entry in enumerate(spec):
        names = _axis_names(entry)
        size = math.prod(mesh.shape[a] for a in names)
        if names and shape[dim] % size:
            raise ValueError(
                f"params: {path!r} of shape {shape}: axis {dim} (size {shape[dim]}) is not "
                f"divisible by mesh axis {entry!r} of size {size} ({why} gives {spec}); "
                "pass rules for this path or a mesh whose axis divides it"
            )


def _auto_spec(shape: tuple[int, ...], mesh: Mesh, min_size: int) -> P:
    """FSDP fallback: the largest axis divisible by all devices, else by the largest mesh axis."""
    if not shape or math.prod(shape) < min_size:
        return P()
    names = list(mesh.axis_names)
    groups: list[tuple[str, ...]] = [tuple(names)]
    groups += [(a,) for a in sorted(names, key=lambda a: -mesh.shape[a])]
    for group in groups:
        size = math.prod(mesh.shape[a] for a in group)
        dims = [d for d in range(len(shape)) if shape[d] % size == 0]
        if dims:
            dim = max(dims, key=lambda d: (shape[d], -d))
            entry = group[0] if len(group) == 1 else group
            return P(*([None] * dim), entry)
    return P()


def param_specs(
    params: Any,
    mesh: Mesh,
    rules: Rules | None = None,
    *,
    fallback: str = "fsdp",
    min_size: int = 1024,
    unmatched: str = "error",
) -> Any:
    """The ``PartitionSpec`` of every leaf of ``params`` (same tree), by path rules.

    Args:
      params: a pytree of arrays (or ``ShapeDtypeStruct``): linen variables, an nnx state.
      mesh: the device mesh (e.g. :func:`model_mesh`), or a ``jax.sharding.AbstractMesh`` to
        plan the placement for devices you do not have.
      rules: ``(regex, PartitionSpec)`` pairs, first match wins (``re.search`` on the path).
        ``None``: :func:`decoder_rules`, with mesh axes the mesh lacks dropped from them.
      fallback: for leaves no rule matches: ``"fsdp"``, ``"replicate"`` or ``"error"``.
      min_size: ``"fsdp"`` replicates leaves with fewer elements than this.
      unmatched: what a rule of yours that places no leaf does (it matches no path, or only
        paths an earlier rule took; a typo is the usual cause): ``"error"`` (default),
        ``"warn"`` or ``"ignore"`` (a rule set written for several models). The default
        rules are not checked.

    Returns:
      The tree of ``PartitionSpec`` (leaves of ``params`` replaced).

    Raises:
      TypeError: bad ``mesh``, ``rules`` or ``min_size``.
      ValueError: a rule's spec has more axes than the leaf, names an unknown mesh axis or
        one twice, or an axis that is not divisible by its mesh axes (the message names the
        path, shape and mesh axis); ``fallback="error"`` and a leaf no rule matches; an
        unknown ``fallback`` or ``unmatched``; with ``unmatched="error"``, a rule that
        places no leaf.

    >>> import jax.numpy as jnp
    >>> from jax.sharding import AbstractMesh
    >>> param_specs({"w": jnp.zeros((6, 4096))}, AbstractMesh((4, 2), ("data", "model")))["w"]
    P(None, ('data', 'model'))
    >>> specs = param_specs({"mlp": {"gate": {"kernel": jnp.zeros((64, 96))}}}, model_mesh())
    >>> specs["mlp"]["gate"]["kernel"]
    P('data', 'model')
    """
    if not isinstance(mesh, (Mesh, AbstractMesh)):
        raise TypeError(
            f"mesh: expected a jax.sharding.Mesh or AbstractMesh, got {type(mesh).__name__}"
        )
    if fallback not in ("fsdp", "replicate", "error"):
        raise ValueError(f"fallback: expected 'fsdp', 'replicate' or 'error', got {fallback!r}")
    if unmatched not in ("error", "warn", "ignore"):
        raise ValueError(f"unmatched: expected 'error', 'warn' or 'ignore', got {unmatched!r}")
    min_size = check_int(min_size, "min_size", lo=0)
    default = rules is None
    checked = _check_rules(decoder_rules() if default else rules)
    if default:
        checked = [(r, c, _restrict(s, mesh.axis_names)) for r, c, s in checked]

    used: set[int] = set()
    paths: list[str] = []

    def spec_of(key_path: Any, leaf: Any) -> P:
        path = param_path(key_path)
        paths.append(path)
        shape = tuple(np.shape(leaf))
        for i, (regex, compiled, spec) in enumerate(checked):
            if compiled.search(path):
                why = f"default rule {regex!r}" if default else f"rule {i} ({regex!r})"
                _validate(spec, shape, mesh, path, why)
                used.add(i)
                return spec
        if fallback == "error":
            raise ValueError(
                f"rules: no rule matches {path!r} (shape {shape}) and fallback='error'"
            )
        return P() if fallback == "replicate" else _auto_spec(shape, mesh, min_size)

    out = jax.tree_util.tree_map_with_path(spec_of, params)
    idle = [i for i in range(len(checked)) if i not in used]
    if idle and not default and unmatched != "ignore":
        shadowed = lambda i: any(checked[i][1].search(p) for p in paths)  # noqa: E731
        said = "; ".join(
            f"rule {i} ({checked[i][0]!r}) "
            + ("only matches paths an earlier rule took" if shadowed(i) else "matches no path")
            for i in idle
        )
        msg = (
            f"rules: {said}, so it places nothing (a typo?). The paths look like "
            f"{paths[:3]}; pass unmatched='ignore' for a rule set written for several models"
        )
        if unmatched == "error":
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    return out


def shard_params(
    params: Any,
    mesh: Mesh,
    rules: Rules | None = None,
    *,
    fallback: str = "fsdp",
    min_size: int = 1024,
    unmatched: str = "error",
) -> Any:
    """Places ``params`` on ``mesh`` by path rules (see :func:`param_specs`).

    Works on any pytree of arrays: linen ``{"params": ...}`` variables, an nnx ``State``
    (``nnx.state(model)``; put it back with ``nnx.update``). Outside ``jit`` the leaves are
    moved (``jax.device_put``); under ``jit`` (traced leaves) a sharding constraint is applied.
    Pass the result to the analysis as an argument of ``jit`` — e.g.
    ``jax.jit(lambda v, x: capture(model, v)(x))(sharded, x)`` — not closed over: a closed-over
    array becomes a constant of the compiled program, replicated on every device.

    Args:
      params, mesh, rules, fallback, min_size, unmatched: as in :func:`param_specs`.

    Returns:
      ``params`` with every leaf a ``jax.Array`` sharded by ``NamedSharding(mesh, spec)``.

    Raises:
      As :func:`param_specs`.

    >>> import jax.numpy as jnp
    >>> p = shard_params({"w": jnp.ones((4096, 8))}, model_mesh())
    >>> p["w"].sharding.spec  # fallback: the largest axis over all devices
    P(('data', 'model'),)
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    specs = param_specs(
        params, mesh, rules, fallback=fallback, min_size=min_size, unmatched=unmatched
    )
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))
    leaves, tree = jax.tree.flatten(params)

    def place(x: Any, spec: P) -> Any:
        sharding = NamedSharding(mesh, spec)
        if is_traced(x):
            return jax.lax.with_sharding_constraint(x, sharding)
        return jax.device_put(x, sharding)

    return jax.tree.unflatten(tree, [place(x, s) for x, s in zip(leaves, spec_leaves)])


def device_bytes(tree: Any) -> dict[jax.Device, int]:
    """Bytes each device holds of the arrays in ``tree`` (from their addressable shards).

    >>> import jax.numpy as jnp
    >>> sum(device_bytes({"w": jnp.ones((4, 8), jnp.float32)}).values())
    128
    """
    out: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out
