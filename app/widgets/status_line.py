"""The status line: what the model is doing, how fast the last answer came, and the camera's frame rate."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QWidget

from glimpse.app.worker import GENERATING, LOADING, NO_MODEL, READING, WATCHING, Reply

_STATE_TEXT = {
    NO_MODEL: "No model",
    LOADING: "Loading model…",
    "idle": "Idle",
    WATCHING: "Watching for changes",
    READING: "Reading image…",
    GENERATING: "Generating…",
}


class StatusLine(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 0, 4, 0)
        self.state = QLabel()
        self.timings = QLabel()
        self.fps = QLabel()
        self.model = QLabel()
        self.devices = QLabel()
        self.devices.setAccessibleName("Devices")
        self.state.setAccessibleName("Model state")
        self.timings.setAccessibleName("Timings of the last answer")
        for label in (self.state, self.timings, self.fps, self.devices, self.model):
            layout.addWidget(label)
        layout.insertStretch(3, 1)  # after the frame rate: devices and model on the right
        self.set_state(NO_MODEL)

    def set_state(self, state: str) -> None:
        self.state.setText(f"<b>{_STATE_TEXT.get(state, state)}</b>")
        self.state_key = state

    def set_reply(self, reply: Reply) -> None:
        parts = [f"TTFT {reply.ttft_ms:.0f} ms", reply.image_note if reply.encode_ms else "image cached"]
        if reply.tokens_per_s:
            parts.append(f"{reply.tokens_per_s:.1f} tok/s")
        self.timings.setText(" · ".join(parts))

    def set_rates(self, camera_fps: float | None, captions_per_min: float | None = None) -> None:
        parts = []
        if camera_fps is not None:
            parts.append(f"{camera_fps:.0f} fps")
        if captions_per_min:
            parts.append(f"{captions_per_min:.0f} captions/min")
        self.fps.setText(" · ".join(parts))

    def set_model(self, name: str) -> None:
        self.model.setText(f"Model: {name}" if name else "")
        if not name or name.endswith("(loading)") or name == "none":
            self.set_devices("", "")

    def set_devices(self, devices: str, gpu_not_used: str = "") -> None:
        """Which device runs each part ("LLM: Vulkan (Intel UHD 770, 25/25 layers), vision: CPU"); when the GPU was
        tried and is not used, the sentence that says why is the label's tooltip."""
        self.devices.setText(devices)
        self.devices.setToolTip(gpu_not_used or devices)
