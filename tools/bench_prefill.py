"""Benchmark: llama.cpp's options for the image rows' prefill, each against a reference's answers.

    python -m tools.bench_prefill REF_MODEL [CANDIDATE_MODEL ...] [--sizes 512,1024] [--runs 3] [--options]
                                  [--extra-bufts]

REF_MODEL is a converted model folder whose language model is the reference (convert with ``--quant f16``); each
CANDIDATE_MODEL is the same checkpoint converted with another ``--quant``. The image rows come from REF_MODEL's
vision encoder on one synthetic photo-like picture per size, so every language model reads exactly the same rows.
For each language model (and, with ``--options``, each of llama.cpp's prefill options on the first candidate):

- prefill time of the system prompt, the image rows and the question (median of ``--runs`` after a warm-up), and
  decode speed;
- fidelity against the reference: the reference answers greedily (``answer_gate.ANSWER_TOKENS`` tokens); the
  candidate is teacher-forced on that answer, and the mean and worst KL divergence and the top-1 agreement are
  reported (the same figures as the int8 answer gate), plus the cosine of the first answer position's logits.

Prints a Markdown table and, with ``--json FILE``, writes the figures there. Timings are only comparable within one
run of this command: run it on a quiet machine and note ``lscpu``'s flags beside the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.engine.convert import answer_gate as ag
from glimpse.engine.runtime.llm import LanguageModel
from glimpse.engine.runtime.preprocess import preprocess
from glimpse.engine.runtime.prompt import first_turn
from glimpse.engine.runtime.tuning import cpu_fingerprint
from glimpse.engine.runtime.tuning_measure import sample_image
from glimpse.engine.runtime.vision import VisionEncoder, flush_denormals


@dataclass(frozen=True)
class Candidate:
    label: str
    gguf: Path
    options: dict[str, Any]


def _rows(model: Path, views: list[ag.GateView]) -> dict[str, np.ndarray]:
    encoder = VisionEncoder(model / "vision.onnx", cache=False)
    return {v.key: encoder.encode(preprocess(sample_image(7), v.size)) for v in views}


def _prefill_ms(lm: LanguageModel, head: list[int], rows: np.ndarray, tail: list[int]) -> float:
    lm.rewind(0)
    started = time.perf_counter()
    lm.eval_tokens(head)
    lm.eval_embeddings(np.ascontiguousarray(rows, dtype=np.float32))
    lm.eval_tokens(tail)
    return (time.perf_counter() - started) * 1e3


def _decode_tok_s(lm: LanguageModel, tokens: int = 24) -> float:
    token = int(np.argmax(lm.logits()))
    started = time.perf_counter()
    for _ in range(tokens):
        lm.eval_tokens([token])
        token = int(np.argmax(lm.logits()))
    return tokens / (time.perf_counter() - started)


first_logits: dict[str, np.ndarray] = {}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b))


def measure(candidate: Candidate, rows: dict[str, np.ndarray], views: list[ag.GateView], runs: int,
            references: dict[str, ag.Reference] | None) -> tuple[dict[str, Any], dict[str, ag.Reference]]:
    longest = max(r.shape[0] for r in rows.values())
    with LanguageModel(candidate.gguf, n_ctx=longest + 256, **candidate.options) as lm:
        head = lm.tokenize(str(first_turn("")[0]))
        out: dict[str, Any] = {"label": candidate.label, "options": candidate.options, "sizes": {}}
        for view in views:
            tail = lm.tokenize(str(first_turn(view.question)[2]))
            times = [_prefill_ms(lm, head, rows[view.key], tail) for _ in range(runs + 1)][1:]
            out["sizes"][view.size] = {"prefill_ms": round(statistics.median(times), 1),
                                       "prefill_ms_range": [round(min(times), 1), round(max(times), 1)],
                                       "decode_tok_s": round(_decode_tok_s(lm), 1)}
        if references is None:
            references = ag.reference_answers(lm, rows, views)
            for view in views:
                ag._prefill(lm, head, rows[view.key], references[view.key].tail)
                first_logits[view.key] = lm.logits().astype(np.float64)
            return out, references
        figures = ag.compare(lm, references, rows, views, ag.GateThresholds())
        out["fidelity"] = {"mean_kl": round(figures.mean_kl, 5), "worst_kl": round(figures.worst_kl, 4),
                           "top1": round(figures.top1, 4), "positions": figures.positions}
        # Cosine of the raw next-token logits at the first answer position, as llama.cpp's quant checks give it.
        cosines = []
        for view in views:
            ag._prefill(lm, head, rows[view.key], references[view.key].tail)
            cosines.append(_cosine(first_logits[view.key], lm.logits()))
        out["fidelity"]["logits_cosine"] = round(min(cosines), 6)
        return out, references


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path, help="model folder converted with --quant f16")
    parser.add_argument("candidates", type=Path, nargs="*", help="the same checkpoint, other --quant")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--options", action="store_true",
                        help="also try n_ubatch 128/256/512 and flash attention on the first candidate")
    parser.add_argument("--extra-bufts", action="store_true",
                        help="run every language model with llama.cpp's extra buffer types on (AMX, repacked weights) "
                             "and off, instead of what the kernel canary proved")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    flush_denormals()  # as the runner does, and as every baseline compared with does
    sizes = [int(s) for s in args.sizes.split(",")]
    views = [ag.GateView(Path("sample.png"), s, ag.PHOTO_QUESTION) for s in sizes]
    rows = _rows(args.reference, views)
    base = {"n_threads": args.threads}
    candidates = [Candidate(f"{args.reference.name} (reference)", args.reference / "llm.gguf", base)]
    candidates += [Candidate(c.name, c / "llm.gguf", base) for c in args.candidates]
    if args.options and args.candidates:
        first = args.candidates[0]
        for ub in (128, 256):
            candidates.append(Candidate(f"{first.name}, n_ubatch {ub}", first / "llm.gguf", {**base, "n_ubatch": ub}))
        candidates.append(Candidate(f"{first.name}, flash attention", first / "llm.gguf",
                                    {**base, "flash_attn": True}))
    if args.extra_bufts:
        candidates = [Candidate(f"{c.label}, extra buffer types {'on' if on else 'off'}", c.gguf,
                                {**c.options, "extra_bufts": on}) for c in candidates for on in (True, False)]
    results = []
    references: dict[str, ag.Reference] | None = None
    for candidate in candidates:
        result, references = measure(candidate, rows, views, args.runs, references)
        results.append(result)
        print(json.dumps(result), file=sys.stderr)
    fingerprint = cpu_fingerprint()
    cpu = f"{fingerprint['cpu']} ({fingerprint['class']}), {fingerprint['logical']} CPUs"
    report = {"cpu": cpu, "load_average": os.getloadavg(), "results": results}
    lines = [f"CPU: {report['cpu']}; load average {', '.join(f'{x:.2f}' for x in report['load_average'])}",
             "| language model | size | prefill ms | decode tok/s | mean KL | worst KL | top-1 | logits cosine |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        fid = r.get("fidelity", {})
        for size, s in r["sizes"].items():
            lines.append(f"| {r['label']} | {size} | {s['prefill_ms']} | {s['decode_tok_s']} | "
                         f"{fid.get('mean_kl', 'reference')} | {fid.get('worst_kl', '')} | {fid.get('top1', '')} | "
                         f"{fid.get('logits_cosine', '')} |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
