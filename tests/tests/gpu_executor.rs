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
