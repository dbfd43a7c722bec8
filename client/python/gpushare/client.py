"""Synchronous Python client for the gpushare daemon (gpushared).

Two sockets live in the daemon's runtime directory:

- ``control.sock``: gRPC over a SOCK_STREAM Unix socket (every call in this module),
- ``fd.sock``: SOCK_SEQPACKET; one serialized ``FdRequest`` in, one ``FdReply`` out, the reply
  carrying the exported descriptor as SCM_RIGHTS (:meth:`Client.redeem`).

A :class:`Client` opened with ``session=True`` (the default) holds a client session for as long
as it is open: resources it creates are referenced by that session and freed by the daemon when
the session ends (:meth:`Client.close`, or the process dying), unless they were pinned.
"""

from __future__ import annotations

import array
import os
import socket
import threading
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
    "ProtocolError",
    "Watch",
    "default_runtime_dir",
    "SESSION_HEADER",
]

SESSION_HEADER = "x-gpushare-session"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Most fds accepted in one fd.sock reply (the daemon sends exactly one); more is a protocol error.
MAX_FDS_PER_MESSAGE = 4
# Largest FdReply accepted; a longer one arrives with MSG_TRUNC and is rejected.
MAX_FD_REPLY_BYTES = 16384

_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

ResourceId = Union[str, "gpushare_pb2.Resource", "gpushare_pb2.ResourceRef"]
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

    def list(self) -> List["gpushare_pb2.Resource"]:
        return list(self._call("ListResources", gpushare_pb2.ListResourcesRequest()).resources)

    def describe(self, resource: ResourceId) -> "gpushare_pb2.Resource":
        return self._call("DescribeResource", gpushare_pb2.ResourceRef(id=_rid(resource)))

    def release(self, resource: ResourceId) -> bool:
        """Drops this session's reference (or the pin); True when that freed the resource."""
        return self._call("ReleaseResource", gpushare_pb2.ResourceRef(id=_rid(resource))).freed

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
