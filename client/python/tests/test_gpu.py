"""GPU tests (the H100 suite): torch and CuPy processes sharing buffers, semaphores and images
through gpushare.cuda. Each prints `SKIP: <reason>` and skips where there is no CUDA GPU, torch,
CuPy or a daemon that exports timeline semaphores; under GPUSHARE_REQUIRE_GPU=1 that fails.

The processes are tests/gpu_peer.py (one role each); this process only drives the daemon.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import require_gpu

import gpushare
from gpushare import pb

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "gpu_peer.py")
ROUNDS = int(os.environ.get("GPUSHARE_PY_ROUNDS", "1000"))


def _probe(modules):
    code = "import " + ", ".join(modules) + "\n"
    if "torch" in modules:
        code += "assert torch.cuda.is_available(), 'torch sees no CUDA device'\n"
    code += "import gpushare.cuda as g; g._drv(); print(len(g._visible()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(HERE), timeout=120)
    if out.returncode != 0 or out.stdout.strip() in ("", "0"):
        return (out.stderr.strip().splitlines() or ["no CUDA device"])[-1]
    return None


@pytest.fixture(scope="module")
def gpu(daemon):
    """Skips (or fails under GPUSHARE_REQUIRE_GPU=1) unless CUDA, torch and a GPU daemon are
    here. Returns the daemon."""
    reason = _probe(["torch"])  # and gpushare.cuda's driver (cuda.bindings, or cuda-python's cuda.cuda)
    if reason:
        require_gpu(f"no CUDA GPU with torch and cuda-bindings: {reason}")
    with daemon.client() as c:
        sem = c.create_semaphore()
        try:
            c.export(sem).close()
        except gpushare.GpushareError as e:
            require_gpu(f"the daemon's device cannot export timeline semaphores: {e.message}")
    return daemon


def peer(daemon, *args, env=None, **kw):
    e = dict(os.environ, GPUSHARE_RUNTIME_DIR=daemon.runtime_dir)
    e.update(env or {})
    return subprocess.Popen([sys.executable, PEER, *map(str, args)], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and "OK" in out, f"rc {proc.returncode}\n{out}\n{err}"
    return out


def tickets(c, *resources):
    return [c.export_ticket(r).ticket.hex() for r in resources]


def test_torch_ping_pong_both_directions_1000_rounds(gpu):
    n = 1 << 18  # int32s per direction
    with gpu.client() as c:
        buf = c.create_buffer(2 * n * 4)
        sem = c.create_semaphore()
        a = peer(gpu, "ping", ROUNDS, n, *tickets(c, buf, sem))
        b = peer(gpu, "pong", ROUNDS, n, *tickets(c, buf, sem))
        out_b = finish(b)
        out_a = finish(a)
        assert "mismatches=0" in out_a and "mismatches=0" in out_b, out_a + out_b
        assert c.value(sem) == 2 * ROUNDS


def test_torch_ping_pong_on_the_fast_path(gpu):
    """The same through a semaphore with a memop word: both torch processes signal and wait
    on the word (the CUDA fast path), and the semaphore keeps up for the host."""
    n = 1 << 16
    with gpu.client() as c:
        fast = c.info().devices[0].fast_path
        if not fast.offered:
            require_gpu(f"the daemon does not offer the fast path: {fast.unavailable}")
        buf = c.create_buffer(2 * n * 4)
        sem = c.create_semaphore(word=True, signal_path="word")
        assert sem.semaphore.word, sem
        a = peer(gpu, "ping", ROUNDS, n, *tickets(c, buf, sem))
        b = peer(gpu, "pong", ROUNDS, n, *tickets(c, buf, sem))
        out_b = finish(b)
        out_a = finish(a)
        assert "mismatches=0" in out_a and "mismatches=0" in out_b, out_a + out_b
        assert "path=word" in out_a and "path=word" in out_b, out_a + out_b
        deadline = time.monotonic() + 5
        while c.value(sem) < 2 * ROUNDS and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.value(sem) == 2 * ROUNDS


def test_image_round_trip_through_a_cuda_surface(gpu):
    reason = _probe(["cupy", "numpy"])
    if reason:
        require_gpu(f"CuPy is not installed (or sees no GPU): {reason}")
    finish(peer(gpu, "image"))


def _daemon_fds(daemon):
    return len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))


def _sessions(c):
    return {s.id for s in c._call("ListSessions", pb.ListSessionsRequest()).sessions}


def test_sigkilled_consumer_returns_the_daemon_to_baseline(gpu):
    n = 1 << 16
    with gpu.client() as c:
        buf = c.create_buffer(2 * n * 4)
        sem = c.create_semaphore()
        hold_buf = c.create_buffer(1 << 20)
        hold_sem = c.create_semaphore()
        base_sessions = _sessions(c)
        base_resources = sorted(r.id for r in c.list())
        base_fds = _daemon_fds(gpu)
        holder = peer(gpu, "hold", *tickets(c, hold_buf, hold_sem))
        line = holder.stdout.readline()
        assert line.startswith("READY"), line + holder.stderr.read()
        held = _sessions(c) - base_sessions
        assert len(held) == 1, held  # the holder's session
        a = peer(gpu, "ping", 200, n, *tickets(c, buf, sem))
        b = peer(gpu, "pong", 200, n, *tickets(c, buf, sem))
        time.sleep(0.2)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        finish(b)
        out = finish(a)
        assert "mismatches=0" in out
        # Back to the baseline: the holder's and the peers' sessions end (earlier tests' may
        # end meanwhile too, hence subsets), and nobody's resources changed.
        deadline = time.monotonic() + 5
        while (not _sessions(c) <= base_sessions or _daemon_fds(gpu) > base_fds) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert _daemon_fds(gpu) <= base_fds, "the daemon kept descriptors of the killed process"
        assert _sessions(c) <= base_sessions and not held & _sessions(c)
        after = sorted(r.id for r in c.list())
        assert set(after) <= set(base_resources)
        assert {buf.id, sem.id, hold_buf.id, hold_sem.id} <= set(after)
        # The killed process's imports did not disturb the resources it held.
        c.write(hold_buf, 0, b"still here")
        assert c.read(hold_buf, 0, 10) == b"still here"
        assert c.signal(hold_sem, 1) == 1


def _uuid(dev):
    h = bytes(dev.device_uuid).hex()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def test_cuda_visible_devices_by_uuid_finds_the_device(gpu):
    with gpu.client() as c:
        dev = c.info().devices[0]
        buf = c.create_buffer(4096)
        (t,) = tickets(c, buf)
        finish(peer(gpu, "visible", t, env={"CUDA_VISIBLE_DEVICES": _uuid(dev)}))
        assert c.read(buf, 0, 16) == bytes(range(16))
        (t,) = tickets(c, buf)
        bogus = peer(gpu, "visible", t, env={"CUDA_VISIBLE_DEVICES": "GPU-00000000-0000-0000-0000-000000000000"})
        out, err = bogus.communicate(timeout=120)
        assert bogus.returncode != 0
        assert ("DeviceNotVisible" in err or "CudaUnavailable" in err), err
        assert _uuid(dev)[4:] in err, err  # the error names the exporting GPU


def test_warm_up_avoids_the_lazy_loading_block(gpu):
    with gpu.client() as c:
        sem = c.create_semaphore()
        (t,) = tickets(c, sem)
        finish(peer(gpu, "lazy", t, env={"CUDA_MODULE_LOADING": "LAZY"}), timeout=60)


def test_readme_example_runs(gpu):
    examples = os.path.join(os.path.dirname(HERE), "examples")
    env = dict(os.environ, GPUSHARE_RUNTIME_DIR=gpu.runtime_dir)
    prod = subprocess.Popen([sys.executable, os.path.join(examples, "producer.py")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = prod.stdout.readline()
    assert line.startswith("ticket"), line + prod.stderr.read()
    _, buf_t, sem_t = line.split()
    cons = subprocess.run([sys.executable, os.path.join(examples, "consumer.py"), buf_t, sem_t],
                          env=env, capture_output=True, text=True, timeout=120)
    out, err = prod.communicate(timeout=120)
    assert cons.returncode == 0 and "consumer: ok" in cons.stdout, cons.stdout + cons.stderr
    assert prod.returncode == 0, out + err
