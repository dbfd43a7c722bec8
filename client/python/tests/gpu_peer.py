"""The processes of the GPU tests (tests/test_gpu.py), one role each:

  ping ROUNDS N BUF_TICKET SEM_TICKET     torch: writes region X (pattern r), signals 2r+1,
                                          waits 2r+2, checks region Y; prints mismatches
  pong ROUNDS N BUF_TICKET SEM_TICKET     torch: waits 2r+1, checks X, writes Y, signals 2r+2
  hold BUF_TICKET SEM_TICKET              imports both, leaves a wait pending, prints READY
  image                                   CuPy surface round trip of an image of its own
  visible BUF_TICKET                      imports by UUID (CUDA_VISIBLE_DEVICES set by the test)
  lazy SEM_TICKET                         warm_up, then a wait pending before a kernel launch

Tickets are hex. GPUSHARE_RUNTIME_DIR names the daemon. Prints `OK ...` on success.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gpushare  # noqa: E402
import gpushare.cuda as gcuda  # noqa: E402


def pattern(torch, base, r, salt):
    return base * 7 + (r * 13 + salt)


def redeem(c, *tickets):
    """Redeemed before torch is imported: tickets expire (limits.ticket_ttl_ms). A semaphore
    comes with its memop word when it has one (import_semaphore then takes the fast path)."""
    return [c.redeem(bytes.fromhex(t), word=True) for t in tickets]


def ping_pong(role, rounds, n, buf_ticket, sem_ticket):
    with gpushare.Client(client_name=role) as c:
        buf_fd, sem_fd = redeem(c, buf_ticket, sem_ticket)
        import torch

        buf = gcuda.import_buffer(buf_fd)
        sem = gcuda.import_semaphore(sem_fd)
        dev = torch.device(f"cuda:{buf.device}")
        torch.cuda.set_device(dev)
        x = buf.as_tensor(torch.int32, n, 0)        # one import, two tensors
        y = buf.as_tensor(torch.int32, n, n * 4)
        base = torch.arange(n, dtype=torch.int32, device=dev)
        bad = torch.zeros((), dtype=torch.int64, device=dev)
        stream = torch.cuda.Stream(device=dev)
        # Lazy loading: run every kernel once before any semaphore wait is pending, on the
        # stream the loop uses (the caching allocator keeps its blocks per stream).
        with torch.cuda.stream(stream):
            gcuda.warm_up(lambda: bad.add_((pattern(torch, base, 0, 1) != base).sum()),
                          lambda: torch.empty_like(base).copy_(base), lambda: bad.zero_())
        start = time.perf_counter()
        with torch.cuda.stream(stream):
            for r in range(rounds):
                if role == "ping":
                    if r:
                        sem.wait(2 * r, stream)
                        bad += (y != pattern(torch, base, r - 1, 2)).sum()
                    x.copy_(pattern(torch, base, r, 1))
                    sem.signal(2 * r + 1, stream)
                else:
                    sem.wait(2 * r + 1, stream)
                    bad += (x != pattern(torch, base, r, 1)).sum()
                    y.copy_(pattern(torch, base, r, 2))
                    sem.signal(2 * r + 2, stream)
            if role == "ping":
                sem.wait(2 * rounds, stream)
                bad += (y != pattern(torch, base, rounds - 1, 2)).sum()
        stream.synchronize()
        elapsed = time.perf_counter() - start
        mismatches = int(bad.item())
        del x, y
        sem.close()
        print(f"OK {role} rounds={rounds} mismatches={mismatches} seconds={elapsed:.3f} "
              f"path={sem.path}", flush=True)
        return 0 if mismatches == 0 else 1


def hold(buf_ticket, sem_ticket):
    with gpushare.Client(client_name="hold") as c:
        buf_fd, sem_fd = redeem(c, buf_ticket, sem_ticket)
        import torch

        buf = gcuda.import_buffer(buf_fd)
        sem = gcuda.import_semaphore(sem_fd)
        t = buf.as_tensor(torch.uint8)
        s = torch.cuda.Stream(device=f"cuda:{buf.device}")
        sem.wait(1 << 40, s)  # never signaled: pending when SIGKILL comes
        print("READY", t.numel(), flush=True)
        time.sleep(600)
    return 0


def image():
    import cupy
    import numpy

    src = r"""
    extern "C" __global__ void roundtrip(cudaSurfaceObject_t surf, unsigned int* out, int w, int h) {
        int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
        if (x >= w || y >= h) return;
        uchar4 v;
        surf2Dread(&v, surf, x * 4, y);  // the form of the CUDA programming guide
        out[y * w + x] = v.x | (v.y << 8) | (v.z << 16) | ((unsigned)v.w << 24);
        uchar4 n = make_uchar4(255 - v.x, 255 - v.y, 255 - v.z, 255 - v.w);
        surf2Dwrite(n, surf, x * 4, y);
    }
    """
    w, h = 64, 32
    with gpushare.Client(client_name="image") as c:
        img = c.create_image("rgba8unorm", w, h, mip_levels=2)
        data = (numpy.arange(w * h * 4, dtype=numpy.uint32) * 7 % 251).astype(numpy.uint8)
        img.write(data.tobytes(), level=0)
        cimg = gcuda.import_image(img.export())
        surf = cimg.surface(0)
        tex = cimg.texture()  # the whole chain: created and destroyed without error
        out = cupy.zeros(w * h, dtype=cupy.uint32)
        with cupy.cuda.Device(cimg.device):
            kernel = cupy.RawKernel(src, "roundtrip")
            kernel(((w + 15) // 16, (h + 15) // 16), (16, 16),
                   (numpy.uint64(surf.handle), out, numpy.int32(w), numpy.int32(h)))
            cupy.cuda.Device(cimg.device).synchronize()
        got = cupy.asnumpy(out).view(numpy.uint8)
        assert numpy.array_equal(got, data), "CUDA read other texels than the daemon wrote"
        back = numpy.frombuffer(img.read(level=0), dtype=numpy.uint8)
        assert numpy.array_equal(back, 255 - data), "the daemon read other texels than CUDA wrote"
        tex.close()
        surf.close()
        cimg.close()
        print("OK image", w, h, flush=True)
    return 0


def visible(buf_ticket):
    with gpushare.Client(client_name="visible") as c:
        (buf_fd,) = redeem(c, buf_ticket)
        import torch

        buf = gcuda.import_buffer(buf_fd)
        t = buf.as_tensor(torch.uint8, 16)
        t.copy_(torch.arange(16, dtype=torch.uint8, device=t.device))
        torch.cuda.synchronize()
        print("OK visible", buf.device, os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
    return 0


def lazy(sem_ticket):
    """A wait pending on the stream, then the first launch of a kernel: with warm_up before,
    the launch returns at once (no module load), and the daemon's signal releases the wait."""
    import threading

    with gpushare.Client(client_name="lazy") as c:
        (exported,) = redeem(c, sem_ticket)
        import torch

        sem_id = exported.info.resource_id
        sem = gcuda.import_semaphore(exported)
        a = torch.ones(1 << 20, device="cuda")
        s = torch.cuda.Stream()
        # 1. The pitfall, made harmless by a signal from another thread (gRPC, no CUDA) 0.5 s
        #    later: a kernel never launched before, behind a pending wait. Informational: the
        #    time shows whether this driver blocked the launch.
        with torch.cuda.stream(s):
            sem.wait(1, s)
            later = threading.Timer(0.5, c.signal, (sem_id, 1))
            later.start()
            t0 = time.perf_counter()
            torch.special.i0e(a)
            cold = time.perf_counter() - t0
            later.join()
        s.synchronize()
        # 2. The remedy: warm_up before the wait; the launch must not block (no signal comes
        #    until it returned: blocking here would be the deadlock).
        with torch.cuda.stream(s):
            gcuda.warm_up(lambda: torch.special.erfcx(a))  # a kernel nothing else here uses
            sem.wait(2, s)
            t0 = time.perf_counter()
            b = torch.special.erfcx(a)
            launch = time.perf_counter() - t0
        assert launch < 1.0, f"the launch blocked {launch:.3f} s behind a pending wait"
        c.signal(sem_id, 2)
        s.synchronize()
        assert float(b[0]) > 0
        sem.close()
        print(f"OK lazy cold_launch_behind_wait_ms={cold * 1e3:.1f} "
              f"warm_launch_behind_wait_ms={launch * 1e3:.3f}", flush=True)
    return 0


def main(argv):
    role = argv[0]
    if role in ("ping", "pong"):
        return ping_pong(role, int(argv[1]), int(argv[2]), argv[3], argv[4])
    if role == "hold":
        return hold(argv[1], argv[2])
    if role == "image":
        return image()
    if role == "visible":
        return visible(argv[1])
    if role == "lazy":
        return lazy(argv[1])
    raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
