//! Vulkan tests against a real driver: lavapipe on CI, the GPU on the GPU machine.
//!
//! Without a Vulkan device each test prints `SKIP: <reason>` and returns, unless
//! `GPUSHARE_REQUIRE_GPU=1`, where that is a failure. Tests run one at a time (a process-wide
//! lock): some count this process's open descriptors.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gpushare_interop::vulkan::{
    BufferImportDesc, Device, DeviceBuffer, DeviceSelector, DeviceType, Error, HandleType,
    Instance, SyncPoints, TimelineSemaphore, Transfer,
};

static LOCK: Mutex<()> = Mutex::new(());

struct Env {
    _guard: MutexGuard<'static, ()>,
    instance: Arc<Instance>,
    device: Arc<Device>,
}

fn skip(reason: &str) -> Option<Env> {
    if std::env::var("GPUSHARE_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("GPUSHARE_REQUIRE_GPU=1 but {reason}");
    }
    println!("SKIP: {reason}");
    None
}

/// The instance and the default device, or `None` after printing why not.
fn env() -> Option<Env> {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let instance = match Instance::new("gpushare-interop-tests") {
        Ok(i) => i,
        Err(e) => return skip(&format!("no Vulkan instance: {e}")),
    };
    match Device::open(&instance, &DeviceSelector::Default) {
        Ok(device) => Some(Env {
            _guard: guard,
            instance,
            device,
        }),
        Err(Error::NoDevice) => skip("no Vulkan physical device"),
        Err(e) => panic!("opening the default device: {e}"),
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn oob<T>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::OutOfRange { .. }))
}

fn sync<'a>() -> SyncPoints<'a> {
    SyncPoints {
        timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn lists_devices_with_consistent_caps() {
    let Some(env) = env() else { return };
    let devices = env.instance.devices().unwrap();
    assert!(!devices.is_empty());
    for (i, d) in devices.iter().enumerate() {
        println!(
            "device {i}: {} ({:?}, {} {}) api {:?} heaps {:?} caps {:?}",
            d.name, d.device_type, d.driver_name, d.driver_info, d.api_version, d.heaps, d.caps
        );
        assert_eq!(d.index, i as u32);
        assert!(!d.heaps.is_empty());
    }
    let info = env.device.info();
    assert!(info.caps.timeline_semaphore);
    assert!(
        info.caps.buffer_export.contains(&HandleType::OpaqueFd),
        "{info:?}"
    );
    assert!(
        info.caps.buffer_import.contains(&HandleType::OpaqueFd),
        "{info:?}"
    );
    if info.driver_name == "llvmpipe" {
        assert_eq!(info.device_type, DeviceType::Cpu);
        assert!(info.caps.timeline_semaphore_export.is_empty(), "{info:?}");
    }
    let exportable = env.device.create_timeline_semaphore(0, true);
    let can_export = info
        .caps
        .timeline_semaphore_export
        .contains(&HandleType::OpaqueFd);
    match exportable {
        Ok(s) => {
            assert!(can_export);
            assert!(s.exportable());
            drop(s.export_fd().unwrap());
        }
        Err(Error::Unsupported(_)) => assert!(!can_export),
        Err(e) => panic!("unexpected {e}"),
    }
    let plain = env.device.create_timeline_semaphore(0, false).unwrap();
    assert!(matches!(plain.export_fd(), Err(Error::Unsupported(_))));

    assert!(matches!(
        Device::open(&env.instance, &DeviceSelector::Index(9999)),
        Err(Error::DeviceNotFound(_))
    ));
    let by_uuid = Device::open(&env.instance, &DeviceSelector::Uuid(info.device_uuid)).unwrap();
    assert_eq!(by_uuid.info().index, info.index);
}

#[test]
fn exportable_buffer_exports_fresh_fds() {
    let Some(env) = env() else { return };
    let buffer = env.device.create_exportable_buffer(1 << 20).unwrap();
    assert_eq!(buffer.size(), 1 << 20);
    assert!(buffer.allocation_size() >= buffer.size());
    let a = buffer.export_fd().unwrap();
    let b = buffer.export_fd().unwrap();
    let (ma, mb) = (fstat(&a), fstat(&b));
    assert!(ma.len() >= buffer.size() || ma.len() == 0, "{ma:?}");
    assert_eq!(ma.len(), mb.len());
    let desc = buffer.import_desc();
    assert_eq!(desc.size, buffer.size());
    assert_eq!(desc.allocation_size, buffer.allocation_size());
    assert_eq!(desc.dedicated, buffer.dedicated());
    assert_eq!(desc.memory_type_index, buffer.memory_type_index());
    assert_eq!(desc.usage, buffer.usage());
    assert_eq!(desc.device_uuid, env.device.info().device_uuid);
    assert!(matches!(
        env.device.create_exportable_buffer(0),
        Err(Error::InvalidSize { .. })
    ));
}

fn fstat(fd: &OwnedFd) -> std::fs::Metadata {
    let file = std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap());
    file.metadata().unwrap()
}

#[test]
fn import_into_second_device_shares_memory() {
    let Some(env) = env() else { return };
    let len = 256 * 1024;
    let buffer = env.device.create_exportable_buffer(len as u64).unwrap();
    let mut t1 = Transfer::new(&env.device).unwrap();
    let data = pattern(len, 7);
    t1.upload(&buffer, 0, &data, &sync()).unwrap();

    // A second instance and device, as another process would have.
    let instance2 = Instance::new("second").unwrap();
    let uuid = env.device.info().device_uuid;
    let device2 = Device::open(&instance2, &DeviceSelector::Uuid(uuid)).unwrap();
    assert!(!Arc::ptr_eq(&device2, &env.device));
    let imported = device2
        .import_buffer(buffer.export_fd().unwrap(), &buffer.import_desc())
        .unwrap();
    assert_eq!(imported.size(), len as u64);
    let mut t2 = Transfer::new(&device2).unwrap();
    assert_eq!(
        t2.download(&imported, 0, len as u64, &sync()).unwrap(),
        data
    );

    // And back: write through the import, read through the exporter.
    t2.fill(&imported, 4096, 4096, 0x5a5a_5a5a, &sync())
        .unwrap();
    let back = t1.download(&buffer, 4096, 4096, &sync()).unwrap();
    assert!(back.iter().all(|&b| b == 0x5a));

    // A buffer of one device is refused by another device's engine.
    assert!(matches!(
        t2.download(&buffer, 0, 4, &sync()),
        Err(Error::WrongDevice { .. })
    ));
}

#[test]
fn fill_copy_upload_download() {
    let Some(env) = env() else { return };
    let a = env.device.create_exportable_buffer(4096).unwrap();
    let b = env.device.create_exportable_buffer(8192).unwrap();
    let mut t = Transfer::new(&env.device).unwrap();
    t.fill(&a, 0, 4096, 0xddcc_bbaa, &sync()).unwrap();
    t.fill(&a, 16, 16, 0x0403_0201, &sync()).unwrap();
    let up = pattern(50, 1);
    t.upload(&a, 101, &up, &sync()).unwrap();
    t.fill(&b, 0, 8192, 0, &sync()).unwrap();
    t.copy(&a, 96, &b, 1001, 100, &sync()).unwrap();

    let got_a = t.download(&a, 0, 4096, &sync()).unwrap();
    let mut want_a: Vec<u8> = [0xaa, 0xbb, 0xcc, 0xdd].repeat(1024);
    want_a[16..32].copy_from_slice(&[1, 2, 3, 4].repeat(4));
    want_a[101..151].copy_from_slice(&up);
    assert_eq!(got_a, want_a);

    let got_b = t.download(&b, 1000, 102, &sync()).unwrap();
    assert_eq!(got_b[0], 0);
    assert_eq!(&got_b[1..101], &want_a[96..196]);
    assert_eq!(got_b[101], 0);

    // A download larger than the staging buffer so far grows it.
    let big = pattern(3 << 20, 9);
    let c = env
        .device
        .create_exportable_buffer(big.len() as u64)
        .unwrap();
    t.upload(&c, 0, &big, &sync()).unwrap();
    assert_eq!(t.download(&c, 0, big.len() as u64, &sync()).unwrap(), big);
    assert_eq!(t.pending(), 0);
}

#[test]
fn ranges_are_validated() {
    let Some(env) = env() else { return };
    let a = env.device.create_exportable_buffer(1024).unwrap();
    let mut t = Transfer::new(&env.device).unwrap();
    assert!(oob(t.download(&a, 1000, 25, &sync())));
    assert!(oob(t.download(&a, u64::MAX, 2, &sync())));
    assert!(oob(t.download(&a, 0, 0, &sync())));
    assert!(oob(t.upload(&a, 1020, &[0; 5], &sync())));
    assert!(oob(t.upload(&a, 0, &[], &sync())));
    assert!(oob(t.fill(&a, 1024, 4, 0, &sync())));
    assert!(oob(t.copy(&a, 0, &a, u64::MAX - 1, 4, &sync())));
    assert!(oob(t.copy(&a, 1, &a, 512, 1024, &sync())));
    assert!(matches!(
        t.fill(&a, 2, 4, 0, &sync()),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        t.fill(&a, 0, 6, 0, &sync()),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        t.copy(&a, 0, &a, 100, 200, &sync()),
        Err(Error::Overlap)
    ));
    // Non-overlapping ranges of one buffer are fine.
    t.copy(&a, 0, &a, 512, 512, &sync()).unwrap();
}

#[test]
fn timeline_semaphore_host_ops() {
    let Some(env) = env() else { return };
    let s = env.device.create_timeline_semaphore(5, false).unwrap();
    assert_eq!(s.value().unwrap(), 5);
    assert!(matches!(
        s.signal(5),
        Err(Error::InvalidValue {
            current: 5,
            requested: 5
        })
    ));
    assert!(matches!(s.signal(4), Err(Error::InvalidValue { .. })));
    s.signal(7).unwrap();
    assert_eq!(s.value().unwrap(), 7);
    assert!(s.wait(7, Duration::ZERO).unwrap());
    assert!(s.wait(3, Duration::ZERO).unwrap());
    let start = Instant::now();
    assert!(!s.wait(8, Duration::from_millis(20)).unwrap());
    assert!(start.elapsed() >= Duration::from_millis(15));
}

#[test]
fn wait_any_wakes_on_the_first_semaphore_reached() {
    let Some(env) = env() else { return };
    let a = env.device.create_timeline_semaphore(0, false).unwrap();
    let b = env.device.create_timeline_semaphore(0, false).unwrap();
    assert!(TimelineSemaphore::wait_any(&[], Duration::ZERO).unwrap());
    let start = Instant::now();
    assert!(!TimelineSemaphore::wait_any(&[(&a, 1), (&b, 1)], Duration::from_millis(20)).unwrap());
    assert!(start.elapsed() >= Duration::from_millis(15));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            b.signal(3).unwrap();
        });
        assert!(TimelineSemaphore::wait_any(&[(&a, 1), (&b, 2)], Duration::from_secs(10)).unwrap());
    });
    assert_eq!(a.value().unwrap(), 0, "woke although neither was reached");
    assert_eq!(b.value().unwrap(), 3);
    let other = Device::open(
        &env.instance,
        &DeviceSelector::Index(env.device.info().index),
    )
    .unwrap();
    let c = other.create_timeline_semaphore(0, false).unwrap();
    assert!(matches!(
        TimelineSemaphore::wait_any(&[(&a, 1), (&c, 1)], Duration::ZERO),
        Err(Error::WrongDevice { .. })
    ));
}

#[test]
fn transfer_waits_for_host_signal_and_signals() {
    let Some(env) = env() else { return };
    let buf = env.device.create_exportable_buffer(256).unwrap();
    let gate = env.device.create_timeline_semaphore(0, false).unwrap();
    let done = env.device.create_timeline_semaphore(0, false).unwrap();
    let mut t = Transfer::new(&env.device).unwrap();
    let start = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            gate.signal(1).unwrap();
        });
        let points = SyncPoints {
            wait: vec![(&gate, 1)],
            signal: vec![(&done, 3)],
            timeout: Some(Duration::from_secs(10)),
        };
        t.fill(&buf, 0, 256, 0x1111_1111, &points).unwrap();
    });
    assert!(start.elapsed() >= Duration::from_millis(15));
    assert_eq!(gate.value().unwrap(), 1);
    assert_eq!(done.value().unwrap(), 3);
    assert_eq!(t.download(&buf, 0, 256, &sync()).unwrap(), vec![0x11; 256]);

    // Signal points must exceed the current value and what the submission waits for.
    let bad = SyncPoints {
        signal: vec![(&done, 3)],
        ..sync()
    };
    assert!(matches!(
        t.fill(&buf, 0, 4, 0, &bad),
        Err(Error::InvalidValue { .. })
    ));
    let bad = SyncPoints {
        wait: vec![(&done, 5)],
        signal: vec![(&done, 4)],
        ..sync()
    };
    assert!(matches!(
        t.fill(&buf, 0, 4, 0, &bad),
        Err(Error::InvalidValue { .. })
    ));
}

#[test]
fn timed_out_transfer_stays_pending_until_done() {
    let Some(env) = env() else { return };
    let buf = env.device.create_exportable_buffer(4096).unwrap();
    let gate = env.device.create_timeline_semaphore(0, false).unwrap();
    let mut t = Transfer::new(&env.device).unwrap();
    let points = SyncPoints {
        wait: vec![(&gate, 1)],
        signal: vec![],
        timeout: Some(Duration::from_millis(30)),
    };
    assert!(matches!(
        t.upload(&buf, 0, &[9; 4096], &points),
        Err(Error::Timeout)
    ));
    assert_eq!(t.pending(), 1);
    // The pending submission keeps the semaphore and buffer alive.
    gate.signal(1).unwrap();
    drop(gate);
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.pending() > 0 {
        assert!(
            Instant::now() < deadline,
            "pending submission never completed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(t.download(&buf, 0, 4096, &sync()).unwrap(), vec![9; 4096]);
}

#[test]
fn failed_imports_close_the_fd_exactly_once() {
    let Some(env) = env() else { return };
    let buffer = env.device.create_exportable_buffer(64 * 1024).unwrap();
    let good = buffer.import_desc();
    let bad_descs = [
        BufferImportDesc {
            memory_type_index: 31,
            ..good.clone()
        },
        BufferImportDesc {
            memory_type_index: 32, // past any device's types
            ..good.clone()
        },
        BufferImportDesc {
            allocation_size: good.allocation_size / 2,
            ..good.clone()
        },
        BufferImportDesc {
            device_uuid: [0xee; 16],
            ..good.clone()
        },
        BufferImportDesc {
            usage: 0,
            ..good.clone()
        },
        BufferImportDesc {
            size: 0,
            ..good.clone()
        },
    ];
    let before = open_fds();
    for desc in &bad_descs {
        let fd = buffer.export_fd().unwrap();
        assert_eq!(open_fds(), before + 1);
        let err = env.device.import_buffer(fd, desc).unwrap_err();
        println!("refused as expected: {err}");
        assert_eq!(open_fds(), before, "fd leaked after {err}");
    }

    let caps = &env.device.info().caps;
    if caps
        .timeline_semaphore_import
        .contains(&HandleType::OpaqueFd)
        && caps
            .timeline_semaphore_export
            .contains(&HandleType::OpaqueFd)
    {
        // Round trip through a second device: a host signal on one is seen on the other.
        let s = env.device.create_timeline_semaphore(2, true).unwrap();
        let device2 = Device::open(
            &env.instance,
            &DeviceSelector::Index(env.device.info().index),
        )
        .unwrap();
        let imported = device2
            .import_timeline_semaphore(s.export_fd().unwrap())
            .unwrap();
        assert_eq!(imported.value().unwrap(), 2);
        s.signal(9).unwrap();
        assert!(imported.wait(9, Duration::from_secs(5)).unwrap());
    } else {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let before = open_fds();
        assert!(matches!(
            env.device.import_timeline_semaphore(fd),
            Err(Error::Unsupported(_))
        ));
        assert_eq!(open_fds(), before - 1);
    }
}
