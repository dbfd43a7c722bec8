"""Shared pieces of the gpushare client modules: the generated stubs (imported once, with a clear
error when they are missing), the error types, :class:`Exported`, and the small helpers that
turn resource ids and semaphore points into proto messages."""

from __future__ import annotations

import os
from typing import Any, Iterable, List, Tuple, Union

import grpc

from gpushare import _grpc as gpushare_pb2_grpc
from gpushare import _pb as gpushare_pb2

__all__ = [
    "Exported",
    "GpushareError",
    "Point",
    "ProtocolError",
    "ResourceId",
    "gpushare_pb2",
    "gpushare_pb2_grpc",
]

_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

# Messages are built at import time (gpushare._pb): Any to the type checker.
Message = Any
# A resource id (str), or a Resource / ResourceRef / HostBuffer / Image (anything with `.id`).
ResourceId = Union[str, Message]
# (semaphore, value), or a SemaphorePoint.
Point = Union[Tuple[ResourceId, int], Message]


class GpushareError(Exception):
    """A failed gpushare call: ``code`` is a :class:`grpc.StatusCode`, ``message`` the daemon's text."""

    def __init__(self, code: grpc.StatusCode, message: str = ""):
        self.code = code
        self.message = message
        super().__init__(f"{code.name}: {message}" if message else code.name)

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> "GpushareError":
        code = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else None
        return cls(code or grpc.StatusCode.UNKNOWN, details or str(err))

    @classmethod
    def from_code_value(cls, value: int, message: str = "") -> "GpushareError":
        return cls(_CODES_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN), message)


class ProtocolError(GpushareError):
    """The daemon's fd.sock reply broke the protocol (truncated, undecodable, wrong fd count)."""

    def __init__(self, message: str):
        super().__init__(grpc.StatusCode.INTERNAL, "fd.sock protocol error: " + message)


class Exported:
    """A descriptor received from the daemon plus its import metadata (``info``: ``ExportedFd``).

    The object owns ``fd`` and closes it on :meth:`close`, on leaving a ``with`` block, or when
    garbage-collected. An importer that takes ownership of the descriptor (Vulkan and CUDA do,
    on success only) should call :meth:`detach` after the import succeeded.

    ``word_fd``: a semaphore's memop word buffer (the CUDA fast path), when the export asked for
    it (``export(..., word=True)``) and the semaphore has one (``info.semaphore.word``
    describes it); -1 otherwise. Owned and closed the same way (:meth:`detach_word`).
    """

    __slots__ = ("fd", "info", "word_fd")

    def __init__(self, fd: int, info: "gpushare_pb2.ExportedFd", word_fd: int = -1):
        self.fd = fd
        self.info = info
        self.word_fd = word_fd

    def fileno(self) -> int:
        if self.fd < 0:
            raise ValueError("Exported descriptor is closed or detached")
        return self.fd

    def detach(self) -> int:
        """Gives up ownership: returns the fd, which this object will no longer close."""
        fd, self.fd = self.fd, -1
        return fd

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def detach_word(self) -> int:
        """Gives up ownership of the word's descriptor: returns it (-1 when none)."""
        fd, self.word_fd = self.word_fd, -1
        return fd

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        word, self.word_fd = getattr(self, "word_fd", -1), -1
        if fd >= 0:
            os.close(fd)
        if word >= 0:
            os.close(word)

    def __enter__(self) -> "Exported":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"Exported(fd={self.fd}, resource_id={self.info.resource_id!r}, "
            f"kind={gpushare_pb2.ResourceKind.Name(self.info.kind)})"
        )


def signal_path_value(path: Union[str, int]) -> int:
    """A ``SignalPath`` value from ``"semaphore"``, ``"word"`` or the enum's int."""
    if isinstance(path, int):
        return path
    names = {"semaphore": gpushare_pb2.SIGNAL_PATH_SEMAPHORE, "word": gpushare_pb2.SIGNAL_PATH_WORD}
    try:
        return int(names[path])
    except KeyError:
        raise ValueError(f"signal path {path!r}: 'semaphore' or 'word'") from None


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def _byte_view(obj: Any) -> memoryview:
    """A flat unsigned-byte memoryview of any C-contiguous buffer (TypeError otherwise)."""
    view = memoryview(obj)
    if view.format == "B" and view.ndim == 1:
        return view
    with view:
        return view.cast("B")


def _rid(resource: ResourceId) -> str:
    if isinstance(resource, str):
        return resource
    rid = getattr(resource, "id", None)
    if isinstance(rid, str):
        return rid
    raise TypeError(f"expected a resource id (str) or a Resource, got {type(resource).__name__}")


def _points(points: Iterable[Point]) -> List["gpushare_pb2.SemaphorePoint"]:
    out = []
    for p in points:
        if isinstance(p, gpushare_pb2.SemaphorePoint):
            out.append(p)
        else:
            sem, value = p
            out.append(gpushare_pb2.SemaphorePoint(semaphore_id=_rid(sem), value=int(value)))
    return out


def _sync(wait: Iterable[Point], signal: Iterable[Point], timeout_ms: int) -> "gpushare_pb2.Sync":
    return gpushare_pb2.Sync(wait=_points(wait), signal=_points(signal), timeout_ms=timeout_ms)
