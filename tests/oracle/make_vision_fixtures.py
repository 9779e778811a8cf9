"""Regenerate tests/fixtures/vision_*.npz: expected image embeddings from an independent reference (timm + torch).

Run (from the repository root, with the oracle extra installed: torch, torchvision, timm >= 1.0.20, safetensors):

    PYTHONPATH=. /work/oracle-venv/bin/python tests/oracle/make_vision_fixtures.py

For each tower (``tiny``: VisionSpec.tiny(); ``full``: the released FastViTHD geometry) it writes a random checkpoint
with engine.convert.synthetic (fixed spec and seed), loads its vision weights into timm's ``fastvit_mci3`` built in
inference (reparameterized) form with Apple's names mapped onto timm's, adds a torch projector (Linear, exact GELU,
Linear), and runs two deterministic test images. Each fixture holds:

- ``spec``: JSON with the CheckpointSpec fields (vision, llm, seed) the test passes back to engine.convert.synthetic;
- ``sizes``: the image sides; ``image_<S>``: uint8 [3, S, S] (the model input is image / 255, as in preprocessing);
- ``expected_<S>``: float32 [(S/64)^2, hidden], the projector output, tokens in row-major order.

The reference reads the safetensors with the ``safetensors`` package (not engine.convert.checkpoint), so the
converter's own reader is checked too. Nothing in the converter is used here except engine.convert.synthetic to write
the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import load_file
from torch import nn

from glimpse.engine.convert.synthetic import CheckpointSpec, LlmSpec, VisionSpec, write_checkpoint

VISION_PREFIX = "model.vision_tower.vision_tower.model."
PROJECTOR_PREFIX = "model.mm_projector."
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

TOWERS = {
    # name: (checkpoint spec, image sides)
    "tiny": (CheckpointSpec(vision=VisionSpec.tiny(), llm=LlmSpec(), seed=1234), (192, 320)),
    "full": (CheckpointSpec(vision=VisionSpec(), llm=LlmSpec(hidden=896, layers=1, heads=14, kv_heads=2, ffn=128),
                            seed=4321), (128, 192)),
}


def apple_to_timm(name: str, stage_of: dict[int, tuple[int, str]]) -> str | None:
    """Map one Apple (mci.py, reparameterized) vision tensor name onto timm FastVit(inference_mode=True).

    ``stage_of`` maps Apple's flat ``network.N`` index to (timm stage, "blocks" | "downsample" | "pos_emb").
    Returns None for tensors timm's feature model has no place for (the CLIP head ``head.proj``).
    """
    if name == "head.proj":
        return None
    name = name.replace("patch_embed.", "stem.", 1) if name.startswith("patch_embed.") else name
    name = name.replace("conv_exp.", "final_conv.", 1)
    name = name.replace("se.reduce.", "se.fc1.").replace("se.expand.", "se.fc2.")
    name = name.replace(".convffn.", ".mlp.")
    name = name.replace("lkb_reparam", "reparam_conv")
    name = re.sub(r"\.layer_scale(_[12])?$", r".layer_scale\1.gamma", name)
    m = re.match(r"network\.(\d+)\.(.*)", name)
    if m:
        stage, part = stage_of[int(m.group(1))]
        rest = m.group(2)
        if part == "blocks":
            name = f"stages.{stage}.blocks.{rest}"
        elif part == "downsample":
            name = f"stages.{stage}.downsample.{rest}"
        else:
            name = f"stages.{stage}.pos_emb.{rest}"
    return name


def network_stages(names: list[str]) -> dict[int, tuple[int, str]]:
    """Apple's network list is: blocks, then per later stage [patch embed, optional pos-enc, blocks]."""
    kinds: dict[int, str] = {}
    for n in names:
        m = re.match(r"network\.(\d+)\.(.*)", n)
        if m:
            rest = m.group(2)
            kinds[int(m.group(1))] = ("blocks" if re.match(r"\d+\.", rest)
                                      else "downsample" if rest.startswith("proj.") else "pos_emb")
    out: dict[int, tuple[int, str]] = {}
    stage = 0
    for idx in sorted(kinds):
        if kinds[idx] == "downsample":
            stage += 1
        out[idx] = (stage, kinds[idx])
    return out


class Reference(nn.Module):
    """timm fastvit_mci3 (final conv map) -> row-major tokens -> mlp2x_gelu projector."""

    def __init__(self, spec: VisionSpec, hidden: int) -> None:
        super().__init__()
        self.tower = timm.create_model(
            "fastvit_mci3", pretrained=False, inference_mode=True, num_classes=0,
            embed_dims=spec.dims, layers=spec.depths, mlp_ratios=(spec.mlp_ratio,) * len(spec.dims))
        out = spec.out_dim
        self.proj0 = nn.Linear(out, hidden)
        self.act = nn.GELU(approximate="none")
        self.proj2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.tower.forward_features(x)  # [1, out, S/64, S/64]
        tokens = fmap.flatten(2).transpose(1, 2)
        return self.proj2(self.act(self.proj0(tokens)))


def load_reference(folder: Path, spec: CheckpointSpec) -> Reference:
    tensors = load_file(str(folder / "model.safetensors"))
    vision = {k[len(VISION_PREFIX):]: v for k, v in tensors.items() if k.startswith(VISION_PREFIX)}
    stage_of = network_stages(list(vision))
    ref = Reference(spec.vision, spec.llm.hidden)
    state: dict[str, torch.Tensor] = {}
    for name, value in vision.items():
        target = apple_to_timm(name, stage_of)
        if target is not None:
            state["tower." + target] = value.float() if value.is_floating_point() else value
    state["proj0.weight"] = tensors[PROJECTOR_PREFIX + "0.weight"].float()
    state["proj0.bias"] = tensors[PROJECTOR_PREFIX + "0.bias"].float()
    state["proj2.weight"] = tensors[PROJECTOR_PREFIX + "2.weight"].float()
    state["proj2.bias"] = tensors[PROJECTOR_PREFIX + "2.bias"].float()
    result = ref.load_state_dict(state, strict=True)  # raises on any missing / unexpected / mis-shaped key
    assert not result.missing_keys and not result.unexpected_keys
    ref.eval()
    # Pin the constants the converter assumes, as timm implements them.
    t = ref.tower
    assert t.stages[0].blocks[0].mlp.conv.bn.eps == 1e-5, "ConvFFN BatchNorm eps"
    for stage in t.stages:
        for block in stage.blocks:
            if hasattr(block, "norm"):
                assert block.norm.eps == 1e-5, "attention LayerNorm eps"
                assert block.token_mixer.head_dim == 32, "attention head dim"
    return ref


def make_image(size: int, seed: int) -> np.ndarray:
    """A deterministic uint8 RGB image [3, S, S]: smooth colour gradients, a few discs and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.empty((3, size, size), np.float64)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
        img[c] = 0.5 + 0.35 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        img[:, mask] = rng.uniform(0, 1, (3, 1))
    img += rng.normal(0, 0.04, img.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def main() -> int:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for tower, (spec, sizes) in TOWERS.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_checkpoint(Path(tmp) / tower, spec)
            ref = load_reference(folder, spec)
            arrays: dict[str, np.ndarray] = {}
            for i, size in enumerate(sizes):
                image = make_image(size, seed=spec.seed + i)
                x = torch.from_numpy(image.astype(np.float32) / np.float32(255.0))[None]
                with torch.no_grad():
                    y = ref(x)[0].numpy().astype(np.float32)
                assert y.shape == ((size // 64) ** 2, spec.llm.hidden), y.shape
                assert np.isfinite(y).all()
                arrays[f"image_{size}"] = image
                arrays[f"expected_{size}"] = y
                print(f"{tower} {size}px: {y.shape[0]} tokens x {y.shape[1]}, max |y| {np.abs(y).max():.4g}")
        meta = {"vision": dataclasses.asdict(spec.vision), "llm": dataclasses.asdict(spec.llm), "seed": spec.seed,
                "reference": f"timm {timm.__version__} fastvit_mci3 (inference_mode) + torch {torch.__version__} "
                             "Linear/GELU(erf)/Linear"}
        path = FIXTURES / f"vision_{tower}.npz"
        np.savez_compressed(path, spec=np.array(json.dumps(meta)), sizes=np.array(sizes, np.int64), **arrays)
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
