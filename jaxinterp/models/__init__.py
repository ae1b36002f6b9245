"""Reference models (MLP, CNN, transformer in linen and nnx), their data, and trained weights."""

from jaxinterp.models._bert import (
    Bert,
    BertConfig,
    MiniLM,
    embed_sentences,
    load_minilm,
    mean_pool,
    tokenize_sentences,
)
from jaxinterp.models._safetensors import read_safetensors
from jaxinterp.models._tasks import Digits, SeqBatch, Split, load_digits, offset_batch
from jaxinterp.models._tokenizer import BPETokenizer, Tokenized, load_tokenizer, tokenize
from jaxinterp.models._transformer import (
    NNXTransformer,
    Transformer,
    TransformerConfig,
    attention_mask,
    linen_to_nnx,
)
from jaxinterp.models._vision import CNN, MLP, init_vision
from jaxinterp.models._zoo import Trained, cache_dir, digits_cnn, digits_mlp, offset_transformer

__all__ = [
    "BPETokenizer",
    "Bert",
    "BertConfig",
    "MiniLM",
    "Tokenized",
    "embed_sentences",
    "load_minilm",
    "load_tokenizer",
    "mean_pool",
    "read_safetensors",
    "tokenize",
    "tokenize_sentences",
    "CNN",
    "MLP",
    "Digits",
    "NNXTransformer",
    "SeqBatch",
    "Split",
    "Trained",
    "Transformer",
    "TransformerConfig",
    "attention_mask",
    "cache_dir",
    "digits_cnn",
    "digits_mlp",
    "init_vision",
    "linen_to_nnx",
    "load_digits",
    "offset_batch",
    "offset_transformer",
]

from jaxinterp.models._decoder import (  # noqa: E402
    Decoder,
    DecoderConfig,
    LoadedDecoder,
    decoder_params_from_hf,
    generate,
    init_cache,
    last_token_index,
    load_decoder,
)

__all__ += [
    "Decoder",
    "DecoderConfig",
    "LoadedDecoder",
    "decoder_params_from_hf",
    "generate",
    "init_cache",
    "last_token_index",
    "load_decoder",
]

from jaxinterp.models._gguf import (  # noqa: E402
    GGUFTokenizer,
    Pretrained,
    load_gguf,
    load_gguf_tokenizer,
    smollm2,
    smollm2_path,
)

__all__ += [
    "GGUFTokenizer",
    "Pretrained",
    "load_gguf",
    "load_gguf_tokenizer",
    "smollm2",
    "smollm2_path",
]

from jaxinterp.models._scan import stack_layers, stacked_site, unstack_layers  # noqa: E402

__all__ += ["stack_layers", "stacked_site", "unstack_layers"]
