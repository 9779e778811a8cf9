"""Baselines for ``glimpse bench``: transformers' FastVLM and the plain (untuned) ONNX + llama.cpp pipeline.

Run from the repository root with the oracle environment (torch, timm, transformers 5.x, onnx, onnxruntime,
llama-cpp-python, psutil):

    PYTHONPATH=. /work/oracle-venv/bin/python tests/oracle/bench_baselines.py \
        --checkpoint /tmp/benchconv/fastvlm-0.5b-random --converted /tmp/benchconv/out-1 \
        --sizes 512,1024 --runs 3 --json out.json [--compare --glimpse-python /work/main/.venv/bin/python]

``--checkpoint`` is a FastVLM checkpoint in Apple's layout; ``--converted`` is its Glimpse conversion (the plain
pipeline runs its ``llm.gguf``; its ``vision.onnx`` is only used to check both baselines compute the same model).
It measures, on the very images ``engine.cli.bench`` uses (``sample_image(1000 * size + i)``, run 0 a warm-up left
out of the medians), with 2 threads everywhere and greedy decoding:

- ``transformers``: ``FastVlmForConditionalGeneration`` in float32, eval, ``torch.inference_mode``, the default
  attention (sdpa), every weight copied from the checkpoint (the name map is checked in both directions; the tied
  ``lm_head`` is the only parameter not copied). encode = vision tower + projector (``get_image_features``);
  prefill = one forward of the whole prompt with the image features, cache on, logits of the last position only.
- ``plain``: timm ``fastvit_mci3`` + a torch projector with the same weights, ``torch.onnx.export``-ed as it is at a
  fixed size per size (the legacy TorchScript exporter: the default dynamo one needs onnxscript, which the oracle
  extra does not have), run by onnxruntime with default session options except ``intra_op_num_threads=2``; the
  LLM is ``Llama(llm.gguf, n_ctx=2048, n_threads=2, n_threads_batch=2)`` with defaults otherwise (n_batch 512, no
  flash attention); the image rows go in through one ``llama_batch`` with ``embd`` per ``n_batch`` rows. The whole
  prompt is prefilled each run (no prefix cache, unlike ``glimpse bench``, which keeps the ~20-token system header).

``--compare`` also runs ``glimpse bench`` on ``--converted`` (with ``--glimpse-python``, its settings measured and
cached as in normal use) before and after the baselines, so all three pipelines come from one command on one
machine state, and prints each baseline's time to first token and encode time over the slower Glimpse run.

Per size, medians of: preprocess, encode and prefill ms, TTFT (preprocess + encode + prefill + first greedy token),
follow-up TTFT (``next_turn`` text prefilled onto the cache, then one token), decode tok/s (16 greedy steps, each
feeding the previous token). Each (baseline, size) runs in its own process, so ``peak_rss_mb`` is that process's
peak (model load included) for that size alone; the ONNX export runs in a separate process too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from glimpse.engine.cli.bench import FOLLOW_UP, QUESTION
from glimpse.engine.convert.checkpoint import PROJECTOR_PREFIX, VISION_PREFIX, Checkpoint
from glimpse.engine.runtime.preprocess import preprocess
from glimpse.engine.runtime.prompt import first_turn, next_turn
from glimpse.engine.runtime.tuning_measure import sample_image
from glimpse.engine.system import peak_rss_bytes

THREADS = 2
DECODE_STEPS = 16
IMAGE_TOKEN = 151646  # FastVlmConfig's default image_token_index; only its position matters
PREFIX, _, QUESTION_TEXT = first_turn(QUESTION)
FOLLOW_UP_TEXT = next_turn(FOLLOW_UP)


# -- weights (torch side) ------------------------------------------------------------------------------------------

def read_tensors(folder: Path, names: list[str]):
    """Yield (name, torch tensor) one at a time, floats widened to float32 (bf16 -> f32 is exact)."""
    from safetensors import safe_open

    ckpt = Checkpoint(folder)
    for name in names:
        with safe_open(str(ckpt.info(name).file), "pt") as f:
            t = f.get_tensor(name)
        yield name, t.float() if t.is_floating_point() else t


def timm_name_map(ckpt: Checkpoint) -> dict[str, str]:
    """Apple vision name -> timm fastvit_mci3 name (``head.proj`` left out: FastVLM does not use it)."""
    from tests.oracle.make_vision_fixtures import apple_to_timm, network_stages

    vision = [n[len(VISION_PREFIX):] for n in ckpt.names() if n.startswith(VISION_PREFIX)]
    stage_of = network_stages(vision)
    return {VISION_PREFIX + n: t for n in vision if (t := apple_to_timm(n, stage_of)) is not None}


def load_exactly(model, folder: Path, targets: dict[str, str], tied: set[str] = frozenset()) -> int:
    """Copy checkpoint tensors into ``model`` (target name -> checkpoint name), refusing any key left uncovered."""
    state = model.state_dict()
    missing = set(state) - set(targets) - set(tied)
    unexpected = set(targets) - set(state)
    if missing or unexpected:
        sys.exit(f"weight names do not match: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
    source_to_target = {v: k for k, v in targets.items()}
    for name, value in read_tensors(folder, list(targets.values())):
        dst = state[source_to_target[name]]
        if dst.shape != value.shape:
            sys.exit(f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(dst.shape)}")
        dst.copy_(value)
    return len(targets)


def plain_torch_encoder(folder: Path):
    """timm fastvit_mci3 (inference form) -> row-major tokens -> Linear, GELU(erf), Linear."""
    import timm
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, out: int, hidden: int) -> None:
            super().__init__()
            self.tower = timm.create_model("fastvit_mci3", pretrained=False, inference_mode=True, num_classes=0)
            self.proj = torch.nn.Sequential(torch.nn.Linear(out, hidden), torch.nn.GELU(),
                                            torch.nn.Linear(hidden, hidden))

        def forward(self, x):
            return self.proj(self.tower.forward_features(x).flatten(2).transpose(1, 2))[0]

    ckpt = Checkpoint(folder)
    hidden, out = ckpt.shape(PROJECTOR_PREFIX + "0.weight")
    model = Encoder(out, hidden).eval()
    targets = {"tower." + t: n for n, t in timm_name_map(ckpt).items()}
    targets.update({f"proj.{i}.{p}": f"{PROJECTOR_PREFIX}{i}.{p}" for i in (0, 2) for p in ("weight", "bias")})
    load_exactly(model, folder, targets)
    return model


def transformers_model(folder: Path):
    import torch
    from transformers import FastVlmConfig, FastVlmForConditionalGeneration, Qwen2Config, TimmWrapperConfig

    ckpt = Checkpoint(folder)
    c = ckpt.config
    vision = TimmWrapperConfig(architecture="fastvit_mci3", hidden_size=int(c.get("mm_hidden_size", 3072)),
                               do_pooling=True, global_pool="avg", model_args={"inference_mode": True})
    text = Qwen2Config(
        vocab_size=ckpt.shape("model.embed_tokens.weight")[0], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
        rms_norm_eps=c.get("rms_norm_eps", 1e-6), max_position_embeddings=c.get("max_position_embeddings", 32768),
        rope_parameters={"rope_type": "default", "rope_theta": c.get("rope_theta", 1e6)},
        tie_word_embeddings=bool(c.get("tie_word_embeddings")), use_sliding_window=False)
    config = FastVlmConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                           tie_word_embeddings=text.tie_word_embeddings)
    model = FastVlmForConditionalGeneration(config).to(torch.float32).eval()
    targets = {"model.vision_tower.timm_model." + t: n for n, t in timm_name_map(ckpt).items()}
    targets.update({f"model.multi_modal_projector.linear_{j}.{p}": f"{PROJECTOR_PREFIX}{i}.{p}"
                    for j, i in ((1, 0), (2, 2)) for p in ("weight", "bias")})
    targets.update({"model.language_model." + n[len("model."):]: n for n in ckpt.names()
                    if n.startswith("model.") and not n.startswith(("model.vision_tower.", PROJECTOR_PREFIX))})
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if not tied:
        targets["lm_head.weight"] = "lm_head.weight"
    n = load_exactly(model, folder, targets, tied)
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    return model, n


# -- workers (one process per baseline and size) -------------------------------------------------------------------

def run_export(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    torch.set_flush_denormal(True)  # as Glimpse's own runtimes: denormals cost Intel CPUs about 10x
    model = plain_torch_encoder(args.checkpoint)
    for size in args.sizes:
        path = args.onnx_dir / f"plain_{size}.onnx"
        if not path.exists():
            t = time.perf_counter()
            with torch.no_grad():
                torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
                                  input_names=["pixel_values"], output_names=["image_embeddings"])
            print(f"exported {path.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return {}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def reference_rows(converted: Path, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.add_session_config_entry("session.set_denormal_as_zero", "1")  # as Glimpse's own session
    sess = ort.InferenceSession(str(converted / "vision.onnx"), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: pixels})[0]


class Transformers:
    """FastVlmForConditionalGeneration; the cache is a DynamicCache passed back as ``cache`` (transformers 5.x)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch
        from transformers import AutoTokenizer
        from transformers.utils import logging

        logging.set_verbosity_error()  # the tokenizer is read from a llava_qwen2 folder; its config warnings are noise
        torch.set_num_threads(THREADS)
        # Seeded random weights drive activations into denormals, which Intel CPUs compute about 10x slower
        # (transformers FastVLM-0.5B at 512 px: 10.5 s, 1.1 s flushed); Glimpse's runtimes flush them, so must this.
        torch.set_flush_denormal(True)
        self.torch, self.context = torch, torch.inference_mode()
        self.model, self.loaded_tensors = transformers_model(args.checkpoint)
        tok = AutoTokenizer.from_pretrained(str(args.checkpoint))
        self.ids = [tok(t, add_special_tokens=False)["input_ids"] for t in (PREFIX, QUESTION_TEXT, FOLLOW_UP_TEXT)]
        self.n_img = (args.size // 64) ** 2
        self.prompt = torch.tensor([self.ids[0] + [IMAGE_TOKEN] * self.n_img + self.ids[1]])

    def _forward(self, **kw) -> int:
        out = self.model(**kw, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return int(out.logits[0, -1].argmax())

    def encode(self, pixels: np.ndarray):
        return self.model.model.get_image_features(pixel_values=self.torch.from_numpy(pixels))

    def rows(self, feats) -> np.ndarray:
        return feats.pooler_output[0].numpy()

    def prefill(self, feats) -> int:
        return self._forward(input_ids=self.prompt, mm_encoder_outputs={"image": feats})

    def step(self, tokens: list[int]) -> int:
        return self._forward(input_ids=self.torch.tensor([tokens]), cache=self.cache)


class Plain:
    """The exported encoder in onnxruntime (default options, 2 threads) and llm.gguf in llama-cpp-python defaults."""

    def __init__(self, args: argparse.Namespace) -> None:
        import llama_cpp
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.add_session_config_entry("session.set_denormal_as_zero", "1")  # denormals flushed, as Glimpse does
        self.sess = ort.InferenceSession(str(args.onnx_dir / f"plain_{args.size}.onnx"), so,
                                         providers=["CPUExecutionProvider"])
        self.ll = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(args.converted / "llm.gguf"), n_ctx=2048, n_threads=THREADS,
                                   n_threads_batch=THREADS, verbose=False)
        self.ids = [self.llm.tokenize(t.encode(), add_bos=False, special=True)
                    for t in (PREFIX, QUESTION_TEXT, FOLLOW_UP_TEXT)]
        self.n_img = (args.size // 64) ** 2

    def _greedy(self) -> int:
        logits = self.ll.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.ctypeslib.as_array(logits, shape=(self.llm.n_vocab(),)).argmax())

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {"pixel_values": pixels})[0]

    def rows(self, feats: np.ndarray) -> np.ndarray:
        return feats

    def prefill(self, rows: np.ndarray) -> int:
        llm, ll = self.llm, self.ll
        llm.reset()  # no prefix reuse between runs: every run prefills the whole prompt
        llm.eval(self.ids[0])
        rows = np.ascontiguousarray(rows, np.float32)
        batch = ll.llama_batch_init(llm.n_batch, rows.shape[1], 1)
        try:
            for r0 in range(0, rows.shape[0], llm.n_batch):  # more rows than n_batch in one decode would abort
                chunk = np.ascontiguousarray(rows[r0:r0 + llm.n_batch])
                ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
                for j in range(chunk.shape[0]):
                    batch.pos[j], batch.n_seq_id[j], batch.seq_id[j][0], batch.logits[j] = llm.n_tokens + j, 1, 0, 0
                batch.n_tokens = chunk.shape[0]
                if ll.llama_decode(llm.ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed on the image rows")
                llm.n_tokens += chunk.shape[0]
        finally:
            ll.llama_batch_free(batch)
        return self.step(self.ids[1])

    def step(self, tokens: list[int]) -> int:
        self.llm.eval(tokens)
        return self._greedy()


def measure(args: argparse.Namespace) -> dict:
    """Run 0 (a warm-up) plus ``--runs`` runs at ``--size``; medians of the measured runs."""
    runner = (Transformers if args.worker == "transformers" else Plain)(args)
    runs, first = [], None
    with getattr(runner, "context", contextlib.nullcontext()):
        for i in range(args.runs + 1):
            image = sample_image(1000 * args.size + i)  # the images engine.cli.bench uses
            t0 = time.perf_counter()
            pixels = preprocess(image, args.size)
            t1 = time.perf_counter()
            feats = runner.encode(pixels)
            t2 = time.perf_counter()
            token = runner.prefill(feats)
            t3 = time.perf_counter()
            for _ in range(DECODE_STEPS):
                token = runner.step([token])
            t4 = time.perf_counter()
            runner.step(runner.ids[2])
            t5 = time.perf_counter()
            runs.append({"preprocess_ms": (t1 - t0) * 1e3, "encode_ms": (t2 - t1) * 1e3, "prefill_ms": (t3 - t2) * 1e3,
                         "ttft_ms": (t3 - t0) * 1e3, "follow_up_ttft_ms": (t5 - t4) * 1e3,
                         "decode_tokens_per_s": DECODE_STEPS / (t4 - t3)})
            if i == 0:
                first = (pixels, np.array(runner.rows(feats)))
    result = {"image_tokens": runner.n_img, "prompt_tokens": len(runner.ids[0]) + len(runner.ids[1]),
              "loaded_tensors": getattr(runner, "loaded_tensors", None)}
    result.update(summarize(runs))
    if args.check:  # after peak RSS is taken: it loads the converted vision.onnx beside the model
        result["cosine_vs_vision_onnx"] = round(cosine(first[1], reference_rows(args.converted, first[0])), 6)
    return result


def summarize(runs: list[dict[str, float]]) -> dict:
    measured = runs[1:]  # run 0 warms caches and allocators
    out = {k: round(statistics.median(r[k] for r in measured), 1) for k in runs[0]}
    out["peak_rss_mb"] = round(peak_rss_bytes() / 1e6)  # before any sanity check loads another model
    out["load_avg_1min"] = round(os.getloadavg()[0], 2)  # above 2 on 2 cores: the figures are contended
    return out


# -- driver --------------------------------------------------------------------------------------------------------

def worker(kind: str, args: argparse.Namespace, size: int | None = None, check: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--checkpoint", str(args.checkpoint),
           "--converted", str(args.converted), "--onnx-dir", str(args.onnx_dir),
           "--sizes", ",".join(map(str, args.sizes)), "--runs", str(args.runs)]
    cmd += ["--size", str(size)] if size else []
    cmd += ["--check"] if check else []
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([*cmd, "--worker-out", f.name], check=True)
        return json.loads(Path(f.name).read_text())


def glimpse_bench(args: argparse.Namespace) -> tuple[dict, dict]:
    """``glimpse bench`` on the converted model in its own process, in the result format of the baselines."""
    cmd = [args.glimpse_python, "-m", "glimpse.engine", "bench", str(args.converted), "--sizes",
           ",".join(map(str, args.sizes)), "--runs", str(args.runs), "--json"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    sizes = {r["size"]: {"encode_ms": r["encode_ms"], "prefill_ms": r["prefill_ms"], "ttft_ms": r["ttft_ms"],
                         "follow_up_ttft_ms": r["follow_up_ttft_ms"], "decode_tokens_per_s": r["decode_tokens_per_s"],
                         "peak_rss_mb": out["peak_rss_mb"], "load_avg_1min": round(os.getloadavg()[0], 2)}
             for r in out["sizes"]}
    return sizes, {"settings": out.get("settings"), "vision_precision": out.get("vision_precision")}


def ratios(report: dict) -> str:
    """Time to first token and encode time of each baseline over Glimpse's slower bracketing run."""
    base = report["baselines"]
    glimpse = [v for k, v in base.items() if k.startswith("glimpse")]
    if not glimpse:
        return ""
    lines = ["| size | baseline | TTFT ratio (baseline / Glimpse) | encode ratio |", "|---|---|---|---|"]
    for size in report["sizes"]:
        slow = max((g[size] for g in glimpse), key=lambda r: r["ttft_ms"])
        for name, sizes in base.items():
            if not name.startswith("glimpse") and size in sizes:
                r = sizes[size]
                lines.append(f"| {size} | {name} | {r['ttft_ms'] / slow['ttft_ms']:.2f}x | "
                             f"{r['encode_ms'] / slow['encode_ms']:.2f}x |")
    return "\n".join(lines)


def table(report: dict) -> str:
    lines = ["| baseline | size | encode ms | prefill ms | TTFT ms | follow-up TTFT ms | decode tok/s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for name, sizes in report["baselines"].items():
        for size, r in sizes.items():
            lines.append(f"| {name} | {size} | {r['encode_ms']} | {r['prefill_ms']} | {r['ttft_ms']} | "
                         f"{r['follow_up_ttft_ms']} | {r['decode_tokens_per_s']:.1f} | {r['peak_rss_mb']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--converted", type=Path, default=Path("/tmp/benchconv/out-1"))
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[512, 1024])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--baselines", default="transformers,plain")
    p.add_argument("--onnx-dir", type=Path, default=None, help="keep the plain ONNX exports here (reused if present)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--compare", action="store_true",
                   help="also run `glimpse bench` on --converted before and after the baselines, and print ratios")
    p.add_argument("--glimpse-python", default=sys.executable,
                   help="the Python that runs Glimpse for --compare (the project's own environment)")
    p.add_argument("--worker", choices=("transformers", "export", "plain"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        result = run_export(args) if args.worker == "export" else measure(args)
        args.worker_out.write_text(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        if args.onnx_dir is None:
            args.onnx_dir = Path(tmp)
        args.onnx_dir.mkdir(parents=True, exist_ok=True)
        baselines = args.baselines.split(",")
        report = {"threads": THREADS, "runs": args.runs, "decode_steps": DECODE_STEPS, "sizes": args.sizes,
                  "checkpoint": str(args.checkpoint), "converted": str(args.converted), "baselines": {}}
        if args.compare:
            from glimpse.engine.runtime.tuning import cpu_fingerprint

            cpu = cpu_fingerprint()
            report["cpu"] = {"name": cpu["cpu"], "class": cpu["class"], "features": cpu["features"]}
            print("glimpse (before) ...", file=sys.stderr, flush=True)
            report["baselines"]["glimpse (before)"], report["glimpse"] = glimpse_bench(args)
        if "plain" in baselines:
            worker("export", args)
        for name in baselines:
            report["baselines"][name] = {}
            for k, size in enumerate(args.sizes):
                print(f"{name} {size} px ...", file=sys.stderr, flush=True)
                report["baselines"][name][size] = worker(name, args, size, check=k == 0)
        if args.compare:
            print("glimpse (after) ...", file=sys.stderr, flush=True)
            report["baselines"]["glimpse (after)"], _ = glimpse_bench(args)
    if "cpu" in report:
        print(f"CPU: {report['cpu']['name']} ({report['cpu']['class']}); Glimpse settings: {report['glimpse']}")
    print(table(report))
    print(ratios(report))
    # glimpse bench's rows do not count tokens; only the baselines' workers do.
    counts = {(r["prompt_tokens"], r["image_tokens"]) for sizes in report["baselines"].values()
              for r in sizes.values() if "prompt_tokens" in r and "image_tokens" in r}
    if len({c[0] for c in counts}) > 1:
        print(f"WARNING: the baselines tokenized the prompt differently: {sorted(counts)}")
    for name, sizes in report["baselines"].items():
        cos = [r["cosine_vs_vision_onnx"] for r in sizes.values() if "cosine_vs_vision_onnx" in r]
        print(f"{name}: image rows vs the converted vision.onnx, cosine {cos}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
