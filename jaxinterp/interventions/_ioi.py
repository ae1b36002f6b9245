"""Indirect-object identification (IOI) prompts for a real tokenizer (Wang et al. 2022).

An IOI prompt names two people, repeats one of them (the subject, S) and ends where the other
(the indirect object, IO) is the natural next word::

    When Mary and John went to the store, John gave a drink to   ->  " Mary"

The task's metric is the logit difference ``logit(IO) - logit(S)`` at the last position. The
corrupted prompt keeps the template and replaces both names by two other names, so it carries
the same sentence structure but no information about which of the clean names is the answer
(its logit difference on the clean names is about 0): patching clean activations into it and
reading the clean logit difference finds where the model moves the answer.

Names are kept only when the tokenizer gives each one (with its leading space) as a single
token, so every prompt of a template has the same length and the positions of S1, IO, S2 and
the end are the same in the clean and corrupted prompts; prompts of different templates must
have equal lengths too (checked, never padded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_int, check_key
from jaxinterp.interventions._tasks import PatchTask

NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sarah", "Anna", "Paul", "Mark", "Lisa", "Emma",
    "Jack", "Kate", "Mike", "Ben", "Sam", "Alice", "Bob", "David", "Laura", "Peter", "Chris",
    "Amy", "Rachel",
)  # fmt: skip
"""Default first names (those a tokenizer splits are dropped)."""

TEMPLATES: tuple[str, ...] = (
    "When {IO} and {S} went to the store, {S} gave a drink to",
    "When {IO} and {S} went to the park, {S} gave a ball to",
    "After {IO} and {S} went to the office, {S} handed a book to",
    "While {IO} and {S} were at the house, {S} gave a gift to",
)
"""Default templates: ``{IO}`` and ``{S}`` are replaced by names (``{S}`` twice)."""


class IOITask(NamedTuple):
    """IOI prompts as a patching task, with the name positions.

    Attributes:
      task: :class:`~jaxinterp.interventions.PatchTask` (``clean``/``corrupted`` ``[batch,
        seq]``, ``answer`` = IO token, ``wrong`` = S token, ``position`` = last position, all
        ``[batch]``); ``task.metric`` is the mean logit difference IO − S.
      io_position, s1_position, s2_position: ``[batch]`` positions of the IO name, the first
        and the second S name.
      prompts: the clean prompts as text.
    """

    task: PatchTask
    io_position: jax.Array
    s1_position: jax.Array
    s2_position: jax.Array
    prompts: tuple[str, ...]


def _single_token(tokenizer: Any, word: str) -> int | None:
    ids = tokenizer.encode(word, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def ioi_task(
    key: jax.Array,
    tokenizer: Any,
    batch: int,
    *,
    names: Sequence[str] = NAMES,
    templates: Sequence[str] = TEMPLATES,
) -> IOITask:
    """Builds ``batch`` clean / corrupted IOI prompt pairs.

    Prompt ``i`` uses template ``i % len(templates)`` and two distinct random names (IO, S);
    its corrupted twin uses two other distinct names in the same template.

    Args:
      key: PRNG key (same key, same prompts).
      tokenizer: anything with ``encode(text, add_special_tokens=False) -> list[int]`` (e.g.
        ``jaxinterp.models.smollm2().tokenizer`` or a :class:`~jaxinterp.models.BPETokenizer`).
      batch: number of pairs (>= 1).
      names: candidate names; those that are not one token after a space are dropped (at
        least 4 must remain).
      templates: strings with ``{IO}`` once and ``{S}`` twice, IO before the first S.

    Returns:
      :class:`IOITask`.

    Raises:
      TypeError: ``key`` is not a PRNG key, ``batch`` not an int, ``tokenizer`` has no
        ``encode``.
      ValueError: fewer than 4 single-token names, a template without ``{IO}`` once and
        ``{S}`` twice, or templates whose prompts differ in length (the message names them).

    A word-level tokenizer shows the layout (with SmolLM2's, ``smollm2().tokenizer``, the
    positions are the same: every name and word of the default templates is one token):

    >>> vocab = {}
    >>> class Words:
    ...     def encode(self, text, add_special_tokens=False):
    ...         return [vocab.setdefault(w, len(vocab)) for w in text.replace(",", " ,").split()]
    >>> t = ioi_task(jax.random.key(0), Words(), 4)
    >>> t.task.clean.shape, [int(p[0]) for p in (t.io_position, t.s1_position, t.s2_position)]
    ((4, 14), [1, 3, 9])
    >>> bool((t.task.clean[:, 1] == t.task.answer).all())
    True
    """
    key = check_key(key, "key")
    batch = check_int(batch, "batch", lo=1)
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer: expected an object with encode(), got {type(tokenizer)}")
    if isinstance(templates, str) or not templates:
        raise ValueError(f"templates: expected a non-empty sequence of strings, got {templates!r}")
    for t in templates:
        if t.count("{IO}") != 1 or t.count("{S}") != 2 or t.index("{IO}") > t.index("{S}"):
            raise ValueError(f"templates: expected '{{IO}}' once before '{{S}}' twice, got {t!r}")
    ids = {n: _single_token(tokenizer, " " + n) for n in names}
    ok = [n for n in names if ids[n] is not None]
    if len(ok) < 4:
        raise ValueError(
            f"names: expected at least 4 names that are one token after a space, got {ok} "
            f"(of {list(names)})"
        )
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    rows, rows_x, pos = [], [], []
    io, s, prompts = [], [], []
    for i in range(batch):
        template = templates[i % len(templates)]
        a, b, c, d = rng.choice(len(ok), 4, replace=False)
        text = template.format(IO=ok[a], S=ok[b])
        clean = tokenizer.encode(text, add_special_tokens=False)
        corrupted = tokenizer.encode(template.format(IO=ok[c], S=ok[d]), add_special_tokens=False)
        slots = [j for j, t in enumerate(clean) if t in (ids[ok[a]], ids[ok[b]])]
        if len(clean) != len(corrupted) or len(slots) != 3:
            raise ValueError(f"templates: {template!r} does not keep the names as tokens")
        rows.append(clean)
        rows_x.append(corrupted)
        pos.append(slots)
        io.append(ids[ok[a]])
        s.append(ids[ok[b]])
        prompts.append(text)
    lengths = {len(r): templates[i % len(templates)] for i, r in enumerate(rows)}
    if len(lengths) > 1:
        raise ValueError(
            f"templates: prompts must have one token length, got {sorted(lengths)} "
            f"(e.g. {list(lengths.values())})"
        )
    seq = len(rows[0])
    p = jnp.asarray(pos, jnp.int32)
    task = PatchTask(
        jnp.asarray(rows, jnp.int32),
        jnp.asarray(rows_x, jnp.int32),
        jnp.asarray(io, jnp.int32),
        jnp.asarray(s, jnp.int32),
        jnp.full((batch,), seq - 1, jnp.int32),
    )
    return IOITask(task, p[:, 0], p[:, 1], p[:, 2], tuple(prompts))
