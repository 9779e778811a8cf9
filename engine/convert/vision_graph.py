"""Build the FastViTHD vision encoder + mlp2x_gelu projector as an ONNX graph, straight from the checkpoint.

No torch and no tracing: every node is written with ``onnx.helper`` from the (already reparameterized) weights in
Apple's layout. The graph takes ``pixel_values`` float32 [1, 3, S, S] (S symbolic, a multiple of 64, RGB in [0, 1])
and returns ``image_embeddings`` float32 [1, (S/64)^2, hidden], the rows spliced into the prompt.

Architecture (Apple's ``mci.py`` ``fastvithd``; timm ``fastvit_mci3`` is the same network under other names):

- stem: 3x3/2 conv, 3x3/2 depthwise conv, 1x1 conv, GELU after each;
- stage 0: RepMixer blocks; stages k >= 1: patch embed (7x7/2 conv with groups = input channels, GELU, 1x1 conv,
  GELU), an optional conditional positional encoding (7x7 depthwise conv, identity folded in), then RepMixer or
  attention blocks;
- RepMixer block: x = dwconv3x3(x); x = x + layer_scale * ConvFFN(x);
- attention block: x = x + layer_scale_1 * MHSA(LayerNorm_C(x)); x = x + layer_scale_2 * ConvFFN(x);
- ConvFFN: 7x7 depthwise conv (no bias) -> BatchNorm -> 1x1 conv (x mlp_ratio) -> GELU -> 1x1 conv;
- conv_exp: 3x3 conv with groups = channels (C -> 2C), squeeze-excite (global mean, 1x1, ReLU, 1x1, sigmoid, scale),
  GELU;
- the final map is flattened row-major into tokens and goes through Linear -> GELU (erf) -> Linear.

Folded at conversion time (exact up to float rounding): BatchNorm into the depthwise conv before it, every
``layer_scale`` into the 1x1 conv / linear it multiplies, and the attention scale 1/sqrt(head_dim) into the query
weights. The squeeze-excite pooling is a global mean (GlobalAveragePool), so any multiple of 64 works.

``weight_dtype="fp16"`` stores the large weight tensors as float16 followed by a Cast to float32; the folds that
touch them are then left in the graph as a ``Mul`` by a float32 vector, which onnxruntime constant-folds in float32
when the session is created. So bf16 checkpoint values (which float16 holds exactly across its normal range) reach
the same float32 weights as with ``"fp32"``, at half the file size. Small vectors (biases, norms) stay float32.
Computation is float32 in both cases.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

from glimpse.engine.convert.checkpoint import PROJECTOR_PREFIX, VISION_PREFIX, Checkpoint
from glimpse.engine.errors import CheckpointError, ConversionError, ShapeMismatchError
from glimpse.engine.progress import Reporter

F32 = npt.NDArray[np.float32]

OPSET = 20  # Gelu (exact, erf) is a standard op from opset 20; onnxruntime has a kernel for it.
IR_VERSION = 9  # the lowest IR that carries opset 20, so older onnxruntime builds load the file
HEAD_DIM = 32  # fixed in Apple's MHSA (and timm's Attention); the weights do not encode it
BN_EPS = 1e-5  # nn.BatchNorm2d default, used by Apple's ConvFFN and timm's ConvNormAct
LN_EPS = 1e-5  # Apple's LayerNormChannel / timm fastvit_mci3 LayerNorm2d(eps=1e-5)
FP16_MAX = 65504.0
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "image_embeddings"
WEIGHT_DTYPES = ("fp32", "fp16")

REPMIXER = "repmixer"
ATTENTION = "attention"


@dataclass(frozen=True)
class VisionGeometry:
    """The vision tower's shape, read from the checkpoint's tensor names and shapes.

    Every field is a plain int, str or tuple of them, so the model manifest can record it as is.
    """

    dims: tuple[int, ...]  # channels per stage (96, 192, 384, 768, 1536 when full size)
    depths: tuple[int, ...]  # blocks per stage (2, 12, 24, 4, 2)
    mixers: tuple[str, ...]  # "repmixer" or "attention" per stage
    pos_enc: tuple[bool, ...]  # whether the stage starts with a conditional positional encoding
    mlp_ratio: int  # ConvFFN expansion (4)
    out_channels: int  # conv_exp output = projector input (3072)
    se_channels: int  # squeeze-excite bottleneck (out_channels / 16 = 192)
    llm_hidden: int  # projector output = the language model's hidden size
    head_dim: int  # attention head width (32)
    patch_size: int  # total downsampling (64)

    @property
    def stages(self) -> int:
        return len(self.dims)

    def tokens(self, size: int) -> int:
        """Image rows produced for a ``size`` x ``size`` input (a multiple of ``patch_size``)."""
        return (size // self.patch_size) ** 2


# -- reading the layout ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    """Where each stage lives in Apple's flat ``network.N`` list."""

    blocks: tuple[int, ...]  # network index of each stage's blocks
    embeds: tuple[int | None, ...]  # network index of the patch embed before each stage (None for stage 0)
    pos: tuple[int | None, ...]  # network index of each stage's positional encoding, if any


_NETWORK = re.compile(r"network\.(\d+)\.(.+)")
_BLOCK = re.compile(r"(\d+)\.")


def _layout(names: Mapping[str, tuple[int, ...]]) -> tuple[_Layout, tuple[int, ...]]:
    """Classify the ``network.N`` groups and count the blocks of each stage from the tensor names."""
    kinds: dict[int, str] = {}
    counts: dict[int, int] = {}
    for name in names:
        m = _NETWORK.fullmatch(name)
        if m is None:
            continue
        idx, rest = int(m.group(1)), m.group(2)
        b = _BLOCK.match(rest)
        kind = "blocks" if b else "embed" if rest.startswith("proj.") else "pos" if rest.startswith(
            "reparam_conv.") else "?"
        if kind == "?" or kinds.setdefault(idx, kind) != kind:
            raise CheckpointError(f"The vision tower has an unexpected tensor '{VISION_PREFIX}{name}'.",
                                  "This does not look like a FastViTHD (FastVLM) vision tower.")
        if b:
            counts[idx] = max(counts.get(idx, 0), int(b.group(1)) + 1)
    order = sorted(kinds)
    if not order or order != list(range(len(order))):
        raise CheckpointError("The vision tower's network.N tensors are missing or not numbered 0, 1, 2, ...",
                              "The checkpoint is incomplete or not a FastVLM release.")
    blocks: list[int] = []
    embeds: list[int | None] = []
    pos: list[int | None] = []
    pending_embed: int | None = None
    pending_pos: int | None = None
    allowed = {"blocks": ("blocks",), "embed": ("embed",), "pos-or-blocks": ("pos", "blocks")}
    expect = "blocks"  # stage 0 starts with its blocks
    for idx in order:
        kind = kinds[idx]
        if kind not in allowed[expect]:
            raise CheckpointError(f"The vision tower's network.{idx} is a {kind} where a "
                                  f"{expect.replace('-or-', ' or ')} was expected.",
                                  "This does not look like a FastViTHD (FastVLM) vision tower.")
        if kind == "embed":
            pending_embed, expect = idx, "pos-or-blocks"
        elif kind == "pos":
            pending_pos, expect = idx, "blocks"
        else:
            blocks.append(idx)
            embeds.append(pending_embed)
            pos.append(pending_pos)
            pending_embed = pending_pos = None
            expect = "embed"
    if expect != "embed":
        raise CheckpointError("The vision tower ends with a patch embedding that has no blocks after it.",
                              "The checkpoint is incomplete or not a FastVLM release.")
    depths = tuple(counts[i] for i in blocks)
    return _Layout(tuple(blocks), tuple(embeds), tuple(pos)), depths


def _shape(names: Mapping[str, tuple[int, ...]], name: str) -> tuple[int, ...]:
    try:
        return names[name]
    except KeyError:
        raise CheckpointError(f"The checkpoint has no tensor '{VISION_PREFIX}{name}'.",
                              "The checkpoint is incomplete or not a FastVLM release.") from None


def _dim0(names: Mapping[str, tuple[int, ...]], name: str, rank: int) -> int:
    shape = _shape(names, name)
    if len(shape) != rank or shape[0] <= 0:
        raise ShapeMismatchError(VISION_PREFIX + name, (shape[0] if shape else 1,) + (1,) * (rank - 1), shape)
    return shape[0]


def _read(ckpt: Checkpoint) -> tuple[VisionGeometry, _Layout, dict[str, tuple[int, ...]]]:
    """Derive the geometry from names and shapes, and every tensor the graph needs with its expected shape."""
    names = ckpt.vision_tensors()
    layout, depths = _layout(names)
    n = len(layout.blocks)
    dims = [_dim0(names, "patch_embed.0.reparam_conv.weight", 4)]
    for k in range(1, n):
        embed = layout.embeds[k]
        assert embed is not None
        dims.append(_dim0(names, f"network.{embed}.proj.1.reparam_conv.weight", 4))
    mixers: list[str] = []
    for k in range(n):
        p = f"network.{layout.blocks[k]}.0."
        if p + "token_mixer.qkv.weight" in names:
            mixers.append(ATTENTION)
        elif p + "token_mixer.reparam_conv.weight" in names:
            mixers.append(REPMIXER)
        else:
            raise CheckpointError(f"Block {VISION_PREFIX}{p[:-1]} has neither a RepMixer nor an attention token mixer.",
                                  "This does not look like a FastViTHD (FastVLM) vision tower.")
        if mixers[-1] == ATTENTION and dims[k] % HEAD_DIM:
            raise CheckpointError(f"Stage {k} has {dims[k]} channels, not a multiple of the attention head width "
                                  f"{HEAD_DIM}.", "This does not look like a FastViTHD (FastVLM) vision tower.")
    fc1 = f"network.{layout.blocks[0]}.0.convffn.fc1.weight"
    hidden0 = _dim0(names, fc1, 4)
    if hidden0 % dims[0]:
        raise ShapeMismatchError(VISION_PREFIX + fc1, (4 * dims[0], dims[0], 1, 1), _shape(names, fc1))
    out = _dim0(names, "conv_exp.reparam_conv.weight", 4)
    se = _dim0(names, "conv_exp.se.reduce.weight", 4)
    llm_hidden = ckpt.shape(PROJECTOR_PREFIX + "0.weight")[0]
    geo = VisionGeometry(dims=tuple(dims), depths=depths, mixers=tuple(mixers),
                         pos_enc=tuple(p is not None for p in layout.pos), mlp_ratio=hidden0 // dims[0],
                         out_channels=out, se_channels=se, llm_hidden=llm_hidden, head_dim=HEAD_DIM,
                         patch_size=4 * 2 ** (n - 1))
    return geo, layout, _expected_shapes(geo, layout)


def _expected_shapes(geo: VisionGeometry, layout: _Layout) -> dict[str, tuple[int, ...]]:
    """Full tensor names (with prefix) -> shape, in graph order."""
    d = geo.dims
    s: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out: int, cin: int, k: int) -> None:
        s[f"{VISION_PREFIX}{name}.weight"] = (out, cin, k, k)
        s[f"{VISION_PREFIX}{name}.bias"] = (out,)

    conv("patch_embed.0.reparam_conv", d[0], 3, 3)
    conv("patch_embed.1.reparam_conv", d[0], 1, 3)
    conv("patch_embed.2.reparam_conv", d[0], d[0], 1)
    for k in range(geo.stages):
        dim = d[k]
        embed, pos = layout.embeds[k], layout.pos[k]
        if embed is not None:
            if dim % d[k - 1]:
                raise ShapeMismatchError(f"{VISION_PREFIX}network.{embed}.proj.1.reparam_conv.weight",
                                         (2 * d[k - 1], 2 * d[k - 1], 1, 1), (dim, dim, 1, 1))
            conv(f"network.{embed}.proj.0.lkb_reparam", dim, 1, 7)
            conv(f"network.{embed}.proj.1.reparam_conv", dim, dim, 1)
        if pos is not None:
            conv(f"network.{pos}.reparam_conv", dim, 1, 7)
        hidden = dim * geo.mlp_ratio
        for b in range(geo.depths[k]):
            p = f"{VISION_PREFIX}network.{layout.blocks[k]}.{b}."
            if geo.mixers[k] == ATTENTION:
                s[p + "norm.weight"] = (dim,)
                s[p + "norm.bias"] = (dim,)
                s[p + "token_mixer.qkv.weight"] = (3 * dim, dim)
                s[p + "token_mixer.proj.weight"] = (dim, dim)
                s[p + "token_mixer.proj.bias"] = (dim,)
                s[p + "layer_scale_1"] = (dim, 1, 1)
                s[p + "layer_scale_2"] = (dim, 1, 1)
            else:
                s[p + "token_mixer.reparam_conv.weight"] = (dim, 1, 3, 3)
                s[p + "token_mixer.reparam_conv.bias"] = (dim,)
                s[p + "layer_scale"] = (dim, 1, 1)
            s[p + "convffn.conv.conv.weight"] = (dim, 1, 7, 7)
            for bn in ("weight", "bias", "running_mean", "running_var"):
                s[p + f"convffn.conv.bn.{bn}"] = (dim,)
            s[p + "convffn.fc1.weight"] = (hidden, dim, 1, 1)
            s[p + "convffn.fc1.bias"] = (hidden,)
            s[p + "convffn.fc2.weight"] = (dim, hidden, 1, 1)
            s[p + "convffn.fc2.bias"] = (dim,)
    if geo.out_channels % d[-1]:
        raise ShapeMismatchError(f"{VISION_PREFIX}conv_exp.reparam_conv.weight", (2 * d[-1], 1, 3, 3),
                                 (geo.out_channels, 1, 3, 3))
    conv("conv_exp.reparam_conv", geo.out_channels, 1, 3)
    conv("conv_exp.se.reduce", geo.se_channels, geo.out_channels, 1)
    conv("conv_exp.se.expand", geo.out_channels, geo.se_channels, 1)
    h = geo.llm_hidden
    s[PROJECTOR_PREFIX + "0.weight"] = (h, geo.out_channels)
    s[PROJECTOR_PREFIX + "0.bias"] = (h,)
    s[PROJECTOR_PREFIX + "2.weight"] = (h, h)
    s[PROJECTOR_PREFIX + "2.bias"] = (h,)
    return s


def check_shapes(ckpt: Checkpoint, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise on the first tensor (graph order) that is missing or has another shape than the geometry demands."""
    for name, shape in expected.items():
        if not ckpt.has(name):
            raise CheckpointError(f"The checkpoint has no tensor '{name}'.",
                                  "The checkpoint is incomplete or not a FastVLM release.")
        actual = ckpt.shape(name)
        if actual != shape:
            raise ShapeMismatchError(name, shape, actual)


# -- graph construction ---------------------------------------------------------------------------------------------

class _Graph:
    """Accumulates nodes; streams each initializer to ``sink`` as soon as it is made.

    A serialized protobuf message may be split into several concatenated pieces: a parser merges them, appending
    repeated fields. So every initializer is written as its own small ``ModelProto{graph{initializer}}`` piece and
    the nodes, inputs and outputs follow as the last piece. The file is an ordinary ONNX model, and the converter
    never holds more than one weight tensor (plus the node list) in memory.
    """

    def __init__(self, weight_dtype: str, sink: BinaryIO) -> None:
        self.fp16 = weight_dtype == "fp16"
        self.sink = sink
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0
        self._consts: dict[tuple[int, ...], str] = {}
        # What was streamed, for the structural check: weights as typed inputs, int64 constants as they are.
        self._declared: list[onnx.ValueInfoProto] = []
        self._small: list[onnx.TensorProto] = []

    def tmp(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def node(self, op: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        out = self.tmp(hint)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def _add(self, name: str, arr: npt.NDArray[np.generic], dtype: int) -> str:
        piece = onnx.ModelProto()
        t = piece.graph.initializer.add()
        t.name = name
        t.data_type = dtype
        t.dims.extend(arr.shape)
        t.raw_data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        self.sink.write(piece.SerializeToString())
        if dtype == TensorProto.INT64:
            self._small.append(t)
        else:
            self._declared.append(helper.make_tensor_value_info(name, dtype, list(arr.shape)))
        return name

    def finish(self, model: onnx.ModelProto) -> None:
        """Write ``model`` (everything but the initializers) as the last piece, then check the graph.

        onnx.checker runs (with strict shape inference) on the graph with each streamed weight declared by name,
        type and shape, which is what the checker looks at; loading the written file back to check it would take
        twice its size in memory. Raises onnx.checker.ValidationError or onnx.shape_inference.InferenceError.
        """
        model.graph.node.extend(self.nodes)
        self.nodes.clear()
        self.sink.write(model.SerializeToString())
        model.graph.input.extend(self._declared)
        model.graph.initializer.extend(self._small)
        onnx.checker.check_model(model, full_check=True)

    def f32(self, name: str, arr: npt.ArrayLike) -> str:
        """A float32 initializer (biases, norms, scales: small)."""
        return self._add(name, np.asarray(arr, dtype=np.float32), TensorProto.FLOAT)

    def i64(self, values: Sequence[int]) -> str:
        """A shared int64 constant (reshape targets, split sizes)."""
        key = tuple(values)
        if key not in self._consts:
            self._consts[key] = self._add(f"const_{'_'.join(str(v).replace('-', 'm') for v in key)}",
                                          np.array(key, dtype=np.int64), TensorProto.INT64)
        return self._consts[key]

    def weight(self, name: str, w: F32, scale: F32 | None = None, axis: int = 0) -> str:
        """A large weight, optionally multiplied by ``scale`` along ``axis``; returns the float32 value's name.

        fp32: folded in numpy and stored float32. fp16: stored float16 (exact for bf16 sources in range), then Cast
        and, if scaled, a Mul by a float32 vector that onnxruntime folds when the session is created.
        """
        if scale is not None:
            shape = [1] * w.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
        if not self.fp16 or not np.all(np.abs(w) <= FP16_MAX):
            return self.f32(name, w if scale is None else w * scale)
        stored = self._add(name + ".fp16", w.astype(np.float16), TensorProto.FLOAT16)
        value = self.node("Cast", [stored], name.replace(".", "_") + "_f32", to=TensorProto.FLOAT)
        if scale is None:
            return value
        return self.node("Mul", [value, self.f32(name + ".scale", scale)], name.replace(".", "_") + "_scaled")

    # -- layers -----------------------------------------------------------------------------------------------------

    def conv(self, x: str, name: str, w: F32, b: F32, *, stride: int = 1, groups: int = 1,
             scale: F32 | None = None) -> str:
        """Conv with weight ``w`` (times ``scale`` per output channel) and final bias ``b``; padding k // 2."""
        k = w.shape[-1]
        weight = self.weight(name + ".weight", w, scale)
        bias = self.f32(name + ".bias", b)
        return self.node("Conv", [x, weight, bias], name.replace(".", "_"), kernel_shape=[k, k],
                         strides=[stride, stride], pads=[k // 2] * 4, group=groups)

    def gelu(self, x: str) -> str:
        """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as the opset-20 op (onnxruntime has a kernel for it)."""
        return self.node("Gelu", [x], "gelu", approximate="none")

    def linear(self, x: str, name: str, w: F32, b: F32 | None, scale: F32 | None = None) -> str:
        """x [.., in] @ (w * scale).T (+ b): w is a torch Linear weight [out, in], ``b`` the final bias."""
        y = self.node("MatMul", [x, self.weight(name + ".weight", np.ascontiguousarray(w.T), scale, axis=1)],
                      name.replace(".", "_"))
        if b is None:
            return y
        return self.node("Add", [y, self.f32(name + ".bias", b)], "add")

    def to_tokens(self, x: str) -> str:
        """[1, C, H, W] -> [1, H*W, C] (row-major over H, W)."""
        flat = self.node("Reshape", [x, self.i64([0, 0, -1])], "flat")
        return self.node("Transpose", [flat], "tokens", perm=[0, 2, 1])


def _bn_fold(ckpt: Checkpoint, p: str) -> tuple[F32, F32]:
    """BatchNorm (eval) as a per-channel scale and shift."""
    gamma = ckpt.tensor(p + "weight")
    beta = ckpt.tensor(p + "bias")
    mean = ckpt.tensor(p + "running_mean")
    var = ckpt.tensor(p + "running_var")
    scale = (gamma / np.sqrt(var + np.float32(BN_EPS))).astype(np.float32)
    return scale, (beta - mean * scale).astype(np.float32)


def _convffn(g: _Graph, ckpt: Checkpoint, x: str, p: str, dim: int, layer_scale: F32) -> str:
    t = ckpt.tensor
    bn_scale, bn_shift = _bn_fold(ckpt, p + "convffn.conv.bn.")
    # BN(conv(x, w)) == conv(x, w * s) + shift: the conv has no bias of its own.
    y = g.conv(x, p + "convffn.conv", t(p + "convffn.conv.conv.weight"), bn_shift, groups=dim, scale=bn_scale)
    y = g.gelu(g.conv(y, p + "convffn.fc1", t(p + "convffn.fc1.weight"), t(p + "convffn.fc1.bias")))
    ls = layer_scale.reshape(-1)
    y = g.conv(y, p + "convffn.fc2", t(p + "convffn.fc2.weight"), t(p + "convffn.fc2.bias") * ls, scale=ls)
    return g.node("Add", [x, y], "residual")


def _attention(g: _Graph, ckpt: Checkpoint, x: str, p: str, dim: int, head_dim: int) -> str:
    t = ckpt.tensor
    heads = dim // head_dim
    tokens = g.to_tokens(x)
    normed = g.node("LayerNormalization", [tokens, g.f32(p + "norm.weight", t(p + "norm.weight")),
                                           g.f32(p + "norm.bias", t(p + "norm.bias"))],
                    "norm", axis=-1, epsilon=LN_EPS)
    qkv_scale = np.ones(3 * dim, np.float32)
    qkv_scale[:dim] = np.float32(head_dim ** -0.5)
    qkv = g.linear(normed, p + "token_mixer.qkv", t(p + "token_mixer.qkv.weight"), None, scale=qkv_scale)
    # [1, N, 3C] -> [1, N, 3h, d] -> [1, 3h, N, d] -> q, k, v [1, h, N, d] (torch: reshape(B, N, 3, h, d)).
    qkv = g.node("Reshape", [qkv, g.i64([0, 0, 3 * heads, head_dim])], "qkv_heads")
    qkv = g.node("Transpose", [qkv], "qkv_t", perm=[0, 2, 1, 3])
    q, k, v = g.tmp("q"), g.tmp("k"), g.tmp("v")
    g.nodes.append(helper.make_node("Split", [qkv, g.i64([heads] * 3)], [q, k, v], name=q, axis=1))
    kt = g.node("Transpose", [k], "kt", perm=[0, 1, 3, 2])
    scores = g.node("MatMul", [q, kt], "scores")
    probs = g.node("Softmax", [scores], "probs", axis=-1)
    ctx = g.node("MatMul", [probs, v], "ctx")
    ctx = g.node("Transpose", [ctx], "ctx_t", perm=[0, 2, 1, 3])
    ctx = g.node("Reshape", [ctx, g.i64([0, 0, -1])], "ctx_flat")
    ls1 = t(p + "layer_scale_1").reshape(-1)
    out = g.linear(ctx, p + "token_mixer.proj", t(p + "token_mixer.proj.weight"),
                   t(p + "token_mixer.proj.bias") * ls1, scale=ls1)
    out = g.node("Transpose", [out], "proj_t", perm=[0, 2, 1])
    out = g.node("Reshape", [out, g.node("Shape", [x], "shape")], "proj_map")
    x = g.node("Add", [x, out], "residual")
    return _convffn(g, ckpt, x, p, dim, t(p + "layer_scale_2"))


def _build(g: _Graph, ckpt: Checkpoint, geo: VisionGeometry, layout: _Layout, step: Callable[[], None]) -> None:
    """Emit every node (and stream every initializer) from the stem to the projector output."""
    t = ckpt.tensor
    V = VISION_PREFIX
    d = geo.dims

    # Stem: 3x3/2 conv, 3x3/2 depthwise, 1x1; GELU after each.
    x = INPUT_NAME
    for i, (stride, groups) in enumerate(((2, 1), (2, d[0]), (1, 1))):
        p = f"{V}patch_embed.{i}.reparam_conv"
        x = g.gelu(g.conv(x, p, t(p + ".weight"), t(p + ".bias"), stride=stride, groups=groups))
        step()

    for k in range(geo.stages):
        embed, pos = layout.embeds[k], layout.pos[k]
        if embed is not None:
            p = f"{V}network.{embed}.proj."
            x = g.gelu(g.conv(x, p + "0.lkb_reparam", t(p + "0.lkb_reparam.weight"), t(p + "0.lkb_reparam.bias"),
                              stride=2, groups=d[k - 1]))
            x = g.gelu(g.conv(x, p + "1.reparam_conv", t(p + "1.reparam_conv.weight"),
                              t(p + "1.reparam_conv.bias")))
            step()
        if pos is not None:
            p = f"{V}network.{pos}.reparam_conv"
            x = g.conv(x, p, t(p + ".weight"), t(p + ".bias"), groups=d[k])
            step()
        for b in range(geo.depths[k]):
            p = f"{V}network.{layout.blocks[k]}.{b}."
            if geo.mixers[k] == ATTENTION:
                x = _attention(g, ckpt, x, p, d[k], geo.head_dim)
            else:
                x = g.conv(x, p + "token_mixer.reparam_conv", t(p + "token_mixer.reparam_conv.weight"),
                           t(p + "token_mixer.reparam_conv.bias"), groups=d[k])
                x = _convffn(g, ckpt, x, p, d[k], t(p + "layer_scale"))
            step()

    # conv_exp: grouped 3x3 conv (C -> 2C), squeeze-excite with a global mean, GELU.
    p = f"{V}conv_exp."
    x = g.conv(x, p + "reparam_conv", t(p + "reparam_conv.weight"), t(p + "reparam_conv.bias"), groups=d[-1])
    se = g.node("GlobalAveragePool", [x], "se_mean")
    se = g.node("Relu", [g.conv(se, p + "se.reduce", t(p + "se.reduce.weight"), t(p + "se.reduce.bias"))], "se_relu")
    se = g.node("Sigmoid", [g.conv(se, p + "se.expand", t(p + "se.expand.weight"), t(p + "se.expand.bias"))],
                "se_gate")
    x = g.gelu(g.node("Mul", [x, se], "se_scaled"))
    step()

    # Projector (mlp2x_gelu) on the row-major token sequence.
    x = g.to_tokens(x)
    p = PROJECTOR_PREFIX
    x = g.gelu(g.linear(x, p + "0", t(p + "0.weight"), t(p + "0.bias")))
    x = g.linear(x, p + "2", t(p + "2.weight"), t(p + "2.bias"))
    g.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name=OUTPUT_NAME))
    step()


def build_vision_onnx(ckpt: Checkpoint, out_path: Path, *, weight_dtype: str = "fp32",
                      report: Reporter | None = None) -> VisionGeometry:
    """Write the vision encoder + projector graph to ``out_path`` and return the geometry it was built for.

    Raises ShapeMismatchError naming the first tensor whose shape does not fit the geometry, CheckpointError when
    the tower's layout is not FastViTHD, ConversionError for an unknown ``weight_dtype``; ``report`` may raise
    Cancelled between blocks.
    """
    if weight_dtype not in WEIGHT_DTYPES:
        raise ConversionError(f"Unknown vision weight type '{weight_dtype}'.",
                              f"Choose one of: {', '.join(WEIGHT_DTYPES)}.")
    geo, layout, expected = _read(ckpt)
    check_shapes(ckpt, expected)

    total = 3 + sum(geo.depths) + sum(e is not None for e in layout.embeds) + sum(geo.pos_enc) + 3
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if report is not None:
            report("vision", done, total)

    if report is not None:
        report("vision", 0, total)
    try:
        with out_path.open("wb") as sink:
            g = _Graph(weight_dtype, sink)
            _build(g, ckpt, geo, layout, step)
            model = helper.make_model(
                helper.make_graph(
                    [], "fastvithd_projector",
                    [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, "size", "size"])],
                    [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, "tokens", geo.llm_hidden])]),
                opset_imports=[helper.make_opsetid("", OPSET)], producer_name="glimpse", ir_version=IR_VERSION,
                doc_string=(f"FastViTHD vision encoder + mlp2x_gelu projector; input RGB in [0, 1], side a multiple "
                            f"of {geo.patch_size}; {weight_dtype} weights, float32 compute."))
            g.finish(model)
        if out_path.stat().st_size >= 2**31:
            raise ConversionError("The vision graph is larger than 2 GB, the most one ONNX file can hold.",
                                  "This is not a FastViTHD tower Glimpse can convert.")
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        out_path.unlink(missing_ok=True)
        raise ConversionError(f"The written vision graph failed ONNX validation: {e}",
                              "This is a bug in Glimpse; please report it.") from e
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    step()
    return geo

