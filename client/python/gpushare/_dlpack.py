"""DLPack capsules made with ctypes (no compiled code): versioned (DLPack >= 1.0,
``"dltensor_versioned"``) and legacy (``"dltensor"``) ones, over memory that a Python object owns.

:func:`make_capsule` builds a ``DLManagedTensorVersioned`` (or ``DLManagedTensor``) whose
``manager_ctx`` keeps the owner alive until the consumer calls the deleter; a capsule nobody
consumed calls the deleter itself when it is destroyed (the DLPack rules: a consumer renames the
capsule ``used_dltensor[_versioned]`` and calls the deleter when it is done with the memory).

Also the dtype table shared by ``__cuda_array_interface__`` and DLPack (:func:`dtype_info`).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

__all__ = [
    "DLPACK_VERSION",
    "KDL_CPU",
    "KDL_CUDA",
    "KDL_CUDA_HOST",
    "DType",
    "dtype_info",
    "make_capsule",
]

DLPACK_VERSION = (1, 0)
KDL_CPU = 1
KDL_CUDA = 2
KDL_CUDA_HOST = 3
FLAG_READ_ONLY = 1 << 0

# DLDataTypeCode
_INT, _UINT, _FLOAT, _BFLOAT, _COMPLEX, _BOOL = 0, 1, 2, 4, 5, 6


class DType(NamedTuple):
    """One element type: its canonical name, DLPack (code, bits), and the
    ``__cuda_array_interface__`` typestr (None where the protocol has none: bfloat16)."""

    name: str
    code: int
    bits: int
    typestr: Optional[str]

    @property
    def itemsize(self) -> int:
        return self.bits // 8


_DTYPES: Dict[str, DType] = {
    d.name: d
    for d in (
        DType("bool", _BOOL, 8, "|b1"),
        DType("int8", _INT, 8, "|i1"),
        DType("uint8", _UINT, 8, "|u1"),
        DType("int16", _INT, 16, "<i2"),
        DType("uint16", _UINT, 16, "<u2"),
        DType("int32", _INT, 32, "<i4"),
        DType("uint32", _UINT, 32, "<u4"),
        DType("int64", _INT, 64, "<i8"),
        DType("uint64", _UINT, 64, "<u8"),
        DType("float16", _FLOAT, 16, "<f2"),
        DType("bfloat16", _BFLOAT, 16, None),
        DType("float32", _FLOAT, 32, "<f4"),
        DType("float64", _FLOAT, 64, "<f8"),
        DType("complex64", _COMPLEX, 64, "<c8"),
        DType("complex128", _COMPLEX, 128, "<c16"),
    )
}
_ALIASES = {
    "half": "float16",
    "float": "float32",
    "double": "float64",
    "int": "int32",
    "long": "int64",
    "short": "int16",
    "byte": "uint8",
    "u1": "uint8",
    "i1": "int8",
    "f2": "float16",
    "f4": "float32",
    "f8": "float64",
    "u4": "uint32",
    "i4": "int32",
    "u8": "uint64",
    "i8": "int64",
    "u2": "uint16",
    "i2": "int16",
}


def dtype_info(dtype: Any) -> DType:
    """The :class:`DType` of a name (``"float32"``), a torch dtype (``torch.float16``), a numpy
    or CuPy dtype or type (``numpy.uint8``). ValueError for anything else."""
    if isinstance(dtype, DType):
        return dtype
    if isinstance(dtype, str):
        name = dtype
    else:
        text = str(dtype)
        if text.startswith("torch."):
            name = text[len("torch.") :]
        else:
            name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or text
            try:  # numpy dtypes and scalar types
                import numpy

                name = numpy.dtype(dtype).name
            except Exception:
                pass
    name = name.lstrip("<|=").lower()
    name = _ALIASES.get(name, name)
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}") from None


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensor(ctypes.Structure):
    pass


class _DLManagedTensorVersioned(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DELETER_VERSIONED = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensorVersioned))

_DLManagedTensor._fields_ = [
    ("dl_tensor", _DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _DELETER),
]
_DLManagedTensorVersioned._fields_ = [
    ("version", _DLPackVersion),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _DELETER_VERSIONED),
    ("flags", ctypes.c_uint64),
    ("dl_tensor", _DLTensor),
]

_CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

_api = ctypes.pythonapi
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

# Everything a live capsule's tensor needs (the struct, shape and strides arrays, the owner),
# keyed by the struct's address; removed by the deleter.
_live: Dict[int, Tuple[Any, ...]] = {}
_live_lock = threading.RLock()


def _release(address: int) -> None:
    with _live_lock:
        entry = _live.pop(address, None)
    # Dropped outside the lock: freeing the owner may free other tensors, whose deleters come
    # back here.
    del entry


def _deleter(managed: Any) -> None:
    _release(ctypes.addressof(managed.contents))


_deleter_versioned = _DELETER_VERSIONED(_deleter)
_deleter_legacy = _DELETER(_deleter)


def _capsule_destructor(name: bytes, deleter: Any) -> Any:
    # The capsule arrives as a raw pointer: it is being destroyed, so it must not be turned
    # into a Python object again.
    def destroy(capsule: Optional[int]) -> None:
        if not capsule or not _api.PyCapsule_IsValid(capsule, name):
            return  # consumed (renamed "used_..."): the consumer calls the deleter
        pointer = _api.PyCapsule_GetPointer(capsule, name)
        if pointer:
            _release(pointer)

    del deleter
    return _CAPSULE_DESTRUCTOR(destroy)


# PyCapsule keeps a pointer to its name: these live as long as the module.
_NAME_VERSIONED = b"dltensor_versioned"
_NAME_LEGACY = b"dltensor"
_destroy_versioned = _capsule_destructor(_NAME_VERSIONED, _deleter_versioned)
_destroy_legacy = _capsule_destructor(_NAME_LEGACY, _deleter_legacy)


def make_capsule(
    owner: Any,
    data: int,
    device: Tuple[int, int],
    dtype: DType,
    shape: Sequence[int],
    strides: Optional[Sequence[int]] = None,
    versioned: bool = True,
    read_only: bool = False,
    keep: Tuple[Any, ...] = (),
) -> Any:
    """A DLPack capsule of ``shape`` elements of ``dtype`` at address ``data`` on ``device``
    (``(device_type, device_id)``); ``strides`` in elements (None: C-contiguous). ``owner``
    (and ``keep``) stay referenced until the consumer's deleter runs (or the unconsumed capsule
    is destroyed)."""
    ndim = len(shape)
    shape_arr = (ctypes.c_int64 * max(ndim, 1))(*shape)
    if strides is None:
        # Explicit C-contiguous strides: NULL means the same to DLPack, but not every consumer
        # takes NULL.
        contiguous, step = [], 1
        for dim in reversed(shape):
            contiguous.append(step)
            step *= max(int(dim), 1)
        strides = list(reversed(contiguous))
    strides_arr = (ctypes.c_int64 * max(ndim, 1))(*strides)
    managed: Any
    if versioned:
        managed = _DLManagedTensorVersioned()
        managed.version = _DLPackVersion(*DLPACK_VERSION)
        managed.deleter = _deleter_versioned
        managed.flags = FLAG_READ_ONLY if read_only else 0
        name, destroy = _NAME_VERSIONED, _destroy_versioned
    else:
        managed = _DLManagedTensor()
        managed.deleter = _deleter_legacy
        name, destroy = _NAME_LEGACY, _destroy_legacy
    address = ctypes.addressof(managed)
    managed.manager_ctx = address
    tensor = managed.dl_tensor
    tensor.data = data
    tensor.device = _DLDevice(*device)
    tensor.ndim = ndim
    tensor.dtype = _DLDataType(dtype.code, dtype.bits, 1)
    tensor.shape = ctypes.cast(shape_arr, ctypes.POINTER(ctypes.c_int64))
    tensor.strides = ctypes.cast(strides_arr, ctypes.POINTER(ctypes.c_int64))
    tensor.byte_offset = 0
    with _live_lock:
        _live[address] = (managed, shape_arr, strides_arr, owner, keep)
    try:
        return _api.PyCapsule_New(address, name, ctypes.cast(destroy, ctypes.c_void_p))
    except BaseException:
        _release(address)
        raise


def live_count() -> int:
    """How many capsules' tensors are still alive (for tests)."""
    with _live_lock:
        return len(_live)
