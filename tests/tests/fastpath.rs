//! The CUDA fast path: semaphores mirrored in a memop word.
//!
//! Everywhere (CI: lavapipe, no CUDA): GetInfo says whether each device offers the fast path and
//! why not; a semaphore or stream asked to have a word is made without one where it is not
//! offered, and says why; exports send the word's descriptor only when asked for and present;
//! signal paths are validated.
//!
//! On the GPU machine (fast path offered): a signal on the word reaches a waiter on the
//! semaphore (CUDA and Vulkan), a host signal and a bridged semaphore-path signal reach a waiter
//! on the word, and a SIGKILLed signaler releases a CUDA stream waiting on the word within 100 ms
//! (the daemon raises the word to its poison). Elsewhere these print `SKIP: <reason>`, and fail
//! under `GPUSHARE_REQUIRE_GPU=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpushare_client::cuda::{cuda_device_for, CudaSemaphore, Path, SyncPath};
use gpushare_client::SlotKind;
use gpushare_client::{import, v1, Client, CreateOptions, OpenTarget, StreamOptions};
use gpushare_interop::cuda::cudarc::driver::CudaStream;
use gpushare_interop::cuda::{self, CudaDevice};
use gpushare_interop::vulkan::Instance;
use gpushare_tests::{gpu_required, TestDaemon};
use tonic::Code;

fn worded() -> CreateOptions {
    CreateOptions {
        word: true,
        signal_path: v1::SignalPath::Word,
        ..CreateOptions::default()
    }
}

/// Device 0's fast-path verdict.
async fn fast_path(client: &Client) -> v1::FastPath {
    let info = client.info().await.unwrap();
    info.devices[0]
        .fast_path
        .clone()
        .expect("GetInfo reports the fast path of every device")
}

fn semaphore_details(r: &v1::Resource) -> v1::SemaphoreDetails {
    match &r.details {
        Some(v1::resource::Details::Semaphore(s)) => s.clone(),
        other => panic!("not a semaphore: {other:?}"),
    }
}

/// Whether the fast path is offered, a word is made where asked, and said why not elsewhere;
/// the word's descriptor comes only when asked for and present.
#[tokio::test]
async fn words_are_made_where_offered_and_said_why_not_elsewhere() {
    let d = gpushare_tests::daemon_or_skip!();
    let client = Client::connect_with_session(d.runtime_dir(), "fastpath")
        .await
        .unwrap();
    let fast = fast_path(&client).await;
    if fast.offered {
        assert!(fast.unavailable.is_empty(), "{fast:?}");
    } else {
        assert!(
            !fast.unavailable.is_empty(),
            "an unoffered fast path says why"
        );
    }

    let plain = client
        .create_semaphore(3, &CreateOptions::default())
        .await
        .unwrap();
    let details = semaphore_details(&client.describe(plain.id()).await.unwrap());
    assert!(
        !details.word && details.word_unavailable.is_empty(),
        "{details:?}"
    );
    let exportable = details.exportable;
    if exportable {
        let exported = client.export_with_word(plain.id()).await.unwrap();
        assert!(exported.word.is_none(), "no word, no second descriptor");
    }

    let sem = client.create_semaphore(5, &worded()).await.unwrap();
    let details = semaphore_details(&client.describe(sem.id()).await.unwrap());
    assert_eq!(details.value, 5);
    if !exportable {
        // lavapipe: nothing leaves the daemon, so there is nothing to mirror either.
        assert!(!details.word, "{details:?}");
        assert!(
            details.word_unavailable.contains("cannot export"),
            "{details:?}"
        );
        let err = client.export_with_word(sem.id()).await.unwrap_err();
        assert!(
            matches!(
                err,
                gpushare_client::Error::Redeem {
                    code: Code::FailedPrecondition,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    if fast.offered && exportable {
        let exported = client.export_with_word(sem.id()).await.unwrap();
        let import = match &exported.info.details {
            Some(v1::exported_fd::Details::Semaphore(s)) => *s,
            other => panic!("not a semaphore import: {other:?}"),
        };
        assert_eq!(import.value, 5);
        assert!(details.word, "{details:?}");
        assert!(import.word_exists && import.word.is_some(), "{import:?}");
        assert!(
            exported.word.is_some(),
            "the word's descriptor comes second"
        );
        // Without asking, one descriptor, and the metadata says a word exists.
        let one = client.export(sem.id()).await.unwrap();
        assert!(one.word.is_none());
        match &one.info.details {
            Some(v1::exported_fd::Details::Semaphore(s)) => {
                assert!(s.word_exists && s.word.is_none(), "{s:?}")
            }
            other => panic!("{other:?}"),
        }
    } else if exportable {
        assert!(!details.word, "{details:?}");
        assert_eq!(details.word_unavailable, fast.unavailable);
        let exported = client.export_with_word(sem.id()).await.unwrap();
        match &exported.info.details {
            Some(v1::exported_fd::Details::Semaphore(s)) => {
                assert!(!s.word_exists && s.word.is_none(), "{s:?}")
            }
            other => panic!("not a semaphore import: {other:?}"),
        }
        assert!(exported.word.is_none());
    }

    // A stream asked for words: its timelines say the same.
    let stream = client
        .create_stream(
            2,
            &SlotKind::Buffer(4096),
            &StreamOptions {
                word: true,
                signal_path: v1::SignalPath::Word,
                ..StreamOptions::default()
            },
        )
        .await
        .unwrap();
    let ready = stream
        .attachment()
        .ready
        .as_ref()
        .expect("the ready timeline")
        .resource_id
        .clone();
    let ready = semaphore_details(&client.describe(&ready).await.unwrap());
    assert_eq!(ready.word, fast.offered && exportable, "{ready:?}");
    assert_eq!(ready.word_unavailable.is_empty(), ready.word, "{ready:?}");
}

/// An unknown signal path is INVALID_ARGUMENT, naming it; a known one is accepted by Open.
#[tokio::test]
async fn signal_paths_are_checked() {
    let d = gpushare_tests::daemon_or_skip!();
    let client = Client::connect_with_session(d.runtime_dir(), "fastpath")
        .await
        .unwrap();
    let request = v1::CreateSemaphoreRequest {
        signal_path: 7,
        ..Default::default()
    };
    let err = client
        .grpc()
        .create_semaphore(client.request(request))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("signal path 7"), "{}", err.message());

    let sem = client.create_semaphore(0, &worded()).await.unwrap();
    let other = Client::connect_with_session(d.runtime_dir(), "fastpath 2")
        .await
        .unwrap();
    for path in [v1::SignalPath::Semaphore, v1::SignalPath::Word] {
        other
            .open_with(OpenTarget::Id(sem.id().to_owned()), true, path)
            .await
            .unwrap();
    }
    let request = v1::OpenRequest {
        target: Some(v1::open_request::Target::Id(sem.id().to_owned())),
        signal: true,
        signal_path: -1,
    };
    let err = other.grpc().open(other.request(request)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Host signals go through the daemon, which keeps the semaphore (and any word) in step.
    sem.signal(4).await.unwrap();
    assert_eq!(sem.value().await.unwrap(), 4);
}

/// The GPU machine's setup: a daemon, a session, device 0's CUDA device; None after a SKIP.
async fn gpu_setup(name: &str) -> Option<(TestDaemon, Client)> {
    if !cuda::is_present() {
        if gpu_required() {
            panic!("GPUSHARE_REQUIRE_GPU=1, but there is no CUDA driver");
        }
        println!("SKIP: no CUDA driver (libcuda) on this machine");
        return None;
    }
    let Some(d) = TestDaemon::start() else {
        if gpu_required() {
            panic!("GPUSHARE_REQUIRE_GPU=1, but the daemon found no Vulkan device");
        }
        return None;
    };
    let client = Client::connect_with_session(d.runtime_dir(), name)
        .await
        .unwrap();
    let fast = fast_path(&client).await;
    if !fast.offered {
        if gpu_required() {
            panic!(
                "GPUSHARE_REQUIRE_GPU=1, but the fast path is not offered: {}",
                fast.unavailable
            );
        }
        println!(
            "SKIP: the daemon does not offer the fast path: {}",
            fast.unavailable
        );
        return None;
    }
    Some((d, client))
}

/// Imports semaphore `id` (with its word) on `path`.
async fn import(client: &Client, id: &str, path: SyncPath) -> (Arc<CudaDevice>, CudaSemaphore) {
    let exported = client.export_with_word(id).await.unwrap();
    let device = cuda_device_for(&exported).unwrap();
    let sem = CudaSemaphore::import(&device, exported, path).unwrap();
    (device, sem)
}

/// Waits (host, polling an event) until `stream` passed everything enqueued so far, at most
/// `limit`; returns how long it took, or None.
fn passes_within(stream: &CudaStream, limit: Duration) -> Option<Duration> {
    let event = stream.record_event(None).unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if event.is_complete() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

/// One semaphore, every path: a signal on the word reaches waiters on the semaphore (CUDA and
/// a Vulkan import's host wait); a host signal and a bridged semaphore-path signal reach a
/// waiter on the word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_sees_every_signal() {
    let Some((_d, client)) = gpu_setup("fastpath paths").await else {
        return;
    };
    let sem = client.create_semaphore(0, &worded()).await.unwrap();
    let (device, fast) = import(&client, sem.id(), SyncPath::Word).await;
    assert_eq!(fast.path(), Path::Word);
    let (_, slow) = import(&client, sem.id(), SyncPath::Semaphore).await;
    assert_eq!(slow.path(), Path::Semaphore);
    let a = device.new_stream().unwrap();
    let b = device.new_stream().unwrap();

    // Word → semaphore: CUDA on the semaphore, and Vulkan.
    slow.wait(1, &b).unwrap();
    fast.signal(1, &a).unwrap();
    assert!(
        passes_within(&b, Duration::from_secs(5)).is_some(),
        "semaphore waiter"
    );
    let exported = client.export(sem.id()).await.unwrap();
    let instance = Instance::new("fastpath").unwrap();
    let vk = import::vulkan_device_for(&instance, &exported).unwrap();
    let vk_sem = import::import_semaphore_vulkan(&vk, exported).unwrap();
    assert!(
        vk_sem.wait(1, Duration::from_secs(5)).unwrap(),
        "Vulkan waiter"
    );

    // Host → word.
    fast.wait(2, &a).unwrap();
    sem.signal(2).await.unwrap();
    assert!(
        passes_within(&a, Duration::from_secs(5)).is_some(),
        "host signal on the word"
    );

    // Semaphore path → word, through the bridge: a second session declares it signals through
    // the semaphore alone.
    let other = Client::connect_with_session(client.runtime_dir(), "fastpath bridge")
        .await
        .unwrap();
    other
        .open_with(
            OpenTarget::Id(sem.id().to_owned()),
            true,
            v1::SignalPath::Semaphore,
        )
        .await
        .unwrap();
    fast.wait(3, &a).unwrap();
    slow.signal(3, &b).unwrap();
    let took = passes_within(&a, Duration::from_secs(5));
    assert!(took.is_some(), "a bridged signal reaches the word");
    println!("bridged signal reached the word after {took:?}");
    assert_eq!(sem.value().await.unwrap(), 3);
}

/// A CUDA stream waiting on the word of a semaphore whose only signaler is SIGKILLed passes
/// within 100 ms: the daemon abandons the semaphore and raises the word to its poison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_signaler_releases_a_wait_on_the_word() {
    let Some((d, client)) = gpu_setup("fastpath kill").await else {
        return;
    };
    let (mut peer, _, sem_id) = gpushare_tests::hold_peer(d.runtime_dir(), 4096, &["word"]);
    // Held here too, so that it is abandoned (not freed) when the peer goes.
    client
        .open(OpenTarget::Id(sem_id.clone()), false)
        .await
        .unwrap();
    let (device, sem) = import(&client, &sem_id, SyncPath::Word).await;
    let stream = device.new_stream().unwrap();
    sem.wait(1, &stream).unwrap();
    assert!(
        passes_within(&stream, Duration::from_millis(100)).is_none(),
        "nobody signaled yet"
    );
    let killed = Instant::now();
    peer.kill().unwrap();
    peer.wait().unwrap();
    let event = stream.record_event(None).unwrap();
    while !event.is_complete() {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the wait on the word was never released"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let released = killed.elapsed();
    println!("released {released:?} after the SIGKILL");
    assert!(
        released <= Duration::from_millis(100),
        "released after {released:?}, more than 100 ms"
    );
    let err = client.semaphore(&sem_id).value().await;
    assert!(err.is_err() || err.unwrap() > 1, "abandoned: poisoned");
}
