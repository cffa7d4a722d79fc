"""Hostile caption files: each malformation is a one-line ValueError naming the file and the line."""

from __future__ import annotations

import builtins
import csv
import json
from pathlib import Path

import pytest

from longclip.data.pairs import read_caption_table, read_pairs, read_sharegpt4v


def _table(tmp_path: Path, text: str | bytes, name: str = "pairs.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_an_unquoted_comma_that_shifts_columns_is_refused(tmp_path: Path, bounded) -> None:
    path = _table(tmp_path, "image,caption,short_caption\na.jpg,a cat,cat\nb.jpg,a dog, running,dog\n")
    message = bounded(read_caption_table, path).raised("ValueError", match=r"line 3: 4 fields, but the header has 3")
    assert str(path) in message and "quote fields" in message


def test_a_row_longer_than_the_header_is_refused(tmp_path: Path) -> None:
    path = _table(tmp_path, "image,caption\na.jpg,a cat\nb.jpg,a dog,extra\n")
    with pytest.raises(ValueError, match=r"pairs.csv, line 3: 3 fields, but the header has 2"):
        read_caption_table(path)


def test_a_short_row_is_refused(tmp_path: Path) -> None:
    path = _table(tmp_path, "image,caption,short_caption\na.jpg,a cat\n")
    with pytest.raises(ValueError, match=r"line 2: 2 fields, but the header has 3"):
        read_caption_table(path)


def test_an_unclosed_quote_at_the_end_does_not_merge_rows(tmp_path: Path, bounded) -> None:
    path = _table(tmp_path, 'image,caption\na.jpg,"a cat\nb.jpg,a dog\nc.jpg,a bird\n')
    bounded(read_caption_table, path).raised("ValueError", match=r"pairs.csv, line 2: malformed row .*never closed")


def test_an_unclosed_quote_closed_rows_later_is_refused(tmp_path: Path) -> None:
    path = _table(tmp_path, 'image,caption\na.jpg,"a cat\nb.jpg,"a dog"\n')
    with pytest.raises(ValueError, match=r"pairs.csv, line 2: malformed row"):
        read_caption_table(path)


def test_quoted_captions_with_delimiters_and_line_breaks_still_read(tmp_path: Path) -> None:
    path = _table(tmp_path, 'image,caption\na.jpg,"a cat, grey\nand ""old"""\n')
    (pair,) = read_caption_table(path)
    assert pair.caption == 'a cat, grey\nand "old"'


def test_a_field_over_csv_limit_is_a_clear_error(tmp_path: Path, bounded) -> None:
    huge = "x" * (csv.field_size_limit() + 10)
    path = _table(tmp_path, f'image,caption\na.jpg,"{huge}"\n')
    message = bounded(read_caption_table, path).raised("ValueError", match=r"pairs.csv, line 2: malformed row")
    assert "longer than" in message and len(message) < 400


@pytest.mark.parametrize("name", ["pairs.csv", "pairs.tsv", "pairs.json"])
def test_decoding_errors_name_the_file_and_line(tmp_path: Path, name: str) -> None:
    path = _table(tmp_path, b"image,caption\na.jpg,caf\xe9\n", name)
    with pytest.raises(ValueError, match=rf"{name}, line 2: not UTF-8 text \(byte 0xe9 at offset 23"):
        read_pairs(path)


def test_deeply_nested_json_is_a_clear_error(tmp_path: Path, bounded) -> None:
    path = _table(tmp_path, "[" * 200_000 + "]" * 200_000, "deep.json")
    bounded(read_sharegpt4v, path, tmp_path).raised("ValueError", match=r"deep.json: json nested too deeply")


def test_a_json_object_instead_of_a_list_is_refused(tmp_path: Path) -> None:
    path = _table(tmp_path, json.dumps({"image": "a.jpg"}), "one.json")
    with pytest.raises(ValueError, match="expected a json list"):
        read_sharegpt4v(path, tmp_path)


def test_permission_denied_is_reported_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, where chmod does not deny reading: make open() deny it the way the kernel would.
    path = _table(tmp_path, "image,caption\na.jpg,a cat\n")
    real_open = builtins.open

    def denying_open(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denying_open)
    monkeypatch.setattr("io.open", denying_open)
    with pytest.raises(PermissionError, match=r"Permission denied: '.*pairs.csv'") as error:
        read_pairs(path)
    assert "No such file" not in str(error.value)


def test_a_missing_file_is_reported_as_such(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        read_pairs(tmp_path / "nothere.csv")
