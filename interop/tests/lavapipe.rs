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

mod images {
    use super::*;
    use gpushare_interop::image::{ImageDesc, ImageFormat, ImageKind, ImageRegion};
    use gpushare_interop::vulkan::{vk, ClearColor, DeviceImage, ExportableImage};

    fn desc(
        format: ImageFormat,
        kind: ImageKind,
        extent: (u32, u32, u32),
        levels: u32,
        layers: u32,
    ) -> ImageDesc {
        ImageDesc {
            format,
            kind,
            width: extent.0,
            height: extent.1,
            depth: extent.2,
            mip_levels: levels,
            array_layers: layers,
        }
    }

    /// Distinct bytes for every level of every image.
    fn pattern(len: u64, seed: u32) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed) as u8)
            .collect()
    }

    fn create(env: &Env, d: &ImageDesc) -> Option<ExportableImage> {
        match env
            .device
            .create_exportable_image(d, vk::ImageUsageFlags::SAMPLED)
        {
            Ok(image) => Some(image),
            Err(Error::Unsupported(why)) => {
                println!("unsupported here: {why}");
                None
            }
            Err(e) => panic!("creating {d:?}: {e}"),
        }
    }

    /// Every format, 2D with a full mip chain, 2D array and 3D: new images read as zeros, every
    /// level round-trips, and an importer on another device object reads the same bytes.
    #[test]
    fn every_format_and_shape_round_trips_through_export_and_import() {
        let Some(env) = env() else { return };
        let mut t = Transfer::new(&env.device).unwrap();
        let importer = Device::open(&env.instance, &DeviceSelector::Default).unwrap();
        let mut ti = Transfer::new(&importer).unwrap();
        let fds = open_fds();
        let mut created = 0;
        for format in ImageFormat::all() {
            for d in [
                desc(format, ImageKind::D2, (19, 8, 1), 5, 1),
                desc(format, ImageKind::D2, (8, 8, 1), 4, 3),
                desc(format, ImageKind::D3, (8, 4, 4), 3, 1),
            ] {
                let Some(image) = create(&env, &d) else {
                    continue;
                };
                created += 1;
                t.prepare_image(&image).unwrap();
                let zeros = t
                    .download_image(&image, &ImageRegion::level(&d, 0), &sync())
                    .unwrap();
                assert!(
                    zeros.iter().all(|&b| b == 0),
                    "{format} {:?}: a new image reads as zeros",
                    d.kind
                );
                let levels: Vec<Vec<u8>> = (0..d.mip_levels)
                    .map(|l| pattern(d.level_size(l), l * 7 + format.code()))
                    .collect();
                for (l, bytes) in levels.iter().enumerate() {
                    t.upload_image(&image, &ImageRegion::level(&d, l as u32), bytes, &sync())
                        .unwrap();
                }
                let imported = importer
                    .import_image(image.export_fd().unwrap(), &image.import_desc())
                    .unwrap();
                assert_eq!(imported.desc(), &d);
                for (l, bytes) in levels.iter().enumerate() {
                    let region = ImageRegion::level(&d, l as u32);
                    assert_eq!(
                        &t.download_image(&image, &region, &sync()).unwrap(),
                        bytes,
                        "{format} {:?} level {l}",
                        d.kind
                    );
                    assert_eq!(
                        &ti.download_image(&imported, &region, &sync()).unwrap(),
                        bytes,
                        "{format} {:?} level {l} imported",
                        d.kind
                    );
                }
            }
        }
        assert!(
            created >= 15,
            "lavapipe and NVIDIA share at least every 2D format: {created}"
        );
        drop(ti);
        drop(t);
        assert_eq!(open_fds(), fds, "no descriptor leaks");
    }

    #[test]
    fn regions_and_clears_touch_only_what_they_name() {
        let Some(env) = env() else { return };
        let mut t = Transfer::new(&env.device).unwrap();
        let d = desc(ImageFormat::Rgba8Unorm, ImageKind::D2, (16, 16, 1), 2, 2);
        let image = create(&env, &d).expect("rgba8unorm is supported everywhere");
        t.prepare_image(&image).unwrap();
        // A 4x3 box at (5, 6) of layer 1, level 0.
        let region = ImageRegion {
            level: 0,
            base_layer: 1,
            layers: 1,
            x: 5,
            y: 6,
            z: 0,
            width: 4,
            height: 3,
            depth: 1,
        };
        let bytes = pattern(region.size(d.format), 9);
        t.upload_image(&image, &region, &bytes, &sync()).unwrap();
        let all = t
            .download_image(&image, &ImageRegion::level(&d, 0), &sync())
            .unwrap();
        let layer = 16 * 16 * 4;
        for y in 0..16usize {
            for x in 0..16usize {
                let at = layer + (y * 16 + x) * 4;
                let inside = (5..9).contains(&x) && (6..9).contains(&y);
                let want: &[u8] = if inside {
                    let i = ((y - 6) * 4 + (x - 5)) * 4;
                    &bytes[i..i + 4]
                } else {
                    &[0; 4]
                };
                assert_eq!(&all[at..at + 4], want, "texel ({x}, {y})");
            }
        }
        assert!(all[..layer].iter().all(|&b| b == 0), "layer 0 untouched");
        assert_eq!(t.download_image(&image, &region, &sync()).unwrap(), bytes);

        // Clear level 1 of layer 0 to opaque red: 255, 0, 0, 255 per texel.
        t.clear_image(
            &image,
            1,
            1,
            0,
            1,
            ClearColor::Float([1.0, 0.0, 0.0, 1.0]),
            &sync(),
        )
        .unwrap();
        let level1 = t
            .download_image(&image, &ImageRegion::level(&d, 1), &sync())
            .unwrap();
        let (first, second) = level1.split_at(8 * 8 * 4);
        assert!(
            first.chunks(4).all(|p| p == [255, 0, 0, 255]),
            "{:?}",
            &first[..8]
        );
        assert!(
            second.iter().all(|&b| b == 0),
            "layer 1 of level 1 untouched"
        );
        assert!(matches!(
            t.clear_image(&image, 0, 1, 0, 1, ClearColor::Uint([1, 0, 0, 0]), &sync()),
            Err(Error::InvalidImage(_))
        ));
        assert!(oob(t.clear_image(
            &image,
            1,
            2,
            0,
            1,
            ClearColor::Float([0.0; 4]),
            &sync()
        )));

        // Out-of-range and mis-sized regions are refused before the driver sees them.
        let mut bad = region;
        bad.x = 13;
        assert!(matches!(
            t.upload_image(&image, &bad, &bytes, &sync()),
            Err(Error::InvalidImage(_))
        ));
        assert!(matches!(
            t.upload_image(&image, &region, &bytes[1..], &sync()),
            Err(Error::InvalidSize { .. })
        ));
        let mut bad = region;
        bad.level = 2;
        assert!(matches!(
            t.download_image(&image, &bad, &sync()),
            Err(Error::InvalidImage(_))
        ));
    }

    /// The box average (2x2, or 2x2x2 in 3D) of level `src` (even extents `(w, h, d)`,
    /// `layers` layers, `channels` channels, as values): what a linear blit to half the size
    /// gives.
    fn box_down(
        src: &[f32],
        (w, h, d): (usize, usize, usize),
        layers: usize,
        channels: usize,
    ) -> Vec<f32> {
        let (dw, dh, dd) = (w / 2, h / 2, (d / 2).max(1));
        let depth_taps = if d > 1 { 2 } else { 1 };
        let mut out = Vec::new();
        for l in 0..layers {
            for z in 0..dd {
                for y in 0..dh {
                    for x in 0..dw {
                        for c in 0..channels {
                            let mut sum = 0.0;
                            for dz in 0..depth_taps {
                                for dy in 0..2 {
                                    for dx in 0..2 {
                                        let (sx, sy, sz) = (2 * x + dx, 2 * y + dy, 2 * z + dz);
                                        let i = (((l * d + sz) * h + sy) * w + sx) * channels + c;
                                        sum += src[i];
                                    }
                                }
                            }
                            out.push(sum / (4 * depth_taps) as f32);
                        }
                    }
                }
            }
        }
        out
    }

    fn unorm(bytes: &[u8]) -> Vec<f32> {
        bytes.iter().map(|&b| f32::from(b) / 255.0).collect()
    }

    /// `got` (8-bit unorm) is `want` (in [0, 1]) to within one step.
    fn assert_unorm_near(got: &[u8], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f32::from(g) - w * 255.0).abs() <= 1.0,
                "{what}: byte {i} is {g}, the box average is {}",
                w * 255.0
            );
        }
    }

    /// Mip generation over lavapipe's (or the GPU's) blits: each level the box average of the
    /// one before (linear light for sRGB), the nearest texel for integer formats, 3D levels
    /// shrinking in depth too, only the named levels and layers written, bad ranges refused.
    #[test]
    fn mips_are_filtered_from_the_level_before() {
        use gpushare_interop::image::{linear_to_srgb, srgb_to_linear};
        use gpushare_interop::vulkan::{MipFilter, MipRange};
        let Some(env) = env() else { return };
        let mut t = Transfer::new(&env.device).unwrap();
        for format in ImageFormat::all() {
            match env.device.mip_filter(format) {
                Ok(filter) => println!("{format}: {filter:?}"),
                Err(e) => println!("{format}: {e}"),
            }
        }
        for format in [
            ImageFormat::Rgba8Unorm,
            ImageFormat::Rgba8Srgb,
            ImageFormat::R32Float,
        ] {
            assert_eq!(env.device.mip_filter(format).unwrap(), MipFilter::Linear);
        }
        assert_eq!(
            env.device.mip_filter(ImageFormat::Rgba8Uint).unwrap(),
            MipFilter::Nearest
        );

        // rgba8unorm, 3 layers: levels 1 and 2 of layers 1 and 2 only.
        let d = desc(ImageFormat::Rgba8Unorm, ImageKind::D2, (16, 8, 1), 4, 3);
        let image = create(&env, &d).unwrap();
        t.prepare_image(&image).unwrap();
        let level0 = pattern(d.level_size(0), 5);
        t.upload_image(&image, &ImageRegion::level(&d, 0), &level0, &sync())
            .unwrap();
        let range = MipRange {
            base_level: 0,
            levels: 2,
            base_layer: 1,
            layers: 2,
        };
        t.generate_mips(&image, &range, &sync()).unwrap();
        let read = |t: &mut Transfer, level| {
            t.download_image(&image, &ImageRegion::level(&d, level), &sync())
                .unwrap()
        };
        let (level1, level2, level3) = (read(&mut t, 1), read(&mut t, 2), read(&mut t, 3));
        let layer0 = 16 * 8 * 4;
        let want1 = box_down(&unorm(&level0[layer0..]), (16, 8, 1), 2, 4);
        assert_unorm_near(&level1[8 * 4 * 4..], &want1, "level 1, layers 1-2");
        assert!(
            level1[..8 * 4 * 4].iter().all(|&b| b == 0),
            "layer 0 untouched"
        );
        // Level 2 comes from level 1 as the GPU wrote it.
        let want2 = box_down(&unorm(&level1[8 * 4 * 4..]), (8, 4, 1), 2, 4);
        assert_unorm_near(&level2[4 * 2 * 4..], &want2, "level 2, layers 1-2");
        assert!(level3.iter().all(|&b| b == 0), "level 3 untouched");
        assert_eq!(read(&mut t, 0), level0, "level 0 untouched");

        // sRGB: a black and white checkerboard averages to 188 in linear light (unorm: 128).
        for (format, grey) in [
            (ImageFormat::Rgba8Srgb, 188u8),
            (ImageFormat::Rgba8Unorm, 128),
        ] {
            let d = desc(format, ImageKind::D2, (4, 4, 1), 3, 1);
            let image = create(&env, &d).unwrap();
            t.prepare_image(&image).unwrap();
            let checker: Vec<u8> = (0..16)
                .flat_map(|i| {
                    let v = if (i % 4 + i / 4) % 2 == 0 { 0 } else { 255 };
                    [v, v, v, 255]
                })
                .collect();
            t.upload_image(&image, &ImageRegion::level(&d, 0), &checker, &sync())
                .unwrap();
            let all = MipRange {
                base_level: 0,
                levels: 2,
                base_layer: 0,
                layers: 1,
            };
            t.generate_mips(&image, &all, &sync()).unwrap();
            for level in 1..3 {
                let got = t
                    .download_image(&image, &ImageRegion::level(&d, level), &sync())
                    .unwrap();
                for px in got.chunks(4) {
                    for &c in &px[..3] {
                        assert!(
                            c.abs_diff(grey) <= 1,
                            "{format} level {level}: {px:?}, expected {grey}"
                        );
                    }
                    assert_eq!(px[3], 255, "{format}: alpha is not sRGB-encoded");
                }
            }
        }
        let mid = (srgb_to_linear(0) + srgb_to_linear(255)) / 2.0;
        assert_eq!(linear_to_srgb(mid), 188);

        // rgba8uint: the nearest filter, each texel one of its 2x2 block, never a mix.
        let d = desc(ImageFormat::Rgba8Uint, ImageKind::D2, (8, 8, 1), 2, 1);
        let image = create(&env, &d).unwrap();
        t.prepare_image(&image).unwrap();
        // Texel (x, y) holds x + 8y in every channel: a block's mean is none of its texels.
        let ints: Vec<u8> = (0..64u8).flat_map(|i| [i, i, i, 200]).collect();
        t.upload_image(&image, &ImageRegion::level(&d, 0), &ints, &sync())
            .unwrap();
        t.generate_mips(
            &image,
            &MipRange {
                base_level: 0,
                levels: 1,
                base_layer: 0,
                layers: 1,
            },
            &sync(),
        )
        .unwrap();
        let got = t
            .download_image(&image, &ImageRegion::level(&d, 1), &sync())
            .unwrap();
        for (i, px) in got.chunks(4).enumerate() {
            let (x, y) = (i % 4, i / 4);
            let block: Vec<u8> = [(0, 0), (1, 0), (0, 1), (1, 1)]
                .iter()
                .map(|(dx, dy)| (2 * x + dx + 8 * (2 * y + dy)) as u8)
                .collect();
            assert!(
                block.contains(&px[0]),
                "texel ({x}, {y}) = {px:?}, block {block:?}"
            );
            assert!(
                px[..3].iter().all(|&c| c == px[0]) && px[3] == 200,
                "{px:?}"
            );
        }

        // 3D r32float: level 1 is the 2x2x2 box average, level 2 from level 1.
        let d = desc(ImageFormat::R32Float, ImageKind::D3, (4, 4, 4), 3, 1);
        let image = create(&env, &d).unwrap();
        t.prepare_image(&image).unwrap();
        let values: Vec<f32> = (0..64).map(|i| (i * 37 % 64) as f32 / 8.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        t.upload_image(&image, &ImageRegion::level(&d, 0), &bytes, &sync())
            .unwrap();
        t.generate_mips(
            &image,
            &MipRange {
                base_level: 0,
                levels: 2,
                base_layer: 0,
                layers: 1,
            },
            &sync(),
        )
        .unwrap();
        let floats = |b: Vec<u8>| -> Vec<f32> {
            b.chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let level1 = floats(
            t.download_image(&image, &ImageRegion::level(&d, 1), &sync())
                .unwrap(),
        );
        let want1 = box_down(&values, (4, 4, 4), 1, 1);
        assert_eq!(level1.len(), 8, "2x2x2");
        for (g, w) in level1.iter().zip(&want1) {
            assert!((g - w).abs() < 1e-4, "3D level 1: {level1:?} vs {want1:?}");
        }
        let level2 = floats(
            t.download_image(&image, &ImageRegion::level(&d, 2), &sync())
                .unwrap(),
        );
        let mean = want1.iter().sum::<f32>() / 8.0;
        assert!(
            (level2[0] - mean).abs() < 1e-4,
            "3D level 2: {level2:?} vs {mean}"
        );

        // Ranges outside the image, and single-level images, are refused before the driver.
        let one = desc(ImageFormat::Rgba8Unorm, ImageKind::D2, (8, 8, 1), 1, 2);
        let single = create(&env, &one).unwrap();
        t.prepare_image(&single).unwrap();
        let r = |base_level, levels, base_layer, layers| MipRange {
            base_level,
            levels,
            base_layer,
            layers,
        };
        assert!(oob(t.generate_mips(&single, &r(0, 1, 0, 1), &sync())));
        let two = desc(ImageFormat::Rgba8Unorm, ImageKind::D2, (8, 8, 1), 3, 2);
        let image = create(&env, &two).unwrap();
        t.prepare_image(&image).unwrap();
        for bad in [
            r(0, 0, 0, 1),
            r(0, 3, 0, 1),
            r(2, 1, 0, 1),
            r(0, 1, 1, 2),
            r(0, 1, 0, 0),
        ] {
            assert!(oob(t.generate_mips(&image, &bad, &sync())), "{bad:?}");
        }
        t.generate_mips(&image, &r(1, 1, 1, 1), &sync()).unwrap();
    }

    #[test]
    fn impossible_images_are_refused_naming_why() {
        let Some(env) = env() else { return };
        let too_many_levels = desc(ImageFormat::R8Unorm, ImageKind::D2, (4, 4, 1), 4, 1);
        assert!(matches!(
            env.device.create_exportable_image(&too_many_levels, vk::ImageUsageFlags::empty()),
            Err(Error::InvalidImage(m)) if m.contains("mip levels")
        ));
        let huge = desc(ImageFormat::R8Unorm, ImageKind::D2, (1 << 20, 1, 1), 1, 1);
        assert!(matches!(
            env.device.create_exportable_image(&huge, vk::ImageUsageFlags::empty()),
            Err(Error::Unsupported(m)) if m.contains("width")
        ));
        let unknown_usage = desc(ImageFormat::R8Unorm, ImageKind::D2, (4, 4, 1), 1, 1);
        assert!(matches!(
            env.device.create_exportable_image(
                &unknown_usage,
                vk::ImageUsageFlags::DEPTH_STENCIL_ATTACHMENT
            ),
            Err(Error::InvalidUsage { .. })
        ));
    }
}
