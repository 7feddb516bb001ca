"""Offline data sets as NumPy arrays: image benchmarks, the file-format readers behind them, 2-D toy shapes,
text corpora with their tokenizers, and text-classification sets."""

from pilearn.data._formats import read_idx, read_numpy_pickle
from pilearn.data._images import (
    DATASET_NAMES,
    DatasetNotFoundError,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
)
from pilearn.data._text import (
    TEXT_DATASET_NAMES,
    TextCorpus,
    load_lambada,
    load_ptb,
    load_shakespeare,
    load_text,
    load_tinystories,
    load_wikitext,
)
from pilearn.data._textcls import (
    TextClassification,
    load_bbc_news,
    load_text_classification,
    load_tweets,
    stratified_split,
)
from pilearn.data._tokenizers import GPT2Tokenizer, Vocab
from pilearn.data._toy import TOY_2D_NAMES, make_toy_2d

__all__ = [
    "DATASET_NAMES",
    "DatasetNotFoundError",
    "GPT2Tokenizer",
    "TEXT_DATASET_NAMES",
    "TOY_2D_NAMES",
    "TextClassification",
    "TextCorpus",
    "Vocab",
    "load_bbc_news",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_lambada",
    "load_mnist",
    "load_ptb",
    "load_shakespeare",
    "load_text",
    "load_text_classification",
    "load_tinystories",
    "load_tweets",
    "load_wikitext",
    "make_toy_2d",
    "read_idx",
    "read_numpy_pickle",
    "stratified_split",
]
