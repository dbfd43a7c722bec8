"""GPU stream consumer: python cuda_stream_consumer.py STREAM_ID (checks every frame on the GPU)."""
import sys

import grpc
import torch

import gpushare
import gpushare.cuda as gcuda

with gpushare.Client(client_name="cuda stream consumer") as c:
    with c.attach_consumer(sys.argv[1], mode="fifo", limit=1) as consumer:
        gpu = gcuda.CudaConsumer(consumer)  # the slots, the ready and its release timeline
        torch.cuda.set_device(gpu.buffers[0].device)
        stream = torch.cuda.Stream()
        n_floats = gpu.buffers[0].nbytes // 4
        ramp = torch.arange(n_floats, dtype=torch.float32, device="cuda")
        expected = torch.empty_like(ramp)
        gpu.warm_up(lambda: torch.mul(ramp, 1.0, out=expected).eq(ramp).all(), stream=stream)
        same = []
        with torch.cuda.stream(stream):
            while True:
                try:
                    frame = gpu.acquire(stream)  # the next frame; its ready point waited for on the GPU
                except gpushare.GpushareError as e:
                    if e.code == grpc.StatusCode.ABORTED:  # the producer is done
                        break
                    raise
                torch.mul(ramp, float(frame.number), out=expected)
                same.append(frame.tensor(torch.float32, n_floats).eq(expected).all())
                gpu.release(frame, stream)  # done once the kernels above are: no host block
        stream.synchronize()
        ok = bool(torch.stack(same).all()) if same else False
        print(f"consumer: {len(same)} frames {'ok' if ok else 'MISMATCH'}")
        gpu.close()
sys.exit(0 if ok else 1)
