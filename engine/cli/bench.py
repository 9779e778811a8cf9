"""``glimpse bench``: time to first token, encode, prefill, decode speed, follow-ups and peak memory.

Each run asks about a different synthetic photo-like image, so no image is ever served from the cache (the system
header, as in real use, is). Medians are reported; the first run of each size is a warm-up and is not counted.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from glimpse.engine.runner import RunnerModel
from glimpse.engine.runtime.caption import Frame, caption_stream
from glimpse.engine.runtime.model import Answer, Model
from glimpse.engine.runtime.tuning import RuntimeSettings, measured_while_busy
from glimpse.engine.runtime.tuning_measure import sample_image
from glimpse.engine.system import peak_rss_bytes

QUESTION = "Describe the image in detail."
FOLLOW_UP = "What colours stand out?"


@dataclass(frozen=True)
class SizeResult:
    size: int
    runs: int
    image_tokens: int
    preprocess_ms: float
    encode_ms: float
    prefill_ms: float
    ttft_ms: float
    follow_up_ttft_ms: float
    follow_up_prefill_ms: float
    read_ahead_ttft_ms: float  # the first question about a picture the window read while it was typed
    decode_tokens_per_s: float


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else 0.0


def bench_size(model: Model | RunnerModel, size: int, runs: int, max_tokens: int = 32) -> SizeResult:
    answers: list[Answer] = []
    follow_ups: list[Answer] = []
    read_ahead: list[Answer] = []
    for i in range(runs + 1):
        conv = model.conversation(sample_image(1000 * size + i), size=size)
        first = conv.ask(QUESTION, max_tokens=max_tokens)
        follow = conv.ask(FOLLOW_UP, max_tokens=4)
        ahead = model.conversation(sample_image(1000 * size + i + 500), size=size)
        ahead.prepare()  # what the window does while the question is typed
        prepared = ahead.ask(QUESTION, max_tokens=4)
        if i > 0:  # the first run warms caches and allocators
            answers.append(first)
            follow_ups.append(follow)
            read_ahead.append(prepared)
    t = [a.timings for a in answers]
    return SizeResult(
        size=size,
        runs=runs,
        image_tokens=t[0].image_tokens,
        preprocess_ms=_median([x.preprocess_ms for x in t]),
        encode_ms=_median([x.encode_ms for x in t]),
        prefill_ms=_median([x.prefill_ms for x in t]),
        ttft_ms=_median([x.ttft_ms for x in t]),
        follow_up_ttft_ms=_median([f.timings.ttft_ms for f in follow_ups]),
        follow_up_prefill_ms=_median([f.timings.prefill_ms for f in follow_ups]),
        read_ahead_ttft_ms=_median([a.timings.ttft_ms for a in read_ahead]),
        decode_tokens_per_s=_median([x.decode_tokens_per_s for x in t if x.generated_tokens > 1]),
    )


# A caption of about 15 words (what caption mode asks for) is about 20 tokens; random-weight test models never stop
# early, so the budget is what fixes the length.
CAPTION_TOKENS = 20


class _SyntheticFrames:
    """A frame source of distinct 640x480 photo-like frames, read as fast as the model takes them (no frame
    dropped, none unchanged), so captions per second measure the model, not a camera's frame rate."""

    name = "synthetic frames"

    def __init__(self, count: int) -> None:
        self._left = count
        self._index = 0
        self.dropped = 0

    def take(self, timeout: float | None = None) -> Frame | None:
        if self._left <= 0:
            return None
        self._left -= 1
        self._index += 1
        return Frame(sample_image(90_000 + self._index, 640, 480), time.time(), self._index - 1)

    @property
    def ended(self) -> bool:
        return self._left <= 0

    @property
    def error(self) -> str | None:
        return None

    def close(self) -> None:
        self._left = 0


def bench_captions(model: Model | RunnerModel, count: int, size: int = 512,
                   max_tokens: int = CAPTION_TOKENS) -> dict[str, float]:
    """Live captions back to back on ``count`` + 1 distinct frames (the first is a warm-up): captions per second
    from the first caption's end to the last one's, and the median TTFT and seconds per caption."""
    finished: list[float] = []
    answers: list[Answer] = []
    for caption in caption_stream(model, _SyntheticFrames(count + 1), size=size, max_tokens=max_tokens):
        finished.append(time.perf_counter())
        answers.append(caption.answer)
    if len(finished) < 2:
        return {}
    span = finished[-1] - finished[0]
    steady = answers[1:]
    return {"size": size, "captions": len(steady), "tokens_per_caption": max_tokens,
            "captions_per_s": round(len(steady) / span, 3),
            "seconds_per_caption": round(span / len(steady), 3),
            "ttft_ms": _median([a.timings.ttft_ms for a in steady]),
            "encode_ms": _median([a.timings.encode_ms for a in steady]),
            "prefill_ms": _median([a.timings.prefill_ms for a in steady]),
            "decode_tokens_per_s": _median([a.timings.decode_tokens_per_s for a in steady])}


def run_bench(model: Model | RunnerModel, sizes: list[int], runs: int, captions: int = 0) -> dict[str, object]:
    started = time.perf_counter()
    results = [asdict(bench_size(model, s, runs)) for s in sizes]
    caption_result = bench_captions(model, captions) if captions > 0 else None
    return {
        "model": model.name,
        "quant": model.manifest.quant,
        "vision_precision": model.manifest.vision_precision,
        "threads": model.threads,
        "settings": asdict(model.settings),
        "tuning": model.tuning_report,
        "kernels": (model.kernels or None) if isinstance(model, RunnerModel)
        else (model.kernels.describe() if model.kernels is not None else None),
        "devices": model.devices,
        "gpu_driver": model.gpu_driver or None,
        "gpu_not_used": model.gpu_not_used or None,
        "vision_check": model.vision_check or None,
        "sizes": results,
        "captions": caption_result,
        # The model's memory is where it runs: the runner process, or this one.
        "runner": isinstance(model, RunnerModel),
        "peak_rss_mb": round((model.runner_peak_rss_bytes() if isinstance(model, RunnerModel)
                              else peak_rss_bytes()) / 1e6),
        "seconds": round(time.perf_counter() - started, 1),
    }


def format_table(report: dict[str, object]) -> str:
    rows = report["sizes"]
    assert isinstance(rows, list)
    lines = [
        f"{report['model']} ({report['quant']}, vision {report['vision_precision']}, {report['threads']} threads), "
        f"{'runner process' if report.get('runner') else 'in this process'}, peak RSS {report['peak_rss_mb']} MB",
        f"settings: {RuntimeSettings(**settings).describe()}" if isinstance(settings := report.get("settings"), dict)
        else "",
        f"devices: {report['devices']}" + (f"; GPU driver: {report['gpu_driver']}" if report.get("gpu_driver") else "")
        + (f" ({report['gpu_not_used']})" if report.get("gpu_not_used") else "") if report.get("devices") else "",
        f"llama.cpp kernels: {report['kernels']}" if report.get("kernels") else "",
        f"vision provider: {report['vision_check']}" if report.get("vision_check") else "",
        "| size | image tokens | encode ms | prefill ms | TTFT ms | read-ahead TTFT ms | follow-up TTFT ms | "
        "decode tok/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['size']} | {r['image_tokens']} | {r['encode_ms']} | {r['prefill_ms']} | {r['ttft_ms']} | "
              f"{r['read_ahead_ttft_ms']} | {r['follow_up_ttft_ms']} | {r['decode_tokens_per_s']} |" for r in rows]
    captions = report.get("captions")
    if isinstance(captions, dict) and captions:
        lines.append(f"live captions at {captions['size']} px ({captions['tokens_per_caption']} tokens each, "
                     f"{captions['captions']} captions back to back): {captions['captions_per_s']} captions/s, "
                     f"TTFT {captions['ttft_ms']} ms, encode {captions['encode_ms']} ms, prefill "
                     f"{captions['prefill_ms']} ms")
    return "\n".join(lines)


def format_tuning(report: dict[str, Any]) -> str:
    """What the tuning measured, one line per candidate (times are the best of its runs). The report may come from
    a cache file someone edited: anything unexpected in it gives one line saying so."""
    try:
        return _tuning_lines(report)
    except (KeyError, TypeError, AttributeError, ValueError):
        return "(the cached record of the measurement is unreadable; `glimpse bench --tune` measures again)"


def _tuning_lines(report: dict[str, Any]) -> str:
    lines = []
    vision = report.get("vision", {})
    for c in vision.get("candidates", []):
        raced = f" against {c['current_ms']} ms for the choice it raced" if "current_ms" in c else ""
        lines.append(f"encoder {vision.get('size')} px, graph {c['level']}, {c['threads']} threads: {c['ms']} ms{raced}"
                     + ("" if c.get("kept_rows", True) else " (rows outside the fidelity gate: not used)"))
    llm = report.get("llm", {})
    for c in llm.get("candidates", []):
        if "unavailable" in c:
            lines.append(f"n_ubatch {c['n_ubatch']}, flash attention {'on' if c['flash_attn'] else 'off'}, KV "
                         f"{c['kv_type']}: not available ({c['unavailable']})")
            continue
        raced = f" against {c['current_ms']} ms for the choice it raced" if "current_ms" in c else ""
        lines.append(f"prefill {llm.get('rows')} rows + prompt, n_ubatch {c['n_ubatch']}, flash attention "
                     f"{'on' if c['flash_attn'] else 'off'}, KV {c['kv_type']}: {c['ms']} ms{raced}, logits cosine "
                     f"{c['cosine']}" + ("" if c.get("same_answer", True) else " (outside the fidelity gate: not used)")
                     )
    for n, ms in llm.get("decode_ms_per_token", {}).items():
        lines.append(f"decode with {n} threads: {ms} ms/token")
    if "seconds" in report:
        lines.append(f"measured in {report['seconds']} s")
    if measured_while_busy(report):
        lines.append(f"the CPU was busy while measuring (load average up to {max(report['load_average'])} on "
                     f"{report['logical_cpus']} CPUs), so these choices may be noise: the next start on a quiet CPU "
                     "measures again (or run `glimpse bench --tune` then)")
    return "\n".join(lines)
