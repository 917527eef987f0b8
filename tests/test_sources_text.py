"""train.sources.text: text files for character models (--data FILE.txt / FOLDER)."""

from __future__ import annotations

import numpy as np
import pytest

from train import data
from train.sources import open_data
from train.sources.text import open_text

SHAKESPEARE = data.VENDORED_DIR / "tiny_shakespeare" / "input.txt"


def test_one_text_is_cut_as_tfds_cuts_tiny_shakespeare(tfds_dir, tmp_path):
    """tiny_shakespeare written out as one .txt gives TFDS's train/validation/test exactly."""
    (tmp_path / "input.txt").write_bytes(SHAKESPEARE.read_bytes())
    ud = open_data(tmp_path / "input.txt", image_shape=None, val_size=5000, text=True)
    assert ud.kind == "text" and not ud.streamed
    for split in ("train", "validation", "test"):
        expected = data.load_split("tiny_shakespeare", split, data_dir=tfds_dir)["text"]
        np.testing.assert_array_equal(ud.splits[split]["text"], expected, err_msg=split)
    assert ud.vocab == "".join(sorted(set(ud.splits["train"]["text"].tobytes().decode("ascii"))))
    assert ud.vocab == data.CHAR_VOCAB  # the training text holds every character of the shipped model


def test_a_folder_of_txt_files_is_concatenated_in_name_order(tmp_path):
    (tmp_path / "b.txt").write_text("bbbb\n" * 40)
    (tmp_path / "a.txt").write_text("aaaa\n" * 160)
    (tmp_path / "notes.md").write_text("not text for the model")
    ud = open_text(tmp_path, val_size=0)
    whole = ("aaaa\n" * 160 + "bbbb\n" * 40).encode()
    i = int(len(whole) * 0.9)
    j = i + int((len(whole) - i) * 0.5)
    assert ud.splits["train"]["text"].tobytes() == whole[:i]
    assert ud.splits["validation"]["text"].tobytes() == whole[i:j]
    assert ud.splits["test"]["text"].tobytes() == whole[j:]
    assert ud.vocab == "\nab"


@pytest.mark.parametrize("val_name", ["validation.txt", "val.txt"])
def test_split_files_are_used_as_given(tmp_path, val_name):
    (tmp_path / "train.txt").write_text("abcabc")
    (tmp_path / val_name).write_text("cab")
    (tmp_path / "test.txt").write_text("ba")
    (tmp_path / "zzz.txt").write_text("ignored: the split files name the splits")
    ud = open_text(tmp_path, val_size=5000)
    assert {s: ud.splits[s]["text"].tobytes() for s in ud.splits} == {"train": b"abcabc", "validation": b"cab", "test": b"ba"}
    assert ud.vocab == "abc"


def _error(path, **kw) -> str:
    with pytest.raises(ValueError) as e:
        open_text(path, val_size=0, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_text_gets_one_line_naming_file_character_and_position(tmp_path):
    (tmp_path / "u.txt").write_text("To be\nor n\u00f6t to be" * 20, encoding="utf-8")
    message = _error(tmp_path / "u.txt")
    assert "u.txt line 2, column 5" in message and "'\u00f6'" in message and "ASCII" in message

    (tmp_path / "late.txt").write_text("ab" * 180 + "Z" * 20)  # 'Z' only after the training 90% (342)
    message = _error(tmp_path / "late.txt")
    assert "late.txt line 1, column 361" in message and "'Z'" in message and "validation" in message

    (tmp_path / "empty.txt").write_text("")
    assert "empty.txt is empty" in _error(tmp_path / "empty.txt")
    (tmp_path / "short.txt").write_text("abcdefghijklmnopqrst")  # 1 validation character: no next one
    assert "too short" in _error(tmp_path / "short.txt")
    (tmp_path / "long.txt").write_text("abcd" * 100)  # 20 validation characters: no window of 50
    assert "seq_len=50" in _error(tmp_path / "long.txt", seq_len=50)
    open_text(tmp_path / "long.txt", val_size=0, seq_len=19)


def test_bad_folders_get_one_line(tmp_path):
    (tmp_path / "none").mkdir()
    assert "no .txt files" in _error(tmp_path / "none")
    both = tmp_path / "both"
    both.mkdir()
    for name in ("train.txt", "validation.txt", "val.txt", "test.txt"):
        (both / name).write_text("abab")
    assert "both validation.txt and val.txt" in _error(both)
    (both / "test.txt").unlink()
    (both / "val.txt").unlink()
    assert "no test.txt" in _error(both)
    (both / "test.txt").write_text("abq")
    message = _error(both)
    assert "test.txt line 1, column 3" in message and "'q'" in message
