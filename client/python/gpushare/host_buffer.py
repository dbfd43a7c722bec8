"""Host buffers: shared host memory (a sealed memfd) mapped both in this process and in the
daemon, for bulk transfers that bypass the gRPC message limit (:class:`HostBuffer`)."""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple, Union

from gpushare import _dlpack

from gpushare._common import Exported, ProtocolError, _byte_view, _enum_name, gpushare_pb2

if TYPE_CHECKING:  # annotations only: client.py imports this module
    from gpushare.client import Client

__all__ = ["HostBuffer"]

# fcntl(2) file seals (Linux >= 3.17); the fcntl module names them since Python 3.8.
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 0x0002)


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

    def write(self, offset: int, data: Any) -> None:
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

    def readinto(self, offset: int, out: Any) -> int:
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

    # ---- zero-copy arrays ----

    def numpy(
        self,
        dtype: Any = "uint8",
        shape: Union[int, Sequence[int], None] = None,
        offset: int = 0,
    ) -> Any:
        """A numpy array over the shared memory itself (no copy): ``dtype`` elements from byte
        ``offset``, of ``shape`` (None: as many as fit). Writes through it are what the daemon
        reads in :meth:`Client.write_from_host`. The array keeps the mapping alive (see
        :meth:`close`). Needs numpy."""
        import numpy

        dt = numpy.dtype(dtype)
        count = _element_count(shape, self.size - offset, dt.itemsize)
        self._check_range(offset, count * dt.itemsize)
        arr = numpy.frombuffer(self._map(), dtype=dt, count=count, offset=offset)
        return arr.reshape(shape) if shape is not None else arr

    def __dlpack_device__(self) -> Tuple[int, int]:
        return (_dlpack.KDL_CPU, 0)

    def __dlpack__(
        self,
        *,
        stream: Optional[int] = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any:
        """The whole mapping as a 1-D uint8 DLPack tensor on the CPU (zero copy): e.g.
        ``numpy.from_dlpack(host)``, ``torch.from_dlpack(host)``. The tensor keeps the mapping
        alive. ``copy=True`` and other devices are refused (BufferError)."""
        if copy:
            raise BufferError("gpushare.HostBuffer: DLPack copies are not supported")
        if dl_device is not None and tuple(dl_device) != (_dlpack.KDL_CPU, 0):
            raise BufferError(f"gpushare.HostBuffer lives on the CPU, not {tuple(dl_device)}")
        anchor = ctypes.c_char.from_buffer(self._map())  # pins the mapping while it lives
        return _dlpack.make_capsule(
            self,
            ctypes.addressof(anchor),
            (_dlpack.KDL_CPU, 0),
            _dlpack.dtype_info("uint8"),
            (self.size,),
            versioned=max_version is not None and tuple(max_version) >= (1, 0),
            keep=(anchor,),
        )

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

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"HostBuffer(id={self.id!r}, size={self.size}, {state})"


def _element_count(shape: Union[int, Sequence[int], None], available: int, itemsize: int) -> int:
    if shape is None:
        if available < 0:
            raise ValueError("offset beyond the buffer")
        return available // itemsize
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    count = 1
    for dim in dims:
        count *= int(dim)
    return count


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
