"""Build a Debian package from the one-folder bundle (dist/Glimpse), with dpkg-deb.

    python packaging/build_deb.py dist/Glimpse --out dist        # writes dist/glimpse_<version>_amd64.deb

Layout: the bundle in /opt/glimpse, the command /usr/bin/glimpse, the desktop entry, hicolor icons in several
sizes, AppStream metainfo, and the licences in /usr/share/doc/glimpse. Nothing is written anywhere else and there
are no maintainer scripts: the icon and menu caches are refreshed by dpkg triggers, and everything the user makes
(models, settings, transcripts, logs) lives in their own folders, so installing a newer version or removing the
package never touches it.

Depends is read from the bundle itself: every shared library its ELF files need that it does not carry is looked
up in this machine's dpkg database. Libraries needed only by optional Qt plugins (other platforms, themes, speech
engines) become Recommends, because Qt skips a plugin whose libraries are missing; the rest are Depends.
Needs: dpkg-deb, objdump (binutils), Pillow.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LINUX = ROOT / "packaging" / "linux"
PACKAGE = "glimpse"
MAINTAINER = "Glimpse maintainers <glimpse@users.noreply.github.com>"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256)
METAINFO = "org.glimpse.Glimpse.metainfo.xml"
# Debian policy 5.6.12, without an epoch (no release of Glimpse ever needs one).
_VERSION = re.compile(r"[0-9][A-Za-z0-9.+~]*(-[A-Za-z0-9.+~]+)?")
# Plugins Qt loads only if present and usable: their libraries are recommended, not required. The xcb platform
# plugin and its GL integration are what the window needs on X11, so they count as required. llama.cpp's Vulkan
# backend is one too: loaded only where the Vulkan loader is (engine/runtime/gpu_backends.py), so libvulkan1 is
# recommended, and the CPU answers without it.
_OPTIONAL_PLUGIN = re.compile(r"/plugins/(?!platforms/libqxcb\.so|xcbglintegrations/)|/llama_cpp/lib/libggml-vulkan\.")
# The libraries Qt's xcb platform plugin links, and their packages. They are always in Depends: PyInstaller copies
# them into the bundle only if the build machine has them installed, and the package must work the same either way.
KNOWN_SONAMES = {
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0", "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-render-util.so.0": "libxcb-render-util0", "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0", "libxkbcommon.so.0": "libxkbcommon0",
    "libxcb-randr.so.0": "libxcb-randr0", "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-xfixes.so.0": "libxcb-xfixes0", "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-shm.so.0": "libxcb-shm0", "libxcb-render.so.0": "libxcb-render0", "libxcb-glx.so.0": "libxcb-glx0",
    "libxcb.so.1": "libxcb1", "libX11-xcb.so.1": "libx11-xcb1", "libX11.so.6": "libx11-6",
    "libpulse.so.0": "libpulse0",
}
# And Qt Multimedia's PulseAudio client, which some Qt versions open with dlopen (no ELF file names it then).
# sensible-utils: the bundled libmount/libblkid run sensible-pager.
ALWAYS_DEPENDS = tuple(sorted({*KNOWN_SONAMES.values(), "sensible-utils"}))


class PackagingError(Exception):
    """A sentence saying what is wrong with the bundle or the build machine, and what to do."""


Resolver = Callable[[str], str | None]


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise PackagingError(f"'{version}' is not a Debian version (digits first, then letters, digits, . + ~ "
                             "and at most one '-'); pass --version like 0.1.0.")
    return version


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def needed_sonames(path: Path) -> list[str]:
    """The DT_NEEDED entries of an ELF file, from objdump."""
    try:
        out = subprocess.run(["objdump", "-p", str(path)], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError as e:
        raise PackagingError("objdump is not installed; install binutils, then build again.") from e
    except subprocess.CalledProcessError as e:
        raise PackagingError(f"objdump cannot read {path}: {e.stderr.strip()}") from e
    return [line.split()[1] for line in out.splitlines() if line.strip().startswith("NEEDED")]


def runpath(path: Path) -> list[str]:
    """The RUNPATH (or RPATH) entries of an ELF file, from objdump."""
    out = subprocess.run(["objdump", "-p", str(path)], capture_output=True, text=True, check=False).stdout
    return [e for line in out.splitlines() if line.strip().startswith(("RUNPATH", "RPATH"))
            for e in line.split()[1].split(":") if e]


def drop_foreign_runpaths(bundle: Path) -> list[Path]:
    """Remove RUNPATH entries that point outside the bundle (a wheel built under pyenv carries
    ``/root/.pyenv/.../lib``): the installed app must never look for libraries there (lintian's
    custom-library-search-path), and the bundle finds its own through ``$ORIGIN`` and the launcher. Returns the
    files changed; needs patchelf only when there is something to change."""
    changed = []
    for path in sorted(bundle.rglob("*")):
        if path.is_symlink() or not path.is_file() or not is_elf(path):
            continue
        entries = runpath(path)
        keep = [e for e in entries if e.startswith("$ORIGIN")]
        if keep == entries:
            continue
        if shutil.which("patchelf") is None:
            raise PackagingError(f"{path} looks for libraries in {':'.join(entries)}, outside the bundle; install "
                                 "patchelf (apt-get install patchelf) so the package can drop that path.")
        args = ["--set-rpath", ":".join(keep)] if keep else ["--remove-rpath"]
        subprocess.run(["patchelf", *args, str(path)], check=True, capture_output=True)
        changed.append(path)
    return changed


def scan_bundle(bundle: Path) -> dict[str, list[str]]:
    """Each ELF file of the bundle ("/_internal/...", relative to it) -> the sonames it needs (DT_NEEDED)."""
    return {"/" + path.relative_to(bundle).as_posix(): needed_sonames(path)
            for path in sorted(bundle.rglob("*")) if not path.is_symlink() and path.is_file() and is_elf(path)}


def required_files(needs: dict[str, list[str]]) -> set[str]:
    """The bundle's ELF files the app needs to start and run, as opposed to those only optional Qt plugins use.

    Roots are the files nothing in the bundle links to (the executable, Python's extension modules, llama.cpp's
    CPU variants), except optional plugins; every bundled library a required file links to is required too. So
    libQt6WaylandClient, linked only by the Wayland platform plugins, is optional, like them.
    """
    by_name: dict[str, list[str]] = {}
    for path in needs:
        by_name.setdefault(path.rsplit("/", 1)[-1], []).append(path)
    linked = {name for sonames in needs.values() for name in sonames}
    todo = [p for p in needs if p.rsplit("/", 1)[-1] not in linked and not _OPTIONAL_PLUGIN.search(p)]
    required: set[str] = set()
    while todo:
        path = todo.pop()
        if path in required:
            continue
        required.add(path)
        todo += [dep for soname in needs[path] for dep in by_name.get(soname, [])]
    return required


def dpkg_resolver(soname: str) -> str | None:
    """The installed package that ships ``soname`` (through ldconfig's cache and dpkg -S), or None."""
    cache = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    for line in cache.splitlines():
        name, _, target = line.strip().partition(" => ")
        if name.split(" ", 1)[0] == soname and "x86-64" in name:
            for candidate in (target, str(Path(target).resolve())):
                owner = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True, check=False)
                if owner.returncode == 0:
                    return owner.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


def dependencies(needs: dict[str, list[str]], resolve: Resolver = dpkg_resolver) -> tuple[list[str], list[str]]:
    """(Depends, Recommends) package names for the sonames the bundle's ELF files need but it does not carry."""
    carried = {path.rsplit("/", 1)[-1] for path in needs}
    required = required_files(needs)
    users: dict[str, set[str]] = {}
    for path, sonames in needs.items():
        for soname in sonames:
            if soname not in carried:
                users.setdefault(soname, set()).add(path)
    depends: set[str] = set(ALWAYS_DEPENDS)
    recommends: set[str] = set()
    unknown = []
    for soname, files in sorted(users.items()):
        package = resolve(soname) or KNOWN_SONAMES.get(soname)
        needed = bool(files & required)
        if package is None:
            if needed:
                unknown.append(f"{soname} (needed by {sorted(files & required)[0]})")
            continue  # only optional plugins need it and nobody here can name its package: Qt skips them
        (depends if needed else recommends).add(package)
    if unknown:
        raise PackagingError("No installed package provides " + ", ".join(unknown) + "; install the library on "
                             "this build machine (or add it to KNOWN_SONAMES), then build again.")
    return sorted(depends), sorted(recommends - depends)


def _gzip_bytes(data: bytes) -> bytes:
    with tempfile.SpooledTemporaryFile() as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as f:
            f.write(data)
        raw.seek(0)
        return raw.read()


def copyright_text() -> str:
    """DEP-5 copyright: Glimpse's MIT licence, and where the bundled components' licences are."""
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8").strip()
    body = "\n".join(" " + (line if line.strip() else ".") for line in licence.splitlines())
    holder = next((line for line in licence.splitlines() if line.startswith("Copyright")), "Copyright Glimpse")
    return ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
            "Upstream-Name: Glimpse\n"
            "Comment: The bundle in /opt/glimpse carries third-party libraries (Qt/PySide6 under LGPL-3.0,\n"
            " llama.cpp and ONNX Runtime under MIT, NumPy under BSD-3-Clause, ...); each is listed with its licence\n"
            " in /opt/glimpse/_internal/THIRD_PARTY.md, and their licence files travel in the bundle with each\n"
            " package's metadata. FastVLM's weights are not part of this package.\n\n"
            "Files: *\n"
            f"Copyright: {holder.removeprefix('Copyright').removeprefix(' (c)').strip()}\n"
            "License: MIT\n\n"
            f"License: MIT\n{body}\n")


def changelog_text(version: str) -> str:
    # The same bytes for the same version (reproducible builds), unless SOURCE_DATE_EPOCH says otherwise.
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    stamp = email.utils.formatdate(epoch).replace("-0000", "+0000")
    return (f"{PACKAGE} ({version}) unstable; urgency=medium\n\n"
            f"  * Glimpse {version}, built from its PyInstaller bundle.\n\n"
            f" -- {MAINTAINER}  {stamp}\n")


def control_text(version: str, depends: Iterable[str], recommends: Iterable[str], installed_kib: int) -> str:
    rec = ", ".join(recommends)
    return (f"Package: {PACKAGE}\n"
            f"Version: {version}\n"
            "Architecture: amd64\n"
            f"Maintainer: {MAINTAINER}\n"
            f"Installed-Size: {installed_kib}\n"
            f"Depends: {', '.join(depends)}\n"
            + (f"Recommends: {rec}\n" if rec else "")
            + "Section: graphics\n"
            "Priority: optional\n"
            "Description: camera assistant that runs Apple's FastVLM on this computer\n"
            " Glimpse captions your camera live and answers questions about pictures,\n"
            " videos and parts of your screen. The vision-language model runs entirely\n"
            " on this computer (ONNX Runtime and llama.cpp); nothing is sent anywhere.\n"
            " .\n"
            " The model itself is downloaded on first use, after you accept its licence.\n")


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    path.chmod(mode)


def write_icons(share: Path) -> None:

    with Image.open(ROOT / "assets" / "glimpse.png") as source:
        big = source.convert("RGBA")
    for size in ICON_SIZES:
        out = share / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{PACKAGE}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        icon = big if big.size == (size, size) else big.resize((size, size), Image.Resampling.LANCZOS)
        icon.save(out, optimize=True)
        out.chmod(0o644)


def stage(bundle: Path, staging: Path, version: str, resolve: Resolver = dpkg_resolver) -> str:
    """Lay the package out in ``staging``; returns the control file's text."""
    if not (bundle / "glimpse").is_file() or not os.access(bundle / "glimpse", os.X_OK):
        raise PackagingError(f"{bundle} has no executable 'glimpse': build the bundle first "
                             "(pyinstaller packaging/glimpse.spec), then pass its dist/Glimpse folder.")
    opt = staging / "opt" / PACKAGE
    shutil.copytree(bundle, opt, symlinks=True)
    drop_foreign_runpaths(opt)
    for path in [opt, *opt.rglob("*")]:
        if not path.is_symlink():
            # Shared libraries are not programs (Debian policy 8.1: 0644); only the launcher and real executables
            # keep their execute bit.
            library = re.search(r"\.so(\.[0-9.]+)?$", path.name) is not None
            path.chmod(0o755 if path.is_dir() or (path.stat().st_mode & 0o111 and not library) else 0o644)
    (staging / "usr" / "bin").mkdir(parents=True)
    # Between top-level folders a link is absolute (Debian policy 10.5); the bundle finds itself through it.
    (staging / "usr" / "bin" / PACKAGE).symlink_to(f"/opt/{PACKAGE}/glimpse")
    share = staging / "usr" / "share"
    _write(share / "applications" / f"{PACKAGE}.desktop", (LINUX / "glimpse.desktop").read_bytes())
    _write(share / "metainfo" / METAINFO, (LINUX / METAINFO).read_bytes())
    write_icons(share)
    doc = share / "doc" / PACKAGE
    _write(doc / "copyright", copyright_text())
    _write(doc / "changelog.gz", _gzip_bytes(changelog_text(version).encode()))
    _write(share / "lintian" / "overrides" / PACKAGE, (LINUX / "lintian-overrides").read_bytes())
    for path in staging.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    staging.chmod(0o755)

    depends, recommends = dependencies(scan_bundle(opt), resolve)
    files = [p for p in sorted(staging.rglob("*")) if p.is_file() and not p.is_symlink()]
    installed_kib = sum((p.stat().st_size + 1023) // 1024 for p in files)
    sums = "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(staging).as_posix()}\n"
                   for p in files)
    control = control_text(version, depends, recommends, installed_kib)
    _write(staging / "DEBIAN" / "control", control)
    _write(staging / "DEBIAN" / "md5sums", sums)
    (staging / "DEBIAN").chmod(0o755)
    return control


def build(bundle: Path, out_dir: Path, version: str, compression: str = "xz") -> Path:
    check_version(version)
    if shutil.which("dpkg-deb") is None:
        raise PackagingError("dpkg-deb is not installed; build the package on Debian or Ubuntu.")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PACKAGE}_{version}_amd64.deb"
    with tempfile.TemporaryDirectory(prefix="glimpse-deb-", dir=out_dir) as tmp:
        staging = Path(tmp) / "root"
        stage(bundle.resolve(), staging, version)
        subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(staging),
                        str(target)], check=True, stdout=subprocess.DEVNULL)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="the PyInstaller one-folder bundle (dist/Glimpse)")
    parser.add_argument("--out", type=Path, default=Path("dist"), help="folder for the .deb (default: dist)")
    parser.add_argument("--version", default=None, help="package version (default: engine/version.py's)")
    parser.add_argument("--compression", default="xz", choices=("xz", "gzip", "zstd", "none"),
                        help="dpkg-deb's compressor: xz is smallest, gzip is fastest to build")
    args = parser.parse_args(argv)
    version = args.version or _project_version()
    try:
        print(build(args.bundle, args.out, version, args.compression))
    except PackagingError as e:
        print(f"build_deb: {e}", file=sys.stderr)
        return 1
    return 0


def _project_version() -> str:
    # engine/version.py is the one place the version is written (pyproject.toml reads it too).
    match = re.search(r'^__version__ = "([^"]+)"', (ROOT / "engine" / "version.py").read_text(encoding="utf-8"), re.M)
    if match is None:
        raise SystemExit("build_deb: engine/version.py has no __version__; pass --version.")
    return match.group(1)


if __name__ == "__main__":
    sys.exit(main())
