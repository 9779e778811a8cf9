"""packaging/build_deb.py: versions, Depends read from the bundle's ELF files, and a real .deb from a small fake
bundle checked by unpacking it again (dpkg-deb -x) rather than by trusting the builder."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("build_deb", REPO / "packaging" / "build_deb.py")
assert _spec is not None and _spec.loader is not None
build_deb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_deb)

HAVE_DPKG = all(shutil.which(t) for t in ("dpkg-deb", "objdump", "dpkg")) and Path("/bin/true").is_file()


@pytest.mark.parametrize("version", ["0.1.0", "0.1.0~ci.old", "1.2+git20260101-1"])
def test_debian_versions_are_accepted(version: str) -> None:
    assert build_deb.check_version(version) == version


@pytest.mark.parametrize("version", ["", "v0.1", "0.1 beta", "1:0.1", "0.1_2", "0.1-1-2"])
def test_other_versions_are_refused(version: str) -> None:
    with pytest.raises(build_deb.PackagingError, match="not a Debian version"):
        build_deb.check_version(version)


def test_depends_and_recommends_come_from_what_the_bundle_needs() -> None:
    qt = "/_internal/PySide6/Qt"
    needs = {
        "/glimpse": ["libc.so.6", "libpython3.11.so.1.0"],
        "/_internal/libpython3.11.so.1.0": ["libc.so.6"],  # carried by the bundle itself
        "/_internal/PySide6/QtCore.abi3.so": ["libQt6Core.so.6"],
        f"{qt}/lib/libQt6Core.so.6": ["libc.so.6", "libicu.so.73"],
        "/_internal/libicu.so.73": [],
        f"{qt}/plugins/platforms/libqxcb.so": ["libQt6XcbQpa.so.6"],
        f"{qt}/lib/libQt6XcbQpa.so.6": ["libxcb-cursor.so.0", "libQt6Core.so.6"],
        f"{qt}/plugins/platformthemes/libqgtk3.so": ["libgtk-3.so.0"],
        f"{qt}/plugins/texttospeech/libqtexttospeech_speechd.so": ["libspeechd.so.2"],
        f"{qt}/plugins/platforms/libqwayland-generic.so": ["libQt6WaylandClient.so.6"],
        f"{qt}/lib/libQt6WaylandClient.so.6": ["libwayland-cursor.so.0"],  # only Wayland plugins link it
        f"{qt}/plugins/imageformats/libqexotic.so": ["libexotic.so.9"],
        "/_internal/llama_cpp/lib/libggml-vulkan.so": ["libvulkan.so.1", "libc.so.6"],  # loaded only with a loader
    }
    known = {"libc.so.6": "libc6", "libgtk-3.so.0": "libgtk-3-0", "libspeechd.so.2": "libspeechd2",
             "libvulkan.so.1": "libvulkan1"}
    required = build_deb.required_files(needs)
    assert f"{qt}/lib/libQt6XcbQpa.so.6" in required and f"{qt}/lib/libQt6Core.so.6" in required
    assert f"{qt}/lib/libQt6WaylandClient.so.6" not in required
    depends, recommends = build_deb.dependencies(needs, known.get)
    # Qt's xcb libraries and PulseAudio always; libc6 because the bundle links it and does not carry it.
    assert depends == sorted({"libc6", *build_deb.ALWAYS_DEPENDS})
    assert {"libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1", "libpulse0"} <= set(depends)
    # libexotic and libwayland-cursor: optional and nobody can name their package, so left out.
    assert recommends == ["libgtk-3-0", "libspeechd2", "libvulkan1"]


def test_a_required_library_nobody_provides_is_a_sentence() -> None:
    needs = {"/glimpse": ["libQt6Core.so.6"], "/_internal/libQt6Core.so.6": ["libmystery.so.1"]}
    with pytest.raises(build_deb.PackagingError) as err:
        build_deb.dependencies(needs, lambda _: None)
    assert "libmystery.so.1 (needed by /_internal/libQt6Core.so.6)" in str(err.value)


def test_a_folder_without_the_executable_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    with pytest.raises(build_deb.PackagingError, match="no executable 'glimpse'"):
        build_deb.stage(tmp_path / "bundle", tmp_path / "root", "0.1.0", lambda _: None)


@pytest.mark.skipif(not HAVE_DPKG, reason="needs dpkg-deb, dpkg and objdump (Debian or Ubuntu)")
def test_a_package_built_from_a_fake_bundle(tmp_path: Path) -> None:

    bundle = tmp_path / "Glimpse"
    (bundle / "_internal").mkdir(parents=True)
    shutil.copy2("/bin/true", bundle / "glimpse")  # an ELF executable that needs libc
    (bundle / "_internal" / "THIRD_PARTY.md").write_text("third parties\n")
    deb = build_deb.build(bundle, tmp_path / "out", "0.1.0", compression="gzip")
    assert deb.name == "glimpse_0.1.0_amd64.deb"

    field = lambda name: subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,  # noqa: E731
                                        check=True).stdout.strip()
    assert field("Package") == "glimpse" and field("Version") == "0.1.0" and field("Architecture") == "amd64"
    depends = [d.strip() for d in field("Depends").split(",")]
    assert "libc6" in depends and "libpulse0" in depends

    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/glimpse -> /opt/glimpse/glimpse" in listing
    assert all(" root/root " in line for line in listing.splitlines())
    root = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(root / "DEBIAN")], check=True)
    assert (root / "opt/glimpse/glimpse").read_bytes() == Path("/bin/true").read_bytes()
    assert (root / "opt/glimpse/glimpse").stat().st_mode & 0o777 == 0o755
    assert (root / "opt/glimpse/_internal/THIRD_PARTY.md").stat().st_mode & 0o777 == 0o644
    for size in build_deb.ICON_SIZES:
        with Image.open(root / f"usr/share/icons/hicolor/{size}x{size}/apps/glimpse.png") as icon:
            assert icon.size == (size, size)
    desktop = (root / "usr/share/applications/glimpse.desktop").read_text()
    assert "Exec=glimpse" in desktop and "Icon=glimpse" in desktop
    metainfo = (root / "usr/share/metainfo/org.glimpse.Glimpse.metainfo.xml").read_text()
    assert "<launchable type=\"desktop-id\">glimpse.desktop</launchable>" in metainfo
    copyright_text = (root / "usr/share/doc/glimpse/copyright").read_text()
    assert copyright_text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    assert "Permission is hereby granted" in copyright_text and "THIRD_PARTY.md" in copyright_text
    changelog = gzip.decompress((root / "usr/share/doc/glimpse/changelog.gz").read_bytes()).decode()
    assert changelog.startswith("glimpse (0.1.0) unstable; urgency=medium")
    for line in (root / "DEBIAN/md5sums").read_text().splitlines():
        digest, name = line.split("  ", 1)
        assert hashlib.md5((root / name).read_bytes()).hexdigest() == digest, name
    # Nothing outside the package's own places.
    tops = {p.relative_to(root).parts[0] for p in root.iterdir()}
    assert tops == {"opt", "usr", "DEBIAN"}
    if shutil.which("desktop-file-validate"):
        subprocess.run(["desktop-file-validate", str(root / "usr/share/applications/glimpse.desktop")], check=True)


@pytest.mark.skipif(not HAVE_DPKG, reason="needs dpkg-deb, dpkg and objdump (Debian or Ubuntu)")
def test_shared_libraries_lose_their_execute_bit(tmp_path: Path) -> None:
    bundle = tmp_path / "Glimpse"
    (bundle / "_internal").mkdir(parents=True)
    shutil.copy2("/bin/true", bundle / "glimpse")
    for name in ("libfoo.so", "libfoo.so.6.2", "tool"):
        shutil.copy2("/bin/true", bundle / "_internal" / name)
        (bundle / "_internal" / name).chmod(0o755)
    build_deb.stage(bundle, tmp_path / "root", "0.1.0", {"libc.so.6": "libc6"}.get)
    internal = tmp_path / "root/opt/glimpse/_internal"
    assert (internal / "libfoo.so").stat().st_mode & 0o777 == 0o644
    assert (internal / "libfoo.so.6.2").stat().st_mode & 0o777 == 0o644
    assert (internal / "tool").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "root/opt/glimpse/glimpse").stat().st_mode & 0o777 == 0o755


@pytest.mark.skipif(not (HAVE_DPKG and shutil.which("patchelf") and shutil.which("cc")),
                    reason="needs objdump, patchelf and a C compiler")
def test_runpaths_outside_the_bundle_are_dropped(tmp_path: Path) -> None:
    source = tmp_path / "lib.c"
    source.write_text("int glimpse_answer(void) { return 42; }\n")
    lib = tmp_path / "bundle" / "libfoo.so"
    lib.parent.mkdir()
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(source),
                    "-Wl,-rpath,/root/.pyenv/versions/3.11.7/lib:$ORIGIN/sub"], check=True)
    assert build_deb.runpath(lib) == ["/root/.pyenv/versions/3.11.7/lib", "$ORIGIN/sub"]
    assert build_deb.drop_foreign_runpaths(lib.parent) == [lib]
    assert build_deb.runpath(lib) == ["$ORIGIN/sub"]
    assert build_deb.drop_foreign_runpaths(lib.parent) == []  # nothing left to change
