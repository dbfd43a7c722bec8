#!/usr/bin/env python3
"""The Python client's scenario CLI for the conformance suite.

    .venv/bin/python tests/conformance/python/conformance.py <scenario>
    .venv/bin/python tests/conformance/python/conformance.py redeem-child <ticket-hex> <id> <size>

The scenarios, the environment the harness sets and the exit statuses (0 pass, 1 fail with a
``FAIL:`` line, 77 skip with a ``SKIP:`` line) are the contract in
``tests/conformance/README.md``; the harness is ``tests/tests/conformance.rs``. Everything goes
through the ``gpushare`` package's public API (``gpushare.Client``), except one half of
``extra-fds``: the package opens a fresh fd.sock connection for every redeem, so the hostile
server's 2nd and 3rd replies on one connection are reached with the package's own fd.sock
exchange (``gpushare.client._exchange`` and ``_decode_fd_reply``, what ``Client.redeem`` runs);
and ``stream``'s AcquireSlot on a made-up handle, which a ``Producer`` cannot name, goes through
the same exchange.

What this is not: a test of the daemon's corner cases; it checks that this client does what the
contract says every client does.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc

import gpushare
from gpushare import pb

EXIT_PASS, EXIT_FAIL, EXIT_SKIP = 0, 1, 77
CHILD_TIMEOUT_S = 30.0


class Fail(Exception):
    """A scenario failed: the ``FAIL:`` line's text."""


class Skip(Exception):
    """A scenario cannot run here: the ``SKIP:`` line's text."""


def runtime_dir() -> str:
    return gpushare.default_runtime_dir()


def session() -> gpushare.Client:
    return gpushare.Client(runtime_dir(), client_name="conformance-python")


def sessionless() -> gpushare.Client:
    return gpushare.Client(runtime_dir(), session=False)


def expect_code(what: str, call, *codes: grpc.StatusCode):
    """Runs ``call()`` and checks that it raised a GpushareError with one of ``codes``."""
    try:
        result = call()
    except gpushare.GpushareError as e:
        if e.code in codes:
            return
        raise Fail(f"{what}: expected {[c.name for c in codes]}, got {e}") from None
    if isinstance(result, gpushare.Exported):
        result.close()
    raise Fail(f"{what}: expected {[c.name for c in codes]}, got success {result!r}")


def pattern() -> bytes:
    return bytes(i % 251 for i in range(4096))


def expect_bytes(what: str, got: bytes, want: bytes) -> None:
    if got == want:
        return
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            raise Fail(f"{what}: byte {i} is {g:#04x}, expected {w:#04x}")
    raise Fail(f"{what}: {len(got)} bytes, expected {len(want)}")


# ---- descriptor counting ----


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_fd_count() -> int:
    """The count once it has not changed for 100 ms (at most 2 s)."""
    deadline = time.monotonic() + 2.0
    last, since = fd_count(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 0.1:
        time.sleep(0.01)
        now = fd_count()
        if now != last:
            last, since = now, time.monotonic()
    return last


def check_no_leaks(baseline: int) -> None:
    deadline = time.monotonic() + 2.0
    while True:
        now = fd_count()
        if now <= baseline:
            return
        if time.monotonic() > deadline:
            targets = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    targets.append(os.readlink(f"/proc/self/fd/{fd}"))
                except OSError:
                    pass
            raise Fail(f"leaked {now - baseline} fds (open now: {', '.join(targets)})")
        time.sleep(0.02)


# ---- scenarios ----


def connect() -> None:
    with sessionless() as c:
        info = c.info()
        if not info.daemon_version:
            raise Fail("GetInfo: expected a non-empty daemon_version, got an empty one")
        if not info.devices:
            raise Fail("GetInfo: expected at least one device, got none")
        print(f"version {info.daemon_version}, {len(info.devices)} device(s)")
    path = os.path.join(runtime_dir(), "fd.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        try:
            s.connect(path)
        except OSError as e:
            raise Fail(f"connect to {path}: {e}") from None


def session_scenario() -> None:
    c = session()
    try:
        if not c.session_id:
            raise Fail("Session: expected a session id in the first message, got none")
        buf = c.create_buffer(4096)
        c.describe(buf)
        with sessionless() as bare:
            expect_code(
                "CreateBuffer without a session header, not pinned",
                lambda: bare.create_buffer(4096),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
    finally:
        c.close()
    with session() as other:
        deadline = time.monotonic() + 2.0
        while True:
            try:
                got = other.describe(buf.id)
            except gpushare.GpushareError as e:
                if e.code == grpc.StatusCode.NOT_FOUND:
                    return
                got = e
            if time.monotonic() > deadline:
                raise Fail(
                    "DescribeResource after the session closed: expected NOT_FOUND within 2 s, "
                    f"got {got!r}"
                )
            time.sleep(0.05)


def resources() -> None:
    name = f"conformance-python-{os.getpid()}"
    with session() as c:
        buf = c.create_buffer(65536, name=name)
        sem = c.create_semaphore(initial=3)
        b = c.describe(buf)
        if b.kind != pb.RESOURCE_KIND_BUFFER:
            raise Fail(f"buffer: expected kind BUFFER, got {b.kind}")
        if b.WhichOneof("details") != "buffer" or b.buffer.size != 65536:
            raise Fail(f"buffer: expected size 65536, got {b}")
        if b.name != name:
            raise Fail(f"buffer: expected name {name!r}, got {b.name!r}")
        s = c.describe(sem)
        if s.kind != pb.RESOURCE_KIND_SEMAPHORE:
            raise Fail(f"semaphore: expected kind SEMAPHORE, got {s.kind}")
        if s.WhichOneof("details") != "semaphore" or s.semaphore.value != 3:
            raise Fail(f"semaphore: expected value 3, got {s}")
        listed = [r.id for r in c.list()]
        for rid in (buf.id, sem.id):
            if rid not in listed:
                raise Fail(f"ListResources: expected {rid} among {listed}")
        expect_code(
            "CreateBuffer with a name taken",
            lambda: c.create_buffer(4096, name=name),
            grpc.StatusCode.ALREADY_EXISTS,
        )
        c.release(buf)
        c.release(sem)
        expect_code(
            "DescribeResource on the released buffer",
            lambda: c.describe(buf),
            grpc.StatusCode.NOT_FOUND,
        )
        expect_code(
            "DescribeResource on the released semaphore",
            lambda: c.describe(sem),
            grpc.StatusCode.NOT_FOUND,
        )


def check_exported(what: str, exp: gpushare.Exported, rid: str, size: int) -> None:
    info = exp.info
    if info.resource_id != rid:
        raise Fail(f"{what}: expected resource_id {rid}, got {info.resource_id!r}")
    if info.kind != pb.RESOURCE_KIND_BUFFER:
        raise Fail(f"{what}: expected kind BUFFER, got {info.kind}")
    if info.WhichOneof("details") != "buffer":
        raise Fail(f"{what}: expected buffer details, got {info}")
    if info.buffer.size != size:
        raise Fail(f"{what}: expected buffer.size {size}, got {info.buffer.size}")
    if info.buffer.allocation_size < size:
        raise Fail(
            f"{what}: expected buffer.allocation_size >= {size}, got {info.buffer.allocation_size}"
        )
    try:
        os.fstat(exp.fileno())
    except OSError as e:
        raise Fail(f"{what}: fstat on the descriptor failed: {e}") from None


def export_redeem() -> None:
    size = 1 << 20
    want = pattern()
    with session() as c:
        buf = c.create_buffer(size)
        c.write(buf, 0, want)
        ticket = c.export_ticket(buf).ticket
        args = [sys.executable, os.path.abspath(__file__), "redeem-child", ticket.hex(), buf.id,
                str(size)]
        try:
            child = subprocess.run(args, stdin=subprocess.DEVNULL, timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise Fail(f"redeem-child did not finish within {CHILD_TIMEOUT_S} s") from None
        if child.returncode != 0:
            raise Fail(f"redeem-child: expected exit status 0, got {child.returncode}")
        with c.export(buf) as exp:
            check_exported("fd.sock export", exp, buf.id, size)
        expect_bytes("Read after the exports", c.read(buf, 0, 4096), want)


def redeem_child(ticket_hex: str, rid: str, size: str) -> None:
    with sessionless() as c:
        try:
            exp = c.redeem(bytes.fromhex(ticket_hex))
        except gpushare.GpushareError as e:
            raise Fail(f"redeem-child: redeem: {e}") from None
        with exp:
            check_exported("redeem-child", exp, rid, int(size))


def host_sync() -> None:
    with session() as c:
        sem = c.create_semaphore(initial=0)
        if (v := c.signal(sem, 5)) != 5:
            raise Fail(f"Signal(5): expected 5, got {v}")
        if (v := c.value(sem)) != 5:
            raise Fail(f"GetValue: expected 5, got {v}")
        expect_code(
            "Signal(5) again", lambda: c.signal(sem, 5), grpc.StatusCode.FAILED_PRECONDITION
        )

        values: "queue.Queue[object]" = queue.Queue()
        watch = c.watch(sem)

        def read_watch() -> None:
            try:
                for v in watch:
                    values.put(v)
            except gpushare.GpushareError as e:
                values.put(e)
            values.put(None)

        reader = threading.Thread(target=read_watch, name="watch", daemon=True)
        reader.start()

        def next_value() -> int:
            try:
                v = values.get(timeout=2.0)
            except queue.Empty:
                raise Fail("Watch: no value within 2 s") from None
            if v is None:
                raise Fail("Watch: the stream ended before 9")
            if isinstance(v, Exception):
                raise Fail(f"Watch: {v}")
            return v

        try:
            # The first value is the current one: the call is under way before the signals.
            seen = [next_value()]
            c.signal(sem, 7)
            c.signal(sem, 9)
            deadline = time.monotonic() + 2.0
            while seen[-1] < 9:
                if time.monotonic() > deadline:
                    raise Fail(f"Watch: expected to reach 9 within 2 s, saw {seen}")
                v = next_value()
                if v < seen[-1]:
                    raise Fail(f"Watch: values went down: {seen} then {v}")
                seen.append(v)
        finally:
            watch.cancel()
            reader.join(5.0)

        start = time.monotonic()
        v = c.wait(sem, 9, timeout_ms=1000)
        if v < 9:
            raise Fail(f"Wait(9): expected a value of at least 9, got {v}")
        took = time.monotonic() - start
        if took >= 1.0:
            raise Fail(f"Wait(9) on a semaphore at 9: expected at once, took {took:.3f} s")
        expect_code(
            "Wait(20, 100 ms)",
            lambda: c.wait(sem, 20, timeout_ms=100),
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )


def fd_wait() -> None:
    with session() as c:
        sem = c.create_semaphore(initial=0)
        errors = []

        def signal_later() -> None:
            time.sleep(0.05)
            try:
                c.signal(sem, 3)
            except gpushare.GpushareError as e:
                errors.append(e)

        signaler = threading.Thread(target=signal_later, name="signaler")
        signaler.start()
        try:
            v = c.fd_wait(sem, 3, timeout_ms=5000)
        except gpushare.GpushareError as e:
            raise Fail(f"fd.sock wait for 3: {e}") from None
        finally:
            signaler.join()
        if errors:
            raise Fail(f"Signal(3): {errors[0]}")
        if v < 3:
            raise Fail(f"fd.sock wait for 3: expected a value of at least 3, got {v}")
        expect_code(
            "fd.sock wait for 100, 50 ms",
            lambda: c.fd_wait(sem, 100, timeout_ms=50),
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        expect_code(
            "fd.sock wait on a semaphore that does not exist",
            lambda: c.fd_wait("sem-" + "0" * 32, 1, timeout_ms=1000),
            grpc.StatusCode.NOT_FOUND,
        )


def ops() -> None:
    with session() as c:
        buf = c.create_buffer(4096)
        sem = c.create_semaphore(initial=0)
        c.signal(sem, 1)
        want = bytearray(pattern())
        c.write(buf, 0, bytes(want), wait=[(sem, 1)], signal=[(sem, 2)], timeout_ms=10000)
        if (v := c.value(sem)) < 2:
            raise Fail(f"GetValue after the Write: expected at least 2, got {v}")
        c.fill(buf, 1024, 1024, 0xABABABAB, wait=[(sem, 2)], signal=[(sem, 3)], timeout_ms=10000)
        want[1024:2048] = b"\xab" * 1024
        got = c.read(buf, 0, 4096, wait=[(sem, 3)], timeout_ms=10000)
        expect_bytes("Read", got, bytes(want))
        expect_code(
            "Write signaling (sem, 3) with the semaphore at 3",
            lambda: c.write(buf, 0, bytes(want[:16]), signal=[(sem, 3)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
        )


def tickets() -> None:
    with session() as c:
        expect_code(
            "redeeming 16 random bytes",
            lambda: c.redeem(os.urandom(16)),
            grpc.StatusCode.NOT_FOUND,
        )
        buf = c.create_buffer(4096)
        ticket = c.export_ticket(buf).ticket
        c.redeem(ticket).close()
        expect_code(
            "redeeming a ticket again (replayed)",
            lambda: c.redeem(ticket),
            grpc.StatusCode.NOT_FOUND,
        )
        issued = c.export_ticket(buf)
        ttl_ms = int(os.environ.get("GPUSHARE_CONFORMANCE_TICKET_TTL_MS") or issued.ttl_ms)
        time.sleep(ttl_ms / 1000.0 + 0.5)
        expect_code(
            "redeeming an expired ticket",
            lambda: c.redeem(issued.ticket),
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )


def foreign() -> None:
    rid = os.environ.get("GPUSHARE_CONFORMANCE_FOREIGN_ID")
    if not rid:
        raise Skip("GPUSHARE_CONFORMANCE_FOREIGN_ID is unset (the harness is not root)")
    with session() as c:
        expect_code("DescribeResource on another uid's buffer", lambda: c.describe(rid),
                    grpc.StatusCode.NOT_FOUND)
        expect_code("Export on another uid's buffer", lambda: c.export_ticket(rid),
                    grpc.StatusCode.NOT_FOUND)
        expect_code("fd.sock export of another uid's buffer", lambda: c.export(rid),
                    grpc.StatusCode.NOT_FOUND)


def expect_protocol_error(what: str, call) -> None:
    try:
        result = call()
    except gpushare.ProtocolError as e:
        print(f"{what}: {e}")
        return
    except gpushare.GpushareError as e:
        raise Fail(f"{what}: expected a protocol error, got {e}") from None
    if isinstance(result, gpushare.Exported):
        result.close()
    raise Fail(f"{what}: expected a protocol error, got success {result!r}")


def extra_fds() -> None:
    hostile = os.environ.get("GPUSHARE_CONFORMANCE_HOSTILE_FD_SOCK")
    if not hostile:
        raise Fail("GPUSHARE_CONFORMANCE_HOSTILE_FD_SOCK is unset")
    # The public API: a runtime directory whose control.sock is the daemon's and whose fd.sock
    # is the hostile server's. Client.redeem opens a connection per request: each is a 1st.
    links = tempfile.mkdtemp(prefix="gpushare-conformance-python-")
    try:
        os.symlink(os.path.join(runtime_dir(), "control.sock"), os.path.join(links, "control.sock"))
        os.symlink(hostile, os.path.join(links, "fd.sock"))
        with gpushare.Client(links, session=False) as c:
            for attempt in range(1, 4):
                expect_protocol_error(
                    f"Client.redeem #{attempt} from the hostile server",
                    lambda: c.redeem(os.urandom(16)),
                )
    finally:
        shutil.rmtree(links, ignore_errors=True)
    # One connection, three requests: the 1st, 2nd and 3rd replies, through the exchange
    # Client.redeem runs (gpushare.client internals: there is no public one-connection redeem).
    from gpushare.client import _decode_fd_reply, _exchange

    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(hostile)
        for attempt in range(1, 4):
            request = pb.FdRequest(redeem=os.urandom(16)).SerializeToString()
            expect_protocol_error(
                f"request #{attempt} on one connection",
                lambda: _decode_fd_reply(*_exchange(s, request, 10.0, hostile)),
            )


def stream_round_pattern(n: int) -> bytes:
    return bytes((i + n) % 251 for i in range(4096))


def raw_acquire_slot(handle: str) -> None:
    """An AcquireSlot naming ``handle`` on a fresh fd.sock connection. ``Producer`` only ever
    names its own attachment's handle, so a made-up one goes through the package's own fd.sock
    exchange (``gpushare.client._exchange`` and ``_decode_fd_reply``, what a role's call runs):
    raises the daemon's refusal as GpushareError, returns the StreamReply otherwise."""
    from gpushare.client import _decode_fd_reply, _exchange

    path = os.path.join(runtime_dir(), "fd.sock")
    request = pb.FdRequest(
        stream=pb.StreamCall(acquire_slot=pb.AcquireRequest(handle=handle, timeout_ms=2000))
    ).SerializeToString()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)
        return _decode_fd_reply(*_exchange(s, request, 10.0, path), want="stream")


def stream_scenario() -> None:
    producer_session = session()
    consumer_session = None
    producer = consumer = None
    try:
        try:
            producer = producer_session.create_stream(2, buffer_size=4096)
        except gpushare.GpushareError as e:
            raise Fail(f"CreateStream (2 slots of 4096 bytes): {e}") from None
        slots = producer.slot_ids
        if len(slots) != 2:
            raise Fail(f"CreateStream: expected 2 slots, got {len(slots)}")
        consumer_session = session()
        try:
            consumer = consumer_session.attach_consumer(producer.id, "fifo", 1)
        except gpushare.GpushareError as e:
            raise Fail(f"AttachConsumer (FIFO, limit 1): {e}") from None

        for n in (1, 2, 3):
            try:
                grant = producer.acquire_slot(2000)
            except gpushare.GpushareError as e:
                raise Fail(f"round {n}: AcquireSlot (timeout_ms 2000): {e}") from None
            if not 0 <= grant.slot < len(slots):
                raise Fail(f"round {n}: AcquireSlot: expected a slot below {len(slots)}, "
                           f"got slot {grant.slot}")
            want = stream_round_pattern(n)
            producer_session.write(slots[grant.slot], 0, want)
            try:
                presented = producer.present(grant.slot, ready_value=0, number=n)
            except gpushare.GpushareError as e:
                raise Fail(f"round {n}: Present slot {grant.slot}: {e}") from None
            if presented.sequence != n:
                raise Fail(f"round {n}: Present: expected sequence {n}, got {presented.sequence}")
            try:
                frame = consumer.acquire_frame(2000)
            except gpushare.GpushareError as e:
                raise Fail(f"round {n}: AcquireFrame (timeout_ms 2000): {e}") from None
            if frame.metadata.number != n:
                raise Fail(f"round {n}: AcquireFrame: expected metadata.number {n}, "
                           f"got {frame.metadata.number}")
            if frame.slot != grant.slot:
                raise Fail(f"round {n}: AcquireFrame: expected slot {grant.slot} (the presented "
                           f"one), got {frame.slot}")
            got = consumer_session.read(slots[frame.slot], 0, 4096)
            expect_bytes(f"round {n}: Read slot {frame.slot}", got, want)
            try:
                consumer.release_frame(frame.slot, 0)
            except gpushare.GpushareError as e:
                raise Fail(f"round {n}: ReleaseFrame slot {frame.slot}: {e}") from None

        expect_code(
            "AcquireFrame with timeout_ms 0 and no frame",
            lambda: consumer.acquire_frame(0),
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        expect_code(
            "ReleaseFrame of slot 0, which the consumer does not hold",
            lambda: consumer.release_frame(0, 0),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        unknown = "role-" + "0" * 32
        expect_code(
            f"AcquireSlot naming the handle {unknown}",
            lambda: raw_acquire_slot(unknown),
            grpc.StatusCode.NOT_FOUND,
        )
        try:
            producer.detach()
        except gpushare.GpushareError as e:
            raise Fail(f"Detach the producer: {e}") from None
        expect_code(
            "AcquireFrame (timeout_ms 2000) after the producer detached",
            lambda: consumer.acquire_frame(2000),
            grpc.StatusCode.ABORTED,
        )
    finally:
        # Closing the roles' fd.sock connections and both sessions (which detach what is left).
        for role in (consumer, producer):
            if role is not None:
                role.close()
        if consumer_session is not None:
            consumer_session.close()
        producer_session.close()


def fast_path() -> None:
    with session() as c, session() as other:
        info = c.info()
        offered0 = None
        for d in info.devices:
            if not d.HasField("fast_path"):
                raise Fail(f"GetInfo: device {d.index} has no fast_path")
            if not d.fast_path.offered and not d.fast_path.unavailable:
                raise Fail(f"GetInfo: device {d.index}'s fast path is not offered and says not why")
            if offered0 is None:
                offered0 = d.fast_path.offered
        sem = c.create_semaphore(2, word=True, signal_path="word")
        r = c.describe(sem.id)
        if r.kind != pb.RESOURCE_KIND_SEMAPHORE:
            raise Fail(f"DescribeResource: expected a semaphore, got kind {r.kind}")
        d = r.semaphore
        if d.value != 2:
            raise Fail(f"DescribeResource: expected value 2, got {d.value}")
        if d.word != (not d.word_unavailable):
            raise Fail(f"DescribeResource: word {d.word} with word_unavailable {d.word_unavailable!r}")
        if d.word != bool(offered0 and d.exportable):
            raise Fail(
                f"DescribeResource: word {d.word}, but device 0 offers the fast path: "
                f"{offered0}, exportable: {d.exportable}"
            )
        expect_code(
            "CreateSemaphore with signal_path 7",
            lambda: c._call("CreateSemaphore", pb.CreateSemaphoreRequest(signal_path=7)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        if not d.exportable:
            expect_code(
                "fd.sock export with word of an unexportable semaphore",
                lambda: c.export(sem.id, word=True),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        else:
            with c.export(sem.id, word=True) as e:
                s = e.info.semaphore
                if s.word_exists != d.word or s.value != 2:
                    raise Fail(
                        f"fd.sock export with word: word_exists {s.word_exists} value {s.value}, "
                        f"expected {d.word} and 2"
                    )
                if s.word_exists:
                    ok = e.word_fd >= 0 and s.HasField("word") and s.word.allocation_size >= 8
                else:
                    ok = e.word_fd < 0 and not s.HasField("word")
                if not ok:
                    raise Fail(
                        f"fd.sock export with word: word_exists {s.word_exists}, word descriptor "
                        f"{e.word_fd}, word metadata {s.word if s.HasField('word') else None}"
                    )
        other.open(sem.id, signal=True, signal_path="semaphore")
        c.release(sem.id)


SCENARIOS = {
    "connect": connect,
    "session": session_scenario,
    "resources": resources,
    "export-redeem": export_redeem,
    "host-sync": host_sync,
    "fd-wait": fd_wait,
    "ops": ops,
    "tickets": tickets,
    "foreign": foreign,
    "extra-fds": extra_fds,
    "stream": stream_scenario,
    "fast-path": fast_path,
}


def run(args) -> None:
    # The gRPC runtime initialised (one channel opened and closed), then the baseline.
    with sessionless() as c:
        c.info()
    baseline = settled_fd_count()
    if len(args) == 1 and args[0] in SCENARIOS:
        SCENARIOS[args[0]]()
    elif len(args) == 4 and args[0] == "redeem-child":
        redeem_child(*args[1:])
    else:
        raise Fail(
            "usage: conformance.py <scenario> | redeem-child <ticket-hex> <id> <size>; "
            f"scenarios: {', '.join(SCENARIOS)}"
        )
    check_no_leaks(baseline)


def main() -> int:
    try:
        run(sys.argv[1:])
    except Skip as e:
        print(f"SKIP: {e}", file=sys.stderr)
        return EXIT_SKIP
    except Fail as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as e:  # anything the client raised that a scenario did not expect
        import traceback

        traceback.print_exc()
        print(f"FAIL: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_PASS


if __name__ == "__main__":
    sys.exit(main())
