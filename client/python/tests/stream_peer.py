"""A stream peer in a process of its own, for test_streams.py: `producer`, `consumer` or
`holder`, talking on stdout (one line per event; the last line is a JSON result).

    python stream_peer.py producer RUNTIME_DIR FRAMES CONSUMERS
    python stream_peer.py consumer RUNTIME_DIR STREAM_ID fifo|mailbox
    python stream_peer.py holder RUNTIME_DIR STREAM_ID HOLD
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc  # noqa: E402

import gpushare  # noqa: E402

SLOT_BYTES = 64


def payload(n: int) -> bytes:
    """Frame n's contents: distinct per frame, filling the slot."""
    return (f"frame {n:06d} ".encode() * 8)[:SLOT_BYTES]


def say(*words: object) -> None:
    print(*words, flush=True)


def producer(runtime_dir: str, frames: int, consumers: int) -> None:
    with gpushare.Client(runtime_dir, client_name="py-stream-producer") as c:
        with c.create_stream(4, buffer_size=SLOT_BYTES) as p:
            say(p.id)
            deadline = time.monotonic() + 20
            while len(c.describe_stream(p.id).consumers) < consumers:
                assert time.monotonic() < deadline, "consumers did not attach"
                time.sleep(0.01)
            start = time.monotonic()
            for n in range(1, frames + 1):
                grant = p.acquire_slot(5000)
                c.write(p.slot_ids[grant.slot], 0, payload(n))
                presented = p.present(grant, number=n, user_data=n.to_bytes(4, "little"))
                assert presented.sequence == n, (presented, n)
            elapsed = time.monotonic() - start
            info = c.describe_stream(p.id)
            result = {"frames": frames, "elapsed": elapsed, "stalls": info.producer_stalls,
                      "presented": info.frames_presented}
        # Leaving the block detached the producer: the stream ended.
        say(json.dumps(result))


def consumer(runtime_dir: str, stream_id: str, mode: str) -> None:
    seen = []
    bad = []
    with gpushare.Client(runtime_dir, client_name=f"py-stream-{mode}") as c:
        with c.attach_consumer(stream_id, mode=mode, limit=1) as con:
            say("attached")
            while True:
                try:
                    frame = con.acquire_frame(5000)
                except gpushare.GpushareError as e:
                    if e.code == grpc.StatusCode.ABORTED:
                        break
                    raise
                n = frame.metadata.number
                data = c.read(con.slot_ids[frame.slot], 0, SLOT_BYTES)
                if data != payload(n) or frame.metadata.user_data != n.to_bytes(4, "little"):
                    bad.append(n)
                seen.append(n)
                con.release_frame(frame)
    say(json.dumps({"seen": seen, "bad": bad}))


def holder(runtime_dir: str, stream_id: str, hold: int) -> None:
    """Attaches (FIFO), takes `hold` frames, says so, and keeps them until killed."""
    c = gpushare.Client(runtime_dir, client_name="py-stream-holder")
    con = c.attach_consumer(stream_id, mode="fifo", limit=hold)
    say("attached")
    for _ in range(hold):
        con.acquire_frame(10000)
    say("held")
    time.sleep(60)


if __name__ == "__main__":
    role, rt = sys.argv[1], sys.argv[2]
    if role == "producer":
        producer(rt, int(sys.argv[3]), int(sys.argv[4]))
    elif role == "consumer":
        consumer(rt, sys.argv[3], sys.argv[4])
    elif role == "holder":
        holder(rt, sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown role {role}")
