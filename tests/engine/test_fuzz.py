"""Fuzzing the parsers of files Glimpse does not write itself: every input either parses or raises one
GlimpseError, within bounded CPU time (not wall-clock time: other processes' load must not decide a verdict) and
bounded Python memory (tracemalloc).

The normal run is small, fixed and reproducible (a few seconds per parser). For a long run::

    GLIMPSE_FUZZ=long python -m pytest tests/engine/test_fuzz.py

which tries many more, random examples per parser and keeps Hypothesis' example database in .hypothesis/.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image

from glimpse.engine.convert.checkpoint import LlmGeometry
from glimpse.engine.convert.llm_gguf import read_vocab
from glimpse.engine.convert.safetensors_header import read_header
from glimpse.engine.errors import CheckpointError, GlimpseError
from glimpse.engine.limits import parse_json
from glimpse.engine.models.gguf_header import check_gguf_file
from glimpse.engine.models.model_folder import MANIFEST, read_manifest, verify
from glimpse.engine.models.onnx_external import check_onnx_file
from glimpse.engine.names import safe_child
from glimpse.engine.runtime.preprocess import load_image
from tests.engine.test_native_checks import LLM, _data_size, _good_kvs, _good_tensors, gguf_bytes

_LONG = os.environ.get("GLIMPSE_FUZZ", "").lower() == "long"
if not _LONG:  # Hypothesis keeps caches in ./.hypothesis even without a database: a normal run leaves no trace
    set_hypothesis_home_dir(tempfile.mkdtemp(prefix="glimpse-hypothesis-"))

FUZZ = settings(
    max_examples=2000 if _LONG else 60,
    deadline=None,  # wall-clock time depends on the machine's load; _bounded_cpu bounds each example instead
    derandomize=not _LONG,
    database=None if not _LONG else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PEAK_BYTES = 64 << 20  # Python-level memory one example may use; the inputs are at most a few KB
CPU_SECONDS = 5.0  # CPU time one example may use, about 1000 times what a parser needs: a quadratic blow-up fails


@contextmanager
def _bounded_cpu() -> Iterator[None]:
    started = time.process_time()  # this process's CPU time: the same on an idle and on a busy machine
    yield
    spent = time.process_time() - started
    assert spent < CPU_SECONDS, f"one input took {spent:.1f} s of CPU time"


@contextmanager
def _bounded_memory() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak < PEAK_BYTES, f"one input used {peak:,} bytes"
    finally:
        tracemalloc.stop()


def _glimpse_error_or_success(call: Callable[[], object]) -> None:
    with _bounded_cpu(), _bounded_memory():
        try:
            call()
        except GlimpseError as e:
            assert str(e).strip(), "a GlimpseError without a sentence"


@contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="glimpse-fuzz-") as d:
        yield Path(d)


# JSON values, including the awkward ones: deep-ish nesting, huge and negative numbers, NaN-like floats.
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                           max_size=4), max_leaves=20)


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)  # NaN/Infinity on purpose: such files exist


# -- safetensors headers ----------------------------------------------------------------------------------------------

entries = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F32", "BF16", "F16", "I64", "U8", "X", ""]) | json_values,
    "shape": st.lists(st.integers(min_value=-3, max_value=2**65) | json_values, max_size=10) | json_values,
    "data_offsets": st.lists(st.integers(min_value=-5, max_value=2**66), max_size=3) | json_values,
})
headers = st.dictionaries(st.text(max_size=6), entries | json_values, max_size=6)


@FUZZ
@given(header=headers | json_values, data=st.binary(max_size=64))
def test_fuzz_safetensors_header(header: Any, data: bytes) -> None:
    with _folder() as d:
        raw = _dumps(header).encode()
        path = d / "x.safetensors"
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
        _glimpse_error_or_success(lambda: read_header(path))


@FUZZ
@given(blob=st.binary(max_size=300))
def test_fuzz_safetensors_raw_bytes(blob: bytes) -> None:
    with _folder() as d:
        path = d / "x.safetensors"
        path.write_bytes(blob)
        _glimpse_error_or_success(lambda: read_header(path))


# -- config.json ------------------------------------------------------------------------------------------------------

CONFIG_KEYS = ["hidden_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "intermediate_size",
               "max_position_embeddings", "mm_hidden_size", "rms_norm_eps", "rope_theta", "tie_word_embeddings"]
GOOD_CONFIG = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
               "intermediate_size": 128, "mm_hidden_size": 64}


class _StubCheckpoint:
    """What LlmGeometry reads from a checkpoint: its config and tensor shapes (all of the expected ones)."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def shape(self, name: str) -> tuple[int, ...]:
        return (128, 64) if name == "model.embed_tokens.weight" else (1,)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), scalars | json_values, max_size=4))
def test_fuzz_config_values(changes: dict[str, Any]) -> None:
    text = _dumps({**GOOD_CONFIG, **changes})

    def run() -> None:
        config = parse_json(text, "config.json", CheckpointError, "")
        LlmGeometry.from_checkpoint(_StubCheckpoint(config))  # type: ignore[arg-type]

    _glimpse_error_or_success(run)


@FUZZ
@given(text=st.text(alphabet='{}[]":,0123456789.eE-+ aINnfity', max_size=200))
def test_fuzz_config_text(text: str) -> None:
    _glimpse_error_or_success(lambda: parse_json(text, "config.json", CheckpointError, ""))


# -- tokenizer files --------------------------------------------------------------------------------------------------

token_ids = st.integers(min_value=-2, max_value=40) | json_values
tokens = st.text(max_size=6)


@FUZZ
@given(vocab=st.dictionaries(tokens, token_ids, max_size=8) | json_values,
       added=st.dictionaries(tokens, token_ids, max_size=3) | json_values,
       decoder=st.dictionaries(st.text(alphabet="0123456789²٣x", max_size=3),
                               st.fixed_dictionaries({"content": tokens | json_values}) | json_values, max_size=3)
       | json_values,
       tok_json=st.fixed_dictionaries({"added_tokens": st.lists(st.fixed_dictionaries(
           {"id": token_ids, "content": tokens | json_values}), max_size=3) | json_values}) | json_values,
       merges=st.text(max_size=40), template=st.binary(max_size=20))
def test_fuzz_tokenizer_files(vocab: Any, added: Any, decoder: Any, tok_json: Any, merges: str,
                              template: bytes) -> None:
    with _folder() as d:
        (d / "vocab.json").write_text(_dumps(vocab), encoding="utf-8")
        (d / "added_tokens.json").write_text(_dumps(added), encoding="utf-8")
        (d / "tokenizer_config.json").write_text(_dumps({"added_tokens_decoder": decoder, "eos_token": "a"}),
                                                 encoding="utf-8")
        (d / "tokenizer.json").write_text(_dumps(tok_json), encoding="utf-8")
        (d / "merges.txt").write_text(merges, encoding="utf-8", errors="surrogatepass")
        (d / "chat_template.jinja").write_bytes(template)
        _glimpse_error_or_success(lambda: read_vocab(d, 32, {"bos_token_id": 1}))


# -- model.json -------------------------------------------------------------------------------------------------------

GOOD_MANIFEST = {"format_version": 1, "name": "m", "template": "qwen2",
                 "llm": {**LLM, "quant": "f16"}, "vision": {"default_image_size": 1024, "patch_size": 64},
                 "files": {"vision.onnx": {"size": 1, "sha256": "0" * 64}}}


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(list(GOOD_MANIFEST)), json_values, max_size=3),
       names=st.lists(st.text(max_size=12) | st.sampled_from(["../x", "/etc/passwd", "a/b", "..", "CON", "x."]),
                      max_size=3))
def test_fuzz_model_json(changes: dict[str, Any], names: list[str]) -> None:
    manifest = {**GOOD_MANIFEST, **changes}
    if isinstance(manifest.get("files"), dict):
        manifest["files"] = {**manifest["files"], **{n: {"size": 1} for n in names}}
    with _folder() as d:
        (d / MANIFEST).write_text(_dumps(manifest), encoding="utf-8")

        def run() -> None:
            m = read_manifest(d)
            for name in m.files:
                safe_child(d, name, "model.json", CheckpointError, "")
            verify(d)  # the listed files are missing or wrong: a sentence, never a TypeError

        _glimpse_error_or_success(run)


# -- GGUF headers -----------------------------------------------------------------------------------------------------

_TENSORS = _good_tensors()
GOOD_GGUF = gguf_bytes(_good_kvs(), _TENSORS, _data_size(_TENSORS))


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0, max_value=len(GOOD_GGUF) - 1),
                                st.integers(min_value=0, max_value=255)), min_size=1, max_size=6),
       cut=st.none() | st.integers(min_value=0, max_value=len(GOOD_GGUF)))
def test_fuzz_gguf_header(flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(GOOD_GGUF)
    for at, value in flips:
        data[at] = value
    with _folder() as d:
        path = d / "llm.gguf"
        path.write_bytes(bytes(data[:cut]))
        _glimpse_error_or_success(lambda: check_gguf_file(path, LLM))


@FUZZ
@given(blob=st.binary(max_size=200))
def test_fuzz_gguf_raw_bytes(blob: bytes) -> None:
    with _folder() as d:
        path = d / "llm.gguf"
        path.write_bytes(b"GGUF" + struct.pack("<I", 3) + blob)
        _glimpse_error_or_success(lambda: check_gguf_file(path, LLM))


@FUZZ
@given(blob=st.binary(max_size=200))
def test_fuzz_onnx_walker(blob: bytes) -> None:
    with _folder() as d:
        path = d / "vision.onnx"
        path.write_bytes(blob)
        _glimpse_error_or_success(lambda: check_onnx_file(path, {}))


# -- the image loader -------------------------------------------------------------------------------------------------

def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


SAMPLES = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")}


@FUZZ
@given(fmt=st.sampled_from(sorted(SAMPLES)), data=st.data())
def test_fuzz_image_loader(fmt: str, data: st.DataObject) -> None:
    sample = bytearray(SAMPLES[fmt])
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        at = data.draw(st.integers(min_value=0, max_value=len(sample) - 1))
        sample[at] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.none() | st.integers(min_value=0, max_value=len(sample)))
    with _folder() as d:
        path = d / "picture"
        path.write_bytes(bytes(sample[:cut]))
        with _bounded_cpu():
            try:
                img: Image.Image | None = load_image(path)
            except GlimpseError as e:
                assert str(e).strip()
                img = None
        assert img is None or (img.mode == "RGB" and img.width * img.height <= 100_000_000)
