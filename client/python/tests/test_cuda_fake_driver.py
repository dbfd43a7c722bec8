"""gpushare.cuda's call sequences against a fake driver (no GPU): the real cuda-bindings structs,
enums and constants, with every cu* function replaced by a fake that checks its argument types
and records the call. Real exports from the daemon supply the descriptors and metadata.

What this proves without a GPU: every name gpushare.cuda uses exists in cuda-bindings, the
descriptors it fills are the types the driver functions take with the fields the Rust client
sets, descriptors pass to "CUDA" on success and are closed on failure, and things are destroyed
in order. What it cannot: that the real driver accepts them (the GPU suite does that)."""

import gc
import os

import grpc
import pytest

import gpushare
from gpushare import pb

real = pytest.importorskip("cuda.bindings.driver", reason="SKIP: cuda-bindings is not installed")

import gpushare.cuda as gcuda  # noqa: E402

OK = real.CUresult.CUDA_SUCCESS


class FakeDriver:
    def __init__(self, uuid: bytes, fail=()):
        self.uuid = uuid
        self.calls = []
        self.fail = set(fail)
        self.live = {}  # handle -> kind
        self.next = 0x1000
        self.imported_fds = []

    def __getattr__(self, name):
        if name.startswith("cu"):
            raise AttributeError(f"the fake driver lacks {name}: add it")
        return getattr(real, name)  # structs, enums, constants: the real ones

    def _new(self, kind):
        self.next += 0x100
        self.live[self.next] = kind
        return self.next

    def _call(self, name, *result):
        self.calls.append(name)
        if name in self.fail:
            return (real.CUresult.CUDA_ERROR_INVALID_VALUE,)
        return (OK, *result)

    # devices and contexts
    def cuInit(self, flags):
        return self._call("cuInit")

    def cuDeviceGetCount(self):
        return self._call("cuDeviceGetCount", 1)

    def cuDeviceGet(self, i):
        return self._call("cuDeviceGet", real.CUdevice(i))

    def cuDeviceGetUuid(self, dev):
        u = real.CUuuid()
        return self._call("cuDeviceGetUuid", type("U", (), {"bytes": self.uuid})())

    def cuDeviceGetName(self, n, dev):
        return self._call("cuDeviceGetName", b"Fake GPU\0")

    def cuDeviceGetAttribute(self, attr, dev):
        assert isinstance(attr, real.CUdevice_attribute)
        self.attributes_read = getattr(self, "attributes_read", []) + [attr]
        return self._call("cuDeviceGetAttribute", self.attribute_values.get(attr, 1))

    attribute_values = {}

    def cuDevicePrimaryCtxRetain(self, dev):
        return self._call("cuDevicePrimaryCtxRetain", real.CUcontext(0xC0))

    def cuCtxPushCurrent(self, ctx):
        assert isinstance(ctx, real.CUcontext)
        return self._call("cuCtxPushCurrent")

    def cuCtxPopCurrent(self):
        return self._call("cuCtxPopCurrent", real.CUcontext(0xC0))

    def cuGetErrorString(self, err):
        return (OK, b"fake error")

    # memory
    def cuImportExternalMemory(self, desc):
        assert isinstance(desc, real.CUDA_EXTERNAL_MEMORY_HANDLE_DESC)
        assert desc.type == real.CUexternalMemoryHandleType.CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD
        assert desc.size > 0 and desc.handle.fd >= 0
        os.fstat(desc.handle.fd)  # still open: ownership passes only on success
        self.last_import = (desc.handle.fd, desc.size, desc.flags)
        r = self._call("cuImportExternalMemory", real.CUexternalMemory(0))
        if r[0] == OK:
            self.imported_fds.append(desc.handle.fd)
            return (OK, real.CUexternalMemory(self._new("extmem")))
        return r

    def cuExternalMemoryGetMappedBuffer(self, ext, desc):
        assert isinstance(desc, real.CUDA_EXTERNAL_MEMORY_BUFFER_DESC)
        assert self.live[int(ext)] == "extmem" and desc.offset == 0 and desc.size > 0
        if "cuExternalMemoryGetMappedBuffer" in self.fail:
            return self._call("cuExternalMemoryGetMappedBuffer")
        return self._call("cuExternalMemoryGetMappedBuffer", real.CUdeviceptr(self._new("ptr")))

    def cuMemFree(self, ptr):
        assert isinstance(ptr, real.CUdeviceptr) and self.live.pop(int(ptr)) == "ptr"
        return self._call("cuMemFree")

    def cuDestroyExternalMemory(self, ext):
        assert self.live.pop(int(ext)) == "extmem"
        assert "ptr" not in self.live.values() and "mipmap" not in self.live.values()
        return self._call("cuDestroyExternalMemory")

    # semaphores and events
    def cuImportExternalSemaphore(self, desc):
        assert isinstance(desc, real.CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC)
        assert desc.type == (
            real.CUexternalSemaphoreHandleType.CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD
        )
        os.fstat(desc.handle.fd)
        self.imported_fds.append(desc.handle.fd)
        return self._call("cuImportExternalSemaphore", real.CUexternalSemaphore(self._new("sem")))

    def _sem_op(self, name, sems, params, n, stream, kind):
        assert n == 1 and len(sems) == 1 and self.live[int(sems[0])] == "sem"
        assert isinstance(params[0], kind) and isinstance(stream, real.CUstream)
        self.last_op = (name, params[0].params.fence.value, int(stream))
        return self._call(name)

    def cuSignalExternalSemaphoresAsync(self, sems, params, n, stream):
        return self._sem_op("cuSignalExternalSemaphoresAsync", sems, params, n, stream,
                            real.CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS)

    def cuWaitExternalSemaphoresAsync(self, sems, params, n, stream):
        return self._sem_op("cuWaitExternalSemaphoresAsync", sems, params, n, stream,
                            real.CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS)

    def cuDestroyExternalSemaphore(self, sem):
        assert self.live.pop(int(sem)) == "sem"
        return self._call("cuDestroyExternalSemaphore")

    def cuEventCreate(self, flags):
        assert isinstance(flags, int)
        return self._call("cuEventCreate", real.CUevent(self._new("event")))

    def cuEventRecord(self, event, stream):
        assert self.live[int(event)] == "event" and isinstance(stream, real.CUstream)
        return self._call("cuEventRecord")

    def cuEventQuery(self, event):
        return self._call("cuEventQuery")

    def cuEventDestroy(self, event):
        assert self.live.pop(int(event)) == "event"
        return self._call("cuEventDestroy")

    def cuStreamSynchronize(self, stream):
        assert isinstance(stream, real.CUstream)
        self.last_sync = int(stream)
        return self._call("cuStreamSynchronize")

    def cuStreamCreate(self, flags):
        assert isinstance(flags, int)
        return self._call("cuStreamCreate", real.CUstream(self._new("stream")))

    def cuStreamDestroy(self, stream):
        assert isinstance(stream, real.CUstream) and self.live.pop(int(stream)) == "stream"
        return self._call("cuStreamDestroy")

    def _memop(self, name, stream, addr, value, flags):
        assert isinstance(stream, real.CUstream) and isinstance(addr, real.CUdeviceptr)
        assert self.live[int(addr)] == "ptr" and isinstance(value, int) and isinstance(flags, int)
        self.memops = getattr(self, "memops", []) + [(name, int(stream), value, flags)]
        return self._call(name)

    def cuStreamWriteValue64(self, stream, addr, value, flags):
        return self._memop("cuStreamWriteValue64", stream, addr, value, flags)

    def cuStreamWaitValue64(self, stream, addr, value, flags):
        return self._memop("cuStreamWaitValue64", stream, addr, value, flags)

    def cuStreamWaitEvent(self, stream, event, flags):
        assert isinstance(stream, real.CUstream) and self.live[int(event)] == "event"
        return self._call("cuStreamWaitEvent")

    # images
    def cuExternalMemoryGetMappedMipmappedArray(self, ext, desc):
        assert isinstance(desc, real.CUDA_EXTERNAL_MEMORY_MIPMAPPED_ARRAY_DESC)
        a = desc.arrayDesc
        self.last_array = (a.Width, a.Height, a.Depth, a.Format, a.NumChannels, a.Flags,
                           desc.numLevels)
        return self._call("cuExternalMemoryGetMappedMipmappedArray",
                          real.CUmipmappedArray(self._new("mipmap")))

    def cuMipmappedArrayGetLevel(self, array, level):
        assert self.live[int(array)] == "mipmap"
        return self._call("cuMipmappedArrayGetLevel", real.CUarray(0xA000 + level))

    def cuMipmappedArrayDestroy(self, array):
        assert self.live.pop(int(array)) == "mipmap"
        assert "surf" not in self.live.values() and "tex" not in self.live.values()
        return self._call("cuMipmappedArrayDestroy")

    def cuSurfObjectCreate(self, res):
        assert isinstance(res, real.CUDA_RESOURCE_DESC)
        assert res.resType == real.CUresourcetype.CU_RESOURCE_TYPE_ARRAY
        return self._call("cuSurfObjectCreate", real.CUsurfObject(self._new("surf")))

    def cuSurfObjectDestroy(self, obj):
        assert self.live.pop(int(obj)) == "surf"
        return self._call("cuSurfObjectDestroy")

    def cuTexObjectCreate(self, res, tex, view):
        assert isinstance(res, real.CUDA_RESOURCE_DESC) and isinstance(tex, real.CUDA_TEXTURE_DESC)
        self.last_tex = (res.resType, tex.flags, tex.maxMipmapLevelClamp)
        return self._call("cuTexObjectCreate", real.CUtexObject(self._new("tex")))

    def cuTexObjectDestroy(self, obj):
        assert self.live.pop(int(obj)) == "tex"
        return self._call("cuTexObjectDestroy")


@pytest.fixture(autouse=True)
def _collect_under_the_fake(monkeypatch):
    """Objects made against the fake driver must be destroyed while it is still installed:
    collected later, on a machine with a real driver (the GPU suite), their fake handles would
    reach the real one (a segfault in cuCtxPushCurrent, seen on the H100). Set up after
    monkeypatch, this teardown runs before monkeypatch restores the real driver module."""
    yield
    gc.collect()


@pytest.fixture
def fake(monkeypatch, info, _collect_under_the_fake):
    uuid = bytes(info.devices[0].device_uuid)
    drv = FakeDriver(uuid)
    monkeypatch.setattr(gcuda, "_driver_module", drv)
    monkeypatch.setattr(gcuda, "_devices", {})
    return drv


def _closed(fd):
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_buffer_import_views_and_free(client, fake):
    buf = client.create_buffer(10000)
    exp = client.export(buf)
    meta = exp.info.buffer
    cbuf = gcuda.import_buffer(exp)
    assert exp.closed  # detached: the "driver" owns the descriptor now
    fd, size, flags = fake.last_import
    assert size == meta.allocation_size
    assert flags == (real.CUDA_EXTERNAL_MEMORY_DEDICATED if meta.dedicated else 0)
    assert cbuf.nbytes == 10000 and cbuf.device == 0
    v = cbuf.view(4096, dtype="float32", shape=16)
    assert v.ptr == cbuf.ptr + 4096
    cap = v.__dlpack__(stream=1, max_version=(1, 0))
    del cbuf, v
    assert "extmem" in fake.live.values()  # the capsule holds the import
    del cap
    assert "extmem" not in fake.live.values() and "ptr" not in fake.live.values()
    os.close(fd)  # the fake driver does not close what it was given


def test_buffer_import_failure_closes_the_descriptor(client, fake):
    fake.fail.add("cuImportExternalMemory")
    buf = client.create_buffer(4096)
    exp = client.export(buf)
    fd = exp.fd
    with pytest.raises(gcuda.CudaError) as e:
        gcuda.import_buffer(exp)
    assert "cuImportExternalMemory" in str(e.value) and "fake error" in str(e.value)
    assert exp.closed and _closed(fd)
    fake.fail = {"cuExternalMemoryGetMappedBuffer"}
    with pytest.raises(gcuda.CudaError):
        gcuda.import_buffer(buf, client)
    assert not fake.live  # the import was destroyed again
    for fd in fake.imported_fds:
        os.close(fd)


def test_another_gpu_is_named(client, monkeypatch, _collect_under_the_fake):
    drv = FakeDriver(b"\xee" * 16)
    monkeypatch.setattr(gcuda, "_driver_module", drv)
    monkeypatch.setattr(gcuda, "_devices", {})
    buf = client.create_buffer(4096)
    exp = client.export(buf)
    fd = exp.fd
    with pytest.raises(gcuda.DeviceNotVisible) as e:
        gcuda.import_buffer(exp)
    uuid = gcuda.format_uuid(bytes(exp.info.device_uuid))
    assert uuid in str(e.value) and "eeeeeeee-eeee" in str(e.value)
    assert _closed(fd)


def test_semaphore_signal_wait_on_streams_and_close(client, fake):
    class TorchStream:
        cuda_stream = 0x5000

    # lavapipe cannot export timeline semaphores: a descriptor of /dev/null with the metadata
    # the daemon sends (the fake driver only checks that it is open).
    info = pb.ExportedFd(
        resource_id="sem-fake", kind=pb.RESOURCE_KIND_SEMAPHORE,
        handle_type=pb.HANDLE_TYPE_OPAQUE_FD, device_uuid=fake.uuid,
        semaphore=pb.SemaphoreImport(timeline=True, value=0),
    )
    exp = gpushare.Exported(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), info)
    csem = gcuda.import_semaphore(exp)
    assert exp.closed
    csem.signal(3, TorchStream())
    assert fake.last_op == ("cuSignalExternalSemaphoresAsync", 3, 0x5000)
    csem.wait(3, None)
    assert fake.last_op == ("cuWaitExternalSemaphoresAsync", 3, 0)
    csem.wait(4, TorchStream())
    assert fake.calls.count("cuEventCreate") == 2  # one event per stream, re-recorded
    with pytest.raises(ValueError):
        csem.signal(0)
    csem.close()
    assert not any(k in ("sem", "event") for k in fake.live.values())
    for fd in fake.imported_fds:
        os.close(fd)


def test_image_array_surface_texture(client, fake):
    img = client.create_image("rgba16float", 32, 16, mip_levels=3, array_layers=2)
    cimg = gcuda.import_image(img)
    w, h, d, fmt, ch, flags, levels = fake.last_array
    assert (w, h, d, ch) == (32, 16, 2, 4)
    assert fmt == real.CUarray_format.CU_AD_FORMAT_HALF
    assert flags & real.CUDA_ARRAY3D_LAYERED and flags & real.CUDA_ARRAY3D_SURFACE_LDST
    assert levels == 6  # a layered partial chain is mapped with the full chain
    surf = cimg.surface(1)
    tex = cimg.texture()
    res_type, tex_flags, clamp = fake.last_tex
    assert res_type == real.CUresourcetype.CU_RESOURCE_TYPE_MIPMAPPED_ARRAY
    assert tex_flags & real.CU_TRSF_NORMALIZED_COORDINATES and clamp == 2.0
    with pytest.raises(ValueError):
        cimg.level(3)
    with pytest.raises(ValueError):
        cimg.texture(normalized_coords=False)
    surf.close()
    tex.close()
    cimg.close()
    assert not fake.live
    vol = client.create_image("r32uint", 8, 8, depth=4)
    cvol = gcuda.import_image(vol)
    assert fake.last_array[:5] == (8, 8, 4, real.CUarray_format.CU_AD_FORMAT_UNSIGNED_INT32, 1)
    cvol.texture()
    assert fake.last_tex[1] & real.CU_TRSF_READ_AS_INTEGER
    for fd in fake.imported_fds:
        os.close(fd)


# ---- frame streams on the GPU (CudaProducer / CudaConsumer) ----


class TorchStream:
    def __init__(self, handle):
        self.cuda_stream = handle


def _fake_semaphore(sem_id, uuid, value=0):
    """A timeline's Exported as the daemon sends it (lavapipe cannot export timeline
    semaphores: a descriptor of /dev/null; the fake driver only checks that it is open)."""
    info = pb.ExportedFd(
        resource_id=sem_id, kind=pb.RESOURCE_KIND_SEMAPHORE,
        handle_type=pb.HANDLE_TYPE_OPAQUE_FD, device_uuid=uuid,
        semaphore=pb.SemaphoreImport(timeline=True, value=value),
    )
    return gpushare.Exported(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), info)


@pytest.fixture
def second(daemon):
    with daemon.client(client_name="pytest second") as c:
        yield c


@pytest.fixture
def gpu_points(monkeypatch, fake):
    """Makes HOST-points roles look like GPU-points ones to gpushare.cuda: the attachment says
    GPU, and timelines (which lavapipe cannot export) redeem as fake descriptors. The daemon
    still books the slots and points (HOST points take nonzero values, signaled at the call),
    so the sequence of frame calls is the real one. Returns the timelines exported by id."""
    exported = {}
    real_redeem = gcuda._CudaRole._redeem

    def redeem(self, part, what, word=False):
        if part.resource_id.startswith("sem-"):
            assert word, "a timeline is redeemed with its word"
            exported[part.resource_id] = exported.get(part.resource_id, 0) + 1
            return _fake_semaphore(part.resource_id, fake.uuid)
        assert not word
        return real_redeem(self, part, what)

    monkeypatch.setattr(gcuda._CudaRole, "_redeem", redeem)

    def make_gpu(role):
        role._role.attachment.stream.points = pb.STREAM_POINTS_GPU
        assert role.gpu_points
        return role

    def lazy_timelines(client, gone=()):
        def export_ticket(sem_id):
            if sem_id in gone:
                raise gpushare.GpushareError(grpc.StatusCode.NOT_FOUND, f"{sem_id} is gone")
            exported[sem_id] = exported.get(sem_id, 0) + 1
            return pb.ExportResponse(ticket=b"fake:" + sem_id.encode())

        real_client_redeem = client.redeem

        def redeem_ticket(ticket, timeout=10.0, word=False):
            if ticket.startswith(b"fake:"):
                return _fake_semaphore(ticket[5:].decode(), fake.uuid)
            return real_client_redeem(ticket, timeout, word)

        monkeypatch.setattr(client, "export_ticket", export_ticket)
        monkeypatch.setattr(client, "redeem", redeem_ticket)

    return make_gpu, lazy_timelines, exported


def test_stream_roles_gpu_points_call_sequence(client, second, fake, gpu_points):
    make_gpu, lazy_timelines, exported = gpu_points
    lazy_timelines(client)
    producer = make_gpu(client.create_stream(2, buffer_size=4096))
    consumer = make_gpu(second.attach_consumer(producer.id, "fifo", 1))
    ps, cs = TorchStream(0x5000), TorchStream(0x6000)
    cp = gcuda.CudaProducer(producer)
    cc = gcuda.CudaConsumer(consumer)
    assert cp.slot_count == 2 and all(isinstance(b, gcuda.CudaBuffer) for b in cp.buffers)
    assert cp.buffers[0].ptr != cp.buffers[1].ptr and cp.buffers[0].nbytes == 4096
    assert cp.ready.id == producer.info.ready_timeline_id == cc.ready.id
    assert cc.release_timeline.id == consumer.attachment.release.resource_id
    # The lazy-loading guard: the first acquire without warm_up warns; warm_up runs the
    # kernels and synchronizes the stream.
    with pytest.warns(gcuda.LazyLoadingWarning):
        first = cp.acquire(ps)
    ran = []
    cc.warm_up(lambda: ran.append(1), stream=cs)
    assert ran == [1] and fake.last_sync == 0x6000
    release_id = consumer.attachment.release.resource_id
    for n in range(1, 5):
        slot = first if n == 1 else cp.acquire(ps, timeout_ms=1000)
        # Slot 0 comes back at frame 3 with the consumer's release point of frame 1 to wait for
        # (its timeline imported then, once); fresh slots have none.
        if n == 3:
            assert slot.index == 0 and slot.waits == [(release_id, 1)]
            assert fake.last_op == ("cuWaitExternalSemaphoresAsync", 1, 0x5000)
        elif n == 4:
            assert slot.waits == [(release_id, 2)]
        else:
            assert slot.waits == []
        assert slot.buffer is cp.buffers[slot.index]
        presented = cp.present(slot, ps, number=n, user_data=b"x")
        assert fake.last_op == ("cuSignalExternalSemaphoresAsync", n, 0x5000)
        assert presented.ready_value == n and presented.sequence == n
        frame = cc.acquire(cs, timeout_ms=1000)
        assert fake.last_op == ("cuWaitExternalSemaphoresAsync", n, 0x6000)
        assert (frame.number, frame.sequence, frame.index) == (n, n, slot.index)
        assert frame.waits == [(cp.ready.id, n)] and cc.held == [frame]
        assert cc.release(frame, cs) == n
        assert fake.last_op == ("cuSignalExternalSemaphoresAsync", n, 0x6000)
    # Its timeline redeemed twice: by the consumer at its import, by the producer once.
    assert exported[release_id] == 2 and cp.last_ready_value == 4 and cc.last_release_value == 4
    # Refused locally, before anything is signaled.
    with pytest.raises(ValueError, match="not acquired"):
        cp.present(0, ps)
    with pytest.raises(ValueError, match="no frame held"):
        cc.release(1, cs)
    with pytest.raises(ValueError, match="outside"):
        cp.tensor(2)
    slot = cp.acquire(ps)
    with pytest.raises(ValueError, match="256"):
        cp.present(slot, ps, user_data=bytes(257))
    with pytest.raises(TypeError):
        cp.acquire(object())
    assert cp.last_ready_value == 4
    cp.close()
    cc.close()
    consumer.detach()
    producer.detach()
    assert "sem" not in fake.live.values() and "event" not in fake.live.values()
    for fd in fake.imported_fds:
        os.close(fd)


def test_producer_skips_a_timeline_gone(client, fake, gpu_points):
    make_gpu, lazy_timelines, exported = gpu_points
    lazy_timelines(client, gone=("sem-gone",))
    cp = gcuda.CudaProducer(make_gpu(client.create_stream(2, buffer_size=64)))
    assert cp._timeline("sem-gone") is None and cp._timeline("sem-gone") is None
    assert cp._timeline("sem-here") is cp._timeline("sem-here") is not None
    assert exported["sem-here"] == 1
    assert cp._timeline(cp.ready.id) is cp.ready  # its own timeline is not imported twice
    cp.close()
    cp.producer.detach()
    for fd in fake.imported_fds:
        os.close(fd)


def test_stream_roles_host_fallback(client, second, fake):
    producer = client.create_stream(2, buffer_size=256)
    consumer = second.attach_consumer(producer.id, "fifo", 1)
    with pytest.raises(gcuda.HostPointsError):
        gcuda.CudaProducer(producer)
    cp = gcuda.CudaProducer(producer, host_fallback=True)
    cc = gcuda.CudaConsumer(consumer, host_fallback=True)
    assert cp.ready is None and cc.release_timeline is None and not cp.gpu_points
    for n in range(1, 4):
        slot = cp.acquire(TorchStream(0x7000))
        fake.last_sync = None
        assert cp.present(slot, TorchStream(0x7000), number=n).ready_value == n
        assert fake.last_sync == 0x7000  # synchronized on the host, then "ready now"
        frame = cc.acquire(None)
        assert frame.number == n and frame.waits == []
        assert cc.release(frame, TorchStream(0x8000)) == n and fake.last_sync == 0x8000
    assert not any(c.startswith("cuWaitExternal") or c.startswith("cuSignalExternal")
                   for c in fake.calls)
    cp.close()
    cc.close()
    consumer.detach()
    producer.detach()
    for fd in fake.imported_fds:
        os.close(fd)


def test_image_slots_have_no_tensor_view(client, fake):
    producer = client.create_stream(2, image={"format": "rgba8unorm", "width": 8, "height": 8})
    cp = gcuda.CudaProducer(producer, host_fallback=True)
    assert all(isinstance(b, gcuda.CudaImage) for b in cp.buffers)
    with pytest.raises(TypeError, match="image"):
        cp.tensor(0)
    cp.close()
    producer.detach()
    for fd in fake.imported_fds:
        os.close(fd)


def test_warm_up_makes_a_cupy_stream_current(client, fake):
    class CupyStream:  # what gpushare.cuda sees of a cupy.cuda.Stream: module, ptr, `with`
        __module__ = "cupy.cuda.stream"
        ptr = 0x9000
        current = False

        def __enter__(self):
            CupyStream.current = True
            return self

        def __exit__(self, *exc):
            CupyStream.current = False

    producer = client.create_stream(2, buffer_size=64)
    cp = gcuda.CudaProducer(producer, host_fallback=True)
    seen = []
    cp.warm_up(lambda: seen.append(CupyStream.current), stream=CupyStream())
    assert seen == [True] and not CupyStream.current and fake.last_sync == 0x9000
    cp.warm_up(lambda: seen.append("raw"), stream=0x9100)  # a raw handle: nothing to enter
    assert seen[-1] == "raw" and fake.last_sync == 0x9100
    cp.close()
    producer.detach()
    for fd in fake.imported_fds:
        os.close(fd)


def _worded_export(fake, word_exists=True, with_fd=True):
    """A semaphore export as the daemon sends it for a semaphore with a memop word (lavapipe
    makes none): descriptors of /dev/null, the word's second."""
    info = pb.ExportedFd(
        resource_id="sem-worded", kind=pb.RESOURCE_KIND_SEMAPHORE,
        handle_type=pb.HANDLE_TYPE_OPAQUE_FD, device_uuid=fake.uuid,
        semaphore=pb.SemaphoreImport(timeline=True, value=0, word_exists=word_exists),
    )
    if word_exists and with_fd:
        info.semaphore.word.CopyFrom(pb.BufferImport(size=64, allocation_size=65536, dedicated=True))
    word_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) if with_fd and word_exists else -1
    return gpushare.Exported(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), info, word_fd)


def test_the_fast_path_writes_and_waits_on_the_word(client, fake):
    class TorchStream:
        cuda_stream = 0x5000

    exp = _worded_export(fake)
    word_fd = exp.word_fd
    csem = gcuda.import_semaphore(exp)
    assert exp.closed and exp.word_fd == -1
    assert csem.path == "word" and csem.fallback is None and csem.word_ptr
    assert real.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS in (
        fake.attributes_read
    )
    fd, size, flags = fake.last_import
    assert fd == word_fd and size == 65536 and flags == real.CUDA_EXTERNAL_MEMORY_DEDICATED
    fake.memops = []
    csem.signal(3, TorchStream())
    write, mirror_wait = fake.memops
    assert write[:3] == ("cuStreamWriteValue64", 0x5000, 3)
    geq = int(real.CUstreamWaitValue_flags.CU_STREAM_WAIT_VALUE_GEQ)
    assert mirror_wait[0] == "cuStreamWaitValue64" and mirror_wait[2:] == (3, geq)
    mirror = mirror_wait[1]
    assert mirror != 0x5000 and fake.live[mirror] == "stream"
    # The semaphore itself is signaled on the mirror stream, after the word.
    assert fake.last_op == ("cuSignalExternalSemaphoresAsync", 3, mirror)
    fake.memops = []
    csem.wait(3, None)
    assert fake.memops == [("cuStreamWaitValue64", 0, 3, geq)]
    assert "cuWaitExternalSemaphoresAsync" not in fake.calls
    csem.close()
    assert not any(k in ("sem", "event", "stream", "extmem", "ptr") for k in fake.live.values())
    for fd in fake.imported_fds:
        os.close(fd)


def test_the_path_falls_back_or_fails_and_says_why(client, fake):
    # Asked for the semaphore path: the word's descriptor is closed, not imported.
    exp = _worded_export(fake)
    word_fd = exp.word_fd
    csem = gcuda.import_semaphore(exp, path="semaphore")
    assert csem.path == "semaphore" and csem.fallback is None and _closed(word_fd)
    csem.close()
    # No word at all: auto falls back, saying so; "word" refuses.
    csem = gcuda.import_semaphore(_worded_export(fake, word_exists=False))
    assert csem.path == "semaphore" and "no memop word" in csem.fallback
    csem.close()
    with pytest.raises(gcuda.FastPathUnavailable, match="no memop word"):
        gcuda.import_semaphore(_worded_export(fake, word_exists=False), path="word")
    # A word exported without its descriptor.
    csem = gcuda.import_semaphore(_worded_export(fake, with_fd=False))
    assert "word=True" in csem.fallback
    csem.close()
    # A device without 64-bit memory operations.
    attr = real.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS
    fake.attribute_values = {attr: 0}
    csem = gcuda.import_semaphore(_worded_export(fake))
    assert "CAN_USE_64_BIT_STREAM_MEM_OPS = 0" in csem.fallback
    csem.close()
    exp = _worded_export(fake)
    fds = (exp.fd, exp.word_fd)
    with pytest.raises(gcuda.FastPathUnavailable):
        gcuda.import_semaphore(exp, path="word")
    assert all(_closed(fd) for fd in fds)
    with pytest.raises(ValueError, match="path"):
        gcuda.import_semaphore(_worded_export(fake), path="fast")
    for fd in fake.imported_fds:
        os.close(fd)


def test_a_failed_word_import_closes_both_descriptors(client, fake):
    fake.fail.add("cuExternalMemoryGetMappedBuffer")
    exp = _worded_export(fake)
    fds = (exp.fd, exp.word_fd)
    with pytest.raises(gcuda.CudaError):
        gcuda.import_semaphore(exp)
    assert _closed(fds[0])
    assert not fake.live  # the word's import was destroyed again
    for fd in fake.imported_fds:
        os.close(fd)
