"""The gpushare gRPC stub, built from the service descriptor (no ``_pb2_grpc.py``: see
:mod:`gpushare._protogen`).

``GpuShareStub(channel)`` has one attribute per RPC of ``gpushare.v1.GpuShare``, named as in
the proto (``stub.CreateBuffer``): ``channel.unary_unary(...)`` or ``channel.unary_stream(...)``
with the messages' serializers. It works for ``grpc.Channel`` and ``grpc.aio.Channel`` alike.
"""

from __future__ import annotations

from typing import Any, Dict

from gpushare import _pb

__all__ = ["GpuShareStub", "method_path"]


def method_path(name: str) -> str:
    """The HTTP/2 path of an RPC: ``/gpushare.v1.GpuShare/<name>``."""
    return f"/{_pb.SERVICE.full_name}/{name}"


class GpuShareStub:
    """Callables for every RPC of the GpuShare service on ``channel``."""

    def __init__(self, channel: Any) -> None:
        self._methods: Dict[str, Any] = {}
        for method in _pb.SERVICE.methods:
            if method.client_streaming:  # pragma: no cover - the service has none
                continue
            request = _pb.message_class(method.input_type.full_name)
            response = _pb.message_class(method.output_type.full_name)
            factory = channel.unary_stream if method.server_streaming else channel.unary_unary
            self._methods[method.name] = factory(
                method_path(method.name),
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_methods"][name]
        except KeyError:
            raise AttributeError(f"GpuShare has no RPC {name!r}") from None
