"""Any analysis vmapped over a stack of checkpoints of one architecture, in one compiled call.

Checkpoints of one architecture share their parameter tree; :func:`stack_checkpoints` stacks
them leaf by leaf on a new leading ``checkpoint`` axis, and :func:`over_checkpoints` runs an
analysis ``fn(variables, *args)`` -- a capture, attention scores, a patch sweep, a probe fit, a
lens -- on every checkpoint as ``jit(vmap(fn))``: one program, compiled once, instead of a
Python loop that dispatches (and, for a closure over each checkpoint, compiles) once per
checkpoint. ``chunk_size`` bounds memory by running ``chunk_size`` checkpoints at a time
inside the same program (``lax.map`` with ``batch_size``).

Performance: on CPU, XLA runs matmuls whose weights carry the vmapped checkpoint axis several
times slower than the same matmuls one checkpoint at a time (measured here on an
attention-only transformer, 50 checkpoints: ``jit(vmap)`` 1.3 s, ``chunk_size=1`` 0.38 s, a
loop of jitted calls 0.35 s); ``chunk_size=1`` (a scan over checkpoints inside the one
program) is then the fast choice. Accelerators, where each checkpoint alone underfills the
device, are where the full ``vmap`` pays; benchmark both (``benchmarks/bench_checkpoints.py``).

The arguments after the variables (tokens, sites as arrays, keys) are shared by every
checkpoint; the results gain a leading ``[checkpoint]`` axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_int


def _path(p: tuple) -> str:
    return jax.tree_util.keystr(p) or "(root)"


def stack_checkpoints(checkpoints: Sequence[Any]) -> Any:
    """Stacks checkpoints of one architecture: every leaf gains a leading ``[checkpoint]`` axis.

    Args:
      checkpoints: a sequence of variable trees (``{"params": ...}``) with the same structure,
        leaf shapes and dtypes.

    Returns:
      One tree whose leaves are ``[n_checkpoints, *leaf.shape]``.

    Raises:
      TypeError: ``checkpoints`` is not a non-empty sequence.
      ValueError: a checkpoint whose tree structure, or a leaf's shape or dtype, differs from
        the first one's (the message names the checkpoint and the leaf's path).

    >>> s = stack_checkpoints([{"w": jnp.zeros(3)}, {"w": jnp.ones(3)}])
    >>> s["w"].shape
    (2, 3)
    """
    if isinstance(checkpoints, (dict, str)) or not isinstance(checkpoints, Sequence):
        raise TypeError(
            f"checkpoints: expected a sequence of variable trees, got {type(checkpoints).__name__}"
        )
    if not checkpoints:
        raise TypeError("checkpoints: expected at least one checkpoint, got an empty sequence")
    first, treedef = jax.tree_util.tree_flatten_with_path(checkpoints[0])
    for i, ck in enumerate(checkpoints[1:], 1):
        leaves, td = jax.tree_util.tree_flatten_with_path(ck)
        if td != treedef:
            raise ValueError(
                f"checkpoints: checkpoint {i} has another tree structure than checkpoint 0 "
                f"(another architecture?): {td} vs {treedef}"
            )
        for (p, a), (_, b) in zip(first, leaves):
            if np.shape(a) != np.shape(b) or jnp.result_type(a) != jnp.result_type(b):
                raise ValueError(
                    f"checkpoints: leaf {_path(p)} of checkpoint {i} is "
                    f"{jnp.result_type(b)}{list(np.shape(b))}, checkpoint 0 has "
                    f"{jnp.result_type(a)}{list(np.shape(a))}"
                )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *checkpoints)


def n_checkpoints(stacked_variables: Any) -> int:
    """The shared leading axis of a stack; raises ``ValueError`` naming a leaf that differs.

    >>> n_checkpoints({"a": jnp.zeros((4, 2)), "b": jnp.zeros(4)})
    4
    """
    leaves = jax.tree_util.tree_flatten_with_path(stacked_variables)[0]
    if not leaves:
        raise ValueError("stacked_variables: expected a tree of arrays, got no leaves")
    sizes = {}
    for p, x in leaves:
        if np.ndim(x) == 0:
            raise ValueError(
                f"stacked_variables: leaf {_path(p)} is a scalar; every leaf needs a leading "
                "[checkpoint] axis (see stack_checkpoints)"
            )
        sizes.setdefault(np.shape(x)[0], _path(p))
    if len(sizes) > 1:
        desc = ", ".join(f"{path} has {n}" for n, path in sizes.items())
        raise ValueError(
            f"stacked_variables: leaves must share one leading [checkpoint] axis, got {desc}"
        )
    return next(iter(sizes))


@partial(jax.jit, static_argnames=("fn", "chunk_size"))
def _run(fn, stacked, args, kwargs, chunk_size):
    one = lambda v: fn(v, *args, **kwargs)  # noqa: E731
    if chunk_size is None:
        return jax.vmap(one)(stacked)
    return jax.lax.map(one, stacked, batch_size=chunk_size)


def over_checkpoints(
    fn: Callable[..., Any],
    stacked_variables: Any,
    *args: Any,
    chunk_size: int | None = None,
    **kwargs: Any,
) -> Any:
    """``fn(variables, *args, **kwargs)`` on every checkpoint of a stack, in one compiled call.

    Args:
      fn: the analysis, ``fn(variables, *args, **kwargs) -> pytree of arrays``, written for
        ONE checkpoint (e.g. ``lambda v, t: logit_lens(model, v, t)[0]``). It is a static
        argument of the compiled program: pass the same function object (not a new lambda
        each call) to reuse the compilation.
      stacked_variables: variables whose leaves share a leading ``[checkpoint]`` axis (see
        :func:`stack_checkpoints`).
      args, kwargs: arrays (or pytrees of arrays) shared by every checkpoint, passed
        positionally and by keyword after ``stacked_variables``.
      chunk_size: run this many checkpoints at a time (memory), default all at once.

    Returns:
      ``fn``'s output with a leading ``[checkpoint]`` axis on every leaf.

    Raises:
      TypeError: ``fn`` not callable.
      ValueError: the stack's leaves do not share a leading axis (names the leaves), a bad
        ``chunk_size``.

    >>> import flax.linen as nn
    >>> model = nn.Dense(2)
    >>> cks = [model.init(jax.random.key(i), jnp.ones((1, 3))) for i in range(4)]
    >>> f = lambda v, x: model.apply(v, x)
    >>> out = over_checkpoints(f, stack_checkpoints(cks), jnp.ones((5, 3)))
    >>> out.shape, bool(jnp.allclose(out[2], f(cks[2], jnp.ones((5, 3))), atol=1e-6))
    ((4, 5, 2), True)
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a function of (variables, *args), got {type(fn).__name__}")
    n = n_checkpoints(stacked_variables)
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "chunk_size", lo=1, hi=n)
        if chunk_size == n:
            chunk_size = None
    return _run(fn, stacked_variables, args, kwargs, chunk_size)
