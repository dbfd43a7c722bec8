#!/usr/bin/env python3
"""Generate the gRPC/protobuf stubs for the gpushare Python client.

Writes gpushare/v1/gpushare_pb2.py and gpushare/v1/gpushare_pb2_grpc.py next to this file
(the `gpushare.v1` namespace subpackage of the `gpushare` package). The stubs are not
committed; run this once after checkout and whenever proto/gpushare/v1/gpushare.proto changes.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO = "gpushare/v1/gpushare.proto"


def main() -> int:
    try:
        from grpc_tools import protoc
    except ImportError:
        print("generate.py: grpcio-tools is required (pip install grpcio-tools)", file=sys.stderr)
        return 1
    import importlib.resources

    # protoc needs the well-known types' include dir when not run as the grpc_tools CLI.
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    os.makedirs(os.path.join(HERE, "gpushare", "v1"), exist_ok=True)
    args = [
        "grpc_tools.protoc",
        "-I" + PROTO_ROOT,
        "-I" + well_known,
        "--python_out=" + HERE,
        "--grpc_python_out=" + HERE,
        os.path.join(PROTO_ROOT, PROTO),
    ]
    rc = protoc.main(args)
    if rc != 0:
        print(f"generate.py: protoc failed with status {rc}", file=sys.stderr)
        return rc
    print(f"generated {os.path.join(HERE, 'gpushare', 'v1')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
