"""Measured runtime settings: cached per CPU and model, re-measured when either changes, hostile caches ignored,
the chosen settings applied, and the answers unchanged by them."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from glimpse.engine.cli import main
from glimpse.engine.cli.bench import format_tuning
from glimpse.engine.models.model_folder import read_manifest
from glimpse.engine.runtime import tuning, tuning_measure
from glimpse.engine.runtime.model import load_model
from glimpse.engine.runtime.tuning import DEFAULTS, RuntimeSettings, settings_from_dict
from glimpse.engine.runtime.tuning_measure import settings_for

IMAGE = (np.random.default_rng(3).random((96, 128, 3)) * 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def _tuning_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_TUNE", "1")
    # A quiet CPU unless a test says otherwise: a measurement taken while the machine running the tests is busy
    # would otherwise be measured again at the next quiet start, and the tests count measurements.
    monkeypatch.setattr(tuning, "load_average", lambda: 0.0)
    monkeypatch.setattr(tuning_measure, "load_average", lambda: 0.0)


@pytest.fixture
def real_measurements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Counts measurements, each one run in full."""
    calls: list[Path] = []
    real = tuning_measure.measure

    def counting(folder: Path, manifest: Any, **kw: Any) -> Any:
        calls.append(folder)
        return real(folder, manifest, **kw)

    monkeypatch.setattr(tuning_measure, "measure", counting)
    yield calls


MEASURED = RuntimeSettings(vision_level="extended", vision_threads=1, n_ubatch=256, flash_attn=True, threads=1,
                           threads_batch=1)


@pytest.fixture
def measurements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Counts measurements, which return MEASURED at once: for the tests about when to measure, not how (a real
    measurement takes seconds, and these tests need many)."""
    calls: list[Path] = []

    def quick(folder: Path, manifest: Any, *, status: Any = None, extra_bufts: bool = True
              ) -> tuple[RuntimeSettings, dict[str, Any]]:
        calls.append(folder)
        for done, text in enumerate(("Measuring the image encoder (quick)", "Measuring the language model (quick)")):
            if status is not None:
                status(text, done, 2)
        return MEASURED, {"seconds": 0.0}

    monkeypatch.setattr(tuning_measure, "measure", quick)
    yield calls


def _only_entry() -> Path:
    entries = list(tuning.tuning_dir().glob("*.json"))
    assert len(entries) == 1, entries
    return entries[0]


# -- measuring and caching -----------------------------------------------------------------------------------------

def test_first_load_measures_reports_progress_and_caches(tiny_model_dir: Path,
                                                         real_measurements: list[Path]) -> None:

    seen: list[tuple[str, int, int]] = []
    first = settings_for(tiny_model_dir, read_manifest(tiny_model_dir), status=lambda *a: seen.append(a))
    assert first.measured_now and real_measurements == [tiny_model_dir]
    assert seen and seen[-1][1] == seen[-1][2] and any("image encoder" in text for text, _, _ in seen)
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)
    report = first.report
    assert {c["level"] for c in report["vision"]["candidates"]} == {"all", "extended"}
    timed = report["vision"]["candidates"] + [c for c in report["llm"]["candidates"] if "unavailable" not in c]
    assert len(timed) >= 2 + 1 + 1 + len(tuning_measure.UBATCH_CANDIDATES) and all(c["ms"] > 0 for c in timed)
    assert report["llm"]["rows"] == tuning_measure.PROBE_ROWS
    entry = json.loads(_only_entry().read_text())
    assert settings_from_dict(entry["settings"]) == first.settings

    again = settings_for(tiny_model_dir, read_manifest(tiny_model_dir))
    assert not again.measured_now and again.settings == first.settings and len(real_measurements) == 1
    assert again.report == first.report

    text = format_tuning(again.report)
    assert "graph extended" in text and "n_ubatch 128" in text and "decode with" in text
    # Each candidate's time is shown beside the time of the choice it raced in the same alternation.
    assert text.count("ms for the choice it raced") == len(timed) - 2


def test_another_cpu_measures_again(tiny_model_dir: Path, measurements: list[Path],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = read_manifest(tiny_model_dir)
    settings_for(tiny_model_dir, manifest)
    real = tuning.cpu_fingerprint()
    for changed in ({**real, "features": [f for f in real["features"] if f != "AVX2"] + ["AVX512F"]},
                    {**real, "cpu": real["cpu"] + " (another one)"}):
        monkeypatch.setattr(tuning, "cpu_fingerprint", lambda changed=changed: changed)
        assert settings_for(tiny_model_dir, manifest).measured_now
    assert len(measurements) == 3 and len(list(tuning.tuning_dir().glob("*.json"))) == 3


def test_another_model_measures_again(tiny_model_dir: Path, measurements: list[Path]) -> None:
    manifest = read_manifest(tiny_model_dir)
    settings_for(tiny_model_dir, manifest)
    files = {**manifest.files, "llm.gguf": {**manifest.files["llm.gguf"], "sha256": "0" * 64}}
    other = replace(manifest, files=files)
    assert tuning.model_key(other) != tuning.model_key(manifest)
    assert settings_for(tiny_model_dir, other).measured_now and len(measurements) == 2


def test_retune_measures_even_when_cached(tiny_model_dir: Path, measurements: list[Path]) -> None:
    manifest = read_manifest(tiny_model_dir)
    settings_for(tiny_model_dir, manifest)
    assert settings_for(tiny_model_dir, manifest, retune=True).measured_now and len(measurements) == 2


def test_choices_made_on_a_busy_cpu_are_measured_again_once_it_is_quiet(tiny_model_dir: Path,
                                                                          measurements: list[Path],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = read_manifest(tiny_model_dir)
    cpus = tuning.os.cpu_count() or 1
    busy = tuning.Tuned(CHOSEN, {"load_average": [cpus * 8.0, cpus * 9.0], "logical_cpus": cpus},
                        tuning.cpu_fingerprint(), measured_now=False)
    tuning.write_cached(tuning.model_key(manifest), busy)
    monkeypatch.setattr(tuning, "load_average", lambda: cpus * 5.0)
    assert settings_for(tiny_model_dir, manifest).settings == CHOSEN and measurements == []  # still busy: kept
    monkeypatch.setattr(tuning, "load_average", lambda: 0.1)
    quiet = settings_for(tiny_model_dir, manifest)
    assert quiet.measured_now and quiet.settings == MEASURED and len(measurements) == 1
    # a quiet measurement is kept however busy the CPU is later
    quiet_report = tuning.Tuned(CHOSEN, {"load_average": [0.2, 0.3], "logical_cpus": cpus},
                                tuning.cpu_fingerprint(), measured_now=False)
    tuning.write_cached(tuning.model_key(manifest), quiet_report)
    monkeypatch.setattr(tuning, "load_average", lambda: cpus * 5.0)
    assert settings_for(tiny_model_dir, manifest).settings == CHOSEN and len(measurements) == 1


@pytest.mark.parametrize("report", [{}, {"load_average": "high", "logical_cpus": 2}, {"load_average": [],
                                    "logical_cpus": 2}, {"load_average": [9.0], "logical_cpus": 0},
                                    {"load_average": [9.0, "x"], "logical_cpus": 2}])
def test_an_odd_load_record_is_not_busy(report: dict[str, Any]) -> None:
    assert not tuning.measured_while_busy(report)
    assert tuning.measured_while_busy({"load_average": [0.5, 2.5], "logical_cpus": 2})


def test_glimpse_tune_off_uses_the_defaults(tiny_model_dir: Path, measurements: list[Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_TUNE", "0")
    with load_model(tiny_model_dir, n_ctx=512) as model:
        assert model.settings == DEFAULTS.resolved()
    assert measurements == [] and not tuning.tuning_dir().exists()


# -- a cache file is only advice -----------------------------------------------------------------------------------

def _valid_entry(tiny_model_dir: Path) -> tuple[Path, dict[str, Any]]:
    settings_for(tiny_model_dir, read_manifest(tiny_model_dir))
    path = _only_entry()
    return path, json.loads(path.read_text())


HOSTILE_SETTINGS: list[dict[str, Any]] = [
    {"vision_threads": 10**9},
    {"threads": 0},
    {"threads_batch": -1},
    {"n_ubatch": 100000},
    {"n_batch": 1 << 40},
    {"kv_type": "../../etc/passwd"},
    {"kv_type": "q8_0", "flash_attn": False},
    {"vision_level": "disable_all"},
    {"flash_attn": "yes"},
    {"threads": 1.5},
    {"threads": True},
    {"unknown_key": 1},
]


@pytest.mark.parametrize("bad", HOSTILE_SETTINGS, ids=lambda b: ",".join(f"{k}={v}" for k, v in b.items()))
def test_out_of_range_settings_are_rejected(bad: dict[str, Any]) -> None:
    assert settings_from_dict(asdict(DEFAULTS.resolved())) is not None
    assert settings_from_dict({**asdict(DEFAULTS.resolved()), **bad}) is None


def _damage(kind: str, path: Path, entry: dict[str, Any]) -> None:
    if kind == "garbage":
        path.write_bytes(b"\x00\xffnot json at all")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_text(json.dumps(entry)[:40])
    elif kind == "a list":
        path.write_text("[1, 2, 3]")
    elif kind == "deeply nested":
        path.write_text("[" * 50000 + "]" * 50000)
    elif kind == "huge":
        path.write_text(json.dumps({**entry, "pad": "x" * (tuning.MAX_FILE_BYTES + 1)}))
    elif kind == "other cpu inside":
        path.write_text(json.dumps({**entry, "cpu": {**entry["cpu"], "cpu": "Something Else"}}))
    elif kind == "other model inside":
        path.write_text(json.dumps({**entry, "model": "f" * 64}))
    elif kind == "future format":
        path.write_text(json.dumps({**entry, "format": 99}))
    elif kind == "hostile settings":
        path.write_text(json.dumps({**entry, "settings": {**entry["settings"], "vision_threads": 10**9}}))
    elif kind == "settings not a dict":
        path.write_text(json.dumps({**entry, "settings": "fast"}))
    elif kind == "a folder":
        path.unlink()
        path.mkdir()
    elif kind == "a symlink":
        target = path.with_name("elsewhere.json")
        target.write_text(json.dumps(entry))
        path.unlink()
        path.symlink_to(target)
    else:  # pragma: no cover - a typo in the parameter list
        raise AssertionError(kind)


DAMAGED = {"garbage", "empty", "truncated", "a list", "deeply nested", "huge", "a folder", "a symlink"}


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "a list", "deeply nested", "huge",
                                  "other cpu inside", "other model inside", "future format", "hostile settings",
                                  "settings not a dict", "a folder", "a symlink"])
def test_a_corrupt_or_hostile_cache_is_ignored_and_measured_again(kind: str, tiny_model_dir: Path,
                                                                   measurements: list[Path],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    path, entry = _valid_entry(tiny_model_dir)
    _damage(kind, path, entry)
    with caplog.at_level(logging.WARNING, logger="glimpse"):
        assert tuning.read_cached(entry["model"], tuning.cpu_fingerprint()) is None
        assert tuning.read_cached(entry["model"], tuning.cpu_fingerprint()) is None
    damaged = path.with_name(path.name + ".damaged")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if kind in DAMAGED:  # unreadable or half-written: set aside beside itself, said once, then rebuilt
        assert os.path.lexists(damaged) and not os.path.lexists(path)
        assert len(warnings) == 1 and str(path) in warnings[0] and "damaged" in warnings[0]
    else:  # readable, but for something else: ignored quietly and replaced by the next measurement
        assert not os.path.lexists(damaged) and warnings == []
    with load_model(tiny_model_dir, n_ctx=512) as model:
        assert model.ask(IMAGE, "What is it?", size=256, max_tokens=2).finish_reason in ("stop", "length")
    assert len(measurements) == 2
    if kind != "a symlink":
        assert settings_from_dict(json.loads(path.read_text())["settings"]) is not None


def test_an_unwritable_cache_folder_still_loads(tiny_model_dir: Path, measurements: list[Path],
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setattr(tuning, "tuning_dir", lambda: blocker / "tuning")
    with load_model(tiny_model_dir, n_ctx=512) as model:
        assert model.settings.n_batch == DEFAULTS.n_batch
    assert len(measurements) == 1


# -- the chosen settings are applied, and keep the answers ----------------------------------------------------------

CHOSEN = RuntimeSettings(vision_level="extended", vision_threads=1, n_ubatch=128, flash_attn=True, kv_type="f16",
                         threads=1, threads_batch=1)


def _plant(tiny_model_dir: Path, settings: RuntimeSettings) -> None:
    manifest = read_manifest(tiny_model_dir)
    tuned = tuning.Tuned(settings, {"planted": True}, tuning.cpu_fingerprint(), measured_now=False)
    assert tuning.write_cached(tuning.model_key(manifest), tuned) is not None


def test_cached_choices_are_applied(tiny_model_dir: Path, measurements: list[Path]) -> None:
    _plant(tiny_model_dir, CHOSEN)
    with load_model(tiny_model_dir, n_ctx=512) as model:
        assert model.settings == CHOSEN and measurements == []
        session = model.vision._session
        assert session is not None
        opts = session.get_session_options()
        assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        assert opts.intra_op_num_threads == 1
        params = model.llm._ll.context_params
        assert params.n_ubatch == 128 and params.flash_attn_type == 1
        assert params.n_threads == 1 and params.n_threads_batch == 1 and params.type_k == 1


def test_settings_the_model_cannot_take_fall_back_to_the_defaults(tiny_model_dir: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    # The tiny model's 16-wide attention heads cannot hold a q8_0 KV cache (blocks of 32): llama.cpp refuses it.
    _plant(tiny_model_dir, replace(CHOSEN, kv_type="q8_0"))
    with load_model(tiny_model_dir, n_ctx=512) as model:
        assert model.settings == DEFAULTS.resolved()
        assert model.ask(IMAGE, "What is it?", size=256, max_tokens=2).timings.generated_tokens >= 1
    assert "did not load" in caplog.text


def test_a_setting_the_model_cannot_take_is_measured_as_unavailable(tiny_model_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     real_measurements: list[Path]) -> None:
    monkeypatch.setattr(tuning_measure, "faster", lambda candidate, best: True)  # every candidate wins its round
    tuned = settings_for(tiny_model_dir, read_manifest(tiny_model_dir))
    q8 = [c for c in tuned.report["llm"]["candidates"] if c["kv_type"] == "q8_0"]
    assert len(q8) == 1 and "Failed to create" in q8[0]["unavailable"]
    assert tuned.settings.kv_type == "f16" and tuned.settings.flash_attn


def test_explicit_arguments_override_the_cache(tiny_model_dir: Path) -> None:
    _plant(tiny_model_dir, replace(CHOSEN, kv_type="q8_0"))
    with load_model(tiny_model_dir, n_ctx=512, threads=2, flash_attn=False) as model:
        assert model.settings.threads == model.settings.threads_batch == model.settings.vision_threads == 2
        assert not model.settings.flash_attn and model.settings.kv_type == "f16"  # q8_0 V needs flash attention
        assert model.llm._ll.context_params.flash_attn_type == 0


@pytest.mark.parametrize("settings", [CHOSEN, replace(CHOSEN, n_ubatch=64, vision_level="all", threads=2)],
                         ids=["fa-ubatch128-extended", "fa-ubatch64-all"])
def test_tuned_settings_keep_the_answer(tiny_model_dir: Path, settings: RuntimeSettings) -> None:
    with load_model(tiny_model_dir, n_ctx=512, tune=False) as model:
        reference = model.ask(IMAGE, "Describe it.", size=256, max_tokens=8)
        rows = model.encode_image(IMAGE, size=256).rows
    _plant(tiny_model_dir, settings)
    with load_model(tiny_model_dir, n_ctx=512) as model:
        assert model.settings == settings
        tuned = model.ask(IMAGE, "Describe it.", size=256, max_tokens=8)
        tuned_rows = model.encode_image(IMAGE, size=256).rows
    # The tiny model's encoder is int8: onnxruntime fuses its quantize/dequantize pairs into QLinearConv at either
    # level but with other kernels, so rows differ by a rounding step here and there (max 1.2e-3 of 0.16 measured).
    assert tuning_measure.cosine(tuned_rows, rows) >= tuning_measure.ROWS_COSINE
    np.testing.assert_allclose(tuned_rows, rows, atol=3e-3)
    assert tuned.token_ids == reference.token_ids


# -- the rules each choice is made by ----------------------------------------------------------------------------

def test_a_candidate_must_be_clearly_faster() -> None:
    assert tuning_measure.faster(90.0, 100.0)
    assert not tuning_measure.faster(98.0, 100.0)  # within noise: the current choice stays
    assert not tuning_measure.faster(120.0, 100.0)


def test_a_candidate_that_changes_the_answer_is_rejected() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(1000).astype(np.float32)
    assert tuning_measure.same_logits(reference, reference + 1e-4 * rng.standard_normal(1000).astype(np.float32))[0]
    drifted = reference + 0.05 * rng.standard_normal(1000).astype(np.float32)
    keeps, cos = tuning_measure.same_logits(reference, drifted)
    assert not keeps and cos < tuning_measure.LOGITS_COSINE
    flipped = reference.copy()
    top, second = np.argsort(reference)[-1], np.argsort(reference)[-2]
    flipped[[top, second]] = reference[[second, top]]
    keeps, cos = tuning_measure.same_logits(reference, flipped)
    assert not keeps and cos > 0.99  # close overall, but another token would be chosen


def test_cpu_class_names() -> None:
    assert tuning.cpu_class(["AVX", "AVX2", "FMA3", "AVX512F", "AVX512_VNNI"]) == "AVX-512 VNNI"
    assert tuning.cpu_class(["AVX", "AVX2", "FMA3", "F16C"]) == "AVX2"
    assert tuning.cpu_class(["ASIMD", "ASIMDDP"]) == "NEON dot product"
    assert tuning.cpu_class(["SSE2"]) == "baseline"


# -- the command line ------------------------------------------------------------------------------------------------

def test_bench_tune_measures_again_and_says_so(tiny_model_dir: Path, measurements: list[Path],
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_RUNNER", "0")  # the measurement is faked in this process, so the model must load here
    _plant(tiny_model_dir, CHOSEN)
    assert main(["bench", str(tiny_model_dir), "--tune-only"]) == 0
    assert measurements == []
    assert "n_ubatch 128" in capsys.readouterr().out
    assert main(["bench", str(tiny_model_dir), "--tune", "--tune-only", "--n-ctx", "512"]) == 0
    out = capsys.readouterr()
    assert len(measurements) == 1
    assert "measuring the fastest settings" in out.err and "[2/2] Measuring the language model" in out.err
    assert "n_ubatch 256" in out.out
    assert settings_from_dict(json.loads(_only_entry().read_text())["settings"]) == MEASURED


def test_a_hostile_measurement_report_does_not_crash() -> None:

    assert "CPU was busy" in format_tuning({"load_average": [1.0, 9.5], "logical_cpus": 2})
    assert "busy" not in format_tuning({"load_average": [0.4, 1.5], "logical_cpus": 2})
    for hostile in ({"vision": {"candidates": [{"level": 1}]}}, {"llm": {"candidates": "x"}}, {"vision": []},
                    {"llm": {"decode_ms_per_token": [1, 2]}}):
        assert "unreadable" in format_tuning(hostile)


def test_a_race_alternates_and_takes_each_sides_best(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.010, 0.010, 0.030, 0.030, 0.035, 0.035, 0.042])  # A 10 ms, B 20 ms, B 5 ms, A 7 ms
    monkeypatch.setattr(tuning_measure.time, "perf_counter", lambda: next(clock))
    order: list[str] = []
    current, candidate = tuning_measure.race(lambda: order.append("A"), lambda: order.append("B"), runs=2)
    assert order == ["A", "B", "B", "A"]
    assert (current, candidate) == (7.0, 5.0)
