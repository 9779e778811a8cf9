"""The model in a process of its own (the runner), so that a native crash or a hung kernel costs a sentence, not the
window: :class:`RunnerModel` on the caller's side (engine.runner.client), the process itself in
engine.runner.server, their wire format in engine.runner.protocol, injected faults in engine.runner.faults."""

from glimpse.engine.runner.client import RunnerError, RunnerModel

__all__ = ["RunnerError", "RunnerModel"]
