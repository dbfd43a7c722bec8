"""Stream producer: python stream_producer.py (prints the stream id, then presents 5 frames)."""
import time

import gpushare

with gpushare.Client(client_name="stream producer") as c:
    with c.create_stream(3, buffer_size=64) as producer:  # leaving the block ends the stream
        print(producer.id, flush=True)
        while not c.describe_stream(producer.id).consumers:  # frames go to consumers attached
            time.sleep(0.01)
        for n in range(1, 6):
            grant = producer.acquire_slot(5000)  # a free slot (FIFO consumers may make it wait)
            c.write(producer.slot_ids[grant.slot], 0, f"frame {n}".encode())
            producer.present(grant, number=n)  # ready now: the daemon signals the ready point
