"""The component graph of a residual model, and one forward pass that rewires its edges.

A pre-norm residual transformer writes every component's output into one stream and every
component reads the sum of what came before. Seen as a graph (the view of ACDC, EAP and
EAP-IG), the nodes are

* **senders** (what writes to the stream): the input (the residual stream entering block 0:
  token + position embeddings), each attention head ``a{i}.h{h}`` (its term
  ``z[..., h, :] @ W_O[h]`` of the output projection; the projection's bias belongs to no
  node) and each MLP ``m{i}``;
* **receivers** (what reads the stream): each head's query input ``a{i}.h{h}.q``, each key /
  value head's key and value inputs ``a{i}.g{g}.k``, ``a{i}.g{g}.v`` (``g`` indexes the
  ``n_kv_heads`` key/value heads: the query heads in a group share them), each MLP's input
  ``m{i}`` and the final norm's input ``logits``;

and an edge ``u -> v`` joins every sender to every receiver that reads the stream after it:
a head of layer ``i`` feeds the MLP of layer ``i`` and everything in later layers, an MLP
feeds later layers, the input feeds everything, and everything feeds the logits.

**One forward pass with per-receiver inputs.** In the model each receiver reads the same
stream. :func:`rewired_forward` instead gives every receiver ``v`` its own input
``stream + patch[v]``: the attention norm is run once more on the ``[receiver, batch, seq,
d_model]`` stack of query/key/value inputs, each projection on its own heads' rows (the head's
slice is taken from the projection of its own input), the MLP norm and the final norm get
their own row added. With ``patch = 0`` this is the model's own forward pass; the gradient with
respect to ``patch`` at zero is ∂metric/∂(input of each receiver), which is all that EAP
needs; a ``patch`` whose row ``v`` is ``Δ_u`` (sender ``u``'s corrupted minus clean output) is
exact activation patching of the edge ``u -> v``. The same pass records every sender's output
(the heads' terms by running the output projection on one-head-at-a-time inputs).

Everything is written once against sites, given by a :class:`ResidualLayout` of path templates:
:func:`decoder_layout` for :class:`jaxinterp.models.Decoder` (GPT-2 and Llama families; Gemma's
norm after attention makes heads non-additive and is refused) and :func:`transformer_layout`
for the reference :class:`jaxinterp.models.Transformer`. Another model whose blocks are
``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, with separate query/key/value projections
returning ``[..., head, d_head]`` and an output projection whose input is the per-head result
``[batch, seq, head, d_head]``, needs only its own layout. Models that run their layers inside
``nn.scan`` are not supported (the paths are per layer).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.capture import record, run_with_hook


class ResidualLayout(NamedTuple):
    """Where a residual model's components are: path templates formatted with ``i`` (layer).

    Attributes:
      n_layers, n_heads, n_kv_heads: the model's sizes (``n_kv_heads`` divides ``n_heads``).
      block: the block; its input is the residual stream entering layer ``i``
        (``[batch, seq, d_model]``).
      attn_norm: the norm before attention; its input is the stream that attention reads.
      q, k, v: the query/key/value projections, outputs ``[batch, seq, heads, d_head]``
        (``n_heads`` for ``q``, ``n_kv_heads`` for ``k``, ``v``).
      out: the attention output projection; its input is the per-head result
        ``[batch, seq, n_heads, d_head]``.
      mlp_norm: the norm before the MLP; its input is the stream the MLP reads.
      mlp: the MLP; its output is added to the stream.
      final_norm: the final norm; its input is the stream the unembedding reads.

    >>> ResidualLayout(n_layers=2, n_heads=4, n_kv_heads=2).q.format(i=1)
    'blocks_1/attn/q'
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    block: str = "blocks_{i}"
    attn_norm: str = "blocks_{i}/ln_1"
    q: str = "blocks_{i}/attn/q"
    k: str = "blocks_{i}/attn/k"
    v: str = "blocks_{i}/attn/v"
    out: str = "blocks_{i}/attn/o"
    mlp_norm: str = "blocks_{i}/ln_2"
    mlp: str = "blocks_{i}/mlp"
    final_norm: str = "ln_f"


def _check_layout(layout: Any) -> ResidualLayout:
    if not isinstance(layout, ResidualLayout):
        raise TypeError(f"layout: expected a ResidualLayout, got {type(layout).__name__}")
    for name in ("n_layers", "n_heads", "n_kv_heads"):
        v = getattr(layout, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"layout: expected {name} a positive int, got {v!r}")
    if layout.n_heads % layout.n_kv_heads:
        raise ValueError(
            f"layout: n_kv_heads={layout.n_kv_heads} must divide n_heads={layout.n_heads}"
        )
    return layout


def decoder_layout(cfg: Any) -> ResidualLayout:
    """The layout of :class:`jaxinterp.models.Decoder` (``blocks_{i}/attn/{q,k,v,o}``, ...).

    Args:
      cfg: a :class:`jaxinterp.models.DecoderConfig` of the ``"gpt2"`` or ``"llama"`` family.

    Raises:
      TypeError: ``cfg`` is not a ``DecoderConfig``.
      ValueError: the ``"gemma"`` family (its norm after attention and MLP mixes the heads'
        terms, so the stream is not a sum of per-head outputs).

    >>> from jaxinterp.models import DecoderConfig
    >>> decoder_layout(DecoderConfig(n_layers=2, n_heads=4, n_kv_heads=2))[:3]
    (2, 4, 2)
    """
    from jaxinterp.models import DecoderConfig

    if not isinstance(cfg, DecoderConfig):
        raise TypeError(f"cfg: expected a DecoderConfig, got {type(cfg).__name__}")
    if cfg.family == "gemma":
        raise ValueError(
            "cfg: the gemma family normalises the attention output (post_ln_1) before adding "
            "it to the stream, so heads are not additive senders; expected gpt2 or llama"
        )
    return ResidualLayout(cfg.n_layers, cfg.n_heads, cfg.n_kv_heads)


def transformer_layout(cfg: Any) -> ResidualLayout:
    """The layout of the reference :class:`jaxinterp.models.Transformer` (``block_{i}/...``).

    Args:
      cfg: its :class:`jaxinterp.models.TransformerConfig`.

    Raises:
      TypeError: ``cfg`` is not a ``TransformerConfig``.

    >>> from jaxinterp.models import TransformerConfig
    >>> transformer_layout(TransformerConfig()).out
    'block_{i}/attn/out'
    """
    from jaxinterp.models import TransformerConfig

    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"cfg: expected a TransformerConfig, got {type(cfg).__name__}")
    return ResidualLayout(
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_heads,
        block="block_{i}",
        attn_norm="block_{i}/ln_1",
        q="block_{i}/attn/query",
        k="block_{i}/attn/key",
        v="block_{i}/attn/value",
        out="block_{i}/attn/out",
        mlp_norm="block_{i}/ln_2",
        mlp="block_{i}/mlp",
        final_norm="ln_f",
    )


class EdgeGraph(NamedTuple):
    """Senders, receivers and the edges between them (see the module docstring).

    Attributes:
      layout: the :class:`ResidualLayout`.
      senders: ``[sender]`` names: ``"input"``, then per layer ``"a{i}.h{h}"`` and ``"m{i}"``.
      receivers: ``[receiver]`` names: per layer ``"a{i}.h{h}.q"``, ``"a{i}.g{g}.k"``,
        ``"a{i}.g{g}.v"``, ``"m{i}"``, then ``"logits"``.
      sender: ``[edge]`` int, the sender of each edge (index into ``senders``).
      receiver: ``[edge]`` int, its receiver (index into ``receivers``).
    """

    layout: ResidualLayout
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    sender: np.ndarray
    receiver: np.ndarray

    @property
    def names(self) -> list[str]:
        """``[edge]`` names ``"sender->receiver"``."""
        return [
            f"{self.senders[u]}->{self.receivers[v]}"
            for u, v in zip(self.sender.tolist(), self.receiver.tolist())
        ]

    def index(self, name: str) -> int:
        """The edge index of ``"sender->receiver"``.

        Raises:
          KeyError: no such edge (the sender does not feed the receiver, or a bad name).
        """
        names = self.names
        if name not in names:
            raise KeyError(f"name: no edge {name!r} (e.g. {names[:3]})")
        return names.index(name)

    def matrix(self, scores: Any) -> np.ndarray:
        """``[edge]`` values as a ``[sender, receiver]`` table, NaN where there is no edge.

        Args:
          scores: ``[edge]`` (e.g. ``EdgeScores.scores``).

        Raises:
          ValueError: ``scores`` is not ``[edge]``.
        """
        scores = np.asarray(scores)
        if scores.shape != self.sender.shape:
            raise ValueError(f"scores: expected shape {self.sender.shape}, got {scores.shape}")
        out = np.full((len(self.senders), len(self.receivers)), np.nan, scores.dtype)
        out[self.sender, self.receiver] = scores
        return out

    def top(self, scores: Any, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` edges of largest ``|score|``, ``[(name, score)]``, largest first.

        Raises:
          ValueError: ``scores`` is not ``[edge]`` or ``k < 1``.
        """
        scores = np.asarray(scores)
        if scores.shape != self.sender.shape:
            raise ValueError(f"scores: expected shape {self.sender.shape}, got {scores.shape}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive int, got {k!r}")
        order = np.argsort(-np.abs(scores), kind="stable")[:k]
        names = self.names
        return [(names[e], float(scores[e])) for e in order]


def _slots(layout: ResidualLayout) -> int:
    """Receivers per layer: query heads, key heads, value heads, the MLP."""
    return layout.n_heads + 2 * layout.n_kv_heads + 1


def edge_graph(layout: ResidualLayout) -> EdgeGraph:
    """All edges of the component graph of a residual model (see the module docstring).

    Args:
      layout: a :class:`ResidualLayout` (:func:`decoder_layout`, :func:`transformer_layout`).

    Returns:
      An :class:`EdgeGraph`: ``1 + n_layers * (n_heads + 1)`` senders,
      ``n_layers * (n_heads + 2 * n_kv_heads + 1) + 1`` receivers.

    Raises:
      TypeError, ValueError: a bad layout.

    >>> g = edge_graph(ResidualLayout(n_layers=2, n_heads=2, n_kv_heads=1))
    >>> len(g.senders), len(g.receivers), len(g.names)
    (7, 11, 36)
    >>> g.names[0], g.names[-1]
    ('input->a0.h0.q', 'm1->logits')
    """
    lay = _check_layout(layout)
    n_l, n_h, n_g = lay.n_layers, lay.n_heads, lay.n_kv_heads
    senders, s_layer, s_mlp = ["input"], [-1], [False]
    for i in range(n_l):
        for h in range(n_h):
            senders.append(f"a{i}.h{h}")
            s_layer.append(i)
            s_mlp.append(False)
        senders.append(f"m{i}")
        s_layer.append(i)
        s_mlp.append(True)
    receivers, r_layer, r_mlp = [], [], []
    for i in range(n_l):
        names = [f"a{i}.h{h}.q" for h in range(n_h)]
        names += [f"a{i}.g{g}.k" for g in range(n_g)] + [f"a{i}.g{g}.v" for g in range(n_g)]
        receivers += names + [f"m{i}"]
        r_layer += [i] * (len(names) + 1)
        r_mlp += [False] * len(names) + [True]
    receivers.append("logits")
    r_layer.append(n_l)
    r_mlp.append(False)
    sl, sm = np.array(s_layer)[:, None], np.array(s_mlp)[:, None]
    rl, rm = np.array(r_layer)[None, :], np.array(r_mlp)[None, :]
    # an attention head feeds its own layer's MLP; everything else feeds later layers only
    feeds = (sl < rl) | ((sl == rl) & ~sm & rm)
    sender, receiver = np.nonzero(feeds)
    return EdgeGraph(
        lay, tuple(senders), tuple(receivers), sender.astype(np.int32), receiver.astype(np.int32)
    )


def _table(lay: ResidualLayout) -> dict[str, tuple[str, int]]:
    table = {}
    for i in range(lay.n_layers):
        for kind in ("block", "attn_norm", "q", "k", "v", "out", "mlp_norm", "mlp"):
            table[getattr(lay, kind).format(i=i)] = (kind, i)
    table[lay.final_norm] = ("final_norm", lay.n_layers)
    return table


def rewired_forward(
    model: Any,
    variables: Any,
    layout: ResidualLayout,
    inputs: Any,
    *,
    patch: jax.Array | None = None,
    corrupted: jax.Array | None = None,
    weights: jax.Array | None = None,
    stream0: jax.Array | None = None,
    senders: bool = False,
    kwargs: dict | None = None,
) -> tuple[Any, jax.Array | None]:
    """Runs the model with each receiver reading its own, rewired, input.

    Receiver ``v`` (in :class:`EdgeGraph` order) reads

        ``stream + patch[v] + Σ_u weights[u, v] (corrupted[u] - a_u)``

    where ``stream`` is what it reads in this run and ``a_u`` is sender ``u``'s output in this
    run. With ``weights`` one-hot at ``(u, v)`` this is exact patching of the edge ``u -> v``
    (sender ``u``'s corrupted output reaches ``v`` and nothing else); with all weights 1 it is
    the corrupted run. The gradient with respect to ``patch`` at zero is ∂output/∂(input of
    each receiver).

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``) whose
        paths ``layout`` describes.
      variables: its variables.
      layout: a :class:`ResidualLayout`.
      inputs: the model's first positional input (e.g. tokens ``[batch, seq]``).
      patch: ``[receiver, batch, seq, d_model]`` added to each receiver's input; ``None``
        adds nothing.
      corrupted: ``[sender, batch, seq, d_model]`` sender outputs of another run (the
        ``outs`` of a ``senders=True`` call), with ``weights``.
      weights: ``[sender, receiver]`` how much of each edge to patch (0 to 1), with
        ``corrupted``.
      stream0: ``[batch, seq, d_model]`` replacing the residual stream entering block 0 (the
        input node), e.g. an interpolation between clean and corrupted embeddings.
      senders: also return the sender outputs.
      kwargs: further keyword inputs of the model.

    Returns:
      ``(output, outs)``: the model's output (logits), and with ``senders=True`` the
      ``[sender, batch, seq, d_model]`` outputs in :class:`EdgeGraph` order (else ``None``).
      The stream entering the final norm equals ``outs.sum(0)`` plus the output projections'
      biases. Without ``patch`` and ``weights`` the output is the model's own.

    Raises:
      ValueError: an argument of the wrong shape; ``corrupted`` without ``weights`` or the
        reverse; a layout path the model never calls; a ``Decoder(cfg, scan_layers=True)``
        (its layers are one scan step: convert with
        :func:`jaxinterp.models.unstack_layers`).

    >>> import jaxinterp.models as zoo
    >>> cfg = zoo.DecoderConfig(n_layers=1, n_heads=2, n_kv_heads=1, d_model=8, d_head=4)
    >>> m = zoo.Decoder(cfg)
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
    >>> tokens = jnp.array([[1, 2, 3]])
    >>> out, outs = rewired_forward(m, v, decoder_layout(cfg), tokens, senders=True)
    >>> outs.shape, bool(jnp.allclose(out, m.apply(v, tokens)))
    ((4, 1, 3, 8), True)
    """
    from jaxinterp.models._scan import require_unrolled

    require_unrolled(model, "rewired_forward (and eap, edge_patching, patch_edges)")
    lay = _check_layout(layout)
    table = _table(lay)
    n_h, n_g, slots = lay.n_heads, lay.n_kv_heads, _slots(lay)
    n_recv, n_send = lay.n_layers * slots + 1, 1 + lay.n_layers * (n_h + 1)
    if (corrupted is None) != (weights is None):
        raise ValueError("weights: expected both corrupted and weights, or neither")
    if weights is not None and tuple(jnp.shape(weights)) != (n_send, n_recv):
        raise ValueError(
            f"weights: expected [sender, receiver] = {(n_send, n_recv)}, "
            f"got {tuple(jnp.shape(weights))}"
        )
    rewire = patch is not None or weights is not None
    keep = senders or weights is not None
    seen: set[str] = set()
    stash: dict[int, jax.Array] = {}
    cur: list[jax.Array] = []  # sender outputs of this run so far, [n, batch, seq, d_model]

    def check(name, x, want):
        if tuple(jnp.shape(x)) != tuple(want):
            raise ValueError(f"{name}: expected shape {tuple(want)}, got {tuple(jnp.shape(x))}")

    def extra(lo, hi, x):
        """What receivers ``lo:hi`` add to the stream ``x``: ``[hi - lo, batch, seq, d]``."""
        out = jnp.zeros((hi - lo, *x.shape), x.dtype)
        if patch is not None:
            check("patch", patch, (n_recv, *x.shape))
            out = out + patch[lo:hi].astype(x.dtype)
        if weights is not None:
            check("corrupted", corrupted, (n_send, *x.shape))
            now = jnp.concatenate(cur)
            diff = corrupted[: now.shape[0]].astype(x.dtype) - now
            w = jnp.asarray(weights)[: now.shape[0], lo:hi].astype(x.dtype)
            out = out + jnp.einsum("ur,ubsd->rbsd", w, diff)
        return out

    def around(path, module, call_next, args, kw):
        hit = table.get(path)
        if hit is None:
            return call_next(*args, **kw)
        kind, i = hit
        seen.add(path)
        x, rest = args[0], args[1:]
        if kind == "block":
            if i == 0:
                if stream0 is not None:
                    check("stream0", stream0, x.shape)
                    x = stream0.astype(x.dtype)
                if keep:
                    cur.append(x[None])
            return call_next(x, *rest, **kw)
        # A Flax module may run only once per call of its parent (a second call would
        # reserve its parameter names again), so each module below is called once, on a
        # stack of inputs along a new leading axis.
        if kind == "attn_norm":
            if not rewire:
                return call_next(x, *rest, **kw)
            rows = extra(i * slots, i * slots + slots - 1, x)
            ys = call_next(jnp.concatenate([x[None], x[None] + rows]), *rest, **kw)
            stash[i] = ys[1:]  # [q, k and v heads, batch, seq, d_model]
            return ys[0]
        if kind in ("q", "k", "v"):
            if not rewire:
                return call_next(x, *rest, **kw)
            lo, n = {"q": (0, n_h), "k": (n_h, n_g), "v": (n_h + n_g, n_g)}[kind]
            y = call_next(stash[i][lo : lo + n], *rest, **kw)  # [n, batch, seq, n, d_head]
            return jnp.moveaxis(jnp.diagonal(y, axis1=0, axis2=-2), -1, -2)
        if kind == "out":
            if not keep:
                return call_next(x, *rest, **kw)
            one = jnp.eye(n_h, dtype=x.dtype)[:, None, None, :, None]  # [head, ..., head, 1]
            stack = jnp.concatenate([x[None], jnp.zeros_like(x)[None], x[None] * one])
            ys = call_next(stack, *rest, **kw)  # output, bias, one head at a time
            cur.append(ys[2:] - ys[1][None])
            return ys[0]
        if kind == "mlp_norm":
            if rewire:
                x = x + extra(i * slots + slots - 1, i * slots + slots, x)[0]
            return call_next(x, *rest, **kw)
        if kind == "mlp":
            y = call_next(x, *rest, **kw)
            if keep:
                cur.append(y[None])
            return y
        # final norm
        if rewire:
            x = x + extra(n_recv - 1, n_recv, x)[0]
        if senders:
            record("senders", jnp.concatenate([c.astype(x.dtype) for c in cur]))
        return call_next(x, *rest, **kw)

    out, recs = run_with_hook(model, variables, around, inputs, **(kwargs or {}))
    missing = [p for p in table if p not in seen]
    if missing:
        raise ValueError(
            f"layout: the model never called {missing[:4]} (its paths differ from the layout)"
        )
    return out, (recs["senders"] if senders else None)
