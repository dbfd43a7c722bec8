"""Consumer: python consumer.py BUF_TICKET SEM_TICKET (the producer prints them)."""
import sys

import gpushare
import gpushare.cuda as gcuda

with gpushare.Client(client_name="consumer") as c:
    # Redeem first: tickets expire (the daemon's limits.ticket_ttl_ms, 10 s by default).
    buf_fd, sem_fd = [c.redeem(bytes.fromhex(t)) for t in sys.argv[1:3]]
    import torch

    buf, sem = gcuda.import_buffer(buf_fd), gcuda.import_semaphore(sem_fd)
    data = buf.as_tensor(torch.float32, buf.nbytes // 4)  # zero copy
    torch.cuda.set_device(data.device)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        expected = torch.arange(data.numel(), device=data.device, dtype=torch.float32) * 0.5
        torch.equal(expected, expected.clone())  # warm the kernels up before a wait is pending
        sem.wait(1, stream)  # on the GPU: the kernels below start once the producer signaled
        same = torch.equal(data, expected)
        sem.signal(2, stream)  # tell the producer we are done with its buffer
    stream.synchronize()
    print("consumer: ok" if same else "consumer: MISMATCH")
    sys.exit(0 if same else 1)
