"""The optimized vision graphs onnxruntime caches for each model, by file name.

``engine.runtime.vision`` writes one per vision graph, CPU and optimization level into ``engine.folders.graph_cache``
as ``vision-<first 32 hex digits of the graph's sha256 in model.json>-<CPU tag>[-<level>].onnx``; the store deletes
a removed model's with :func:`drop_cached`, without importing onnxruntime. ``engine.models.leftovers`` knows the
partial files' names.
"""

from __future__ import annotations

import re
from pathlib import Path

from glimpse.engine.folders import graph_cache

_HEX64 = re.compile(r"[0-9a-f]{64}")


def cached_graph_name(sha: str, cpu_tag: str, level: str) -> str:
    """The cache file's name for the vision graph whose sha256 is ``sha``, optimized at ``level`` on a CPU."""
    suffix = "" if level == "all" else f"-{level}"
    return f"vision-{sha[:32]}-{cpu_tag}{suffix}.onnx"


def drop_cached(sha: str) -> list[tuple[Path, int]]:
    """Delete the optimized graphs cached for the vision graph whose sha256 is ``sha`` (for every CPU they were made
    on); returns (path, bytes freed) pairs. Silent about files it cannot delete: a cache is never worth an error."""
    freed: list[tuple[Path, int]] = []
    if not _HEX64.fullmatch(sha):  # from model.json: a '*' or '/' must not widen the pattern
        return freed
    for entry in graph_cache().glob(f"vision-{sha[:32]}-*.onnx"):
        try:
            size = entry.stat().st_size
            entry.unlink()
        except OSError:
            continue
        freed.append((entry, size))
    return freed
