"""Host-side tests of the packaging and of gpushare.cuda's parts that need no GPU: lazy import,
the error without CUDA, descriptor ownership on failure, DLPack capsules (through numpy on a host
buffer), dtypes, stream handles."""

import gc
import os
import subprocess
import sys
import zipfile

import pytest

from gpushare import _dlpack, pb

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_ROOT = os.path.dirname(HERE)


def test_import_gpushare_does_not_import_cuda():
    code = (
        "import sys, gpushare; "
        "assert 'gpushare.cuda' not in sys.modules and 'cuda.bindings' not in sys.modules; "
        "assert 'torch' not in sys.modules and 'cupy' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PKG_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_messages_enums_and_stub():
    assert pb.RESOURCE_KIND_BUFFER == pb.ResourceKind.Value("RESOURCE_KIND_BUFFER")
    req = pb.CreateBufferRequest(size=3, name="x")
    assert pb.CreateBufferRequest.FromString(req.SerializeToString()) == req
    if not os.path.exists(os.path.join(PKG_ROOT, "gpushare", "v1", "gpushare_pb2.py")):
        pytest.importorskip("grpc_tools")
        from gpushare import _protogen

        _protogen.generate(PKG_ROOT)
    from gpushare.v1 import gpushare_pb2, gpushare_pb2_grpc  # compatibility modules

    assert gpushare_pb2.FdReply is pb.FdReply
    assert callable(gpushare_pb2_grpc.GpuShareStub)


def _cuda_missing_or_no_driver():
    import gpushare.cuda as gcuda

    try:
        gcuda._drv()
    except gcuda.CudaUnavailable as e:
        return str(e)
    return None


def test_cuda_without_a_driver_is_a_clear_error_and_closes_the_descriptor(client):
    import gpushare.cuda as gcuda

    reason = _cuda_missing_or_no_driver()
    if reason is None:
        pytest.skip("SKIP: this machine has a CUDA driver (the GPU tests cover the imports)")
    assert "cuda" in reason.lower()
    buf = client.create_buffer(4096)
    exp = client.export(buf)
    fd = exp.fd
    with pytest.raises(gcuda.CudaUnavailable):
        gcuda.import_buffer(exp)
    assert exp.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    # Wrong kinds are refused before CUDA is touched, closing the descriptor too.
    with client.create_host_buffer(4096) as host:
        exp = client.export(host)
        with pytest.raises(ValueError):
            gcuda.import_buffer(exp)
        assert exp.closed
        exp = client.export(host)
        with pytest.raises(ValueError):
            gcuda.import_semaphore(exp)
        assert exp.closed


def test_format_uuid_and_stream_handles():
    import gpushare.cuda as gcuda

    assert gcuda.format_uuid(bytes(range(16))) == "00010203-0405-0607-0809-0a0b0c0d0e0f"

    class TorchLike:
        cuda_stream = 1234

    class CupyLike:
        ptr = 99

    class Protocol:
        def __cuda_stream__(self):
            return (0, 77)

    assert gcuda.stream_handle(None) == 0
    assert gcuda.stream_handle(5) == 5
    assert gcuda.stream_handle(TorchLike()) == 1234
    assert gcuda.stream_handle(CupyLike()) == 99
    assert gcuda.stream_handle(Protocol()) == 77
    with pytest.raises(TypeError):
        gcuda.stream_handle(object())


def test_dtypes():
    numpy = pytest.importorskip("numpy")
    assert _dlpack.dtype_info("float32").typestr == "<f4"
    assert _dlpack.dtype_info(numpy.float16).bits == 16
    assert _dlpack.dtype_info(numpy.dtype("uint8")).name == "uint8"
    assert _dlpack.dtype_info("bfloat16").typestr is None
    with pytest.raises(ValueError):
        _dlpack.dtype_info("float7")


def test_host_buffer_numpy_and_dlpack_zero_copy(client):
    numpy = pytest.importorskip("numpy")
    with client.create_host_buffer(1 << 16) as host:
        arr = host.numpy("float32", (4, 4), offset=64)
        arr[:] = numpy.arange(16, dtype=numpy.float32).reshape(4, 4)
        assert host.read(64 + 4 * 5, 4) == numpy.float32(5).tobytes()
        del arr
        base = _dlpack.live_count()
        if hasattr(numpy, "from_dlpack"):
            view = numpy.from_dlpack(host)  # versioned capsule with numpy >= 2.1
            assert view.shape == (1 << 16,) and view.dtype == numpy.uint8
            view[0] = 42
            assert host.read(0, 1) == b"*"
            assert _dlpack.live_count() == base + 1
            del view
            gc.collect()
            assert _dlpack.live_count() == base
        for max_version in (None, (1, 0)):
            capsule = host.__dlpack__(max_version=max_version)
            del capsule  # unconsumed: the capsule's destructor releases it
            assert _dlpack.live_count() == base
        with pytest.raises(BufferError):
            host.__dlpack__(copy=True)


def test_wheel_carries_the_descriptor_and_py_typed(tmp_path):
    """Builds the wheel offline (no build isolation: this venv has setuptools and grpcio-tools)
    and installs it (--no-deps) into a fresh virtual environment."""
    pytest.importorskip("grpc_tools")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), PKG_ROOT],
        capture_output=True, text=True,
    )
    if out.returncode != 0 and "No module named pip" in out.stderr:
        pytest.skip("SKIP: no pip in this interpreter")
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").iterdir()
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("gpushare/py.typed", "gpushare/v1/gpushare.desc", "gpushare/v1/gpushare_pb2.py",
                 "gpushare/v1/gpushare_pb2_grpc.py", "gpushare/cuda.py", "gpushare/aio.py"):
        assert name in names, names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    zipfile.ZipFile(wheel).extractall(site)
    # grpcio and protobuf from this environment, after the wheel's own files.
    ours = subprocess.run(
        [sys.executable, "-c", "import google.protobuf, os; print(os.path.dirname(os.path.dirname(google.protobuf.__path__[0])))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    with open(os.path.join(site, "zz-deps.pth"), "w") as f:
        f.write(ours + "\n")
    code = ("import gpushare, os; from gpushare.v1 import gpushare_pb2 as p; "
            "assert gpushare.__file__.startswith(%r); print(p.FdReply.DESCRIPTOR.full_name)" % site)
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=str(tmp_path),
                         capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "gpushare.v1.FdReply"


class _FakeDevice:
    ordinal = 3
    uuid = bytes(16)


def _fake_buffer(size=1 << 20, ptr=0x7F0000000000):
    """A CudaBuffer over a fake import (no driver): its views and protocols, not its memory."""
    import gpushare.cuda as gcuda

    mem = gcuda._ImportedMemory.__new__(gcuda._ImportedMemory)
    mem.device, mem.ext, mem.ptr, mem.size, mem.usable = _FakeDevice(), None, ptr, size, size - 4096
    return gcuda.CudaBuffer(mem, "buf-1", 0, size - 4096)


def test_cuda_buffer_views_and_array_interface():
    buf = _fake_buffer()
    assert buf.nbytes == (1 << 20) - 4096 and buf.shape == (buf.nbytes,)
    assert buf.__dlpack_device__() == (2, 3)
    v = buf.view(4096, dtype="float32", shape=(16, 4))
    cai = v.__cuda_array_interface__
    assert cai["version"] == 3 and cai["typestr"] == "<f4" and cai["shape"] == (16, 4)
    assert cai["data"] == (0x7F0000000000 + 4096, False)
    assert "stream" not in cai
    v.stream = 0  # the legacy default stream is named 1 in the interface
    assert v.__cuda_array_interface__["stream"] == 1
    w = v.view(256, dtype="uint8")  # relative to v
    assert w.ptr == 0x7F0000000000 + 4096 + 256
    assert w.nbytes == v.nbytes - 256
    # Views may reach the whole allocation (a shared buffer holding many tensors) but not past it.
    end = (1 << 20) - 4096
    tail = v.view(end - 4096 - 64, dtype="int32", shape=16)  # beyond v, within the buffer
    assert tail.nbytes == 64 and tail.ptr == 0x7F0000000000 + end - 64
    with pytest.raises(ValueError):
        buf.view(end - 60, dtype="int32", shape=16)
    with pytest.raises(ValueError):
        buf.view(0, 8, dtype="float64", shape=2)
    with pytest.raises(AttributeError):
        buf.view(0, dtype="bfloat16", shape=4).__cuda_array_interface__


def test_cuda_buffer_dlpack_capsules_without_a_driver():
    buf = _fake_buffer()
    base = _dlpack.live_count()
    v = buf.view(0, dtype="float16", shape=(8, 8))
    cap = v.__dlpack__(max_version=(1, 0))
    assert "dltensor_versioned" in repr(cap)
    assert _dlpack.live_count() == base + 1
    del cap
    assert _dlpack.live_count() == base
    cap = v.__dlpack__(stream=-1)  # legacy capsule for a consumer without max_version
    assert "dltensor" in repr(cap) and "versioned" not in repr(cap)
    del cap
    with pytest.raises(BufferError):
        v.__dlpack__(copy=True)
    with pytest.raises(BufferError):
        v.__dlpack__(dl_device=(1, 0))
    assert _dlpack.live_count() == base


def test_cuda_imports_take_a_resource_with_its_client(client):
    import gpushare.cuda as gcuda

    if _cuda_missing_or_no_driver() is None:
        pytest.skip("SKIP: this machine has a CUDA driver (the GPU tests cover the imports)")
    buf = client.create_buffer(4096)
    with pytest.raises(TypeError):
        gcuda.import_buffer(buf)  # a resource needs its client
    with pytest.raises(gcuda.CudaUnavailable):
        gcuda.import_buffer(buf, client)  # exported, then refused, the descriptor closed
    img = client.create_image("rgba8unorm", 4, 4)
    with pytest.raises(gcuda.CudaUnavailable):
        gcuda.import_image(img)  # an Image handle exports itself


def test_readme_shows_the_example_files_as_they_are():
    with open(os.path.join(PKG_ROOT, "README.md")) as f:
        readme = f.read()
    for name in ("producer.py", "consumer.py", "stream_producer.py", "stream_consumer.py"):
        with open(os.path.join(PKG_ROOT, "examples", name)) as f:
            text = f.read().rstrip()
        assert text in readme, f"README's copy of examples/{name} is stale"
        assert len(text.splitlines()) < 30
