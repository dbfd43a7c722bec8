//! End to end over lavapipe (or a real GPU): the real daemon binary, real client processes, real
//! sockets and descriptor passing, real Vulkan imports in another process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use gpushare_client::{import, Client, CreateOptions, Sync};
use gpushare_interop::vulkan::{Instance, SyncPoints, Transfer};
use gpushare_tests::{bin, run};
use tonic::Code;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn pinned() -> CreateOptions {
    CreateOptions {
        pin: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn info_reports_the_device_and_its_capabilities() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let info = c.info().await.unwrap();
    // `device = "auto"`: every GPU, or the CPU device on a machine without one.
    assert!(!info.devices.is_empty());
    let mut uuids = std::collections::HashSet::new();
    for (i, dev) in info.devices.iter().enumerate() {
        assert_eq!(dev.index as usize, i);
        assert_eq!(dev.device_uuid.len(), 16);
        assert!(
            uuids.insert(dev.device_uuid.clone()),
            "a device served twice"
        );
        assert_eq!(dev.driver_uuid.len(), 16);
        assert!(!dev.memory_heaps.is_empty());
        let caps = dev.capabilities.as_ref().unwrap();
        assert!(caps
            .buffer_export
            .contains(&(gpushare_client::v1::HandleType::OpaqueFd as i32)));
        // CUDA runs the operations where the device has a CUDA match; Vulkan otherwise.
        let expected = if dev.cuda.is_some() { "cuda" } else { "vulkan" };
        assert_eq!(dev.executor, expected);
    }
    assert_eq!(info.executor, info.devices[0].executor);
    assert!(info.limits.unwrap().max_buffer_size > 0);
    let first = info.devices[0].vulkan_index;
    assert_eq!(d.stop().code(), Some(0));

    // Naming devices: a list serves exactly those; a device named twice or one that does not
    // exist is refused at start with a message that says so.
    let d = gpushare_tests::daemon_or_skip!(&format!("device = \"{first}\"\n"));
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let info = c.info().await.unwrap();
    assert_eq!(info.devices.len(), 1);
    assert_eq!(info.devices[0].vulkan_index, first);
    drop(c);
    assert_eq!(d.stop().code(), Some(0));
    let scratch = gpushare_tests::TempDir::new();
    for (device, expect) in [
        (format!("{first},{first}"), "named twice"),
        (
            "4000".to_owned(),
            "no Vulkan physical device matches index 4000",
        ),
    ] {
        let (status, _, err) = run(
            Command::new(bin("gpushared"))
                .arg("--runtime-dir")
                .arg(scratch.path().join(format!("refused-{}", device.len())))
                .arg("--device")
                .arg(&device),
            Duration::from_secs(30),
        );
        assert_eq!(status.code(), Some(1), "--device {device}: {err}");
        assert!(err.contains(expect), "--device {device}: {err}");
    }
}

/// Process A (this test) writes through the daemon; process B (gpushare-peer) redeems a
/// ticket, imports the descriptor into its own Vulkan device and reads the same bytes — then
/// writes through its import, and A reads that back through the daemon.
#[tokio::test]
async fn buffer_is_shared_zero_copy_with_another_process() {
    let d = gpushare_tests::daemon_or_skip!();
    let a = Client::connect_with_session(d.runtime_dir(), "process A")
        .await
        .unwrap();
    let buf = a
        .create_buffer(1 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let data = pattern(64 << 10, 7);
    buf.write(4096, &data, &Sync::none()).await.unwrap();

    let ticket = a.export_ticket(buf.id()).await.unwrap().ticket;
    let (status, out, err) = run(
        Command::new(bin("gpushare-peer")).args([
            d.runtime_dir().to_str().unwrap(),
            "import-read",
            &hex::encode(&ticket),
            "4096",
            &data.len().to_string(),
        ]),
        Duration::from_secs(30),
    );
    assert!(status.success(), "peer failed: {err}");
    assert_eq!(
        out.trim(),
        hex::encode(&data),
        "process B read other bytes than A wrote"
    );

    let back = pattern(4096, 99);
    let ticket = a.export_ticket(buf.id()).await.unwrap().ticket;
    let (status, _, err) = run(
        Command::new(bin("gpushare-peer")).args([
            d.runtime_dir().to_str().unwrap(),
            "import-write",
            &hex::encode(&ticket),
            "0",
            &hex::encode(&back),
        ]),
        Duration::from_secs(30),
    );
    assert!(status.success(), "peer failed: {err}");
    assert_eq!(buf.read(0, 4096, &Sync::none()).await.unwrap(), back);
    // The first write is untouched beyond what B overwrote.
    assert_eq!(
        buf.read(4096, data.len() as u64, &Sync::none())
            .await
            .unwrap(),
        data
    );
}

/// Freeing on the daemon's side never breaks an import: the driver holds its own reference.
#[tokio::test]
async fn an_import_outlives_the_daemons_release() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect_with_session(d.runtime_dir(), "importer")
        .await
        .unwrap();
    let buf = c
        .create_buffer(65536, &CreateOptions::default())
        .await
        .unwrap();
    let data = pattern(65536, 3);
    buf.write(0, &data, &Sync::none()).await.unwrap();
    let exported = c.export(buf.id()).await.unwrap();
    match &exported.info.details {
        Some(gpushare_client::v1::exported_fd::Details::Buffer(b)) => {
            assert!(b.allocation_size >= 65536)
        }
        other => panic!("not buffer metadata: {other:?}"),
    }
    let instance = Instance::new("test").unwrap();
    let device = import::vulkan_device_for(&instance, &exported).unwrap();
    let imported = import::import_buffer_vulkan(&device, exported).unwrap();
    assert!(
        buf.release().await.unwrap(),
        "the session held the only reference"
    );
    let err = buf.read(0, 4, &Sync::none()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
    let mut t = Transfer::new(&device).unwrap();
    assert_eq!(
        t.download(&imported, 0, 65536, &SyncPoints::default())
            .unwrap(),
        data
    );
}

#[tokio::test]
async fn host_signal_and_wait_across_processes() {
    let d = gpushare_tests::daemon_or_skip!();
    let a = Client::connect_with_session(d.runtime_dir(), "signaler")
        .await
        .unwrap();
    let sem = a
        .create_semaphore(0, &CreateOptions::default())
        .await
        .unwrap();
    let dir = d.runtime_dir().to_str().unwrap().to_owned();

    // Process B waits with gpusharectl; A signals after B has been waiting a while.
    let waiter = std::thread::spawn({
        let (dir, id) = (dir.clone(), sem.id().to_owned());
        move || {
            run(
                Command::new(bin("gpusharectl")).args([
                    "--runtime-dir",
                    &dir,
                    "sem",
                    "wait",
                    &id,
                    "5",
                    "--timeout",
                    "20000",
                ]),
                Duration::from_secs(30),
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the wait returned before the signal");
    let signaled = Instant::now();
    a.semaphore(sem.id()).signal(5).await.unwrap();
    let (status, out, err) = waiter.join().unwrap();
    assert!(status.success(), "gpusharectl sem wait failed: {err}");
    assert!(out.contains('5'), "{out}");
    println!(
        "cross-process wake + process exit: {:?}",
        signaled.elapsed()
    );

    // Deadline: exit code 4 (DEADLINE_EXCEEDED) after about the timeout.
    let started = Instant::now();
    let (status, _, err) = run(
        Command::new(bin("gpusharectl")).args([
            "--runtime-dir",
            &dir,
            "sem",
            "wait",
            sem.id(),
            "6",
            "--timeout",
            "100",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(100));

    // A non-increasing value never reaches the driver: FAILED_PRECONDITION (exit code 5).
    let e = a.semaphore(sem.id()).signal(5).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    let (status, _, err) = run(
        Command::new(bin("gpusharectl")).args([
            "--runtime-dir",
            &dir,
            "sem",
            "signal",
            sem.id(),
            "3",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(5), "{err}");
    assert_eq!(a.semaphore(sem.id()).value().await.unwrap(), 5);

    // A name taken by a live resource of the owner: ALREADY_EXISTS (exit code 10).
    let ctl = |args: &[&str]| {
        let mut all = vec!["--runtime-dir", dir.as_str()];
        all.extend_from_slice(args);
        run(
            Command::new(bin("gpusharectl")).args(&all),
            Duration::from_secs(30),
        )
    };
    let (status, _, err) = ctl(&["sem", "create", "--name", "exit-codes"]);
    assert!(status.success(), "{err}");
    let (status, _, err) = ctl(&["buffer", "create", "--size", "4K", "--name", "exit-codes"]);
    assert_eq!(status.code(), Some(10), "{err}");
    assert!(err.contains("exit-codes"), "{err}");
}

#[tokio::test]
async fn watch_streams_each_new_value() {
    use futures_util::StreamExt;
    let d = gpushare_tests::daemon_or_skip!();
    let a = Client::connect_with_session(d.runtime_dir(), "watcher")
        .await
        .unwrap();
    let sem = a
        .create_semaphore(10, &CreateOptions::default())
        .await
        .unwrap();
    let b = Client::connect(d.runtime_dir()).await.unwrap();
    let mut watch = b.semaphore(sem.id()).watch();
    assert_eq!(watch.next().await.unwrap().unwrap(), 10);
    for v in [11, 15, 20] {
        sem.signal(v).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, v);
    }
    // The semaphore is freed (its only session ends): the stream ends with ABORTED, as a Wait
    // and an fd.sock wait on it do.
    drop(sem);
    drop(a);
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap();
    let e = end.unwrap().unwrap_err();
    assert_eq!(e.code(), Some(Code::Aborted), "{e}");
    assert!(e.to_string().contains("freed"), "{e}");
}

/// Write/Read/Fill/Copy run between their wait points and signal points.
#[tokio::test]
async fn daemon_executed_ops_follow_their_sync_points() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect_with_session(d.runtime_dir(), "ops")
        .await
        .unwrap();
    let a = c
        .create_buffer(1 << 16, &CreateOptions::default())
        .await
        .unwrap();
    let b = c
        .create_buffer(1 << 16, &CreateOptions::default())
        .await
        .unwrap();
    let s = c
        .create_semaphore(0, &CreateOptions::default())
        .await
        .unwrap();

    let data = pattern(1024, 1);
    let write = tokio::spawn({
        let (a, data, sid) = (a.clone(), data.clone(), s.id().to_owned());
        async move {
            a.write(
                100,
                &data,
                &Sync::none().wait(sid.clone(), 1).signal(sid, 2),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!write.is_finished(), "the write ran before its wait point");
    assert_eq!(s.value().await.unwrap(), 0);
    s.signal(1).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        s.value().await.unwrap(),
        2,
        "the signal point was not signaled"
    );

    b.fill(
        0,
        1 << 16,
        0xAABB_CCDD,
        &Sync::none().wait(s.id(), 2).signal(s.id(), 3),
    )
    .await
    .unwrap();
    b.copy_from(
        &a,
        100,
        8,
        1024,
        &Sync::none().wait(s.id(), 3).signal(s.id(), 4),
    )
    .await
    .unwrap();
    let got = b
        .read(0, 2048, &Sync::none().wait(s.id(), 4))
        .await
        .unwrap();
    assert_eq!(&got[..8], &[0xDD, 0xCC, 0xBB, 0xAA, 0xDD, 0xCC, 0xBB, 0xAA]);
    assert_eq!(&got[8..1032], &data[..]);
    assert_eq!(&got[1032..1036], &[0xDD, 0xCC, 0xBB, 0xAA]);

    // A wait point that is never reached: DEADLINE_EXCEEDED after the call's timeout, and
    // nothing ran.
    let e = b
        .fill(
            0,
            4,
            0,
            &Sync::none()
                .wait(s.id(), 100)
                .timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::DeadlineExceeded), "{e}");
    assert_eq!(
        &b.read(0, 4, &Sync::none()).await.unwrap(),
        &[0xDD, 0xCC, 0xBB, 0xAA]
    );
    // A signal point that would not increase: refused before anything runs.
    let e = b
        .fill(0, 4, 0, &Sync::none().signal(s.id(), 4))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
}

/// SIGTERM: pending waits get UNAVAILABLE, the daemon exits 0 and removes its sockets.
#[tokio::test]
async fn sigterm_drains_and_ends_waits_with_unavailable() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect_with_session(d.runtime_dir(), "shutdown")
        .await
        .unwrap();
    let s = c.create_semaphore(0, &pinned()).await.unwrap();
    let wait = tokio::spawn({
        let s = s.clone();
        async move { s.wait(1, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dir = d.runtime_dir().to_owned();
    let stopped = Instant::now();
    let status = tokio::task::spawn_blocking(move || d.stop()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        stopped.elapsed()
    );
    let e = wait.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    assert!(!dir.join("control.sock").exists());
    assert!(!dir.join("fd.sock").exists());
}

#[test]
fn a_second_daemon_on_the_same_directory_is_refused() {
    let d = gpushare_tests::daemon_or_skip!();
    let (status, _, err) = run(
        Command::new(bin("gpushared"))
            .arg("--runtime-dir")
            .arg(d.runtime_dir()),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("another gpushared is running"), "{err}");
    assert!(
        d.runtime_dir().join("control.sock").exists(),
        "the first daemon's socket was removed"
    );
}

/// A semaphore exported to another process and signaled there (on its own Vulkan device): the
/// daemon's Wait sees it through the poller. Where the device cannot export timeline semaphores
/// (lavapipe), Export must refuse with FAILED_PRECONDITION, as GetInfo's capabilities say.
#[tokio::test]
async fn semaphore_signaled_in_another_process_wakes_a_daemon_wait() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect_with_session(d.runtime_dir(), "sem export")
        .await
        .unwrap();
    let info = c.info().await.unwrap();
    let caps = info.devices[0].capabilities.clone().unwrap();
    let sem = c
        .create_semaphore(0, &CreateOptions::default())
        .await
        .unwrap();
    let exportable = caps
        .timeline_semaphore_export
        .contains(&(gpushare_client::v1::HandleType::OpaqueFd as i32));
    let described = c.describe(sem.id()).await.unwrap();
    match described.details {
        Some(gpushare_client::v1::resource::Details::Semaphore(s)) => {
            assert_eq!(s.exportable, exportable)
        }
        other => panic!("{other:?}"),
    }
    if !exportable {
        let e = c.export_ticket(sem.id()).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
        let e = c.export(sem.id()).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(Code::FailedPrecondition),
            "direct export: {e}"
        );
        if gpushare_tests::gpu_required() {
            panic!("GPUSHARE_REQUIRE_GPU=1 but the device cannot export timeline semaphores");
        }
        println!("SKIP: the device cannot export timeline semaphores (lavapipe); checked that Export refuses");
        return;
    }
    let dir = d.runtime_dir().to_str().unwrap().to_owned();
    let mut latencies = Vec::new();
    for round in 1..=20u64 {
        let ticket = hex::encode(c.export_ticket(sem.id()).await.unwrap().ticket);
        let peer = std::thread::spawn({
            let dir = dir.clone();
            move || {
                run(
                    Command::new(bin("gpushare-peer")).args([
                        &dir,
                        "sem-signal",
                        &ticket,
                        &round.to_string(),
                        "50",
                    ]),
                    Duration::from_secs(30),
                )
            }
        });
        let got = sem.wait(round, Duration::from_secs(20)).await.unwrap();
        let woke = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        assert!(got >= round);
        let (status, out, err) = peer.join().unwrap();
        assert!(status.success(), "peer failed: {err}");
        let signaled: u128 = out.trim().parse().unwrap();
        latencies.push(woke.saturating_sub(signaled) as f64 / 1000.0);
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p50 = latencies[latencies.len() / 2];
    println!(
        "signal in another process -> daemon Wait returns: p50 {p50:.0} us, max {:.0} us",
        latencies[latencies.len() - 1]
    );
    assert!(
        p50 < 5_000.0,
        "waits woke {p50} us after the signal: the poller is not polling"
    );
}

/// An import into a device of another driver is refused before the driver sees it (an
/// `OPAQUE_FD` import needs the exporter's driver), and the descriptor is closed.
#[tokio::test]
async fn an_import_checks_the_exporting_driver() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect_with_session(d.runtime_dir(), "driver check")
        .await
        .unwrap();
    let buf = c
        .create_buffer(4096, &CreateOptions::default())
        .await
        .unwrap();
    let mut exported = c.export(buf.id()).await.unwrap();
    let instance = Instance::new("test").unwrap();
    let device = import::vulkan_device_for(&instance, &exported).unwrap();
    exported.info.driver_uuid = vec![0xab; 16];
    let err = import::import_buffer_vulkan(&device, exported).unwrap_err();
    assert!(
        matches!(err, gpushare_client::Error::WrongDriver { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("abababab"), "{err}");
}

/// Host buffers carry bulk transfers: bytes put in a host buffer here are written to a device
/// buffer by the daemon and read back into another host buffer, beyond the message limit
/// (`max_transfer_size` is 1 MiB in this daemon); mistakes are refused with INVALID_ARGUMENT;
/// the memfd is sealed; nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_buffers_carry_bulk_transfers_beyond_the_message_limit() {
    use gpushare_client::v1;
    let d = gpushare_tests::daemon_or_skip!(
        "[limits]\nmax_transfer_size = 1048576\nmax_host_buffer_size = 8388608\n"
    );
    let fds_before = d.settled_fd_count();
    let c = Client::connect_with_session(d.runtime_dir(), "host buffers")
        .await
        .unwrap();
    let info = c.info().await.unwrap();
    assert_eq!(info.limits.unwrap().max_host_buffer_size, 8 << 20);
    const LEN: u64 = 3 << 20;
    let src = c
        .create_host_buffer(LEN, &CreateOptions::default())
        .await
        .unwrap();
    let dst = c
        .create_host_buffer(LEN + 4096, &CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(src.len(), LEN);
    let described = c.describe(src.id()).await.unwrap();
    assert_eq!(described.kind, v1::ResourceKind::HostBuffer as i32);
    match described.details {
        Some(v1::resource::Details::HostBuffer(h)) => {
            assert_eq!(h.size, LEN);
            assert_eq!(h.registered, info.executor == "cuda", "{h:?}");
        }
        other => panic!("{other:?}"),
    }
    let mut data = vec![0u8; LEN as usize];
    gpushare_tests::rng::SplitMix64(7).fill(&mut data);
    src.write_at(0, &data).unwrap();

    let buf = c
        .create_buffer(LEN + 1024, &CreateOptions::default())
        .await
        .unwrap();
    let none = Sync::default();
    // Inline bytes are held to the message limit; host ranges are not.
    let e = buf.write(0, &data, &none).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    buf.write_from_host(1024, &src, 0, LEN, &none)
        .await
        .unwrap();
    buf.read_into_host(1024, LEN, &dst, 4096, &none)
        .await
        .unwrap();
    let mut back = vec![0u8; LEN as usize];
    dst.read_at(4096, &mut back).unwrap();
    assert!(back == data, "bytes differ after a host-buffer round trip");
    // A piece in the middle, through the message path, agrees.
    let piece = buf.read(1024 + 5000, 4096, &none).await.unwrap();
    assert_eq!(piece, &data[5000..5000 + 4096]);

    // Refusals, each INVALID_ARGUMENT.
    let invalid = |r: gpushare_client::Result<()>, what: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{what}: {e}");
    };
    invalid(
        buf.write_from_host(0, &src, 1, LEN, &none).await,
        "host range past the end",
    );
    invalid(
        buf.write_from_host(4096, &src, 0, LEN, &none).await,
        "buffer range past the end",
    );
    invalid(
        buf.read_into_host(0, LEN, &dst, 8192, &none).await,
        "read past the host buffer's end",
    );
    let mut both = v1::WriteRequest {
        buffer_id: buf.id().to_owned(),
        offset: 0,
        data: vec![1, 2, 3, 4],
        sync: None,
        from_host: Some(src.range(0, 4)),
    };
    let e = c.grpc().write(c.request(both.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "data and from_host: {e}");
    both.data.clear();
    both.from_host = Some(v1::HostRange {
        host_buffer_id: buf.id().to_owned(),
        offset: 0,
        length: 4,
    });
    let e = c.grpc().write(c.request(both)).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "a device buffer as host buffer: {e}"
    );
    let mismatched = v1::ReadRequest {
        buffer_id: buf.id().to_owned(),
        offset: 0,
        length: 8,
        sync: None,
        to_host: Some(dst.range(0, 4)),
    };
    let e = c.grpc().read(c.request(mismatched)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "to_host length: {e}");
    for size in [0, (8 << 20) + 1] {
        let e = c
            .create_host_buffer(size, &CreateOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidArgument), "size {size}: {e}");
    }

    // The memfd is sealed: this process cannot resize it under the daemon's mapping.
    let fd = src.memory().fd();
    assert!(
        rustix::fs::ftruncate(fd, 4096).is_err(),
        "shrinking must be refused"
    );
    assert!(
        rustix::fs::ftruncate(fd, LEN * 2).is_err(),
        "growing must be refused"
    );

    // Released: freed in the daemon, still mapped here.
    assert!(src.release().await.unwrap());
    let e = buf.write_from_host(0, &src, 0, 4, &none).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    src.write_at(0, b"still mapped").unwrap();
    drop((src, dst, buf, c));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        d.settled_fd_count(),
        fds_before,
        "the daemon leaked descriptors"
    );
}

/// What the two binaries say about themselves: their names and versions, every `--device`
/// form, images in the description; `ls` and `image ls` on nothing say so; an error's usage
/// line does not show `--runtime-dir` as required when GPUSHARE_RUNTIME_DIR gives it.
#[test]
fn help_version_and_empty_listings_say_what_they_mean() {
    let d = gpushare_tests::daemon_or_skip!();
    let version = env!("CARGO_PKG_VERSION");
    let (status, out, _) = run(
        Command::new(bin("gpushared")).arg("--version"),
        Duration::from_secs(30),
    );
    assert!(status.success());
    assert_eq!(out.trim(), format!("gpushared {version}"));
    let (_, help, _) = run(
        Command::new(bin("gpushared")).arg("--help"),
        Duration::from_secs(30),
    );
    for word in ["images", "all (every Vulkan device", "comma-separated list"] {
        assert!(
            help.contains(word),
            "gpushared --help lacks {word:?}:\n{help}"
        );
    }
    let ctl = |args: &[&str]| {
        run(
            Command::new(bin("gpusharectl"))
                .env("GPUSHARE_RUNTIME_DIR", d.runtime_dir())
                .args(args),
            Duration::from_secs(30),
        )
    };
    let (_, out, _) = ctl(&["--version"]);
    assert_eq!(out.trim(), format!("gpusharectl {version}"));
    let (status, out, err) = ctl(&["ls"]);
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), "no resources");
    let (status, out, err) = ctl(&["image", "ls"]);
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), "no images");
    let (_, out, _) = ctl(&["ls", "--json"]);
    assert_eq!(out.trim(), "[]");
    let (status, _, err) = ctl(&["export"]);
    assert_eq!(status.code(), Some(2), "{err}");
    let usage = err.lines().find(|l| l.starts_with("Usage:")).unwrap_or("");
    assert_eq!(usage, "Usage: gpusharectl export <ID>", "{err}");
}
