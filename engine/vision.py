"""VisionEncoder: the one owner of the onnxruntime session that runs ``vision.onnx`` (FastViTHD + projector)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from engine.errors import InputError, ModelFolderError
from engine.system import default_threads

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "image_embeddings"
PATCH = 64


class VisionEncoder:
    """Runs the image encoder. ``encode`` takes float32 [1, 3, S, S] and returns float32 [tokens, hidden]."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFolderError(f"{self.path} is missing.", "Convert or download the model again.")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise ModelFolderError(f"{self.path} cannot be loaded by onnxruntime: {e}".rstrip(".") + ".",
                                   "The file is damaged; convert or download the model again.") from e
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise ModelFolderError(f"{self.path} is not a Glimpse vision encoder (inputs {sorted(inputs)}, "
                                   f"outputs {sorted(outputs)}).", "Convert the model again.")
        width = outputs[OUTPUT_NAME].shape[-1]
        self.hidden: int | None = width if isinstance(width, int) else None

    def encode(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self._session is None:
            raise InputError("The vision encoder is closed.", "Load the model again.")
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32 or pixels.ndim != 4 \
                or pixels.shape[:2] != (1, 3) or pixels.shape[2] != pixels.shape[3] or pixels.shape[2] % PATCH:
            shape = list(getattr(pixels, "shape", []))
            raise InputError(f"Pixels must be float32 [1, 3, S, S] with S a multiple of {PATCH}; got "
                             f"{getattr(pixels, 'dtype', type(pixels).__name__)} {shape}.",
                             "Use Model.preprocess to prepare the image.")
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels)})
        rows: npt.NDArray[np.float32] = np.ascontiguousarray(out[0], dtype=np.float32)
        return rows

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> VisionEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
