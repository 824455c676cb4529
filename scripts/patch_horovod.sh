#!/usr/bin/env bash
# Patch Horovod 0.28.1's source tree for today's toolchains (scripts/setup.sh runs it before
# the build; tests/test_setup.py runs it on a tree of its own with this machine's g++):
#
#   1. C++17: PyTorch >= 2.1's headers refuse to compile below it.
#   2. Standard includes: newer libstdc++ (GCC 13+) no longer pulls <string>, <cstdint> and
#      <stdexcept> in through other headers, and Horovod's and Gloo's headers relied on that
#      (seen on the H200 image: the build failed until they were added). They are added at the
#      top of every C++ header of horovod/ and of the bundled gloo, for C++ only.
#   3. CUDA 13: its CCCL headers need C++17, and Horovod's CUDA kernels asked for C++11.
#
#   scripts/patch_horovod.sh SOURCE_DIR
set -euo pipefail
src=${1:?usage: patch_horovod.sh SOURCE_DIR}
die() { printf '[patch_horovod] error: %s\n' "$*" >&2; exit 1; }

sed -i -E 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$src/CMakeLists.txt" \
  "$src/horovod/torch/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" \
  || die "the C++17 patch did not apply to $src/horovod/torch/CMakeLists.txt"

marker='// lepton: standard includes'
headers=$(find "$src/horovod" "$src/third_party/gloo/gloo" "$src/third_party/compatible_gloo" \
  -name '*.h' 2>/dev/null || true)
[ -n "$headers" ] || die "no headers found under $src/horovod"
for header in $headers; do
  grep -qF "$marker" "$header" && continue  # patched already: idempotent
  printf '%s\n#ifdef __cplusplus\n#include <cstdint>\n#include <stdexcept>\n#include <string>\n#endif\n' \
    "$marker" | cat - "$header" > "$header.patched"
  mv "$header.patched" "$header"
done

cuda="$src/horovod/common/ops/cuda/CMakeLists.txt"
if [ -f "$cuda" ]; then
  sed -i -E 's/set\(CMAKE_CUDA_STANDARD 11\)/set(CMAKE_CUDA_STANDARD 17)/' "$cuda"
  grep -q 'CMAKE_CUDA_STANDARD 17' "$cuda" || die "the CUDA C++17 patch did not apply to $cuda"
fi
printf '[patch_horovod] patched %s: C++17, standard includes in %s headers, CUDA C++17\n' \
  "$src" "$(echo "$headers" | wc -l)" >&2
