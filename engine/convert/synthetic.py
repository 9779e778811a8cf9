"""Write small FastVLM checkpoints with random weights, in Apple's exact layout.

Used by the tests, the oracle fixture script and ``glimpse self-test``: the real converter then turns them into a
model folder, so every path from checkpoint to answer runs without downloading anything. Weights are drawn from a
seeded generator, so the same spec always gives the same bytes (the oracle fixtures depend on that).

Nothing here is used to run a real model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from glimpse.engine.convert.checkpoint import INDEX_FILE, PROJECTOR_PREFIX, VISION_PREFIX
from glimpse.engine.convert.toy_merges import TOY_MERGES

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

@dataclass(frozen=True)
class VisionSpec:
    """FastViTHD geometry. The defaults are the released size; tests shrink dims and depths."""

    dims: tuple[int, int, int, int, int] = (96, 192, 384, 768, 1536)
    depths: tuple[int, int, int, int, int] = (2, 12, 24, 4, 2)
    mlp_ratio: int = 4
    # Scales the tower's random conv and linear weights. At 1 the picture's content fades layer by layer (random
    # weights with inference-mode batch norm do not renormalize it) until the rows of different pictures agree to
    # 0.1 %; tests that need answers which depend on the picture raise it.
    weight_gain: float = 1.0

    @property
    def out_dim(self) -> int:
        return 2 * self.dims[-1]

    @classmethod
    def tiny(cls) -> VisionSpec:
        return cls(dims=(16, 32, 64, 64, 64), depths=(1, 1, 1, 1, 1))


@dataclass(frozen=True)
class LlmSpec:
    """Qwen2 geometry. ``vocab_rows`` 0 means: the tokenizer's size rounded up to a multiple of 64."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 128
    vocab_rows: int = 0
    tied: bool = True
    merges: int = 300


@dataclass(frozen=True)
class CheckpointSpec:
    vision: VisionSpec = field(default_factory=VisionSpec.tiny)
    llm: LlmSpec = field(default_factory=LlmSpec)
    seed: int = 0
    shards: int = 1


# -- tokenizer ------------------------------------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_tokenizer(folder: Path, n_merges: int) -> int:
    """Write vocab.json, merges.txt, added_tokens.json, special_tokens_map.json and tokenizer_config.json in
    Qwen2's style. Returns the number of tokens (base vocabulary plus special tokens)."""
    if not 0 <= n_merges <= len(TOY_MERGES):
        raise ValueError(f"merges must be from 0 to {len(TOY_MERGES)}, not {n_merges}")
    merges = TOY_MERGES[:n_merges]
    table = bytes_to_unicode()
    tokens = [table[b] for b in range(256)] + [a + b for a, b in merges]
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    special = {tok: len(tokens) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    (folder / "added_tokens.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2), encoding="utf-8")
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True} for t, i in special.items()}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }, indent=2, ensure_ascii=False), encoding="utf-8")
    return len(tokens) + len(SPECIAL_TOKENS)


# -- weights --------------------------------------------------------------------------------------------------------

def vision_shapes(spec: VisionSpec) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every vision tower tensor (without prefix) in Apple's naming, reparameterized (inference) form."""
    d = spec.dims
    yield "patch_embed.0.reparam_conv.weight", (d[0], 3, 3, 3)
    yield "patch_embed.0.reparam_conv.bias", (d[0],)
    yield "patch_embed.1.reparam_conv.weight", (d[0], 1, 3, 3)
    yield "patch_embed.1.reparam_conv.bias", (d[0],)
    yield "patch_embed.2.reparam_conv.weight", (d[0], d[0], 1, 1)
    yield "patch_embed.2.reparam_conv.bias", (d[0],)
    block_index = {0: 0, 1: 2, 2: 4, 3: 7, 4: 10}
    embed_index = {1: 1, 2: 3, 3: 5, 4: 8}
    pos_index = {3: 6, 4: 9}
    for stage in range(5):
        dim = d[stage]
        if stage in embed_index:
            p = f"network.{embed_index[stage]}.proj."
            yield p + "0.lkb_reparam.weight", (dim, 1, 7, 7)
            yield p + "0.lkb_reparam.bias", (dim,)
            yield p + "1.reparam_conv.weight", (dim, dim, 1, 1)
            yield p + "1.reparam_conv.bias", (dim,)
        if stage in pos_index:
            yield f"network.{pos_index[stage]}.reparam_conv.weight", (dim, 1, 7, 7)
            yield f"network.{pos_index[stage]}.reparam_conv.bias", (dim,)
        attention = stage >= 3
        hidden = dim * spec.mlp_ratio
        for b in range(spec.depths[stage]):
            p = f"network.{block_index[stage]}.{b}."
            if attention:
                yield p + "norm.weight", (dim,)
                yield p + "norm.bias", (dim,)
                yield p + "token_mixer.qkv.weight", (3 * dim, dim)
                yield p + "token_mixer.proj.weight", (dim, dim)
                yield p + "token_mixer.proj.bias", (dim,)
            else:
                yield p + "token_mixer.reparam_conv.weight", (dim, 1, 3, 3)
                yield p + "token_mixer.reparam_conv.bias", (dim,)
            yield p + "convffn.conv.conv.weight", (dim, 1, 7, 7)
            for bn in ("weight", "bias", "running_mean", "running_var"):
                yield p + f"convffn.conv.bn.{bn}", (dim,)
            yield p + "convffn.conv.bn.num_batches_tracked", ()
            yield p + "convffn.fc1.weight", (hidden, dim, 1, 1)
            yield p + "convffn.fc1.bias", (hidden,)
            yield p + "convffn.fc2.weight", (dim, hidden, 1, 1)
            yield p + "convffn.fc2.bias", (dim,)
            if attention:
                yield p + "layer_scale_1", (dim, 1, 1)
                yield p + "layer_scale_2", (dim, 1, 1)
            else:
                yield p + "layer_scale", (dim, 1, 1)
    last, out = d[-1], spec.out_dim
    rd = max(1, out // 16)
    yield "conv_exp.reparam_conv.weight", (out, 1, 3, 3)
    yield "conv_exp.reparam_conv.bias", (out,)
    yield "conv_exp.se.reduce.weight", (rd, out, 1, 1)
    yield "conv_exp.se.reduce.bias", (rd,)
    yield "conv_exp.se.expand.weight", (out, rd, 1, 1)
    yield "conv_exp.se.expand.bias", (out,)
    yield "head.proj", (out, last // 2)


def llm_shapes(spec: LlmSpec, vocab_rows: int, mm_hidden: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    h, kv = spec.hidden, spec.kv_heads * (spec.hidden // spec.heads)
    yield "model.embed_tokens.weight", (vocab_rows, h)
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.q_proj.bias", (h,)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.k_proj.bias", (kv,)
        yield p + "self_attn.v_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.bias", (kv,)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "mlp.gate_proj.weight", (spec.ffn, h)
        yield p + "mlp.up_proj.weight", (spec.ffn, h)
        yield p + "mlp.down_proj.weight", (h, spec.ffn)
    yield "model.norm.weight", (h,)
    yield f"{PROJECTOR_PREFIX}0.weight", (h, mm_hidden)
    yield f"{PROJECTOR_PREFIX}0.bias", (h,)
    yield f"{PROJECTOR_PREFIX}2.weight", (h, h)
    yield f"{PROJECTOR_PREFIX}2.bias", (h,)
    # Apple's checkpoints carry lm_head even when it is tied to the embeddings.
    yield "lm_head.weight", (vocab_rows, h)


def _random_tensor(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """A value scale per kind of tensor that keeps activations O(1) through the whole network."""
    leaf = name.rsplit(".", 1)[-1]
    if shape == ():
        return np.zeros((), np.float32)
    if "running_var" in name:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if "layer_scale" in name:
        return rng.uniform(0.05, 0.2, shape).astype(np.float32)
    if "norm" in name or ".bn." in name or "layernorm" in name:
        if leaf == "weight":
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if leaf == "bias":
        return (0.05 * rng.standard_normal(shape)).astype(np.float32)
    if "embed_tokens" in name or name == "lm_head.weight":
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    scale = 1.0 / float(np.sqrt(fan_in))
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def to_bf16_bits(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """Round float32 to bfloat16 (nearest, ties to even) and return the raw 16-bit patterns."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (((u >> 16) & 1) + 0x7FFF)
    return (rounded >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, npt.NDArray[np.float32]], dtypes: dict[str, str]) -> None:
    """Write a safetensors file; each float tensor as BF16 unless ``dtypes`` says F32, integers as I64."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name, arr in tensors.items():
        dtype = dtypes.get(name, "BF16")
        if dtype == "BF16":
            data = to_bf16_bits(arr).tobytes()
        elif dtype == "I64":
            data = np.asarray(arr, dtype="<i8").tobytes()
        else:
            data = np.asarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def write_checkpoint(folder: str | Path, spec: CheckpointSpec | None = None) -> Path:
    """Write a complete random FastVLM checkpoint in Apple's layout to ``folder`` and return it."""
    spec = spec or CheckpointSpec()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    n_tokens = write_tokenizer(out, spec.llm.merges)
    vocab_rows = spec.llm.vocab_rows or -(-n_tokens // 64) * 64
    if vocab_rows < n_tokens:
        raise ValueError(f"vocab_rows {vocab_rows} is smaller than the tokenizer ({n_tokens} tokens)")
    llm = spec.llm
    config = {
        "architectures": ["LlavaQwen2ForCausalLM"],
        "model_type": "llava_qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": n_tokens - 3,
        "eos_token_id": n_tokens - 1,
        "hidden_act": "silu",
        "hidden_size": llm.hidden,
        "image_aspect_ratio": "pad",
        "initializer_range": 0.02,
        "intermediate_size": llm.ffn,
        "max_position_embeddings": 32768,
        "max_window_layers": llm.layers,
        "mm_hidden_size": spec.vision.out_dim,
        "mm_patch_merge_type": "flat",
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": "mobileclip_l_1024",
        "num_attention_heads": llm.heads,
        "num_hidden_layers": llm.layers,
        "num_key_value_heads": llm.kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": llm.tied,
        "tokenizer_model_max_length": 8192,
        "tokenizer_padding_side": "right",
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_mm_proj": True,
        "use_sliding_window": False,
        "vocab_size": vocab_rows,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": n_tokens - 3, "eos_token_id": [n_tokens - 1, n_tokens - 3],
        "do_sample": False, "max_new_tokens": 256}, indent=2), encoding="utf-8")

    rng = np.random.default_rng(spec.seed)
    tensors: dict[str, npt.NDArray[np.float32]] = {}
    dtypes: dict[str, str] = {}
    for name, shape in vision_shapes(spec.vision):
        full = VISION_PREFIX + name
        tensors[full] = _random_tensor(rng, full, shape)
        if spec.vision.weight_gain != 1.0 and len(shape) > 1 and "norm" not in full and ".bn." not in full:
            tensors[full] *= np.float32(spec.vision.weight_gain)
        if name.endswith("num_batches_tracked"):
            dtypes[full] = "I64"
    for name, shape in llm_shapes(llm, vocab_rows, spec.vision.out_dim):
        tensors[name] = _random_tensor(rng, name, shape)
    if llm.tied:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]

    names = list(tensors)
    if spec.shards <= 1:
        write_safetensors(out / "model.safetensors", tensors, dtypes)
    else:
        weight_map: dict[str, str] = {}
        groups = np.array_split(np.arange(len(names)), spec.shards)
        for i, idx in enumerate(groups):
            fname = f"model-{i + 1:05d}-of-{spec.shards:05d}.safetensors"
            part = {names[j]: tensors[names[j]] for j in idx}
            write_safetensors(out / fname, part, dtypes)
            weight_map.update(dict.fromkeys(part, fname))
        (out / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2),
                                      encoding="utf-8")
    return out
