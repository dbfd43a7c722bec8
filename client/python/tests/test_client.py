"""Tests of the Python client against the real gpushared daemon.

The session-scoped `daemon` fixture starts target/debug/gpushared (or $GPUSHARED) in a temporary
runtime directory, with small transfer limits (DAEMON_CONFIG), and stops it with SIGTERM at the end.
"""

import gc
import array
import errno
import fcntl
import os
import socket
import struct
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_ROOT = os.path.dirname(HERE)  # client/python
REPO = os.path.normpath(os.path.join(PKG_ROOT, "..", ".."))
sys.path.insert(0, PKG_ROOT)

import grpc  # noqa: E402

import gpushare  # noqa: E402
from gpushare import pb  # noqa: E402

from conftest import (  # noqa: E402
    FD_IDLE_TIMEOUT_MS,
    MAX_HOST_BUFFER_SIZE,
    MAX_TRANSFER_SIZE,
)


def assert_code(excinfo, code: grpc.StatusCode):
    assert excinfo.value.code == code, f"expected {code.name}, got {excinfo.value}"


def _fds_linking_to(fragment: str) -> int:
    """How many of this process's fds point at something whose /proc link contains `fragment`."""
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if fragment in os.readlink(f"/proc/self/fd/{name}"):
                n += 1
        except OSError:
            pass
    return n


def _poll(predicate, timeout=1.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# ---- info ----


def test_info_lists_devices(info):
    assert info.daemon_version
    assert len(info.devices) >= 1
    for dev in info.devices:
        assert len(dev.device_uuid) == 16
        assert len(dev.driver_uuid) == 16
    caps = info.devices[0].capabilities
    assert pb.HANDLE_TYPE_OPAQUE_FD in caps.buffer_export
    assert info.limits.max_buffer_size > 0
    assert info.stats.live_sessions >= 1  # this test's own session


# ---- buffers, export, zero copy ----


def _memfd_payload_offset(fd: int) -> int:
    """Where the buffer's bytes start inside a lavapipe memory fd.

    Investigated on Mesa 25.0 lavapipe: the exported OPAQUE_FD is a memfd
    ("memfd:llvmpipe memory fd") made by Mesa's os_malloc_aligned_fd(): it starts with a small
    header (u64 total fd size, u64 offset of the data, then the driver UUID) and the memory the
    buffer is bound to starts at that offset (4096), so fstat size = offset + allocation_size +
    a small tail. A plain pread at offset 0 therefore reads the header, not the pattern; pread at
    the header's data offset reads exactly the bytes the daemon wrote: the fd is the very memory
    the daemon's Vulkan device uses (a genuine zero-copy check from Python).
    """
    size = os.fstat(fd).st_size
    header = os.pread(fd, 16, 0)
    total, offset = struct.unpack("<QQ", header)
    assert total == size, f"unexpected lavapipe memfd header: total {total} != fstat size {size}"
    assert 0 < offset < size
    return offset


def test_buffer_write_export_zero_copy(client, info):
    size = 64 * 1024
    buf = client.create_buffer(size, name="py-zero-copy")
    assert buf.kind == pb.RESOURCE_KIND_BUFFER
    assert buf.id.startswith("buf-")
    assert buf.buffer.size == size and buf.buffer.allocation_size >= size
    assert buf.references == 1 and not buf.pinned

    pattern = bytes((i * 7 + 3) & 0xFF for i in range(4096))
    client.write(buf, 512, pattern)
    assert client.read(buf, 512, len(pattern)) == pattern

    with client.export(buf) as exp:
        fd = exp.fd
        st = os.fstat(fd)
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, "fd received without CLOEXEC"
        meta = exp.info
        assert meta.resource_id == buf.id
        assert meta.kind == pb.RESOURCE_KIND_BUFFER
        assert meta.handle_type == pb.HANDLE_TYPE_OPAQUE_FD
        assert meta.WhichOneof("details") == "buffer"
        assert meta.buffer.size == size
        assert meta.buffer.allocation_size >= size
        assert meta.buffer.allocation_size == buf.buffer.allocation_size
        assert meta.device_uuid == info.devices[buf.device].device_uuid
        assert meta.driver_uuid == info.devices[buf.device].driver_uuid

        if info.devices[buf.device].driver_name != "llvmpipe":
            return  # vendor opaque fds (NVIDIA) are not readable files: import them instead
        assert "memfd:" in os.readlink(f"/proc/self/fd/{fd}")
        assert st.st_size >= meta.buffer.allocation_size
        base = _memfd_payload_offset(fd)
        assert st.st_size >= base + meta.buffer.allocation_size
        # Daemon -> Python: bytes written through the daemon are in the fd's memory.
        assert os.pread(fd, len(pattern), base + 512) == pattern
        # Still live, not a snapshot: a later daemon write shows up in the same memory...
        client.fill(buf, 0, 256, 0xA5A5A5A5)
        assert os.pread(fd, 256, base) == b"\xa5" * 256
        # ... and Python -> daemon: bytes written into the fd are what the daemon reads.
        os.pwrite(fd, b"from python", base + 8192)
        assert client.read(buf, 8192, 11) == b"from python"
        # Freeing on the daemon's side never breaks an existing import.
        assert client.release(buf) is True
        assert os.pread(fd, len(pattern), base + 512) == pattern
    assert exp.closed


def test_fast_path_fields_reach_the_daemon(client, info):
    """word and signal_path on creation, Open and streams; the daemon says why a semaphore got
    no word where the device does not offer the fast path (lavapipe)."""
    fast = info.devices[0].fast_path
    sem = client.create_semaphore(2, word=True, signal_path="word")
    d = client.describe(sem).semaphore
    if fast.offered and d.exportable:
        assert d.word and not d.word_unavailable
    else:
        assert not d.word and d.word_unavailable
    plain = client.describe(client.create_semaphore(0)).semaphore
    assert not plain.word and not plain.word_unavailable
    with pytest.raises(ValueError, match="signal path"):
        client.create_semaphore(word=True, signal_path="fast")
    with pytest.raises(gpushare.GpushareError) as e:
        client.create_semaphore(signal_path=7)
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    client.open(sem, signal=True, signal_path="semaphore")
    producer = client.create_stream(2, buffer_size=64, word=True, signal_path="word")
    ready = client.describe(producer.attachment.ready.resource_id).semaphore
    assert ready.word == d.word
    producer.close()


def test_fill_and_copy(client):
    a = client.create_buffer(4096)
    b = client.create_buffer(4096)
    client.fill(a, 0, 4096, 0x04030201)
    client.write(b, 0, b"\xff" * 4096)
    client.copy(a, 16, b, 1024, 64)
    out = client.read(b, 1000, 100)
    assert out == b"\xff" * 24 + bytes([1, 2, 3, 4]) * 16 + b"\xff" * 12
    with pytest.raises(gpushare.GpushareError) as e:
        client.read(a, 4000, 200)
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(gpushare.GpushareError) as e:
        client.read(a, 0, 0)
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(gpushare.GpushareError) as e:
        client.write(a, 2**64 - 1, b"xy")
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(gpushare.GpushareError) as e:
        client.fill(a, 2, 8, 0)
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)


def test_write_waits_and_signals(client):
    buf = client.create_buffer(1024)
    sem = client.create_semaphore(0)
    errors = []

    def writer():
        try:
            client.write(buf, 0, b"synced", wait=[(sem, 1)], signal=[(sem.id, 2)], timeout_ms=5000)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.05)
    assert client.value(sem) == 0  # the write is still waiting for value 1
    client.signal(sem, 1)
    assert client.wait(sem, 2, timeout_ms=5000) == 2
    t.join(5)
    assert not errors, errors
    assert client.read(buf, 0, 6) == b"synced"
    with pytest.raises(gpushare.GpushareError) as e:
        client.write(buf, 0, b"x", wait=[(sem, 10)], timeout_ms=20)
    assert_code(e, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_fd_wait(client):
    sem = client.create_semaphore(0)
    assert client.fd_wait(sem, 0) == 0
    with pytest.raises(gpushare.GpushareError) as e:
        client.fd_wait(sem, 5, timeout_ms=30)
    assert_code(e, grpc.StatusCode.DEADLINE_EXCEEDED)
    for spin_us in (0, 2000):
        target = client.value(sem) + 1
        timer = threading.Timer(0.05, client.signal, args=(sem, target))
        timer.start()
        assert client.fd_wait(sem, target, timeout_ms=5000, spin_us=spin_us) == target
        timer.join()
    with pytest.raises(gpushare.GpushareError) as e:
        client.fd_wait("sem-00000000000000000000000000000000", 1, timeout_ms=10)
    assert_code(e, grpc.StatusCode.NOT_FOUND)


def _pending_waits(c, sem) -> int:
    listed = c._call("ListSemaphores", pb.ListSemaphoresRequest()).semaphores
    return sum(len(s.waits) for s in listed if s.id == sem.id)


def test_fd_wait_keeps_its_connection_and_replaces_a_stale_one(daemon):
    with daemon.client() as c:
        sem = c.create_semaphore(3)
        assert c.fd_wait(sem, 1) == 3
        assert len(c._wait_conns) == 1
        kept = c._wait_conns[0]
        # The next wait reuses it, also after a wait that the daemon answered with an error.
        with pytest.raises(gpushare.GpushareError) as e:
            c.fd_wait(sem, 9, timeout_ms=10)
        assert_code(e, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert c._wait_conns == [kept]
        assert c.fd_wait(sem, 2) == 3
        assert c._wait_conns == [kept]
        # The daemon closes it once idle; the next wait goes out on a new connection, unseen.
        time.sleep(FD_IDLE_TIMEOUT_MS / 1000.0 + 0.3)
        assert c.fd_wait(sem, 3) == 3
        assert len(c._wait_conns) == 1 and c._wait_conns[0] is not kept
        assert kept.fileno() == -1, "the stale connection was not closed"
        # Concurrent waits each take a connection; at most FD_WAIT_CONNECTIONS_KEPT stay.
        n = gpushare.client.FD_WAIT_CONNECTIONS_KEPT + 2
        results, errors = [], []
        start = threading.Barrier(n + 1)

        def waiter():
            try:
                start.wait()
                results.append(c.fd_wait(sem, 4, timeout_ms=5000))
            except Exception as ex:  # noqa: BLE001 - reported by the assertion below
                errors.append(ex)

        threads = [threading.Thread(target=waiter) for _ in range(n)]
        for t in threads:
            t.start()
        start.wait()
        deadline = time.monotonic() + 10
        while _pending_waits(c, sem) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _pending_waits(c, sem) == n
        c.signal(sem, 4)
        for t in threads:
            t.join(10)
        assert not errors, errors
        assert results == [4] * n
        assert len(c._wait_conns) == gpushare.client.FD_WAIT_CONNECTIONS_KEPT
        kept_now = list(c._wait_conns)
    assert c._wait_conns == [] and all(k.fileno() == -1 for k in kept_now)


def test_fd_wait_in_a_forked_child_uses_its_own_connection(daemon):
    with daemon.client() as c:
        sem = c.create_semaphore(5)
        assert c.fd_wait(sem, 1) == 5
        (kept,) = c._wait_conns
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no gRPC here, only fd.sock
            code = 1
            try:
                os.close(r)
                ok = c.fd_wait(sem, 2) == 5
                mine = c._wait_conns
                ok = ok and len(mine) == 1 and mine[0] is not kept and kept.fileno() == -1
                code = 0 if ok else 2
            finally:
                os.write(w, bytes([code]))
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as child:
            report = child.read()
        _, status = os.waitpid(pid, 0)
        assert report == b"\x00" and os.WEXITSTATUS(status) == 0, (report, status)
        # The parent's kept connection was not closed by the child, and still serves.
        assert c._wait_conns == [kept] and kept.fileno() != -1
        assert c.fd_wait(sem, 3) == 5
        assert c._wait_conns == [kept]


# ---- fd.sock tickets ----


def test_redeem_twice_and_bad_tickets(client):
    buf = client.create_buffer(4096)
    before = _fds_linking_to("memfd:")
    ticket = client.export_ticket(buf)
    assert len(ticket.ticket) == 16 and ticket.ttl_ms > 0
    with client.redeem(ticket.ticket) as exp:
        assert exp.info.resource_id == buf.id
    with pytest.raises(gpushare.GpushareError) as e:
        client.redeem(ticket.ticket)
    assert_code(e, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(gpushare.GpushareError) as e:
        client.redeem(os.urandom(16))
    assert_code(e, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(gpushare.GpushareError) as e:
        client.redeem(b"abc")
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    # A ticket for a resource freed since it was issued.
    t2 = client.export_ticket(buf)
    assert client.release(buf)
    with pytest.raises(gpushare.GpushareError) as e:
        client.redeem(t2.ticket)
    assert_code(e, grpc.StatusCode.NOT_FOUND)
    assert _fds_linking_to("memfd:") == before, "a descriptor leaked"


def test_semaphore_export_matches_capability(client, info):
    sem = client.create_semaphore(3)
    caps = info.devices[sem.device].capabilities
    assert sem.semaphore.exportable == (pb.HANDLE_TYPE_OPAQUE_FD in caps.timeline_semaphore_export)
    if sem.semaphore.exportable:
        with client.export(sem) as exp:
            assert exp.info.kind == pb.RESOURCE_KIND_SEMAPHORE
            assert exp.info.semaphore.timeline and exp.info.semaphore.value == 3
    else:
        with pytest.raises(gpushare.GpushareError) as e:
            client.export(sem)
        assert_code(e, grpc.StatusCode.FAILED_PRECONDITION)


# ---- semaphores ----


def test_semaphore_signal_wait_value(client):
    sem = client.create_semaphore(initial=5, name="py-sem")
    assert sem.kind == pb.RESOURCE_KIND_SEMAPHORE and sem.semaphore.value == 5
    assert client.value(sem) == 5
    assert client.signal(sem, 7) == 7
    assert client.value(sem.id) == 7
    assert client.wait(sem, 7) == 7
    assert client.wait(sem, 3, timeout_ms=10) == 7
    for bad in (7, 6):
        with pytest.raises(gpushare.GpushareError) as e:
            client.signal(sem, bad)
        assert_code(e, grpc.StatusCode.FAILED_PRECONDITION)
    t0 = time.monotonic()
    with pytest.raises(gpushare.GpushareError) as e:
        client.wait(sem, 100, timeout_ms=50)
    assert_code(e, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - t0 >= 0.04
    with pytest.raises(gpushare.GpushareError) as e:
        client.wait(sem, 100, timeout_ms=0)  # 0: check once
    assert_code(e, grpc.StatusCode.DEADLINE_EXCEEDED)

    # A wait woken by a signal from another thread.
    timer = threading.Timer(0.05, client.signal, args=(sem, 9))
    timer.start()
    assert client.wait(sem, 9, timeout_ms=5000) >= 9
    timer.join()
    assert client.describe(sem).semaphore.value == 9


def test_watch(client):
    sem = client.create_semaphore(initial=1)
    seen = []
    with client.watch(sem) as watch:
        assert next(watch) == 1

        def signaler():
            for v in (2, 3, 10):
                time.sleep(0.02)
                client.signal(sem, v)

        t = threading.Thread(target=signaler)
        t.start()
        for v in watch:
            seen.append(v)
            if v >= 10:
                break
        t.join()
    assert seen[-1] == 10
    assert seen == sorted(set(seen)) and set(seen) <= {2, 3, 10}
    assert list(watch) == []  # cancelled: iteration just ends


# ---- errors ----


def test_errors(daemon, client):
    with daemon.client(session=False) as bare:
        assert bare.session_id is None
        with pytest.raises(gpushare.GpushareError) as e:
            bare.create_buffer(4096)
        assert_code(e, grpc.StatusCode.FAILED_PRECONDITION)
        with pytest.raises(gpushare.GpushareError) as e:
            bare.create_semaphore(0)
        assert_code(e, grpc.StatusCode.FAILED_PRECONDITION)
        # A pinned buffer needs no session; releasing it without one drops the pin.
        pinned = bare.create_buffer(4096, pin=True)
        assert pinned.pinned and pinned.references == 1
        assert bare.release(pinned) is True
    with pytest.raises(gpushare.GpushareError) as e:
        client.create_buffer(0)
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(gpushare.GpushareError) as e:
        client.create_buffer(client.info().limits.max_buffer_size + 1)
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    for unknown in ("buf-" + "0" * 32, "sem-" + "ab" * 16):
        with pytest.raises(gpushare.GpushareError) as e:
            client.describe(unknown)
        assert_code(e, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(gpushare.GpushareError) as e:
        client.value("sem-" + "0" * 32)
    assert_code(e, grpc.StatusCode.NOT_FOUND)
    for malformed in ("nonsense", "", "buf-XYZ", "buf-" + "0" * 31):
        with pytest.raises(gpushare.GpushareError) as e:
            client.describe(malformed)
        assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    # A session id that names no live session.
    bogus = gpushare.Client(daemon.runtime_dir, session=False)
    bogus._metadata = ((gpushare.SESSION_HEADER, "0" * 32),)
    with bogus, pytest.raises(gpushare.GpushareError) as e:
        bogus.create_buffer(4096)
    assert_code(e, grpc.StatusCode.FAILED_PRECONDITION)


# ---- sessions ----


def test_session_close_frees_unpinned(daemon):
    with daemon.client(session=False) as observer:
        live = lambda: observer.info().stats.live_resources  # noqa: E731
        base = live()
        c = daemon.client(client_name="pytest-session")
        assert c.session_active and c.session_id
        unpinned = c.create_buffer(4096)
        pinned = c.create_buffer(4096, pin=True)
        assert pinned.references == 2 and pinned.pinned
        assert {r.id for r in c.list()} >= {unpinned.id, pinned.id}
        assert live() == base + 2
        c.close()
        assert not c.session_active
        assert _poll(lambda: live() == base + 1, timeout=1.0), f"live_resources {live()} != {base + 1}"
        with pytest.raises(gpushare.GpushareError) as e:
            observer.describe(unpinned)
        assert_code(e, grpc.StatusCode.NOT_FOUND)
        still = observer.describe(pinned)
        assert still.pinned and still.references == 1
        assert observer.release(pinned) is True
        assert live() == base
        with pytest.raises(gpushare.GpushareError) as e:
            observer.release(pinned)
        assert_code(e, grpc.StatusCode.NOT_FOUND)


def test_session_reference_release(client):
    buf = client.create_buffer(4096, pin=True)
    assert buf.references == 2
    assert client.release(buf) is False  # drops the session's reference, the pin stays
    assert client.describe(buf).references == 1
    with pytest.raises(gpushare.GpushareError) as e:
        client.write(buf, 0, b"\0" * 4097)
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    assert client.release(buf) is True  # no session reference left: drops the pin


def test_exported_ownership(client):
    buf = client.create_buffer(4096)
    exp = client.export(buf)
    fd = exp.detach()
    assert exp.closed
    exp.close()  # no-op: no longer owns the fd
    os.fstat(fd)
    os.close(fd)


# ---- host buffers ----

HOST_MEMFD = "memfd:gpushare-host-buffer"  # the name the daemon gives its memfds


def test_host_buffer_round_trip_beyond_the_message_limit(client, info):
    assert info.limits.max_transfer_size == MAX_TRANSFER_SIZE
    assert info.limits.max_host_buffer_size == MAX_HOST_BUFFER_SIZE
    length = 3 * MAX_TRANSFER_SIZE + 12345  # well past the message limit, not page-aligned
    src = client.create_host_buffer(length, name="py-src")
    dst = client.create_host_buffer(length + 4096)
    assert isinstance(src, gpushare.HostBuffer)
    assert src.id.startswith("host-") and src.size == len(src) == length
    assert src.info.kind == pb.RESOURCE_KIND_HOST_BUFFER
    assert src.info.handle_type == pb.HANDLE_TYPE_MEMFD
    assert src.info.host_buffer.size == length
    assert fcntl.fcntl(src.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert "memfd:" in os.readlink(f"/proc/self/fd/{src.fileno()}")
    described = client.describe(src)  # a HostBuffer names itself wherever an id is taken
    assert described.kind == pb.RESOURCE_KIND_HOST_BUFFER and described.name == "py-src"
    assert described.WhichOneof("details") == "host_buffer"
    assert described.host_buffer.size == length
    assert described.host_buffer.registered == (info.executor == "cuda")
    assert described.device == 0 and described.references == 1 and not described.pinned

    data = os.urandom(length)
    src.write(0, data)
    assert src.read(0, length) == data
    buf = client.create_buffer(length + 1024)
    # Inline bytes are held to the message limit; host ranges are not.
    with pytest.raises(gpushare.GpushareError) as e:
        client.write(buf, 0, data)
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    client.write_from_host(buf, 1024, src, 0, length)
    client.read_into_host(buf, 1024, length, dst, 4096)
    assert dst.read(4096, length) == data
    assert dst.read(0, 4096) == bytes(4096)  # outside the range: untouched
    with dst.memoryview() as mv:  # the same bytes, in place
        assert mv[4096 + 777 : 4096 + 800] == data[777:800]
    # A piece through the message path agrees.
    assert client.read(buf, 1024 + 5000, 4096) == data[5000 : 5000 + 4096]
    # Ids work as well as HostBuffer objects; offsets on both sides.
    client.write_from_host(buf.id, 8, src.id, 100, 50)
    assert client.read(buf, 0, 64) == bytes(8) + data[100:150] + bytes(6)
    words = array.array("I", range(256))
    src.write(16, words)  # any buffer: copied as its bytes
    out = array.array("I", bytes(1024))
    assert src.readinto(16, out) == 1024 and out == words


def test_host_buffer_refusals(daemon, client):
    size = 64 * 1024
    src = client.create_host_buffer(size)
    dst = client.create_host_buffer(size)
    buf = client.create_buffer(size)

    def invalid(call, *args):
        with pytest.raises(gpushare.GpushareError) as e:
            call(*args)
        assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)

    invalid(client.write_from_host, buf, 0, src, 1, size)  # host range past the end
    invalid(client.write_from_host, buf, 0, src, 2**64 - 1, 2)  # host range overflows
    invalid(client.write_from_host, buf, 4096, src, 0, size)  # buffer range past the end
    invalid(client.write_from_host, buf, 0, src, 0, 0)  # length 0
    invalid(client.read_into_host, buf, 0, size, dst, 8192)  # past the host buffer's end
    invalid(client.write_from_host, buf, 0, buf, 0, 4)  # a device buffer as host buffer
    invalid(client.write, src, 0, b"x")  # a host buffer as device buffer
    # `data` and `from_host` both set (raw requests: the client never sends these).
    both = pb.WriteRequest(buffer_id=buf.id, data=b"abcd", from_host=src.range(0, 4))
    invalid(client._call, "Write", both)
    # to_host.length must be 0 (meaning `length`) or equal `length`.
    invalid(client._call, "Read", pb.ReadRequest(buffer_id=buf.id, length=8, to_host=dst.range(0, 4)))
    client.write(buf, 0, b"8 bytes!")
    zero = pb.ReadRequest(buffer_id=buf.id, length=8, to_host=dst.range(32, 0))
    reply = client._call("Read", zero)
    assert reply.data == b"" and dst.read(32, 8) == b"8 bytes!"
    # Sizes.
    invalid(client.create_host_buffer, 0)
    invalid(client.create_host_buffer, MAX_HOST_BUFFER_SIZE + 1)
    # Local range checks (no daemon involved).
    for bad in ((size - 3, b"four"), (-1, b"x")):
        with pytest.raises(ValueError):
            src.write(*bad)
    with pytest.raises(ValueError):
        src.read(size - 1, 2)
    # Session-less: only pinned, as for any resource.
    with daemon.client(session=False) as bare:
        with pytest.raises(gpushare.GpushareError) as e:
            bare.create_host_buffer(4096)
        assert_code(e, grpc.StatusCode.FAILED_PRECONDITION)
        with bare.create_host_buffer(4096, pin=True) as pinned:
            assert bare.describe(pinned).pinned
            assert pinned.release() is True


def test_host_buffer_is_sealed_and_release_frees_it(client):
    hb = client.create_host_buffer(8192)
    fd = hb.fileno()
    seals = fcntl.fcntl(fd, 1034)  # F_GET_SEALS
    assert seals & 0x0002 and seals & 0x0004 and seals & 0x0001  # SHRINK, GROW, SEAL
    for size in (4096, 16384, 0):
        with pytest.raises(OSError):
            os.ftruncate(fd, size)
    assert os.fstat(fd).st_size == 8192
    buf = client.create_buffer(4096)
    hb.write(0, b"ping")
    client.write_from_host(buf, 0, hb, 0, 4)
    assert client.read(buf, 0, 4) == b"ping"

    assert hb.release() is True
    with pytest.raises(gpushare.GpushareError) as e:
        client.write_from_host(buf, 0, hb, 0, 4)
    assert_code(e, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(gpushare.GpushareError) as e:
        client.describe(hb)
    assert_code(e, grpc.StatusCode.NOT_FOUND)
    hb.write(0, b"still mapped")  # freed in the daemon, still mapped here
    assert hb.read(0, 12) == b"still mapped"
    hb.close()
    assert hb.closed
    hb.close()  # idempotent
    with pytest.raises(ValueError):
        hb.read(0, 1)
    with pytest.raises(ValueError):
        hb.fileno()


def test_host_buffer_close_unmaps_and_closes_its_fds(client):
    # Host buffers of earlier tests that are garbage by now would otherwise be collected
    # while this test counts.
    gc.collect()
    before = _fds_linking_to(HOST_MEMFD)
    with client.create_host_buffer(4096) as hb:
        assert _fds_linking_to(HOST_MEMFD) > before
    assert hb.closed
    assert _fds_linking_to(HOST_MEMFD) == before

    # A view still alive keeps the mapping until it is released: close() never unmaps under it.
    hb = client.create_host_buffer(4096)
    mv = hb.memoryview()
    mv[:5] = b"hello"
    hb.close()
    assert hb.closed
    assert bytes(mv[:5]) == b"hello"
    assert _fds_linking_to(HOST_MEMFD) > before
    mv.release()
    assert _fds_linking_to(HOST_MEMFD) == before

    # Garbage collection closes too.
    hb = client.create_host_buffer(4096)
    del hb
    assert _fds_linking_to(HOST_MEMFD) == before


def _memfd(name: str, size: int, seals: int = 0) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, 1033, seals)  # F_ADD_SEALS
    return fd


def test_host_buffer_map_checks_the_descriptor(client):
    def exported(fd, size, kind=pb.RESOURCE_KIND_HOST_BUFFER, handle=pb.HANDLE_TYPE_MEMFD):
        info = pb.ExportedFd(
            resource_id="host-" + "0" * 32, kind=kind, handle_type=handle,
            host_buffer=pb.HostBufferImport(size=size),
        )
        return gpushare.Exported(fd, info)

    before = _fds_linking_to("memfd:py-map-")
    sealed = 0x0002  # F_SEAL_SHRINK
    cases = [
        (exported(_memfd("py-map-unsealed", 4096), 4096), gpushare.ProtocolError, "not sealed"),
        (exported(_memfd("py-map-size", 4096, sealed), 8192), gpushare.ProtocolError, "4096 bytes"),
        (
            exported(_memfd("py-map-kind", 4096, sealed), 4096, kind=pb.RESOURCE_KIND_BUFFER),
            ValueError,
            "kind",
        ),
        (
            exported(_memfd("py-map-type", 4096, sealed), 4096, handle=pb.HANDLE_TYPE_OPAQUE_FD),
            gpushare.ProtocolError,
            "MEMFD",
        ),
    ]
    for exp, error, match in cases:
        with pytest.raises(error, match=match):
            gpushare.HostBuffer.map(client, exp)
        assert exp.closed
    assert _fds_linking_to("memfd:py-map-") == before, "a refused descriptor was not closed"
    # A well-formed one maps (a memfd of our own: shared with nobody, but the checks pass).
    with gpushare.HostBuffer.map(None, exported(_memfd("py-map-ok", 4096, sealed), 4096)) as hb:
        hb.write(4092, b"last")
        assert hb.read(4092) == b"last"
        with pytest.raises(ValueError):
            hb.release()  # mapped without a client
    assert _fds_linking_to("memfd:py-map-") == before


def test_create_host_buffer_releases_what_it_cannot_map(client, monkeypatch):
    def failing_map(cls, c, exp):
        exp.close()
        raise OSError(errno.ENOMEM, "mmap refused (test)")

    monkeypatch.setattr(gpushare.HostBuffer, "map", classmethod(failing_map))
    before = {r.id for r in client.list()}
    for pin in (False, True):
        with pytest.raises(OSError, match="mmap refused"):
            client.create_host_buffer(4096, pin=pin)
        assert {r.id for r in client.list()} == before, f"pin={pin}: the host buffer was not freed"


# ---- fd.sock receive rules, against a fake daemon ----


def _fake_fd_server(path, reply: bytes, fds):
    """Serves one fd.sock request with `reply` and `fds` as SCM_RIGHTS; returns the thread."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path)
    srv.listen(1)

    def serve():
        with srv:
            conn, _ = srv.accept()
            with conn:
                conn.recv(4096)
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
                conn.sendmsg([reply], anc)

    t = threading.Thread(target=serve)
    t.start()
    return t


@pytest.mark.parametrize(
    "case, nfds, expected",
    [
        ("ctrunc", 6, "MSG_CTRUNC"),  # more fds than the client accepts
        ("trunc", 1, "MSG_TRUNC"),  # a reply longer than the receive buffer
        ("two_fds", 2, "expected 1 descriptor"),
        ("word_missing", 1, "expected 2 descriptor"),  # a semaphore whose word was announced
        ("error_with_fd", 1, "NOT_FOUND"),
        ("garbage", 1, "undecodable"),
    ],
)
def test_redeem_never_leaks_fds(tmp_path, case, nfds, expected):
    exported = pb.FdReply(exported=pb.ExportedFd(resource_id="buf-x", kind=pb.RESOURCE_KIND_BUFFER))
    reply = {
        "ctrunc": exported.SerializeToString(),
        "trunc": exported.SerializeToString() + b"\0" * 20000,
        "two_fds": exported.SerializeToString(),
        "word_missing": pb.FdReply(exported=pb.ExportedFd(
            resource_id="sem-x", kind=pb.RESOURCE_KIND_SEMAPHORE,
            semaphore=pb.SemaphoreImport(timeline=True, word_exists=True, word=pb.BufferImport()),
        )).SerializeToString(),
        "error_with_fd": pb.FdReply(error=pb.FdError(code=5, message="gone")).SerializeToString(),
        "garbage": b"\xff\xff\xff\xff",
    }[case]
    r, w = os.pipe()
    try:
        link = os.readlink(f"/proc/self/fd/{r}")
        before = _fds_linking_to(link)
        t = _fake_fd_server(str(tmp_path / "fd.sock"), reply, [r] * nfds)
        with gpushare.Client(str(tmp_path), session=False) as c:
            with pytest.raises(gpushare.GpushareError, match=expected) as e:
                c.redeem(b"t" * 16)
        t.join(5)
        if case == "error_with_fd":
            assert_code(e, grpc.StatusCode.NOT_FOUND)
        else:
            assert isinstance(e.value, gpushare.ProtocolError)
        assert _fds_linking_to(link) == before, "received descriptors were not closed"
    finally:
        os.close(r)
        os.close(w)


def test_names_tokens_grants_and_open(daemon, client):
    buf = client.create_buffer(4096, name="py-shared")
    with pytest.raises(gpushare.GpushareError) as e:
        client.create_semaphore(name="py-shared")
    assert_code(e, grpc.StatusCode.ALREADY_EXISTS)
    uid = client.describe(buf).owner_uid

    with daemon.client(client_name="py opener") as other:
        # By name, then by id again: one reference of this session.
        opened = other.open(owner_uid=uid, name="py-shared")
        assert opened.id == buf.id and opened.references == 2
        assert other.open(buf).references == 2
        # By token; a revoked token opens nothing.
        token = client.create_token(buf)
        assert len(token) == 16
        with daemon.client(client_name="py token holder") as third:
            assert third.open(token=token).references == 3
            client.revoke_tokens(buf)
        with daemon.client(client_name="py late") as late:
            with pytest.raises(gpushare.GpushareError) as e:
                late.open(token=token)
            assert_code(e, grpc.StatusCode.NOT_FOUND)
            with pytest.raises(gpushare.GpushareError) as e:
                late.open(owner_uid=uid, name="no such name")
            assert_code(e, grpc.StatusCode.NOT_FOUND)

    # Grants are listed on the resource, and taken back.
    r = client.grant(buf, uid=4242)
    assert list(r.granted_uids) == [4242]
    r = client.grant(buf, gid=4343)
    assert list(r.granted_gids) == [4343]
    r = client.revoke(buf, uid=4242)
    assert list(r.granted_uids) == []
    with pytest.raises(ValueError):
        client.grant(buf, uid=1, gid=2)
    with pytest.raises(ValueError):
        client.open(buf, token=b"x" * 16)
    with pytest.raises(ValueError):
        client.open(name="py-shared")
    client.release(buf)


# ---- images ----


def _f16(values) -> bytes:
    return struct.pack("<%de" % len(values), *values)


def test_image_formats_table():
    assert list(gpushare.IMAGE_FORMATS)[:3] == ["r8unorm", "rg8unorm", "rgba8unorm"]
    assert len(gpushare.IMAGE_FORMATS) == len(pb.ImageFormat.keys()) - 1  # less UNSPECIFIED
    for name, f in gpushare.IMAGE_FORMATS.items():
        assert gpushare.image_format(name) is f
        assert gpushare.image_format(f.value) is f
        assert gpushare.image_format(pb.ImageFormat.Name(f.value)) is f
        assert f.texel_size == f.channels * f.channel_size
    rgba16f = gpushare.image_format("RGBA16Float")
    assert (rgba16f.value, rgba16f.texel_size, rgba16f.kind) == (pb.IMAGE_FORMAT_RGBA16_FLOAT, 8, "float")
    assert gpushare.image_format("r32uint").numpy_dtype == "<u4"
    for bad in ("rgb8unorm", 0, 99):
        with pytest.raises(ValueError):
            gpushare.image_format(bad)


def test_image_every_listed_format_round_trips_its_levels(client, info):
    formats = info.devices[0].image_formats
    assert formats, "the device lists no image format"
    for value in formats:
        f = gpushare.image_format(value)
        img = client.create_image(f.name, 13, 7, mip_levels=4, name=f"py-{f.name}")
        assert isinstance(img, gpushare.Image)
        assert (img.format, img.format_info, img.kind) == (f.name, f, "2d")
        assert (img.width, img.height, img.depth, img.mip_levels, img.array_layers) == (13, 7, 1, 4, 1)
        assert img.allocation_size > 0 and img.id.startswith("img-")
        levels = []
        for level, extent in enumerate([(13, 7, 1), (6, 3, 1), (3, 1, 1), (1, 1, 1)]):
            assert img.level_extent(level) == extent
            size = img.region_size(level)
            assert size == extent[0] * extent[1] * f.texel_size
            assert img.read(level) == bytes(size), f"{f.name} level {level} reads as zeros"
            data = os.urandom(size)
            img.write(data, level=level)
            levels.append(data)
        for level, data in enumerate(levels):
            assert img.read(level=level) == data, f"{f.name} level {level}"
        # A sub-region lands where it is named.
        t = f.texel_size
        patch = os.urandom(2 * 3 * t)
        img.write(patch, level=0, x=10, y=4, width=2, height=3)
        assert img.read(level=0, x=10, y=4, width=2, height=3) == patch
        whole = bytearray(levels[0])
        for row in range(3):
            start = ((4 + row) * 13 + 10) * t
            whole[start : start + 2 * t] = patch[row * 2 * t : (row + 1) * 2 * t]
        assert img.read() == bytes(whole), f.name
        assert img.release() is True


def test_image_layers_and_3d_round_trip(client):
    layered = client.create_image("rg16float", 16, 8, mip_levels=2, array_layers=3)
    assert (layered.kind, layered.array_layers) == ("2d", 3)
    layer_size = 16 * 8 * 4
    assert layered.region_size(0) == 3 * layer_size
    assert layered.region_size(0, layer=1) == layer_size
    data = os.urandom(3 * layer_size)
    layered.write(data)  # every layer, layer after layer
    for layer in range(3):
        assert layered.read(layer=layer) == data[layer * layer_size : (layer + 1) * layer_size]
    assert layered.read(layer=1, layers=2) == data[layer_size:]
    one = os.urandom(8 * 4 * 4)
    layered.write(one, level=1, layer=2)
    assert layered.read(level=1) == bytes(2 * len(one)) + one

    volume = client.create_image("r32float", 8, 4, depth=6, mip_levels=3)
    assert (volume.kind, volume.depth, volume.array_layers) == ("3d", 6, 1)
    assert volume.level_extent(1) == (4, 2, 3) and volume.level_extent(2) == (2, 1, 1)
    slice_size = 8 * 4 * 4
    data = os.urandom(6 * slice_size)
    volume.write(data)
    assert volume.read() == data
    assert volume.read(z=2, depth=3) == data[2 * slice_size : 5 * slice_size]
    box = volume.read(x=1, y=2, z=4, width=3, height=2, depth=2)
    expected = b"".join(
        data[((z * 4 + y) * 8 + 1) * 4 : ((z * 4 + y) * 8 + 4) * 4] for z in (4, 5) for y in (2, 3)
    )
    assert box == expected
    small = os.urandom(4 * 2 * 3 * 4)
    volume.write(small, level=1)
    assert volume.read(level=1) == small
    explicit = client.create_image("r8unorm", 4, 4, depth=2, kind="3d")
    assert explicit.kind == "3d"


def test_image_clear(client):
    img = client.create_image("rgba8unorm", 9, 5, mip_levels=3)
    img.clear(float_color=[1.0, 0.5, 0.0, 1.0])
    for level in range(3):
        w, h, _ = img.level_extent(level)
        assert img.read(level=level) == bytes([255, 128, 0, 255]) * (w * h)
    img.clear(float_color=[0.0, 1.0], base_level=1, levels=1)  # missing channels are 0
    assert img.read(level=0) == bytes([255, 128, 0, 255]) * 45
    assert img.read(level=1) == bytes([0, 255, 0, 0]) * 8
    assert img.read(level=2) == bytes([255, 128, 0, 255]) * 2
    img.clear()  # to zero
    assert img.read(level=0) == bytes(9 * 5 * 4)

    half = client.create_image("rgba16float", 4, 4, array_layers=2)
    half.clear(float_color=[0.5, -2.0, 65504.0, 0.0], base_layer=1)
    assert half.read(layer=0) == bytes(4 * 4 * 8)
    assert half.read(layer=1) == _f16([0.5, -2.0, 65504.0, 0.0]) * 16

    uint = client.create_image("rgba32uint", 3, 3)
    uint.clear(uint_color=[1, 2, 3, 0xFFFFFFFF])
    assert uint.read() == struct.pack("<4I", 1, 2, 3, 0xFFFFFFFF) * 9
    with pytest.raises(gpushare.GpushareError) as e:
        uint.clear(float_color=[1.0])
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(gpushare.GpushareError) as e:
        img.clear(uint_color=[1])
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)


def test_image_generate_mips(client):
    img = client.create_image("rgba8unorm", 8, 4, mip_levels=3, array_layers=2)
    level0 = bytes(range(0, 256, 4)) * 4  # 8 * 4 texels * 4 bytes * 2 layers
    img.write(level0)
    sem = client.create_semaphore(0)
    errors = []

    def generate():
        try:
            img.generate_mips(base_layer=1, wait=[(sem, 1)], signal=[(sem, 2)], timeout_ms=5000)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=generate)
    t.start()
    time.sleep(0.05)
    assert client.value(sem) == 0  # still waiting for value 1
    assert img.read(level=1) == bytes(2 * 4 * 2 * 4)
    client.signal(sem, 1)
    assert client.wait(sem, 2, timeout_ms=5000) == 2
    t.join(5)
    assert not errors, errors
    assert img.read(level=1, layer=0) == bytes(4 * 2 * 4), "layer 0 untouched"
    layer1 = level0[8 * 4 * 4 :]
    got = img.read(level=1, layer=1)
    for y in range(2):
        for x in range(4):
            for c in range(4):
                block = [layer1[((2 * y + dy) * 8 + 2 * x + dx) * 4 + c] for dy in (0, 1) for dx in (0, 1)]
                assert abs(got[(y * 4 + x) * 4 + c] - sum(block) / 4) <= 1, (x, y, c)
    assert img.read(level=2, layer=1) != bytes(2 * 1 * 4)

    # sRGB: black and white average to 188 in linear light.
    srgb = client.create_image("rgba8srgb", 2, 2, mip_levels=2)
    srgb.write(bytes([0, 0, 0, 255, 255, 255, 255, 255] * 2))
    srgb.generate_mips()
    r, g, b, a = srgb.read(level=1)
    assert all(abs(v - 188) <= 1 for v in (r, g, b)) and a == 255, (r, g, b, a)

    for bad in (
        dict(base_level=2),  # nothing after the last level
        dict(levels=3),
        dict(base_layer=2),
        dict(base_layer=1, layers=2),
    ):
        with pytest.raises(gpushare.GpushareError) as e:
            img.generate_mips(**bad)
        assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    single = client.create_image("rgba8unorm", 4, 4)
    with pytest.raises(gpushare.GpushareError) as e:
        single.generate_mips()
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    assert "one mip level" in str(e.value)


def test_image_refusals(client):
    img = client.create_image("rgba8unorm", 8, 8, mip_levels=2, array_layers=2)
    bad_regions = [
        dict(level=2),
        dict(x=6, width=3),
        dict(y=8),
        dict(layer=2),
        dict(layer=1, layers=2),
        dict(level=1, width=5),
        dict(z=1),
    ]
    for region in bad_regions:
        with pytest.raises(gpushare.GpushareError) as e:
            img.read(**region)
        assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(gpushare.GpushareError) as e:
            img.write(bytes(4), **region)
        assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(ValueError):
            img.region_size(**region)
    with pytest.raises(gpushare.GpushareError) as e:
        img.write(bytes(8 * 8 * 4 * 2 - 1))  # one byte short of the region
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(ValueError):
        img.write(b"", sync=pb.Sync(), timeout_ms=5)

    with pytest.raises(ValueError):
        client.create_image("rgb8unorm", 4, 4)
    with pytest.raises(ValueError):
        client.create_image("r8unorm", 4, 4, kind="1d")
    for kw in (
        dict(mip_levels=4),  # at most floor(log2(4)) + 1 = 3
        dict(depth=2, kind="2d"),
        dict(depth=2, array_layers=2),
        dict(usage=0x20),  # DEPTH_STENCIL_ATTACHMENT: not a usage images take
    ):
        with pytest.raises(gpushare.GpushareError) as e:
            client.create_image("r8unorm", 4, 4, **kw)
        assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(gpushare.GpushareError) as e:
        client.create_image("r8unorm", 0, 4)
    assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)

    buf = client.create_buffer(4096)
    with pytest.raises(ValueError, match="not an image"):
        client.image(buf.id)
    assert img.release() is True
    with pytest.raises(gpushare.GpushareError) as e:
        client.image(img.id)
    assert_code(e, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(gpushare.GpushareError) as e:
        img.read()
    assert_code(e, grpc.StatusCode.NOT_FOUND)


def test_image_handle_by_id_and_export(daemon, client):
    img = client.create_image(
        pb.IMAGE_FORMAT_RGBA16_FLOAT, 32, 16, mip_levels=3, array_layers=2,
        usage=gpushare.USAGE_SAMPLED | gpushare.USAGE_STORAGE, name="py-export",
    )
    described = client.describe(img)  # an Image names itself wherever an id is taken
    assert described.kind == pb.RESOURCE_KIND_IMAGE and described.name == "py-export"
    assert described.image.format == pb.IMAGE_FORMAT_RGBA16_FLOAT
    with daemon.client(client_name="pytest-other") as other:
        again = other.image(img.id)  # the same uid reaches it
        assert (again.format, again.width, again.height, again.mip_levels, again.array_layers) == (
            "rgba16float", 32, 16, 3, 2,
        )
        assert again.allocation_size == img.allocation_size
        data = os.urandom(again.region_size(level=2, layer=1))
        again.write(data, level=2, layer=1)
    assert img.read(level=2, layer=1) == data

    with img.export() as exp:
        info = exp.info
        assert info.resource_id == img.id
        assert info.kind == pb.RESOURCE_KIND_IMAGE
        assert info.handle_type == pb.HANDLE_TYPE_OPAQUE_FD
        assert info.WhichOneof("details") == "image"
        i = info.image
        assert i.format == pb.IMAGE_FORMAT_RGBA16_FLOAT and i.kind == pb.IMAGE_KIND_2D
        assert (i.width, i.height, i.depth, i.mip_levels, i.array_layers) == (32, 16, 1, 3, 2)
        assert i.allocation_size == img.allocation_size > 0
        assert i.dedicated is True
        assert i.usage & (gpushare.USAGE_SAMPLED | gpushare.USAGE_STORAGE) == 0xC
        assert i.usage & 0x3 == 0x3  # transfer usage is added
        assert i.tiling == 0 and i.layout == 1  # optimal, general
        assert i.vk_format == 97  # VK_FORMAT_R16G16B16A16_SFLOAT
        assert len(info.device_uuid) == 16
        os.fstat(exp.fileno())
        assert fcntl.fcntl(exp.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_image_transfers_beyond_the_message_limit(client):
    img = client.create_image("rgba32float", 256, 256, mip_levels=2)  # level 0: 1 MiB, level 1: 256 KiB
    size = img.region_size(0)
    assert size == MAX_TRANSFER_SIZE
    big = client.create_image("rgba32float", 512, 300)
    big_size = big.region_size()
    assert big_size > MAX_TRANSFER_SIZE
    with client.create_host_buffer(2 * big_size + 4096) as host:
        data = os.urandom(big_size)
        with pytest.raises(gpushare.GpushareError) as e:
            big.write(data)
        assert_code(e, grpc.StatusCode.INVALID_ARGUMENT)
        host.write(4096, data)
        big.write_from_host(host, 4096)
        assert big.read_into_host(host.id, 4096 + big_size) == big_size
        assert host.read(4096 + big_size, big_size) == data
        # One layer's rows through the host buffer, checked through the message path.
        rows = big.region_size(y=100, height=50)
        big.read_into_host(host, 0, y=100, height=50)
        assert host.read(0, rows) == data[100 * 512 * 16 : 150 * 512 * 16]
        assert big.read(y=100, height=50) == data[100 * 512 * 16 : 150 * 512 * 16]
        # Exactly at the limit, a message still carries it.
        level0 = os.urandom(size)
        img.write(level0)
        assert img.read() == level0


def test_image_read_numpy(client):
    numpy = pytest.importorskip("numpy")
    rgba = client.create_image("rgba8unorm", 5, 3, mip_levels=2)
    pixels = numpy.arange(5 * 3 * 4, dtype=numpy.uint8).reshape(3, 5, 4)
    rgba.write(pixels)  # numpy arrays are taken as their bytes
    got = rgba.read_numpy()
    assert got.dtype == numpy.uint8 and got.shape == (3, 5, 4)
    assert (got == pixels).all()
    got[0, 0, 0] = 99  # a copy, writable
    assert rgba.read_numpy(level=1).shape == (1, 2, 4)

    gray = client.create_image("r16float", 4, 2)
    values = numpy.array([[0.0, 0.5, -1.0, 65504.0], [1e-7, 2.0, 3.5, -0.0]], dtype=numpy.float16)
    gray.write(values)
    got = gray.read_numpy()
    assert got.dtype == numpy.float16 and got.shape == (2, 4, 1)
    assert (got[..., 0].view(numpy.uint16) == values.view(numpy.uint16)).all()

    layered = client.create_image("rg32uint", 3, 2, array_layers=4)
    ints = numpy.arange(4 * 2 * 3 * 2, dtype=numpy.uint32).reshape(4, 2, 3, 2) * 1000003
    layered.write(ints)
    got = layered.read_numpy()
    assert got.dtype == numpy.uint32 and got.shape == (4, 2, 3, 2)
    assert (got == ints).all()
    one = layered.read_numpy(layer=2)
    assert one.shape == (2, 3, 2) and (one == ints[2]).all()

    volume = client.create_image("rgba32float", 4, 3, depth=2)
    floats = numpy.random.default_rng(7).random((2, 3, 4, 4), dtype=numpy.float32)
    volume.write(floats)
    with client.create_host_buffer(4096) as host:
        got = volume.read_numpy(host=host, host_offset=128)
    assert got.dtype == numpy.float32 and got.shape == (2, 3, 4, 4)
    assert (got == floats).all()
    with pytest.raises(TypeError):
        volume.write(floats[:, :, ::2])  # not contiguous
