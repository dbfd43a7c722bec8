"""Build-time generation of the gpushare protocol descriptor (used by setup.py and generate.py).

What is generated is a serialized ``FileDescriptorSet`` of ``proto/gpushare/v1/gpushare.proto``
(``gpushare/v1/gpushare.desc``), made with ``grpc_tools.protoc``, plus two small compatibility
modules (``gpushare/v1/gpushare_pb2.py`` and ``gpushare_pb2_grpc.py``) that re-export what
:mod:`gpushare._pb` and :mod:`gpushare._grpc` build from it at import time.

Why not protoc's ``_pb2.py``/``_pb2_grpc.py``: those check the protobuf and grpcio runtimes they
meet against the versions of the generator (protobuf gencode >= 5.26 refuses an older protobuf
runtime; a ``_pb2_grpc.py`` from grpcio-tools 1.85 refuses grpcio < 1.85). A descriptor set is
plain protobuf data that every protobuf runtime reads, and the gRPC method table is built from
it with ``channel.unary_unary``/``unary_stream``: the package works with whatever protobuf
(>= 4.21) and grpcio (>= 1.49) are installed where it runs, whichever grpcio-tools built it.

This module imports nothing of gpushare and needs grpcio-tools only when called.
"""

from __future__ import annotations

import os
import tempfile

PROTO = "gpushare/v1/gpushare.proto"
DESCRIPTOR = "gpushare.desc"

_PB2_SHIM = '''"""Compatibility module: the gpushare protobuf messages (see gpushare._pb). Generated."""
from gpushare._pb import *  # noqa: F401,F403
from gpushare._pb import __all__  # noqa: F401
'''

_PB2_GRPC_SHIM = '''"""Compatibility module: the gpushare gRPC stub (see gpushare._grpc). Generated."""
from gpushare._grpc import GpuShareStub  # noqa: F401

__all__ = ["GpuShareStub"]
'''


def find_proto_root(package_dir: str) -> str | None:
    """The repository's ``proto/`` directory seen from the ``client/python`` directory."""
    root = os.path.normpath(os.path.join(package_dir, "..", "..", "proto"))
    return root if os.path.isfile(os.path.join(root, PROTO)) else None


def compile_descriptor_set(proto_root: str) -> bytes:
    """Runs protoc (grpcio-tools) on gpushare.proto; returns the serialized FileDescriptorSet."""
    try:
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "generating the gpushare protocol descriptor needs grpcio-tools "
            "(pip install grpcio-tools)"
        ) from e
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, DESCRIPTOR)
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                "-I" + proto_root,
                "--include_imports",
                "--descriptor_set_out=" + out,
                os.path.join(proto_root, PROTO),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed with status {rc} on {PROTO}")
        with open(out, "rb") as f:
            return f.read()


def write_generated(v1_dir: str, descriptor_set: bytes) -> list[str]:
    """Writes the descriptor and the compatibility modules into ``v1_dir``; returns the paths."""
    os.makedirs(v1_dir, exist_ok=True)
    written = []
    for name, data in (
        (DESCRIPTOR, descriptor_set),
        ("gpushare_pb2.py", _PB2_SHIM.encode()),
        ("gpushare_pb2_grpc.py", _PB2_GRPC_SHIM.encode()),
    ):
        path = os.path.join(v1_dir, name)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        written.append(path)
    return written


def generate(package_dir: str, v1_dir: str | None = None) -> list[str]:
    """Generates into ``v1_dir`` (default: ``package_dir/gpushare/v1``) from the repository's
    proto; ``package_dir`` is ``client/python``."""
    root = find_proto_root(package_dir)
    if root is None:
        raise RuntimeError(f"{PROTO} not found above {package_dir} (expected ../../proto)")
    if v1_dir is None:
        v1_dir = os.path.join(package_dir, "gpushare", "v1")
    return write_generated(v1_dir, compile_descriptor_set(root))
