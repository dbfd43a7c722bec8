//! The CUDA executor on the GPU machine: GetInfo reports the CUDA pairing, and the same
//! Write/Read/Fill/Copy sequences (bytes in messages and through a host buffer) through the CUDA
//! and the Vulkan executor give identical bytes.
//! Without CUDA (CI) the daemon refuses `executor = "cuda"` at start: that is checked, then the
//! parity test prints SKIP — unless GPUSHARE_REQUIRE_GPU=1, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use gpushare_client::v1;
use gpushare_client::{Client, CreateOptions, Sync};
use gpushare_tests::rng::SplitMix64;
use gpushare_tests::{bin, gpu_required, run, TestDaemon};

/// Starts a daemon with `executor = "cuda"`, or returns why it could not.
fn cuda_daemon() -> Result<TestDaemon, String> {
    let probe = TestDaemon::start_with("executor = \"vulkan\"\n");
    let Some(probe) = probe else {
        return Err("no Vulkan device".into());
    };
    let dir = probe.scratch().join("cuda.toml");
    std::fs::write(&dir, "executor = \"cuda\"\n").unwrap();
    let (status, _, err) = run(
        Command::new(bin("gpushared"))
            .arg("--runtime-dir")
            .arg(probe.scratch().join("cuda-run"))
            .arg("--config")
            .arg(&dir)
            .arg("--check-config"),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{err}");
    drop(probe);
    match gpushare_interop::cuda::is_present() {
        true => Ok(TestDaemon::start_with("executor = \"cuda\"\n").expect("a Vulkan device")),
        false => Err("no CUDA driver on this host".into()),
    }
}

#[test]
fn cuda_is_required_when_configured() {
    if gpushare_interop::cuda::is_present() {
        println!("SKIP: this host has CUDA; the refusal is checked on hosts without it");
        return;
    }
    let Some(probe) = TestDaemon::start() else {
        return;
    };
    let config = probe.scratch().join("cuda.toml");
    std::fs::write(&config, "executor = \"cuda\"\n").unwrap();
    let (status, _, err) = run(
        Command::new(bin("gpushared"))
            .arg("--runtime-dir")
            .arg(probe.scratch().join("cuda-run"))
            .arg("--config")
            .arg(&config),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("executor = \"cuda\" but CUDA cannot serve"),
        "{err}"
    );
}

const SIZE: u64 = 4 << 20;

/// Runs a seeded sequence of operations on two buffers and a host buffer, and returns the
/// executor's name and the three buffers' bytes.
async fn sequence(d: &TestDaemon, seed: u64, steps: usize) -> (String, [Vec<u8>; 3]) {
    let c = Client::connect_with_session(d.runtime_dir(), "parity")
        .await
        .unwrap();
    let executor = c.info().await.unwrap().executor;
    let a = c
        .create_buffer(SIZE, &CreateOptions::default())
        .await
        .unwrap();
    let b = c
        .create_buffer(SIZE, &CreateOptions::default())
        .await
        .unwrap();
    let s = c
        .create_semaphore(0, &CreateOptions::default())
        .await
        .unwrap();
    let h = c
        .create_host_buffer(SIZE, &CreateOptions::default())
        .await
        .unwrap();
    let none = Sync::none();
    a.fill(0, SIZE, 0, &none).await.unwrap();
    b.fill(0, SIZE, 0, &none).await.unwrap();
    let mut rng = SplitMix64(seed);
    for step in 0..steps as u64 {
        let len = 4 * (1 + rng.below(256 << 10)); // 4 B .. 1 MiB, 4-aligned
        let off = 4 * rng.below((SIZE - len) / 4 + 1);
        let (x, y) = if rng.below(2) == 0 {
            (&a, &b)
        } else {
            (&b, &a)
        };
        // Each step waits for the previous one and signals its own value.
        let sync = Sync::none().wait(s.id(), step).signal(s.id(), step + 1);
        let host_off = rng.below(SIZE - len + 1);
        match rng.below(6) {
            4 => {
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                h.write_at(host_off, &data).unwrap();
                x.write_from_host(off, &h, host_off, len, &sync)
                    .await
                    .unwrap();
            }
            5 => {
                x.read_into_host(off, len, &h, host_off, &sync)
                    .await
                    .unwrap();
            }
            0 => {
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                x.write(off, &data, &sync).await.unwrap();
            }
            1 => {
                let value = rng.next() as u32;
                x.fill(off, len, value, &sync).await.unwrap();
            }
            2 => {
                let dst = 4 * rng.below((SIZE - len) / 4 + 1);
                y.copy_from(x, off, dst, len, &sync).await.unwrap();
            }
            _ => {
                let got = x.read(off, len, &sync).await.unwrap();
                assert_eq!(got.len() as u64, len);
            }
        }
    }
    let mut bytes = Vec::new();
    for buf in [&a, &b] {
        let mut all = Vec::new();
        let mut off = 0;
        while off < SIZE {
            let n = (SIZE - off).min(8 << 20);
            all.extend(buf.read(off, n, &none).await.unwrap());
            off += n;
        }
        bytes.push(all);
    }
    let mut host = vec![0u8; SIZE as usize];
    h.read_at(0, &mut host).unwrap();
    let b_bytes = bytes.pop().unwrap();
    (executor, [bytes.pop().unwrap(), b_bytes, host])
}

#[tokio::test]
async fn cuda_and_vulkan_executors_produce_identical_bytes() {
    let cuda = match cuda_daemon() {
        Ok(d) => d,
        Err(why) if !gpu_required() => {
            println!("SKIP: {why}: the CUDA executor needs CUDA");
            return;
        }
        Err(why) => panic!("GPUSHARE_REQUIRE_GPU=1 but {why}"),
    };
    let info = Client::connect(cuda.runtime_dir())
        .await
        .unwrap()
        .info()
        .await
        .unwrap();
    assert_eq!(info.executor, "cuda");
    assert!(!info.cuda_driver_version.is_empty());
    let dev = &info.devices[0];
    let c = dev.cuda.as_ref().expect("GetInfo reports the CUDA device");
    assert_eq!(c.match_method, v1::MatchMethod::Uuid as i32, "{c:?}");
    assert!(c.compute_capability_major >= 7, "{c:?}");
    println!(
        "device {} = CUDA {} {} (cc {}.{}), CUDA driver {}",
        dev.name,
        c.ordinal,
        c.name,
        c.compute_capability_major,
        c.compute_capability_minor,
        info.cuda_driver_version
    );
    let vulkan = TestDaemon::start_with("executor = \"vulkan\"\n").unwrap();
    for seed in [1, 2, 3] {
        let (e1, [a1, b1, h1]) = sequence(&cuda, seed, 200).await;
        let (e2, [a2, b2, h2]) = sequence(&vulkan, seed, 200).await;
        assert_eq!((e1.as_str(), e2.as_str()), ("cuda", "vulkan"));
        assert!(
            a1 == a2 && b1 == b2,
            "seed {seed}: the executors' bytes differ"
        );
        assert!(h1 == h2, "seed {seed}: the host buffers' bytes differ");
        assert!(a1.iter().any(|&x| x != 0), "the sequence wrote nothing");
        assert!(
            h1.iter().any(|&x| x != 0),
            "nothing was read into the host buffer"
        );
    }
}

/// Runs the same image operations (writes in messages and from a host buffer, boxes, clears,
/// reads into a host buffer) on every shape, and returns every level's bytes and the host
/// buffer's.
async fn image_sequence(d: &TestDaemon) -> (String, Vec<Vec<u8>>) {
    use gpushare_client::{ClearValue, ImageFormat, ImageRegion, ImageSpec};
    let c = Client::connect_with_session(d.runtime_dir(), "image parity")
        .await
        .unwrap();
    let executor = c.info().await.unwrap().executor;
    let h = c
        .create_host_buffer(SIZE, &CreateOptions::default())
        .await
        .unwrap();
    let none = Sync::none();
    let mut rng = SplitMix64(7);
    let specs = [
        ImageSpec::d2(ImageFormat::Rgba8Unorm, 67, 45).full_mip_chain(),
        // A partial chain on a layered image: the layout the CUDA import has to get right.
        ImageSpec::d2(ImageFormat::Rgba16Float, 32, 16)
            .mip_levels(3)
            .layers(3),
        ImageSpec::d3(ImageFormat::R32Float, 16, 8, 4).mip_levels(2),
        ImageSpec::d2(ImageFormat::Rg32Uint, 9, 5).layers(2),
    ];
    let mut out = Vec::new();
    for spec in specs {
        let image = c
            .create_image(&spec, &CreateOptions::default())
            .await
            .unwrap();
        let desc = spec.desc;
        for level in 0..desc.mip_levels {
            let whole = image.level(level);
            let data: Vec<u8> = (0..desc.level_size(level))
                .map(|_| rng.next() as u8)
                .collect();
            if level % 2 == 0 {
                image.write(&whole, &data, &none).await.unwrap();
            } else {
                h.write_at(64, &data).unwrap();
                image.write_from_host(&whole, &h, 64, &none).await.unwrap();
            }
            // A box inside it, rewritten.
            let (w, hh, dd) = desc.level_extent(level);
            let b = ImageRegion {
                x: w / 3,
                y: hh / 3,
                z: dd / 2,
                width: (w / 2).max(1),
                height: (hh / 2).max(1),
                depth: 1,
                base_layer: desc.array_layers - 1,
                layers: 1,
                ..whole
            };
            let bytes: Vec<u8> = (0..b.size(desc.format)).map(|_| rng.next() as u8).collect();
            image.write(&b, &bytes, &none).await.unwrap();
        }
        let color = match desc.format {
            ImageFormat::Rg32Uint => ClearValue::Uint([7, 0xffff_ffff, 0, 0]),
            ImageFormat::Rgba8Unorm => ClearValue::Float([1.0, 0.0, 0.2, 1.0]),
            _ => ClearValue::Float([0.25, -2.0, 8.5, 1.0]),
        };
        image
            .clear_range(desc.mip_levels - 1, 1, 0, 1, color, &none)
            .await
            .unwrap();
        for level in 0..desc.mip_levels {
            out.push(image.read(&image.level(level), &none).await.unwrap());
        }
        image
            .read_into_host(&image.level(0), &h, 4096, &none)
            .await
            .unwrap();
        let mut host = vec![0; desc.level_size(0) as usize];
        h.read_at(4096, &mut host).unwrap();
        out.push(host);
    }
    (executor, out)
}

#[tokio::test]
async fn cuda_and_vulkan_executors_produce_identical_images() {
    let cuda = match cuda_daemon() {
        Ok(d) => d,
        Err(why) if !gpu_required() => {
            println!("SKIP: {why}: the CUDA executor needs CUDA");
            return;
        }
        Err(why) => panic!("GPUSHARE_REQUIRE_GPU=1 but {why}"),
    };
    let vulkan = TestDaemon::start_with("executor = \"vulkan\"\n").unwrap();
    let (e1, cuda_bytes) = image_sequence(&cuda).await;
    let (e2, vulkan_bytes) = image_sequence(&vulkan).await;
    assert_eq!((e1.as_str(), e2.as_str()), ("cuda", "vulkan"));
    assert_eq!(cuda_bytes.len(), vulkan_bytes.len());
    for (i, (a, b)) in cuda_bytes.iter().zip(&vulkan_bytes).enumerate() {
        assert!(a == b, "level read {i}: the executors' bytes differ");
    }
    println!(
        "{} image reads identical on both executors",
        cuda_bytes.len()
    );
}
