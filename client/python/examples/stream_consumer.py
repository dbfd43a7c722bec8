"""Stream consumer: python stream_consumer.py STREAM_ID (prints each frame)."""
import sys

import grpc

import gpushare

with gpushare.Client(client_name="stream consumer") as c:
    with c.attach_consumer(sys.argv[1], mode="fifo", limit=1) as consumer:
        while True:
            try:
                frame = consumer.acquire_frame(5000)
            except gpushare.GpushareError as e:
                if e.code == grpc.StatusCode.ABORTED:  # the producer is done, its frames read
                    break
                raise
            data = c.read(consumer.slot_ids[frame.slot], 0, 7)
            print(f"{frame.metadata.number}: {data.decode()}")
            consumer.release_frame(frame)  # done now: the slot may be written again
