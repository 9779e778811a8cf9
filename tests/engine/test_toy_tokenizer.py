"""The toy tokenizer the product ships for ``glimpse self-test`` is the one the trainer in tests/toy_bpe.py learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glimpse.engine.convert.synthetic import SPECIAL_TOKENS, write_tokenizer
from glimpse.engine.convert.toy_merges import TOY_MERGES
from tests.toy_bpe import N_MERGES, merges_module, train_toy_bpe


def test_shipped_merges_are_the_trained_ones() -> None:
    _, merges = train_toy_bpe(N_MERGES)
    assert list(TOY_MERGES) == merges, "engine/convert/toy_merges.py is stale: run `python -m tests.toy_bpe`"
    assert Path(__file__).resolve().parents[2].joinpath("engine/convert/toy_merges.py").read_text(
        encoding="utf-8") == merges_module(merges)


def test_written_vocabulary_is_the_trained_one(tmp_path: Path) -> None:
    tokens, merges = train_toy_bpe(40)  # greedy: the first merges of a longer run are a shorter run's merges
    n = write_tokenizer(tmp_path, 40)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert n == len(tokens) + len(SPECIAL_TOKENS)
    assert sorted(vocab, key=vocab.__getitem__) == tokens
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert [tuple(line.split(" ")) for line in lines] == merges


def test_more_merges_than_shipped_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"from 0 to {len(TOY_MERGES)}"):
        write_tokenizer(tmp_path, len(TOY_MERGES) + 1)
