"""Choosing the next token from logits: greedy, or temperature with nucleus (top-p) sampling."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from glimpse.engine.runtime.types import SamplingOptions

_CANDIDATES = 1024  # top-p is computed over the most likely tokens first; the full sort is a rare fallback


class Sampler:
    def __init__(self, options: SamplingOptions) -> None:
        self.options = options
        self._rng = np.random.default_rng(options.seed)

    def __call__(self, logits: npt.NDArray[np.float32]) -> int:
        temperature = self.options.temperature
        if temperature <= 0.0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / temperature
        k = min(_CANDIDATES, scaled.shape[0])
        top = np.argpartition(scaled, -k)[-k:]
        top = top[np.argsort(scaled[top])[::-1]]
        shifted = np.exp(scaled - scaled[top[0]])
        probs_top = shifted[top] / shifted.sum()
        cumulative = np.cumsum(probs_top)
        if self.options.top_p < 1.0 and cumulative[-1] >= self.options.top_p:
            keep = int(np.searchsorted(cumulative, self.options.top_p)) + 1
            ids, probs = top[:keep], probs_top[:keep]
        elif self.options.top_p < 1.0:  # the nucleus is wider than the candidates: sort everything
            order = np.argsort(scaled)[::-1]
            all_probs = shifted[order] / shifted.sum()
            keep = int(np.searchsorted(np.cumsum(all_probs), self.options.top_p)) + 1
            ids, probs = order[:keep], all_probs[:keep]
        else:
            ids, probs = np.arange(scaled.shape[0]), shifted / shifted.sum()
        return int(self._rng.choice(ids, p=probs / probs.sum()))
