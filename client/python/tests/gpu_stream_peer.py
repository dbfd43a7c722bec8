"""The processes of the GPU stream tests (tests/test_gpu_streams.py), one role each, with
gpushare.cuda's CudaProducer / CudaConsumer and torch:

  producer RUNTIME_DIR FRAMES CONSUMERS SLOT_BYTES SPIN
      creates a 4-slot stream, prints its id, waits for CONSUMERS consumers, then for each frame
      n: acquire (the grant's release points waited for on its stream), a torch kernel writes
      frame n's pattern into the slot tensor, present (ready point signaled on the stream).
      Prints `OK produced ...`.
  consumer RUNTIME_DIR STREAM_ID fifo|mailbox SPIN
      acquires frames until the stream ends (ready point waited for on its stream), checks each
      byte for byte on the GPU (no host sync per frame) and its order and user data on the
      host, releases it (release point signaled on its stream). Prints `OK consumed ...`.
  victim RUNTIME_DIR STREAM_ID KEEP
      a FIFO consumer (limit 2) that consumes KEEP frames, then releases a frame whose release
      point comes after a kernel of seconds, acquires one more, prints `stuck` and sleeps
      until killed.

SPIN: GPU clock cycles (torch.cuda._sleep) each frame's work spins before touching the slot,
so the GPU runs behind the host calls: a missing GPU wait would show as a wrong byte. A frame's
pattern: int32 word i of frame n is n * words + i (unique per frame and word).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc  # noqa: E402

import gpushare  # noqa: E402
import gpushare.cuda as gcuda  # noqa: E402

TIMEOUT_MS = 60_000


def say(*words):
    print(*words, flush=True)


def setup(torch, role):
    """The device, the role's stream, the pattern's base (int32 word indices) and a scratch."""
    dev = torch.device(f"cuda:{role.buffers[0].device}")
    torch.cuda.set_device(dev)
    stream = torch.cuda.Stream(device=dev)
    words = role.buffers[0].nbytes // 4
    base = torch.arange(words, dtype=torch.int32, device=dev)
    return dev, stream, words, base, torch.empty_like(base)


def producer(runtime_dir, frames, consumers, slot_bytes, spin):
    import torch

    with gpushare.Client(runtime_dir, client_name="py-gpu-stream-producer") as c:
        with c.create_stream(4, buffer_size=slot_bytes) as p:
            gpu = gcuda.CudaProducer(p)  # at once: the attachment's tickets expire
            say(p.id)
            dev, s, words, base, scratch = setup(torch, gpu)
            # Every kernel of the loop once, on the loop's stream, before any wait is pending.
            gpu.warm_up(lambda: torch.add(base, 1, out=scratch), lambda: torch.cuda._sleep(1),
                        stream=s)
            deadline = time.monotonic() + 60
            while len(c.describe_stream(p.id).consumers) < consumers:
                assert time.monotonic() < deadline, "consumers did not attach"
                time.sleep(0.01)
            start = time.monotonic()
            waited = 0
            with torch.cuda.stream(s):
                for n in range(1, frames + 1):
                    slot = gpu.acquire(s, timeout_ms=TIMEOUT_MS)
                    waited += len(slot.waits)
                    if spin:
                        torch.cuda._sleep(spin)
                    torch.add(base, n * words, out=slot.tensor(torch.int32, words))
                    presented = gpu.present(slot, s, number=n, user_data=n.to_bytes(4, "little"))
                    assert presented.sequence == n and presented.ready_value == n, presented
            s.synchronize()
            elapsed = time.monotonic() - start
            info = c.describe_stream(p.id)
            gpu.close()
        say(f"OK produced {frames} seconds {elapsed:.3f} stalls {info.producer_stalls} "
            f"gpu_waits {waited}")
    return 0


def _consume(torch, gpu, con, mode, spin, limit_frames=None, on_frame=None):
    """The consumer loop: returns (numbers seen, per-frame mismatch tensors, bad user data)."""
    dev, s, words, base, expected = setup(torch, gpu)
    gpu.warm_up(lambda: torch.add(base, 1, out=expected),
                lambda: (base.view(torch.uint8) != expected.view(torch.uint8)).sum(),
                lambda: torch.cuda._sleep(1), stream=s)
    seen, errs, bad_meta = [], [], []
    with torch.cuda.stream(s):
        while limit_frames is None or len(seen) < limit_frames:
            try:
                frame = gpu.acquire(s, timeout_ms=TIMEOUT_MS)
            except gpushare.GpushareError as e:
                if e.code == grpc.StatusCode.ABORTED:
                    break
                raise
            n = frame.number
            last = seen[-1] if seen else 0
            if (n != last + 1) if mode == "fifo" else (n <= last):
                raise AssertionError(f"frame {n} after frame {last} ({mode})")
            if frame.metadata.user_data != n.to_bytes(4, "little"):
                bad_meta.append(n)
            if spin:
                torch.cuda._sleep(spin)
            torch.add(base, n * words, out=expected)
            errs.append((frame.tensor() != expected.view(torch.uint8)).sum())  # byte for byte
            seen.append(n)
            gpu.release(frame, s)
    s.synchronize()
    return seen, errs, bad_meta, s


def consumer(runtime_dir, stream_id, mode, spin):
    import torch

    with gpushare.Client(runtime_dir, client_name=f"py-gpu-stream-{mode}") as c:
        with c.attach_consumer(stream_id, mode=mode, limit=1) as con:
            gpu = gcuda.CudaConsumer(con)
            say("attached")
            seen, errs, bad_meta, _ = _consume(torch, gpu, con, mode, spin)
            counts = torch.stack(errs).cpu().tolist() if errs else []
            bad = [(n, k) for n, k in zip(seen, counts) if k]
            gpu.close()
        say(f"OK consumed {len(seen)} last {seen[-1] if seen else 0} "
            f"mismatched_frames {len(bad)} bad_user_data {len(bad_meta)} first_bad {bad[:3]}")
    return 0 if not bad and not bad_meta else 1


def victim(runtime_dir, stream_id, keep):
    import torch

    c = gpushare.Client(runtime_dir, client_name="py-gpu-stream-victim")
    con = c.attach_consumer(stream_id, mode="fifo", limit=2)
    gpu = gcuda.CudaConsumer(con)
    say("attached")
    seen, errs, _, s = _consume(torch, gpu, con, "fifo", 0, limit_frames=keep)
    assert int(torch.stack(errs).sum()) == 0, "the victim saw wrong bytes"
    with torch.cuda.stream(s):
        frame = gpu.acquire(s, timeout_ms=TIMEOUT_MS)
        torch.cuda._sleep(10_000_000_000)  # seconds of GPU time before its release point
        gpu.release(frame, s)
        gpu.acquire(s, timeout_ms=TIMEOUT_MS)  # held, never released
    say("stuck")
    time.sleep(600)
    return 0


def main(argv):
    role = argv[0]
    if role == "producer":
        return producer(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]))
    if role == "consumer":
        return consumer(argv[1], argv[2], argv[3], int(argv[4]))
    if role == "victim":
        return victim(argv[1], argv[2], int(argv[3]))
    raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
