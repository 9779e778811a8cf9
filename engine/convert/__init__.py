"""Turn Apple's FastVLM checkpoint into a Glimpse model folder, with no PyTorch.

``convert_checkpoint`` writes everything into a hidden sibling folder and renames it into place only when every
file is written and hashed, so a failed, cancelled or killed run never leaves a folder that looks complete.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from glimpse.engine import durable
from glimpse.engine.convert.checkpoint import Checkpoint, LlmGeometry
from glimpse.engine.errors import ConversionError, DiskFullError, GlimpseError, OutputExistsError
from glimpse.engine.models.leftovers import claim, release
from glimpse.engine.models.model_folder import (
    ATTRIBUTION,
    FORMAT_VERSION,
    LICENSE_FILE,
    LICENSE_URL,
    LLM_FILE,
    MANIFEST,
    NOTICE_FILE,
    VISION_FILE,
    file_entry,
)
from glimpse.engine.progress import ProgressFn, Reporter
from glimpse.engine.runtime.preprocess import PATCH_SIZE
from glimpse.engine.runtime.prompt import TEMPLATE_ID
from glimpse.engine.version import __version__

QUANTS = ("f16", "q8_0", "q4_0", "q4_k_m")
DEFAULT_QUANT = "q8_0"
VISION_WEIGHTS = ("fp16", "fp32")
# fp16 storage halves vision.onnx with no measurable loss (bf16 weights are exact in fp16; see docs/benchmarks.md).
DEFAULT_VISION_WEIGHTS = "fp16"
# "auto" writes int8 (or int8 with its most sensitive nodes in float) only when the answer-level gate shows the
# language model's answers stay float32's on held-out pictures (convert/vision_precision.py), fp32 otherwise.
VISION_PRECISIONS = ("auto", "int8", "fp32")
DEFAULT_VISION_PRECISION = "auto"
DEFAULT_IMAGE_SIZE = 1024
_LICENSE_CANDIDATES = ("LICENSE_MODEL", "LICENSE", "LICENSE.md", "LICENSE.txt", "license.txt", "LICENSE_MODEL.txt")
# Approximate bytes per weight in the written GGUF, for the disk-space check (block scales included).
_BYTES_PER_WEIGHT = {"f16": 2.0, "q8_0": 1.07, "q4_0": 0.57, "q4_k_m": 0.62}


def _llm_params(geo: LlmGeometry) -> int:
    h, kv = geo.hidden, geo.kv_heads * geo.head_dim
    per_layer = 2 * h * h + 2 * kv * h + 3 * geo.ffn * h
    embeddings = geo.vocab_rows * h * (1 if geo.tied_embeddings else 2)
    return geo.layers * per_layer + embeddings


def _vision_params(ckpt: Checkpoint) -> int:
    total = 0
    for shape in ckpt.vision_tensors().values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def estimate_output_bytes(ckpt: Checkpoint, geo: LlmGeometry, quant: str, vision_weights: str,
                          vision_precision: str = "fp32") -> int:
    """Bytes the conversion needs at its peak: the model folder, plus the temporary F16 file a K-quant is made from
    and, for an int8 encoder, the instrumented copy of the float graph and the int8 graph written beside it."""
    vision_params = _vision_params(ckpt)
    vision = vision_params * (4 if vision_weights == "fp32" else 2)
    if vision_precision != "fp32":
        vision += vision + vision_params  # the calibration probe (a float copy), then the int8 graph (1 byte each)
    llm_params = _llm_params(geo)
    llm = int(llm_params * _BYTES_PER_WEIGHT[quant])
    if quant == "q4_k_m":
        llm += llm_params * 2
    return vision + llm + (1 << 20)


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(
            f"Not enough disk space in {folder}: the model needs about {needed / 1e9:.2f} GB, "
            f"but only {free / 1e9:.2f} GB is free.",
            "Free some space or choose another output folder, then try again.")


def _copy_license(src: Path, out: Path) -> str | None:
    """Copy the checkpoint's model licence (if it carries one) and write the attribution notice."""
    found = next((src / n for n in _LICENSE_CANDIDATES if (src / n).is_file()), None)
    if found is not None:
        shutil.copyfile(found, out / LICENSE_FILE)
    lines = [
        "This folder holds a conversion (ONNX + GGUF) of Apple's FastVLM weights, made by Glimpse.",
        "",
        ATTRIBUTION,
        "",
        "The weights and their derivatives may be used for non-commercial research only, under the terms in "
        + (LICENSE_FILE if found is not None else LICENSE_URL) + ".",
    ]
    (out / NOTICE_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return found.name if found is not None else None


def _os_error(e: OSError, out: Path) -> GlimpseError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"The disk filled up while writing {out}.",
                             "Free some space and run the conversion again; nothing was left half-written.")
    return ConversionError(f"Could not write the model folder {out}: {e.strerror or e}.",
                           "Check the folder is writable, then try again.")


def convert_checkpoint(
    src: str | Path,
    out: str | Path,
    *,
    quant: str = DEFAULT_QUANT,
    force: bool = False,
    vision_weights: str = DEFAULT_VISION_WEIGHTS,
    vision_precision: str = DEFAULT_VISION_PRECISION,
    name: str | None = None,
    source: dict[str, str] | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Convert the checkpoint folder ``src`` into the model folder ``out`` and return ``out``.

    ``quant`` picks the language model's weight type (``QUANTS``); ``vision_weights`` how the ONNX graph stores its
    weights; ``vision_precision`` "auto" quantizes the graph (whole, or with its most sensitive nodes in float) only
    when the converted language model's answers on held-out pictures stay those of float32, and keeps float32
    otherwise; "int8" writes whole-graph int8 whatever the gate says; "fp32" never quantizes. ``source`` is recorded in
    model.json (e.g. repo and revision).
    Raises a GlimpseError subclass with a readable sentence on every expected failure.
    """
    # Start-up: onnx, gguf and onnxruntime's quantizer take 0.75-1.2 s to import (-X importtime); `glimpse --help`,
    # `glimpse models` and the model manager import this module for its constants.
    from glimpse.engine.convert.llm_gguf import write_llm_gguf  # noqa: PLC0415
    from glimpse.engine.convert.vision_graph import build_vision_onnx  # noqa: PLC0415
    from glimpse.engine.convert.vision_precision import choose_vision_precision  # noqa: PLC0415

    src, out = Path(src), Path(out)
    if quant not in QUANTS:
        raise ConversionError(f"Unknown quantization '{quant}'.", f"Choose one of: {', '.join(QUANTS)}.")
    if vision_weights not in VISION_WEIGHTS:
        raise ConversionError(f"Unknown vision weight type '{vision_weights}'.",
                              f"Choose one of: {', '.join(VISION_WEIGHTS)}.")
    if vision_precision not in VISION_PRECISIONS:
        raise ConversionError(f"Unknown vision precision '{vision_precision}'.",
                              f"Choose one of: {', '.join(VISION_PRECISIONS)}.")
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out} already exists.", "Choose another folder, or pass --force to replace it.",
                                gui_hint="Remove it first, then try again.")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ConversionError(f"The output folder {out} is inside the checkpoint folder.",
                              "Choose an output folder outside the checkpoint.")
    report = Reporter(progress, cancel)
    with Checkpoint(src) as ckpt:
        geo = LlmGeometry.from_checkpoint(ckpt)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _os_error(e, out) from e
        _check_space(out.parent, estimate_output_bytes(ckpt, geo, quant, vision_weights, vision_precision))
        tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            claim(tmp)  # host, process id and start time: a killed conversion's folder is reclaimed at once
            vision = build_vision_onnx(ckpt, tmp / VISION_FILE, weight_dtype=vision_weights, report=report)
            write_llm_gguf(ckpt, geo, tmp / LLM_FILE, quant=quant, name=name or src.name, report=report)
            # After the language model: the gate judges quantized image rows by the answers it gives.
            precision = choose_vision_precision(tmp / VISION_FILE, tmp / LLM_FILE, vision_precision, report=report)
            license_name = _copy_license(src, tmp)
            report("checking", 0, 1)
            manifest = _manifest(name or src.name, geo, vision, quant=quant, vision_weights=vision_weights,
                                 src=src, source=source, license_name=license_name, folder=tmp,
                                 precision=precision)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            report("checking", 1, 1)
            release(tmp)
            _move_into_place(tmp, out)
        except OSError as e:
            raise _os_error(e, out) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _manifest(name: str, geo: LlmGeometry, vision: Any, *, quant: str, vision_weights: str, src: Path,
              source: dict[str, str] | None, license_name: str | None, folder: Path,
              precision: dict[str, Any] | None = None) -> dict[str, Any]:
    files = {n: file_entry(folder / n) for n in (VISION_FILE, LLM_FILE)}
    for extra in (LICENSE_FILE, NOTICE_FILE):
        if (folder / extra).is_file():
            files[extra] = file_entry(folder / extra)
    vision_info = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(vision).items()}
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "template": TEMPLATE_ID,
        "vision": {
            "default_image_size": DEFAULT_IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "input": "pixel_values",
            "output": "image_embeddings",
            "weights": vision_weights,
            "precision": "fp32",
            **(precision or {}),
            **vision_info,
        },
        "llm": {
            "quant": quant,
            "hidden": geo.hidden,
            "layers": geo.layers,
            "heads": geo.heads,
            "kv_heads": geo.kv_heads,
            "ffn": geo.ffn,
            "vocab_rows": geo.vocab_rows,
            "context_length": geo.context_length,
            "tied_embeddings": geo.tied_embeddings,
        },
        "files": files,
        "source": {
            "path": str(src.resolve()),
            "license_file": license_name,
            **(source or {}),
        },
        "converter": {"glimpse": __version__, "converted_at": _dt.datetime.now(_dt.timezone.utc).isoformat()},
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temporary folder to ``out``, replacing an existing one only after success."""
    durable.publish_folder(tmp, out, aside=out.parent / f".{out.name}.old-{os.getpid()}")
