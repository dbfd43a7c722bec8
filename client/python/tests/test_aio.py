"""AsyncClient against the real daemon: host-side calls, export/redeem and fd waits, and the
event loop staying free while they wait."""

import asyncio
import os

import grpc
import pytest

import gpushare
from gpushare import pb


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_async_calls_and_session(daemon):
    async def main():
        async with gpushare.AsyncClient(daemon.runtime_dir, client_name="aio") as c:
            assert c.session_active and c.session_id
            info = await c.info()
            assert info.devices
            buf = await c.create_buffer(4096, name=f"aio-{os.getpid()}")
            await c.write(buf, 0, b"hello async")
            assert await c.read(buf, 0, 11) == b"hello async"
            await c.fill(buf, 16, 16, 0x01020304)
            assert (await c.read(buf, 16, 4)) == bytes([4, 3, 2, 1])
            other = await c.create_buffer(4096)
            await c.copy(buf, 0, other, 0, 11)
            assert await c.read(other, 0, 11) == b"hello async"
            sem = await c.create_semaphore(initial=1)
            assert await c.value(sem) == 1
            assert await c.signal(sem, 2) == 2
            assert await c.wait(sem, 2, timeout_ms=100) == 2
            assert {r.id for r in await c.list()} >= {buf.id, other.id, sem.id}
            assert (await c.describe(buf)).id == buf.id
            with pytest.raises(gpushare.GpushareError) as e:
                await c.signal(sem, 1)
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
            token = await c.create_token(buf)
            assert len(token) == 16
            img = await c.create_image("rgba8unorm", 8, 8)
            assert img.kind == pb.RESOURCE_KIND_IMAGE
            with await c.create_host_buffer(1 << 16) as host:
                host.write(0, b"x" * 100)
                await c.write_from_host(buf, 0, host, 0, 100)
                await c.read_into_host(buf, 0, 100, host, 1000)
                assert host.read(1000, 100) == b"x" * 100
            assert await c.release(other)
            return buf.id

        # the session ended with the client: its buffer is gone

    buf_id = run(main())

    async def gone():
        async with gpushare.AsyncClient(daemon.runtime_dir) as c:
            for _ in range(100):
                try:
                    await c.describe(buf_id)
                except gpushare.GpushareError as e:
                    return e.code
                await asyncio.sleep(0.02)
        return None

    assert run(gone()) == grpc.StatusCode.NOT_FOUND


def test_async_export_redeem_and_fd_wait_do_not_block_the_loop(daemon):
    async def main():
        async with gpushare.AsyncClient(daemon.runtime_dir) as a, gpushare.AsyncClient(
            daemon.runtime_dir
        ) as b:
            buf = await a.create_buffer(1 << 16)
            await a.write(buf, 0, b"shared")
            with await a.export(buf) as exp:
                assert exp.fd >= 0 and exp.info.resource_id == buf.id
                assert exp.info.buffer.size == 1 << 16
            ticket = await a.export_ticket(buf)
            with await b.redeem(ticket.ticket) as exp:
                assert exp.info.resource_id == buf.id
            with pytest.raises(gpushare.GpushareError):
                await b.redeem(ticket.ticket)  # one-time

            sem = await a.create_semaphore()
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.005)

            t = asyncio.ensure_future(ticker())
            waiter = asyncio.ensure_future(b.fd_wait(sem, 5, timeout_ms=5000))
            await asyncio.sleep(0.2)
            assert not waiter.done()
            before = ticks
            assert before >= 10, "the event loop was blocked while fd_wait waited"
            await a.signal(sem, 5)
            assert await waiter == 5
            with pytest.raises(gpushare.GpushareError) as e:
                await b.fd_wait(sem, 9, timeout_ms=50)
            assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            # the gRPC wait does not block the loop either
            w2 = asyncio.ensure_future(b.wait(sem, 6, timeout_ms=5000))
            await asyncio.sleep(0.1)
            assert not w2.done() and ticks > before + 5
            await a.signal(sem, 6)
            assert await w2 == 6
            values = []
            async for v in a.watch(sem):
                values.append(v)
                if v == 6:
                    await a.signal(sem, 7)
                if v == 7:
                    break
            assert values == [6, 7]
            t.cancel()

    run(main())


def test_async_fd_wait_cancelled_leaks_nothing(daemon):
    def fds():
        return len(os.listdir("/proc/self/fd"))

    async def main():
        async with gpushare.AsyncClient(daemon.runtime_dir) as c:
            sem = await c.create_semaphore()
            await c.info()
            base = fds()
            task = asyncio.ensure_future(c.fd_wait(sem, 1, timeout_ms=10000))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert fds() == base

    run(main())
