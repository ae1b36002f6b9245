"""The pure-Python BPE tokenizer against the ``tokenizers`` package on the same tokenizer.json.

The four fixtures (tests/fixtures/tokenizers/, made by scripts/make_decoder_fixtures.py with
tokenizers 0.22) cover GPT-2 byte-level BPE (ByteLevel pre-tokenizer with its regex), Llama 3
(Split with the \\p{L}/\\p{N} regex + ByteLevel, ignore_merges, a BOS template), Llama 2
(Prepend + Replace normalizers, byte fallback, fused unk, Strip decoder) and Gemma (Replace
only). Token ids and decoded text must be identical (no tolerance: both are exact).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from jaxinterp.models import BPETokenizer, tokenize

FIX = Path(__file__).parent / "fixtures" / "tokenizers"
NAMES = ["gpt2", "llama3", "llama2", "gemma"]

FIXED = [
    "The quick brown fox",
    "",
    " ",
    "   leading and trailing   ",
    "a\t\tb\n\n\nc \n d\r\n",
    "digits 1234567 3.14159 1,000 00042",
    "Café naïve Zürich Ελληνικά русский 日本語のテキスト 中文 한국어",
    "emoji 🙂👍🏽 and ZWJ 👩‍💻",
    "combining e\u0301 vs é",
    "don't I'LL we've THEY'RE 'S",
    "code: def f(x):\n    return x**2  # ok",
    "<s>hello</s> <|endoftext|> <bos>x <|begin_of_text|>",
    "\u00a0nbsp\u3000ideographic space ▁ literal",
    "x" * 300,
    "tab\tand\x0bvt\x1cfs",
    "ﬁ ligature ²³ ½ Ⅻ",
]


def _random_texts(n: int) -> list[str]:
    rng = random.Random(0)
    pools = [(0x20, 0x2FF), (0x300, 0x36F), (0x2000, 0x206F), (0x4E00, 0x4E50), (0x1F300, 0x1F6FF)]
    out = []
    for _ in range(n):
        s = []
        for _ in range(rng.randint(1, 30)):
            if rng.random() < 0.5:
                s.append(
                    rng.choice(["a", "b", "XY", "'s", "'LL", " ", "  ", "\n", "\t", "12", "345"])
                )
            else:
                s.append(chr(rng.randint(*rng.choice(pools))))
        out.append("".join(s))
    return out


@pytest.fixture(scope="module", params=NAMES)
def pair(request):
    path = FIX / f"{request.param}.json"
    return request.param, BPETokenizer.from_file(path), Tokenizer.from_file(str(path))


def test_encode_decode_equal_tokenizers(pair):
    name, ours, ref = pair
    for text in FIXED + _random_texts(150):
        ids = ref.encode(text).ids
        assert ours.encode(text) == ids, text
        assert (
            ours.encode(text, add_special_tokens=False)
            == ref.encode(text, add_special_tokens=False).ids
        )
        assert ours.decode(ids) == ref.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(
            ids, skip_special_tokens=False
        )
        if name in ("gpt2", "llama3"):  # byte-level BPE is lossless
            special = {"<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>"}
            if not any(s in text for s in special):
                assert ours.decode(ids) == text


def test_byte_fallback_and_merges_are_exercised():
    """The fixtures are not trivial: pieces merge, unseen characters fall back to bytes."""
    tok = BPETokenizer.from_file(FIX / "llama2.json")
    enc = tok.encode_batch(["the end 日"])[0]
    assert enc.tokens[0] == "<s>" and "<0xE6>" in enc.tokens  # 日 = E6 97 A5
    assert any(len(t) > 2 for t in enc.tokens[1:])  # a merged piece
    assert tok.decode(enc.ids) == "the end 日"


def test_tokenize_accepts_the_pure_python_tokenizer():
    ours = BPETokenizer.from_file(FIX / "llama3.json")
    ref = Tokenizer.from_file(str(FIX / "llama3.json"))
    ref.no_padding()
    texts = ["Hello world", "a much longer sentence with more tokens 12345"]
    a, b = tokenize(ours, texts), tokenize(ref, texts)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.attention_mask, b.attention_mask)
    assert a.tokens == b.tokens


def _variant(**changes) -> str:
    spec = json.loads((FIX / "gemma.json").read_text(encoding="utf-8"))
    spec.update(changes)
    return json.dumps(spec, ensure_ascii=False)


SPLIT = {"Regex": "[▁.,]"}
VARIANTS = {
    **{
        b: _variant(
            pre_tokenizer={"type": "Split", "pattern": SPLIT, "behavior": b, "invert": False}
        )
        for b in ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")
    },
    "metaspace": _variant(
        normalizer=None,
        pre_tokenizer={
            "type": "Metaspace",
            "replacement": "▁",
            "prepend_scheme": "first",
            "split": True,
        },
        decoder={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True},
    ),  # fmt: skip
    "nfkc digits": _variant(
        normalizer={
            "type": "Sequence",
            "normalizers": [
                {"type": "NFKC"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        },
        pre_tokenizer={"type": "Digits", "individual_digits": True},
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_other_components_equal_tokenizers(name):
    """Split behaviours, Metaspace (pre-tokenizer and decoder), NFKC and Digits."""
    ours, ref = BPETokenizer(json.loads(VARIANTS[name])), Tokenizer.from_str(VARIANTS[name])
    for text in FIXED + _random_texts(60) + ["a..b,,c . d", "x1234y 56"]:
        ids = ref.encode(text).ids
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids), text


def test_sequence_post_processor_as_llama3_ships_it():
    spec = json.loads((FIX / "llama3.json").read_text(encoding="utf-8"))
    template = spec["post_processor"]
    spec["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            template,
        ],
    }  # fmt: skip
    text = json.dumps(spec)
    ours, ref = BPETokenizer(json.loads(text)), Tokenizer.from_str(text)
    for t in FIXED:
        assert ours.encode(t) == ref.encode(t).ids
    assert ours.encode("hi")[0] == ours.vocab["<|begin_of_text|>"]


# Unicode digits beyond 0-9: Arabic-Indic, superscript, circled, full-width, Roman numeral,
# vulgar fraction, mathematical bold, Tibetan (categories Nd, No, Nl)
UNICODE_DIGITS = "٣٤²①１２Ⅻ¾𝟙༣"


def _digit_spec(pre_tokenizer, decoder=None, normalizer=None) -> str:
    """A small BPE whose merges join digits to each other and to letters, so any difference
    in where a pre-tokenizer cuts shows in the ids."""
    chars = ["a", "b", " ", "▁", *UNICODE_DIGITS, *"0123456789"]
    merges = [("٣", "٤"), ("a", "٣"), ("１", "２"), ("²", "①"), ("b", "²"), ("1", "2"),
              ("a", "1"), ("Ⅻ", "¾"), ("▁", "a"), ("▁", "▁")]  # fmt: skip
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return json.dumps(
        {
            "version": "1.0",
            "added_tokens": [],
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": None,
            "decoder": decoder,
            "model": {
                "type": "BPE",
                "vocab": vocab,
                "merges": [f"{a} {b}" for a, b in merges],
                "unk_token": "<unk>",
                "fuse_unk": False,
                "byte_fallback": False,
            },
        },  # fmt: skip
        ensure_ascii=False,
    )


def _digit_texts(n: int) -> list[str]:
    rng = random.Random(1)
    pool = UNICODE_DIGITS + "0123456789ab ▁ΣΟ"
    fixed = ["a٣٤b²①x１２", "Ⅻ¾ 12 a1 a٣", "𝟙𝟙 ༣༣ b²", "ΟΔΟΣ ΣΑΣ"]
    return fixed + ["".join(rng.choice(pool) for _ in range(rng.randint(1, 14))) for _ in range(n)]


DIGIT_SPECS = {
    "digits individual": {"type": "Digits", "individual_digits": True},
    "digits grouped": {"type": "Digits", "individual_digits": False},
    "split \\d": {"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "Isolated",
                  "invert": False},
    "split \\p{N}": {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"},
                     "behavior": "Isolated", "invert": False},
}  # fmt: skip


@pytest.mark.parametrize("name", list(DIGIT_SPECS))
def test_unicode_digits_equal_tokenizers(name):
    """Digits (Rust's char::is_numeric: Nd, Nl, No) and digit regexes on non-ASCII digits."""
    text = _digit_spec(DIGIT_SPECS[name])
    ours, ref = BPETokenizer(json.loads(text)), Tokenizer.from_str(text)
    merged = 0
    for t in _digit_texts(200):
        ids = ref.encode(t).ids
        assert ours.encode(t) == ids, t
        merged += any(i > len(UNICODE_DIGITS) + 14 for i in ids)
    assert merged  # merges happen, so a wrong cut would change the ids


DECODER_CHAINS = {
    "metaspace first": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"},
    "metaspace always": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"},
    "metaspace never": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never"},
    "replace+strip": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "none": None,
}  # fmt: skip


@pytest.mark.parametrize("name", list(DECODER_CHAINS))
def test_decoder_chains_equal_tokenizers(name):
    """Decoding random id sequences: Metaspace drops every replacement character of the first
    token (not only a leading one); without a decoder tokens are joined with spaces."""
    text = _digit_spec(None, decoder=DECODER_CHAINS[name])
    ours, ref = BPETokenizer(json.loads(text)), Tokenizer.from_str(text)
    rng = random.Random(2)
    n = ref.get_vocab_size()
    for _ in range(300):
        ids = [rng.randrange(n) for _ in range(rng.randint(1, 6))]
        assert ours.decode(ids) == ref.decode(ids), [ref.id_to_token(i) for i in ids]


def test_lowercase_per_character_equal_tokenizers():
    """tokenizers lowercases character by character: a final capital sigma becomes σ, not ς."""
    norm = {"type": "Lowercase"}
    text = _digit_spec(None, normalizer=norm)
    ours, ref = BPETokenizer(json.loads(text)), Tokenizer.from_str(text)
    for t in ["ΟΔΟΣ ΣΑΣ", "AΣ", "İx", *_digit_texts(50)]:
        assert ours.encode(t) == ref.encode(t).ids, t


def test_unknown_unicode_class_raises():
    spec = json.loads(_digit_spec({"type": "Split", "pattern": {"Regex": "\\p{Han}+"},
                                   "behavior": "Isolated", "invert": False}))  # fmt: skip
    with pytest.raises(ValueError, match=r"\\p\{Han\}"):
        BPETokenizer(spec).encode("x")


def test_tokenize_left_padding():
    tok = BPETokenizer.from_file(FIX / "llama3.json")
    texts = ["Hello world", "a much longer sentence with more tokens 12345"]
    right, left = tokenize(tok, texts), tokenize(tok, texts, padding_side="left")
    for r, lft, rm, lm in zip(right.input_ids, left.input_ids, right.attention_mask,
                              left.attention_mask):  # fmt: skip
        np.testing.assert_array_equal(r[rm == 1], lft[lm == 1])
        assert lm[-1] == 1 and rm.sum() == lm.sum()
    assert left.attention_mask[0, 0] == 0
    with pytest.raises(ValueError, match="^padding_side"):
        tokenize(tok, texts, padding_side="middle")
