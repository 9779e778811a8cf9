"""Write the Qwen2 language model of a FastVLM checkpoint as a GGUF file that llama.cpp loads, with no PyTorch.

The file carries the same metadata, tensor names and tokenizer that llama.cpp's own ``convert_hf_to_gguf.py`` writes
for a ``Qwen2ForCausalLM``, so llama.cpp treats it as an ordinary Qwen2 model. The vision
tower and the projector stay out: they run in ONNX Runtime and their output rows are fed to llama.cpp as embeddings.

Tensors are streamed: the header is written from shapes alone, then each tensor is read, converted in blocks of rows
and appended, so the peak memory is one float32 tensor however large the model.

Weight types per ``quant``:

- ``f16``: every matrix F16.
- ``q8_0``: every matrix Q8_0 (numpy, ``gguf.quants``), as the reference converter's ``--outtype q8_0``.
- ``q4_0``: matrices Q4_0, except the output projection (``output``, or ``token_embd`` when it doubles as the
  output because the embeddings are tied), which is Q8_0. llama-quantize keeps that matrix at Q6_K for the same
  reason (it is the most sensitive to rounding), but gguf-py cannot write K-quants.
- ``q4_k_m``: an F16 file is written next to the output and turned into Q4_K_M by ``llama_model_quantize``;
  llama.cpp itself demotes matrices whose rows are not a multiple of 256 wide (Q4_K -> Q5_0, Q6_K -> Q8_0).

Vectors (norms, biases) are always F32. A matrix whose rows are not a multiple of 32 wide cannot be stored as
Q8_0 or Q4_0 and is written as F16 instead, as the reference converter does.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as QType

from glimpse.engine.convert.checkpoint import Checkpoint, LlmGeometry
from glimpse.engine.errors import CheckpointError, ConversionError, DiskFullError
from glimpse.engine.limits import load_json, read_bounded
from glimpse.engine.progress import Reporter
from glimpse.engine.runtime.llm import route_llama_logs

QUANTS = ("f16", "q8_0", "q4_0", "q4_k_m")
ARCH = "qwen2"
TOKENIZER_PRE = "qwen2"
STAGE = "language model"

_FILE_TYPES = {
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
}
_MATRIX_TYPES = {"f16": QType.F16, "q8_0": QType.Q8_0, "q4_0": QType.Q4_0}
# Rows converted per step: bounds the temporaries of the numpy quantizers, not the tensor read.
_CHUNK_BYTES = 32 << 20

logger = logging.getLogger(__name__)


# -- tensors ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor: where it comes from, its numpy-order shape, storage type and size in the file."""

    source: str
    name: str
    shape: tuple[int, ...]
    qtype: QType

    @property
    def nbytes(self) -> int:
        block, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        count = int(np.prod(self.shape, dtype=np.int64))
        return count // block * type_size


def _name_map(geo: LlmGeometry) -> list[tuple[str, str]]:
    """(checkpoint name, GGUF name) for every language-model tensor, in the order they are written."""
    names = [("model.embed_tokens.weight", "token_embd.weight")]
    per_layer = (
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.q_proj.bias", "attn_q.bias"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.k_proj.bias", "attn_k.bias"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.v_proj.bias", "attn_v.bias"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    )
    for i in range(geo.layers):
        names += [(f"model.layers.{i}.{src}", f"blk.{i}.{dst}") for src, dst in per_layer]
    names.append(("model.norm.weight", "output_norm.weight"))
    # Apple's checkpoints carry lm_head even when tied; llama.cpp reuses token_embd when `output` is absent.
    if not geo.tied_embeddings:
        names.append(("lm_head.weight", "output.weight"))
    return names


def _tensor_type(name: str, shape: tuple[int, ...], quant: str, tied: bool) -> QType:
    if len(shape) < 2 or name.endswith("_norm.weight"):
        return QType.F32
    qtype = _MATRIX_TYPES["f16" if quant == "q4_k_m" else quant]
    if quant == "q4_0" and (name == "output.weight" or (tied and name == "token_embd.weight")):
        qtype = QType.Q8_0
    if shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] != 0:
        logger.info("%s: rows of %d do not fit %s blocks; writing F16", name, shape[-1], qtype.name)
        qtype = QType.F16
    return qtype


def tensor_plan(geo: LlmGeometry, quant: str) -> list[TensorPlan]:
    """Every tensor the GGUF will hold for ``quant`` (for ``q4_k_m``: the intermediate F16 file)."""
    _check_quant(quant)
    shapes = geo.expected_shapes()
    plan = []
    for src, dst in _name_map(geo):
        shape = shapes[src]
        plan.append(TensorPlan(src, dst, shape, _tensor_type(dst, shape, quant, geo.tied_embeddings)))
    return plan


def _check_quant(quant: str) -> None:
    if quant not in QUANTS:
        raise ConversionError(f"Unknown language-model quantization '{quant}'.",
                              f"Choose one of: {', '.join(QUANTS)}.")


def _encode(rows: npt.NDArray[np.float32], qtype: QType) -> npt.NDArray[Any]:
    if qtype == QType.F32:
        return rows
    if qtype == QType.F16:
        return rows.astype(np.float16)
    return gguf.quants.quantize(rows, qtype)


def _chunks(data: npt.NDArray[np.float32], qtype: QType) -> Iterator[npt.NDArray[Any]]:
    """``data`` converted to ``qtype``, a block of rows at a time."""
    if data.ndim < 2:
        yield _encode(data, qtype)
        return
    step = max(1, _CHUNK_BYTES // (4 * data.shape[-1]))
    for r0 in range(0, data.shape[0], step):
        yield np.ascontiguousarray(_encode(data[r0:r0 + step], qtype))


# -- tokenizer --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Vocab:
    """The tokenizer as llama.cpp stores it: one entry per embedding row."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int
    pad_id: int | None
    add_bos: bool | None
    add_eos: bool | None
    chat_template: str | list[dict[str, str]] | None


_TOKENIZER_BYTES = 64 << 20  # Qwen2's tokenizer.json is 7 MB, vocab.json 2.7 MB, merges.txt 1.7 MB
_MAX_TOKEN_CHARS = 4096  # the longest Qwen2 token is 256 bytes; an added token is a short marker
_TOKEN_ID = re.compile(r"[0-9]{1,9}")
_REDOWNLOAD = "Download the checkpoint again."


def _read_json(path: Path) -> Any:
    return load_json(path, f"The tokenizer file {path.name}", CheckpointError, _REDOWNLOAD,
                     max_bytes=_TOKENIZER_BYTES)


def _read_text(path: Path) -> str:
    try:
        data = read_bounded(path, _TOKENIZER_BYTES)
        if data is None:
            raise CheckpointError(f"The tokenizer file {path.name} is larger than {_TOKENIZER_BYTES:,} bytes.",
                                  _REDOWNLOAD)
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"The tokenizer file {path.name} cannot be read ({e}).", _REDOWNLOAD) from e


def _check_token(token: object, where: str) -> str:
    if not isinstance(token, str) or not 0 < len(token) <= _MAX_TOKEN_CHARS or "\x00" in token:
        shown = repr(token)[:60]
        raise CheckpointError(f"{where} has the token {shown}, which is not a non-empty text of at most "
                              f"{_MAX_TOKEN_CHARS} characters without NUL.", _REDOWNLOAD)
    return token


def _check_id(tid: object, where: str, vocab_rows: int) -> int:
    if isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid < vocab_rows:
        raise ConversionError(f"{where} has the token id {str(tid)[:40]}, but the embedding matrix has only "
                              f"{vocab_rows} rows.",
                              "The tokenizer files do not belong to these weights; download the checkpoint again.")
    return tid


def _looks_special(token: str) -> bool:
    # The reference converter's rule for added tokens that are not flagged special (Qwen2's are all <|...|>).
    return (token.startswith("<|") and token.endswith("|>")) or (token.startswith("<｜") and token.endswith("｜>"))


def _token_content(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return str(entry["content"])
    return None


def _read_merges(path: Path) -> list[str]:
    lines = _read_text(path).splitlines()
    merges = []
    for n, line in enumerate(lines):
        if n == 0 and line.startswith("#"):
            continue
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or "\x00" in line:
            raise CheckpointError(f"merges.txt line {n + 1} is not a pair of tokens: {line[:80]!r}.",
                                  "Download the checkpoint again.")
        merges.append(f"{parts[0]} {parts[1]}")
    return merges


def read_vocab(folder: Path, vocab_rows: int, config: Mapping[str, Any]) -> Vocab:
    """Build the GGUF tokenizer from Qwen2's tokenizer files (vocab.json, merges.txt, added tokens, configs).

    Ids without a token (the embedding matrix is padded to a multiple of 64 or 128) become ``[PAD{id}]`` of type
    UNUSED; added tokens are CONTROL when flagged special or shaped like ``<|...|>``, as llama.cpp's converter does.
    """
    vocab = _read_json(folder / "vocab.json")
    if not isinstance(vocab, dict) or not vocab:
        raise CheckpointError("vocab.json is not a mapping of tokens to ids.", _REDOWNLOAD)
    # Every token and id is checked before the id -> token table is built: ids index a list of vocab_rows entries.
    by_id: dict[int, str] = {}
    for tok, tid in vocab.items():
        i = _check_id(tid, "vocab.json", vocab_rows)
        if i in by_id:
            raise CheckpointError(f"vocab.json gives the id {i} to both {by_id[i][:40]!r} and {tok[:40]!r}.",
                                  _REDOWNLOAD)
        by_id[i] = _check_token(tok, "vocab.json")
    tok_config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        loaded = _read_json(folder / "tokenizer_config.json")
        tok_config = loaded if isinstance(loaded, dict) else {}

    # id -> (content, special flag or None when no file says)
    added: dict[int, tuple[str, bool | None]] = {}
    if (folder / "tokenizer.json").is_file():
        tok_json = _read_json(folder / "tokenizer.json")
        entries = tok_json.get("added_tokens", []) if isinstance(tok_json, dict) else []
        if not isinstance(entries, list):
            raise CheckpointError("tokenizer.json's added_tokens is not a list.", _REDOWNLOAD)
        for entry in entries:
            if isinstance(entry, dict) and "id" in entry and "content" in entry:
                tid = _check_id(entry["id"], "tokenizer.json", vocab_rows)
                special = entry.get("special")
                added[tid] = (_check_token(entry["content"], "tokenizer.json"),
                              special if isinstance(special, bool) else None)
    if (folder / "added_tokens.json").is_file():
        extra = _read_json(folder / "added_tokens.json")
        for content, tid in (extra.items() if isinstance(extra, dict) else []):
            i = _check_id(tid, "added_tokens.json", vocab_rows)
            added[i] = (_check_token(content, "added_tokens.json"), added.get(i, (content, None))[1])
    decoder = tok_config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise CheckpointError("tokenizer_config.json's added_tokens_decoder is not a JSON object.", _REDOWNLOAD)
    for key, entry in decoder.items():
        content = _token_content(entry)
        if content is None:
            continue
        if not _TOKEN_ID.fullmatch(key):  # str.isdigit() would accept '²', which int() then refuses
            raise CheckpointError(f"tokenizer_config.json's added_tokens_decoder has the key {key[:20]!r}, which is "
                                  "not a token id.", _REDOWNLOAD)
        i = _check_id(int(key), "tokenizer_config.json", vocab_rows)
        special = entry.get("special") if isinstance(entry, dict) else None
        added[i] = (_check_token(content, "tokenizer_config.json"),
                    special if isinstance(special, bool) else added.get(i, ("", None))[1])

    by_id.update({tid: content for tid, (content, _) in added.items()})
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_rows):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            content, special = added[i]
            tokens.append(content)
            types.append(gguf.TokenType.CONTROL if special or _looks_special(content) else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)

    ids = {tok: i for i, tok in enumerate(tokens)}

    def special_id(kind: str, fallbacks: Sequence[str]) -> int | None:
        # Same precedence as gguf.SpecialVocab: tokenizer_config.json first, then config.json.
        content = _token_content(tok_config.get(f"{kind}_token"))
        if content is not None and content in ids:
            return ids[content]
        value = config.get(f"{kind}_token_id")
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, int) and 0 <= value < vocab_rows:
            return value
        return next((ids[t] for t in fallbacks if t in ids), None)

    bos = special_id("bos", ("<|endoftext|>",))
    eos = special_id("eos", ("<|im_end|>", "<|endoftext|>"))
    if bos is None or eos is None:
        raise ConversionError("The tokenizer defines no beginning- or end-of-text token.",
                              "This does not look like a Qwen2 tokenizer; download the checkpoint again.")
    template = tok_config.get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = _read_text(folder / "chat_template.jinja")
    if not isinstance(template, (str, list)):
        template = None
    add_bos, add_eos = tok_config.get("add_bos_token"), tok_config.get("add_eos_token")
    return Vocab(
        tokens=tokens, types=types, merges=_read_merges(folder / "merges.txt"),
        bos_id=bos, eos_id=eos, pad_id=special_id("pad", ()),
        add_bos=add_bos if isinstance(add_bos, bool) else None,
        add_eos=add_eos if isinstance(add_eos, bool) else None,
        chat_template=template,
    )


# -- writing ----------------------------------------------------------------------------------------------------------

def _add_metadata(w: gguf.GGUFWriter, geo: LlmGeometry, vocab: Vocab, quant: str, name: str) -> None:
    """Keys and order as convert_hf_to_gguf.py writes them for Qwen2ForCausalLM."""
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    total, shared, expert, experts = w.get_total_parameter_count()
    w.add_size_label(gguf.size_label(total, shared, expert, experts))
    w.add_block_count(geo.layers)
    w.add_context_length(geo.context_length)
    w.add_embedding_length(geo.hidden)
    w.add_feed_forward_length(geo.ffn)
    w.add_head_count(geo.heads)
    w.add_head_count_kv(geo.kv_heads)
    w.add_rope_freq_base(geo.rope_theta)
    w.add_layer_norm_rms_eps(geo.rms_eps)
    w.add_file_type(_FILE_TYPES["f16" if quant == "q4_k_m" else quant])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(TOKENIZER_PRE)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(vocab.bos_id)
    w.add_eos_token_id(vocab.eos_id)
    if vocab.pad_id is not None:
        w.add_pad_token_id(vocab.pad_id)
    if vocab.add_bos is not None:
        w.add_add_bos_token(vocab.add_bos)
    if vocab.add_eos is not None:
        w.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)


def planned_bytes(geo: LlmGeometry, quant: str) -> int:
    """Size of the tensor data of the GGUF for ``quant`` (an upper bound for ``q4_k_m``), without the header."""
    plan = tensor_plan(geo, quant)
    return sum(gguf.GGUFWriter.ggml_pad(p.nbytes, gguf.GGUF_DEFAULT_ALIGNMENT) for p in plan)


def _header_bytes(vocab: Vocab) -> int:
    # Each string is stored as an 8-byte length plus its UTF-8 bytes; the rest of the header is far smaller.
    strings = sum(len(s.encode("utf-8")) + 8 for s in (*vocab.tokens, *vocab.merges))
    return strings + 4 * len(vocab.types) + (1 << 20)


def _disk_full(path: Path, needed: int) -> DiskFullError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e9:.2f} GB is free"
    except OSError:
        free = "the free space is unknown"
    return DiskFullError(
        f"Not enough disk space for {path.name}: the language model needs about {needed / 1e9:.2f} GB "
        f"in {path.parent}, and {free}.",
        "Free some space or choose another output folder, then run the conversion again.")


def _write_gguf(ckpt: Checkpoint, geo: LlmGeometry, out_path: Path, quant: str, name: str,
                report: Reporter | None, extra_space: int = 0) -> None:
    plan = tensor_plan(geo, quant)
    vocab = read_vocab(ckpt.folder, geo.vocab_rows, ckpt.config)
    writer = gguf.GGUFWriter(path=None, arch=ARCH)
    for p in plan:
        writer.add_tensor_info(p.name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
    _add_metadata(writer, geo, vocab, quant, name)

    needed = planned_bytes(geo, quant) + _header_bytes(vocab) + extra_space
    try:
        free = shutil.disk_usage(out_path.parent).free
    except OSError:
        free = needed
    if free < needed:
        raise _disk_full(out_path, needed)

    try:
        writer.write_header_to_file(out_path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        fout: BinaryIO = writer.fout[0]
        for i, p in enumerate(plan):
            if report is not None:
                report(STAGE, i, len(plan))
            data = ckpt.tensor(p.source, expect=p.shape)
            writer.write_padding(fout, fout.tell())
            written = 0
            for chunk in _chunks(data, p.qtype):
                fout.write(chunk.data)
                written += chunk.nbytes
            if written != p.nbytes:
                raise ConversionError(f"Tensor {p.name} came out as {written} bytes instead of {p.nbytes}.",
                                      "This is a bug in Glimpse's converter; please report it.")
            writer.write_padding(fout, written)
            del data
        writer.close()
        if report is not None:
            report(STAGE, len(plan), len(plan))
    except OSError as e:
        writer.close()
        out_path.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(out_path, needed) from e
        raise ConversionError(f"Could not write {out_path}: {e.strerror or e}.",
                              "Check the folder is writable, then try again.") from e
    except BaseException:
        writer.close()
        out_path.unlink(missing_ok=True)
        raise


def _quantize_k(src: Path, dst: Path, file_type: int) -> None:
    """Requantize an F16 GGUF with llama.cpp (the only implementation of K-quants)."""
    # Only Q4_K_M needs llama.cpp's quantizer, and llama_cpp takes about 0.5 s to import.
    import llama_cpp  # noqa: PLC0415

    route_llama_logs()  # llama.cpp logs a line per tensor; keep it off stderr
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode("utf-8"), str(dst).encode("utf-8"), params)
    if rc != 0:
        dst.unlink(missing_ok=True)
        raise ConversionError(f"llama.cpp could not quantize the language model (error {rc}).",
                              "Check there is enough disk space, or choose q8_0 or q4_0.")


def write_llm_gguf(ckpt: Checkpoint, geo: LlmGeometry, out_path: Path, *, quant: str = "f16",
                   name: str = "FastVLM", report: Reporter | None = None) -> None:
    """Write the language model of ``ckpt`` (shapes checked against ``geo``) to ``out_path`` as GGUF.

    ``quant`` is one of ``QUANTS``. Reports ("language model", done, total) once per tensor and stops with
    :class:`~engine.errors.Cancelled` when the reporter's cancel event is set. On any failure the partial file is
    removed. Raises DiskFullError (with the space needed) when the disk is or becomes full, ConversionError for an
    unknown ``quant`` or a write that fails otherwise, CheckpointError for unreadable tokenizer files.
    """
    _check_quant(quant)
    out_path = Path(out_path)
    if quant != "q4_k_m":
        _write_gguf(ckpt, geo, out_path, quant, name, report)
        return
    tmp = out_path.with_name(out_path.name + ".f16.tmp")
    try:
        # The K-quant output is at most ~40% of the F16 size; ask for it up front rather than fail half-way.
        _write_gguf(ckpt, geo, tmp, "f16", name, report, extra_space=planned_bytes(geo, "f16") * 2 // 5)
        _quantize_k(tmp, out_path, int(_FILE_TYPES["q4_k_m"]))
    finally:
        tmp.unlink(missing_ok=True)
