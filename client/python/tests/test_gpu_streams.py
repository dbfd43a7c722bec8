"""GPU frame streams from Python (the H100 suite): gpushare.cuda.CudaProducer / CudaConsumer in
torch processes of their own (tests/gpu_stream_peer.py): a producer whose torch kernel writes
each frame into the slot tensor after the grant's release points (waited for on its stream), a
FIFO and a mailbox consumer checking every byte on their streams after the ready point, 500
frames; a consumer SIGKILLed with a release point still pending on its GPU and a frame held
does not hang the producer; the README's torch producer and consumer. Each prints
`SKIP: <reason>` and skips where there is no CUDA GPU, torch, or a daemon whose streams have
GPU points; under GPUSHARE_REQUIRE_GPU=1 that fails. Without a GPU, test_cuda_fake_driver.py
checks the same roles' call sequences and test_streams.py their refusals."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from conftest import require_gpu
from test_gpu import _probe

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "gpu_stream_peer.py")
FRAMES = int(os.environ.get("GPUSHARE_PY_STREAM_FRAMES", "500"))
SLOT_BYTES = 256 << 10
SPIN = 200_000  # GPU cycles per frame of each role's work before it touches the slot


@pytest.fixture(scope="module")
def gpu(daemon):
    reason = _probe(["torch"])
    if reason:
        require_gpu(f"no CUDA GPU with torch and cuda-bindings: {reason}")
    with daemon.client() as c:
        with c.create_stream(2, buffer_size=64) as p:
            if not p.gpu_points:
                require_gpu("the daemon's streams have HOST points (no timeline semaphore export)")
    return daemon


def peer(daemon, *args):
    env = dict(os.environ, GPUSHARE_RUNTIME_DIR=daemon.runtime_dir)
    return subprocess.Popen([sys.executable, PEER, *map(str, args)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def line(proc, what, timeout=120.0):
    """The next stdout line of a peer (failing the test when it exits or stalls)."""
    result = []
    t = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not (result and result[0]):
        if proc.poll() is None:
            proc.kill()
        pytest.fail(f"peer gave no {what} (exit {proc.wait()}): {proc.stderr.read()}")
    return result[0].strip()


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and "OK" in out, f"rc {proc.returncode}\n{out}\n{err}"
    return out


def _kill_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_torch_producer_fifo_and_mailbox_consumers_500_frames(gpu):
    procs = []
    try:
        producer = peer(gpu, "producer", gpu.runtime_dir, FRAMES, 2, SLOT_BYTES, SPIN)
        procs.append(producer)
        stream_id = line(producer, "stream id")
        fifo = peer(gpu, "consumer", gpu.runtime_dir, stream_id, "fifo", SPIN)
        mailbox = peer(gpu, "consumer", gpu.runtime_dir, stream_id, "mailbox", SPIN)
        procs += [fifo, mailbox]
        for p in (fifo, mailbox):
            assert line(p, "attach") == "attached"
        made = finish(producer)
        got_fifo = finish(fifo)
        got_mailbox = finish(mailbox)
    finally:
        _kill_all(procs)
    print(made, got_fifo, got_mailbox)
    assert f"OK produced {FRAMES}" in made
    # FIFO: every frame, in order (checked in the peer), every byte right.
    assert f"OK consumed {FRAMES} last {FRAMES} mismatched_frames 0 bad_user_data 0" in got_fifo
    # Mailbox: newer frames only (checked in the peer), each right.
    assert "mismatched_frames 0 bad_user_data 0" in got_mailbox
    assert "OK consumed 0 " not in got_mailbox, got_mailbox


def test_killed_consumer_does_not_hang_the_producer(gpu):
    procs = []
    try:
        producer = peer(gpu, "producer", gpu.runtime_dir, FRAMES, 2, SLOT_BYTES, 0)
        procs.append(producer)
        stream_id = line(producer, "stream id")
        good = peer(gpu, "consumer", gpu.runtime_dir, stream_id, "fifo", 0)
        victim = peer(gpu, "victim", gpu.runtime_dir, stream_id, 20)
        procs += [good, victim]
        assert line(good, "attach") == "attached"
        assert line(victim, "attach") == "attached"
        # It released a frame whose release point its GPU reaches only seconds later, and holds
        # another; the producer's GPU waits on that point (FIFO: and it stalls on the host).
        assert line(victim, "stuck") == "stuck"
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        # The daemon detaches it: its frames go back, its release timeline is poisoned, so the
        # producer's pending GPU wait passes and its parked acquire is answered.
        made = finish(producer, timeout=120)
        got = finish(good, timeout=60)
    finally:
        _kill_all(procs)
    assert f"OK produced {FRAMES}" in made
    assert f"OK consumed {FRAMES} last {FRAMES} mismatched_frames 0 bad_user_data 0" in got
    with gpu.client() as c:
        info = c.describe_stream(stream_id) if any(s.id == stream_id for s in c.streams()) else None
        assert info is None or not info.consumers


def test_readme_cuda_stream_example_runs(gpu):
    examples = os.path.join(os.path.dirname(HERE), "examples")
    env = dict(os.environ, GPUSHARE_RUNTIME_DIR=gpu.runtime_dir)
    prod = subprocess.Popen([sys.executable, os.path.join(examples, "cuda_stream_producer.py")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stream_id = line(prod, "stream id")
        cons = subprocess.run(
            [sys.executable, os.path.join(examples, "cuda_stream_consumer.py"), stream_id],
            env=env, capture_output=True, text=True, timeout=180,
        )
        out, err = prod.communicate(timeout=120)
    finally:
        _kill_all([prod])
    assert cons.returncode == 0, cons.stdout + cons.stderr
    assert "consumer: 100 frames ok" in cons.stdout, cons.stdout + cons.stderr
    assert prod.returncode == 0, out + err
