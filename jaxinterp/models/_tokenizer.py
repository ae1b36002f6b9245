"""WordPiece tokenization of sentence batches through the ``tokenizers`` package.

``tokenizer.json`` files shipped with sentence-transformers models often pad and truncate every
input to a fixed length (128 for all-MiniLM-L6-v2). Here both are switched off on load; a batch
is padded to its own longest sentence and an ``attention_mask`` marks the real tokens, so a
short sentence costs a short forward pass and the padding is never silent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxinterp._checks import check_int


class Tokenized(NamedTuple):
    """A padded batch of tokenized sentences.

    Attributes:
      input_ids: ``[batch, seq] int32`` token ids, padded with ``pad_id``.
      attention_mask: ``[batch, seq] int32``, 1 for real tokens, 0 for padding.
      tokens: per sentence, the token strings of its real tokens (``[CLS]`` ... ``[SEP]``).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    tokens: list[list[str]]


def load_tokenizer(path: str | Path) -> Any:
    """Loads a ``tokenizer.json`` with padding and truncation disabled.

    Args:
      path: the ``tokenizer.json`` file.

    Returns:
      A ``tokenizers.Tokenizer``.

    Raises:
      ImportError: the ``tokenizers`` package is missing (``pip install 'jaxinterp[models]'``).
      TypeError: ``path`` is not a str or Path.
      FileNotFoundError: ``path`` is not a file.
      ValueError: the file is not a valid ``tokenizer.json``.

    >>> load_tokenizer("/no/such/tokenizer.json")
    Traceback (most recent call last):
    ...
    FileNotFoundError: path: expected a tokenizer.json file, /no/such/tokenizer.json does not exist
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path: expected a str or Path, got {type(path).__name__}")
    try:
        from tokenizers import Tokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_tokenizer needs the 'tokenizers' package: pip install 'jaxinterp[models]' "
            "(or pip install tokenizers)"
        ) from e
    if not Path(path).is_file():
        raise FileNotFoundError(f"path: expected a tokenizer.json file, {path} does not exist")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
        raise ValueError(f"path: {path} is not a valid tokenizer.json ({e})") from None
    tok.no_padding()
    tok.no_truncation()
    return tok


def tokenize(
    tokenizer: Any, sentences: Sequence[str], *, max_length: int | None = None, pad_id: int = 0
) -> Tokenized:
    """Tokenizes ``sentences`` and pads the batch to its longest sentence.

    Args:
      tokenizer: a ``tokenizers.Tokenizer`` (see :func:`load_tokenizer`).
      sentences: the batch, ``batch`` strings.
      max_length: if given, a sentence longer than this many tokens raises (nothing is cut
        silently).
      pad_id: the id used for padding.

    Returns:
      A :class:`Tokenized` batch.

    Raises:
      TypeError: ``tokenizer`` has no ``encode_batch``, ``sentences`` is a single string or
        holds non-strings, ``max_length``/``pad_id`` are not ints.
      ValueError: ``sentences`` is empty, a sentence is longer than ``max_length``,
        ``max_length < 1`` or ``pad_id < 0``.

    >>> tokenize(None, ["hi"])
    Traceback (most recent call last):
    ...
    TypeError: tokenizer: expected a tokenizers.Tokenizer (see load_tokenizer), got NoneType
    """
    if not hasattr(tokenizer, "encode_batch"):
        raise TypeError(
            "tokenizer: expected a tokenizers.Tokenizer (see load_tokenizer), got "
            f"{type(tokenizer).__name__}"
        )
    if max_length is not None:
        max_length = check_int(max_length, "max_length", lo=1)
    pad_id = check_int(pad_id, "pad_id", lo=0)
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError(f"sentences: expected a sequence of strings, got {sentences!r:.80}")
    if len(sentences) == 0:
        raise ValueError("sentences: expected at least one sentence, got none")
    encs = tokenizer.encode_batch(list(sentences))
    lengths = [len(e.ids) for e in encs]
    longest = max(lengths)
    if max_length is not None and longest > max_length:
        i = int(np.argmax(lengths))
        raise ValueError(
            f"sentences: sentence {i} has {longest} tokens, more than max_length={max_length}"
        )
    ids = np.full((len(encs), longest), pad_id, np.int32)
    mask = np.zeros((len(encs), longest), np.int32)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return Tokenized(ids, mask, [list(e.tokens) for e in encs])
