"""GPU stream producer: python cuda_stream_producer.py (prints the stream id, then presents 100
frames, each written by a torch kernel into the slot on the GPU)."""
import time

import torch

import gpushare
import gpushare.cuda as gcuda

N = 1 << 16  # float32s per frame
with gpushare.Client(client_name="cuda stream producer") as c:
    with c.create_stream(3, buffer_size=N * 4) as producer:  # leaving the block ends the stream
        gpu = gcuda.CudaProducer(producer)  # imports the slots and the ready timeline, once
        print(producer.id, flush=True)
        torch.cuda.set_device(gpu.buffers[0].device)
        stream = torch.cuda.Stream()
        ramp = torch.arange(N, dtype=torch.float32, device="cuda")
        scratch = torch.empty_like(ramp)
        # The loop's kernel once, before any semaphore wait is pending (CUDA lazy loading).
        gpu.warm_up(lambda: torch.mul(ramp, 1.0, out=scratch), stream=stream)
        while not c.describe_stream(producer.id).consumers:  # frames go to consumers attached
            time.sleep(0.01)
        with torch.cuda.stream(stream):
            for n in range(1, 101):
                slot = gpu.acquire(stream)  # a free slot; its release points waited for on the GPU
                torch.mul(ramp, float(n), out=slot.tensor(torch.float32, N))  # the kernel writes
                gpu.present(slot, stream, number=n)  # ready once the kernel is done: no host block
        stream.synchronize()
        gpu.close()
