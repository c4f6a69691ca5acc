"""Tasks beyond next-token prediction: text classifiers and word vectors.

Modules, each importing only those above it in the course:
- ``classify``: Fast text classifiers on labelled text shipped offline, measured like the language models: accuracy
  against ms.
- ``vectors``: Word vectors: skip-gram word2vec with negative sampling, by hand in torch; gensim's as the reference;
  GloVe's loss and a short GloVe fit.
"""

from lmlab.tasks.classify import (
    BOOK_GROUPS, CLASSIFIERS, DEFAULTS, MODELS, SPECIALS, TASKS, BiLSTMClassifier, ClassMetrics, CNNClassifier,
    LabelledTexts, NgramLinear, TextClassifier, TransformerClassifier, book_group, book_group_table,
    classification_metrics, classifier_table, classifier_tradeoff_plot, compare_classifiers, confusion_plot,
    kjv_by_book_group, kjv_by_testament, load_task, make_classifier, measure_classifier, names_by_sex,
    ngram_features, compare_macro_f1, onnx_steps, onnx_table, onnx_verdicts, text_tokens, token_list_precision,
    tradeoff_summary, train_classifier,
)
from lmlab.tasks.vectors import (
    Overlap, WordVectors, analogy_table, cooccurrence, gensim_word2vec, glove_loss, glove_weight, train_glove,
    keep_probability, loss_curve_plot, neighbour_overlap, neighbour_table, noise_table, pca_2d, pca_plot,
    skipgram_pairs, token_counts, train_sentences, train_word2vec,
)

__all__ = [
    "TASKS", "BOOK_GROUPS", "SPECIALS", "MODELS", "book_group", "LabelledTexts", "names_by_sex", "kjv_by_testament",
    "kjv_by_book_group", "book_group_table", "load_task", "ClassMetrics", "classification_metrics",
    "token_list_precision", "text_tokens", "ngram_features", "TextClassifier", "NgramLinear", "BiLSTMClassifier",
    "CNNClassifier", "TransformerClassifier", "CLASSIFIERS", "make_classifier", "DEFAULTS", "train_classifier",
    "compare_classifiers", "measure_classifier", "classifier_table", "tradeoff_summary", "confusion_plot",
    "classifier_tradeoff_plot", "onnx_steps", "onnx_table", "onnx_verdicts", "compare_macro_f1", "token_counts",
    "keep_probability", "skipgram_pairs",
    "Overlap", "WordVectors", "neighbour_overlap", "noise_table", "train_word2vec", "train_sentences",
    "gensim_word2vec", "neighbour_table", "analogy_table", "pca_2d", "loss_curve_plot", "pca_plot", "cooccurrence",
    "glove_weight", "glove_loss", "train_glove",
]
