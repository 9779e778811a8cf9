"""A wheel, installed into a fresh venv, converts to the same vision precision as the source tree.

The wheel is built from the project's files (as `pip install .`, pipx or a distro would), installed with pip into
a new venv that has no pip and no packages of its own; the venv sees this interpreter's site-packages (the
dependencies) through a .pth line, which Python appends after the venv's own site-packages, so `glimpse.engine` and
`glimpse.assets` must come from the wheel. No network: the build runs without isolation and the install with
--no-index. The wheel adds one name to site-packages, `glimpse`, never the repository's generic folder names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from glimpse.engine.convert import convert_checkpoint
from glimpse.engine.version import __version__

ROOT = Path(__file__).resolve().parents[1]


def _project_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the project's file list is unknown")
    return [line for line in out.splitlines() if line and (ROOT / line).is_file()]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_converts_like_the_source_tree(tiny_checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    for name in _project_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(src)], tmp_path)
    (wheel,) = dist.glob("glimpse-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp_path).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp_path, env)

    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name.split("/")[0] for name in archive.namelist()}
    assert in_wheel == {"glimpse", next(n for n in in_wheel if n.endswith(".dist-info"))}, in_wheel
    top_level = {p.name for p in site.iterdir()} - {"dependencies.pth", "__pycache__"}
    assert "glimpse" in top_level and not top_level & {"engine", "app", "assets"}, sorted(top_level)
    assert not (site / "glimpse" / "__init__.py").exists()  # a namespace package (pyproject.toml)

    where = json.loads(_run([str(python), "-c", "import json; from glimpse import assets, engine; "
                             "import glimpse.engine.convert.vision_int8 as v; import glimpse.engine.folders as f; "
                             "print(json.dumps([engine.__file__, assets.__file__, str(f.assets_root()), "
                             "len(v.calibration_images()), len(v.heldout_images())]))"], tmp_path, env))
    for path in where[:3]:
        assert Path(path).resolve().is_relative_to(site.resolve()), path
    assert where[3:] == [12, 6]

    script = venv / ("Scripts/glimpse.exe" if os.name == "nt" else "bin/glimpse")
    assert _run([str(script), "--version"], tmp_path, env).strip() == f"glimpse {__version__}"

    installed = tmp_path / "from-wheel"
    out = _run([str(python), "-m", "glimpse.engine", "convert", str(tiny_checkpoint), str(installed), "--quant", "f16",
                "-q"], tmp_path, env)
    wheel_vision = json.loads((installed / "model.json").read_text(encoding="utf-8"))["vision"]
    assert f"Vision encoder: {wheel_vision['precision_reason']}" in out

    tree_vision = json.loads((convert_checkpoint(tiny_checkpoint, tmp_path / "from-tree", quant="f16")
                              / "model.json").read_text(encoding="utf-8"))["vision"]
    assert wheel_vision["precision"] == tree_vision["precision"] == "int8"
    assert wheel_vision["int8_gate"]["views"] == tree_vision["int8_gate"]["views"]
    a, b = wheel_vision["int8_gate"]["tries"][0], tree_vision["int8_gate"]["tries"][0]
    assert a["passed"] and b["passed"]
    assert a["mean_kl"] == pytest.approx(b["mean_kl"], rel=1e-3, abs=1e-6)
