//! CUDA tests against real drivers: a Vulkan device and its CUDA device (matched by UUID) share
//! memory and a timeline semaphore, in one process. Runs on the GPU machine.
//!
//! Without CUDA (no libcuda, no CUDA device) or without a Vulkan device that CUDA sees, each test
//! prints `SKIP: <reason>` and returns, unless `GPUSHARE_REQUIRE_GPU=1`, where that is a failure.
//! Tests run one at a time (a process-wide lock): some count this process's open descriptors.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gpushare_interop::cuda::cudarc::driver::DevicePtr;
use gpushare_interop::cuda::{
    self, copy_dtod, copy_dtoh, copy_htod, memops, memset_d32, CudaDevice, DeviceAllocation,
    ExternalMemory, ExternalSemaphore, MatchMethod, PinnedBuffer,
};
use gpushare_interop::vulkan::{self, DeviceSelector, Instance, SyncPoints, Transfer};

static LOCK: Mutex<()> = Mutex::new(());

/// A Vulkan device and the CUDA device with the same UUID.
struct Env {
    _guard: MutexGuard<'static, ()>,
    vk: Arc<vulkan::Device>,
    cu: Arc<CudaDevice>,
}

fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("GPUSHARE_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("GPUSHARE_REQUIRE_GPU=1 but {reason}");
    }
    println!("SKIP: {reason}");
    None
}

/// The CUDA side alone, or `None` after printing why not.
fn cuda_env() -> Option<(MutexGuard<'static, ()>, Vec<cuda::CudaDeviceInfo>)> {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !cuda::is_present() {
        return skip("no CUDA driver (libcuda) on this host");
    }
    let devices = cuda::devices().expect("listing CUDA devices");
    if devices.is_empty() {
        return skip("the CUDA driver sees no device");
    }
    Some((guard, devices))
}

/// A Vulkan device paired with its CUDA device by UUID, or `None` after printing why not.
fn env() -> Option<Env> {
    let (guard, cuda_devices) = cuda_env()?;
    let instance = match Instance::new("gpushare-interop-cuda-tests") {
        Ok(i) => i,
        Err(e) => return skip(&format!("no Vulkan instance: {e}")),
    };
    let vk_devices = instance.devices().expect("listing Vulkan devices");
    let paired = vk_devices.iter().find_map(|d| {
        cuda::match_device(&d.device_uuid, &d.name, &cuda_devices, true)
            .ok()
            .map(|(i, method)| (d, i, method))
    });
    let Some((vk_info, index, method)) = paired else {
        let names: Vec<_> = vk_devices.iter().map(|d| d.name.as_str()).collect();
        return skip(&format!(
            "no Vulkan device has a CUDA device's UUID (Vulkan devices: {names:?})"
        ));
    };
    assert_eq!(method, MatchMethod::Uuid);
    let vk = vulkan::Device::open(&instance, &DeviceSelector::Uuid(vk_info.device_uuid))
        .expect("opening the Vulkan device");
    let cu = CudaDevice::by_uuid(&vk_info.device_uuid).expect("opening the CUDA device");
    assert_eq!(cu.info().ordinal, cuda_devices[index].ordinal);
    println!(
        "Vulkan {} ({}) = CUDA {} {} (cc {:?})",
        vk_info.name,
        vk_info.driver_info,
        cu.info().ordinal,
        cu.info().name,
        cu.info().compute_capability
    );
    Some(Env {
        _guard: guard,
        vk,
        cu,
    })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn is_open(fd: i32) -> bool {
    std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists()
}

fn sync<'a>() -> SyncPoints<'a> {
    SyncPoints {
        timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

#[test]
fn devices_version_and_lookup() {
    let Some((_guard, devices)) = cuda_env() else {
        return;
    };
    let (major, minor) = cuda::driver_version().unwrap();
    println!("CUDA driver version {major}.{minor}");
    assert!(major >= 11, "{major}.{minor}");
    for d in &devices {
        println!("CUDA device {d:?}");
        assert!(d.uuid.iter().any(|&b| b != 0), "{d:?}");
        assert!(d.total_memory > 0);
        let by_uuid = CudaDevice::by_uuid(&d.uuid).unwrap();
        assert_eq!(by_uuid.info().ordinal, d.ordinal);
        by_uuid.synchronize().unwrap();
        by_uuid.synchronize_stream().unwrap();
    }
    let missing = [0xeeu8; 16];
    let e = CudaDevice::by_uuid(&missing).unwrap_err();
    assert!(matches!(e, cuda::Error::NoMatch { uuid, .. } if uuid == missing));
    let msg = e.to_string();
    assert!(
        msg.contains("eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee"),
        "{msg}"
    );
    assert!(msg.contains("CUDA_VISIBLE_DEVICES"), "{msg}");
    assert!(matches!(
        CudaDevice::open(9999),
        Err(cuda::Error::InvalidValue { .. })
    ));
}

/// Vulkan writes and signals 1; CUDA, waiting for 1 on its stream, reads, fills and signals 2;
/// Vulkan waits for 2 and reads the fill; then CUDA copies within the buffer and signals 3.
#[test]
fn vulkan_and_cuda_share_memory_and_a_timeline() {
    let Some(env) = env() else { return };
    const LEN: usize = 1 << 20;
    let buffer = env.vk.create_exportable_buffer(LEN as u64).unwrap();
    let sem = env.vk.create_timeline_semaphore(0, true).unwrap();
    let desc = buffer.import_desc();
    println!(
        "buffer size {} allocation {} dedicated {}",
        desc.size, desc.allocation_size, desc.dedicated
    );
    let mem = ExternalMemory::import_opaque_fd(
        &env.cu,
        buffer.export_fd().unwrap(),
        desc.allocation_size,
        desc.dedicated,
    )
    .unwrap();
    assert_eq!(mem.size(), desc.allocation_size);
    let ext = ExternalSemaphore::import_timeline_fd(&env.cu, sem.export_fd().unwrap()).unwrap();
    let ptr = mem.device_ptr().unwrap();
    assert_eq!(
        mem.device_ptr().unwrap(),
        ptr,
        "the whole mapping is cached"
    );
    assert!(matches!(
        mem.map_range(0, mem.size() + 1),
        Err(cuda::Error::OutOfRange { .. })
    ));
    assert!(matches!(
        mem.map_range(16, 0),
        Err(cuda::Error::OutOfRange { .. })
    ));
    let half = mem.map_range(0, (LEN / 2) as u64).unwrap();
    assert_eq!(half.len(), (LEN / 2) as u64);
    let stream = env.cu.stream();
    let mut pinned = PinnedBuffer::new(&env.cu, LEN).unwrap();
    assert!(pinned.as_slice().iter().all(|&b| b == 0));
    const FILL: u32 = 0xC0DE_F00D;

    // CUDA side first: everything waits for Vulkan's signal of 1.
    ext.wait(1, stream).unwrap();
    // SAFETY: `ptr` maps LEN bytes (the buffer's size <= allocation size), alive until the end
    // of the test; `pinned` is read only after the stream is synchronized.
    unsafe {
        copy_dtoh(stream, ptr, pinned.as_mut_slice()).unwrap();
        memset_d32(stream, ptr, FILL, LEN / 4).unwrap();
    }
    ext.signal(2, stream).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        sem.value().unwrap(),
        0,
        "CUDA must not pass its wait before 1"
    );

    let data = pattern(LEN, 7);
    let mut transfer = Transfer::new(&env.vk).unwrap();
    let signal_1 = SyncPoints {
        signal: vec![(&sem, 1)],
        ..sync()
    };
    transfer.upload(&buffer, 0, &data, &signal_1).unwrap();
    assert!(
        sem.wait(2, Duration::from_secs(10)).unwrap(),
        "CUDA never signaled 2"
    );
    env.cu.synchronize_stream().unwrap();
    assert!(
        pinned.as_slice() == data,
        "CUDA read other bytes than Vulkan wrote"
    );
    let after_2 = SyncPoints {
        wait: vec![(&sem, 2)],
        ..sync()
    };
    let filled = transfer.download(&buffer, 0, LEN as u64, &after_2).unwrap();
    let expect: Vec<u8> = FILL.to_le_bytes().repeat(LEN / 4);
    assert!(filled == expect, "Vulkan read other bytes than CUDA filled");

    // Round two: CUDA writes through the half mapping, copies it, signals 3.
    let upload = pattern(LEN / 2, 99);
    ext.wait(2, stream).unwrap();
    // SAFETY: both halves lie within the mappings, which outlive the synchronize below; they do
    // not overlap; `upload` is pageable (staged before return).
    unsafe {
        copy_htod(stream, half.ptr(), &upload).unwrap();
        copy_dtod(stream, ptr + (LEN / 2) as u64, half.ptr(), (LEN / 2) as u64).unwrap();
    }
    ext.signal(3, stream).unwrap();
    assert!(
        sem.wait(3, Duration::from_secs(10)).unwrap(),
        "CUDA never signaled 3"
    );
    let after_3 = SyncPoints {
        wait: vec![(&sem, 3)],
        ..sync()
    };
    let both = transfer.download(&buffer, 0, LEN as u64, &after_3).unwrap();
    assert!(both[..LEN / 2] == upload[..] && both[LEN / 2..] == upload[..]);

    // Signal values must exceed the current one; 0 never does.
    assert!(matches!(
        ext.signal(0, stream),
        Err(cuda::Error::InvalidValue { .. })
    ));
    env.cu.synchronize_stream().unwrap();
    drop(half);
    drop(ext);
    drop(mem);
    // Vulkan still owns its objects after the CUDA imports are gone.
    assert_eq!(sem.value().unwrap(), 3);
    let again = transfer.download(&buffer, 0, 4, &sync()).unwrap();
    assert_eq!(again, upload[..4]);
}

/// A failed import leaves the descriptor with the caller, who closes it: exactly once.
#[test]
fn failed_imports_close_the_fd_once() {
    let Some(env) = env() else { return };
    let not_gpu_memory = || OwnedFd::from(File::open("/dev/null").unwrap());
    let baseline = open_fds();

    let fd = not_gpu_memory();
    let raw = fd.as_raw_fd();
    let e = ExternalMemory::import_opaque_fd(&env.cu, fd, 4096, false).unwrap_err();
    println!("importing /dev/null as memory: {e}");
    assert!(
        matches!(
            e,
            cuda::Error::Call {
                call: "cuImportExternalMemory",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!is_open(raw), "the descriptor leaked");
    assert_eq!(open_fds(), baseline);

    let fd = not_gpu_memory();
    let raw = fd.as_raw_fd();
    let e = ExternalMemory::import_opaque_fd(&env.cu, fd, 0, true).unwrap_err();
    assert!(matches!(e, cuda::Error::InvalidValue { .. }), "{e:?}");
    assert!(!is_open(raw));
    assert_eq!(open_fds(), baseline);

    let fd = not_gpu_memory();
    let raw = fd.as_raw_fd();
    let e = ExternalSemaphore::import_timeline_fd(&env.cu, fd).unwrap_err();
    println!("importing /dev/null as a semaphore: {e}");
    assert!(
        matches!(
            e,
            cuda::Error::Call {
                call: "cuImportExternalSemaphore",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!is_open(raw));
    assert_eq!(open_fds(), baseline);

    // A successful import passes the descriptor on: it is the driver's now, so ours is gone
    // from Rust's hands without a close of our own (no double close when the import drops).
    let buffer = env.vk.create_exportable_buffer(1 << 16).unwrap();
    let desc = buffer.import_desc();
    let mem = ExternalMemory::import_opaque_fd(
        &env.cu,
        buffer.export_fd().unwrap(),
        desc.allocation_size,
        desc.dedicated,
    )
    .unwrap();
    drop(mem);
    assert!(open_fds() <= baseline + 1, "{} > {}", open_fds(), baseline);
}

/// One stream waits on a word, another writes it: the wait holds until the word is >= 7.
/// `base` addresses two zeroed 64-bit words that outlive the call.
fn exercise_memops(cu: &Arc<CudaDevice>, base: u64) {
    let a = cu.stream();
    let b = cu.context().new_stream().unwrap();
    let (flag, out) = (base, base + 8);
    // SAFETY: both words are valid device memory of this context until the streams are
    // synchronized below (the caller's promise).
    unsafe {
        memops::wait_value64_geq(&b, flag, 7).unwrap();
        memops::write_value64(&b, out, 9).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    let pending = b.record_event(None).unwrap();
    assert!(
        !pending.is_complete(),
        "stream b passed its wait before the word was written"
    );
    // SAFETY: as above.
    unsafe { memops::write_value64(a, flag, 6).unwrap() };
    a.synchronize().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(!pending.is_complete(), "6 is not >= 7");
    // SAFETY: as above.
    unsafe { memops::write_value64(a, flag, 8).unwrap() };
    b.synchronize().unwrap();
    let mut back = [0u8; 16];
    // SAFETY: as above; `back` is read after the synchronize.
    unsafe { copy_dtoh(a, base, &mut back).unwrap() };
    a.synchronize().unwrap();
    assert_eq!(back[..8], 8u64.to_le_bytes());
    assert_eq!(back[8..], 9u64.to_le_bytes());

    // SAFETY: rejected before any driver call.
    let misaligned = unsafe { memops::write_value64(a, base + 4, 1) };
    assert!(matches!(misaligned, Err(cuda::Error::InvalidValue { .. })));
}

/// Stream memory operations on a cuMemAlloc'd word.
#[test]
fn memops_on_a_cumemalloc_word() {
    let Some(env) = env() else { return };
    let a = env.cu.stream();
    // Diagnostic: cudarc's allocations come from the stream-ordered pool where there is one.
    let pooled = a.alloc_zeros::<u64>(2).unwrap();
    let (pool_ptr, guard) = pooled.device_ptr(a);
    drop(guard);
    // SAFETY: a wait for >= 0 passes at once; the word outlives the synchronize.
    let on_pool = unsafe { memops::wait_value64_geq(a, pool_ptr, 0) };
    a.synchronize().unwrap();
    println!("stream wait on cudarc (pool) memory: {on_pool:?}");

    let words = DeviceAllocation::new(&env.cu, 16).unwrap();
    assert_eq!(words.len(), 16);
    // SAFETY: 4 words of 4 bytes lie in the allocation, which outlives the synchronize.
    unsafe { memset_d32(a, words.ptr(), 0, 4).unwrap() };
    a.synchronize().unwrap();
    exercise_memops(&env.cu, words.ptr());
}

/// The fast path: the same on a word of memory imported from Vulkan.
#[test]
fn memops_on_an_imported_word() {
    let Some(env) = env() else { return };
    let buffer = env.vk.create_exportable_buffer(4096).unwrap();
    let desc = buffer.import_desc();
    let mem = ExternalMemory::import_opaque_fd(
        &env.cu,
        buffer.export_fd().unwrap(),
        desc.allocation_size,
        desc.dedicated,
    )
    .unwrap();
    let base = mem.device_ptr().unwrap();
    let a = env.cu.stream();
    // SAFETY: 4 words of 4 bytes lie in the mapping, which outlives the synchronize.
    unsafe { memset_d32(a, base, 0, 4).unwrap() };
    a.synchronize().unwrap();
    exercise_memops(&env.cu, base);
}

/// The daemon's word kernel raises a word and never lowers it, and a stream waiting on the word
/// passes once it raised it; the device reports 64-bit memory operations (the H100 does).
#[test]
fn the_word_kernel_only_raises() {
    let Some(env) = env() else { return };
    assert_eq!(memops::support(&env.cu).unwrap(), memops::Support::Yes);
    let words = DeviceAllocation::new(&env.cu, 16).unwrap();
    let a = env.cu.stream();
    let b = env.cu.context().new_stream().unwrap();
    let max = memops::WordMax::load(&env.cu).unwrap();
    let read = |a: &Arc<cudarc::driver::CudaStream>| {
        let mut back = [0u8; 8];
        // SAFETY: the allocation outlives the call; `back` is read after the synchronize.
        unsafe { copy_dtoh(a, words.ptr(), &mut back).unwrap() };
        a.synchronize().unwrap();
        u64::from_le_bytes(back)
    };
    // SAFETY: 4 words of 4 bytes lie in the allocation, which outlives every synchronize.
    unsafe { memset_d32(a, words.ptr(), 0, 4).unwrap() };
    // SAFETY: as above; `max` outlives the synchronizes.
    unsafe {
        memops::wait_value64_geq(&b, words.ptr(), 5).unwrap();
        max.raise(a, words.ptr(), 5).unwrap();
    }
    b.synchronize().unwrap();
    assert_eq!(read(a), 5);
    // SAFETY: as above.
    unsafe { max.raise(a, words.ptr(), 3).unwrap() };
    assert_eq!(read(a), 5, "raised to 3 from 5: unchanged");
    // SAFETY: as above.
    unsafe { max.raise(a, words.ptr(), u64::MAX).unwrap() };
    assert_eq!(read(a), u64::MAX);
    // SAFETY: rejected before any driver call.
    assert!(unsafe { max.raise(a, words.ptr() + 4, 1) }.is_err());
}
