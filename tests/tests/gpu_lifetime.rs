//! GPU suite: lifetime. A buffer the daemon has released stays valid in a client that still holds
//! its CUDA import: the pattern written through the daemon reads back intact from the import after
//! the release, even after the daemon has allocated and filled other buffers of the same size.
//!
//! Needs CUDA: elsewhere (CI: lavapipe, no CUDA) it prints `SKIP: <reason>`, and fails instead
//! under `GPUSHARE_REQUIRE_GPU=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gpushare_client::cuda::{cuda_device_for, InteropBuffer};
use gpushare_client::{Client, CreateOptions, Sync};
use gpushare_interop::cuda::{self, PinnedBuffer};
use gpushare_tests::{gpu_required, TestDaemon};

const SIZE: usize = 4 << 20;

/// Skips (prints `SKIP:` and returns) or, under `GPUSHARE_REQUIRE_GPU=1`, fails.
macro_rules! skip {
    ($($why:tt)*) => {{
        let why = format!($($why)*);
        if gpu_required() {
            panic!("GPUSHARE_REQUIRE_GPU=1, but {why}");
        }
        println!("SKIP: {why}");
        return;
    }};
}

fn pattern(i: usize) -> u8 {
    (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ (i as u8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_buffer_stays_valid_in_a_cuda_import() {
    if !cuda::is_present() {
        skip!("no CUDA driver (libcuda) on this machine");
    }
    match cuda::devices() {
        Ok(d) if !d.is_empty() => {}
        Ok(_) => skip!("CUDA sees no device"),
        Err(e) => skip!("CUDA cannot list devices: {e}"),
    }
    let Some(d) = TestDaemon::start() else {
        if gpu_required() {
            panic!("GPUSHARE_REQUIRE_GPU=1, but the daemon found no Vulkan device");
        }
        return;
    };
    let client = Client::connect_with_session(d.runtime_dir(), "gpu_lifetime")
        .await
        .unwrap();
    let info = client.info().await.unwrap();
    let chunk = match info.limits.unwrap_or_default().max_transfer_size {
        0 => SIZE,
        n => (n as usize).min(SIZE),
    };

    // The pattern, written through the daemon.
    let data: Vec<u8> = (0..SIZE).map(pattern).collect();
    let buffer = client
        .create_buffer(SIZE as u64, &CreateOptions::default())
        .await
        .unwrap();
    for (i, c) in data.chunks(chunk).enumerate() {
        buffer
            .write((i * chunk) as u64, c, &Sync::none())
            .await
            .unwrap();
    }

    // Imported into CUDA, then released on the daemon.
    let exported = client.export(buffer.id()).await.unwrap();
    let device = match cuda_device_for(&exported) {
        Ok(device) => device,
        Err(e) => skip!("no CUDA device is the daemon's GPU: {e}"),
    };
    let imported = InteropBuffer::import(&device, exported).unwrap();
    assert!(
        buffer.release().await.unwrap(),
        "the daemon frees the buffer on its last reference"
    );
    let gone = client.describe(buffer.id()).await.unwrap_err();
    assert_eq!(gone.code(), Some(tonic::Code::NotFound), "{gone}");

    // The daemon reuses memory: allocate and fill others of the same size.
    let mut others = Vec::new();
    for _ in 0..4 {
        let b = client
            .create_buffer(SIZE as u64, &CreateOptions::default())
            .await
            .unwrap();
        b.fill(0, SIZE as u64, 0xdead_beef, &Sync::none())
            .await
            .unwrap();
        others.push(b);
    }

    // The import still holds the pattern.
    let stream = device.stream();
    let mut host = PinnedBuffer::new(&device, SIZE).unwrap();
    // SAFETY: the import maps SIZE bytes and lives until the synchronization below; `host` is not
    // touched before it.
    unsafe { cuda::copy_dtoh(stream, imported.device_ptr(), host.as_mut_slice()) }.unwrap();
    device.synchronize_stream().unwrap();
    let bad: Vec<usize> = host
        .as_slice()
        .iter()
        .zip(&data)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .take(5)
        .collect();
    assert!(
        bad.is_empty(),
        "bytes changed after the release, first at {bad:?}"
    );

    // And it is still usable: a write through the import reads back.
    // SAFETY: as above; the first 4 KiB of the mapping, then synchronized.
    unsafe { cuda::memset_d32(stream, imported.device_ptr(), 0x0102_0304, 1024) }.unwrap();
    // SAFETY: as above.
    unsafe {
        cuda::copy_dtoh(
            stream,
            imported.device_ptr(),
            &mut host.as_mut_slice()[..4096],
        )
    }
    .unwrap();
    device.synchronize_stream().unwrap();
    assert!(host.as_slice()[..4096]
        .chunks(4)
        .all(|w| w == 0x0102_0304u32.to_le_bytes()));
    drop(imported);
    for b in others {
        b.release().await.unwrap();
    }
    println!(
        "lifetime: {SIZE} bytes intact in the CUDA import after the daemon released the buffer"
    );
}
