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
daemon-executed operations: write, read (as bytes or a numpy array), clear, generate_mips, export.

Frame streams (:meth:`Client.create_stream`, :meth:`Client.attach_producer`,
:meth:`Client.attach_consumer`) hand out a :class:`~gpushare.stream.Producer` or
:class:`~gpushare.stream.Consumer`, whose frame calls go over fd.sock (:mod:`gpushare.stream`).

:class:`HostBuffer` lives in :mod:`gpushare.host_buffer`, :class:`Image` and the image formats in
:mod:`gpushare.image`, the errors and :class:`Exported` in ``gpushare._common``; this module
re-exports them.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import threading
from typing import (
    TYPE_CHECKING,
    Any,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
    overload,
)

import grpc

from gpushare._common import (
    Exported,
    GpushareError,
    Point,
    ProtocolError,
    ResourceId,
    _rid,
    _sync,
    gpushare_pb2,
    gpushare_pb2_grpc,
    signal_path_value,
)
from gpushare.host_buffer import HostBuffer
from gpushare.image import (
    IMAGE_FORMATS,
    USAGE_COLOR_ATTACHMENT,
    USAGE_SAMPLED,
    USAGE_STORAGE,
    Image,
    ImageFormatInfo,
    _image_kind,
    image_format,
)

if TYPE_CHECKING:
    from gpushare.stream import Consumer, Producer

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
# Idle fd.sock connections a Client keeps for fd_wait (each counts against the daemon's
# connection quotas while kept); concurrent waits beyond this many connect afresh.
FD_WAIT_CONNECTIONS_KEPT = 2


def _grant_request(
    resource: ResourceId, uid: Optional[int], gid: Optional[int]
) -> "gpushare_pb2.GrantRequest":
    if (uid is None) == (gid is None):
        raise ValueError("a grant names exactly one of uid= or gid=")
    if uid is not None:
        return gpushare_pb2.GrantRequest(id=_rid(resource), uid=uid)
    return gpushare_pb2.GrantRequest(id=_rid(resource), gid=gid)


def _image_request(
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
) -> "gpushare_pb2.CreateImageRequest":
    return gpushare_pb2.CreateImageRequest(
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


def _create_semaphore_request(
    initial: int, name: str, pin: bool, device: int, word: bool, signal_path: Union[str, int]
) -> "gpushare_pb2.CreateSemaphoreRequest":
    """A CreateSemaphoreRequest (see :meth:`Client.create_semaphore`)."""
    return gpushare_pb2.CreateSemaphoreRequest(
        initial_value=initial,
        device=device,
        name=name,
        pin=pin,
        word=word,
        signal_path=signal_path_value(signal_path),
    )


def _create_stream_request(
    slots: int,
    buffer_size: Optional[int],
    image: Union[Mapping[str, Any], Any, None],
    name: str,
    pin: bool,
    device: int,
    no_producer: bool,
    word: bool = False,
    signal_path: Union[str, int] = "semaphore",
) -> "gpushare_pb2.CreateStreamRequest":
    """A CreateStreamRequest; ``image`` is a ``CreateImageRequest`` or a mapping of
    :meth:`Client.create_image`'s arguments (``{"format": "rgba8unorm", "width": 64,
    "height": 64}``)."""
    if (buffer_size is None) == (image is None):
        raise ValueError("a stream's slots are buffer_size= or image=, exactly one")
    request = gpushare_pb2.CreateStreamRequest(
        device=device,
        name=name,
        pin=pin,
        slots=slots,
        no_producer=no_producer,
        word=word,
        signal_path=signal_path_value(signal_path),
    )
    if buffer_size is not None:
        request.buffer_size = buffer_size
    elif isinstance(image, Mapping):
        request.image.CopyFrom(_image_request(**image))
    else:
        request.image.CopyFrom(image)
    return request


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


class Watch:
    """Iterator over a semaphore's values (``Client.watch``). ``cancel()`` ends it."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> "Watch":
        return self

    def __next__(self) -> int:
        try:
            return int(next(self._call).value)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED and self._call.cancelled():
                raise StopIteration from None
            raise GpushareError.from_rpc_error(e) from None

    def cancel(self) -> None:
        self._call.cancel()

    close = cancel

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()


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
        # Idle fd.sock connections for fd_wait, each with its exchanges complete (in step), and
        # the process they belong to (a forked child must not share them: see _wait_pool).
        self._wait_conns: List[socket.socket] = []
        self._wait_lock = threading.Lock()
        self._wait_pid = os.getpid()
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
        first: List[Any] = []

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
        with self._wait_pool() as pool:
            conns = list(pool)
            pool.clear()
        for conn in conns:
            conn.close()
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- plumbing ----

    def _call(self, method: str, request: Any, timeout: Optional[float] = None) -> Any:
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
        self,
        initial: int = 0,
        name: str = "",
        pin: bool = False,
        device: int = 0,
        word: bool = False,
        signal_path: Union[str, int] = "semaphore",
    ) -> "gpushare_pb2.Resource":
        """A timeline semaphore at ``initial``. ``word``: mirror it in a memop word for CUDA
        users (the CUDA fast path) where the device offers it (``SemaphoreDetails.word`` says
        whether it got one, ``word_unavailable`` why not). ``signal_path``: how this session
        signals it, ``"semaphore"`` (the daemon then bridges its signals into the word) or
        ``"word"`` (through :class:`gpushare.cuda.CudaSemaphore` on the fast path, or through
        the daemon only)."""
        return self._call(
            "CreateSemaphore",
            _create_semaphore_request(initial, name, pin, device, word, signal_path),
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
        request = _image_request(
            format, width, height, depth=depth, kind=kind, mip_levels=mip_levels,
            array_layers=array_layers, usage=usage, device=device, name=name, pin=pin,
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
        return bool(self._call("ReleaseResource", gpushare_pb2.ResourceRef(id=_rid(resource))).freed)

    # ---- access ----

    def grant(
        self, resource: ResourceId, uid: Optional[int] = None, gid: Optional[int] = None
    ) -> "gpushare_pb2.Resource":
        """Owner only: lets ``uid`` (or every process in group ``gid``, primary or supplementary)
        use the resource. PERMISSION_DENIED for a grantee, NOT_FOUND for anybody else."""
        return self._call("Grant", _grant_request(resource, uid, gid))

    def revoke(
        self, resource: ResourceId, uid: Optional[int] = None, gid: Optional[int] = None
    ) -> "gpushare_pb2.Resource":
        """Owner only: takes a grant back (imports already made stay valid)."""
        return self._call("Revoke", _grant_request(resource, uid, gid))

    def create_token(self, resource: ResourceId) -> bytes:
        """Owner only: a capability token (16 bytes). Whoever passes it to :meth:`open` gets a
        reference in its session, and the use of the resource through it."""
        return bytes(self._call("CreateToken", gpushare_pb2.ResourceRef(id=_rid(resource))).token)

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
        signal_path: Union[str, int] = "semaphore",
    ) -> "gpushare_pb2.Resource":
        """Adds a reference of this client's session (it needs one) to a resource named by
        id, by capability ``token``, or by ``owner_uid`` and ``name``. With ``signal``, for a
        semaphore, the session also becomes one of its signalers, signaling by ``signal_path``
        (see :meth:`create_semaphore`). Idempotent per session."""
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
        request.signal_path = signal_path_value(signal_path)
        return self._call("Open", request)

    # ---- semaphores ----

    def signal(self, semaphore: ResourceId, value: int) -> int:
        return int(self._call(
            "Signal", gpushare_pb2.SignalRequest(id=_rid(semaphore), value=value)
        ).value)

    def wait(self, semaphore: ResourceId, value: int, timeout_ms: int = 0) -> int:
        """Waits until the value is >= ``value``; DEADLINE_EXCEEDED after ``timeout_ms``."""
        deadline = None if self.timeout is None else self.timeout + timeout_ms / 1000.0
        return int(self._call(
            "Wait",
            gpushare_pb2.WaitRequest(id=_rid(semaphore), value=value, timeout_ms=timeout_ms),
            timeout=deadline,
        ).value)

    def fd_wait(
        self, semaphore: ResourceId, value: int, timeout_ms: int = 0, spin_us: int = 0
    ) -> int:
        """The low-latency wait: like :meth:`wait`, but on fd.sock, where the daemon thread that
        sees the value sends the reply itself (no HTTP/2, no gRPC runtime on either side).
        ``spin_us``: for that long the daemon reads the counter continuously (capped by its
        ``limits.max_spin_us``; one daemon thread busy meanwhile). Raises GpushareError with the
        daemon's code: DEADLINE_EXCEEDED at the timeout, ABORTED for an abandoned or freed
        semaphore, NOT_FOUND, RESOURCE_EXHAUSTED.

        The connection is kept for the next wait (up to ``FD_WAIT_CONNECTIONS_KEPT`` idle ones
        per Client; concurrent waits from several threads each use their own). One that the
        daemon closed meanwhile (its ``fd_idle_timeout_ms``) is replaced once, transparently:
        the request was never read, and a wait has no effect to repeat. A process forked from
        this one does not share them: its waits connect afresh."""
        if self._closed:
            raise ValueError("gpushare Client is closed")
        request = gpushare_pb2.FdRequest(
            wait=gpushare_pb2.FdWait(
                id=_rid(semaphore), value=value, timeout_ms=timeout_ms, spin_us=spin_us
            )
        ).SerializeToString()
        # The daemon answers at the timeout; the socket's own timeout only catches a daemon
        # that does not answer at all.
        timeout = timeout_ms / 1000.0 + 10.0
        with self._wait_pool() as pool:
            kept = pool.pop() if pool else None
        sock, reply = None, None
        if kept is not None:
            try:
                reply = _exchange(kept, request, timeout, self.fd_path)
                sock = kept
            except BaseException as e:
                kept.close()
                if not isinstance(e, _Stale):
                    raise
        if sock is None:
            sock = self._fd_connect(timeout)
            try:
                reply = _exchange(sock, request, timeout, self.fd_path)
            except BaseException as e:
                sock.close()
                if isinstance(e, _Stale):
                    raise _no_reply(self.fd_path) from None
                raise
        # The exchange completed: the connection is in step and may serve the next wait, even
        # when the reply is the daemon's error (a deadline, say).
        with self._wait_pool() as pool:
            if not self._closed and len(pool) < FD_WAIT_CONNECTIONS_KEPT:
                pool.append(sock)
                sock = None
        if sock is not None:
            sock.close()
        assert reply is not None
        return int(_decode_fd_reply(*reply, want="waited"))

    def value(self, semaphore: ResourceId) -> int:
        return int(self._call("GetValue", gpushare_pb2.ResourceRef(id=_rid(semaphore))).value)

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
        return bytes(self._call(
            "Read",
            gpushare_pb2.ReadRequest(
                buffer_id=_rid(buffer), offset=offset, length=length,
                sync=_sync(wait, signal, timeout_ms),
            ),
        ).data)

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

    # ---- frame streams ----

    @overload
    def create_stream(
        self,
        slots: int,
        buffer_size: Optional[int] = None,
        image: Union[Mapping[str, Any], Any, None] = None,
        name: str = "",
        pin: bool = False,
        device: int = 0,
        no_producer: Literal[False] = False,
        word: bool = False,
        signal_path: Union[str, int] = "semaphore",
    ) -> "Producer": ...

    @overload
    def create_stream(
        self,
        slots: int,
        buffer_size: Optional[int] = None,
        image: Union[Mapping[str, Any], Any, None] = None,
        name: str = "",
        pin: bool = False,
        device: int = 0,
        *,
        no_producer: Literal[True],
        word: bool = False,
        signal_path: Union[str, int] = "semaphore",
    ) -> "gpushare_pb2.StreamInfo": ...

    @overload
    def create_stream(
        self,
        slots: int,
        buffer_size: Optional[int] = None,
        image: Union[Mapping[str, Any], Any, None] = None,
        name: str = "",
        pin: bool = False,
        device: int = 0,
        no_producer: bool = False,
        word: bool = False,
        signal_path: Union[str, int] = "semaphore",
    ) -> Union["Producer", "gpushare_pb2.StreamInfo"]: ...

    def create_stream(
        self,
        slots: int,
        buffer_size: Optional[int] = None,
        image: Union[Mapping[str, Any], Any, None] = None,
        name: str = "",
        pin: bool = False,
        device: int = 0,
        no_producer: bool = False,
        word: bool = False,
        signal_path: Union[str, int] = "semaphore",
    ) -> Union["Producer", "gpushare_pb2.StreamInfo"]:
        """Creates a frame stream of ``slots`` (2 to 64) alike slots: buffers of ``buffer_size``
        bytes, or images (``image``: a ``CreateImageRequest``, or a mapping of
        :meth:`create_image`'s arguments such as ``{"format": "rgba8unorm", "width": 64,
        "height": 64}``). This client's session is its producer: returns the
        :class:`~gpushare.stream.Producer`. With ``no_producer``, another session attaches as
        the producer (:meth:`attach_producer`) and this returns the ``StreamInfo``.

        INVALID_ARGUMENT: slots outside 2..=64, a slot spec the daemon would refuse;
        RESOURCE_EXHAUSTED: a quota or GPU memory; FAILED_PRECONDITION: no session (``pin``
        alone needs ``no_producer``); ALREADY_EXISTS: the name is taken.

        ``word``: the timelines get memop words (the CUDA fast path, GPU points only) where the
        device offers it; ``signal_path``: how this session signals the ready timeline (see
        :meth:`create_semaphore`)."""
        from gpushare.stream import Producer

        request = _create_stream_request(
            slots, buffer_size, image, name, pin, device, no_producer, word, signal_path
        )
        attachment = self._call("CreateStream", request)
        if no_producer:
            info: Any = attachment.stream
            return info
        return Producer(self, attachment)

    def attach_producer(
        self, stream: ResourceId, signal_path: Union[str, int] = "semaphore"
    ) -> "Producer":
        """Attaches this session as the producer of a stream created with ``no_producer``.
        NOT_FOUND; FAILED_PRECONDITION (it has a producer, or no session); ABORTED (ended)."""
        from gpushare.stream import Producer

        attachment = self._call(
            "AttachProducer",
            gpushare_pb2.AttachProducerRequest(
                stream_id=_rid(stream), signal_path=signal_path_value(signal_path)
            ),
        )
        return Producer(self, attachment)

    def attach_consumer(
        self,
        stream: ResourceId,
        mode: Union[str, int] = "fifo",
        limit: int = 1,
        signal_path: Union[str, int] = "semaphore",
    ) -> "Consumer":
        """Attaches this session as a consumer of ``stream`` in ``mode`` (``"fifo"``: every
        frame, in order, and the producer waits for it; ``"mailbox"``: the newest frame only),
        holding at most ``limit`` frames at once. It receives the frames presented from now on.
        INVALID_ARGUMENT: limit 0; NOT_FOUND; FAILED_PRECONDITION (no session); ABORTED (ended);
        RESOURCE_EXHAUSTED (its release timeline is over the semaphore quota)."""
        from gpushare.stream import Consumer, delivery_mode

        attachment = self._call(
            "AttachConsumer",
            gpushare_pb2.AttachConsumerRequest(
                stream_id=_rid(stream),
                mode=delivery_mode(mode),
                limit=limit,
                signal_path=signal_path_value(signal_path),
            ),
        )
        return Consumer(self, attachment)

    def describe_stream(self, stream: ResourceId) -> "gpushare_pb2.StreamInfo":
        """The stream now: slots and their states, roles, counters. NOT_FOUND."""
        return self._call("DescribeStream", gpushare_pb2.ResourceRef(id=_rid(stream)))

    def streams(self) -> List["gpushare_pb2.StreamInfo"]:
        """Every stream this caller may see, oldest first."""
        return list(self._call("ListStreams", gpushare_pb2.ListStreamsRequest()).streams)

    # ---- descriptors ----

    def export_ticket(self, resource: ResourceId) -> "gpushare_pb2.ExportResponse":
        """The Export RPC alone: a one-time ticket (and its TTL) to pass to :meth:`redeem`."""
        return self._call("Export", gpushare_pb2.ResourceRef(id=_rid(resource)))

    def export(
        self, resource: ResourceId, timeout: Optional[float] = 10.0, word: bool = False
    ) -> Exported:
        """The resource's descriptor and its import metadata, for this process: one request on
        fd.sock (no ticket). To hand a descriptor to another process, pass it a ticket from
        :meth:`export_ticket`, which that process redeems with :meth:`redeem`. ``word``: for a
        semaphore with a memop word, the word's buffer too (``Exported.word_fd``), which
        :func:`gpushare.cuda.import_semaphore` uses for the CUDA fast path."""
        request = gpushare_pb2.FdRequest(export=_rid(resource), word=word).SerializeToString()
        return self._fd_request(request, timeout)

    def redeem(
        self, ticket: bytes, timeout: Optional[float] = 10.0, word: bool = False
    ) -> Exported:
        """Redeems an Export ticket on fd.sock (``word``: as in :meth:`export`). Raises
        GpushareError with the daemon's code."""
        request = gpushare_pb2.FdRequest(redeem=bytes(ticket), word=word).SerializeToString()
        return self._fd_request(request, timeout)

    @contextlib.contextmanager
    def _wait_pool(self) -> Iterator[List[socket.socket]]:
        """The kept fd_wait connections, locked. In a child forked since they were kept, they
        are the parent's too: a reply could reach the wrong process. The child closes its copies
        (the parent's stay open) and starts with none, under a new lock (the old one may have
        been held by a parent thread at the fork)."""
        if self._wait_pid != os.getpid():
            inherited, self._wait_conns = self._wait_conns, []
            self._wait_lock = threading.Lock()
            self._wait_pid = os.getpid()
            for conn in inherited:
                conn.close()
        with self._wait_lock:
            yield self._wait_conns

    def _fd_request(self, request: bytes, timeout: Optional[float]) -> Exported:
        """One export or redeem on a fresh fd.sock connection."""
        exported: Exported = _decode_fd_reply(*self._fd_exchange(request, timeout))
        return exported

    def _fd_exchange(self, request: bytes, timeout: Optional[float]) -> Tuple[bytes, Any, int]:
        """One request/reply on a fresh fd.sock connection: recvmsg's data, ancdata, flags."""
        with self._fd_connect(timeout) as sock:
            try:
                return _exchange(sock, request, timeout, self.fd_path)
            except _Stale:
                raise _no_reply(self.fd_path) from None

    def _fd_connect(self, timeout: Optional[float]) -> socket.socket:
        """A new fd.sock connection, with ``timeout`` on each of its socket operations."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.settimeout(timeout)
            sock.connect(self.fd_path)
        except BaseException as e:
            sock.close()
            if isinstance(e, OSError):
                raise GpushareError(
                    grpc.StatusCode.UNAVAILABLE, f"fd.sock {self.fd_path}: {e}"
                ) from None
            raise
        return sock


def _no_reply(path: str) -> GpushareError:
    return GpushareError(grpc.StatusCode.UNAVAILABLE, f"fd.sock {path} closed without a reply")


class _Stale(Exception):
    """The daemon closed an fd.sock connection before it answered: the request went unread."""


def _exchange(
    sock: socket.socket,
    request: Optional[bytes],
    timeout: Optional[float],
    path: str,
    sent: Optional[List[bool]] = None,
) -> Tuple[bytes, Any, int]:
    """Sends one request on ``sock`` and receives its reply: recvmsg's data, ancdata, flags.
    Raises _Stale when the daemon had closed the connection (the send fails with a broken pipe
    or a reset, or the receive sees the hang-up), GpushareError for a timeout or another socket
    error. ``request`` None: the reply of a request sent earlier; ``sent`` gets True appended
    once the request is out."""
    sock.settimeout(timeout)
    try:
        if request is not None:
            sock.sendall(request)
            if sent is not None:
                sent.append(True)
        data, ancdata, flags, _ = sock.recvmsg(
            MAX_FD_REPLY_BYTES,
            socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array.array("i").itemsize),
            socket.MSG_CMSG_CLOEXEC,
        )
    except socket.timeout:
        raise GpushareError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no reply on {path}") from None
    except (BrokenPipeError, ConnectionResetError):
        raise _Stale() from None
    except OSError as e:
        raise GpushareError(grpc.StatusCode.UNAVAILABLE, f"fd.sock {path}: {e}") from None
    if not data and not ancdata:
        raise _Stale()
    return data, ancdata, flags


def _decode_fd_reply(data: bytes, ancdata: Any, flags: int, want: str = "exported") -> Any:
    """Turns one recvmsg result into an Exported (``want="exported"``), a wait's value
    (``want="waited"``) or a frame call's StreamReply (``want="stream"``), closing every received fd that is not returned, on every path."""
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
            raise ProtocolError("empty FdReply")
        try:
            reply = gpushare_pb2.FdReply.FromString(data)
        except Exception as e:  # google.protobuf.message.DecodeError
            raise ProtocolError(f"undecodable FdReply: {e}") from None
        which = reply.WhichOneof("reply")
        if which == "error":
            raise GpushareError.from_code_value(reply.error.code, reply.error.message)
        if which != want:
            raise ProtocolError(f"FdReply has neither `{want}` nor `error`")
        if want in ("waited", "stream"):
            if fds:
                raise ProtocolError(f"a {want} reply carried {len(fds)} descriptors")
            return reply.waited.value if want == "waited" else reply.stream
        # A semaphore's word buffer comes second, when its metadata says it is there.
        with_word = reply.exported.WhichOneof("details") == "semaphore" and (
            reply.exported.semaphore.HasField("word")
        )
        expected = 2 if with_word else 1
        if len(fds) != expected:
            raise ProtocolError(f"expected {expected} descriptor(s), got {len(fds)}")
        word = fds.pop() if with_word else -1
        fd = fds.pop()
        return Exported(fd, reply.exported, word)
    finally:
        _close_fds(fds)
