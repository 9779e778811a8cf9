"""``glimpse ask``, ``glimpse caption`` and ``glimpse bench``: the engine from the command line."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import threading
from typing import Any

from glimpse.engine.errors import InputError
from glimpse.engine.runtime.types import Answer, Restart


def _status(text: str, done: int, total: int) -> None:
    """First-run tuning is visible: one line per measuring step on stderr, so stdout stays the answer (or JSON)."""
    if done == 0 and text.startswith("Checking llama.cpp's kernels"):  # the kernel canary (its own steps)
        print("glimpse: checking llama.cpp's kernels on this CPU (once)", file=sys.stderr, flush=True)
    elif done == 0:
        print("glimpse: measuring the fastest settings for this model on this CPU (once; "
              "`glimpse bench --tune` measures again)", file=sys.stderr, flush=True)
    print(f"  [{min(done + 1, total)}/{total}] {text}", file=sys.stderr, flush=True)


def _notice(text: str) -> None:
    """The model's process stopped: one sentence on stderr (the answer on stdout starts again after it)."""
    print(f"glimpse: {text}", file=sys.stderr, flush=True)


def in_process() -> bool:
    """GLIMPSE_RUNNER=0 runs the model inside this process (for debugging with native tools; a crash then ends the
    command). By default it runs in a runner process of its own (engine/runner/)."""
    return os.environ.get("GLIMPSE_RUNNER", "1") == "0"


def _load(args: argparse.Namespace) -> Any:
    retune = getattr(args, "tune", False)
    model: Any
    if getattr(args, "in_process", False) or in_process():
        # Start-up: the runtime takes 0.3-0.8 s to import (onnxruntime, llama.cpp; -X importtime); only a command
        # that loads a model in this process pays it.
        from glimpse.engine.runtime.model import load_model  # noqa: PLC0415

        model = load_model(args.model, threads=args.threads, n_ctx=args.n_ctx, retune=retune, status=_status,
                           device=args.device)
    else:
        # Start-up: as above, the client part (numpy, Pillow) only for commands that load a model.
        from glimpse.engine.runner import RunnerModel  # noqa: PLC0415

        model = RunnerModel(args.model, threads=args.threads, n_ctx=args.n_ctx, retune=retune, status=_status,
                            on_notice=_notice, device=args.device)
    _say_devices(model, args.device)
    return model


def _say_devices(model: Any, device: str) -> None:
    """Where each part runs, on stderr, when a GPU was asked for or chosen (with auto, the one sentence that says
    why the GPU is not used)."""
    if device == "cpu":
        return
    why = model.gpu_not_used
    print(f"glimpse: {model.devices}" + (f". {why}" if why else ""), file=sys.stderr, flush=True)


def _sizes(text: str) -> list[int]:
    # Start-up: Pillow and the preprocessing module add about 0.1 s to every `glimpse` command (-X importtime).
    from glimpse.engine.runtime.preprocess import check_size  # noqa: PLC0415

    try:
        return [check_size(int(s)) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"Sizes '{text}' are not a comma-separated list of numbers.",
                         "Write them like 512,768,1024.") from None


def _cmd_ask(args: argparse.Namespace) -> int:
    from glimpse.engine.runtime.preprocess import check_size, load_image, parse_grid  # noqa: PLC0415 - as in _sizes

    tiles = parse_grid(args.tiles) if args.tiles else None
    if args.size is not None:
        check_size(args.size)
    image = load_image(args.image)  # fail on a bad image before the model loads
    if not args.question.strip():
        raise InputError("The question is empty.", "Put the question in quotes after the image.")
    with _load(args) as model:
        answer: Answer | None = None
        wrote = False
        for item in model.stream(image, args.question, size=args.size, tiles=tiles, max_tokens=args.max_tokens,
                                 temperature=args.temperature, seed=args.seed):
            if isinstance(item, Answer):
                answer = item
            elif isinstance(item, Restart):  # the notice is on stderr; the answer starts again on a new line
                if wrote:
                    print(flush=True)
                wrote = False
            elif not args.json:
                sys.stdout.write(item)
                sys.stdout.flush()
                wrote = True
        assert answer is not None
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False))
    else:
        print()
        t = answer.timings
        print(f"[{t.image_tokens} image tokens, encode {t.encode_ms:.0f} ms, time to first token "
              f"{t.ttft_ms:.0f} ms, {t.decode_tokens_per_s:.1f} tokens/s, {answer.finish_reason}]", file=sys.stderr)
        for note in answer.notes:
            print(f"[{note}]", file=sys.stderr)
    return 0


def _cmd_caption(args: argparse.Namespace) -> int:
    from glimpse.engine.runtime.caption import caption_stream, open_source  # noqa: PLC0415 - see _load

    if args.count is not None and args.count < 1:
        raise InputError(f"--count must be 1 or more, not {args.count}.")
    if args.size is not None:
        _sizes(str(args.size))
    source = open_source(args.source)
    cancel = threading.Event()
    made = 0
    try:
        with _load(args) as model:
            for cap in caption_stream(model, source, every=args.every, size=args.size or 512, prompt=args.prompt,
                                      count=args.count, cancel=cancel):
                made += 1
                stamp = dt.datetime.fromtimestamp(cap.frame_time).astimezone()
                if args.jsonl:
                    print(json.dumps({"time": stamp.isoformat(timespec="milliseconds"), "frame": cap.frame_index,
                                      "text": cap.text, "ttft_ms": round(cap.answer.timings.ttft_ms, 1),
                                      "skipped_unchanged": cap.skipped_unchanged,
                                      "dropped_frames": cap.dropped_frames}, ensure_ascii=False), flush=True)
                else:
                    print(f"[{stamp.strftime('%H:%M:%S')}] {cap.text}", flush=True)
    except KeyboardInterrupt:
        cancel.set()
        print(f"glimpse: stopped after {made} caption(s).", file=sys.stderr)
    finally:
        source.close()
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from glimpse.engine.cli.bench import format_table, format_tuning, run_bench  # noqa: PLC0415 - see _load

    sizes = _sizes(args.sizes)
    if args.runs < 1:
        raise InputError(f"--runs must be 1 or more, not {args.runs}.")
    if args.captions < 0:
        raise InputError(f"--captions must be 0 or more, not {args.captions}.")
    with _load(args) as model:
        if args.tune_only:
            print(f"{model.name}: {model.settings.describe()}")
            if model.tuning_report:
                print(format_tuning(model.tuning_report))
            return 0
        report = run_bench(model, sizes, args.runs, captions=args.captions)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder, or the name of an installed model (e.g. fastvlm-0.5b)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context window in positions (default 4096)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where the language model runs: auto (the GPU where its check passed, else the CPU), cpu, "
                        "or gpu (llama.cpp's Vulkan backend; an error when there is no usable GPU)")


def register(sub: Any) -> None:
    p = sub.add_parser("ask", help="answer a question about an image, streaming the answer")
    _model_args(p)
    p.add_argument("image", help="image file")
    p.add_argument("question", help="the question, in quotes")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, default=None, help="encoder input side, a multiple of 64 (256-2048)")
    size.add_argument("--tiles", default=None, metavar="RxC",
                      help="a global view plus an R x C grid of tiles (big screenshots, documents)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object with text, token ids and timings")
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("caption", help="live captions of a camera, a video file or the screen (Ctrl-C stops)")
    _model_args(p)
    p.add_argument("--source", required=True, help="camera index (0), a video file, or 'screen'")
    p.add_argument("--every", type=float, default=0.0, help="seconds between captions (0: back to back)")
    p.add_argument("--size", type=int, default=None, help="encoder input side (default 512)")
    p.add_argument("--prompt", default=None, help="what to ask about each frame")
    p.add_argument("--count", type=int, default=None, help="stop after this many captions")
    p.add_argument("--jsonl", action="store_true", help="one JSON object per caption")
    p.set_defaults(func=_cmd_caption)

    p = sub.add_parser("bench", help="measure time to first token, encode, prefill, decode and memory")
    _model_args(p)
    p.add_argument("--sizes", default="512,768,1024")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--captions", type=int, default=0, metavar="N",
                   help="also caption N distinct frames back to back at 512 px (20 tokens each) and report "
                        "captions per second")
    p.add_argument("--tune", action="store_true",
                   help="measure this CPU's fastest settings for the model again (they are cached per CPU and model)")
    p.add_argument("--tune-only", action="store_true", help="print the settings (measured now unless cached) and stop")
    p.add_argument("--in-process", action="store_true",
                   help="run the model inside this process instead of its runner process (for debugging; "
                        "python -m tools.bench_runner measures what the runner costs)")
    p.set_defaults(func=_cmd_bench)
