"""Frame streams: a :class:`Producer` acquires free slots and presents frames, a
:class:`Consumer` acquires frames and releases them (the proto's "Frame streams" section has the
model; :meth:`gpushare.Client.create_stream`, :meth:`~gpushare.Client.attach_producer` and
:meth:`~gpushare.Client.attach_consumer` make them).

Creating, attaching, detaching and describing are gRPC calls; the frame calls
(:meth:`Producer.acquire_slot`, :meth:`Producer.present`, :meth:`Consumer.acquire_frame`,
:meth:`Consumer.release_frame`) go over ``fd.sock``, one message each, answered by the daemon
thread whose call decided them. They block the calling thread (as :meth:`Client.fd_wait` does);
each role keeps its own ``fd.sock`` connection (calls from several threads at once each get one
of their own: a release never waits behind an acquire parked on the same role). Errors are :class:`GpushareError` with the daemon's code: ABORTED
once the stream ended, DEADLINE_EXCEEDED at an acquire's timeout, FAILED_PRECONDITION,
INVALID_ARGUMENT, NOT_FOUND.

A point value 0 (``ready_value``, ``release_value``) means "ready now" / "done now": the daemon
signals the next value of the timeline itself and returns it. That is what a host-side client
(frames moved with :meth:`Client.write` / :meth:`Client.read`) uses, on every device. With GPU
points (:attr:`Producer.gpu_points`) a GPU pipeline imports the slots and timelines once
(:meth:`~Producer.import_slots`, :meth:`~Producer.import_ready`,
:meth:`Consumer.import_release`), waits for a grant's or frame's points on its queue or stream,
signals its own point there, and presents or releases with that value.

An acquire interrupted once its request is out (KeyboardInterrupt, an exception raised by a
signal handler; on :class:`~gpushare.AsyncClient`, a cancelled task) is not abandoned: the daemon
hands the next frame or slot to it even if its connection were closed (that frame would count as
held, and be lost), so the client keeps the connection and the role's next acquire of that kind
answers with that reply first.

Both roles are context managers: leaving the ``with`` block detaches (a producer's detach ends
the stream; consumers drain the frames presented; a consumer's releases what it holds).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from gpushare._common import Exported, GpushareError, ProtocolError, gpushare_pb2

if TYPE_CHECKING:
    from gpushare.client import Client

__all__ = ["Consumer", "Producer", "delivery_mode"]

# Seconds a frame call may go past its own timeout before the client gives up on the daemon's
# answer (the daemon answers at the timeout itself; this only catches one that does not).
REPLY_GRACE_S = 10.0
# Idle fd.sock connections a role keeps (calls from several threads at once each use their own).
ROLE_CONNECTIONS_KEPT = 2
# Largest timeout_ms the wire carries.
_MAX_U32 = (1 << 32) - 1


def delivery_mode(mode: Union[str, int]) -> int:
    """``"fifo"`` / ``"mailbox"`` (or a ``pb.DELIVERY_MODE_*`` value) as the enum value."""
    if isinstance(mode, str):
        value = {
            "fifo": gpushare_pb2.DELIVERY_MODE_FIFO,
            "mailbox": gpushare_pb2.DELIVERY_MODE_MAILBOX,
        }.get(mode.lower())
        if value is None:
            raise ValueError(f"unknown delivery mode {mode!r}: 'fifo' or 'mailbox'")
        return int(value)
    return int(mode)


def _slot_index(slot: Any) -> int:
    """A slot index, or anything carrying one (a SlotGrant, a Frame)."""
    if isinstance(slot, int):
        return slot
    index = getattr(slot, "slot", None)
    if isinstance(index, int):
        return index
    raise TypeError(f"expected a slot index (int), a SlotGrant or a Frame, got {type(slot).__name__}")


def _timeout_ms(timeout_ms: int) -> int:
    if timeout_ms < 0:
        raise ValueError("timeout_ms must be >= 0")
    return min(int(timeout_ms), _MAX_U32)


class _Role:
    """One attachment: its handle, the client that made it, and its kept fd.sock connections.

    A call takes an idle connection (or makes one) and gives it back once its exchange is
    complete, so calls from several threads never queue behind each other (a release is not held
    up by an acquire parked on the same role); up to ``ROLE_CONNECTIONS_KEPT`` stay open."""

    def __init__(self, client: "Client", attachment: Any) -> None:
        if not attachment.handle:
            raise ProtocolError("StreamAttachment has no handle")
        self.client = client
        self.attachment = attachment
        self.detached: Optional[Any] = None
        self._idle: List[socket.socket] = []
        # An interrupted acquire's connection and deadline, by call kind (see _send).
        self._pending: Dict[str, Tuple[socket.socket, float]] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _pool(self) -> List[socket.socket]:
        # A process forked since the connections were made must not use them (a reply could
        # reach the wrong process): the child drops its copies and connects afresh.
        if self._pid != os.getpid():
            inherited, self._idle = self._idle, []
            inherited += [sock for sock, _ in self._pending.values()]
            self._pending = {}
            self._lock = threading.Lock()
            self._pid = os.getpid()
            for conn in inherited:
                conn.close()
        return self._idle

    def _give_back(self, sock: socket.socket) -> None:
        """Keeps a connection whose exchange completed (it is in step), or closes it."""
        with self._lock:
            pool = self._pool()
            if self.detached is None and len(pool) < ROLE_CONNECTIONS_KEPT:
                pool.append(sock)
                return
        sock.close()

    def _send(
        self, which: str, sock: socket.socket, data: bytes, timeout_s: float
    ) -> Tuple[bytes, Any, int]:
        """One exchange on ``sock``; raises _Stale as _exchange does (``sock`` is the caller's to
        close). Interrupted (KeyboardInterrupt, an exception from a signal handler) once the
        request was out, an acquire's connection is kept pending: the daemon answers it even
        were it closed (the frame or slot would be handed over, and lost), so its reply is the
        answer to the role's next call of that kind."""
        from gpushare.client import _exchange, _Stale

        sent: List[bool] = []
        try:
            return _exchange(sock, data, timeout_s, self.client.fd_path, sent)
        except (GpushareError, _Stale):
            raise
        except BaseException:
            if sent and which in ("acquire_slot", "acquire_frame"):
                with self._lock:
                    self._pending[which] = (sock, time.monotonic() + timeout_s)
            raise

    def _drop(self, sock: socket.socket) -> None:
        """Closes a connection whose exchange failed, unless it was kept pending."""
        with self._lock:
            if any(sock is kept for kept, _ in self._pending.values()):
                return
        sock.close()

    def _earlier(self, which: str) -> Any:
        """The reply of an interrupted call of this kind, if one is pending: its answer, or None
        (it was refused: not this call's error)."""
        from gpushare.client import _decode_fd_reply, _exchange

        with self._lock:
            self._pool()
            pending = self._pending.pop(which, None)
        if pending is None:
            return None
        sock, deadline = pending
        try:
            reply = _exchange(sock, None, max(0.0, deadline - time.monotonic()) + 1.0,
                              self.client.fd_path)
        except GpushareError:
            sock.close()
            return None
        except BaseException:
            with self._lock:
                self._pending[which] = pending  # interrupted again: still the next call's
            raise
        self._give_back(sock)
        try:
            return _decode_fd_reply(*reply, want="stream")
        except GpushareError:
            return None

    def call(self, which: str, request: Any, timeout_s: float) -> Any:
        """One StreamCall on a kept connection; its StreamReply's answer."""
        from gpushare.client import _decode_fd_reply, _no_reply, _Stale

        if self.client._closed:
            raise ValueError("gpushare Client is closed")
        earlier = self._earlier(which)
        if earlier is not None:
            return earlier
        data = gpushare_pb2.FdRequest(
            stream=gpushare_pb2.StreamCall(**{which: request})
        ).SerializeToString()
        with self._lock:
            pool = self._pool()
            kept = pool.pop() if pool else None
        reply: Optional[Tuple[bytes, Any, int]] = None
        if kept is not None:
            try:
                reply = self._send(which, kept, data, timeout_s)
            except _Stale:
                # The daemon closed it meanwhile (its idle timeout): the request was never read,
                # so it is sent once more on a new connection.
                kept.close()
            except BaseException:
                self._drop(kept)
                raise
            else:
                self._give_back(kept)
        if reply is None:
            sock = self.client._fd_connect(timeout_s)
            try:
                reply = self._send(which, sock, data, timeout_s)
            except BaseException as e:
                self._drop(sock)
                if isinstance(e, _Stale):
                    raise _no_reply(self.client.fd_path) from None
                raise
            self._give_back(sock)
        assert reply is not None
        return _decode_fd_reply(*reply, want="stream")

    def close(self) -> None:
        with self._lock:
            conns, self._idle = list(self._pool()), []
            conns += [sock for sock, _ in self._pending.values()]
            self._pending = {}
        for conn in conns:
            conn.close()

    def detach(self) -> Any:
        if self.detached is None:
            self.detached = self.client._call(
                "Detach", gpushare_pb2.StreamHandle(handle=self.attachment.handle)
            )
            self.close()
        return self.detached

    def redeem(self, part: Any) -> Optional[Exported]:
        if part is None or not part.ticket:
            return None
        return self.client.redeem(part.ticket)


class _RoleBase:
    _role: _Role

    @property
    def info(self) -> "gpushare_pb2.StreamInfo":
        """The stream as it was at attach (:meth:`Client.describe_stream` for now)."""
        return self._role.attachment.stream

    @property
    def id(self) -> str:
        """The stream's id."""
        return str(self._role.attachment.stream.id)

    @property
    def attachment(self) -> "gpushare_pb2.StreamAttachment":
        """The attachment: handle, role, and the slots' and timelines' ids and tickets."""
        return self._role.attachment

    @property
    def handle(self) -> str:
        return str(self._role.attachment.handle)

    @property
    def gpu_points(self) -> bool:
        """Whether points are signaled on GPUs (else by the daemon at each call: HOST points)."""
        return bool(self._role.attachment.stream.points == gpushare_pb2.STREAM_POINTS_GPU)

    @property
    def slot_ids(self) -> List[str]:
        """The slots' resource ids, in slot order (``slot_ids[frame.slot]`` is the buffer or
        image to write or read)."""
        return [str(p.resource_id) for p in self._role.attachment.slots]

    @property
    def detached(self) -> bool:
        return self._role.detached is not None

    def import_slots(self) -> List[Exported]:
        """Redeems the slots' tickets: one descriptor per slot, in slot order (once per
        process: a ticket is good once)."""
        out: List[Exported] = []
        try:
            for part in self._role.attachment.slots:
                exported = self._role.redeem(part)
                if exported is None:
                    raise ProtocolError("a StreamPart of a slot has no ticket")
                out.append(exported)
        except BaseException:
            for e in out:
                e.close()
            raise
        return out

    def import_ready(self) -> Optional[Exported]:
        """Redeems the ready timeline's ticket (None with HOST points)."""
        part = self._role.attachment.ready if self._role.attachment.HasField("ready") else None
        return self._role.redeem(part)

    def detach(self) -> "gpushare_pb2.StreamInfo":
        """Detaches this role (gRPC Detach) and closes its fd.sock connection; the stream as
        the daemon left it. Idempotent (later calls return the first answer)."""
        info: Any = self._role.detach()
        return info

    def close(self) -> None:
        """Closes the fd.sock connection without detaching (the session's end detaches)."""
        self._role.close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._role.detached is not None:
            return
        try:
            self.detach()
        except GpushareError:
            self._role.close()
            # The body's own error matters more than a failed detach; a session already gone
            # (the client closed) detached the role anyway.
            if exc_type is None and self._role.client.session_active:
                raise


class Producer(_RoleBase):
    """The producer of a stream: :meth:`acquire_slot`, write the slot (after its grant's
    points), :meth:`present`. Made by :meth:`Client.create_stream` or
    :meth:`Client.attach_producer`."""

    def __init__(self, client: "Client", attachment: Any) -> None:
        self._role = _Role(client, attachment)

    def __enter__(self) -> "Producer":
        return self

    def acquire_slot(self, timeout_ms: int, host_wait: bool = False, spin_us: int = 0) -> Any:
        """A free slot (``SlotGrant``: ``slot``, and the ``wait`` points to reach before writing
        it), waiting up to ``timeout_ms`` for one (FIFO consumers' backpressure; 0 answers at
        once). With ``host_wait`` the daemon also waits for the points before answering.
        DEADLINE_EXCEEDED: no slot in time; ABORTED: the stream ended."""
        request = gpushare_pb2.AcquireRequest(
            handle=self._role.attachment.handle, timeout_ms=_timeout_ms(timeout_ms),
            host_wait=host_wait, spin_us=spin_us,
        )
        reply = self._role.call("acquire_slot", request, timeout_ms / 1000.0 + REPLY_GRACE_S)
        return _answer(reply, "slot")

    def present(
        self,
        slot: Any,
        ready_value: int = 0,
        number: int = 0,
        timestamp_ns: int = 0,
        user_data: bytes = b"",
    ) -> Any:
        """Presents the frame in ``slot`` (an index, or the ``SlotGrant``), ready at
        ``ready_value`` on the ready timeline; 0 (the default): ready now, the daemon signals the
        next value itself. The ``Presented`` answer has the ready value and the frame's
        ``sequence`` (1, 2, ...). FAILED_PRECONDITION: the slot is not acquired (or presented
        already), or a ready value not above the earlier ones; INVALID_ARGUMENT: ``user_data``
        over 256 bytes; ABORTED: the stream ended."""
        request = gpushare_pb2.PresentRequest(
            handle=self._role.attachment.handle,
            slot=_slot_index(slot),
            ready_value=ready_value,
            metadata=gpushare_pb2.FrameMetadata(
                number=number, timestamp_ns=timestamp_ns, user_data=bytes(user_data)
            ),
        )
        return _answer(self._role.call("present", request, REPLY_GRACE_S), "presented")

    def __repr__(self) -> str:
        return f"Producer(stream={self.id!r}, slots={len(self.slot_ids)}, detached={self.detached})"


class Consumer(_RoleBase):
    """A consumer of a stream: :meth:`acquire_frame`, read the slot (after the frame's ready
    point), :meth:`release_frame`. Made by :meth:`Client.attach_consumer`."""

    def __init__(self, client: "Client", attachment: Any) -> None:
        self._role = _Role(client, attachment)

    def __enter__(self) -> "Consumer":
        return self

    def import_release(self) -> Optional[Exported]:
        """Redeems its release timeline's ticket (None with HOST points)."""
        part = self._role.attachment.release if self._role.attachment.HasField("release") else None
        return self._role.redeem(part)

    def acquire_frame(self, timeout_ms: int, host_wait: bool = False, spin_us: int = 0) -> Any:
        """The next frame by its mode (FIFO: the oldest not taken; mailbox: the newest): a
        ``Frame`` with ``slot``, its ``ready`` point, ``metadata`` and ``sequence``. Waits up to
        ``timeout_ms``; with ``host_wait`` the daemon also waits for the ready point.
        FAILED_PRECONDITION: it holds ``limit`` frames already; DEADLINE_EXCEEDED: none in time;
        ABORTED: the stream ended (FIFO: and no presented frame is left)."""
        request = gpushare_pb2.AcquireRequest(
            handle=self._role.attachment.handle, timeout_ms=_timeout_ms(timeout_ms),
            host_wait=host_wait, spin_us=spin_us,
        )
        reply = self._role.call("acquire_frame", request, timeout_ms / 1000.0 + REPLY_GRACE_S)
        return _answer(reply, "frame")

    def release_frame(self, slot: Any, release_value: int = 0) -> int:
        """Done with the frame in ``slot`` (an index, or the ``Frame``) at ``release_value`` on
        its release timeline; 0 (the default): done now, the daemon signals the next value
        itself. Returns the release value. FAILED_PRECONDITION: it holds no frame in that slot,
        or a release value not above its earlier ones."""
        request = gpushare_pb2.ReleaseFrameRequest(
            handle=self._role.attachment.handle,
            slot=_slot_index(slot),
            release_value=release_value,
        )
        reply = self._role.call("release", request, REPLY_GRACE_S)
        return int(_answer(reply, "released").release_value)

    def __repr__(self) -> str:
        return f"Consumer(stream={self.id!r}, slots={len(self.slot_ids)}, detached={self.detached})"


def _answer(reply: Any, want: str) -> Any:
    if reply.WhichOneof("reply") != want:
        raise ProtocolError(f"StreamReply has no `{want}`")
    return getattr(reply, want)
