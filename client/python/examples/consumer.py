"""Consumer: python consumer.py BUF_TICKET SEM_TICKET (the producer prints them)."""
import sys

import torch

import gpushare
import gpushare.cuda as gcuda

with gpushare.Client(client_name="consumer") as c:
    buf = gcuda.import_buffer(c.redeem(bytes.fromhex(sys.argv[1])))
    sem = gcuda.import_semaphore(c.redeem(bytes.fromhex(sys.argv[2])))
    data = buf.as_tensor(torch.float32, buf.nbytes // 4)  # zero copy
    torch.cuda.set_device(data.device)
    expected = torch.arange(data.numel(), device=data.device, dtype=torch.float32) * 0.5
    total = expected.sum(), torch.equal(expected, expected)  # warm the kernels (README: lazy loading)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        sem.wait(1, stream)  # on the GPU: the kernels below start once the producer signaled
        same = torch.equal(data, expected)
        sem.signal(2, stream)  # tell the producer we are done with its buffer
    stream.synchronize()
    print("consumer: ok" if same else "consumer: MISMATCH", float(total[0]))
    sys.exit(0 if same else 1)
