"""The gpushare protobuf messages and enums, built at import time from a serialized
``FileDescriptorSet`` (see :mod:`gpushare._protogen` for why not protoc's ``_pb2.py``).

Every message of ``gpushare.v1`` is an attribute of this module (``_pb.CreateBufferRequest``),
as is every top-level enum (``_pb.ResourceKind``, an ``EnumTypeWrapper``) and enum value
(``_pb.RESOURCE_KIND_BUFFER``), as in a protoc-generated module. ``gpushare.pb`` is this module.

The descriptor is looked for, in order:

1. ``$GPUSHARE_PROTO_DESCRIPTOR`` (a path to the ``.desc`` file);
2. ``gpushare/v1/gpushare.desc`` next to this package (written at build/install time by
   ``setup.py``, or by ``generate.py`` in a source checkout);
3. compiled now from the source checkout's ``proto/`` when grpcio-tools is importable.

The classes live in a private descriptor pool: another copy of gpushare.proto loaded in the
same process (its own ``_pb2``) does not conflict with them.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from gpushare import _protogen

PACKAGE = "gpushare.v1"
SERVICE_NAME = "GpuShare"

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load_descriptor_set() -> bytes:
    explicit = os.environ.get("GPUSHARE_PROTO_DESCRIPTOR")
    if explicit:
        with open(explicit, "rb") as f:
            return f.read()
    built = os.path.join(_HERE, "v1", _protogen.DESCRIPTOR)
    if os.path.exists(built):
        with open(built, "rb") as f:
            return f.read()
    root = _protogen.find_proto_root(os.path.dirname(_HERE))
    if root is not None:
        try:
            return _protogen.compile_descriptor_set(root)
        except RuntimeError as e:
            reason = str(e)
    else:
        reason = "no proto/ directory above the package either"
    raise ImportError(
        f"gpushare: the protocol descriptor {built} is missing ({reason}). Install the package "
        "(pip install ./client/python), or run `python3 client/python/generate.py` in a source "
        "checkout, or set GPUSHARE_PROTO_DESCRIPTOR to a gpushare.desc file."
    )


def _message_class(desc: Any) -> Any:
    try:
        from google.protobuf.message_factory import GetMessageClass  # protobuf >= 4.21
    except ImportError:  # pragma: no cover - protobuf < 4.21
        from google.protobuf import message_factory

        return message_factory.MessageFactory(desc.file.pool).GetPrototype(desc)
    return GetMessageClass(desc)


POOL = descriptor_pool.DescriptorPool()
_fds = descriptor_pb2.FileDescriptorSet.FromString(_load_descriptor_set())
for _file in _fds.file:
    POOL.Add(_file)
FILE = POOL.FindFileByName(_protogen.PROTO)
SERVICE = FILE.services_by_name[SERVICE_NAME]
DESCRIPTOR = FILE  # as a protoc-generated module has it

_names: Dict[str, Any] = {}
for _name, _desc in FILE.message_types_by_name.items():
    _names[_name] = _message_class(_desc)
for _name, _edesc in FILE.enum_types_by_name.items():
    _names[_name] = EnumTypeWrapper(_edesc)
    for _value in _edesc.values:
        _names[_value.name] = _value.number
globals().update(_names)
__all__: List[str] = sorted(_names)
del _fds, _file, _name, _desc, _edesc, _value


def message_class(full_name: str) -> Any:
    """The message class of a fully qualified name (``gpushare.v1.FdReply``)."""
    return _message_class(POOL.FindMessageTypeByName(full_name))


def __getattr__(name: str) -> Any:
    """Only reached for names the descriptor does not have (typing: every message is ``Any``)."""
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
