"""Reference outputs of the Qwen2 language model and tokenizer, from transformers, for tests/engine/test_llm_gguf.py.

Run from the repository root with the oracle environment (torch + transformers, see pyproject's ``oracle`` extra):

    PYTHONPATH=. /path/to/oracle-venv/bin/python tests/oracle/make_llm_fixtures.py

It writes random checkpoints with ``engine.convert.synthetic`` (fixed specs and seeds, recorded in the fixtures so
the test can rebuild the very same weights without torch), loads their language model into ``Qwen2ForCausalLM`` in
float32 (the bf16 weights are exact in float32), and saves:

- ``tests/fixtures/llm_tied.npz`` and ``llm_untied.npz``: the prompt (prefix token ids, a block of "image rows",
  question token ids), the logits after its last position, and 8 greedy tokens with the margin between the best and
  second-best logit at each step;
- ``tests/fixtures/tokenizer_cases.json``: the Hugging Face tokenizer's ids for a set of strings.

Regenerate them whenever engine/convert/synthetic.py changes what it writes (the test compares a weight fingerprint).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from glimpse.engine.convert.checkpoint import Checkpoint, LlmGeometry
from glimpse.engine.convert.synthetic import CheckpointSpec, LlmSpec, write_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

PREFIX = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
QUESTION = "\nWhat is in this image? Describe the scene in one sentence.<|im_end|>\n<|im_start|>assistant\n"
IMAGE_ROWS = 16
ROWS_SEED = 1234
GREEDY_STEPS = 8

# name -> (LlmSpec, checkpoint seed)
VARIANTS: dict[str, tuple[LlmSpec, int]] = {
    "tied": (LlmSpec(tied=True), 0),
    "untied": (LlmSpec(tied=False), 1),
}

TOKENIZER_CASES = [
    "The quick brown fox jumps over the lazy dog.",
    "What is in this image? Describe the scene in one sentence.",
    "I've been told he's there, 'RE you sure? We'Ve a'lL",
    "这是一张照片。图片里有一只猫。请描述这个场景。",
    "日本語のテキストです。これは猫の写真です。カタカナ",
    "한국어 텍스트, العربية, Ελληνικά, café naïve façade",
    "Emoji: 😀 🐱 👍🏽 ❤️ 👨‍👩‍👧 🏳️‍🌈",
    'def main():\n    return print("hello world")  # code with    spaces\n\tand tabs\n',
    "for (int i = 0; i < n; ++i) { x[i] = y[i] * 2; }",
    "numbers 12345 67890, 3.14159 and 1,000,000",
    "a  b   c    d\n\n\n  \t\t x   \n",
    "   leading and trailing   ",
    "\n",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    "text<|endoftext|>more<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|><|endoftext|>",
    "not special: <|im_start and im_end|> <|unknown|>",
]


def fingerprint(ckpt: Checkpoint) -> list[float]:
    """A few float64 sums that change whenever the synthetic language-model weights change."""
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"]
    if ckpt.config.get("tie_word_embeddings") is False:
        names.append("lm_head.weight")
    return [float(ckpt.tensor(n).astype(np.float64).sum()) for n in names]


def build_model(ckpt: Checkpoint, geo: LlmGeometry) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=geo.vocab_rows, hidden_size=geo.hidden, intermediate_size=geo.ffn,
        num_hidden_layers=geo.layers, num_attention_heads=geo.heads, num_key_value_heads=geo.kv_heads,
        max_position_embeddings=geo.context_length, rms_norm_eps=geo.rms_eps,
        rope_parameters={"rope_type": "default", "rope_theta": geo.rope_theta},
        tie_word_embeddings=geo.tied_embeddings, hidden_act="silu", use_sliding_window=False,
        attn_implementation="eager", torch_dtype=torch.float32,
    )
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    names = [n for n in geo.expected_shapes() if not n.startswith("model.mm_projector.")]
    state = {n: torch.from_numpy(ckpt.tensor(n)) for n in names}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = {"lm_head.weight"} if geo.tied_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        sys.exit(f"weight names do not match Qwen2ForCausalLM: missing {missing}, unexpected {unexpected}")
    if geo.tied_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def ids_of(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def reference(folder: Path, tok: Any) -> dict[str, np.ndarray]:
    ckpt = Checkpoint(folder)
    geo = LlmGeometry.from_checkpoint(ckpt)
    model = build_model(ckpt, geo)
    prefix, question = ids_of(tok, PREFIX), ids_of(tok, QUESTION)
    rows = (0.5 * np.random.default_rng(ROWS_SEED).standard_normal((IMAGE_ROWS, geo.hidden))).astype(np.float32)

    embed = model.get_input_embeddings()
    inputs = torch.cat([embed(torch.tensor(prefix)), torch.from_numpy(rows), embed(torch.tensor(question))])
    first = model(inputs_embeds=inputs[None]).logits[0, -1]
    greedy, margins = [], []
    logits = first
    for _ in range(GREEDY_STEPS):
        # Recomputing the whole (short) sequence each step keeps this independent of the cache API's renames.
        top2 = torch.topk(logits, 2).values
        token = int(torch.argmax(logits))
        greedy.append(token)
        margins.append(float(top2[0] - top2[1]))
        inputs = torch.cat([inputs, embed(torch.tensor([token]))])
        logits = model(inputs_embeds=inputs[None]).logits[0, -1]
    return {
        "prefix_ids": np.array(prefix, np.int32),
        "question_ids": np.array(question, np.int32),
        "rows": rows,
        "logits": first.numpy().astype(np.float32),
        "greedy": np.array(greedy, np.int32),
        "margins": np.array(margins, np.float32),
        "fingerprint": np.array(fingerprint(ckpt), np.float64),
    }


def main() -> None:
    torch.manual_seed(0)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (llm, seed) in VARIANTS.items():
            folder = write_checkpoint(Path(tmp) / name, CheckpointSpec(llm=llm, seed=seed))
            tok = AutoTokenizer.from_pretrained(str(folder))
            data = reference(folder, tok)
            spec = {"hidden": llm.hidden, "layers": llm.layers, "heads": llm.heads, "kv_heads": llm.kv_heads,
                    "ffn": llm.ffn, "tied": llm.tied, "merges": llm.merges, "seed": seed}
            out = FIXTURES / f"llm_{name}.npz"
            np.savez_compressed(out, spec=np.array(json.dumps(spec)), **data)
            print(f"{out.name}: {out.stat().st_size} bytes, greedy {data['greedy'].tolist()}, "
                  f"min margin {data['margins'].min():.3f}")
            if name == "tied":
                cases = [{"text": t, "ids": ids_of(tok, t)} for t in TOKENIZER_CASES]
                meta = {"tokenizer": f"{type(tok).__name__} (transformers), from engine.convert.synthetic's files",
                        "spec": spec, "cases": cases}
                path = FIXTURES / "tokenizer_cases.json"
                path.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
                print(f"{path.name}: {len(cases)} cases")


if __name__ == "__main__":
    main()
