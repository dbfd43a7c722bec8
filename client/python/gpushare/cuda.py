"""CUDA imports of gpushare descriptors (buffers, timeline semaphores, images), with the CUDA
driver API of ``cuda-bindings`` (``pip install 'gpushare[cuda]'``).

Importing this module needs nothing; the first call that needs CUDA raises
:class:`CudaUnavailable` when cuda-bindings or the driver is missing.

- :func:`import_buffer` -> :class:`CudaBuffer`: ``__cuda_array_interface__`` (v3) and
  ``__dlpack__`` (DLPack >= 1.0, with the stream handshake), :meth:`CudaBuffer.as_tensor`
  (torch) and :meth:`CudaBuffer.as_cupy` at offsets: one export, one import, many tensors.
- :func:`import_semaphore` -> :class:`CudaSemaphore`: ``signal(value, stream)`` and
  ``wait(value, stream)`` enqueued on a torch or CuPy stream (or a raw ``CUstream``), no host
  block; on the CUDA fast path (the semaphore's memop word: ``cuStreamWriteValue64`` /
  ``cuStreamWaitValue64``) where the semaphore has a word and this device runs 64-bit memory
  operations (``CudaSemaphore.path``, ``CudaSemaphore.fallback``).
- :func:`import_image` -> :class:`CudaImage`: the mipmapped array, per-level arrays, surface
  and texture objects.
- :class:`CudaProducer` / :class:`CudaConsumer`: a frame stream's roles on the GPU (the slots
  and timelines imported once; grant, ready and release points waited for and signaled on a
  torch or CuPy stream).

The device is chosen by the UUID in the descriptor's metadata (``cuDeviceGetUuid``), so it is
right under any ``CUDA_VISIBLE_DEVICES``; :class:`DeviceNotVisible` names the UUID when this
process cannot see that GPU. Every call runs in the device's primary context (the one torch and
CuPy use). A descriptor's ownership passes to CUDA only when its import succeeds; it is closed
on any failure.

The lazy-loading pitfall: see :func:`warm_up` and the README ("CUDA lazy loading").
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from gpushare import _dlpack
from gpushare._common import Exported, gpushare_pb2

__all__ = [
    "CudaBuffer",
    "CudaConsumer",
    "CudaError",
    "CudaFrame",
    "CudaImage",
    "CudaProducer",
    "CudaSemaphore",
    "CudaSlot",
    "CudaUnavailable",
    "DeviceNotVisible",
    "FastPathUnavailable",
    "HostPointsError",
    "LazyLoadingWarning",
    "SurfaceObject",
    "TextureObject",
    "device_for_uuid",
    "format_uuid",
    "import_buffer",
    "import_image",
    "import_semaphore",
    "stream_handle",
    "warm_up",
]

Stream = Any  # torch.cuda.Stream, cupy.cuda.Stream, CUstream, an int, or None


class CudaUnavailable(ImportError):
    """cuda-bindings is not installed, or the CUDA driver cannot be loaded."""


class CudaError(RuntimeError):
    """A CUDA driver call failed: ``call`` is its name, ``result`` the ``CUresult`` value."""

    def __init__(self, call: str, result: int, detail: str = ""):
        self.call = call
        self.result = result
        super().__init__(f"{call} failed: CUresult {result}{' (' + detail + ')' if detail else ''}")


class DeviceNotVisible(CudaError):
    """No GPU visible to this process has the exporting device's UUID."""

    def __init__(self, uuid: bytes, visible: Sequence[str]):
        self.uuid = uuid
        CudaError.__init__(self, "cuDeviceGetUuid", 100)
        self.args = (
            f"the exporting GPU GPU-{format_uuid(uuid)} is not visible to this process "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}; "
            f"visible: {', '.join(visible) or 'none'})",
        )


def format_uuid(uuid: bytes) -> str:
    """``12345678-9abc-def0-0123-456789abcdef``, as ``nvidia-smi -L`` shows it after ``GPU-``."""
    h = bytes(uuid).hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


# ---- the driver ----

_driver_module: Any = None
_driver_lock = threading.RLock()


def _drv() -> Any:
    """cuda.bindings.driver, initialized (cuInit) once."""
    global _driver_module
    if _driver_module is not None:
        return _driver_module
    with _driver_lock:
        if _driver_module is not None:
            return _driver_module
        try:
            from cuda.bindings import driver
        except ImportError:
            try:
                from cuda import cuda as driver  # cuda-python < 12.6
            except ImportError as e:
                raise CudaUnavailable(
                    "gpushare.cuda needs the CUDA driver bindings: pip install 'gpushare[cuda]' "
                    "(the cuda-bindings package)"
                ) from e
        try:
            result = driver.cuInit(0)
        except Exception as e:  # the driver library itself is missing
            raise CudaUnavailable(f"the CUDA driver cannot be loaded: {e}") from e
        err = result[0] if isinstance(result, tuple) else result
        if int(err) not in (0, 100):  # CUDA_SUCCESS, CUDA_ERROR_NO_DEVICE
            raise CudaUnavailable(f"cuInit failed: CUresult {int(err)}")
        _driver_module = driver
        return driver


def _check(call: str, result: Any) -> Any:
    """Unpacks a cuda-bindings result tuple: raises CudaError, returns the value(s)."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    code = int(err)
    if code != 0:
        detail = ""
        try:
            e, text = _drv().cuGetErrorString(err)
            if int(e) == 0 and text:
                detail = text.decode() if isinstance(text, bytes) else str(text)
        except Exception:
            pass
        raise CudaError(call, code, detail)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


class _Device:
    """One CUDA device: ordinal (in this process), UUID, and its retained primary context.
    ``with device:`` makes the context current for the block."""

    def __init__(self, ordinal: int, handle: Any, uuid: bytes, name: str):
        self.ordinal = ordinal
        self.handle = handle
        self.uuid = uuid
        self.name = name
        d = _drv()
        self.context = _check("cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain(handle))

    def __enter__(self) -> "_Device":
        _check("cuCtxPushCurrent", _drv().cuCtxPushCurrent(self.context))
        return self

    def __exit__(self, *exc: Any) -> None:
        _check("cuCtxPopCurrent", _drv().cuCtxPopCurrent())

    def attribute(self, attr: Any) -> int:
        return int(_check("cuDeviceGetAttribute", _drv().cuDeviceGetAttribute(attr, self.handle)))

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.ordinal}"


_devices: Dict[bytes, _Device] = {}


def _uuid_bytes(u: Any) -> bytes:
    raw = u.bytes
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    return bytes(b & 0xFF for b in raw)


def _visible() -> List[Tuple[int, Any, bytes, str]]:
    d = _drv()
    result = d.cuDeviceGetCount()
    if int(result[0]) == 100:  # CUDA_ERROR_NO_DEVICE
        return []
    count = _check("cuDeviceGetCount", result)
    out = []
    for i in range(int(count)):
        dev = _check("cuDeviceGet", d.cuDeviceGet(i))
        uuid = _uuid_bytes(_check("cuDeviceGetUuid", d.cuDeviceGetUuid(dev)))
        raw_name = _check("cuDeviceGetName", d.cuDeviceGetName(256, dev))
        name = raw_name.split(b"\0", 1)[0].decode(errors="replace")
        out.append((i, dev, uuid, name))
    return out


def device_for_uuid(uuid: bytes) -> _Device:
    """The CUDA device (in this process's numbering) whose UUID is ``uuid``; DeviceNotVisible
    naming the UUID when there is none (CUDA_VISIBLE_DEVICES hiding it, another machine's GPU)."""
    uuid = bytes(uuid)
    if len(uuid) != 16:
        raise ValueError(f"a device UUID has 16 bytes, not {len(uuid)}")
    with _driver_lock:
        found = _devices.get(uuid)
        if found is not None:
            return found
        visible = _visible()
        for ordinal, dev, dev_uuid, name in visible:
            if dev_uuid == uuid:
                found = _Device(ordinal, dev, dev_uuid, name)
                _devices[uuid] = found
                return found
        raise DeviceNotVisible(uuid, [f"{o}: {n} (GPU-{format_uuid(u)})" for o, _, u, n in visible])


def stream_handle(stream: Stream) -> int:
    """The ``CUstream`` address of a torch stream (``.cuda_stream``), a CuPy stream (``.ptr``),
    an object of the CUDA stream protocol (``__cuda_stream__``), a ``CUstream``, or an int;
    None is the legacy default stream (0)."""
    if stream is None:
        return 0
    if isinstance(stream, int):
        return stream
    protocol = getattr(stream, "__cuda_stream__", None)
    if protocol is not None:
        return int(protocol()[1])
    for attr in ("cuda_stream", "ptr", "handle"):
        value = getattr(stream, attr, None)
        if value is not None and not callable(value):
            return int(value)
    try:
        return int(stream)  # CUstream, and other handle objects with __int__
    except TypeError:
        raise TypeError(f"not a CUDA stream: {stream!r}") from None


def _cu_stream(stream: Stream) -> Any:
    return _drv().CUstream(stream_handle(stream))


def _take_fd(exported: Exported) -> int:
    return exported.fileno()


def _exported(source: Any, client: Any, word: bool = False) -> Exported:
    """``source`` itself when it is an :class:`Exported`; else its export: an ``Image`` (its
    ``export()``), or a resource / id with ``client`` (``client.export(source)``; ``word``: a
    semaphore's word buffer too)."""
    if isinstance(source, Exported):
        return source
    export = getattr(source, "export", None)
    if callable(export) and client is None:
        result: Exported = export()
        return result
    if client is None:
        raise TypeError(
            f"expected an Exported (client.export(...) or client.redeem(ticket)), or a resource "
            f"with client=, not {type(source).__name__}"
        )
    result = client.export(source, word=word) if word else client.export(source)
    return result


def _metadata_device(exported: Exported) -> _Device:
    return device_for_uuid(bytes(exported.info.device_uuid))


# ---- buffers ----


class _ImportedMemory:
    """Imported external memory and its whole mapping; freed when the last holder lets go."""

    def __init__(self, device: _Device, fd: int, allocation_size: int, dedicated: bool):
        d = _drv()
        self.device = device
        self.ext: Any = None
        self.ptr = 0
        self.size = allocation_size  # mapped
        self.usable = allocation_size  # what views may reach: the buffer's own size
        desc = d.CUDA_EXTERNAL_MEMORY_HANDLE_DESC()
        desc.type = d.CUexternalMemoryHandleType.CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD
        desc.handle.fd = fd
        desc.size = allocation_size
        desc.flags = d.CUDA_EXTERNAL_MEMORY_DEDICATED if dedicated else 0
        with device:
            self.ext = _check("cuImportExternalMemory", d.cuImportExternalMemory(desc))

    def map_whole(self) -> None:
        d = _drv()
        bdesc = d.CUDA_EXTERNAL_MEMORY_BUFFER_DESC()
        bdesc.offset = 0
        bdesc.size = self.size
        bdesc.flags = 0
        with self.device:
            ptr = _check(
                "cuExternalMemoryGetMappedBuffer", d.cuExternalMemoryGetMappedBuffer(self.ext, bdesc)
            )
        self.ptr = int(ptr)

    def close(self) -> None:
        ext, self.ext = self.ext, None
        ptr, self.ptr = self.ptr, 0
        if ext is None:
            return
        d = _drv()
        with self.device:
            if ptr:
                d.cuMemFree(d.CUdeviceptr(ptr))
            d.cuDestroyExternalMemory(ext)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _import_memory(exported: Exported, allocation_size: int, dedicated: bool) -> _ImportedMemory:
    """Imports ``exported``'s descriptor, passing its ownership to CUDA on success only."""
    try:
        device = _metadata_device(exported)
        if allocation_size <= 0:
            raise ValueError("the export's allocation size is 0")
        memory = _ImportedMemory(device, _take_fd(exported), allocation_size, dedicated)
    except BaseException:
        exported.close()
        raise
    exported.detach()  # the driver owns it now
    return memory


class CudaBuffer:
    """A range of a buffer imported into CUDA, typed (``dtype``, ``shape``; uint8 bytes by
    default): a device pointer with ``__cuda_array_interface__`` (v3) and ``__dlpack__``.

    :meth:`view`, :meth:`as_tensor` and :meth:`as_cupy` make more at offsets, all sharing one
    import; the import is freed when the last of them (and of the tensors made from them) is
    gone. GPU work using the memory must be complete by then (synchronize its stream).

    ``stream``: the stream the contents are ready on, for consumers on other streams: the
    DLPack handshake makes the consumer's stream wait for it (an event), and
    ``__cuda_array_interface__`` names it. None (default): no pending work to wait for (the
    usual case when a :class:`CudaSemaphore` wait on the consumer's stream orders the work).
    """

    def __init__(
        self,
        memory: _ImportedMemory,
        resource_id: str,
        offset: int,
        nbytes: int,
        dtype: Any = "uint8",
        shape: Union[int, Sequence[int], None] = None,
        stream: Stream = None,
    ):
        self._memory = memory
        self.id = resource_id
        self.dtype = _dlpack.dtype_info(dtype)
        if offset < 0 or nbytes < 0 or offset + nbytes > memory.usable:
            raise ValueError(f"range {offset}+{nbytes} outside the buffer of {memory.usable} bytes")
        if shape is None:
            self.shape: Tuple[int, ...] = (nbytes // self.dtype.itemsize,)
        else:
            self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        count = 1
        for s in self.shape:
            count *= s
        if count * self.dtype.itemsize > nbytes:
            raise ValueError(
                f"shape {self.shape} of {self.dtype.name} needs {count * self.dtype.itemsize} "
                f"bytes; the range has {nbytes}"
            )
        self.offset = offset
        self.nbytes = count * self.dtype.itemsize
        self.stream = stream

    @property
    def ptr(self) -> int:
        """The device pointer (``CUdeviceptr``) of the first element."""
        if not self._memory.ptr:
            raise ValueError("the CUDA import is closed")
        return self._memory.ptr + self.offset

    @property
    def device(self) -> int:
        """The CUDA device ordinal, in this process's numbering."""
        return self._memory.device.ordinal

    @property
    def device_uuid(self) -> bytes:
        return self._memory.device.uuid

    def view(
        self,
        offset: int = 0,
        nbytes: Optional[int] = None,
        dtype: Any = "uint8",
        shape: Union[int, Sequence[int], None] = None,
    ) -> "CudaBuffer":
        """Another view of the same import, ``offset`` bytes from this one's start, of ``dtype``
        and ``shape`` (None: as many elements as fit in ``nbytes``; ``nbytes`` None: the rest
        of this view, or with a shape the rest of the buffer). Any range of the buffer may be
        viewed (checked against its size), so many tensors can share one import."""
        start = self.offset + offset
        if nbytes is None:
            nbytes = self.offset + self.nbytes - start if shape is None else self._memory.usable - start
        return CudaBuffer(self._memory, self.id, start, nbytes, dtype, shape, self.stream)

    def as_tensor(
        self,
        dtype: Any = None,
        shape: Union[int, Sequence[int], None] = None,
        offset: int = 0,
    ) -> Any:
        """A torch tensor over ``shape`` elements of ``dtype`` (default torch.uint8) at byte
        ``offset`` of this view, without a copy (DLPack). It keeps the import alive."""
        import torch

        view = self.view(offset, None, dtype if dtype is not None else torch.uint8, shape)
        return torch.from_dlpack(view)

    def as_cupy(
        self,
        dtype: Any = "uint8",
        shape: Union[int, Sequence[int], None] = None,
        offset: int = 0,
    ) -> Any:
        """A CuPy array over ``shape`` elements of ``dtype`` at byte ``offset``, without a copy
        (``__cuda_array_interface__``). It keeps the import alive."""
        import cupy

        view = self.view(offset, None, dtype, shape)
        with cupy.cuda.Device(view.device):
            return cupy.asarray(view)

    # ---- protocols ----

    @property
    def __cuda_array_interface__(self) -> Dict[str, Any]:
        if self.dtype.typestr is None:
            raise AttributeError(f"__cuda_array_interface__ has no type for {self.dtype.name}")
        iface: Dict[str, Any] = {
            "shape": self.shape,
            "typestr": self.dtype.typestr,
            "data": (self.ptr, False),
            "strides": None,
            "version": 3,
        }
        if self.stream is not None:
            handle = stream_handle(self.stream)
            iface["stream"] = handle if handle != 0 else 1
        return iface

    def __dlpack_device__(self) -> Tuple[int, int]:
        return (_dlpack.KDL_CUDA, self.device)

    def __dlpack__(
        self,
        *,
        stream: Optional[int] = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any:
        """DLPack export. ``stream``: the consumer's stream (None: the legacy default stream,
        1: legacy default, 2: per-thread default, -1: no synchronization); when :attr:`stream`
        is set, the consumer's stream waits for it (an event). A versioned capsule when
        ``max_version`` >= (1, 0), else a legacy one. ``copy=True`` or another ``dl_device``
        raise BufferError."""
        if copy:
            raise BufferError("gpushare.cuda.CudaBuffer: DLPack copies are not supported")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"the buffer is on {self.__dlpack_device__()}, not {tuple(dl_device)}")
        if stream is not None and stream != -1 and self.stream is not None:
            consumer = {1: 0, 2: 2}.get(stream, stream)
            producer = stream_handle(self.stream)
            if consumer != producer:
                _stream_wait(self._memory.device, producer, consumer)
        return _dlpack.make_capsule(
            self,
            self.ptr,
            self.__dlpack_device__(),
            self.dtype,
            self.shape,
            versioned=max_version is not None and tuple(max_version) >= (1, 0),
            keep=(self._memory,),
        )

    def close(self) -> None:
        """Frees the import now (every view and tensor over it becomes invalid). Optional:
        it is freed when the last view is gone."""
        self._memory.close()

    def __repr__(self) -> str:
        return (
            f"CudaBuffer(id={self.id!r}, device={self._memory.device.ordinal}, "
            f"offset={self.offset}, shape={self.shape}, dtype={self.dtype.name})"
        )


def _stream_wait(device: _Device, producer: int, consumer: int) -> None:
    """Makes ``consumer`` wait (on the GPU) for the work enqueued so far on ``producer``."""
    d = _drv()
    with device:
        event = _check(
            "cuEventCreate", d.cuEventCreate(int(d.CUevent_flags.CU_EVENT_DISABLE_TIMING))
        )
        try:
            _check("cuEventRecord", d.cuEventRecord(event, d.CUstream(producer)))
            _check("cuStreamWaitEvent", d.cuStreamWaitEvent(d.CUstream(consumer), event, 0))
        finally:
            d.cuEventDestroy(event)


def import_buffer(source: Any, client: Any = None, stream: Stream = None) -> CudaBuffer:
    """Imports a buffer into the CUDA device that exported it (by UUID), with the metadata's
    allocation size and dedicated flag, and maps it whole. ``source``: an :class:`Exported`
    (:meth:`Client.export`, :meth:`Client.redeem`), or the buffer (a ``Resource`` or its id)
    with the ``client`` to export it. Takes the descriptor: its ownership passes to CUDA on
    success, and it is closed on failure. Returns a uint8 view of the buffer's ``size`` bytes;
    ``stream`` becomes its :attr:`CudaBuffer.stream`."""
    exported = _exported(source, client)
    info = exported.info
    try:
        if info.kind != gpushare_pb2.RESOURCE_KIND_BUFFER or info.WhichOneof("details") != "buffer":
            raise ValueError(f"not a buffer export: {exported!r}")
        if info.handle_type != gpushare_pb2.HANDLE_TYPE_OPAQUE_FD:
            raise ValueError(f"CUDA imports OPAQUE_FD buffers, not handle type {info.handle_type}")
        meta = info.buffer
        if meta.size == 0 or meta.size > meta.allocation_size:
            raise ValueError(f"buffer size {meta.size} with allocation size {meta.allocation_size}")
    except BaseException:
        exported.close()
        raise
    memory = _import_memory(exported, meta.allocation_size, meta.dedicated)
    memory.usable = meta.size
    try:
        memory.map_whole()
    except BaseException:
        memory.close()
        raise
    return CudaBuffer(memory, info.resource_id, 0, meta.size, "uint8", None, stream)


# ---- semaphores ----

# How long close() waits for enqueued signals and waits before leaking the handle.
_SEMAPHORE_CLOSE_WAIT_S = 2.0


class FastPathUnavailable(RuntimeError):
    """``path="word"`` was asked for but the CUDA fast path cannot be used for the semaphore:
    the message says why (no word, exported without it, or this device lacks 64-bit memory
    operations)."""


_PATHS = ("auto", "semaphore", "word")


def choose_path(
    path: str,
    meta: Any,
    word_fd: bool,
    support: Callable[[], Optional[str]],
) -> Tuple[str, Optional[str]]:
    """The path an import takes: ``("word" | "semaphore", why it fell back)``. ``path``:
    ``"auto"`` (the word where it can be used), ``"semaphore"``, or ``"word"`` (or
    :class:`FastPathUnavailable`); ``meta``: the export's ``SemaphoreImport``; ``word_fd``:
    whether the word's descriptor came; ``support``: None when this device runs 64-bit stream
    memory operations, else why not."""
    if path not in _PATHS:
        raise ValueError(f"path {path!r}: one of {', '.join(_PATHS)}")
    if path == "semaphore":
        return "semaphore", None
    why: Optional[str]
    if not meta.word_exists:
        why = (
            "the semaphore has no memop word (create it with word=True on a device whose "
            "fast_path is offered: see info())"
        )
    elif not word_fd or not meta.HasField("word"):
        why = "it was exported without its word (export(..., word=True) / redeem(..., word=True))"
    else:
        why = support()
    if why is None:
        return "word", None
    if path == "word":
        raise FastPathUnavailable(why)
    return "semaphore", why


def _memop_support(device: _Device) -> Optional[str]:
    """None when ``device`` runs 64-bit stream memory operations, else why not."""
    d = _drv()
    ops = device.attribute(d.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS)
    if ops == 1:
        return None
    return f"this process's CUDA device reports CAN_USE_64_BIT_STREAM_MEM_OPS = {ops}"


class CudaSemaphore:
    """A gpushare timeline semaphore imported into CUDA: :meth:`signal` and :meth:`wait`
    enqueue on a stream (no host block). Destroyed by :meth:`close` (or garbage collection)
    once the operations enqueued on it completed; leaked, not destroyed under the GPU, when
    some are still pending after 2 s (a wait nobody signals).

    ``path`` is ``"word"`` on the CUDA fast path: a signal writes the semaphore's memop word on
    the caller's stream (``cuStreamWriteValue64``), then signals the semaphore on a stream of
    its own that first waits for the word (Vulkan and host waiters see it there, microseconds
    later); a wait waits on the word (``cuStreamWaitValue64``, GEQ). ``"semaphore"``: external
    semaphore signal and wait; ``fallback`` then says why the word was not used, if it was
    asked for (``path="auto"``)."""

    def __init__(
        self,
        device: _Device,
        handle: Any,
        resource_id: str,
        word: Optional[_ImportedMemory] = None,
        fallback: Optional[str] = None,
    ):
        self._device = device
        self._handle: Any = handle
        self.id = resource_id
        self._word = word
        self.fallback = fallback
        self._mirror: Any = None
        # One event per stream used, re-recorded after each operation on it: the last record
        # on a stream covers every earlier operation there.
        self._events: Dict[int, Any] = {}
        self._lock = threading.Lock()
        if word is not None:
            d = _drv()
            flags = int(d.CUstream_flags.CU_STREAM_NON_BLOCKING)
            with device:
                self._mirror = _check("cuStreamCreate", d.cuStreamCreate(flags))

    @property
    def device(self) -> int:
        return self._device.ordinal

    @property
    def path(self) -> str:
        """``"word"`` (the CUDA fast path) or ``"semaphore"``."""
        return "word" if self._word is not None else "semaphore"

    @property
    def word_ptr(self) -> Optional[int]:
        """The word's device address on the fast path (for kernels that poll or write it)."""
        return self._word.ptr if self._word is not None else None

    def _track(self, handle: int, cu_stream: Any) -> None:
        """Records the stream's event after an enqueued operation; the device is current."""
        d = _drv()
        with self._lock:
            event = self._events.get(handle)
            if event is None:
                event = _check(
                    "cuEventCreate", d.cuEventCreate(int(d.CUevent_flags.CU_EVENT_DISABLE_TIMING))
                )
                self._events[handle] = event
            _check("cuEventRecord", d.cuEventRecord(event, cu_stream))

    def _external(self, value: int, cu_stream: Any, signal: bool) -> None:
        """An external-semaphore signal or wait on ``cu_stream``; the device is current."""
        d = _drv()
        if signal:
            params = d.CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS()
        else:
            params = d.CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS()
        params.params.fence.value = int(value)
        if signal:
            call, fn = "cuSignalExternalSemaphoresAsync", d.cuSignalExternalSemaphoresAsync
        else:
            call, fn = "cuWaitExternalSemaphoresAsync", d.cuWaitExternalSemaphoresAsync
        _check(call, fn([self._handle], [params], 1, cu_stream))

    def _enqueue(self, value: int, stream: Stream, signal: bool) -> None:
        if self._handle is None:
            raise ValueError("the CUDA semaphore is closed")
        d = _drv()
        handle = stream_handle(stream)
        cu_stream = d.CUstream(handle)
        with self._device:
            if self._word is None:
                self._external(value, cu_stream, signal)
                self._track(handle, cu_stream)
                return
            word = d.CUdeviceptr(self._word.ptr)
            geq = int(d.CUstreamWaitValue_flags.CU_STREAM_WAIT_VALUE_GEQ)
            if not signal:
                _check("cuStreamWaitValue64", d.cuStreamWaitValue64(cu_stream, word, int(value), geq))
                self._track(handle, cu_stream)
                return
            write = int(d.CUstreamWriteValue_flags.CU_STREAM_WRITE_VALUE_DEFAULT)
            _check("cuStreamWriteValue64", d.cuStreamWriteValue64(cu_stream, word, int(value), write))
            self._track(handle, cu_stream)
            # The semaphore, for Vulkan and host waiters, off the caller's stream.
            mirror = self._mirror
            _check("cuStreamWaitValue64", d.cuStreamWaitValue64(mirror, word, int(value), geq))
            self._external(value, mirror, True)
            self._track(int(mirror), mirror)

    def signal(self, value: int, stream: Stream = None) -> None:
        """Enqueues on ``stream`` a signal to ``value`` (above the value it will have then)."""
        if value <= 0:
            raise ValueError("a timeline signal value must exceed the current value (> 0)")
        self._enqueue(value, stream, True)

    def wait(self, value: int, stream: Stream = None) -> None:
        """Enqueues on ``stream`` a wait for the value to reach ``value``: later work on the
        stream starts only then. See the README on CUDA lazy loading before the first kernel
        launch after such a wait."""
        self._enqueue(value, stream, False)

    def pending(self) -> int:
        """How many streams still have an operation of this semaphore in flight."""
        d = _drv()
        with self._lock:
            events = list(self._events.values())
        # CUDA_ERROR_NOT_READY (600); another error will not complete later either.
        return sum(1 for e in events if int(d.cuEventQuery(e)[0]) == 600)

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        d = _drv()
        deadline = time.monotonic() + _SEMAPHORE_CLOSE_WAIT_S
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.001)
        if self.pending():
            return  # leaked: destroying it under pending GPU work is undefined
        with self._device:
            for event in self._events.values():
                d.cuEventDestroy(event)
            self._events.clear()
            mirror, self._mirror = self._mirror, None
            if mirror is not None:
                d.cuStreamDestroy(mirror)
            d.cuDestroyExternalSemaphore(handle)
        word, self._word = self._word, None
        if word is not None:
            word.close()

    def __enter__(self) -> "CudaSemaphore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def import_semaphore(source: Any, client: Any = None, path: str = "auto") -> CudaSemaphore:
    """Imports a timeline semaphore into the CUDA device that exported it. ``source``: an
    :class:`Exported` (with its word: ``export(..., word=True)``), or the semaphore with the
    ``client`` to export it (with its word). ``path``: ``"auto"`` (the CUDA fast path where the
    semaphore has a word and this device runs 64-bit memory operations, else the semaphore,
    ``fallback`` saying why), ``"semaphore"``, or ``"word"`` (:class:`FastPathUnavailable`
    otherwise). Takes the descriptors (CUDA owns them on success; closed on failure)."""
    exported = _exported(source, client, word=True)
    info = exported.info
    word: Optional[_ImportedMemory] = None
    try:
        if info.kind != gpushare_pb2.RESOURCE_KIND_SEMAPHORE:
            raise ValueError(f"not a semaphore export: {exported!r}")
        if info.handle_type != gpushare_pb2.HANDLE_TYPE_OPAQUE_FD:
            raise ValueError(f"CUDA imports OPAQUE_FD semaphores, not handle type {info.handle_type}")
        device = _metadata_device(exported)
        d = _drv()
        supported = device.attribute(
            d.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_TIMELINE_SEMAPHORE_INTEROP_SUPPORTED
        )
        if not supported:
            raise CudaError("cuImportExternalSemaphore", 801, "no timeline semaphore interop")
        meta = info.semaphore
        try:
            chosen, fallback = choose_path(
                path, meta, exported.word_fd >= 0, lambda: _memop_support(device)
            )
        except FastPathUnavailable as e:
            raise FastPathUnavailable(f"semaphore {info.resource_id}: {e}") from None
        if chosen == "word":
            buf = meta.word
            word = _ImportedMemory(device, exported.word_fd, buf.allocation_size, buf.dedicated)
            exported.detach_word()  # the driver owns it now
            word.map_whole()
        desc = d.CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC()
        desc.type = (
            d.CUexternalSemaphoreHandleType.CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD
        )
        desc.handle.fd = exported.fileno()
        desc.flags = 0
        with device:
            handle = _check("cuImportExternalSemaphore", d.cuImportExternalSemaphore(desc))
    except BaseException:
        if word is not None:
            word.close()
        exported.close()
        raise
    exported.detach()
    exported.close()  # a word descriptor that was not used
    return CudaSemaphore(device, handle, info.resource_id, word, fallback)


# ---- images ----

_USAGE_STORAGE = 0x8
_USAGE_COLOR_ATTACHMENT = 0x10


def _array_format(fmt: int) -> Tuple[Any, int, str, bool]:
    """(CUarray_format, channels, kind, srgb) of a gpushare image format."""
    from gpushare.image import image_format

    info = image_format(fmt)
    d = _drv()
    F = d.CUarray_format
    if info.channel_size == 1:
        cu = F.CU_AD_FORMAT_UNSIGNED_INT8
    elif info.channel_size == 2:
        cu = F.CU_AD_FORMAT_HALF
    elif info.kind == "float":
        cu = F.CU_AD_FORMAT_FLOAT
    else:
        cu = F.CU_AD_FORMAT_UNSIGNED_INT32
    return cu, int(info.channels), str(info.kind), info.name.endswith("srgb")


def _max_levels(*dims: int) -> int:
    return max(dims).bit_length()


class CudaImage:
    """An image imported into CUDA as a mipmapped array (``array``, a ``CUmipmappedArray``) of
    its format, extent, levels and layers. :meth:`level`, :meth:`surface`, :meth:`texture`.
    Objects made from it keep it alive; GPU work using them must be complete when the last goes."""

    def __init__(self, memory: _ImportedMemory, meta: Any, resource_id: str):
        d = _drv()
        self.id = resource_id
        self._memory = memory
        self.meta = meta
        self.width, self.height, self.depth = int(meta.width), int(meta.height), int(meta.depth)
        self.mip_levels, self.array_layers = int(meta.mip_levels), int(meta.array_layers)
        self.is_3d = meta.kind == gpushare_pb2.IMAGE_KIND_3D
        cu_format, channels, self.format_kind, self.srgb = _array_format(meta.format)
        layered = not self.is_3d and self.array_layers > 1
        flags = 0
        if self.is_3d:
            depth = self.depth
        elif layered:
            depth, flags = self.array_layers, d.CUDA_ARRAY3D_LAYERED
        else:
            depth = 0
        if meta.usage & _USAGE_STORAGE:
            flags |= d.CUDA_ARRAY3D_SURFACE_LDST
        if meta.usage & _USAGE_COLOR_ATTACHMENT:
            flags |= d.CUDA_ARRAY3D_COLOR_ATTACHMENT
        self.flags = flags
        mapped = self.mip_levels
        if layered and self.mip_levels > 1:
            # NVIDIA's Vulkan driver lays each layer out for the full chain (see
            # interop/src/cuda/array.rs, mapped_levels).
            mapped = _max_levels(self.width, self.height)
        mdesc = d.CUDA_EXTERNAL_MEMORY_MIPMAPPED_ARRAY_DESC()
        mdesc.offset = 0
        mdesc.arrayDesc.Width = self.width
        mdesc.arrayDesc.Height = self.height
        mdesc.arrayDesc.Depth = depth
        mdesc.arrayDesc.Format = cu_format
        mdesc.arrayDesc.NumChannels = channels
        mdesc.arrayDesc.Flags = flags
        mdesc.numLevels = mapped
        with memory.device:
            self.array: Any = _check(
                "cuExternalMemoryGetMappedMipmappedArray",
                d.cuExternalMemoryGetMappedMipmappedArray(memory.ext, mdesc),
            )

    @property
    def device(self) -> int:
        return self._memory.device.ordinal

    def level_extent(self, level: int) -> Tuple[int, int, int]:
        return (
            max(1, self.width >> level),
            max(1, self.height >> level),
            max(1, self.depth >> level) if self.is_3d else 1,
        )

    def level(self, level: int) -> Any:
        """Level ``level``'s ``CUarray`` (owned by the mipmapped array: valid while this lives)."""
        if not 0 <= level < self.mip_levels:
            raise ValueError(f"mip level {level} outside 0..{self.mip_levels - 1}")
        d = _drv()
        with self._memory.device:
            return _check(
                "cuMipmappedArrayGetLevel", d.cuMipmappedArrayGetLevel(self.array, level)
            )

    def surface(self, level: int = 0) -> "SurfaceObject":
        """A surface object (``CUsurfObject``) on level ``level``, for ``surf2Dwrite`` /
        ``surf3Dwrite`` from kernels. Needs STORAGE usage."""
        if not self.flags & _drv().CUDA_ARRAY3D_SURFACE_LDST:
            raise ValueError("surface objects need an image created with STORAGE usage")
        return SurfaceObject(self, self.level(level))

    def texture(
        self,
        normalized_coords: Optional[bool] = None,
        filter_linear: bool = False,
        address_clamp: bool = True,
    ) -> "TextureObject":
        """A texture object (``CUtexObject``) over the whole mip chain (normalized coordinates,
        which CUDA requires for several levels, by default then) or the single level."""
        if normalized_coords is None:
            normalized_coords = self.mip_levels > 1
        if self.mip_levels > 1 and not normalized_coords:
            raise ValueError("a mipmapped texture needs normalized coordinates")
        if filter_linear and self.format_kind == "uint":
            raise ValueError("integer formats cannot be filtered linearly")
        return TextureObject(self, bool(normalized_coords), filter_linear, address_clamp)

    def close(self) -> None:
        array, self.array = self.array, None
        if array is not None:
            with self._memory.device:
                _drv().cuMipmappedArrayDestroy(array)
        self._memory.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class SurfaceObject:
    """A ``CUsurfObject`` (``.handle``, an int to pass to kernels); destroyed by ``close()`` or
    garbage collection; keeps its image alive."""

    def __init__(self, image: CudaImage, level_array: Any):
        d = _drv()
        self._image = image
        res = d.CUDA_RESOURCE_DESC()
        res.resType = d.CUresourcetype.CU_RESOURCE_TYPE_ARRAY
        res.res.array.hArray = level_array
        res.flags = 0
        with image._memory.device:
            self._obj: Any = _check("cuSurfObjectCreate", d.cuSurfObjectCreate(res))
        self.handle = int(self._obj)

    def close(self) -> None:
        obj, self._obj = self._obj, None
        if obj is not None:
            with self._image._memory.device:
                _drv().cuSurfObjectDestroy(obj)

    def __int__(self) -> int:
        return self.handle

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class TextureObject:
    """A ``CUtexObject`` over an image's mip chain (``.handle``, an int for kernels)."""

    def __init__(self, image: CudaImage, normalized: bool, linear: bool, clamp: bool):
        d = _drv()
        self._image = image
        res = d.CUDA_RESOURCE_DESC()
        if image.mip_levels > 1:
            res.resType = d.CUresourcetype.CU_RESOURCE_TYPE_MIPMAPPED_ARRAY
            res.res.mipmap.hMipmappedArray = image.array
        else:
            res.resType = d.CUresourcetype.CU_RESOURCE_TYPE_ARRAY
            res.res.array.hArray = image.level(0)
        res.flags = 0
        tex = d.CUDA_TEXTURE_DESC()
        address = (
            d.CUaddress_mode.CU_TR_ADDRESS_MODE_CLAMP
            if clamp
            else d.CUaddress_mode.CU_TR_ADDRESS_MODE_WRAP
        )
        tex.addressMode = [address, address, address]
        mode = (
            d.CUfilter_mode.CU_TR_FILTER_MODE_LINEAR
            if linear
            else d.CUfilter_mode.CU_TR_FILTER_MODE_POINT
        )
        tex.filterMode = mode
        tex.mipmapFilterMode = mode
        flags = 0
        if normalized:
            flags |= d.CU_TRSF_NORMALIZED_COORDINATES
        if image.format_kind == "uint":
            flags |= d.CU_TRSF_READ_AS_INTEGER
        if image.srgb:
            flags |= d.CU_TRSF_SRGB
        tex.flags = flags
        tex.maxAnisotropy = 0
        tex.mipmapLevelBias = 0.0
        tex.minMipmapLevelClamp = 0.0
        tex.maxMipmapLevelClamp = float(max(image.mip_levels - 1, 0))
        with image._memory.device:
            self._obj: Any = _check("cuTexObjectCreate", d.cuTexObjectCreate(res, tex, None))
        self.handle = int(self._obj)

    def close(self) -> None:
        obj, self._obj = self._obj, None
        if obj is not None:
            with self._image._memory.device:
                _drv().cuTexObjectDestroy(obj)

    def __int__(self) -> int:
        return self.handle

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def import_image(source: Any, client: Any = None) -> CudaImage:
    """Imports an image into the CUDA device that exported it, as a mipmapped array (always a
    dedicated allocation). ``source``: an :class:`Exported` (``Image.export()``,
    :meth:`Client.redeem`), an :class:`gpushare.Image` (exported here), or the image resource
    with the ``client`` to export it. Takes the descriptor."""
    exported = _exported(source, client)
    info = exported.info
    try:
        if info.kind != gpushare_pb2.RESOURCE_KIND_IMAGE or info.WhichOneof("details") != "image":
            raise ValueError(f"not an image export: {exported!r}")
        if info.handle_type != gpushare_pb2.HANDLE_TYPE_OPAQUE_FD:
            raise ValueError(f"CUDA imports OPAQUE_FD images, not handle type {info.handle_type}")
    except BaseException:
        exported.close()
        raise
    meta = info.image
    memory = _import_memory(exported, meta.allocation_size, True)
    try:
        return CudaImage(memory, meta, info.resource_id)
    except BaseException:
        memory.close()
        raise


# ---- the lazy-loading pitfall ----


def warm_up(*fns: Any) -> None:
    """Runs each callable once and synchronizes (torch's current device), so that the CUDA
    modules their kernels live in are loaded before any semaphore wait is enqueued. Call it
    with the stream the loop will use current (``with torch.cuda.stream(s):``): torch's
    caching allocator keeps its blocks per stream, so the loop then reuses them instead of
    allocating behind the pending wait.

    With CUDA lazy loading (``CUDA_MODULE_LOADING=LAZY``, the default since CUDA 12.2), the
    first launch of a kernel loads its module, and loading waits for the device's queued work
    to drain, holding the context lock meanwhile: behind a pending external-semaphore wait (on
    any stream of the device, a side stream too) the launch blocks the host thread, and every
    other thread's CUDA call, until the wait is satisfied. If the signal it waits for is the
    next thing this process would send, that is a deadlock. So: warm the kernels up before the
    first wait is enqueued (this function), or set ``CUDA_MODULE_LOADING=EAGER`` in the
    environment before CUDA initializes (every module loads at startup: slower start, more
    memory). Enqueueing the waits on a side stream does not help (the load waits for the whole
    device), so gpushare does not rely on it."""
    for fn in fns:
        fn()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except ImportError:
        pass


# ---- frame streams on the GPU ----


class HostPointsError(ValueError):
    """The stream has HOST points (its device cannot export timeline semaphores): there is no
    timeline to wait for or signal on a CUDA stream. Pass ``host_fallback=True`` to synchronize
    the stream on the host at each present / release instead, or move frames with
    :meth:`Client.write` / :meth:`Client.read`."""


class LazyLoadingWarning(RuntimeWarning):
    """A GPU-points stream role enqueues its first semaphore wait without :meth:`warm_up` under
    CUDA lazy loading (see :func:`warm_up` and the README, "CUDA lazy loading")."""


def _stream_context(stream: Stream) -> Any:
    """``stream`` made current for a block: torch's ``torch.cuda.stream``, CuPy's ``with``;
    nothing for None or a raw handle."""
    if stream is None or isinstance(stream, int):
        return contextlib.nullcontext()
    module = type(stream).__module__ or ""
    if module.startswith("torch"):
        import torch

        return torch.cuda.stream(stream)
    if module.startswith("cupy") and hasattr(stream, "__enter__"):
        return stream
    return contextlib.nullcontext()


def _import_slot(exported: Exported) -> Union[CudaBuffer, CudaImage]:
    if exported.info.kind == gpushare_pb2.RESOURCE_KIND_IMAGE:
        return import_image(exported)
    return import_buffer(exported)


class CudaSlot:
    """A slot the producer acquired (:meth:`CudaProducer.acquire`): ``index``, the ``grant``
    (``SlotGrant``), the ``waits`` enqueued on the stream (``(timeline id, value)``), and the
    slot's memory: :attr:`buffer` (a :class:`CudaBuffer`, or a :class:`CudaImage` for image
    slots), :meth:`tensor`, :meth:`array`."""

    def __init__(self, role: "_CudaRole", index: int, grant: Any, waits: List[Tuple[str, int]]):
        self._role = role
        self.index = index
        self.grant = grant
        self.waits = waits

    @property
    def slot(self) -> int:
        """The slot index (so that a CudaSlot goes wherever a slot index does)."""
        return self.index

    @property
    def buffer(self) -> Any:
        return self._role.buffers[self.index]

    def tensor(self, dtype: Any = None, shape: Union[int, Sequence[int], None] = None,
               offset: int = 0) -> Any:
        """The slot as a torch tensor (see :meth:`CudaProducer.tensor`)."""
        return self._role.tensor(self.index, dtype, shape, offset)

    def array(self, dtype: Any = "uint8", shape: Union[int, Sequence[int], None] = None,
              offset: int = 0) -> Any:
        """The slot as a CuPy array (see :meth:`CudaProducer.array`)."""
        return self._role.array(self.index, dtype, shape, offset)

    def __repr__(self) -> str:
        return f"CudaSlot(index={self.index}, waits={self.waits})"


class CudaFrame(CudaSlot):
    """A frame the consumer acquired (:meth:`CudaConsumer.acquire`): ``index`` (its slot),
    ``frame`` (the ``Frame``: ``ready``, ``metadata``, ``sequence``), ``number``, ``sequence``,
    ``metadata``, and the slot's memory as :class:`CudaSlot` has it."""

    def __init__(self, role: "_CudaRole", index: int, frame: Any, waits: List[Tuple[str, int]]):
        super().__init__(role, index, frame, waits)
        self.frame = frame

    @property
    def metadata(self) -> Any:
        return self.frame.metadata

    @property
    def number(self) -> int:
        return int(self.frame.metadata.number)

    @property
    def sequence(self) -> int:
        return int(self.frame.sequence)

    def __repr__(self) -> str:
        return f"CudaFrame(index={self.index}, number={self.number}, sequence={self.sequence})"


class _CudaRole:
    """What both GPU roles share: the slots imported (once), the ready timeline, tensor views,
    the host fallback, warm-up."""

    def __init__(self, role: Any, host_fallback: bool):
        from gpushare.stream import _RoleBase

        if not isinstance(role, _RoleBase):
            raise TypeError(f"expected a gpushare Producer or Consumer, not {type(role).__name__}")
        if role.detached:
            raise ValueError(f"the stream role is detached: {role!r}")
        self.gpu_points = bool(role.gpu_points)
        if not self.gpu_points and not host_fallback:
            raise HostPointsError(
                f"stream {role.id} has HOST points (its device cannot export timeline "
                f"semaphores): nothing to wait for or signal on a CUDA stream. Pass "
                f"host_fallback=True to synchronize the stream on the host at each present / "
                f"release, or move frames with Client.write / Client.read"
            )
        self._r = role
        self._client = role._role.client
        self._warmed = False
        self._warned = False
        self._views: Dict[Tuple[Any, ...], Any] = {}
        self.buffers: List[Any] = []
        self.ready: Optional[CudaSemaphore] = None
        try:
            for part in role.attachment.slots:
                self.buffers.append(_import_slot(self._redeem(part, "slot")))
            if self.gpu_points:
                exported = self._redeem(role.attachment.ready, "ready timeline", word=True)
                self._ready_start = int(exported.info.semaphore.value)
                self.ready = import_semaphore(exported)
        except BaseException:
            self.close()
            raise

    def _redeem(self, part: Any, what: str, word: bool = False) -> Exported:
        """The part's descriptor (``word``: a timeline's word buffer too): its ticket
        redeemed, else (a ticket expired, or redeemed already in this process) a fresh export
        of the resource."""
        from gpushare._common import GpushareError, ProtocolError

        if part.ticket:
            try:
                return self._client.redeem(part.ticket, word=word)
            except GpushareError as e:
                first: Optional[BaseException] = e
        else:
            first = None
        try:
            result: Exported = self._client.export(part.resource_id, word=word)
            return result
        except GpushareError as e:
            if first is None:
                raise ProtocolError(f"the stream's {what} {part.resource_id} has no ticket") from e
            raise first from e

    @property
    def slot_count(self) -> int:
        return len(self.buffers)

    def _index(self, slot: Any) -> int:
        from gpushare.stream import _slot_index

        index = _slot_index(slot)
        if not 0 <= index < len(self.buffers):
            raise ValueError(f"slot {index} outside 0..{len(self.buffers) - 1}")
        return index

    def _buffer(self, index: int) -> CudaBuffer:
        buf = self.buffers[index]
        if not isinstance(buf, CudaBuffer):
            raise TypeError(f"slot {index} is an image (a CudaImage): no tensor view")
        return buf

    def tensor(self, slot: Any, dtype: Any = None, shape: Union[int, Sequence[int], None] = None,
               offset: int = 0) -> Any:
        """Slot ``slot`` (an index, a :class:`CudaSlot` / :class:`CudaFrame`, a grant or a
        frame) as a torch tensor of ``dtype`` (default torch.uint8) and ``shape`` (default: as
        many elements as fit) at byte ``offset``, without a copy. Made once per slot and view,
        then the same tensor is returned."""
        return self._view("torch", slot, dtype, shape, offset)

    def array(self, slot: Any, dtype: Any = "uint8", shape: Union[int, Sequence[int], None] = None,
              offset: int = 0) -> Any:
        """Slot ``slot`` as a CuPy array (as :meth:`tensor`)."""
        return self._view("cupy", slot, dtype, shape, offset)

    def _view(self, kind: str, slot: Any, dtype: Any, shape: Union[int, Sequence[int], None],
              offset: int) -> Any:
        """A torch tensor (``kind`` "torch") or CuPy array ("cupy") over slot ``slot``, made
        once per slot and view."""
        index = self._index(slot)
        key = (kind, index, str(dtype), shape if shape is None else _shape_key(shape), offset)
        view = self._views.get(key)
        if view is None:
            buffer = self._buffer(index)
            view = buffer.as_tensor(dtype, shape, offset) if kind == "torch" else (
                buffer.as_cupy(dtype, shape, offset))
            self._views[key] = view
        return view

    def warm_up(self, *fns: Callable[[], Any], stream: Stream = None) -> None:
        """Runs each callable once with ``stream`` current (torch or CuPy), then synchronizes:
        the kernels the loop launches are loaded before the first semaphore wait is pending
        (:func:`warm_up`; the lazy-loading pitfall). Call it before the first :meth:`acquire`
        with the kernels of the loop, on scratch tensors of the slots' shape (not the slots:
        a free slot may still be read by a consumer). Without it, the first GPU-points
        acquire warns (:class:`LazyLoadingWarning`) unless ``CUDA_MODULE_LOADING=EAGER``."""
        with _stream_context(stream):
            for fn in fns:
                fn()
        self._synchronize(stream)
        self._warmed = True

    def _lazy_check(self) -> None:
        if self._warmed or self._warned or not self.gpu_points:
            return
        self._warned = True
        if os.environ.get("CUDA_MODULE_LOADING", "").upper() == "EAGER":
            return
        warnings.warn(
            "a semaphore wait is enqueued before warm_up(): under CUDA lazy loading the first "
            "launch of a kernel behind a pending wait blocks until the wait is satisfied (a "
            "deadlock when this process sends that signal). Call warm_up(kernels..., "
            "stream=...) first, or set CUDA_MODULE_LOADING=EAGER (README: CUDA lazy loading)",
            LazyLoadingWarning,
            stacklevel=3,
        )

    def _synchronize(self, stream: Stream) -> None:
        """Waits on the host for the work enqueued on ``stream`` (the HOST-points fallback)."""
        d = _drv()
        device = self._device()
        with device:
            _check("cuStreamSynchronize", d.cuStreamSynchronize(_cu_stream(stream)))

    def _device(self) -> _Device:
        if self.ready is not None:
            return self.ready._device
        buf = self.buffers[0]
        memory = buf._memory
        device: _Device = memory.device
        return device

    def _semaphores(self) -> List[CudaSemaphore]:
        return [self.ready] if self.ready is not None else []

    def close(self) -> None:
        """Closes the imported timelines (once the operations enqueued on them completed: see
        :meth:`CudaSemaphore.close`) and drops the cached views; the slots' imports are freed
        when the last tensor over them is gone. Synchronize the streams first."""
        self._views.clear()
        for sem in self._semaphores():
            sem.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _shape_key(shape: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)


class CudaProducer(_CudaRole):
    """A stream's producer on the GPU. ``CudaProducer(producer)`` imports the slots (as
    :class:`CudaBuffer`, or :class:`CudaImage` for image slots) and the ready timeline once
    (redeeming the attachment's tickets: do not call ``producer.import_slots()`` too); the
    consumers' release timelines are imported the first time a grant names them.

    - :meth:`acquire` (``stream``): a free slot (the daemon's AcquireSlot, blocking the host
      thread up to ``timeout_ms`` for backpressure), then the grant's release points waited
      for on ``stream`` (enqueued; no host block): work enqueued on ``stream`` afterwards may
      write the slot.
    - :meth:`tensor` / :meth:`CudaSlot.tensor`: the slot as a tensor.
    - :meth:`present` (``slot``, ``stream``): the next ready value signaled on ``stream``
      (after the work that wrote the slot), then Present with that value.

    Use one stream for the acquires' waits, the writes and the presents (with torch:
    ``with torch.cuda.stream(s):`` around the loop, so the kernels go to ``s`` too), and one
    thread at a time. With HOST points it raises :class:`HostPointsError` unless
    ``host_fallback``: then acquire enqueues nothing (the points are reached) and present
    synchronizes ``stream`` on the host and presents "ready now" (0)."""

    def __init__(self, producer: Any, host_fallback: bool = False):
        from gpushare.stream import Producer

        if not isinstance(producer, Producer):
            raise TypeError(f"expected a gpushare Producer, not {type(producer).__name__}")
        self._timelines: Dict[str, Optional[CudaSemaphore]] = {}
        super().__init__(producer, host_fallback)
        self.producer = producer
        self._last_ready = self._ready_start if self.gpu_points else 0
        self._acquired: Dict[int, CudaSlot] = {}

    @property
    def last_ready_value(self) -> int:
        """The last ready value signaled (0 before the first GPU-points present)."""
        return self._last_ready

    def _timeline(self, semaphore_id: str) -> Optional[CudaSemaphore]:
        """A consumer's release timeline, imported the first time a grant names it; None when
        it is gone (NOT_FOUND: its consumer detached or died, and the daemon ended it first:
        its points are reached)."""
        if semaphore_id in self._timelines:
            return self._timelines[semaphore_id]
        if self.ready is not None and semaphore_id == self.ready.id:
            return self.ready  # imported already (and closed with the role)
        from gpushare._common import GpushareError

        sem: Optional[CudaSemaphore]
        try:
            ticket = self._client.export_ticket(semaphore_id).ticket
            sem = import_semaphore(self._client.redeem(ticket, word=True))
        except GpushareError as e:
            if getattr(e.code, "name", "") != "NOT_FOUND":
                raise
            sem = None
        self._timelines[semaphore_id] = sem
        return sem

    def acquire(self, stream: Stream, timeout_ms: int = 10_000) -> CudaSlot:
        """A free slot: AcquireSlot (waiting up to ``timeout_ms`` on the host for one), then
        a wait for each of the grant's release points enqueued on ``stream``. DEADLINE_EXCEEDED
        (no slot in time) and ABORTED (the stream ended) as :meth:`Producer.acquire_slot`."""
        if timeout_ms < 0:
            raise ValueError("timeout_ms must be >= 0")
        stream_handle(stream)  # a bad stream fails before a slot is taken
        self._lazy_check()
        grant = self.producer.acquire_slot(timeout_ms)
        index = int(grant.slot)
        waits: List[Tuple[str, int]] = []
        if self.gpu_points:
            for point in grant.wait:
                if not point.value:
                    continue
                sem = self._timeline(point.semaphore_id)
                if sem is None:
                    continue
                sem.wait(int(point.value), stream)
                waits.append((str(point.semaphore_id), int(point.value)))
        slot = CudaSlot(self, index, grant, waits)
        self._acquired[index] = slot
        return slot

    def present(
        self,
        slot: Any,
        stream: Stream,
        number: int = 0,
        timestamp_ns: int = 0,
        user_data: bytes = b"",
    ) -> Any:
        """Presents the frame written into ``slot`` (a :class:`CudaSlot` or its index) by the
        work enqueued on ``stream``: the next ready value is signaled on ``stream``, then
        Present names it. Returns the ``Presented`` answer (``ready_value``, ``sequence``).
        FAILED_PRECONDITION, ABORTED as :meth:`Producer.present`."""
        index = self._index(slot)
        if index not in self._acquired:
            raise ValueError(f"slot {index} is not acquired: acquire() it first")
        if number < 0 or timestamp_ns < 0:
            raise ValueError("number and timestamp_ns must be >= 0")
        if len(user_data) > 256:
            raise ValueError(f"user_data has {len(user_data)} bytes; at most 256")
        if self.gpu_points:
            assert self.ready is not None
            value = self._last_ready + 1
            self.ready.signal(value, stream)
            self._last_ready = value  # the GPU signals it whatever Present answers
        else:
            self._synchronize(stream)
            value = 0
        del self._acquired[index]
        return self.producer.present(
            index, ready_value=value, number=number, timestamp_ns=timestamp_ns,
            user_data=user_data,
        )

    def _semaphores(self) -> List[CudaSemaphore]:
        return super()._semaphores() + [s for s in self._timelines.values() if s is not None]

    def __enter__(self) -> "CudaProducer":
        return self

    def __repr__(self) -> str:
        return (f"CudaProducer(stream={self.producer.id!r}, slots={self.slot_count}, "
                f"gpu_points={self.gpu_points})")


class CudaConsumer(_CudaRole):
    """A stream's consumer on the GPU. ``CudaConsumer(consumer)`` imports the slots, the ready
    timeline and its own release timeline once (redeeming the attachment's tickets).

    - :meth:`acquire` (``stream``): the next frame (the daemon's AcquireFrame, blocking the
      host thread up to ``timeout_ms``), then its ready point waited for on ``stream``
      (enqueued): work enqueued on ``stream`` afterwards may read the slot.
    - :meth:`tensor` / :meth:`CudaFrame.tensor`: the frame's slot as a tensor.
    - :meth:`release` (``frame``, ``stream``): the next value of its release timeline signaled
      on ``stream`` (after the work that read the slot), then ReleaseFrame with that value.

    One stream for the waits, the reads and the releases (release signals must reach the GPU
    in the order of the calls). With HOST points it raises :class:`HostPointsError` unless
    ``host_fallback``: then acquire enqueues nothing (the ready point is reached) and release
    synchronizes ``stream`` on the host and releases "done now" (0)."""

    def __init__(self, consumer: Any, host_fallback: bool = False):
        from gpushare.stream import Consumer

        if not isinstance(consumer, Consumer):
            raise TypeError(f"expected a gpushare Consumer, not {type(consumer).__name__}")
        self.release_timeline: Optional[CudaSemaphore] = None
        super().__init__(consumer, host_fallback)
        self.consumer = consumer
        self._last_release = 0
        self._held: Dict[int, CudaFrame] = {}
        if self.gpu_points:
            try:
                exported = self._redeem(consumer.attachment.release, "release timeline", word=True)
                self._last_release = int(exported.info.semaphore.value)
                self.release_timeline = import_semaphore(exported)
            except BaseException:
                self.close()
                raise

    @property
    def last_release_value(self) -> int:
        """The last release value signaled (0 before the first GPU-points release)."""
        return self._last_release

    @property
    def held(self) -> List[CudaFrame]:
        """The frames acquired and not released yet."""
        return list(self._held.values())

    def acquire(self, stream: Stream, timeout_ms: int = 10_000) -> CudaFrame:
        """The next frame (FIFO: the oldest not taken; mailbox: the newest): AcquireFrame
        (waiting up to ``timeout_ms`` on the host), then a wait for its ready point enqueued on
        ``stream``. FAILED_PRECONDITION (at ``limit`` frames), DEADLINE_EXCEEDED, ABORTED (the
        stream ended) as :meth:`Consumer.acquire_frame`."""
        if timeout_ms < 0:
            raise ValueError("timeout_ms must be >= 0")
        stream_handle(stream)
        self._lazy_check()
        frame = self.consumer.acquire_frame(timeout_ms)
        index = int(frame.slot)
        waits: List[Tuple[str, int]] = []
        if self.gpu_points and frame.HasField("ready") and frame.ready.value:
            assert self.ready is not None
            if frame.ready.semaphore_id and frame.ready.semaphore_id != self.ready.id:
                raise ValueError(
                    f"frame {frame.sequence}: ready point on {frame.ready.semaphore_id}, not the "
                    f"stream's ready timeline {self.ready.id}"
                )
            self.ready.wait(int(frame.ready.value), stream)
            waits.append((self.ready.id, int(frame.ready.value)))
        held = CudaFrame(self, index, frame, waits)
        self._held[index] = held
        return held

    def release(self, frame: Any, stream: Stream) -> int:
        """Done with ``frame`` (a :class:`CudaFrame` or its slot index) once the work enqueued
        on ``stream`` completes: the next release value is signaled on ``stream``, then
        ReleaseFrame names it. Returns the release value."""
        index = self._index(frame)
        if index not in self._held:
            raise ValueError(f"no frame held in slot {index}: acquire() one first")
        if self.gpu_points:
            assert self.release_timeline is not None
            value = self._last_release + 1
            self.release_timeline.signal(value, stream)
            self._last_release = value
        else:
            self._synchronize(stream)
            value = 0
        del self._held[index]
        return self.consumer.release_frame(index, value)

    def _semaphores(self) -> List[CudaSemaphore]:
        own = [self.release_timeline] if self.release_timeline is not None else []
        return super()._semaphores() + own

    def __enter__(self) -> "CudaConsumer":
        return self

    def __repr__(self) -> str:
        return (f"CudaConsumer(stream={self.consumer.id!r}, slots={self.slot_count}, "
                f"gpu_points={self.gpu_points})")
