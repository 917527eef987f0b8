"""Text files for character language models (char_lstm): one file, a folder of .txt files, or a
folder with train.txt / validation.txt (or val.txt) / test.txt.

    ud = open_text(Path("input.txt"), val_size=5000)
    ud.splits["train"]["text"]    # uint8 bytes, as TFDS's tiny_shakespeare gives them
    ud.vocab                      # the sorted distinct characters of the training text

One text (a file, or a folder's .txt files concatenated in name order, byte for byte) is cut as
TFDS cuts tiny_shakespeare: the first 90% of its characters train, the next 5% validate and the
last 5% test (validation = int(0.5 * len(rest)) characters of the rest after int(0.9 * len)), so
tiny_shakespeare written out as one .txt gives exactly TFDS's three splits. `val_size` counts
examples of array datasets and does not apply to text. zoo.rnn's tables are ASCII: any other
character is refused, named with its file and position, as is a validation/test character that
the training text never shows (the model would have no token for it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from train.sources.userdata import UserData

__all__ = ["open_text", "SPLIT_FILES"]

# a folder holding these files gives the splits as they are (validation may be named val.txt)
SPLIT_FILES = {"train": ("train.txt",), "validation": ("validation.txt", "val.txt"), "test": ("test.txt",)}
TRAIN_SHARE, VALIDATION_SHARE = 0.9, 0.5  # TFDS tiny_shakespeare: 90% train, then half of the rest


class _Text:
    """Bytes read from one or more files, with where each file starts (to name a position)."""

    def __init__(self, files: list[Path]):
        self.files, self.starts, parts = files, [], []
        offset = 0
        for f in files:
            data = _read(f)
            self.starts.append(offset)
            parts.append(data)
            offset += len(data)
        self.data = b"".join(parts)

    def where(self, pos: int) -> str:
        """"FILE line L, column C" of byte `pos` of the concatenated text."""
        i = int(np.searchsorted(self.starts, pos, side="right")) - 1
        local = pos - self.starts[i]
        data = self.data[self.starts[i]:self.starts[i] + local]
        line, column = data.count(b"\n") + 1, local - data.rfind(b"\n")
        return f"{os.fspath(self.files[i])} line {line}, column {column}"

    def check_ascii(self) -> None:
        bad = np.flatnonzero(np.frombuffer(self.data, np.uint8) >= 128)
        if bad.size:
            pos = int(bad[0])
            char = self.data[pos:pos + 4].decode("utf-8", errors="ignore")[:1] or f"byte 0x{self.data[pos]:02x}"
            raise ValueError(f"--data: {self.where(pos)}: character {char!r} is not ASCII; zoo's character "
                             "models read ASCII text only (convert or remove it)")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise OSError(e.errno, f"--data: cannot read {os.fspath(path)} ({e.strerror or e})") from None


def _split_files(folder: Path) -> dict[str, Path] | None:
    """{split: file} of a folder laid out as train.txt / validation.txt (val.txt) / test.txt; None if not."""
    found = {split: [folder / n for n in names if (folder / n).is_file()] for split, names in SPLIT_FILES.items()}
    if not found["train"]:
        return None
    if len(found["validation"]) > 1:
        raise ValueError(f"--data {os.fspath(folder)}: holds both validation.txt and val.txt; keep one")
    missing = [SPLIT_FILES[s][0] for s in ("validation", "test") if not found[s]]
    if missing:
        raise ValueError(f"--data {os.fspath(folder)}: has train.txt but no {' or '.join(missing)}; a folder of "
                         "split files needs train.txt, validation.txt (or val.txt) and test.txt")
    return {split: files[0] for split, files in found.items()}


def _cut(text: bytes) -> tuple[slice, slice, slice]:
    """TFDS tiny_shakespeare's 90/5/5 cut of a text, in characters (bytes: the text is ASCII)."""
    n = len(text)
    i = int(n * TRAIN_SHARE)
    j = i + int((n - i) * VALIDATION_SHARE)
    return slice(0, i), slice(i, j), slice(j, n)


def open_text(path: Path, *, val_size: int, seq_len: int | None = None) -> UserData:
    """A text file or folder of .txt files as train/validation/test text and its vocabulary.

    Args:
      path: a text file; a folder with train.txt, validation.txt (or val.txt) and test.txt (the
        splits as given); or a folder of .txt files (concatenated in name order, then cut 90/5/5).
      val_size: not used: text is cut by TFDS tiny_shakespeare's rule (module doc).
      seq_len: characters per training window; each split must hold at least one window
        (seq_len + 1 characters). None: at least one next-character pair (2 characters).

    Returns:
      UserData(kind="text", splits={split: {"text": uint8 bytes}}, vocab=sorted training characters).

    Raises:
      ValueError: one line: an empty or too short text, a non-ASCII character, or a
        validation/test character missing from the training text (named with file and position).
      OSError: a file cannot be read (named).
    """
    del val_size  # text is cut by the rule above; documented there and in docs/data.md
    path = Path(path)
    layout = _split_files(path) if path.is_dir() else None
    if layout is not None:
        texts = {split: _Text([f]) for split, f in layout.items()}
        spans = {split: (t, slice(0, len(t.data))) for split, t in texts.items()}
        note = (f"text: the splits are {layout['train'].name}, {layout['validation'].name} and "
                f"{layout['test'].name} as given")
    else:
        files = sorted(p for p in path.glob("*.txt") if p.is_file()) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"--data {os.fspath(path)}: no .txt files in this folder; expected a text file, "
                             "a folder of .txt files, or train.txt/validation.txt/test.txt")
        whole = _Text(files)
        spans = dict(zip(("train", "validation", "test"), ((whole, s) for s in _cut(whole.data))))
        texts = {"all": whole}
        note = (f"text: {len(files)} file{'s' if len(files) > 1 else ''}, {len(whole.data):,} characters: "
                "the first 90% train, the next 5% validate, the last 5% test (TFDS tiny_shakespeare's cut)")
    for t in texts.values():
        if not t.data:
            what = os.fspath(t.files[0]) if len(t.files) == 1 else f"the {len(t.files)} .txt files in {os.fspath(path)}"
            raise ValueError(f"--data: {what} {'is' if len(t.files) == 1 else 'are'} empty; expected ASCII text "
                             "to train a character model on")
        t.check_ascii()
    _check_lengths(path, spans, seq_len)
    train_text, train_span = spans["train"]
    vocab = "".join(sorted(set(train_text.data[train_span].decode("ascii"))))
    for split in ("validation", "test"):
        _check_in_vocab(spans[split], vocab, split)
    splits = {split: {"text": np.frombuffer(t.data[s], np.uint8).copy()} for split, (t, s) in spans.items()}
    return UserData(kind="text", path=path.absolute(), splits=splits, vocab=vocab, notes=(note,))


def _check_lengths(path: Path, spans: dict, seq_len: int | None) -> None:
    need = (seq_len or 1) + 1
    for split, (t, s) in spans.items():
        n = s.stop - s.start
        if n < need:
            window = f"one window of seq_len={seq_len}" if seq_len else "one character and the next"
            raise ValueError(f"--data {os.fspath(path)}: the {split} text holds {n} character{'s' * (n != 1)}, "
                             f"too short for {window} (needs {need}); give a longer text")


def _check_in_vocab(span: tuple[_Text, slice], vocab: str, split: str) -> None:
    t, s = span
    table = np.zeros(256, bool)
    table[np.frombuffer(vocab.encode("ascii"), np.uint8)] = True
    bad = np.flatnonzero(~table[np.frombuffer(t.data[s], np.uint8)])
    if bad.size:
        pos = s.start + int(bad[0])
        raise ValueError(f"--data: {t.where(pos)}: the {split} text holds {chr(t.data[pos])!r}, which the training "
                         "text never shows (the model has no token for it); add it to the training text")
