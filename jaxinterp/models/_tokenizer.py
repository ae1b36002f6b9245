"""Tokenization of sentence batches: through the ``tokenizers`` package (any
``tokenizer.json``, e.g. MiniLM's WordPiece), or :class:`BPETokenizer`, a pure-Python reader of
BPE ``tokenizer.json`` files (GPT-2, Llama 2/3, Qwen, Gemma) that needs no extra package.

``tokenizer.json`` files shipped with sentence-transformers models often pad and truncate every
input to a fixed length (128 for all-MiniLM-L6-v2). Here both are switched off on load; a batch
is padded to its own longest sentence and an ``attention_mask`` marks the real tokens, so a
short sentence costs a short forward pass and the padding is never silent.
"""

from __future__ import annotations

import functools
import heapq
import json
import re
import sys
import unicodedata
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
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    max_length: int | None = None,
    pad_id: int = 0,
    padding_side: str = "right",
) -> Tokenized:
    """Tokenizes ``sentences`` and pads the batch to its longest sentence.

    Args:
      tokenizer: a ``tokenizers.Tokenizer`` (see :func:`load_tokenizer`) or a
        :class:`BPETokenizer`.
      sentences: the batch, ``batch`` strings.
      max_length: if given, a sentence longer than this many tokens raises (nothing is cut
        silently).
      pad_id: the id used for padding.
      padding_side: ``"right"`` (default) or ``"left"`` (what batched generation of a decoder
        expects: every row ends at the last column; pass ``attention_mask`` to the model).

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
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side: expected 'right' or 'left', got {padding_side!r}")
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
        cols = (
            slice(0, len(e.ids)) if padding_side == "right" else slice(longest - len(e.ids), None)
        )
        ids[i, cols] = e.ids
        mask[i, cols] = 1
    return Tokenized(ids, mask, [list(e.tokens) for e in encs])


# ---------------------------------------------------------------- BPE from tokenizer.json
#
# A pure-Python (standard library) reader of Hugging Face ``tokenizer.json`` files with a BPE
# model: byte-level BPE (GPT-2, Llama 3, Qwen: ``ByteLevel`` / ``Split`` pre-tokenizers) and
# SentencePiece-style BPE (Llama 2, Gemma: ``Prepend`` / ``Replace`` normalizers, ``Metaspace``,
# byte fallback to ``<0xAB>`` tokens). It follows the ``tokenizers`` pipeline: added tokens are
# split off first, then normalizer, pre-tokenizer, BPE per word, the post-processor's template
# (e.g. BOS); decoding skips special tokens and runs the decoder chain. ``\p{..}`` and ``\s``
# in the pre-tokenizer regexes are translated to explicit Unicode classes for ``re``.

_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


_CATEGORIES = frozenset(
    "L Lu Ll Lt Lm Lo M Mn Mc Me N Nd Nl No P Pc Pd Ps Pe Pi Pf Po S Sm Sc Sk So Z Zs Zl Zp "
    "C Cc Cf Cs Co Cn".split()
)


@functools.cache
def _category_class(cat: str) -> str:
    """The contents of a ``re`` character class matching Unicode general category ``cat``
    (one letter: the whole group, e.g. ``L``; two letters: one category, e.g. ``Lu``).

    Raises ``ValueError`` for anything else (scripts such as ``Han``, long names such as
    ``Letter``): ``re`` has no such classes and an empty class would match nothing silently."""
    if cat not in _CATEGORIES:
        raise ValueError(
            f"path: \\p{{{cat}}} in a regex is not supported (only general categories such as "
            "L, N, Lu, Nd)"
        )
    ranges, start, prev = [], None, None
    for cp in range(sys.maxunicode + 1):
        hit = unicodedata.category(chr(cp)).startswith(cat)
        if hit and start is None:
            start = cp
        if not hit and start is not None:
            ranges.append((start, prev))
            start = None
        prev = cp
    if start is not None:
        ranges.append((start, prev))
    esc = lambda c: f"\\U{c:08x}"  # noqa: E731
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


def _translate_regex(pattern: str) -> str:
    """Oniguruma / Rust regex syntax used by tokenizer.json → Python ``re``."""
    out, i, depth = [], 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt in "pP" and i + 2 < len(pattern) and pattern[i + 2] == "{":
                end = pattern.index("}", i)
                cls = _category_class(pattern[i + 3 : end])
                if depth:
                    if nxt == "P":
                        raise ValueError(
                            f"path: \\P{{..}} inside [...] is not supported: {pattern}"
                        )
                    out.append(cls)
                else:
                    out.append(f"[{'^' if nxt == 'P' else ''}{cls}]")
                i = end + 1
                continue
            if nxt in "sS":
                if depth:
                    if nxt == "S":
                        raise ValueError(f"path: \\S inside [...] is not supported: {pattern}")
                    out.append(_WHITE_SPACE)
                else:
                    out.append(f"[{'^' if nxt == 'S' else ''}{_WHITE_SPACE}]")
                i += 2
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "[" and not depth:
            depth = 1
        elif ch == "]" and depth and out and out[-1] not in ("[", "[^"):
            depth = 0
        out.append(ch)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1)
def _byte_chars() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


class Encoding(NamedTuple):
    """One encoded text: ``ids`` and the token strings (as ``tokenizers.Encoding`` has)."""

    ids: list[int]
    tokens: list[str]


def _split_flags(text: str, regex: re.Pattern) -> list[tuple[str, bool]]:
    """``text`` cut into the regex's (non-empty) matches and the text between them."""
    pieces, last = [], 0
    for m in regex.finditer(text):
        if m.start() == m.end():
            continue
        if m.start() > last:
            pieces.append((text[last : m.start()], False))
        pieces.append((m.group(), True))
        last = m.end()
    if last < len(text):
        pieces.append((text[last:], False))
    return pieces


def _split_isolated(text: str, regex: re.Pattern) -> list[str]:
    return [p for p, _ in _split_flags(text, regex)]


def _split(text: str, regex: re.Pattern, behavior: str) -> list[str]:
    """``tokenizers``' ``Split`` pre-tokenizer behaviours on one piece of text."""
    flags = _split_flags(text, regex)
    if behavior == "Isolated":
        return [p for p, _ in flags]
    if behavior == "Removed":
        return [p for p, m in flags if not m]
    out: list[str] = []
    if behavior == "MergedWithNext":
        flags = flags[::-1]
    prev = False
    for p, m in flags:
        if behavior == "Contiguous":
            merge = bool(out) and m == prev
        else:
            merge = m and not prev and bool(out)
        if merge:
            out[-1] = p + out[-1] if behavior == "MergedWithNext" else out[-1] + p
        else:
            out.append(p)
        prev = m
    return out[::-1] if behavior == "MergedWithNext" else out


class BPETokenizer:
    """A BPE ``tokenizer.json`` (byte-level or SentencePiece-style) in pure Python.

    Matches the ``tokenizers`` package (``Tokenizer.encode(text).ids`` and
    ``Tokenizer.decode(ids)``) for the components listed in the module; others raise
    ``ValueError`` on load naming the component. ``encode_batch`` returns ``Encoding``
    objects, so :func:`tokenize` accepts this tokenizer as well.

    >>> import jaxinterp
    >>> root = Path(jaxinterp.__file__).resolve().parents[1]
    >>> tok = BPETokenizer.from_file(root / "tests/fixtures/tokenizers/gpt2.json")
    >>> ids = tok.encode("The quick brown fox")
    >>> tok.decode(ids)
    'The quick brown fox'
    """

    def __init__(self, spec: dict) -> None:
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise ValueError("path: expected a tokenizer.json object with a 'model'")
        m = spec["model"]
        if m.get("type", "BPE") != "BPE":
            raise ValueError(f"path: model type {m.get('type')!r} is not supported (only BPE)")
        for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
            if m.get(key):
                raise ValueError(f"path: BPE option {key}={m[key]!r} is not supported")
        self.vocab: dict[str, int] = dict(m["vocab"])
        self.id_to_token: dict[int, str] = {i: t for t, i in self.vocab.items()}
        self.unk = m.get("unk_token")
        self.fuse_unk = bool(m.get("fuse_unk"))
        self.byte_fallback = bool(m.get("byte_fallback"))
        self.ignore_merges = bool(m.get("ignore_merges"))
        self.merges: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, pair in enumerate(m.get("merges", [])):
            a, b = pair.split(" ", 1) if isinstance(pair, str) else pair
            if a in self.vocab and b in self.vocab and a + b in self.vocab:
                self.merges[(self.vocab[a], self.vocab[b])] = (rank, self.vocab[a + b])
        self.added = sorted(spec.get("added_tokens") or [], key=lambda t: -len(t["content"]))
        for t in self.added:
            if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
                raise ValueError(
                    f"path: added token {t['content']!r} uses lstrip/rstrip/single_word"
                )
            self.vocab.setdefault(t["content"], t["id"])
            self.id_to_token.setdefault(t["id"], t["content"])
        self.special_ids = {t["id"] for t in self.added if t.get("special")}
        self._added_re = {
            norm: re.compile("|".join(re.escape(t["content"]) for t in group))
            for norm in (False, True)
            if (group := [t for t in self.added if bool(t.get("normalized")) == norm])
        }
        self.normalizer = spec.get("normalizer")
        self.pre_tokenizer = spec.get("pre_tokenizer")
        self.post_processor = spec.get("post_processor")
        self.decoder = spec.get("decoder")
        for kind, comp in (
            ("normalizer", self.normalizer),
            ("pre_tokenizer", self.pre_tokenizer),
            ("decoder", self.decoder),
        ):
            self._check(kind, comp)
        self._regex_cache: dict[str, re.Pattern] = {}
        self._cache: dict[str, list[int]] = {}

    _SUPPORTED = {
        "normalizer": {"Sequence", "Prepend", "Replace", "NFC", "NFD", "NFKC", "NFKD", "Lowercase"},
        "pre_tokenizer": {"Sequence", "ByteLevel", "Split", "Metaspace", "Digits"},
        "decoder": {
            "Sequence",
            "ByteLevel",
            "Replace",
            "ByteFallback",
            "Fuse",
            "Strip",
            "Metaspace",
        },
    }

    def _check(self, kind: str, comp: dict | None) -> None:
        if comp is None:
            return
        if comp["type"] not in self._SUPPORTED[kind]:
            raise ValueError(f"path: {kind} {comp['type']!r} is not supported")
        for sub in (
            comp.get("normalizers") or comp.get("pretokenizers") or comp.get("decoders") or []
        ):
            self._check(kind, sub)

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        """Reads a ``tokenizer.json`` (see the class docstring for what is supported)."""
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path: expected a str or Path, got {type(path).__name__}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"path: expected a tokenizer.json file, {path} does not exist")
        try:
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"path: {path} is not a valid tokenizer.json ({e})") from None
        return cls(spec)

    # -- pipeline pieces
    def _regex(self, pattern: dict) -> re.Pattern:
        key = json.dumps(pattern, sort_keys=True)
        if key not in self._regex_cache:
            if "Regex" in pattern:
                self._regex_cache[key] = re.compile(_translate_regex(pattern["Regex"]))
            else:
                self._regex_cache[key] = re.compile(re.escape(pattern["String"]))
        return self._regex_cache[key]

    def _normalize(self, text: str, comp: dict | None) -> str:
        if comp is None:
            return text
        kind = comp["type"]
        if kind == "Sequence":
            for sub in comp["normalizers"]:
                text = self._normalize(text, sub)
            return text
        if kind == "Prepend":
            return comp["prepend"] + text if text else text
        if kind == "Replace":
            return self._regex(comp["pattern"]).sub(lambda _: comp["content"], text)
        if kind == "Lowercase":  # per character, as Rust's char::to_lowercase (no final sigma)
            return "".join(ch.lower() for ch in text)
        return unicodedata.normalize(kind, text)

    def _pre_tokenize(self, words: list[str], comp: dict | None, first: bool) -> list[str]:
        if comp is None:
            return words
        kind = comp["type"]
        if kind == "Sequence":
            for sub in comp["pretokenizers"]:
                words = self._pre_tokenize(words, sub, first)
            return words
        out: list[str] = []
        if kind == "ByteLevel":
            chars = _byte_chars()
            split = self._regex({"Regex": _GPT2_SPLIT})
            for w in words:
                if comp.get("add_prefix_space") and not w.startswith(" "):
                    w = " " + w
                pieces = _split_isolated(w, split) if comp.get("use_regex", True) else [w]
                out += ["".join(chars[b] for b in p.encode("utf-8")) for p in pieces]
            return out
        if kind == "Split":
            behavior = comp["behavior"]
            known = ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")
            if behavior not in known or comp.get("invert"):
                raise ValueError(f"path: Split behavior {behavior!r} (invert) is not supported")
            rx = self._regex(comp["pattern"])
            return [p for w in words for p in _split(w, rx, behavior)]
        if kind == "Digits":  # Rust's char::is_numeric: categories Nd, Nl and No
            rx = self._regex({"Regex": r"\p{N}" if comp.get("individual_digits") else r"\p{N}+"})
            return [p for w in words for p in _split_isolated(w, rx)]
        # Metaspace
        rep = comp.get("replacement", "▁")
        scheme = comp.get(
            "prepend_scheme", "always" if comp.get("add_prefix_space", True) else "never"
        )
        for w in words:
            w = w.replace(" ", rep)
            if (scheme == "always" or (scheme == "first" and first)) and not w.startswith(rep):
                w = rep + w
            if comp.get("split", True):
                out += [p for p in re.split(f"(?={re.escape(rep)})", w) if p]
            else:
                out.append(w)
        return out

    def _bpe(self, word: str) -> list[int]:
        if word in self._cache:
            return self._cache[word]
        if self.ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        ids: list[int] = []
        unk_id = self.vocab.get(self.unk) if self.unk is not None else None
        for ch in word:
            if ch in self.vocab:
                ids.append(self.vocab[ch])
                continue
            if self.byte_fallback:
                bs = [self.vocab.get(f"<0x{b:02X}>") for b in ch.encode("utf-8")]
                if all(b is not None for b in bs):
                    ids += bs
                    continue
            if unk_id is None:
                raise ValueError(f"text: character {ch!r} is not in the vocabulary (no unk_token)")
            if not (self.fuse_unk and ids and ids[-1] == unk_id):
                ids.append(unk_id)
        # merges by rank, leftmost first; a heap of candidate pairs over a linked list
        n = len(ids)
        nxt, prv, alive = list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n
        heap = []
        for i in range(n - 1):
            if (ids[i], ids[i + 1]) in self.merges:
                heap.append((self.merges[(ids[i], ids[i + 1])][0], i, ids[i], ids[i + 1]))
        heapq.heapify(heap)
        while heap:
            rank, i, a, b = heapq.heappop(heap)
            j = nxt[i] if i < n and alive[i] else n
            if j >= n or ids[i] != a or ids[j] != b:
                continue
            ids[i] = self.merges[(a, b)][1]
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            for left, right in ((prv[i], i), (i, nxt[i])):
                if left >= 0 and right < n and (ids[left], ids[right]) in self.merges:
                    r = self.merges[(ids[left], ids[right])][0]
                    heapq.heappush(heap, (r, left, ids[left], ids[right]))
        out = [ids[i] for i in range(n) if alive[i]]
        self._cache[word] = out
        return out

    def _post(self, ids: list[int], add_special_tokens: bool, pp: Any = False) -> list[int]:
        pp = self.post_processor if pp is False else pp
        if not add_special_tokens or pp is None or pp["type"] == "ByteLevel":
            return ids
        if pp["type"] == "Sequence":  # e.g. Llama 3: ByteLevel then TemplateProcessing
            for sub in pp["processors"]:
                ids = self._post(ids, add_special_tokens, sub)
            return ids
        if pp["type"] != "TemplateProcessing":
            raise ValueError(f"path: post_processor {pp['type']!r} is not supported")
        out: list[int] = []
        for piece in pp["single"]:
            if "Sequence" in piece:
                out += ids
            else:
                out += pp["special_tokens"][piece["SpecialToken"]["id"]]["ids"]
        return out

    # -- public API
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids ``[n]`` of ``text`` (with the template's special tokens, e.g. BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        pieces: list[tuple[str, bool]] = [(text, False)]  # (piece, is an added token)
        for norm in (False, True):
            rx = self._added_re.get(norm)
            new = []
            for p, is_tok in pieces:
                if not is_tok and norm:  # normalized added tokens match normalized text
                    p = self._normalize(p, self.normalizer)
                if is_tok or rx is None:
                    new.append((p, is_tok))
                    continue
                new += _split_flags(p, rx)
            pieces = new
        ids: list[int] = []
        for k, (p, is_tok) in enumerate(pieces):
            if is_tok:
                ids.append(self.vocab[p])
                continue
            for w in self._pre_tokenize([p], self.pre_tokenizer, first=k == 0):
                ids += self._bpe(w)
        return self._post(ids, add_special_tokens)

    def encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
        """:meth:`encode` of each text, as ``Encoding`` tuples (ids and token strings)."""
        out = []
        for t in texts:
            ids = self.encode(t)
            out.append(Encoding(ids, [self.id_to_token[i] for i in ids]))
        return out

    def _decode(self, tokens: list[str], comp: dict | None) -> list[str]:
        if comp is None:
            return tokens
        kind = comp["type"]
        if kind == "Sequence":
            for sub in comp["decoders"]:
                tokens = self._decode(tokens, sub)
            return tokens
        if kind == "ByteLevel":
            inv = {c: b for b, c in _byte_chars().items()}
            raw = bytearray()
            for t in tokens:
                if all(c in inv for c in t):
                    raw += bytes(inv[c] for c in t)
                else:
                    raw += t.encode("utf-8")
            return [raw.decode("utf-8", errors="replace")]
        if kind == "Replace":
            rx = self._regex(comp["pattern"])
            return [rx.sub(lambda _: comp["content"], t) for t in tokens]
        if kind == "Fuse":
            return ["".join(tokens)]
        if kind == "Strip":
            out = []
            for t in tokens:
                s, e = 0, len(t)
                for _ in range(comp["start"]):
                    if s < e and t[s] == comp["content"]:
                        s += 1
                for _ in range(comp["stop"]):
                    if e > s and t[e - 1] == comp["content"]:
                        e -= 1
                out.append(t[s:e])
            return out
        if kind == "ByteFallback":
            out, pending = [], bytearray()
            n_pending = 0

            def flush():
                nonlocal pending, n_pending
                if n_pending:
                    try:
                        out.append(pending.decode("utf-8"))
                    except UnicodeDecodeError:
                        out.extend(["\ufffd"] * n_pending)
                pending, n_pending = bytearray(), 0

            for t in tokens:
                if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                    try:
                        pending.append(int(t[3:5], 16))
                        n_pending += 1
                        continue
                    except ValueError:
                        pass
                flush()
                out.append(t)
            flush()
            return out
        # Metaspace
        rep = comp.get("replacement", "▁")
        scheme = comp.get(
            "prepend_scheme", "always" if comp.get("add_prefix_space", True) else "never"
        )
        # as tokenizers: in the first token every replacement character is dropped (not only a
        # leading one) unless prepend_scheme is "never"; elsewhere each becomes a space
        return [
            t.replace(rep, "" if k == 0 and scheme != "never" else " ")
            for k, t in enumerate(tokens)
        ]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids`` (special tokens skipped by default, as ``tokenizers`` does)."""
        ids = [int(i) for i in np.asarray(ids).ravel()]
        bad = [i for i in ids if i not in self.id_to_token]
        if bad:
            raise ValueError(f"ids: expected ids in the vocabulary, got {bad[0]}")
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        tokens = [self.id_to_token[i] for i in ids]
        if self.decoder is None:  # tokenizers joins undecoded tokens with spaces
            return " ".join(tokens)
        return "".join(self._decode(tokens, self.decoder))
