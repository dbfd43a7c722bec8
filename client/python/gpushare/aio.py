"""asyncio client for gpushared: :class:`AsyncClient`, on ``grpc.aio``, with the calls of
:class:`gpushare.Client` as coroutines. fd.sock exchanges (export, redeem, fd_wait) run on the
event loop too (a non-blocking socket, ``loop.add_reader``): nothing blocks the loop.

    async with gpushare.AsyncClient(client_name="svc") as c:
        buf = await c.create_buffer(1 << 20)
        with await c.export(buf) as exp: ...
        value = await c.fd_wait(sem, 3, timeout_ms=1000)

Images: :meth:`AsyncClient.create_image` returns the ``Resource``; the image operations
(``write_image`` ...) are :meth:`AsyncClient.call` with the proto requests.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
from typing import Any, AsyncIterator, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union, overload

import grpc
import grpc.aio

from gpushare._common import (
    Exported,
    GpushareError,
    Point,
    ResourceId,
    _rid,
    _sync,
    gpushare_pb2,
    gpushare_pb2_grpc,
    signal_path_value,
)
from gpushare.client import (
    MAX_FD_REPLY_BYTES,
    MAX_FDS_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    SESSION_HEADER,
    _create_semaphore_request,
    _create_stream_request,
    _decode_fd_reply,
    _grant_request,
    default_runtime_dir,
)
from gpushare.host_buffer import HostBuffer
from gpushare.image import _image_kind, image_format
from gpushare.stream import (
    REPLY_GRACE_S,
    _answer,
    _slot_index,
    _timeout_ms,
    delivery_mode,
)

__all__ = ["AsyncClient", "AsyncConsumer", "AsyncProducer"]


class AsyncClient:
    """An asyncio gpushare client. Open it with ``async with AsyncClient(...) as c`` or
    ``c = await AsyncClient(...).open()``; :meth:`close` ends its session. Arguments as for
    :class:`gpushare.Client`. Create it inside the event loop it is used on."""

    def __init__(
        self,
        runtime_dir: Optional[str] = None,
        session: bool = True,
        client_name: str = "python-aio",
        timeout: Optional[float] = 60.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.runtime_dir = runtime_dir if runtime_dir is not None else default_runtime_dir()
        self.control_path = os.path.join(self.runtime_dir, "control.sock")
        self.fd_path = os.path.join(self.runtime_dir, "fd.sock")
        self.timeout = timeout
        self.session_id: Optional[str] = None
        self._want_session = session
        self._client_name = client_name
        self._connect_timeout = connect_timeout
        self._metadata: Tuple[Tuple[str, str], ...] = ()
        self._session_call: Any = None
        self._session_task: Optional["asyncio.Task[None]"] = None
        self._session_error: Optional[GpushareError] = None
        self._channel: Any = None
        self._stub: Any = None
        self._closed = False

    async def open(self) -> "AsyncClient":
        """Connects (and opens the session when asked). Idempotent."""
        if self._channel is not None:
            return self
        self._channel = grpc.aio.insecure_channel(
            "unix:" + self.control_path,
            options=[
                ("grpc.default_authority", "localhost"),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = gpushare_pb2_grpc.GpuShareStub(self._channel)
        if self._want_session:
            try:
                await self._open_session()
            except BaseException:
                await self.close()
                raise
        return self

    async def _open_session(self) -> None:
        call = self._stub.Session(gpushare_pb2.SessionRequest(client_name=self._client_name))
        self._session_call = call
        try:
            first = await asyncio.wait_for(call.read(), self._connect_timeout)
        except asyncio.TimeoutError:
            raise GpushareError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no session from the daemon at {self.control_path} within {self._connect_timeout} s",
            ) from None
        except grpc.RpcError as e:
            raise GpushareError.from_rpc_error(e) from None
        if first is grpc.aio.EOF:
            raise GpushareError(grpc.StatusCode.INTERNAL, "Session stream ended before it started")
        if first.WhichOneof("event") != "started" or not first.started.session_id:
            raise GpushareError(grpc.StatusCode.INTERNAL, "Session's first event is not `started`")
        self.session_id = first.started.session_id
        self._metadata = ((SESSION_HEADER, self.session_id),)
        self._session_task = asyncio.ensure_future(self._drain(call))

    async def _drain(self, call: Any) -> None:
        try:
            while (await call.read()) is not grpc.aio.EOF:
                pass
            self._session_error = GpushareError(grpc.StatusCode.UNAVAILABLE, "session stream ended")
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as e:
            self._session_error = GpushareError.from_rpc_error(e)

    @property
    def session_active(self) -> bool:
        return self._session_call is not None and self._session_error is None and not self._closed

    async def close(self) -> None:
        """Ends the session and closes the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._session_call is not None:
            self._session_call.cancel()
        if self._session_task is not None:
            self._session_task.cancel()
            try:
                await self._session_task
            except (asyncio.CancelledError, Exception):
                pass
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ---- plumbing ----

    async def call(self, method: str, request: Any, timeout: Optional[float] = None) -> Any:
        """Any unary RPC by its proto name (``"WriteImage"``), with this client's session."""
        if self._closed or self._stub is None:
            raise ValueError("gpushare AsyncClient is closed or not open")
        try:
            return await getattr(self._stub, method)(
                request,
                metadata=self._metadata,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except grpc.RpcError as e:
            raise GpushareError.from_rpc_error(e) from None

    # ---- info and resources ----

    async def info(self) -> Any:
        return await self.call("GetInfo", gpushare_pb2.GetInfoRequest())

    async def create_buffer(self, size: int, name: str = "", pin: bool = False, device: int = 0) -> Any:
        return await self.call(
            "CreateBuffer",
            gpushare_pb2.CreateBufferRequest(size=size, device=device, name=name, pin=pin),
        )

    async def create_semaphore(
        self,
        initial: int = 0,
        name: str = "",
        pin: bool = False,
        device: int = 0,
        word: bool = False,
        signal_path: Union[str, int] = "semaphore",
    ) -> Any:
        """:meth:`Client.create_semaphore`."""
        return await self.call(
            "CreateSemaphore",
            _create_semaphore_request(initial, name, pin, device, word, signal_path),
        )

    async def create_host_buffer(self, size: int, name: str = "", pin: bool = False) -> HostBuffer:
        """As :meth:`Client.create_host_buffer`; the HostBuffer has no client (release it with
        :meth:`release`)."""
        resource = await self.call(
            "CreateHostBuffer", gpushare_pb2.CreateHostBufferRequest(size=size, name=name, pin=pin)
        )
        try:
            return HostBuffer.map(None, await self.export(resource.id))
        except BaseException:
            for _ in range(2):
                try:
                    if await self.release(resource.id):
                        break
                except Exception:
                    break
            raise

    async def create_image(
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
    ) -> Any:
        return await self.call(
            "CreateImage",
            gpushare_pb2.CreateImageRequest(
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
            ),
        )

    async def list(self) -> List[Any]:
        return list((await self.call("ListResources", gpushare_pb2.ListResourcesRequest())).resources)

    async def describe(self, resource: ResourceId) -> Any:
        return await self.call("DescribeResource", gpushare_pb2.ResourceRef(id=_rid(resource)))

    async def release(self, resource: ResourceId) -> bool:
        reply = await self.call("ReleaseResource", gpushare_pb2.ResourceRef(id=_rid(resource)))
        return bool(reply.freed)

    async def grant(self, resource: ResourceId, uid: Optional[int] = None, gid: Optional[int] = None) -> Any:
        return await self.call("Grant", _grant_request(resource, uid, gid))

    async def revoke(self, resource: ResourceId, uid: Optional[int] = None, gid: Optional[int] = None) -> Any:
        return await self.call("Revoke", _grant_request(resource, uid, gid))

    async def create_token(self, resource: ResourceId) -> bytes:
        reply = await self.call("CreateToken", gpushare_pb2.ResourceRef(id=_rid(resource)))
        return bytes(reply.token)

    async def revoke_tokens(self, resource: ResourceId) -> Any:
        return await self.call("RevokeTokens", gpushare_pb2.ResourceRef(id=_rid(resource)))

    async def open_resource(
        self,
        resource: Optional[ResourceId] = None,
        *,
        token: Optional[bytes] = None,
        owner_uid: Optional[int] = None,
        name: Optional[str] = None,
        signal: bool = False,
    ) -> Any:
        """:meth:`Client.open` (named so since :meth:`open` opens the connection)."""
        given = [resource is not None, token is not None, name is not None]
        if sum(given) != 1:
            raise ValueError("open_resource() takes exactly one of: a resource, token=, or owner_uid= and name=")
        if resource is not None:
            request = gpushare_pb2.OpenRequest(id=_rid(resource), signal=signal)
        elif token is not None:
            request = gpushare_pb2.OpenRequest(token=bytes(token), signal=signal)
        else:
            if owner_uid is None:
                raise ValueError("open_resource(name=...) needs owner_uid=")
            request = gpushare_pb2.OpenRequest(
                named=gpushare_pb2.NamedResource(owner_uid=owner_uid, name=name), signal=signal
            )
        return await self.call("Open", request)

    # ---- semaphores ----

    async def signal(self, semaphore: ResourceId, value: int) -> int:
        reply = await self.call("Signal", gpushare_pb2.SignalRequest(id=_rid(semaphore), value=value))
        return int(reply.value)

    async def wait(self, semaphore: ResourceId, value: int, timeout_ms: int = 0) -> int:
        deadline = None if self.timeout is None else self.timeout + timeout_ms / 1000.0
        reply = await self.call(
            "Wait",
            gpushare_pb2.WaitRequest(id=_rid(semaphore), value=value, timeout_ms=timeout_ms),
            timeout=deadline,
        )
        return int(reply.value)

    async def fd_wait(
        self, semaphore: ResourceId, value: int, timeout_ms: int = 0, spin_us: int = 0
    ) -> int:
        """The fd.sock wait (:meth:`Client.fd_wait`), awaited on the event loop; one connection
        per wait."""
        request = gpushare_pb2.FdRequest(
            wait=gpushare_pb2.FdWait(
                id=_rid(semaphore), value=value, timeout_ms=timeout_ms, spin_us=spin_us
            )
        ).SerializeToString()
        reply = await self._fd_exchange(request, timeout_ms / 1000.0 + 10.0)
        return int(_decode_fd_reply(*reply, want="waited"))

    async def value(self, semaphore: ResourceId) -> int:
        reply = await self.call("GetValue", gpushare_pb2.ResourceRef(id=_rid(semaphore)))
        return int(reply.value)

    async def watch(self, semaphore: ResourceId) -> AsyncIterator[int]:
        """Current value first, then each change (an async iterator; break out to stop)."""
        if self._closed or self._stub is None:
            raise ValueError("gpushare AsyncClient is closed or not open")
        call = self._stub.Watch(gpushare_pb2.ResourceRef(id=_rid(semaphore)), metadata=self._metadata)
        try:
            while True:
                try:
                    event = await call.read()
                except grpc.RpcError as e:
                    raise GpushareError.from_rpc_error(e) from None
                if event is grpc.aio.EOF:
                    return
                yield int(event.value)
        finally:
            call.cancel()

    # ---- daemon-executed operations ----

    async def write(
        self, buffer: ResourceId, offset: int, data: bytes,
        wait: Sequence[Point] = (), signal: Sequence[Point] = (), timeout_ms: int = 0,
    ) -> None:
        await self.call("Write", gpushare_pb2.WriteRequest(
            buffer_id=_rid(buffer), offset=offset, data=bytes(data),
            sync=_sync(wait, signal, timeout_ms)))

    async def read(
        self, buffer: ResourceId, offset: int, length: int,
        wait: Sequence[Point] = (), signal: Sequence[Point] = (), timeout_ms: int = 0,
    ) -> bytes:
        reply = await self.call("Read", gpushare_pb2.ReadRequest(
            buffer_id=_rid(buffer), offset=offset, length=length,
            sync=_sync(wait, signal, timeout_ms)))
        return bytes(reply.data)

    async def write_from_host(
        self, buffer: ResourceId, offset: int, host: ResourceId, host_offset: int, length: int,
        wait: Sequence[Point] = (), signal: Sequence[Point] = (), timeout_ms: int = 0,
    ) -> None:
        await self.call("Write", gpushare_pb2.WriteRequest(
            buffer_id=_rid(buffer), offset=offset,
            from_host=gpushare_pb2.HostRange(host_buffer_id=_rid(host), offset=host_offset, length=length),
            sync=_sync(wait, signal, timeout_ms)))

    async def read_into_host(
        self, buffer: ResourceId, offset: int, length: int, host: ResourceId, host_offset: int,
        wait: Sequence[Point] = (), signal: Sequence[Point] = (), timeout_ms: int = 0,
    ) -> None:
        await self.call("Read", gpushare_pb2.ReadRequest(
            buffer_id=_rid(buffer), offset=offset, length=length,
            to_host=gpushare_pb2.HostRange(host_buffer_id=_rid(host), offset=host_offset, length=length),
            sync=_sync(wait, signal, timeout_ms)))

    async def fill(
        self, buffer: ResourceId, offset: int, length: int, value: int,
        wait: Sequence[Point] = (), signal: Sequence[Point] = (), timeout_ms: int = 0,
    ) -> None:
        await self.call("Fill", gpushare_pb2.FillRequest(
            buffer_id=_rid(buffer), offset=offset, length=length, value=value,
            sync=_sync(wait, signal, timeout_ms)))

    async def copy(
        self, src: ResourceId, src_offset: int, dst: ResourceId, dst_offset: int, length: int,
        wait: Sequence[Point] = (), signal: Sequence[Point] = (), timeout_ms: int = 0,
    ) -> None:
        await self.call("Copy", gpushare_pb2.CopyRequest(
            src_buffer_id=_rid(src), src_offset=src_offset,
            dst_buffer_id=_rid(dst), dst_offset=dst_offset, length=length,
            sync=_sync(wait, signal, timeout_ms)))

    # ---- frame streams ----

    @overload
    async def create_stream(
        self, slots: int, buffer_size: Optional[int] = None,
        image: Union[Mapping[str, Any], Any, None] = None, name: str = "", pin: bool = False,
        device: int = 0, no_producer: Literal[False] = False, word: bool = False,
        signal_path: Union[str, int] = "semaphore",
    ) -> "AsyncProducer": ...

    @overload
    async def create_stream(
        self, slots: int, buffer_size: Optional[int] = None,
        image: Union[Mapping[str, Any], Any, None] = None, name: str = "", pin: bool = False,
        device: int = 0, *, no_producer: Literal[True], word: bool = False,
        signal_path: Union[str, int] = "semaphore",
    ) -> Any: ...

    @overload
    async def create_stream(
        self, slots: int, buffer_size: Optional[int] = None,
        image: Union[Mapping[str, Any], Any, None] = None, name: str = "", pin: bool = False,
        device: int = 0, no_producer: bool = False, word: bool = False,
        signal_path: Union[str, int] = "semaphore",
    ) -> Union["AsyncProducer", Any]: ...

    async def create_stream(
        self, slots: int, buffer_size: Optional[int] = None,
        image: Union[Mapping[str, Any], Any, None] = None, name: str = "", pin: bool = False,
        device: int = 0, no_producer: bool = False, word: bool = False,
        signal_path: Union[str, int] = "semaphore",
    ) -> Union["AsyncProducer", Any]:
        """:meth:`Client.create_stream`: an :class:`AsyncProducer` (``no_producer``: the
        ``StreamInfo``)."""
        request = _create_stream_request(
            slots, buffer_size, image, name, pin, device, no_producer, word, signal_path
        )
        attachment = await self.call("CreateStream", request)
        if no_producer:
            return attachment.stream
        return AsyncProducer(self, attachment)

    async def attach_producer(
        self, stream: ResourceId, signal_path: Union[str, int] = "semaphore"
    ) -> "AsyncProducer":
        """:meth:`Client.attach_producer`."""
        attachment = await self.call(
            "AttachProducer",
            gpushare_pb2.AttachProducerRequest(
                stream_id=_rid(stream), signal_path=signal_path_value(signal_path)
            ),
        )
        return AsyncProducer(self, attachment)

    async def attach_consumer(
        self,
        stream: ResourceId,
        mode: Union[str, int] = "fifo",
        limit: int = 1,
        signal_path: Union[str, int] = "semaphore",
    ) -> "AsyncConsumer":
        """:meth:`Client.attach_consumer`."""
        attachment = await self.call(
            "AttachConsumer",
            gpushare_pb2.AttachConsumerRequest(
                stream_id=_rid(stream),
                mode=delivery_mode(mode),
                limit=limit,
                signal_path=signal_path_value(signal_path),
            ),
        )
        return AsyncConsumer(self, attachment)

    async def describe_stream(self, stream: ResourceId) -> Any:
        return await self.call("DescribeStream", gpushare_pb2.ResourceRef(id=_rid(stream)))

    async def streams(self) -> List[Any]:
        return list((await self.call("ListStreams", gpushare_pb2.ListStreamsRequest())).streams)

    # ---- descriptors ----

    async def export_ticket(self, resource: ResourceId) -> Any:
        return await self.call("Export", gpushare_pb2.ResourceRef(id=_rid(resource)))

    async def export(
        self, resource: ResourceId, timeout: Optional[float] = 10.0, word: bool = False
    ) -> Exported:
        request = gpushare_pb2.FdRequest(export=_rid(resource), word=word).SerializeToString()
        result: Exported = _decode_fd_reply(*await self._fd_exchange(request, timeout))
        return result

    async def redeem(
        self, ticket: bytes, timeout: Optional[float] = 10.0, word: bool = False
    ) -> Exported:
        request = gpushare_pb2.FdRequest(redeem=bytes(ticket), word=word).SerializeToString()
        result: Exported = _decode_fd_reply(*await self._fd_exchange(request, timeout))
        return result

    async def _fd_exchange(self, request: bytes, timeout: Optional[float]) -> Tuple[bytes, Any, int]:
        if self._closed:
            raise ValueError("gpushare AsyncClient is closed")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            try:
                return await asyncio.wait_for(_exchange(sock, self.fd_path, request), timeout)
            except asyncio.TimeoutError:
                raise GpushareError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"no reply on {self.fd_path}"
                ) from None
            except OSError as e:
                raise GpushareError(grpc.StatusCode.UNAVAILABLE, f"fd.sock {self.fd_path}: {e}") from None
        finally:
            sock.close()  # descriptors never received die with it


def _retrieve(task: "asyncio.Future[Any]") -> None:
    """Marks a dropped task's outcome seen (no "exception was never retrieved" warning)."""
    if not task.cancelled():
        task.exception()


class _Closed(GpushareError):
    """The daemon closed the connection without a reply."""


async def _exchange(sock: socket.socket, path: str, request: bytes) -> Tuple[bytes, Any, int]:
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, path)
    return await _send_recv(sock, path, request)


async def _send_recv(sock: socket.socket, path: str, request: bytes) -> Tuple[bytes, Any, int]:
    """One request and its reply on a connected non-blocking socket."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, request)
    ancbufsize = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array.array("i").itemsize)
    while True:
        try:
            data, ancdata, flags, _ = sock.recvmsg(
                MAX_FD_REPLY_BYTES, ancbufsize, socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            ready: "asyncio.Future[None]" = loop.create_future()

            def wake() -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_reader(sock.fileno(), wake)
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
            continue
        if not data and not ancdata:
            raise _Closed(grpc.StatusCode.UNAVAILABLE, f"fd.sock {path} closed without a reply")
        return data, ancdata, flags


class _AsyncRole:
    """An attachment of an :class:`AsyncClient`: its handle and kept fd.sock connection (a
    non-blocking socket served on the event loop; a call made while another of the role is in
    flight uses a connection of its own)."""

    def __init__(self, client: AsyncClient, attachment: Any) -> None:
        if not attachment.handle:
            raise GpushareError(grpc.StatusCode.INTERNAL, "StreamAttachment has no handle")
        self.client = client
        self.attachment = attachment
        self.detached: Optional[Any] = None
        self._sock: Optional[socket.socket] = None
        # A cancelled acquire's exchange, by call kind: its answer is the next call's.
        self._pending: Dict[str, "asyncio.Future[Any]"] = {}

    async def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self.client.fd_path)
        except BaseException as e:
            sock.close()
            if isinstance(e, OSError):
                raise GpushareError(
                    grpc.StatusCode.UNAVAILABLE, f"fd.sock {self.client.fd_path}: {e}"
                ) from None
            raise
        return sock

    async def _once(self, sock: socket.socket, data: bytes, timeout: float) -> Tuple[bytes, Any, int]:
        try:
            return await asyncio.wait_for(_send_recv(sock, self.client.fd_path, data), timeout)
        except asyncio.TimeoutError:
            raise GpushareError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no reply on {self.client.fd_path}"
            ) from None

    async def call(self, which: str, request: Any, timeout: float) -> Any:
        """One StreamCall; its StreamReply's answer.

        The exchange runs as a task of its own, shielded from the caller's cancellation: the
        daemon hands a frame (or a slot) to an acquire even when the connection that asked for it
        closed meanwhile, so a cancelled acquire (``asyncio.wait_for``, a task cancelled) is not
        abandoned. Its reply is kept and is the answer to the role's next call of that kind
        (which waits for it first); a present's or release's reply is dropped."""
        if self.client._closed:
            raise ValueError("gpushare AsyncClient is closed")
        data = gpushare_pb2.FdRequest(
            stream=gpushare_pb2.StreamCall(**{which: request})
        ).SerializeToString()
        pending = self._pending.pop(which, None)
        if pending is not None:
            try:
                earlier = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    self._pending[which] = pending  # still the next call's
                raise
            except Exception:
                earlier = None  # the cancelled call's refusal (a deadline, say): not this call's
            if earlier is not None:
                return earlier
        task = asyncio.ensure_future(self._roundtrip(data, timeout))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                if which in ("acquire_slot", "acquire_frame"):
                    self._pending[which] = task
                else:
                    task.add_done_callback(_retrieve)
            raise

    async def _roundtrip(self, data: bytes, timeout: float) -> Any:
        # The kept connection, when no other call of this role is using it; else a new one.
        kept, self._sock = self._sock, None
        reply = None
        sock: Optional[socket.socket] = None
        if kept is not None:
            try:
                reply = await self._once(kept, data, timeout)
                sock = kept
            except BaseException as e:
                # Cancelled or timed out mid-exchange: the connection is out of step.
                kept.close()
                # Closed by the daemon while idle: the request went unread; sent again once.
                if not isinstance(e, (_Closed, BrokenPipeError, ConnectionResetError)):
                    raise
        if sock is None:
            sock = await self._connect()
            try:
                reply = await self._once(sock, data, timeout)
            except BaseException as e:
                sock.close()
                if isinstance(e, OSError):
                    raise GpushareError(
                        grpc.StatusCode.UNAVAILABLE, f"fd.sock {self.client.fd_path}: {e}"
                    ) from None
                raise
        if self._sock is None and self.detached is None:
            self._sock = sock
        else:
            sock.close()
        assert reply is not None
        return _decode_fd_reply(*reply, want="stream")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    async def detach(self) -> Any:
        if self.detached is None:
            self.detached = await self.client.call(
                "Detach", gpushare_pb2.StreamHandle(handle=self.attachment.handle)
            )
            self.close()
        return self.detached

    async def redeem(self, part: Any) -> Optional[Exported]:
        if part is None or not part.ticket:
            return None
        return await self.client.redeem(part.ticket)


class _AsyncRoleBase:
    _role: _AsyncRole

    @property
    def info(self) -> Any:
        """The stream as it was at attach."""
        return self._role.attachment.stream

    @property
    def id(self) -> str:
        return str(self._role.attachment.stream.id)

    @property
    def attachment(self) -> Any:
        return self._role.attachment

    @property
    def handle(self) -> str:
        return str(self._role.attachment.handle)

    @property
    def gpu_points(self) -> bool:
        return bool(self._role.attachment.stream.points == gpushare_pb2.STREAM_POINTS_GPU)

    @property
    def slot_ids(self) -> List[str]:
        return [str(p.resource_id) for p in self._role.attachment.slots]

    @property
    def detached(self) -> bool:
        return self._role.detached is not None

    async def import_slots(self) -> List[Exported]:
        out: List[Exported] = []
        try:
            for part in self._role.attachment.slots:
                exported = await self._role.redeem(part)
                if exported is None:
                    raise GpushareError(grpc.StatusCode.INTERNAL, "a slot's StreamPart has no ticket")
                out.append(exported)
        except BaseException:
            for e in out:
                e.close()
            raise
        return out

    async def import_ready(self) -> Optional[Exported]:
        a = self._role.attachment
        return await self._role.redeem(a.ready if a.HasField("ready") else None)

    async def detach(self) -> Any:
        return await self._role.detach()

    def close(self) -> None:
        self._role.close()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._role.detached is not None:
            return
        try:
            await self.detach()
        except GpushareError:
            self._role.close()
            if exc_type is None and self._role.client.session_active:
                raise


class AsyncProducer(_AsyncRoleBase):
    """:class:`gpushare.stream.Producer` for :class:`AsyncClient`: the frame calls are
    coroutines on the event loop (``async with`` detaches at exit)."""

    def __init__(self, client: AsyncClient, attachment: Any) -> None:
        self._role = _AsyncRole(client, attachment)

    async def __aenter__(self) -> "AsyncProducer":
        return self

    async def acquire_slot(self, timeout_ms: int, host_wait: bool = False, spin_us: int = 0) -> Any:
        request = gpushare_pb2.AcquireRequest(
            handle=self._role.attachment.handle, timeout_ms=_timeout_ms(timeout_ms),
            host_wait=host_wait, spin_us=spin_us,
        )
        reply = await self._role.call("acquire_slot", request, timeout_ms / 1000.0 + REPLY_GRACE_S)
        return _answer(reply, "slot")

    async def present(
        self, slot: Any, ready_value: int = 0, number: int = 0, timestamp_ns: int = 0,
        user_data: bytes = b"",
    ) -> Any:
        request = gpushare_pb2.PresentRequest(
            handle=self._role.attachment.handle, slot=_slot_index(slot), ready_value=ready_value,
            metadata=gpushare_pb2.FrameMetadata(
                number=number, timestamp_ns=timestamp_ns, user_data=bytes(user_data)
            ),
        )
        return _answer(await self._role.call("present", request, REPLY_GRACE_S), "presented")


class AsyncConsumer(_AsyncRoleBase):
    """:class:`gpushare.stream.Consumer` for :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient, attachment: Any) -> None:
        self._role = _AsyncRole(client, attachment)

    async def __aenter__(self) -> "AsyncConsumer":
        return self

    async def import_release(self) -> Optional[Exported]:
        a = self._role.attachment
        return await self._role.redeem(a.release if a.HasField("release") else None)

    async def acquire_frame(self, timeout_ms: int, host_wait: bool = False, spin_us: int = 0) -> Any:
        request = gpushare_pb2.AcquireRequest(
            handle=self._role.attachment.handle, timeout_ms=_timeout_ms(timeout_ms),
            host_wait=host_wait, spin_us=spin_us,
        )
        reply = await self._role.call("acquire_frame", request, timeout_ms / 1000.0 + REPLY_GRACE_S)
        return _answer(reply, "frame")

    async def release_frame(self, slot: Any, release_value: int = 0) -> int:
        request = gpushare_pb2.ReleaseFrameRequest(
            handle=self._role.attachment.handle, slot=_slot_index(slot), release_value=release_value,
        )
        reply = await self._role.call("release", request, REPLY_GRACE_S)
        return int(_answer(reply, "released").release_value)
