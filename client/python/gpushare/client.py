"""Synchronous Python client for the gpushare daemon (gpushared).

Two sockets live in the daemon's runtime directory:

- ``control.sock``: gRPC over a SOCK_STREAM Unix socket (every call in this module),
- ``fd.sock``: SOCK_SEQPACKET; one serialized ``FdRequest`` in, one ``FdReply`` out, the reply
  carrying the exported descriptor as SCM_RIGHTS (:meth:`Client.redeem`).

A :class:`Client` opened with ``session=True`` (the default) holds a client session for as long
as it is open: resources it creates are referenced by that session and freed by the daemon when
the session ends (:meth:`Client.close`, or the process dying), unless they were pinned.

Bulk transfers go through a :class:`HostBuffer` (:meth:`Client.create_host_buffer`): shared host
memory (a sealed memfd) mapped both here and in the daemon; :meth:`Client.write_from_host` and
:meth:`Client.read_into_host` name ranges of it instead of carrying the bytes in gRPC messages.

Images (:meth:`Client.create_image`) are handles (:class:`Image`) with their shape and their
daemon-executed operations: write, read (as bytes or a numpy array), clear, export.
"""

from __future__ import annotations

import array
import fcntl
import mmap
import os
import socket
import threading
from collections import namedtuple
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import grpc

try:
    from gpushare.v1 import gpushare_pb2, gpushare_pb2_grpc
except ImportError as _e:  # pragma: no cover - depends on the checkout state
    raise ImportError(
        "gpushare: the generated protobuf/gRPC stubs (gpushare.v1.gpushare_pb2, "
        "gpushare.v1.gpushare_pb2_grpc) are missing or broken; run "
        "`python3 client/python/generate.py` (needs grpcio-tools) first. "
        f"Original error: {_e}"
    ) from _e

__all__ = [
    "Client",
    "Exported",
    "GpushareError",
    "HostBuffer",
    "IMAGE_FORMATS",
    "Image",
    "ImageFormatInfo",
    "ProtocolError",
    "USAGE_COLOR_ATTACHMENT",
    "USAGE_SAMPLED",
    "USAGE_STORAGE",
    "Watch",
    "default_runtime_dir",
    "image_format",
    "SESSION_HEADER",
]

SESSION_HEADER = "x-gpushare-session"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Most fds accepted in one fd.sock reply (the daemon sends exactly one); more is a protocol error.
MAX_FDS_PER_MESSAGE = 4
# Largest FdReply accepted; a longer one arrives with MSG_TRUNC and is rejected.
MAX_FD_REPLY_BYTES = 16384

# fcntl(2) file seals (Linux >= 3.17); the fcntl module names them since Python 3.8.
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 0x0002)

_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

ResourceId = Union[str, "gpushare_pb2.Resource", "gpushare_pb2.ResourceRef"]


def _grant_request(resource, uid, gid) -> "gpushare_pb2.GrantRequest":
    if (uid is None) == (gid is None):
        raise ValueError("a grant names exactly one of uid= or gid=")
    if uid is not None:
        return gpushare_pb2.GrantRequest(id=_rid(resource), uid=uid)
    return gpushare_pb2.GrantRequest(id=_rid(resource), gid=gid)
Point = Union[Tuple[ResourceId, int], "gpushare_pb2.SemaphorePoint"]


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


def default_runtime_dir() -> str:
    """$GPUSHARE_RUNTIME_DIR, else $XDG_RUNTIME_DIR/gpushare, else /run/gpushare."""
    explicit = os.environ.get("GPUSHARE_RUNTIME_DIR")
    if explicit:
        return explicit
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "gpushare")
    return "/run/gpushare"


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Exported:
    """A descriptor received from the daemon plus its import metadata (``info``: ``ExportedFd``).

    The object owns ``fd`` and closes it on :meth:`close`, on leaving a ``with`` block, or when
    garbage-collected. An importer that takes ownership of the descriptor (Vulkan and CUDA do,
    on success only) should call :meth:`detach` after the import succeeded.
    """

    __slots__ = ("fd", "info")

    def __init__(self, fd: int, info: "gpushare_pb2.ExportedFd"):
        self.fd = fd
        self.info = info

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

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "Exported":
        return self

    def __exit__(self, *exc) -> None:
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


class Watch:
    """Iterator over a semaphore's values (``Client.watch``). ``cancel()`` ends it."""

    def __init__(self, call):
        self._call = call

    def __iter__(self) -> "Watch":
        return self

    def __next__(self) -> int:
        try:
            return next(self._call).value
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED and self._call.cancelled():
                raise StopIteration from None
            raise GpushareError.from_rpc_error(e) from None

    def cancel(self) -> None:
        self._call.cancel()

    close = cancel

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


class HostBuffer:
    """A host buffer (:meth:`Client.create_host_buffer`), mapped in this process.

    Shared host memory for bulk transfers: put bytes in it (:meth:`write`, or in place through
    :meth:`memoryview` / :attr:`buffer`) and have the daemon upload them with
    :meth:`Client.write_from_host`; have it download into it with :meth:`Client.read_into_host`
    and read them here (:meth:`read`, :meth:`readinto`). The daemon reads or writes a range only
    while such a call runs: change a range it uploads, or read a range it downloads into, only
    before or after the call.

    ``id`` names it in calls (any ``Client`` method that takes a resource id accepts the
    HostBuffer itself); ``size`` (also ``len()``) is its size in bytes. The daemon's reference
    is the creating session's, or the pin, as for any resource: :meth:`release` drops it, and
    the mapping here stays usable until :meth:`close`.

    :meth:`close` (or leaving a ``with`` block, or garbage collection) unmaps it and closes its
    descriptor. A ``memoryview`` (or a numpy array made with ``numpy.frombuffer(hb.buffer)``)
    still alive at that point keeps the mapping alive: it is then unmapped when the last such
    view is released, never under a view. Release views with ``with hb.memoryview() as mv:`` to
    make ``close`` unmap at once.
    """

    def __init__(self, client: Optional["Client"], exported: Exported):
        """Maps an exported host buffer; prefer :meth:`map`, which documents the checks."""
        info = exported.info
        try:
            if info.kind != gpushare_pb2.RESOURCE_KIND_HOST_BUFFER:
                raise ValueError(
                    "not a host buffer: the descriptor's resource is of kind "
                    f"{_enum_name(gpushare_pb2.ResourceKind, info.kind)}"
                )
            if info.handle_type != gpushare_pb2.HANDLE_TYPE_MEMFD:
                handle = _enum_name(gpushare_pb2.HandleType, info.handle_type)
                raise ProtocolError(
                    f"host buffer descriptor of handle type {handle}, expected HANDLE_TYPE_MEMFD"
                )
            if info.WhichOneof("details") != "host_buffer":
                raise ProtocolError("ExportedFd of a host buffer without `host_buffer` details")
            size = info.host_buffer.size
            self._mmap: Optional[mmap.mmap] = _map_memfd(exported.fileno(), size)
        except BaseException:
            exported.close()
            raise
        self._fd = exported.detach()
        self._client = client
        self.id: str = info.resource_id
        self.size: int = size
        self.info = info

    @classmethod
    def map(cls, client: Optional["Client"], exported: Exported) -> "HostBuffer":
        """Maps an exported host buffer (kind ``HOST_BUFFER``, handle type ``MEMFD``), from
        :meth:`Client.export` or from a ticket redeemed with :meth:`Client.redeem`. Checks first
        that the memfd is exactly ``exported.info.host_buffer.size`` bytes and sealed against
        shrinking (so no process can truncate it under the mapping). Takes ownership of the
        descriptor: it is closed on failure too. ``client`` is the one :meth:`release` uses.

        Raises ValueError for a descriptor of another resource kind, ProtocolError for a memfd
        that does not match its metadata, OSError when a system call fails.
        """
        return cls(client, exported)

    # ---- the mapping ----

    def _map(self) -> mmap.mmap:
        if self._mmap is None:
            raise ValueError("HostBuffer is closed")
        return self._mmap

    @property
    def buffer(self) -> mmap.mmap:
        """The shared mapping itself (an ``mmap.mmap``, read-write): pass it to anything that
        takes a buffer, e.g. ``numpy.frombuffer(hb.buffer, dtype=numpy.float32)``."""
        return self._map()

    def memoryview(self) -> memoryview:
        """A writable memoryview of the whole mapping (format ``B``). Use it in a ``with``
        block, or ``release()`` it, so that it does not outlive :meth:`close` (see the class
        documentation)."""
        return memoryview(self._map())

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"range {offset}+{length} is outside the host buffer of {self.size} bytes"
            )

    def write(self, offset: int, data) -> None:
        """Copies ``data`` (bytes or any C-contiguous buffer) into the mapping at ``offset``."""
        with _byte_view(data) as src:
            self._check_range(offset, src.nbytes)
            self._map()[offset : offset + src.nbytes] = src

    def read(self, offset: int = 0, length: Optional[int] = None) -> bytes:
        """A copy of ``length`` bytes at ``offset`` (None: up to the end)."""
        if length is None:
            length = self.size - offset
        self._check_range(offset, length)
        return self._map()[offset : offset + length]

    def readinto(self, offset: int, out) -> int:
        """Copies the mapping's bytes at ``offset`` into the writable buffer ``out`` (filling it
        whole); returns the number of bytes copied."""
        with _byte_view(out) as dst:
            n = dst.nbytes
            self._check_range(offset, n)
            with memoryview(self._map()) as src:
                dst[:] = src[offset : offset + n]
        return n

    def range(self, offset: int, length: int) -> "gpushare_pb2.HostRange":
        """The proto ``HostRange`` naming ``length`` bytes at ``offset`` (checked by the daemon)."""
        return gpushare_pb2.HostRange(host_buffer_id=self.id, offset=offset, length=length)

    def fileno(self) -> int:
        """The memfd (owned by this object: do not close it; ``os.dup`` it to keep it)."""
        if self._fd < 0:
            raise ValueError("HostBuffer is closed")
        return self._fd

    def __len__(self) -> int:
        return self.size

    # ---- lifetime ----

    def release(self) -> bool:
        """Drops the daemon's reference (this session's, else the pin), like
        :meth:`Client.release`; True when that freed it. The mapping here stays valid until
        :meth:`close`, but the daemon no longer knows the id."""
        if self._client is None:
            raise ValueError("HostBuffer was mapped without a Client: use Client.release(id)")
        return self._client.release(self.id)

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def close(self) -> None:
        """Unmaps the memory and closes the descriptor. Idempotent. Views of the mapping that are
        still alive keep it mapped until they are released (see the class documentation)."""
        m, self._mmap = getattr(self, "_mmap", None), None
        if m is not None:
            try:
                m.close()
            except BufferError:
                # Exported views remain: the mmap object lives on through them and unmaps (and
                # closes its own descriptor) when the last one is released.
                pass
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "HostBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"HostBuffer(id={self.id!r}, size={self.size}, {state})"


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def _byte_view(obj) -> memoryview:
    """A flat unsigned-byte memoryview of any C-contiguous buffer (TypeError otherwise)."""
    view = memoryview(obj)
    if view.format == "B" and view.ndim == 1:
        return view
    with view:
        return view.cast("B")


def _map_memfd(fd: int, size: int) -> mmap.mmap:
    """Maps a host buffer's memfd read-write and shared, after checking that it is sealed against
    shrinking and exactly ``size`` bytes (as gpushare_interop's HostMemory::map does)."""
    if size <= 0:
        raise ProtocolError(f"host buffer of size {size}")
    seals = fcntl.fcntl(fd, F_GET_SEALS)
    if not seals & F_SEAL_SHRINK:
        raise ProtocolError(
            "the host buffer descriptor is not sealed against shrinking (F_SEAL_SHRINK)"
        )
    found = os.fstat(fd).st_size
    if found != size:
        raise ProtocolError(f"the host buffer descriptor is {found} bytes, expected {size}")
    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


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


# ---- images ----

# VkImageUsageFlags accepted by Client.create_image (0 means SAMPLED | STORAGE; the daemon always
# adds TRANSFER_SRC | TRANSFER_DST).
USAGE_SAMPLED = 0x4
USAGE_STORAGE = 0x8
USAGE_COLOR_ATTACHMENT = 0x10


class ImageFormatInfo(
    namedtuple("ImageFormatInfo", "name value channels channel_size kind")
):
    """One image format: its CLI/doc ``name`` (``"rgba8unorm"``), its wire ``value``
    (``pb.IMAGE_FORMAT_*``), ``channels`` per texel (1, 2 or 4), ``channel_size`` in bytes, and
    ``kind``: ``"unorm"`` (read normalized to [0, 1]), ``"uint"`` or ``"float"``."""

    __slots__ = ()

    @property
    def texel_size(self) -> int:
        """Bytes per texel."""
        return self.channels * self.channel_size

    @property
    def numpy_dtype(self) -> str:
        """The numpy dtype of one channel (little-endian): ``<u1``, ``<u4``, ``<f2`` or ``<f4``."""
        if self.kind == "float":
            return "<f%d" % self.channel_size
        return "<u%d" % self.channel_size


def _format_table():
    rows = [
        ("r8unorm", "R8_UNORM", 1, 1, "unorm"),
        ("rg8unorm", "RG8_UNORM", 2, 1, "unorm"),
        ("rgba8unorm", "RGBA8_UNORM", 4, 1, "unorm"),
        ("r8uint", "R8_UINT", 1, 1, "uint"),
        ("rg8uint", "RG8_UINT", 2, 1, "uint"),
        ("rgba8uint", "RGBA8_UINT", 4, 1, "uint"),
        ("r16float", "R16_FLOAT", 1, 2, "float"),
        ("rg16float", "RG16_FLOAT", 2, 2, "float"),
        ("rgba16float", "RGBA16_FLOAT", 4, 2, "float"),
        ("r32float", "R32_FLOAT", 1, 4, "float"),
        ("rg32float", "RG32_FLOAT", 2, 4, "float"),
        ("rgba32float", "RGBA32_FLOAT", 4, 4, "float"),
        ("r32uint", "R32_UINT", 1, 4, "uint"),
        ("rg32uint", "RG32_UINT", 2, 4, "uint"),
        ("rgba32uint", "RGBA32_UINT", 4, 4, "uint"),
    ]
    return {
        name: ImageFormatInfo(name, gpushare_pb2.ImageFormat.Value("IMAGE_FORMAT_" + wire), ch, size, kind)
        for name, wire, ch, size, kind in rows
    }


#: Every image format gpushare shares, by name (``"rgba8unorm"``), in wire order.
IMAGE_FORMATS = _format_table()
_FORMATS_BY_VALUE = {f.value: f for f in IMAGE_FORMATS.values()}


def image_format(format: Union[str, int]) -> ImageFormatInfo:
    """The :class:`ImageFormatInfo` of a format given by name (``"rgba8unorm"``, any case; the
    proto's ``"IMAGE_FORMAT_RGBA8_UNORM"`` too) or by wire value (``pb.IMAGE_FORMAT_RGBA8_UNORM``).
    ValueError for anything else."""
    if isinstance(format, ImageFormatInfo):
        return format
    if isinstance(format, str):
        key = format.strip().lower()
        if key.startswith("image_format_"):
            key = key[len("image_format_"):].replace("_", "")
        info = IMAGE_FORMATS.get(key)
        if info is None:
            raise ValueError(
                f"unknown image format {format!r}: expected one of {', '.join(IMAGE_FORMATS)}"
            )
        return info
    if isinstance(format, int) and not isinstance(format, bool):
        info = _FORMATS_BY_VALUE.get(format)
        if info is None:
            raise ValueError(f"unknown image format value {format}")
        return info
    raise TypeError(f"an image format is a name or a pb.ImageFormat value, not {type(format).__name__}")


_KINDS = {"2d": gpushare_pb2.IMAGE_KIND_2D, "3d": gpushare_pb2.IMAGE_KIND_3D}
_KIND_NAMES = {v: k for k, v in _KINDS.items()}


def _image_kind(kind: Union[str, int, None], depth: int) -> int:
    if kind is None:
        return gpushare_pb2.IMAGE_KIND_3D if depth > 1 else gpushare_pb2.IMAGE_KIND_2D
    if isinstance(kind, str):
        value = _KINDS.get(kind.strip().lower())
        if value is None:
            raise ValueError(f"unknown image kind {kind!r}: expected '2d' or '3d'")
        return value
    if kind in _KIND_NAMES:
        return int(kind)
    raise ValueError(f"unknown image kind {kind!r}: expected '2d', '3d' or a pb.ImageKind value")


class Image:
    """An image (:meth:`Client.create_image`, :meth:`Client.image`), named by id, with its shape.

    Attributes: ``id``, ``name``, ``format`` (the format's name, ``"rgba8unorm"``; its facts
    in ``format_info``), ``kind`` (``"2d"`` or ``"3d"``), ``width``, ``height``, ``depth``,
    ``mip_levels``, ``array_layers``, ``usage`` (``VkImageUsageFlags``, transfer usage
    included), ``allocation_size``, and ``resource`` (the ``pb.Resource`` it was made from).
    An Image is accepted wherever a resource id is (``client.describe(image)``).

    Transfers carry tightly packed texels: rows of the region's width, then its height in
    rows, then its depth in slices (3D), then its layers. A region is a box of one mip level
    (``level``), at ``x, y, z``, of ``width, height, depth`` texels (0 reaches the level's edge
    from the offset), over every layer (``layer=None``), one layer (``layer=N``), or ``layers``
    layers from ``layer``. Like the buffer operations they take ``sync`` (a ``pb.Sync``) or
    ``wait``/``signal``/``timeout_ms``, and return once done. Bytes in messages
    (:meth:`write`, :meth:`read`) are limited to ``info().limits.max_transfer_size`` per call;
    host buffers (:meth:`write_from_host`, :meth:`read_into_host`) are not. The daemon checks
    every region (INVALID_ARGUMENT outside the image, or for data of another size).
    """

    def __init__(self, client: "Client", resource: "gpushare_pb2.Resource"):
        if resource.WhichOneof("details") != "image":
            raise ValueError(
                f"{resource.id} is not an image (a "
                f"{_enum_name(gpushare_pb2.ResourceKind, resource.kind)})"
            )
        i = resource.image
        self._client = client
        self.resource = resource
        self.id: str = resource.id
        self.name: str = resource.name
        self.format_info = image_format(i.format)
        self.format: str = self.format_info.name
        self.kind: str = _KIND_NAMES.get(i.kind, str(i.kind))
        self.width: int = i.width
        self.height: int = i.height
        self.depth: int = max(i.depth, 1)
        self.mip_levels: int = i.mip_levels
        self.array_layers: int = i.array_layers
        self.usage: int = i.usage
        self.allocation_size: int = i.allocation_size

    def __repr__(self) -> str:
        extent = f"{self.width}x{self.height}" + (f"x{self.depth}" if self.kind == "3d" else "")
        return (
            f"Image(id={self.id!r}, {self.format} {self.kind} {extent}, "
            f"mip_levels={self.mip_levels}, array_layers={self.array_layers})"
        )

    # ---- shape ----

    def level_extent(self, level: int) -> Tuple[int, int, int]:
        """Level ``level``'s (width, height, depth): each halves per level, never below 1."""
        if not 0 <= level < self.mip_levels:
            raise ValueError(f"level {level} is outside the image's {self.mip_levels} mip levels")
        return (max(self.width >> level, 1), max(self.height >> level, 1), max(self.depth >> level, 1))

    def _box(self, level, layer, x, y, z, width, height, depth, layers):
        """The region's (width, height, depth, layers) with zeros filled in, unchecked (values
        may be <= 0 for regions outside the image), and the proto message."""
        w, h, d = (
            (max(self.width >> level, 1), max(self.height >> level, 1), max(self.depth >> level, 1))
            if level >= 0
            else (0, 0, 0)
        )
        base = 0 if layer is None else layer
        if layers is None:
            layers = 0 if layer is None else 1
        msg = gpushare_pb2.ImageRegion(
            level=level, base_layer=base, layers=layers,
            x=x, y=y, z=z, width=width, height=height, depth=depth,
        )
        return (
            width or w - x,
            height or h - y,
            depth or d - z,
            layers or self.array_layers - base,
        ), msg

    def region_size(
        self,
        level: int = 0,
        layer: Optional[int] = None,
        x: int = 0,
        y: int = 0,
        z: int = 0,
        width: int = 0,
        height: int = 0,
        depth: int = 0,
        layers: Optional[int] = None,
    ) -> int:
        """Bytes of a region, tightly packed (the arguments are :meth:`write`'s). ValueError for
        a region outside the image."""
        w, h, d = self.level_extent(level)
        (rw, rh, rd, rl), _ = self._box(level, layer, x, y, z, width, height, depth, layers)
        base = 0 if layer is None else layer
        for what, off, length, size in (
            ("x + width", x, rw, w),
            ("y + height", y, rh, h),
            ("z + depth", z, rd, d),
            ("layer + layers", base, rl, self.array_layers),
        ):
            if off < 0 or length <= 0 or off + length > size:
                raise ValueError(
                    f"region {what} = {off} + {length} is empty or outside level {level} "
                    f"(extent {w}x{h}x{d}, {self.array_layers} layers)"
                )
        return rw * rh * rd * rl * self.format_info.texel_size

    def _lenient_size(self, region) -> int:
        (rw, rh, rd, rl) = region
        return max(rw, 0) * max(rh, 0) * max(rd, 0) * max(rl, 0) * self.format_info.texel_size

    # ---- transfers ----

    def write(
        self,
        data,
        level: int = 0,
        layer: Optional[int] = None,
        x: int = 0,
        y: int = 0,
        z: int = 0,
        width: int = 0,
        height: int = 0,
        depth: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        layers: Optional[int] = None,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        """Writes ``data`` (bytes, or any C-contiguous buffer such as a numpy array: its bytes,
        exactly the region's size) into the region."""
        _, region = self._box(level, layer, x, y, z, width, height, depth, layers)
        if isinstance(data, bytes):
            payload = data
        else:
            with _byte_view(data) as view:
                payload = view.tobytes()
        self._client._call(
            "WriteImage",
            gpushare_pb2.WriteImageRequest(
                image_id=self.id, region=region, data=payload,
                sync=_image_sync(sync, wait, signal, timeout_ms),
            ),
        )

    def read(
        self,
        level: int = 0,
        layer: Optional[int] = None,
        x: int = 0,
        y: int = 0,
        z: int = 0,
        width: int = 0,
        height: int = 0,
        depth: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        layers: Optional[int] = None,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> bytes:
        """The region's texels, tightly packed."""
        box, region = self._box(level, layer, x, y, z, width, height, depth, layers)
        data = self._client._call(
            "ReadImage",
            gpushare_pb2.ReadImageRequest(
                image_id=self.id, region=region,
                sync=_image_sync(sync, wait, signal, timeout_ms),
            ),
        ).data
        expected = self._lenient_size(box)
        if len(data) != expected:
            raise ProtocolError(f"ReadImage returned {len(data)} bytes instead of {expected}")
        return data

    def write_from_host(
        self,
        host: ResourceId,
        host_offset: int = 0,
        level: int = 0,
        layer: Optional[int] = None,
        x: int = 0,
        y: int = 0,
        z: int = 0,
        width: int = 0,
        height: int = 0,
        depth: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        layers: Optional[int] = None,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        """Writes the region from the host buffer ``host`` (a :class:`HostBuffer` or its id),
        whose bytes at ``host_offset`` are the region's, tightly packed. No message limit
        applies. Do not change that host range until this returns."""
        box, region = self._box(level, layer, x, y, z, width, height, depth, layers)
        self._client._call(
            "WriteImage",
            gpushare_pb2.WriteImageRequest(
                image_id=self.id, region=region,
                from_host=gpushare_pb2.HostRange(
                    host_buffer_id=_rid(host), offset=host_offset, length=self._lenient_size(box)
                ),
                sync=_image_sync(sync, wait, signal, timeout_ms),
            ),
        )

    def read_into_host(
        self,
        host: ResourceId,
        host_offset: int = 0,
        level: int = 0,
        layer: Optional[int] = None,
        x: int = 0,
        y: int = 0,
        z: int = 0,
        width: int = 0,
        height: int = 0,
        depth: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        layers: Optional[int] = None,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> int:
        """Reads the region into the host buffer ``host`` (a :class:`HostBuffer` or its id) at
        ``host_offset``; returns its size in bytes. Read them there once this returned. No
        message limit applies."""
        box, region = self._box(level, layer, x, y, z, width, height, depth, layers)
        length = self._lenient_size(box)
        self._client._call(
            "ReadImage",
            gpushare_pb2.ReadImageRequest(
                image_id=self.id, region=region,
                to_host=gpushare_pb2.HostRange(
                    host_buffer_id=_rid(host), offset=host_offset, length=length
                ),
                sync=_image_sync(sync, wait, signal, timeout_ms),
            ),
        )
        return length

    def read_numpy(
        self,
        level: int = 0,
        layer: Optional[int] = None,
        host: Optional[HostBuffer] = None,
        host_offset: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ):
        """A whole level (every layer, or one) as a new numpy array of shape
        ``([layers,] [depth,] height, width, channels)``: the layers axis when ``layer`` is None
        and the image has several layers, the depth axis for 3D images. Its dtype is the
        format's channel type: uint8 (``*8unorm``, ``*8uint``; unorm values are not scaled),
        uint32, float16 or float32. With ``host`` (a :class:`HostBuffer`) the texels come
        through it, at ``host_offset``, for levels above the message limit. Needs numpy."""
        try:
            import numpy
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("Image.read_numpy needs numpy (pip install numpy)") from e
        w, h, d = self.level_extent(level)
        kw = dict(level=level, layer=layer, sync=sync, wait=wait, signal=signal, timeout_ms=timeout_ms)
        if host is None:
            data = bytearray(self.read(**kw))
        else:
            length = self.read_into_host(host, host_offset, **kw)
            data = bytearray(host.read(host_offset, length))
        shape = [h, w, self.format_info.channels]
        if self.kind == "3d":
            shape.insert(0, d)
        if layer is None and self.array_layers > 1:
            shape.insert(0, self.array_layers)
        return numpy.frombuffer(data, dtype=self.format_info.numpy_dtype).reshape(shape)

    def clear(
        self,
        float_color: Optional[Sequence[float]] = None,
        uint_color: Optional[Sequence[int]] = None,
        base_level: int = 0,
        levels: int = 0,
        base_layer: int = 0,
        layers: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        """Clears levels ``base_level .. base_level + levels`` and layers ``base_layer ..
        base_layer + layers`` (0: through the last) to a color of up to 4 channels (missing
        ones are 0): ``float_color`` for unorm (in [0, 1]) and float formats, ``uint_color``
        for uint formats; neither clears to zero. INVALID_ARGUMENT for the wrong kind of
        color."""
        self._client._call(
            "ClearImage",
            gpushare_pb2.ClearImageRequest(
                image_id=self.id, base_level=base_level, levels=levels,
                base_layer=base_layer, layers=layers,
                float_color=list(float_color or ()), uint_color=list(uint_color or ()),
                sync=_image_sync(sync, wait, signal, timeout_ms),
            ),
        )

    # ---- lifetime and export ----

    def describe(self) -> "gpushare_pb2.Resource":
        """The daemon's current view of the image (references, grants, ...)."""
        return self._client.describe(self.id)

    def release(self) -> bool:
        """Drops this session's reference (or the pin), like :meth:`Client.release`; True when
        that freed the image."""
        return self._client.release(self.id)

    def export(self, timeout: Optional[float] = 10.0) -> Exported:
        """The image's memory descriptor and its import metadata (``info.image``: format, kind,
        extent, levels, layers, usage, ``allocation_size``, ``dedicated``, memory type, VkFormat,
        tiling and layout), like :meth:`Client.export`."""
        return self._client.export(self.id, timeout)


def _image_sync(sync, wait, signal, timeout_ms) -> "gpushare_pb2.Sync":
    if sync is not None:
        if wait or signal or timeout_ms:
            raise ValueError("give sync= or wait=/signal=/timeout_ms=, not both")
        return sync
    return _sync(wait, signal, timeout_ms)


class Client:
    """A synchronous gpushare client.

    ``runtime_dir`` defaults to :func:`default_runtime_dir`. With ``session=True`` the client
    opens a session (the server-streaming ``Session`` call) and names it on every later call;
    the session, and every unpinned resource it references, ends with :meth:`close`.
    ``timeout`` is the gRPC deadline in seconds for unary calls (None: no deadline; ``wait``
    extends it by its own ``timeout_ms``).
    """

    def __init__(
        self,
        runtime_dir: Optional[str] = None,
        session: bool = True,
        client_name: str = "python",
        timeout: Optional[float] = 60.0,
        connect_timeout: float = 10.0,
    ):
        self.runtime_dir = runtime_dir if runtime_dir is not None else default_runtime_dir()
        self.control_path = os.path.join(self.runtime_dir, "control.sock")
        self.fd_path = os.path.join(self.runtime_dir, "fd.sock")
        self.timeout = timeout
        self.session_id: Optional[str] = None
        self._metadata: Tuple[Tuple[str, str], ...] = ()
        self._session_call = None
        self._session_thread: Optional[threading.Thread] = None
        self._session_error: Optional[GpushareError] = None
        self._closed = False
        self._channel = grpc.insecure_channel(
            "unix:" + self.control_path,
            options=[
                # tonic rejects the default authority of a unix: target (the socket path).
                ("grpc.default_authority", "localhost"),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = gpushare_pb2_grpc.GpuShareStub(self._channel)
        if session:
            try:
                self._open_session(client_name, connect_timeout)
            except BaseException:
                self.close()
                raise

    # ---- session ----

    def _open_session(self, client_name: str, connect_timeout: float) -> None:
        call = self._stub.Session(gpushare_pb2.SessionRequest(client_name=client_name))
        self._session_call = call
        started = threading.Event()
        first: List[object] = []

        def drain() -> None:
            # Reads the first event (the session id), then keeps the stream read until it ends:
            # the daemon sends nothing more, but reading lets us notice the session ending.
            try:
                for event in call:
                    if not started.is_set():
                        first.append(event)
                        started.set()
                if not started.is_set():
                    first.append(GpushareError(grpc.StatusCode.INTERNAL, "Session stream ended before it started"))
                self._session_error = GpushareError(grpc.StatusCode.UNAVAILABLE, "session stream ended")
            except grpc.RpcError as e:
                err = GpushareError.from_rpc_error(e)
                self._session_error = err
                if not started.is_set():
                    first.append(err)
            finally:
                started.set()

        thread = threading.Thread(target=drain, name="gpushare-session", daemon=True)
        self._session_thread = thread
        thread.start()
        if not started.wait(connect_timeout):
            raise GpushareError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no session from the daemon at {self.control_path} within {connect_timeout} s",
            )
        result = first[0]
        if isinstance(result, GpushareError):
            raise result
        if result.WhichOneof("event") != "started" or not result.started.session_id:
            raise GpushareError(grpc.StatusCode.INTERNAL, "Session's first event is not `started`")
        self.session_id = result.started.session_id
        self._metadata = ((SESSION_HEADER, self.session_id),)

    @property
    def session_active(self) -> bool:
        """True while this client holds a live session."""
        return self._session_call is not None and self._session_error is None and not self._closed

    def close(self) -> None:
        """Ends the session (cancelling its stream) and closes the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._session_call is not None:
            self._session_call.cancel()
        if self._session_thread is not None:
            self._session_thread.join(timeout=5.0)
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- plumbing ----

    def _call(self, method: str, request, timeout: Optional[float] = None):
        if self._closed:
            raise ValueError("gpushare Client is closed")
        try:
            return getattr(self._stub, method)(
                request,
                metadata=self._metadata,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except grpc.RpcError as e:
            raise GpushareError.from_rpc_error(e) from None

    # ---- info and resources ----

    def info(self) -> "gpushare_pb2.GetInfoResponse":
        return self._call("GetInfo", gpushare_pb2.GetInfoRequest())

    def create_buffer(
        self, size: int, name: str = "", pin: bool = False, device: int = 0
    ) -> "gpushare_pb2.Resource":
        return self._call(
            "CreateBuffer",
            gpushare_pb2.CreateBufferRequest(size=size, device=device, name=name, pin=pin),
        )

    def create_semaphore(
        self, initial: int = 0, name: str = "", pin: bool = False, device: int = 0
    ) -> "gpushare_pb2.Resource":
        return self._call(
            "CreateSemaphore",
            gpushare_pb2.CreateSemaphoreRequest(
                initial_value=initial, device=device, name=name, pin=pin
            ),
        )

    def create_host_buffer(self, size: int, name: str = "", pin: bool = False) -> HostBuffer:
        """Creates a host buffer of ``size`` bytes (shared host memory for bulk transfers: see
        :meth:`write_from_host` and :meth:`read_into_host`) and maps it here: the
        CreateHostBuffer RPC, then the descriptor straight from fd.sock, then
        :meth:`HostBuffer.map`. When exporting or mapping fails the new resource is released
        before the error is raised. On CUDA hosts the daemon page-locks the memory at creation
        (tens of milliseconds per hundred MiB): create once, reuse.

        INVALID_ARGUMENT for size 0 or above ``info().limits.max_host_buffer_size``.
        """
        resource = self._call(
            "CreateHostBuffer",
            gpushare_pb2.CreateHostBufferRequest(size=size, name=name, pin=pin),
        )
        try:
            return HostBuffer.map(self, self.export(resource.id))
        except BaseException:
            # Not usable here: give the daemon's memory back rather than leave it to the session
            # (or to the pin, which would outlive it): the session's reference, then the pin.
            for _ in range(2):
                try:
                    if self.release(resource.id):
                        break
                except Exception:
                    break
            raise

    def create_image(
        self,
        format: Union[str, int],
        width: int,
        height: int,
        depth: int = 1,
        kind: Union[str, int, None] = None,
        mip_levels: int = 1,
        array_layers: int = 1,
        usage: int = 0,
        device: int = 0,
        name: str = "",
        pin: bool = False,
    ) -> Image:
        """Allocates an exportable image and returns its :class:`Image`. ``format`` is a name
        (``"rgba8unorm"``: see :data:`IMAGE_FORMATS`) or a ``pb.IMAGE_FORMAT_*`` value; ``kind``
        is ``"2d"`` (with ``array_layers``) or ``"3d"`` (default: ``"3d"`` when ``depth`` > 1);
        ``mip_levels`` at most ``floor(log2(largest dimension)) + 1``; ``usage`` a
        ``VkImageUsageFlags`` of :data:`USAGE_SAMPLED`, :data:`USAGE_STORAGE` and
        :data:`USAGE_COLOR_ATTACHMENT` (0: sampled and storage). The image reads as zeros.

        ValueError for an unknown format or kind name; INVALID_ARGUMENT for an inconsistent
        shape, FAILED_PRECONDITION for what the device cannot create (``DeviceInfo.image_formats``
        lists the formats it takes as 2D images with the default usage), RESOURCE_EXHAUSTED when
        memory runs out.
        """
        request = gpushare_pb2.CreateImageRequest(
            format=image_format(format).value,
            kind=_image_kind(kind, depth),
            width=width,
            height=height,
            depth=depth,
            mip_levels=mip_levels,
            array_layers=array_layers,
            usage=usage,
            device=device,
            name=name,
            pin=pin,
        )
        return Image(self, self._call("CreateImage", request))

    def image(self, image: ResourceId) -> Image:
        """An :class:`Image` handle for an existing image (its shape is asked of the daemon).
        NOT_FOUND for ids the caller cannot reach; ValueError for a resource that is not an
        image."""
        return Image(self, self.describe(image))

    def list(self) -> List["gpushare_pb2.Resource"]:
        return list(self._call("ListResources", gpushare_pb2.ListResourcesRequest()).resources)

    def describe(self, resource: ResourceId) -> "gpushare_pb2.Resource":
        return self._call("DescribeResource", gpushare_pb2.ResourceRef(id=_rid(resource)))

    def release(self, resource: ResourceId) -> bool:
        """Drops this session's reference (or the pin); True when that freed the resource."""
        return self._call("ReleaseResource", gpushare_pb2.ResourceRef(id=_rid(resource))).freed

    # ---- access ----

    def grant(
        self, resource: ResourceId, uid: Optional[int] = None, gid: Optional[int] = None
    ) -> "gpushare_pb2.Resource":
        """Owner only: lets ``uid`` (or every process whose primary gid is ``gid``) use the
        resource. PERMISSION_DENIED for a grantee, NOT_FOUND for anybody else."""
        return self._call("Grant", _grant_request(resource, uid, gid))

    def revoke(
        self, resource: ResourceId, uid: Optional[int] = None, gid: Optional[int] = None
    ) -> "gpushare_pb2.Resource":
        """Owner only: takes a grant back (imports already made stay valid)."""
        return self._call("Revoke", _grant_request(resource, uid, gid))

    def create_token(self, resource: ResourceId) -> bytes:
        """Owner only: a capability token (16 bytes). Whoever passes it to :meth:`open` gets a
        reference in its session, and the use of the resource through it."""
        return self._call("CreateToken", gpushare_pb2.ResourceRef(id=_rid(resource))).token

    def revoke_tokens(self, resource: ResourceId) -> "gpushare_pb2.Resource":
        """Owner only: invalidates every token of the resource."""
        return self._call("RevokeTokens", gpushare_pb2.ResourceRef(id=_rid(resource)))

    def open(
        self,
        resource: Optional[ResourceId] = None,
        *,
        token: Optional[bytes] = None,
        owner_uid: Optional[int] = None,
        name: Optional[str] = None,
        signal: bool = False,
    ) -> "gpushare_pb2.Resource":
        """Adds a reference of this client's session (it needs one) to a resource named by
        id, by capability ``token``, or by ``owner_uid`` and ``name``. With ``signal``, for a
        semaphore, the session also becomes one of its signalers. Idempotent per session."""
        given = [resource is not None, token is not None, name is not None]
        if sum(given) != 1:
            raise ValueError("open() takes exactly one of: a resource, token=, or owner_uid= and name=")
        if resource is not None:
            request = gpushare_pb2.OpenRequest(id=_rid(resource), signal=signal)
        elif token is not None:
            request = gpushare_pb2.OpenRequest(token=bytes(token), signal=signal)
        else:
            if owner_uid is None:
                raise ValueError("open(name=...) needs owner_uid=")
            request = gpushare_pb2.OpenRequest(
                named=gpushare_pb2.NamedResource(owner_uid=owner_uid, name=name), signal=signal
            )
        return self._call("Open", request)

    # ---- semaphores ----

    def signal(self, semaphore: ResourceId, value: int) -> int:
        return self._call(
            "Signal", gpushare_pb2.SignalRequest(id=_rid(semaphore), value=value)
        ).value

    def wait(self, semaphore: ResourceId, value: int, timeout_ms: int = 0) -> int:
        """Waits until the value is >= ``value``; DEADLINE_EXCEEDED after ``timeout_ms``."""
        deadline = None if self.timeout is None else self.timeout + timeout_ms / 1000.0
        return self._call(
            "Wait",
            gpushare_pb2.WaitRequest(id=_rid(semaphore), value=value, timeout_ms=timeout_ms),
            timeout=deadline,
        ).value

    def value(self, semaphore: ResourceId) -> int:
        return self._call("GetValue", gpushare_pb2.ResourceRef(id=_rid(semaphore))).value

    def watch(self, semaphore: ResourceId) -> Watch:
        """Current value first, then each change. No deadline; ``cancel()`` the Watch to stop."""
        if self._closed:
            raise ValueError("gpushare Client is closed")
        call = self._stub.Watch(gpushare_pb2.ResourceRef(id=_rid(semaphore)), metadata=self._metadata)
        return Watch(call)

    # ---- daemon-executed operations ----

    def write(
        self,
        buffer: ResourceId,
        offset: int,
        data: bytes,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        self._call(
            "Write",
            gpushare_pb2.WriteRequest(
                buffer_id=_rid(buffer), offset=offset, data=bytes(data),
                sync=_sync(wait, signal, timeout_ms),
            ),
        )

    def read(
        self,
        buffer: ResourceId,
        offset: int,
        length: int,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> bytes:
        return self._call(
            "Read",
            gpushare_pb2.ReadRequest(
                buffer_id=_rid(buffer), offset=offset, length=length,
                sync=_sync(wait, signal, timeout_ms),
            ),
        ).data

    def write_from_host(
        self,
        buffer: ResourceId,
        offset: int,
        host: ResourceId,
        host_offset: int,
        length: int,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        """Writes ``length`` bytes of the host buffer ``host`` (a :class:`HostBuffer` or its id)
        at ``host_offset`` into ``buffer`` at ``offset``: the daemon copies them straight from
        the shared memory, so no message limit applies (only the buffers' sizes). Do not change
        that host range until this returns. INVALID_ARGUMENT for a range outside either buffer,
        NOT_FOUND for a host buffer that was freed."""
        self._call(
            "Write",
            gpushare_pb2.WriteRequest(
                buffer_id=_rid(buffer), offset=offset,
                from_host=gpushare_pb2.HostRange(
                    host_buffer_id=_rid(host), offset=host_offset, length=length
                ),
                sync=_sync(wait, signal, timeout_ms),
            ),
        )

    def read_into_host(
        self,
        buffer: ResourceId,
        offset: int,
        length: int,
        host: ResourceId,
        host_offset: int,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        """Reads ``length`` bytes of ``buffer`` at ``offset`` into the host buffer ``host`` (a
        :class:`HostBuffer` or its id) at ``host_offset``; read them there
        (:meth:`HostBuffer.read`) once this returned, not before. No message limit applies.
        INVALID_ARGUMENT for a range outside either buffer, NOT_FOUND for a freed host buffer."""
        self._call(
            "Read",
            gpushare_pb2.ReadRequest(
                buffer_id=_rid(buffer), offset=offset, length=length,
                to_host=gpushare_pb2.HostRange(
                    host_buffer_id=_rid(host), offset=host_offset, length=length
                ),
                sync=_sync(wait, signal, timeout_ms),
            ),
        )

    def fill(
        self,
        buffer: ResourceId,
        offset: int,
        length: int,
        value: int,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        """Repeats the 32-bit word ``value`` over the range (offset and length multiples of 4)."""
        self._call(
            "Fill",
            gpushare_pb2.FillRequest(
                buffer_id=_rid(buffer), offset=offset, length=length, value=value,
                sync=_sync(wait, signal, timeout_ms),
            ),
        )

    def copy(
        self,
        src: ResourceId,
        src_offset: int,
        dst: ResourceId,
        dst_offset: int,
        length: int,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        self._call(
            "Copy",
            gpushare_pb2.CopyRequest(
                src_buffer_id=_rid(src), src_offset=src_offset,
                dst_buffer_id=_rid(dst), dst_offset=dst_offset, length=length,
                sync=_sync(wait, signal, timeout_ms),
            ),
        )

    # ---- descriptors ----

    def export_ticket(self, resource: ResourceId) -> "gpushare_pb2.ExportResponse":
        """The Export RPC alone: a one-time ticket (and its TTL) to pass to :meth:`redeem`."""
        return self._call("Export", gpushare_pb2.ResourceRef(id=_rid(resource)))

    def export(self, resource: ResourceId, timeout: Optional[float] = 10.0) -> Exported:
        """The resource's descriptor and its import metadata, for this process: one request on
        fd.sock (no ticket). To hand a descriptor to another process, pass it a ticket from
        :meth:`export_ticket`, which that process redeems with :meth:`redeem`."""
        request = gpushare_pb2.FdRequest(export=_rid(resource)).SerializeToString()
        return self._fd_request(request, timeout)

    def redeem(self, ticket: bytes, timeout: Optional[float] = 10.0) -> Exported:
        """Redeems an Export ticket on fd.sock. Raises GpushareError with the daemon's code."""
        request = gpushare_pb2.FdRequest(redeem=bytes(ticket)).SerializeToString()
        return self._fd_request(request, timeout)

    def _fd_request(self, request: bytes, timeout: Optional[float]) -> Exported:
        """One request/reply on a fresh fd.sock connection."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(self.fd_path)
                sock.sendall(request)
                data, ancdata, flags, _ = sock.recvmsg(
                    MAX_FD_REPLY_BYTES,
                    socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array.array("i").itemsize),
                    socket.MSG_CMSG_CLOEXEC,
                )
            except socket.timeout:
                raise GpushareError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"no reply on {self.fd_path}"
                ) from None
            except OSError as e:
                raise GpushareError(
                    grpc.StatusCode.UNAVAILABLE, f"fd.sock {self.fd_path}: {e}"
                ) from None
        return _decode_fd_reply(data, ancdata, flags)


def _decode_fd_reply(data: bytes, ancdata, flags: int) -> Exported:
    """Turns one recvmsg result into an Exported, closing every received fd on any error."""
    fds: List[int] = []
    try:
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                ints = array.array("i")
                usable = len(payload) - len(payload) % ints.itemsize
                ints.frombytes(payload[:usable])
                fds.extend(ints)
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError("control data truncated (MSG_CTRUNC): too many descriptors")
        if flags & socket.MSG_TRUNC:
            raise ProtocolError("reply truncated (MSG_TRUNC)")
        if not data and not fds:
            raise GpushareError(grpc.StatusCode.UNAVAILABLE, "fd.sock closed without a reply")
        try:
            reply = gpushare_pb2.FdReply.FromString(data)
        except Exception as e:  # google.protobuf.message.DecodeError
            raise ProtocolError(f"undecodable FdReply: {e}") from None
        which = reply.WhichOneof("reply")
        if which == "error":
            raise GpushareError.from_code_value(reply.error.code, reply.error.message)
        if which != "exported":
            raise ProtocolError("FdReply has neither `exported` nor `error`")
        if len(fds) != 1:
            raise ProtocolError(f"expected exactly one descriptor, got {len(fds)}")
        fd = fds.pop()
        return Exported(fd, reply.exported)
    finally:
        _close_fds(fds)
