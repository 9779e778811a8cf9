#!/usr/bin/env bash
# Builds a portable llama-cpp-python wheel for the bundle and prints its path on the last line of stdout.
#
#   packaging/build-llama-wheel.sh [PYTHON]        # PYTHON defaults to python3
#
# `pip install llama-cpp-python` compiles llama.cpp for the build machine's CPU (GGML_NATIVE=ON), so a bundle made
# on a machine with AVX-512 dies with an illegal instruction on one without. This wheel is built with no native
# tuning and every x86-64 CPU variant of ggml's CPU backend as its own library (libggml-cpu-haswell.so, ...);
# engine/runtime/cpu_backends.py loads the best one the running CPU supports from llama_cpp/lib.
#
# The Vulkan backend is one more library beside them (libggml-vulkan.so, engine/runtime/gpu_backends.py): it links
# only the Vulkan loader (libvulkan.so.1), which a machine without one simply cannot open, and the CPU variants then
# run alone. Building it needs glslc, spirv-headers and Vulkan headers with VK_EXT_layer_settings (1.3.261 or later;
# Debian 13's libvulkan-dev has them). Where the system's headers are older (Debian 12: 1.3.239), Debian 13's
# libvulkan-dev is fetched with apt from a private sources list and unpacked into the cache, never installed.
#
# The sdist is patched first (packaging/llama-patches/: the AMX tile configuration GCC 12 drops).
#
# pip's wheel cache is keyed by the sdist, not by CMAKE_ARGS, so a cached native wheel would silently come back:
# the build uses --no-cache-dir and keeps its own cache, one folder per version and flags, outside the repository.
set -euo pipefail

python=${1:-python3}
version=${LLAMA_CPP_VERSION:-0.3.36}
# CMAKE_INSTALL_BINDIR: ggml installs dynamically loaded backends to the "bin" folder, which in a wheel would land
# outside the package; llama_cpp/lib is where libllama and libggml already are. mtmd (llava) is never used.
flags="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DCMAKE_INSTALL_BINDIR=llama_cpp/lib"
flags="$flags -DLLAVA_BUILD=OFF -DGGML_VULKAN=ON"
# Source patches applied to llama.cpp before building (packaging/llama-patches/*.sh); they are part of the key.
patches=$(cd "$(dirname "$0")/llama-patches" && cat ./*.sh)
key=$(printf '%s\n%s' "$flags" "$patches" | sha256sum | cut -c1-12)
out="${GLIMPSE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/glimpse/wheels}/llama-cpp-python-$version-$key"

# Vulkan headers new enough for ggml-vulkan: the system's, or Debian 13's unpacked under the cache folder.
vulkan_headers() {  # vulkan_headers CACHE_FOLDER -> prints the include folder
    local system=/usr/include
    if grep -qs VK_EXT_layer_settings "$system/vulkan/vulkan_core.h"; then
        printf '%s\n' "$system"
        return
    fi
    local cache=$1/vulkan-headers
    if ! grep -qs VK_EXT_layer_settings "$cache/usr/include/vulkan/vulkan_core.h"; then
        echo "build-llama-wheel: $system/vulkan is older than 1.3.261; fetching Debian 13's libvulkan-dev headers" >&2
        local apt
        apt=$(mktemp -d)
        mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/deb"
        echo "deb http://deb.debian.org/debian trixie main" > "$apt/sources.list"
        local opts=(-q -o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
                    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
        apt-get "${opts[@]}" update >&2 && (cd "$apt/deb" && apt-get "${opts[@]}" download libvulkan-dev >&2) \
            || { echo "build-llama-wheel: could not fetch libvulkan-dev from Debian 13; install Vulkan headers" \
                      "1.3.261 or later (libvulkan-dev on Debian 13, vulkan-headers elsewhere)." >&2; rm -rf "$apt"; exit 1; }
        rm -rf "$cache" && dpkg -x "$apt"/deb/libvulkan-dev_*.deb "$cache"
        rm -rf "$apt"
    fi
    printf '%s\n' "$cache/usr/include"
}
if ! command -v glslc >/dev/null || [ ! -d /usr/include/spirv ]; then
    echo "build-llama-wheel: the Vulkan backend needs glslc and spirv-headers (Debian: sudo apt install glslc" \
         "spirv-headers libvulkan-dev)." >&2
    exit 1
fi

wheel=$(find "$out" -maxdepth 1 -name "llama_cpp_python-$version-*.whl" 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
    echo "build-llama-wheel: building llama-cpp-python $version ($flags) into $out" >&2
    mkdir -p "$out"
    started=$(date +%s)
    src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
    "$python" -m pip download --no-cache-dir --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$version" -d "$src" >&2
    tar -xzf "$src"/llama_cpp_python-"$version".tar.gz -C "$src"
    tree="$src/llama_cpp_python-$version"
    vulkan_include=$(vulkan_headers "$out")
    for patch in "$(dirname "$0")"/llama-patches/*.sh; do
        echo "build-llama-wheel: applying $(basename "$patch")" >&2
        bash "$patch" "$tree/vendor/llama.cpp" >&2
    done
    CMAKE_ARGS="$flags -DVulkan_INCLUDE_DIR=$vulkan_include" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
        "$python" -m pip wheel --no-cache-dir --no-deps "$tree" -w "$out" >&2
    echo "build-llama-wheel: built in $(( $(date +%s) - started )) s" >&2
    wheel=$(find "$out" -maxdepth 1 -name "llama_cpp_python-$version-*.whl" | head -1)
    printf '%s\n' "$flags" > "$out/FLAGS"
fi

# A wheel without the variant libraries would be a native-free build with no CPU backend at all: refuse it.
variants=$("$python" -c 'import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
print(" ".join(sorted(n.rsplit("/", 1)[-1] for n in names if "/lib/" in n and "ggml-cpu-" in n)))' "$wheel")
if [ -z "$variants" ]; then
    echo "build-llama-wheel: $wheel has no ggml-cpu-* variants in llama_cpp/lib; delete $out and build again." >&2
    exit 1
fi
echo "build-llama-wheel: CPU variants: $variants" >&2
if ! "$python" -c 'import sys, zipfile
sys.exit(not any(n.endswith("/lib/libggml-vulkan.so") for n in zipfile.ZipFile(sys.argv[1]).namelist()))' "$wheel"; then
    echo "build-llama-wheel: $wheel has no libggml-vulkan.so in llama_cpp/lib; delete $out and build again." >&2
    exit 1
fi
printf '%s\n' "$wheel"
