"""Frame streams from Python, host-side (HOST points on lavapipe; point 0 everywhere): a producer
and two consumers in processes of their own moving frames through the daemon's Write/Read,
the daemon's refusals, the end of a stream, and a consumer killed while holding frames."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

import gpushare

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "stream_peer.py")
sys.path.insert(0, HERE)

from stream_peer import SLOT_BYTES, payload  # noqa: E402

FRAMES = 500


def peer(*args):
    return subprocess.Popen(
        [sys.executable, PEER, *map(str, args)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )


def line(proc, what, timeout=20.0):
    """The next stdout line of a peer (failing the test when it exits or stalls)."""
    result = []
    t = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    assert result and result[0], f"peer gave no {what} (exit {proc.poll()})"
    return result[0].strip()


def code(f, *args, **kw):
    with pytest.raises(gpushare.GpushareError) as e:
        f(*args, **kw)
    return e.value.code


@pytest.fixture
def second(daemon):
    with daemon.client(client_name="pytest second") as c:
        yield c


def test_producer_and_two_consumers_in_processes(daemon):
    procs = []
    try:
        producer = peer("producer", daemon.runtime_dir, FRAMES, 2)
        procs.append(producer)
        stream_id = line(producer, "stream id")
        fifo = peer("consumer", daemon.runtime_dir, stream_id, "fifo")
        mailbox = peer("consumer", daemon.runtime_dir, stream_id, "mailbox")
        procs += [fifo, mailbox]
        for p in (fifo, mailbox):
            assert line(p, "attach") == "attached"
        made = json.loads(line(producer, "result", 60))
        got_fifo = json.loads(line(fifo, "result", 30))
        got_mailbox = json.loads(line(mailbox, "result", 30))
        for p in procs:
            assert p.wait(10) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    print(f"{FRAMES} frames in {made['elapsed']:.2f} s, producer stalls {made['stalls']}, "
          f"mailbox saw {len(got_mailbox['seen'])}")
    assert made["presented"] == FRAMES
    # FIFO: every frame, in order, each with its own contents.
    assert got_fifo["seen"] == list(range(1, FRAMES + 1))
    assert got_fifo["bad"] == []
    # Mailbox: newer frames only, each read intact (the slot is not reused while held).
    seen = got_mailbox["seen"]
    assert seen and all(a < b for a, b in zip(seen, seen[1:]))
    assert got_mailbox["bad"] == []


def test_refusals(client, second):
    assert code(client.create_stream, 1, buffer_size=64) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(client.create_stream, 65, buffer_size=64) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ValueError):
        client.create_stream(2)
    with client.create_stream(2, buffer_size=64) as p:
        assert not p.gpu_points  # lavapipe: HOST points
        assert len(p.slot_ids) == 2 and p.attachment.role == gpushare.pb.STREAM_ROLE_PRODUCER
        assert code(second.attach_consumer, p.id, limit=0) == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ValueError):
            second.attach_consumer(p.id, mode="lifo")
        unknown = "str-" + "0" * 32  # well-formed, nobody's
        assert code(second.attach_consumer, unknown) == grpc.StatusCode.NOT_FOUND
        assert code(second.describe_stream, unknown) == grpc.StatusCode.NOT_FOUND
        assert code(second.attach_producer, unknown) == grpc.StatusCode.NOT_FOUND
        # An id that is not one at all.
        assert code(second.attach_consumer, "str-nothex") == grpc.StatusCode.INVALID_ARGUMENT
        # The stream has a producer already.
        assert code(second.attach_producer, p.id) == grpc.StatusCode.FAILED_PRECONDITION
        with second.attach_consumer(p.id, "fifo", limit=1) as con:
            assert con.attachment.role == gpushare.pb.STREAM_ROLE_CONSUMER
            assert con.slot_ids == p.slot_ids
            # Nothing presented: an acquire of 0 ms answers at once.
            assert code(con.acquire_frame, 0) == grpc.StatusCode.DEADLINE_EXCEEDED
            assert code(con.release_frame, 0) == grpc.StatusCode.FAILED_PRECONDITION
            grant = p.acquire_slot(1000)
            assert code(p.present, grant, user_data=bytes(257)) == grpc.StatusCode.INVALID_ARGUMENT
            # Presenting a slot the producer does not hold.
            assert code(p.present, 1 - grant.slot) == grpc.StatusCode.FAILED_PRECONDITION
            presented = p.present(grant, number=7, timestamp_ns=123, user_data=bytes(256))
            assert presented.sequence == 1 and presented.ready_value >= 1
            assert code(p.present, grant) == grpc.StatusCode.FAILED_PRECONDITION  # presented already
            frame = con.acquire_frame(1000, host_wait=True)
            assert (frame.slot, frame.sequence) == (grant.slot, 1)
            assert frame.metadata.number == 7 and frame.metadata.timestamp_ns == 123
            assert frame.metadata.user_data == bytes(256)
            assert frame.ready.value == presented.ready_value
            # limit 1: a second frame may not be held at once.
            p.present(p.acquire_slot(1000))
            assert code(con.acquire_frame, 0) == grpc.StatusCode.FAILED_PRECONDITION
            released = con.release_frame(frame)
            assert released >= 1
            assert code(con.release_frame, frame) == grpc.StatusCode.FAILED_PRECONDITION
            info = client.describe_stream(p.id)
            assert info.frames_presented == 2 and len(info.consumers) == 1
            assert info.consumers[0].mode == gpushare.pb.DELIVERY_MODE_FIFO
            assert [s.id for s in client.streams()].count(p.id) == 1
        # Detached at the block's end.
        assert len(client.describe_stream(p.id).consumers) == 0
        assert code(con.acquire_frame, 0) == grpc.StatusCode.NOT_FOUND


def test_aborted_after_the_producer_detaches(client, second):
    p = client.create_stream(3, buffer_size=SLOT_BYTES)
    con = second.attach_consumer(p.id, "fifo", limit=1)
    idle = second.attach_consumer(p.id, "mailbox", limit=1)
    for n in (1, 2):
        grant = p.acquire_slot(1000)
        client.write(p.slot_ids[grant.slot], 0, payload(n))
        p.present(grant, number=n)
    info = p.detach()
    assert info.ended
    assert p.detach() is info  # idempotent
    assert code(second.attach_consumer, p.id) == grpc.StatusCode.ABORTED
    # FIFO drains the frames presented, then ABORTED.
    for n in (1, 2):
        frame = con.acquire_frame(1000)
        assert frame.metadata.number == n
        assert second.read(con.slot_ids[frame.slot], 0, SLOT_BYTES) == payload(n)
        con.release_frame(frame)
    assert code(con.acquire_frame, 1000) == grpc.StatusCode.ABORTED
    # Mailbox: the frames not taken are not drained.
    assert code(idle.acquire_frame, 1000) == grpc.StatusCode.ABORTED
    con.detach()
    idle.detach()


def test_a_parked_acquire_ends_with_the_stream(client, second):
    p = client.create_stream(2, buffer_size=SLOT_BYTES)
    with second.attach_consumer(p.id, "fifo") as con:
        got = []
        t = threading.Thread(target=lambda: got.append(code(con.acquire_frame, 10000)))
        t.start()
        time.sleep(0.2)
        start = time.monotonic()
        p.detach()
        t.join(5)
        assert got == [grpc.StatusCode.ABORTED]
        assert time.monotonic() - start < 2


def test_a_release_does_not_wait_behind_a_parked_acquire(client, second):
    with client.create_stream(2, buffer_size=SLOT_BYTES) as p, \
            second.attach_consumer(p.id, "fifo", limit=2) as con:
        p.present(p.acquire_slot(1000), number=1)
        frame = con.acquire_frame(1000)
        # Another thread parks an acquire on the same consumer...
        got = []
        t = threading.Thread(target=lambda: got.append(con.acquire_frame(5000)))
        t.start()
        time.sleep(0.2)
        # ...while this one releases its frame: answered at once, on a connection of its own.
        start = time.monotonic()
        con.release_frame(frame)
        assert time.monotonic() - start < 1.0 and not got
        p.present(p.acquire_slot(1000), number=2)
        t.join(5)
        assert got and got[0].metadata.number == 2
        con.release_frame(got[0])


class Interrupted(Exception):
    pass


def test_an_interrupted_acquire_loses_no_frame(client, second):
    """A signal handler's exception (KeyboardInterrupt, say) in a parked acquire: the daemon
    still hands it the next frame, so the client keeps the connection and the next acquire
    answers with that frame."""

    def interrupt(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with client.create_stream(2, buffer_size=SLOT_BYTES) as p, \
                second.attach_consumer(p.id, "fifo", limit=1) as con:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupted):
                con.acquire_frame(5000)
            p.present(p.acquire_slot(1000), number=1)
            frame = con.acquire_frame(1000)
            assert frame.metadata.number == 1
            con.release_frame(frame)
            p.present(p.acquire_slot(1000), number=2)
            assert con.acquire_frame(1000).metadata.number == 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_killed_consumer_frees_the_producer(daemon, client):
    p = client.create_stream(2, buffer_size=SLOT_BYTES)
    holder = peer("holder", daemon.runtime_dir, p.id, 2)
    try:
        assert line(holder, "attach") == "attached"
        for n in (1, 2):
            p.present(p.acquire_slot(1000), number=n)
        assert line(holder, "frames held") == "held"
        # Both slots are held: the producer's acquire waits...
        assert code(p.acquire_slot, 100) == grpc.StatusCode.DEADLINE_EXCEEDED
        got = []
        t = threading.Thread(target=lambda: got.append(p.acquire_slot(10000)))
        t.start()
        time.sleep(0.2)
        assert not got
        # ...until the consumer dies: its frames are released at once.
        start = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        t.join(5)
        elapsed = time.monotonic() - start
        assert got and got[0].slot in (0, 1), "the producer's acquire did not return"
        assert elapsed < 2.0, f"the producer waited {elapsed:.2f} s after the kill"
        print(f"the producer's acquire returned {elapsed * 1000:.0f} ms after the SIGKILL")
        assert len(client.describe_stream(p.id).consumers) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    p.detach()


def test_attach_producer_and_image_slots(client, second):
    info = client.create_stream(2, image={"format": "rgba8unorm", "width": 4, "height": 4},
                                no_producer=True)
    assert not info.has_producer and info.image.width == 4
    with second.attach_producer(info.id) as p:
        assert client.describe_stream(info.id).has_producer
        with client.attach_consumer(info.id, "mailbox", limit=2) as con:
            grant = p.acquire_slot(1000)
            image = second.image(p.slot_ids[grant.slot])
            pixels = bytes(range(64))
            image.write(pixels)
            p.present(grant)
            frame = con.acquire_frame(1000)
            assert client.image(con.slot_ids[frame.slot]).read() == pixels
            con.release_frame(frame)


def test_kept_connection_outlives_the_daemons_idle_timeout(client, second):
    # conftest sets fd_idle_timeout_ms = 500: the daemon closes each role's idle connection,
    # and the next call goes out again, once, on a new one.
    from conftest import FD_IDLE_TIMEOUT_MS

    with client.create_stream(2, buffer_size=SLOT_BYTES) as p, \
            second.attach_consumer(p.id, "fifo") as con:
        assert code(con.acquire_frame, 0) == grpc.StatusCode.DEADLINE_EXCEEDED
        p.present(p.acquire_slot(1000), number=1)
        before = (p._role._idle[0], con._role._idle[0])
        time.sleep(FD_IDLE_TIMEOUT_MS / 1000 + 0.3)
        p.present(p.acquire_slot(1000), number=2)
        frame = con.acquire_frame(1000)
        assert frame.metadata.number == 1
        con.release_frame(frame)
        # Both went out on new connections.
        assert before[0] not in p._role._idle and before[1] not in con._role._idle
        assert before[0].fileno() == -1 and before[1].fileno() == -1  # closed


def test_async_producer_and_consumer(daemon):
    import asyncio

    frames = 100

    async def main():
        async with gpushare.AsyncClient(daemon.runtime_dir, client_name="aio producer") as pc, \
                gpushare.AsyncClient(daemon.runtime_dir, client_name="aio consumer") as cc:
            async with await pc.create_stream(3, buffer_size=SLOT_BYTES) as p:
                assert (await cc.describe_stream(p.id)).id == p.id
                assert p.id in [s.id for s in await cc.streams()]
                unknown = "str-" + "0" * 32
                with pytest.raises(gpushare.GpushareError) as e:
                    await cc.attach_consumer(unknown)
                assert e.value.code == grpc.StatusCode.NOT_FOUND
                con = await cc.attach_consumer(p.id, "fifo", limit=2)
                async with con:
                    with pytest.raises(gpushare.GpushareError) as e:
                        await con.acquire_frame(0)
                    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

                    async def produce():
                        for n in range(1, frames + 1):
                            grant = await p.acquire_slot(5000)
                            await pc.write(p.slot_ids[grant.slot], 0, payload(n))
                            await p.present(grant, number=n)
                        await p.detach()

                    async def consume():
                        seen = []
                        while True:
                            try:
                                frame = await con.acquire_frame(5000)
                            except gpushare.GpushareError as e:
                                assert e.code == grpc.StatusCode.ABORTED
                                return seen
                            data = await cc.read(con.slot_ids[frame.slot], 0, SLOT_BYTES)
                            assert data == payload(frame.metadata.number)
                            seen.append(frame.metadata.number)
                            await con.release_frame(frame)

                    _, seen = await asyncio.gather(produce(), consume())
                    assert seen == list(range(1, frames + 1))
                assert con.detached and p.detached

    asyncio.run(asyncio.wait_for(main(), 30))


def test_readme_stream_examples(daemon):
    examples = os.path.join(os.path.dirname(HERE), "examples")
    env = dict(os.environ, GPUSHARE_RUNTIME_DIR=daemon.runtime_dir,
               PYTHONPATH=os.path.dirname(HERE))
    prod = subprocess.Popen([sys.executable, os.path.join(examples, "stream_producer.py")],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        stream_id = line(prod, "stream id")
        cons = subprocess.run([sys.executable, os.path.join(examples, "stream_consumer.py"),
                               stream_id], env=env, capture_output=True, text=True, timeout=30)
        assert prod.wait(10) == 0
    finally:
        if prod.poll() is None:
            prod.kill()
            prod.wait()
    assert cons.returncode == 0, cons.stderr
    assert cons.stdout.splitlines() == [f"{n}: frame {n}" for n in range(1, 6)]


def test_async_release_while_an_acquire_is_parked(daemon):
    import asyncio

    async def main():
        async with gpushare.AsyncClient(daemon.runtime_dir) as pc, \
                gpushare.AsyncClient(daemon.runtime_dir) as cc:
            async with await pc.create_stream(2, buffer_size=SLOT_BYTES) as p, \
                    await cc.attach_consumer(p.id, "fifo", limit=2) as con:
                await p.present(await p.acquire_slot(1000), number=1)
                frame = await con.acquire_frame(1000)
                parked = asyncio.ensure_future(con.acquire_frame(5000))
                await asyncio.sleep(0.2)
                await asyncio.wait_for(con.release_frame(frame), 1.0)
                assert not parked.done()
                await p.present(await p.acquire_slot(1000), number=2)
                assert (await asyncio.wait_for(parked, 5)).metadata.number == 2
                # A cancelled acquire: the daemon still hands the next frame to it (even were
                # its connection closed: the frame would be held and lost); the client keeps
                # that reply for the next acquire.
                waiting = asyncio.ensure_future(con.acquire_frame(5000))
                await asyncio.sleep(0.1)
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                await p.present(await p.acquire_slot(1000), number=3)
                await con.release_frame((await asyncio.wait_for(parked, 1)).slot)
                assert (await con.acquire_frame(1000)).metadata.number == 3
                held = (await cc.describe_stream(p.id)).consumers[0].held
                assert held == 1
                # The kept connections outlive the daemon's idle timeout (sent again, once).
                from conftest import FD_IDLE_TIMEOUT_MS

                kept = (p._role._sock, con._role._sock)
                assert None not in kept
                await asyncio.sleep(FD_IDLE_TIMEOUT_MS / 1000 + 0.3)
                await p.present(await p.acquire_slot(1000), number=4)
                assert (await con.acquire_frame(1000)).metadata.number == 4
                assert p._role._sock is not kept[0] and con._role._sock is not kept[1]

    asyncio.run(asyncio.wait_for(main(), 30))


def test_cuda_roles_refuse_host_points_and_check_their_arguments(client, second):
    """gpushare.cuda's GPU-side roles without a GPU (no driver needed): HOST points are refused
    before anything is redeemed (the tickets stay good), as are the wrong role and a detached
    one. test_cuda_fake_driver.py has their call sequences; test_gpu_streams.py the GPU."""
    import gpushare.cuda as gcuda

    with client.create_stream(2, buffer_size=64) as producer:
        consumer = second.attach_consumer(producer.id)
        assert not producer.gpu_points  # lavapipe: HOST points
        for cls, role in ((gcuda.CudaProducer, producer), (gcuda.CudaConsumer, consumer)):
            with pytest.raises(gcuda.HostPointsError, match="HOST points.*host_fallback=True"):
                cls(role)
        with pytest.raises(TypeError, match="Producer"):
            gcuda.CudaProducer(consumer)
        with pytest.raises(TypeError, match="Consumer"):
            gcuda.CudaConsumer(producer)
        assert issubclass(gcuda.HostPointsError, ValueError)
        for exported in producer.import_slots() + consumer.import_slots():
            exported.close()  # nothing was redeemed by the refusals
        consumer.detach()
        with pytest.raises(ValueError, match="detached"):
            gcuda.CudaConsumer(consumer, host_fallback=True)
