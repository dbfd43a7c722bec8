"""Producer: a torch kernel fills a shared buffer; the consumer's stream waits on the GPU."""
import torch

import gpushare
import gpushare.cuda as gcuda

N = 1 << 20  # float32s
with gpushare.Client(client_name="producer") as c:
    buf, sem = c.create_buffer(N * 4), c.create_semaphore(initial=0)
    tensor = gcuda.import_buffer(c.export(buf)).as_tensor(torch.float32, N)
    ready = gcuda.import_semaphore(c.export(sem))
    torch.cuda.set_device(tensor.device)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.arange(N, out=tensor, dtype=torch.float32).mul_(0.5)  # the kernel writes
        ready.signal(1, stream)  # value 1 once the kernel is done: no host block
    # Tickets for the consumer (any channel will do: stdout here).
    print("ticket", c.export_ticket(buf).ticket.hex(), c.export_ticket(sem).ticket.hex(), flush=True)
    c.fd_wait(sem, 2, timeout_ms=60_000)  # the consumer signals 2 when done reading
    print("producer: done")
