"""Input gradients of convolutions (and tiled window sums) that XLA:CPU runs fast, for the
ascent's loss.

``maximize`` differentiates the model with respect to its *input* at every step. For a
convolution JAX writes that gradient as a second convolution whose kernel is the forward one
with its input and output feature axes swapped *by dimension numbers only* (``01oi``). XLA:CPU
runs convolutions through its fast library kernels only when the kernel's feature axes are in
the canonical order (``01io``); any other order falls back to a generic loop nest, measured 4-7×
slower than the forward convolution on the digits CNN and on 64-128-channel convnets. That one
op made the backward pass 10× the forward.

:func:`fast_input_grads` takes the loss function, traces it once to a jaxpr, and evaluates that
jaxpr with every plain 2-D convolution replaced by the same convolution with a custom VJP:

* few input features (``kh * kw * in_features <= 256``, e.g. a first layer or the digits CNN):
  the convolution is an im2col matrix product (the patches of the padded input, concatenated,
  times the reshaped kernel), so forward and backward are matrix products;
* otherwise: the forward is XLA's convolution as before, and the input gradient is JAX's own
  transpose rule applied to a kernel whose feature axes are *physically* swapped (behind an
  ``optimization_barrier``, so XLA cannot fold the swap back into the dimension numbers): the
  gradient convolution then sees a canonical ``01io`` kernel;
* strided (with non-negative padding): JAX's input gradient is a convolution of the
  cotangent dilated by the stride, which XLA:CPU runs as a generic loop nest (a 3x3
  stride-2 64-channel layer at 32x32: 2x its forward time). :func:`_phase_input_grad` writes
  it as one stride-1 convolution per output phase (``stride**2`` of them, each with the taps
  that land on that phase), interleaved: the same FLOPs on XLA's fast path (that layer's
  gradient 0.096 -> 0.035 s per step at 128 images; the bigger convnet of
  ``benchmarks/bench_lucent.py``, two of whose four layers are strided, 0.29 -> 0.245 s).

One more rewrite saves work rather than choosing a faster kernel: when the loss reads one
feature of ``relu(conv(x, k) + bias)`` (a ``dynamic_slice`` of size 1 on the feature axis,
which is what a ``channel`` objective does) and nothing else that still runs reads that
activation or the values between (the model's own output, unused by the loss, is dead code),
only that feature is computed (:func:`_one_feature`): the input times the kernel's taps for
that feature, one matrix product with ``kh * kw`` columns (a different feature per target under
``vmap`` is a batched product, not a grouped convolution), then a sum of shifted windows of the
product, its bias entry, its ReLU. On the bigger convnet of ``benchmarks/bench_lucent.py`` the
last layer's 128-channel forward and gradient were a fifth of the step (step 0.225 -> 0.196 s
computing the feature from a patch matrix; building that matrix was 9 ms of it, gone with the
tap product: 0.199 -> 0.184 s). Activations with fewer than 16 features are left alone. (A sum
over taps of windows times the column, elementwise, was slower: XLA made it a batched dot per
tap, 0.227 s.) The same holds for ``relu?(dense(x) + bias?)``: one column of the weights (a
neuron objective on the digits CNN's hidden layer; within noise on the README job's time).

A window sum over non-overlapping tiles (average pooling with window == stride, as in the
digits CNN) is a crop, a reshape and a sum (:func:`_tile_sum`), so its gradient is a broadcast
and a pad: JAX's is a window sum over the stride-dilated cotangent, a generic loop nest on
XLA:CPU that was a tenth of the README job's step (second call 0.257 -> 0.212 s).

All compute the same function as the original (up to float32 summation order). The
kernel gradient is JAX's own rule. Nested ``jit`` calls are inlined; equations nothing reads
(and without effects) are skipped; every other primitive (including ``scan`` / ``cond``
bodies, custom derivatives such as the redirected ReLU) is bound unchanged, so convolutions
inside a scan keep JAX's default gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore
from jax.extend.core.primitives import (
    add_p,
    conv_general_dilated_p,
    custom_jvp_call_p,
    dot_general_p,
    dynamic_slice_p,
    jit_p,
    max_p,
    reduce_window_sum_p,
)

_IM2COL_MAX_PATCH = 256  # kh * kw * in_features up to which im2col is used
_MODE = "im2col"
_PRUNE_MIN_FEATURES = 16  # below this many features the full convolution is as cheap


def fast_input_grads(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its 2-D convolutions given fast XLA:CPU gradients (same values)."""

    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        flat = jax.tree.leaves(args)
        outs = _eval(closed.jaxpr, closed.consts, flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return wrapped


def _eval(jaxpr: Any, consts: Any, args: Any) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    live = _live(jaxpr)
    pruned, skip = _one_channel_reads(jaxpr, live)
    for n, eqn in enumerate(jaxpr.eqns):
        if not live[n] or n in skip:
            continue
        if n in pruned:
            env[eqn.outvars[0]] = _eval_one_channel(eqn, pruned[n], read)
            continue
        invals = [read(v) for v in eqn.invars]
        prim = eqn.primitive
        if prim is conv_general_dilated_p and _supported(eqn.params, invals):
            outs = [_conv(invals[0], invals[1], _Params(eqn.params))]
        elif prim is reduce_window_sum_p and _tiles(eqn.params):
            outs = [_tile_sum(invals[0], eqn.params["window_dimensions"])]
        elif prim is jit_p:
            sub = eqn.params["jaxpr"]
            outs = _eval(sub.jaxpr, sub.consts, invals)
        else:
            ans = prim.bind(*invals, **prim.get_bind_params(eqn.params))
            outs = ans if prim.multiple_results else [ans]
        for v, x in zip(eqn.outvars, outs):
            if not isinstance(v, jcore.DropVar):
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _tiles(q: dict) -> bool:
    """A window sum over non-overlapping tiles (window == stride, no padding or dilation)."""
    return (
        tuple(q["window_dimensions"]) == tuple(q["window_strides"])
        and all(lo == 0 and hi == 0 for lo, hi in q["padding"])
        and all(d == 1 for d in (*q["base_dilation"], *q["window_dilation"]))
    )


def _tile_sum(x, window):
    """``reduce_window_sum`` over tiles as a crop, a reshape and a sum: its gradient is then a
    broadcast and a pad (JAX's own is a window sum over the stride-dilated cotangent, a generic
    loop nest on XLA:CPU)."""
    n = [d // w for d, w in zip(x.shape, window)]
    x = x[tuple(slice(0, k * w) for k, w in zip(n, window))]
    x = x.reshape([v for k, w in zip(n, window) for v in (k, w)])
    return x.sum(tuple(range(1, 2 * len(n), 2)), dtype=x.dtype)  # int8 stays int8


def _live(jaxpr: Any) -> list[bool]:
    """Which equations an output or an effect depends on (the rest is skipped; XLA would drop
    it too, and a dead reader must not keep a pruned value in use)."""
    used = {v for v in jaxpr.outvars if isinstance(v, jcore.Var)}
    live = [False] * len(jaxpr.eqns)
    for n in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[n]
        outs = [v for v in eqn.outvars if not isinstance(v, jcore.DropVar)]
        if eqn.effects or any(v in used for v in outs):
            live[n] = True
            used.update(v for v in eqn.invars if isinstance(v, jcore.Var))
    return live


def _one_channel_reads(jaxpr: Any, live: list[bool]) -> tuple[dict[int, tuple], set[int]]:
    """Finds activations of which the loss reads one feature: ``dynamic_slice`` of size 1 on
    the feature axis of ``relu?(conv(x, k) + bias?)`` (or of a dense layer's ``dot_general``),
    every value on the way read by nothing else. Returns ``{slice equation index: (feature
    axis, conv or dot equation, chain)}`` and the indices of the equations that then need not
    run (the convolution or product and its chain)."""
    producer: dict[Any, int] = {}
    uses: dict[Any, int] = {}
    for n, eqn in enumerate(jaxpr.eqns):
        if not live[n]:
            continue
        for v in eqn.outvars:
            producer[v] = n
        for v in eqn.invars:
            if isinstance(v, jcore.Var):
                uses[v] = uses.get(v, 0) + 1
    for v in jaxpr.outvars:
        if isinstance(v, jcore.Var):
            uses[v] = uses.get(v, 0) + 1
    found: dict[int, tuple] = {}
    skip: set[int] = set()
    for n, eqn in enumerate(jaxpr.eqns):
        if not live[n] or eqn.primitive is not dynamic_slice_p:
            continue
        v = eqn.invars[0]
        if not isinstance(v, jcore.Var):
            continue
        shape, sizes = tuple(v.aval.shape), tuple(eqn.params["slice_sizes"])
        axes = [a for a, (d, z) in enumerate(zip(shape, sizes)) if d != z]
        if len(axes) != 1 or sizes[axes[0]] != 1 or shape[axes[0]] < _PRUNE_MIN_FEATURES:
            continue
        ax, chain, eqns = axes[0], [], []
        while uses.get(v) == 1 and v in producer:
            m = producer[v]
            e = jaxpr.eqns[m]
            if e.primitive is custom_jvp_call_p and _is_relu(e):
                chain.append(("relu", None, 0))
                eqns.append(m)
                v = e.invars[0]
                continue
            if e.primitive is add_p and len(e.invars) == 2:
                side = _bias_side(e, ax)
                if side is None:
                    break
                chain.append(("add", e.invars[1 - side], side))
                eqns.append(m)
                v = e.invars[side]
                continue
            if _conv_2d(e, ax) or _dense(e, ax):
                found[n] = (ax, e, chain[::-1])
                skip.update(eqns + [m])
            break
    return found, skip


def _conv_2d(e: Any, ax: int) -> bool:
    """A plain 2-D ``conv_general_dilated`` (no groups, no input dilation) whose output
    feature axis is ``ax``."""
    q = e.params
    return (
        e.primitive is conv_general_dilated_p
        and q["dimension_numbers"].out_spec[1] == ax
        and len(e.outvars[0].aval.shape) == 4
        and q["feature_group_count"] == 1
        and q["batch_group_count"] == 1
        and all(d == 1 for d in q["lhs_dilation"])
        and q["preferred_element_type"] is None
    )


def _dense(e: Any, ax: int) -> bool:
    """``dot_general(x, w)`` of a dense layer: ``w`` a matrix, ``x``'s last axis contracted with
    its first, no batch axes, the output's last axis (``ax``) ``w``'s columns."""
    if e.primitive is not dot_general_p:
        return False
    (lc, rc), (lb, rb) = e.params["dimension_numbers"]
    x, w = e.invars
    return (
        len(w.aval.shape) == 2
        and tuple(rc) == (0,)
        and tuple(lc) == (len(x.aval.shape) - 1,)
        and not lb
        and not rb
        and ax == len(x.aval.shape) - 1
        and e.params.get("preferred_element_type") in (None, e.outvars[0].aval.dtype)
    )


def _is_relu(e: Any) -> bool:
    """A custom-JVP call of ``max(x, 0)`` alone (``jax.nn.relu``, flax's ``nn.relu``)."""
    j = e.params["call_jaxpr"].jaxpr
    while len(j.eqns) == 1 and j.eqns[0].primitive is jit_p:
        j = j.eqns[0].params["jaxpr"].jaxpr
    if len(j.eqns) != 1 or len(j.invars) != 1 or j.eqns[0].primitive is not max_p:
        return False
    a, b = j.eqns[0].invars
    zero = lambda v: isinstance(v, jcore.Literal) and np.ndim(v.val) == 0 and v.val == 0  # noqa: E731
    return (a is j.invars[0] and zero(b)) or (b is j.invars[0] and zero(a))


def _bias_side(e: Any, ax: int) -> int | None:
    """Which operand of ``add`` carries the activation (the output's shape), the other one a
    bias broadcast along every axis but ``ax`` (or a scalar); None if neither."""
    out = tuple(e.outvars[0].aval.shape)
    for side in (0, 1):
        a, b = e.invars[side], e.invars[1 - side]
        if not isinstance(a, jcore.Var) or tuple(a.aval.shape) != out:
            continue
        bshape = tuple(b.aval.shape)  # a Var or a Literal
        if bshape == () or (
            len(bshape) == len(out) and all(d == 1 for i, d in enumerate(bshape) if i != ax)
        ):
            return side
    return None


def _eval_one_channel(sl: Any, plan: tuple, read: Callable[[Any], Any]) -> Any:
    """The sliced activation computed for its one feature: the convolution with that output
    feature of the kernel (:func:`_one_feature`), then the bias's entry and the ReLU.
    ``dynamic_slice`` clamps the index; slicing the kernel and the bias with the same index
    clamps it the same way."""
    ax, prod, chain = plan
    q = prod.params
    c = read(sl.invars[1 + ax])  # the slice's start index on the feature axis
    lhs, rhs = read(prod.invars[0]), read(prod.invars[1])
    # c is the start index as the slice got it (negative ones already wrapped by JAX's
    # indexing): clamp it as dynamic_slice does, never wrap it a second time
    one = functools.partial(lax.dynamic_slice_in_dim, start_index=c, slice_size=1,
                            allow_negative_indices=False)  # fmt: skip
    if prod.primitive is dot_general_p:  # a dense layer: x times the weights' one column
        y = dot_general_p.bind(lhs, one(rhs, axis=1), **q)
    else:
        y = _one_feature(lhs, one(rhs, axis=q["dimension_numbers"].rhs_spec[0]), q)
    for kind, other, side in chain:
        if kind == "relu":
            y = jax.nn.relu(y)
        else:
            b = read(other)
            if jnp.ndim(b) and b.shape[ax] > 1:
                b = one(b, axis=ax)
            y = y + b if side == 0 else b + y
    return y


def _one_feature(lhs, rhs, q: dict):
    """A convolution with one output feature, as one product of the input with the kernel's
    taps, then a sum of shifted windows of that product.

    ``z[b, y, x, t] = sum_c x[b, y, x, c] k[t, c]`` is one matrix product with ``kh * kw``
    columns (under ``vmap``, a batched one): the input is read once and no patch matrix is
    built. Output position ``o`` is then ``sum_t zp[s o + d i_t, t]`` over the taps ``t = (i_t,
    j_t)``, with ``zp`` the product padded as the convolution pads its input (a zero input row
    gives a zero product row). Same values as the convolution up to summation order.
    """
    dn = q["dimension_numbers"]
    x = _to_nhwc(lhs, dn.lhs_spec)  # [b, h, w, in]
    k = _to_hwio(rhs, dn.rhs_spec)[..., 0]  # [kh, kw, in]
    kh, kw, ci = k.shape
    z = jnp.dot(x, k.reshape(kh * kw, ci).T, precision=q["precision"])  # [b, h, w, kh*kw]
    windows = _windows(z, kh, kw, q, per_tap=True)
    return _from_nhwc(sum(windows[1:], windows[0]), dn.out_spec)


def _supported(params: dict, invals: list) -> bool:
    lhs, rhs = invals
    return (
        len(params["window_strides"]) == 2
        and params["feature_group_count"] == 1
        and params["batch_group_count"] == 1
        and params["preferred_element_type"] is None
        and all(d == 1 for d in params["lhs_dilation"])
        and jnp.issubdtype(lhs.dtype, jnp.floating)
        and lhs.dtype == rhs.dtype
    )


class _Params:
    """The convolution's parameters as a hashable static argument."""

    def __init__(self, params: dict):
        self.params = dict(params)
        self._key = tuple(sorted((k, repr(v)) for k, v in params.items()))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Params) and other._key == self._key


def _plain(lhs, rhs, p: _Params):
    return conv_general_dilated_p.bind(lhs, rhs, **p.params)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(lhs, rhs, p: _Params):
    return _forward(lhs, rhs, p)


def _forward(lhs, rhs, p: _Params):
    if _patch_size(rhs, p) <= _IM2COL_MAX_PATCH:
        return _im2col(lhs, rhs, p)
    return _plain(lhs, rhs, p)


def _conv_fwd(lhs, rhs, p):
    return _forward(lhs, rhs, p), (lhs, rhs)


def _conv_bwd(p, res, g):
    lhs, rhs = res
    if _patch_size(rhs, p) <= _IM2COL_MAX_PATCH and _MODE == "im2col":
        _, vjp = jax.vjp(lambda a, b: _im2col(a, b, p), lhs, rhs)
        return vjp(g)
    _, vjp_r = jax.vjp(lambda b: _plain(lhs, b, p), rhs)  # the kernel gradient: JAX's rule
    if any(st > 1 for st in p.params["window_strides"]) and all(
        lo >= 0 and hi >= 0 for lo, hi in p.params["padding"]
    ):
        return _phase_input_grad(g, rhs, lhs.shape, p), vjp_r(g)[0]
    dn = p.params["dimension_numbers"]
    o_ax, i_ax = dn.rhs_spec[0], dn.rhs_spec[1]
    # the same kernel, its feature axes physically swapped and described as swapped: JAX's
    # transpose rule swaps them back in the dimension numbers, leaving a canonical kernel
    swapped = lax.optimization_barrier(jnp.swapaxes(rhs, o_ax, i_ax))
    spec = list(dn.rhs_spec)
    spec[0], spec[1] = i_ax, o_ax
    q = dict(p.params, dimension_numbers=dn._replace(rhs_spec=tuple(spec)))
    _, vjp_l = jax.vjp(lambda a: conv_general_dilated_p.bind(a, swapped, **q), lhs)
    return vjp_l(g)[0], vjp_r(g)[0]


_conv.defvjp(_conv_fwd, _conv_bwd)


def _axis_phases(size: int, dilation: int, stride: int) -> list[list[tuple[int, int]]]:
    """Per output phase ``a`` of one spatial axis: the kernel taps ``(i, t)`` whose padded
    position ``i * dilation`` is ``a`` mod ``stride``, ``t`` its offset in stride units."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(stride)]
    for i in range(size):
        out[(i * dilation) % stride].append((i, (i * dilation) // stride))
    return out


def _phase_input_grad(g, rhs, lhs_shape, p: _Params):
    """The input gradient of a strided convolution as stride-1 convolutions, one per output
    phase, interleaved.

    JAX writes it as one convolution of ``g`` dilated by the stride (``lhs_dilation``), which
    XLA:CPU runs as a generic loop nest. With ``xp`` the padded input and ``y[o] = sum_i xp[s o
    + d i] k[i]``, the padded positions ``P = s q + a`` of phase ``a`` receive ``sum_t g[q - t]
    k[i_t]`` over the taps ``i_t`` with ``d i_t = s t + a``: a plain correlation of ``g`` with
    those taps reversed. All phases come out at ``ceil(padded / s)`` positions, interleave to
    the padded input and are cropped to it. Same values as JAX's rule up to summation order.
    """
    q = p.params
    dn = q["dimension_numbers"]
    gt = _to_nhwc(g, dn.out_spec)  # [b, oh, ow, out]
    k = jnp.swapaxes(_to_hwio(rhs, dn.rhs_spec), 2, 3)  # [kh, kw, out, in]
    b, oh, ow, co = gt.shape
    kh, kw, _, ci = k.shape
    h, w = lhs_shape[dn.lhs_spec[2]], lhs_shape[dn.lhs_spec[3]]
    (sy, sx), (dy, dx) = q["window_strides"], q["rhs_dilation"]
    (pt, pb), (pl, pr) = q["padding"]
    nq, nr = -(-(h + pt + pb) // sy), -(-(w + pl + pr) // sx)
    py, px = _axis_phases(kh, dy, sy), _axis_phases(kw, dx, sx)
    rows = []
    for a in range(sy):
        cols = []
        for c in range(sx):
            if not py[a] or not px[c]:
                cols.append(jnp.zeros((b, nq, nr, ci), gt.dtype))
                continue
            ty, tx = py[a][-1][1] + 1, px[c][-1][1] + 1
            sub = jnp.zeros((ty, tx, co, ci), k.dtype)
            for i, ti in py[a]:
                for j, tj in px[c]:
                    sub = sub.at[ty - 1 - ti, tx - 1 - tj].set(k[i, j])
            cols.append(
                lax.conv_general_dilated(
                    gt, sub, (1, 1), ((ty - 1, nq - oh), (tx - 1, nr - ow)),
                    dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=q["precision"],
                )
            )  # fmt: skip
        rows.append(jnp.stack(cols, 3))
    full = jnp.stack(rows, 2).reshape(b, nq * sy, nr * sx, ci)[:, pt : pt + h, pl : pl + w]
    return _from_nhwc(full, dn.lhs_spec)


def _patch_size(rhs, p: _Params) -> int:
    dn = p.params["dimension_numbers"]
    size = rhs.shape[dn.rhs_spec[1]]
    for ax in dn.rhs_spec[2:]:
        size *= rhs.shape[ax]
    return size


def _im2col(lhs, rhs, p: _Params):
    """The convolution as one matrix product of input patches with the reshaped kernel."""
    q = p.params
    dn = q["dimension_numbers"]
    x = _to_nhwc(lhs, dn.lhs_spec)  # [batch, h, w, in]
    k = _to_hwio(rhs, dn.rhs_spec)  # [kh, kw, in, out]
    kh, kw, ci, co = k.shape
    cols = _windows(x, kh, kw, q, per_tap=False)
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, -1)
    out = jnp.dot(patches, k.reshape(kh * kw * ci, co), precision=q["precision"])
    return _from_nhwc(out, dn.out_spec)


def _windows(x, kh: int, kw: int, q: dict, *, per_tap: bool) -> list:
    """The windows of ``x`` (``[b, h, w, f]``, padded as the convolution ``q`` pads) that tap
    ``(i, j)`` of a ``kh x kw`` kernel reads for every output position, in tap order: all
    features (``per_tap=False``), or only feature ``i * kw + j``."""
    (sy, sx), (dy, dx) = q["window_strides"], q["rhs_dilation"]
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*q["padding"][0], 0),
                                             (*q["padding"][1], 0), (0, 0, 0)))  # fmt: skip
    b, h, w, f = x.shape
    oh = (h - (kh - 1) * dy - 1) // sy + 1
    ow = (w - (kw - 1) * dx - 1) // sx + 1
    out = []
    for i in range(kh):
        for j in range(kw):
            f0, f1 = (i * kw + j, i * kw + j + 1) if per_tap else (0, f)
            end = (b, i * dy + (oh - 1) * sy + 1, j * dx + (ow - 1) * sx + 1, f1)
            out.append(lax.slice(x, (0, i * dy, j * dx, f0), end, (1, sy, sx, 1)))
    return out


def _to_nhwc(x, spec):
    """An array laid out as ``spec`` (batch, feature, spatial axes) as ``[b, h, w, feature]``."""
    return jnp.moveaxis(jnp.transpose(x, spec), 1, -1)


def _from_nhwc(x, spec):
    """The inverse of :func:`_to_nhwc`."""
    return jnp.transpose(jnp.moveaxis(x, -1, 1), _inverse(spec))


def _to_hwio(rhs, spec):
    """A kernel laid out as ``spec`` (out, in, spatial axes) as ``[kh, kw, in, out]``."""
    return jnp.transpose(rhs, (*spec[2:], spec[1], spec[0]))


def _inverse(perm):
    inv = [0] * len(perm)
    for i, a in enumerate(perm):
        inv[a] = i
    return tuple(inv)
