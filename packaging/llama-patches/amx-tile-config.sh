#!/usr/bin/env bash
# AMX tile configuration that GCC 12 drops (llama.cpp's AMX kernels: SIGILL or SIGSEGV on Sapphire Rapids).
#
# GCC before 13 declares _tile_loadconfig's operand as the first 8 bytes of the configuration
# (`"m" (*(const void **)config)` in amxtileintrin.h), so the stores that fill in the rows and column widths look
# dead and are removed: ldtilecfg then loads palette 1 with every tile empty and the first tile instruction faults.
# A compiler barrier that takes the configuration's address makes every store happen before ldtilecfg.
# Reproduced with a ten-line C program on an Intel Xeon with AMX (gcc 12.2 -O2: SIGILL; with the barrier: runs).
# Usage: amx-tile-config.sh LLAMA_CPP_SOURCE_DIR. Fails if the line it patches is not there (a newer llama.cpp:
# check whether the patch is still needed).
set -euo pipefail
file="$1/ggml/src/ggml-cpu/amx/mmq.cpp"
grep -q '^    _tile_loadconfig(&tc);$' "$file" || { echo "amx-tile-config: no '_tile_loadconfig(&tc);' in $file" >&2; exit 1; }
sed -i 's|^    _tile_loadconfig(&tc);$|    __asm__ __volatile__("" : : "r"(\&tc) : "memory");  /* GCC < 13 drops the stores to tc */\n    _tile_loadconfig(\&tc);|' "$file"
grep -q '__asm__ __volatile__("" : : "r"(&tc) : "memory");' "$file" || { echo "amx-tile-config: patch did not apply" >&2; exit 1; }
