"""The Qwen2 GGUF converter and LanguageModel, against transformers' outputs saved by tests/oracle/make_llm_fixtures.py.

Tolerances (tiny random models, hidden 64, vocab 576; what this machine measured in brackets):
- f16: first-step logits cosine >= 0.9999 against Qwen2ForCausalLM in float32 [1 - 2e-7], max abs difference
  < 0.02 [0.008]; greedy tokens equal at every step whose reference margin (best - second best logit) exceeds 0.05
  [all 8 steps qualify], the reference token being fed back each step so one near-tie cannot derail the rest.
- q8_0: cosine >= 0.999 [0.9994 untied, 0.9998 tied]; q4_0: cosine >= 0.97 [0.977, 0.984]: random weights in a
  2-layer model are harder on 4 bits than trained ones. The numpy Q8_0 / Q4_0 bytes equal llama-quantize's.
- q4_k_m (a 256-wide model, so real Q4_K / Q6_K blocks): cosine >= 0.98 against its own f16 file [0.987].
- Injected token-embedding rows give exactly the tokens' logits; rewinding and re-evaluating gives exactly the first
  logits.
"""

from __future__ import annotations

import errno
import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gguf
import llama_cpp
import numpy as np
import pytest

from glimpse.engine.convert import llm_gguf
from glimpse.engine.convert.checkpoint import Checkpoint, LlmGeometry
from glimpse.engine.convert.llm_gguf import write_llm_gguf
from glimpse.engine.convert.synthetic import CheckpointSpec, LlmSpec, write_checkpoint
from glimpse.engine.errors import (
    Cancelled,
    ContextFullError,
    ConversionError,
    DiskFullError,
    InferenceError,
    ModelFolderError,
)
from glimpse.engine.progress import Progress, Reporter
from glimpse.engine.runtime.llm import LanguageModel, check_gguf, image_marker

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VARIANTS = ("tied", "untied")
QType = gguf.GGMLQuantizationType

# What llama.cpp's convert_hf_to_gguf.py writes for Qwen2ForCausalLM: prepare_metadata (general.*), TextModel.
# set_gguf_parameters (qwen2.*), _set_vocab_gpt2 + gguf.SpecialVocab (tokenizer.*; add_bos_token only when
# tokenizer_config.json has one, which engine.convert.synthetic's does not, nor does Qwen2-Instruct's).
REFERENCE_KEYS = {
    "general.architecture", "general.type", "general.name", "general.size_label",
    "general.file_type", "general.quantization_version",
    "qwen2.block_count", "qwen2.context_length", "qwen2.embedding_length", "qwen2.feed_forward_length",
    "qwen2.attention.head_count", "qwen2.attention.head_count_kv", "qwen2.rope.freq_base",
    "qwen2.attention.layer_norm_rms_epsilon",
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.chat_template",
}
# GGUFReader adds these for the file header itself.
HEADER_FIELDS = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}


def _fixture(name: str) -> dict[str, Any]:
    with np.load(FIXTURES / f"llm_{name}.npz") as f:
        data = {k: f[k] for k in f.files}
    data["spec"] = json.loads(str(data["spec"]))
    return data


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def refs() -> dict[str, dict[str, Any]]:
    return {v: _fixture(v) for v in VARIANTS}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, refs: dict[str, dict[str, Any]]) -> dict[str, Path]:
    out = {}
    for variant, ref in refs.items():
        spec = dict(ref["spec"])
        seed = spec.pop("seed")
        folder = write_checkpoint(tmp_path_factory.mktemp(variant) / "ckpt", CheckpointSpec(llm=LlmSpec(**spec),
                                                                                             seed=seed))
        with Checkpoint(folder) as ckpt:
            names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"]
            if not spec["tied"]:
                names.append("lm_head.weight")
            sums = [float(ckpt.tensor(n).astype(np.float64).sum()) for n in names]
        assert np.allclose(sums, ref["fingerprint"], rtol=0, atol=1e-6), (
            "engine.convert.synthetic now writes other weights than the fixtures were made from; "
            "regenerate them with tests/oracle/make_llm_fixtures.py")
        out[variant] = folder
    return out


def _convert(folder: Path, out: Path, quant: str, **kwargs: Any) -> Path:
    with Checkpoint(folder) as ckpt:
        write_llm_gguf(ckpt, LlmGeometry.from_checkpoint(ckpt), out, quant=quant, **kwargs)
    return out


@pytest.fixture(scope="module")
def ggufs(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("gguf")
    return {(v, q): _convert(checkpoints[v], out / f"{v}-{q}.gguf", q)
            for v in VARIANTS for q in ("f16", "q8_0", "q4_0")}


def _prompt_logits(lm: LanguageModel, ref: dict[str, Any]) -> np.ndarray:
    lm.eval_tokens(ref["prefix_ids"].tolist())
    lm.eval_embeddings(ref["rows"])
    lm.eval_tokens(ref["question_ids"].tolist())
    return lm.logits()


# -- parity with transformers -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("variant", "n_batch"), [("tied", 512), ("untied", 512), ("tied", 8)])
def test_f16_matches_transformers(ggufs: dict[tuple[str, str], Path], refs: dict[str, dict[str, Any]],
                                  variant: str, n_batch: int) -> None:
    ref = refs[variant]
    with LanguageModel(ggufs[variant, "f16"], n_ctx=256, n_batch=n_batch) as lm:
        logits = _prompt_logits(lm, ref)
        assert logits.shape == ref["logits"].shape
        assert _cosine(logits, ref["logits"]) >= 0.9999
        assert np.abs(logits - ref["logits"]).max() < 0.02
        for step, (token, margin) in enumerate(zip(ref["greedy"].tolist(), ref["margins"].tolist(), strict=True)):
            if margin > 0.05:
                assert int(np.argmax(logits)) == token, f"greedy step {step}"
            lm.eval_tokens([token])
            logits = lm.logits()


@pytest.mark.parametrize(("quant", "min_cosine"), [("q8_0", 0.999), ("q4_0", 0.97)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_quantized_files_run(ggufs: dict[tuple[str, str], Path], refs: dict[str, dict[str, Any]],
                             variant: str, quant: str, min_cosine: float) -> None:
    with LanguageModel(ggufs[variant, quant], n_ctx=256) as lm:
        logits = _prompt_logits(lm, refs[variant])
    assert np.isfinite(logits).all()
    assert _cosine(logits, refs[variant]["logits"]) >= min_cosine


@pytest.mark.parametrize(("quant", "file_type"), [("q8_0", 7), ("q4_0", 2)])
def test_numpy_quants_equal_llama_quantize(ggufs: dict[tuple[str, str], Path], tmp_path: Path,
                                           quant: str, file_type: int) -> None:
    """gguf-py's numpy Q8_0 / Q4_0 give the bytes llama-quantize makes from the f16 file, type choices included."""
    for variant in VARIANTS:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = file_type
        out = tmp_path / f"{variant}.gguf"
        assert llama_cpp.llama_model_quantize(str(ggufs[variant, "f16"]).encode(), str(out).encode(), params) == 0
        theirs = {t.name: t for t in gguf.GGUFReader(out).tensors}
        ours = {t.name: t for t in gguf.GGUFReader(ggufs[variant, quant]).tensors}
        assert set(theirs) == set(ours)
        for name, t in ours.items():
            assert t.tensor_type == theirs[name].tensor_type, name
            np.testing.assert_array_equal(np.asarray(t.data), np.asarray(theirs[name].data), err_msg=name)


def test_q4_k_m_through_llama_quantize(tmp_path: Path) -> None:
    # 256-wide rows, so llama.cpp uses real Q4_K / Q6_K blocks instead of its fallbacks for narrow rows.
    folder = write_checkpoint(tmp_path / "ckpt", CheckpointSpec(llm=LlmSpec(hidden=256, ffn=512), seed=3))
    f16 = _convert(folder, tmp_path / "f16.gguf", "f16")
    k = _convert(folder, tmp_path / "q4km.gguf", "q4_k_m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "f16.gguf", "q4km.gguf"]  # no temporary left
    reader = gguf.GGUFReader(k)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert QType.Q4_K in types.values()
    assert types["output_norm.weight"] == QType.F32
    rng = np.random.default_rng(5)
    rows = (0.5 * rng.standard_normal((12, 256))).astype(np.float32)
    outs = []
    for path in (f16, k):
        with LanguageModel(path, n_ctx=128) as lm:
            lm.eval_tokens(lm.tokenize("<|im_start|>user\n"))
            lm.eval_embeddings(rows)
            lm.eval_tokens(lm.tokenize("\nWhat is this?<|im_end|>\n<|im_start|>assistant\n"))
            outs.append(lm.logits())
    assert np.isfinite(outs[1]).all()
    assert _cosine(outs[0], outs[1]) >= 0.98


# -- file contents ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_tensor_names_and_types(ggufs: dict[tuple[str, str], Path], variant: str) -> None:
    layer = ["attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias", "attn_v.weight",
             "attn_v.bias", "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
             "ffn_down.weight"]
    expected = {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{n}" for i in range(2) for n in layer}
    if variant == "untied":
        expected.add("output.weight")
    for quant, matrix in (("f16", QType.F16), ("q8_0", QType.Q8_0), ("q4_0", QType.Q4_0)):
        tensors = {t.name: t for t in gguf.GGUFReader(ggufs[variant, quant]).tensors}
        assert set(tensors) == expected, quant
        for name, t in tensors.items():
            want = matrix if len(t.shape) == 2 else QType.F32
            if quant == "q4_0" and name in ("output.weight", "token_embd.weight" if variant == "tied" else ""):
                want = QType.Q8_0  # the output projection keeps 8 bits
            assert t.tensor_type == want, (quant, name)
        assert list(tensors["token_embd.weight"].shape) == [64, 576]  # GGUF order: row width first


def test_metadata_matches_reference_converter(ggufs: dict[tuple[str, str], Path], checkpoints: dict[str, Path]) -> None:
    reader = gguf.GGUFReader(ggufs["tied", "f16"])
    fields = reader.fields
    assert set(fields) - HEADER_FIELDS == REFERENCE_KEYS

    def value(key: str) -> Any:
        return fields[key].contents()

    assert value("general.architecture") == "qwen2"
    assert value("general.type") == "model"
    assert value("general.name") == "FastVLM"
    assert value("general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert value("general.quantization_version") == gguf.GGML_QUANT_VERSION
    assert (value("qwen2.block_count"), value("qwen2.embedding_length"), value("qwen2.feed_forward_length")) == (
        2, 64, 128)
    assert (value("qwen2.attention.head_count"), value("qwen2.attention.head_count_kv")) == (4, 2)
    assert value("qwen2.context_length") == 32768
    assert value("qwen2.rope.freq_base") == pytest.approx(1e6)
    assert value("qwen2.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert (value("tokenizer.ggml.model"), value("tokenizer.ggml.pre")) == ("gpt2", "qwen2")

    folder = checkpoints["tied"]
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    added = json.loads((folder / "added_tokens.json").read_text(encoding="utf-8"))
    tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 576
    for token, i in vocab.items():
        assert tokens[i] == token and types[i] == gguf.TokenType.NORMAL
    for token, i in added.items():
        assert tokens[i] == token and types[i] == gguf.TokenType.CONTROL
    for i in range(len(vocab) + len(added), 576):
        assert tokens[i] == f"[PAD{i}]" and types[i] == gguf.TokenType.UNUSED
    assert value("tokenizer.ggml.bos_token_id") == added["<|endoftext|>"]
    assert value("tokenizer.ggml.eos_token_id") == added["<|im_end|>"]
    assert value("tokenizer.ggml.padding_token_id") == added["<|endoftext|>"]
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    assert value("tokenizer.ggml.merges") == merges
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert value("tokenizer.chat_template") == config["chat_template"]


def test_narrow_rows_fall_back_to_f16(tmp_path: Path) -> None:
    # Rows 48 wide do not split into 32-value blocks; ffn_down's rows (96) do.
    folder = write_checkpoint(tmp_path / "ckpt", CheckpointSpec(llm=LlmSpec(hidden=48, heads=4, kv_heads=2, ffn=96)))
    path = _convert(folder, tmp_path / "m.gguf", "q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.ffn_down.weight"] == QType.Q8_0
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == QType.F16
    with LanguageModel(path, n_ctx=64) as lm:
        lm.eval_tokens(lm.tokenize("hello"))
        assert np.isfinite(lm.logits()).all()


# -- tokenizer ----------------------------------------------------------------------------------------------------

def test_tokenization_matches_transformers(ggufs: dict[tuple[str, str], Path]) -> None:
    cases = json.loads((FIXTURES / "tokenizer_cases.json").read_text(encoding="utf-8"))["cases"]
    with LanguageModel(ggufs["tied", "f16"], n_ctx=64) as lm:
        for case in cases:
            assert lm.tokenize(case["text"]) == case["ids"], case["text"]
            assert lm.detokenize(case["ids"], special=True) == case["text"]


# -- LanguageModel behaviour --------------------------------------------------------------------------------------

def test_injected_token_rows_equal_tokens(ggufs: dict[tuple[str, str], Path], refs: dict[str, dict[str, Any]]) -> None:
    path = ggufs["untied", "f16"]
    table = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    embeddings = np.array(table.data, dtype=np.float32).reshape(576, 64)
    ids = refs["untied"]["prefix_ids"].tolist() + refs["untied"]["question_ids"].tolist()
    with LanguageModel(path, n_ctx=128, n_batch=16) as lm:
        lm.eval_tokens(ids)
        as_tokens = lm.logits()
        lm.rewind(0)
        lm.eval_embeddings(np.ascontiguousarray(embeddings[ids]))
        as_rows = lm.logits()
    np.testing.assert_array_equal(as_rows, as_tokens)


def test_rewind_and_reevaluate(ggufs: dict[tuple[str, str], Path], refs: dict[str, dict[str, Any]]) -> None:
    ref = refs["tied"]
    n_prefix, n_rows = len(ref["prefix_ids"]), len(ref["rows"])
    with LanguageModel(ggufs["tied", "f16"], n_ctx=256) as lm:
        first = _prompt_logits(lm, ref)
        assert lm.n_past == n_prefix + n_rows + len(ref["question_ids"])
        lm.eval_tokens(lm.tokenize("A cat."))
        lm.rewind(n_prefix + n_rows)
        with pytest.raises(InferenceError, match="no logits"):
            lm.logits()
        lm.eval_tokens(ref["question_ids"].tolist())
        np.testing.assert_array_equal(lm.logits(), first)
        lm.rewind(0)
        np.testing.assert_array_equal(_prompt_logits(lm, ref), first)


def test_image_markers_in_history(ggufs: dict[tuple[str, str], Path], refs: dict[str, dict[str, Any]]) -> None:
    ref = refs["tied"]
    rows = ref["rows"]
    with LanguageModel(ggufs["tied", "f16"], n_ctx=256, n_batch=8) as lm:
        prefix = ref["prefix_ids"].tolist()
        lm.eval_tokens(prefix)
        ids = lm.eval_embeddings(rows)
        marker = image_marker(rows)
        assert marker < 0 and ids == [marker] * len(rows)
        assert lm.history == prefix + ids
        assert lm.n_past == len(prefix) + len(rows)
        assert image_marker(rows.copy()) == marker
        assert image_marker(rows + np.float32(1e-3)) != marker
        lm.rewind(len(prefix))
        assert lm.eval_embeddings(rows, marker=-7) == [-7] * len(rows)
        assert lm.history[-1] == -7


def test_markers_let_llama_reuse_the_image_prefix(ggufs: dict[tuple[str, str], Path],
                                                  refs: dict[str, dict[str, Any]]) -> None:
    """Llama.generate() compares its prompt with input_ids: a prompt made of ``history`` (markers included) continues
    from the cache, never re-evaluating the image positions (a negative id would make llama_decode fail)."""
    ref = refs["untied"]
    with LanguageModel(ggufs["untied", "f16"], n_ctx=256) as lm:
        _prompt_logits(lm, ref)
        history = lm.history
        tokens = lm._llama.generate(history, temp=0.0)  # type: ignore[union-attr]
        assert [next(tokens) for _ in range(3)] == ref["greedy"][:3].tolist()
        lm.rewind(len(history))
        follow_up = history + lm.tokenize("A cat.<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n")
        next(lm._llama.generate(follow_up, temp=0.0))  # type: ignore[union-attr]
        assert lm.history[: len(follow_up)] == follow_up


def test_bad_inputs_raise_without_crashing(ggufs: dict[tuple[str, str], Path]) -> None:
    rows = np.zeros((4, 64), np.float32)
    with LanguageModel(ggufs["tied", "f16"], n_ctx=32, n_batch=8) as lm:
        assert (lm.n_embd, lm.n_ctx, lm.n_vocab) == (64, 32, 576)
        with pytest.raises(InferenceError, match="no logits"):
            lm.logits()
        lm.eval_tokens([1, 2, 3])
        with pytest.raises(ValueError, match=r"shape \(k > 0, 64\)"):
            lm.eval_embeddings(np.zeros((4, 65), np.float32))
        with pytest.raises(ValueError, match="shape"):
            lm.eval_embeddings(np.zeros((0, 64), np.float32))
        with pytest.raises(ValueError, match="shape"):
            lm.eval_embeddings(np.zeros(64, np.float32))
        with pytest.raises(TypeError, match="float32"):
            lm.eval_embeddings(rows.astype(np.float64))
        with pytest.raises(TypeError, match="numpy array"):
            lm.eval_embeddings(rows.tolist())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="C-contiguous"):
            lm.eval_embeddings(np.asfortranarray(np.zeros((4, 64), np.float32)))
        nan = rows.copy()
        nan[1, 2] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            lm.eval_embeddings(nan)
        with pytest.raises(ValueError, match="negative"):
            lm.eval_embeddings(rows, marker=5)
        with pytest.raises(ContextFullError, match="does not fit"):
            lm.eval_embeddings(np.zeros((30, 64), np.float32))
        with pytest.raises(ContextFullError):
            lm.eval_tokens([1] * 30)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            lm.eval_tokens([576])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            lm.detokenize([-3])
        with pytest.raises(ValueError, match="Cannot keep"):
            lm.rewind(4)
        assert lm.n_past == 3  # nothing above touched the cache
        lm.eval_embeddings(np.zeros((29, 64), np.float32))  # exactly fills the context, in 4 chunks
        assert lm.n_past == 32 and np.isfinite(lm.logits()).all()
    with pytest.raises(InferenceError, match="closed"):
        lm.eval_tokens([1])
    lm.close()  # twice is fine


# -- damaged files ------------------------------------------------------------------------------------------------

def test_damaged_gguf_is_refused_before_llama_cpp(ggufs: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    good = ggufs["tied", "q8_0"].read_bytes()
    check_gguf(ggufs["tied", "q8_0"])
    cases = {
        "missing.gguf": None,
        "garbage.gguf": b"\x00\x01 not a model at all" * 100,
        "empty.gguf": b"",
        "header.gguf": good[:200],
        "truncated.gguf": good[: len(good) // 2],
        "short_by_ten.gguf": good[:-10],
        "magic.gguf": b"GGML" + good[4:],
        "version.gguf": good[:4] + (99).to_bytes(4, "little") + good[8:],
    }
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFolderError):
            LanguageModel(tmp_path / name)
    with pytest.raises(ModelFolderError, match="not a file"):
        LanguageModel(tmp_path)
    with pytest.raises(ModelFolderError, match="truncated"):
        check_gguf(tmp_path / "short_by_ten.gguf")


# -- converter errors and progress --------------------------------------------------------------------------------

def test_unknown_quant(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="f16, q8_0, q4_0, q4_k_m"):
        _convert(checkpoints["tied"], tmp_path / "m.gguf", "q3_k")
    assert not (tmp_path / "m.gguf").exists()


def test_disk_full_during_write(checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(llm_gguf, "_chunks", full)
    with pytest.raises(DiskFullError, match=r"needs about \d+\.\d\d GB"):
        _convert(checkpoints["tied"], tmp_path / "m.gguf", "q8_0")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_found_first(checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: SimpleNamespace(total=10, used=10, free=1000))
    with pytest.raises(DiskFullError, match=r"needs about .* GB .* 0\.00 GB is free"):
        _convert(checkpoints["tied"], tmp_path / "m.gguf", "q4_k_m")
    assert list(tmp_path.iterdir()) == []


def test_progress_and_cancel(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    seen: list[Progress] = []
    _convert(checkpoints["tied"], tmp_path / "m.gguf", "f16", report=Reporter(seen.append))
    n = 2 * 12 + 2
    assert [(p.stage, p.done, p.total) for p in seen] == [("language model", i, n) for i in range(n + 1)]

    cancel = threading.Event()

    def stop_at_five(p: Progress) -> None:
        if p.done == 5:
            cancel.set()

    with pytest.raises(Cancelled):
        _convert(checkpoints["tied"], tmp_path / "c.gguf", "q4_k_m", report=Reporter(stop_at_five, cancel))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
