"""layerknn.datasets: spec parsing, built-in sets, file readers, subsampling, clear errors."""

from __future__ import annotations

import json

import pytest
from layerknn.datasets import RANDOM_ALPHABET, load_texts, parse_spec, stdlib_paragraphs


def test_random_strings_deterministic_and_well_formed():
    a = load_texts("builtin:random-strings?n=50&seed=3")
    assert len(a) == 50 and all(len(s) == 100 for s in a)
    assert set("".join(a)) <= set(RANDOM_ALPHABET)
    assert a == load_texts("builtin:random-strings?seed=3&n=50")
    assert a != load_texts("builtin:random-strings?n=50&seed=4")
    assert len(load_texts("builtin:random-strings")) == 1024
    assert [len(s) for s in load_texts("builtin:random-strings?n=2&length=7")] == [7, 7]


def test_stdlib_docs_are_prose_and_deterministic():
    paragraphs = stdlib_paragraphs()
    assert len(paragraphs) >= 2048
    assert len(set(paragraphs)) == len(paragraphs)
    for p in paragraphs:
        words = p.split()
        assert 10 <= len(words) <= 80
        assert ">>>" not in p and "  " not in p and "\n" not in p
    sample = load_texts("builtin:stdlib-docs?n=1024&seed=0")
    assert len(sample) == 1024 and len(set(sample)) == 1024
    assert sample == load_texts("builtin:stdlib-docs", n=1024, seed=0)
    assert sample != load_texts("builtin:stdlib-docs", n=1024, seed=1)
    order = {p: i for i, p in enumerate(paragraphs)}
    assert [order[p] for p in sample] == sorted(order[p] for p in sample)  # original order kept


def test_txt_jsonl_csv(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\nthird\n")
    assert load_texts(str(tmp_path / "p.txt")) == ["first", "second", "third"]
    sub = load_texts(f"{tmp_path / 'p.txt'}?n=2&seed=5")
    assert len(sub) == 2 and set(sub) <= {"first", "second", "third"}
    lines = [json.dumps({"text": f"t{i}", "other": i}) for i in range(5)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    assert load_texts(str(tmp_path / "d.jsonl")) == [f"t{i}" for i in range(5)]
    assert load_texts(f"{tmp_path / 'd.jsonl'}?field=other") == [str(i) for i in range(5)]
    (tmp_path / "t.csv").write_text('id,prompt\n1,"hello, world"\n2,bye\n')
    assert load_texts(f"{tmp_path / 't.csv'}?column=prompt") == ["hello, world", "bye"]


def test_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="unknown builtin dataset 'nope'"):
        load_texts("builtin:nope")
    with pytest.raises(ValueError, match="not found"):
        load_texts(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match=r"\.txt, \.jsonl or \.csv"):
        load_texts("data.parquet")
    with pytest.raises(ValueError, match="unknown option 'field'"):
        parse_spec("builtin:stdlib-docs?field=x")
    with pytest.raises(ValueError, match="must be an integer"):
        parse_spec("builtin:random-strings?n=ten")
    with pytest.raises(ValueError, match=">= 1"):
        parse_spec("builtin:random-strings?n=0")
    with pytest.raises(ValueError, match="non-empty"):
        parse_spec("")
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match="no field 'text'"):
        load_texts(str(tmp_path / "d.jsonl"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_texts(str(tmp_path / "bad.jsonl"))
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no column 'text'"):
        load_texts(str(tmp_path / "t.csv"))
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="n=3 texts but only 2"):
        load_texts(str(tmp_path / "p.txt"), n=3)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no texts"):
        load_texts(str(tmp_path / "empty.txt"))


def test_spec_str_round_trip():
    spec = parse_spec("builtin:stdlib-docs?seed=2&n=10")
    assert str(spec) == "builtin:stdlib-docs?n=10&seed=2"
    assert parse_spec(str(spec)) == spec
    assert str(spec.with_options(n=5)) == "builtin:stdlib-docs?n=5&seed=2"


_NOT_UTF8 = b"caf\xe9 au lait\n\xff\xfe\x00garbage\n"  # Latin-1 bytes, then binary junk


@pytest.mark.parametrize("suffix, expected", [(".txt", "a text file"), (".jsonl", "JSON Lines"), (".csv", "CSV")])
def test_files_that_are_not_utf8_name_the_file_and_the_format(tmp_path, suffix, expected):
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(b"text\n" + _NOT_UTF8 if suffix == ".csv" else _NOT_UTF8)
    with pytest.raises(ValueError, match=rf"latin1\{suffix}: expected {expected}.*UTF-8"):
        load_texts(str(path))


def test_csv_that_is_not_csv_names_the_file(tmp_path):
    path = tmp_path / "nul.csv"
    path.write_bytes(b"text\nok\n\"unterminated\x00 quote\n")
    with pytest.raises(ValueError, match=r"nul\.csv.*CSV"):
        load_texts(str(path))


@pytest.mark.parametrize("suffix, body", [
    (".txt", "first prompt\nsecond\n"),
    (".jsonl", '{"text": "first prompt"}\n{"text": "second"}\n'),
    (".csv", "text\nfirst prompt\nsecond\n"),
])
def test_a_utf8_byte_order_mark_is_dropped(tmp_path, suffix, body):
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    texts = load_texts(str(path))
    assert texts == ["first prompt", "second"]
    assert not texts[0].startswith("\ufeff")
