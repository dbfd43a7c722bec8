#!/usr/bin/env bash
# Configures and builds the C++ client into clients/cpp/build/ with AddressSanitizer:
# libgpushare, gpushare-example and gpushare-conformance (the conformance suite's C++ CLI).
# Idempotent: configures once, then rebuilds only what changed (a no-op build takes a second).
# Needs Debian 12's libgrpc++-dev, protobuf-compiler-grpc, libprotobuf-dev, cmake, pkg-config
# and libvulkan-dev (scripts/setup installs them). JOBS sets the parallelism (default 2).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build="$here/build"

for tool in cmake protoc grpc_cpp_plugin pkg-config; do
  if ! command -v "$tool" >/dev/null; then
    echo "clients/cpp/build.sh: $tool is missing: run scripts/setup" \
      "(or see clients/cpp/README.md)" >&2
    exit 1
  fi
done

if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DGPUSHARE_ASAN=ON
fi
cmake --build "$build" --parallel "${JOBS:-2}"
