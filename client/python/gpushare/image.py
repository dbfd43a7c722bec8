"""Images: the formats gpushare shares (:data:`IMAGE_FORMATS`, :func:`image_format`), the usage
flags, and :class:`Image`, the handle that :meth:`Client.create_image` and :meth:`Client.image`
return, with its shape and its daemon-executed operations (write, read, clear, generate_mips,
export)."""

from __future__ import annotations


from typing import TYPE_CHECKING, Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

from gpushare._common import (
    Exported,
    Point,
    ProtocolError,
    ResourceId,
    _byte_view,
    _enum_name,
    _rid,
    _sync,
    gpushare_pb2,
)
from gpushare.host_buffer import HostBuffer

if TYPE_CHECKING:  # annotations only: client.py imports this module
    from gpushare.client import Client

__all__ = [
    "IMAGE_FORMATS",
    "Image",
    "ImageFormatInfo",
    "USAGE_COLOR_ATTACHMENT",
    "USAGE_SAMPLED",
    "USAGE_STORAGE",
    "image_format",
]

# VkImageUsageFlags accepted by Client.create_image (0 means SAMPLED | STORAGE; the daemon always
# adds TRANSFER_SRC | TRANSFER_DST).
USAGE_SAMPLED = 0x4
USAGE_STORAGE = 0x8
USAGE_COLOR_ATTACHMENT = 0x10


class ImageFormatInfo(NamedTuple):
    """One image format: its CLI/doc ``name`` (``"rgba8unorm"``), its wire ``value``
    (``pb.IMAGE_FORMAT_*``), ``channels`` per texel (1, 2 or 4), ``channel_size`` in bytes, and
    ``kind``: ``"unorm"`` (read normalized to [0, 1]; ``rgba8srgb`` holds sRGB-encoded color,
    which the GPU decodes to linear light where it filters), ``"uint"`` or ``"float"``."""

    name: str
    value: int
    channels: int
    channel_size: int
    kind: str

    @property
    def texel_size(self) -> int:
        """Bytes per texel."""
        return self.channels * self.channel_size

    @property
    def numpy_dtype(self) -> str:
        """The numpy dtype of one channel (little-endian): ``<u1``, ``<u4``, ``<f2`` or ``<f4``."""
        if self.kind == "float":
            return "<f%d" % self.channel_size
        return "<u%d" % self.channel_size


def _format_table() -> Dict[str, ImageFormatInfo]:
    rows = [
        ("r8unorm", "R8_UNORM", 1, 1, "unorm"),
        ("rg8unorm", "RG8_UNORM", 2, 1, "unorm"),
        ("rgba8unorm", "RGBA8_UNORM", 4, 1, "unorm"),
        ("r8uint", "R8_UINT", 1, 1, "uint"),
        ("rg8uint", "RG8_UINT", 2, 1, "uint"),
        ("rgba8uint", "RGBA8_UINT", 4, 1, "uint"),
        ("r16float", "R16_FLOAT", 1, 2, "float"),
        ("rg16float", "RG16_FLOAT", 2, 2, "float"),
        ("rgba16float", "RGBA16_FLOAT", 4, 2, "float"),
        ("r32float", "R32_FLOAT", 1, 4, "float"),
        ("rg32float", "RG32_FLOAT", 2, 4, "float"),
        ("rgba32float", "RGBA32_FLOAT", 4, 4, "float"),
        ("r32uint", "R32_UINT", 1, 4, "uint"),
        ("rg32uint", "RG32_UINT", 2, 4, "uint"),
        ("rgba32uint", "RGBA32_UINT", 4, 4, "uint"),
        ("rgba8srgb", "RGBA8_SRGB", 4, 1, "unorm"),
    ]
    return {
        name: ImageFormatInfo(name, int(gpushare_pb2.ImageFormat.Value("IMAGE_FORMAT_" + wire)), ch, size, kind)
        for name, wire, ch, size, kind in rows
    }


#: Every image format gpushare shares, by name (``"rgba8unorm"``), in wire order.
IMAGE_FORMATS = _format_table()
_FORMATS_BY_VALUE = {f.value: f for f in IMAGE_FORMATS.values()}


def image_format(format: Union[str, int]) -> ImageFormatInfo:
    """The :class:`ImageFormatInfo` of a format given by name (``"rgba8unorm"``, any case; the
    proto's ``"IMAGE_FORMAT_RGBA8_UNORM"`` too) or by wire value (``pb.IMAGE_FORMAT_RGBA8_UNORM``).
    ValueError for anything else."""
    if isinstance(format, ImageFormatInfo):
        return format
    if isinstance(format, str):
        key = format.strip().lower()
        if key.startswith("image_format_"):
            key = key[len("image_format_"):].replace("_", "")
        info = IMAGE_FORMATS.get(key)
        if info is None:
            raise ValueError(
                f"unknown image format {format!r}: expected one of {', '.join(IMAGE_FORMATS)}"
            )
        return info
    if isinstance(format, int) and not isinstance(format, bool):
        info = _FORMATS_BY_VALUE.get(format)
        if info is None:
            raise ValueError(f"unknown image format value {format}")
        return info
    raise TypeError(f"an image format is a name or a pb.ImageFormat value, not {type(format).__name__}")


_KINDS = {"2d": gpushare_pb2.IMAGE_KIND_2D, "3d": gpushare_pb2.IMAGE_KIND_3D}
_KIND_NAMES = {v: k for k, v in _KINDS.items()}


def _image_kind(kind: Union[str, int, None], depth: int) -> int:
    if kind is None:
        return int(gpushare_pb2.IMAGE_KIND_3D if depth > 1 else gpushare_pb2.IMAGE_KIND_2D)
    if isinstance(kind, str):
        value = _KINDS.get(kind.strip().lower())
        if value is None:
            raise ValueError(f"unknown image kind {kind!r}: expected '2d' or '3d'")
        return value
    if kind in _KIND_NAMES:
        return int(kind)
    raise ValueError(f"unknown image kind {kind!r}: expected '2d', '3d' or a pb.ImageKind value")


class Image:
    """An image (:meth:`Client.create_image`, :meth:`Client.image`), named by id, with its shape.

    Attributes: ``id``, ``name``, ``format`` (the format's name, ``"rgba8unorm"``; its facts
    in ``format_info``), ``kind`` (``"2d"`` or ``"3d"``), ``width``, ``height``, ``depth``,
    ``mip_levels``, ``array_layers``, ``usage`` (``VkImageUsageFlags``, transfer usage
    included), ``allocation_size``, and ``resource`` (the ``pb.Resource`` it was made from).
    An Image is accepted wherever a resource id is (``client.describe(image)``).

    Transfers carry tightly packed texels: rows of the region's width, then its height in
    rows, then its depth in slices (3D), then its layers. A region is a box of one mip level
    (``level``), at ``x, y, z``, of ``width, height, depth`` texels (0 reaches the level's edge
    from the offset), over every layer (``layer=None``), one layer (``layer=N``), or ``layers``
    layers from ``layer``. Like the buffer operations they take ``sync`` (a ``pb.Sync``) or
    ``wait``/``signal``/``timeout_ms``, and return once done. Bytes in messages
    (:meth:`write`, :meth:`read`) are limited to ``info().limits.max_transfer_size`` per call;
    host buffers (:meth:`write_from_host`, :meth:`read_into_host`) are not. The daemon checks
    every region (INVALID_ARGUMENT outside the image, or for data of another size).
    """

    def __init__(self, client: "Client", resource: "gpushare_pb2.Resource"):
        if resource.WhichOneof("details") != "image":
            raise ValueError(
                f"{resource.id} is not an image (a "
                f"{_enum_name(gpushare_pb2.ResourceKind, resource.kind)})"
            )
        i = resource.image
        self._client = client
        self.resource = resource
        self.id: str = resource.id
        self.name: str = resource.name
        self.format_info = image_format(i.format)
        self.format: str = self.format_info.name
        self.kind: str = _KIND_NAMES.get(i.kind, str(i.kind))
        self.width: int = i.width
        self.height: int = i.height
        self.depth: int = max(i.depth, 1)
        self.mip_levels: int = i.mip_levels
        self.array_layers: int = i.array_layers
        self.usage: int = i.usage
        self.allocation_size: int = i.allocation_size

    def __repr__(self) -> str:
        extent = f"{self.width}x{self.height}" + (f"x{self.depth}" if self.kind == "3d" else "")
        return (
            f"Image(id={self.id!r}, {self.format} {self.kind} {extent}, "
            f"mip_levels={self.mip_levels}, array_layers={self.array_layers})"
        )

    # ---- shape ----

    def level_extent(self, level: int) -> Tuple[int, int, int]:
        """Level ``level``'s (width, height, depth): each halves per level, never below 1."""
        if not 0 <= level < self.mip_levels:
            raise ValueError(f"level {level} is outside the image's {self.mip_levels} mip levels")
        return (max(self.width >> level, 1), max(self.height >> level, 1), max(self.depth >> level, 1))

    def _box(
        self,
        level: int,
        layer: Optional[int],
        x: int,
        y: int,
        z: int,
        width: int,
        height: int,
        depth: int,
        layers: Optional[int],
    ) -> Tuple[Tuple[int, int, int, int], Any]:
        """The region's (width, height, depth, layers) with zeros filled in, unchecked (values
        may be <= 0 for regions outside the image), and the proto message."""
        w, h, d = (
            (max(self.width >> level, 1), max(self.height >> level, 1), max(self.depth >> level, 1))
            if level >= 0
            else (0, 0, 0)
        )
        base = 0 if layer is None else layer
        if layers is None:
            layers = 0 if layer is None else 1
        msg = gpushare_pb2.ImageRegion(
            level=level, base_layer=base, layers=layers,
            x=x, y=y, z=z, width=width, height=height, depth=depth,
        )
        return (
            width or w - x,
            height or h - y,
            depth or d - z,
            layers or self.array_layers - base,
        ), msg

    def region_size(
        self,
        level: int = 0,
        layer: Optional[int] = None,
        x: int = 0,
        y: int = 0,
        z: int = 0,
        width: int = 0,
        height: int = 0,
        depth: int = 0,
        layers: Optional[int] = None,
    ) -> int:
        """Bytes of a region, tightly packed (the arguments are :meth:`write`'s). ValueError for
        a region outside the image."""
        w, h, d = self.level_extent(level)
        (rw, rh, rd, rl), _ = self._box(level, layer, x, y, z, width, height, depth, layers)
        base = 0 if layer is None else layer
        for what, off, length, size in (
            ("x + width", x, rw, w),
            ("y + height", y, rh, h),
            ("z + depth", z, rd, d),
            ("layer + layers", base, rl, self.array_layers),
        ):
            if off < 0 or length <= 0 or off + length > size:
                raise ValueError(
                    f"region {what} = {off} + {length} is empty or outside level {level} "
                    f"(extent {w}x{h}x{d}, {self.array_layers} layers)"
                )
        return rw * rh * rd * rl * self.format_info.texel_size

    def _lenient_size(self, region: Tuple[int, int, int, int]) -> int:
        (rw, rh, rd, rl) = region
        return max(rw, 0) * max(rh, 0) * max(rd, 0) * max(rl, 0) * self.format_info.texel_size

    # ---- transfers ----

    def write(
        self,
        data: Any,
        level: int = 0,
        layer: Optional[int] = None,
        x: int = 0,
        y: int = 0,
        z: int = 0,
        width: int = 0,
        height: int = 0,
        depth: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        layers: Optional[int] = None,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        """Writes ``data`` (bytes, or any C-contiguous buffer such as a numpy array: its bytes,
        exactly the region's size) into the region."""
        _, region = self._box(level, layer, x, y, z, width, height, depth, layers)
        if isinstance(data, bytes):
            payload = data
        else:
            with _byte_view(data) as view:
                payload = view.tobytes()
        self._client._call(
            "WriteImage",
            gpushare_pb2.WriteImageRequest(
                image_id=self.id, region=region, data=payload,
                sync=_image_sync(sync, wait, signal, timeout_ms),
            ),
        )

    def read(
        self,
        level: int = 0,
        layer: Optional[int] = None,
        x: int = 0,
        y: int = 0,
        z: int = 0,
        width: int = 0,
        height: int = 0,
        depth: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        layers: Optional[int] = None,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> bytes:
        """The region's texels, tightly packed."""
        box, region = self._box(level, layer, x, y, z, width, height, depth, layers)
        data = self._client._call(
            "ReadImage",
            gpushare_pb2.ReadImageRequest(
                image_id=self.id, region=region,
                sync=_image_sync(sync, wait, signal, timeout_ms),
            ),
        ).data
        expected = self._lenient_size(box)
        if len(data) != expected:
            raise ProtocolError(f"ReadImage returned {len(data)} bytes instead of {expected}")
        return bytes(data)

    def write_from_host(
        self,
        host: ResourceId,
        host_offset: int = 0,
        level: int = 0,
        layer: Optional[int] = None,
        x: int = 0,
        y: int = 0,
        z: int = 0,
        width: int = 0,
        height: int = 0,
        depth: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        layers: Optional[int] = None,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        """Writes the region from the host buffer ``host`` (a :class:`HostBuffer` or its id),
        whose bytes at ``host_offset`` are the region's, tightly packed. No message limit
        applies. Do not change that host range until this returns."""
        box, region = self._box(level, layer, x, y, z, width, height, depth, layers)
        self._client._call(
            "WriteImage",
            gpushare_pb2.WriteImageRequest(
                image_id=self.id, region=region,
                from_host=gpushare_pb2.HostRange(
                    host_buffer_id=_rid(host), offset=host_offset, length=self._lenient_size(box)
                ),
                sync=_image_sync(sync, wait, signal, timeout_ms),
            ),
        )

    def read_into_host(
        self,
        host: ResourceId,
        host_offset: int = 0,
        level: int = 0,
        layer: Optional[int] = None,
        x: int = 0,
        y: int = 0,
        z: int = 0,
        width: int = 0,
        height: int = 0,
        depth: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        layers: Optional[int] = None,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> int:
        """Reads the region into the host buffer ``host`` (a :class:`HostBuffer` or its id) at
        ``host_offset``; returns its size in bytes. Read them there once this returned. No
        message limit applies."""
        box, region = self._box(level, layer, x, y, z, width, height, depth, layers)
        length = self._lenient_size(box)
        self._client._call(
            "ReadImage",
            gpushare_pb2.ReadImageRequest(
                image_id=self.id, region=region,
                to_host=gpushare_pb2.HostRange(
                    host_buffer_id=_rid(host), offset=host_offset, length=length
                ),
                sync=_image_sync(sync, wait, signal, timeout_ms),
            ),
        )
        return length

    def read_numpy(
        self,
        level: int = 0,
        layer: Optional[int] = None,
        host: Optional[HostBuffer] = None,
        host_offset: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> Any:
        """A whole level (every layer, or one) as a new numpy array of shape
        ``([layers,] [depth,] height, width, channels)``: the layers axis when ``layer`` is None
        and the image has several layers, the depth axis for 3D images. Its dtype is the
        format's channel type: uint8 (``*8unorm``, ``*8uint``; unorm values are not scaled),
        uint32, float16 or float32. With ``host`` (a :class:`HostBuffer`) the texels come
        through it, at ``host_offset``, for levels above the message limit. Needs numpy."""
        try:
            import numpy
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("Image.read_numpy needs numpy (pip install numpy)") from e
        w, h, d = self.level_extent(level)
        if host is None:
            data = bytearray(
                self.read(level=level, layer=layer, sync=sync, wait=wait, signal=signal,
                          timeout_ms=timeout_ms)
            )
        else:
            length = self.read_into_host(
                host, host_offset, level=level, layer=layer, sync=sync, wait=wait,
                signal=signal, timeout_ms=timeout_ms,
            )
            data = bytearray(host.read(host_offset, length))
        shape = [h, w, self.format_info.channels]
        if self.kind == "3d":
            shape.insert(0, d)
        if layer is None and self.array_layers > 1:
            shape.insert(0, self.array_layers)
        return numpy.frombuffer(data, dtype=self.format_info.numpy_dtype).reshape(shape)

    def clear(
        self,
        float_color: Optional[Sequence[float]] = None,
        uint_color: Optional[Sequence[int]] = None,
        base_level: int = 0,
        levels: int = 0,
        base_layer: int = 0,
        layers: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        """Clears levels ``base_level .. base_level + levels`` and layers ``base_layer ..
        base_layer + layers`` (0: through the last) to a color of up to 4 channels (missing
        ones are 0): ``float_color`` for unorm (in [0, 1]) and float formats, ``uint_color``
        for uint formats; neither clears to zero. INVALID_ARGUMENT for the wrong kind of
        color."""
        self._client._call(
            "ClearImage",
            gpushare_pb2.ClearImageRequest(
                image_id=self.id, base_level=base_level, levels=levels,
                base_layer=base_layer, layers=layers,
                float_color=list(float_color or ()), uint_color=list(uint_color or ()),
                sync=_image_sync(sync, wait, signal, timeout_ms),
            ),
        )

    def generate_mips(
        self,
        base_level: int = 0,
        levels: int = 0,
        base_layer: int = 0,
        layers: int = 0,
        sync: Optional["gpushare_pb2.Sync"] = None,
        *,
        wait: Sequence[Point] = (),
        signal: Sequence[Point] = (),
        timeout_ms: int = 0,
    ) -> None:
        """Generates levels ``base_level + 1 .. base_level + levels`` (``levels`` 0: to the last)
        on the GPU, each filtered from the one before, in layers ``base_layer .. base_layer +
        layers`` (0: through the last). The filter is linear (a 2x2, in 3D 2x2x2, box average;
        ``rgba8srgb`` averaged in linear light), and nearest for uint formats (each texel one of
        its block's). INVALID_ARGUMENT for a single-level image or a range outside the image;
        FAILED_PRECONDITION where the device cannot blit or filter the format."""
        self._client._call(
            "GenerateMips",
            gpushare_pb2.GenerateMipsRequest(
                image_id=self.id, base_level=base_level, levels=levels,
                base_layer=base_layer, layers=layers,
                sync=_image_sync(sync, wait, signal, timeout_ms),
            ),
        )

    # ---- lifetime and export ----

    def describe(self) -> "gpushare_pb2.Resource":
        """The daemon's current view of the image (references, grants, ...)."""
        return self._client.describe(self.id)

    def release(self) -> bool:
        """Drops this session's reference (or the pin), like :meth:`Client.release`; True when
        that freed the image."""
        return self._client.release(self.id)

    def export(self, timeout: Optional[float] = 10.0) -> Exported:
        """The image's memory descriptor and its import metadata (``info.image``: format, kind,
        extent, levels, layers, usage, ``allocation_size``, ``dedicated``, memory type, VkFormat,
        tiling and layout), like :meth:`Client.export`."""
        return self._client.export(self.id, timeout)


def _image_sync(
    sync: Any, wait: Sequence[Point], signal: Sequence[Point], timeout_ms: int
) -> "gpushare_pb2.Sync":
    if sync is not None:
        if wait or signal or timeout_ms:
            raise ValueError("give sync= or wait=/signal=/timeout_ms=, not both")
        return sync
    return _sync(wait, signal, timeout_ms)
