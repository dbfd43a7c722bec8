"""gpushare: Python client for the gpushare daemon (GPU buffers, images, timeline semaphores and
host buffers shared between processes). See :class:`gpushare.Client`."""

from gpushare._common import Exported, GpushareError, ProtocolError
from gpushare.aio import AsyncClient, AsyncConsumer, AsyncProducer
from gpushare.client import SESSION_HEADER, Client, Watch, default_runtime_dir
from gpushare.host_buffer import HostBuffer
from gpushare.stream import Consumer, Producer
from gpushare.image import (
    IMAGE_FORMATS,
    USAGE_COLOR_ATTACHMENT,
    USAGE_SAMPLED,
    USAGE_STORAGE,
    Image,
    ImageFormatInfo,
    image_format,
)
from gpushare import _pb as pb

__all__ = [
    "AsyncClient",
    "AsyncConsumer",
    "AsyncProducer",
    "Client",
    "Consumer",
    "Exported",
    "GpushareError",
    "HostBuffer",
    "IMAGE_FORMATS",
    "Image",
    "ImageFormatInfo",
    "Producer",
    "ProtocolError",
    "USAGE_COLOR_ATTACHMENT",
    "USAGE_SAMPLED",
    "USAGE_STORAGE",
    "Watch",
    "default_runtime_dir",
    "image_format",
    "SESSION_HEADER",
    "pb",
]
__version__ = "0.2.0"


def __getattr__(name: str) -> object:
    """``gpushare.cuda`` on first use (``import gpushare`` itself never loads CUDA)."""
    if name == "cuda":
        import importlib

        return importlib.import_module("gpushare.cuda")
    raise AttributeError(f"module 'gpushare' has no attribute {name!r}")
