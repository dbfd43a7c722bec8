"""gpushare: Python client for the gpushare daemon (GPU buffers, timeline semaphores and host
buffers shared between processes). See :class:`gpushare.Client`."""

from gpushare.client import (
    SESSION_HEADER,
    Client,
    Exported,
    GpushareError,
    HostBuffer,
    ProtocolError,
    Watch,
    default_runtime_dir,
)
from gpushare.v1 import gpushare_pb2 as pb

__all__ = [
    "Client",
    "Exported",
    "GpushareError",
    "HostBuffer",
    "ProtocolError",
    "Watch",
    "default_runtime_dir",
    "SESSION_HEADER",
    "pb",
]
__version__ = "0.1.0"
