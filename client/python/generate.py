#!/usr/bin/env python3
"""Generates the gpushare protocol descriptor in a source checkout (optional).

Writes gpushare/v1/gpushare.desc (a serialized FileDescriptorSet of
proto/gpushare/v1/gpushare.proto) and the compatibility modules gpushare/v1/gpushare_pb2.py and
gpushare_pb2_grpc.py next to this file. Needs grpcio-tools. `pip install` does the same at
build time; a source checkout with grpcio-tools importable compiles the proto at import time
when the file is missing; so this script only matters to make a tree that runs where
grpcio-tools is absent (scripts/gpu-bundle). With an argument, writes into that directory
instead of gpushare/v1.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gpushare"))
import _protogen  # noqa: E402


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else None
    try:
        paths = _protogen.generate(HERE, out)
    except RuntimeError as e:
        print(f"generate.py: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"generated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
