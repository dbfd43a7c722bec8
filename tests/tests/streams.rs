//! Frame streams against the real daemon: producer and consumers in separate processes
//! (`gpushare-streamer`, every frame's contents checked through each process's own Vulkan
//! import), FIFO and mailbox delivery, fan-out with limits, late attach and detach, dead
//! consumers and producers (SIGKILL), and every bad input the issue lists. On lavapipe the
//! points are HOST points: the daemon signals them at each call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpushare_client::{v1, Client, Consumer, FrameMetadata, Producer, SlotKind, StreamOptions};
use gpushare_tests::{bin, spawn, TestDaemon};
use tonic::Code;

const SLOT: u64 = 4096;

fn meta(n: u64) -> FrameMetadata {
    FrameMetadata {
        number: n,
        timestamp_ns: n * 1000,
        user_data: vec![n as u8; 4],
    }
}

fn code(r: gpushare_client::Result<impl std::fmt::Debug>) -> Option<Code> {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code(),
    }
}

/// A `gpushare-streamer` child and its stdout lines.
struct Streamer {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Streamer {
    fn start(d: &TestDaemon, args: &[&str]) -> Streamer {
        Self::start_with(d, args, "vulkan")
    }

    /// With `api` "cuda", it moves frames with CUDA (see the streamer's docs).
    fn start_with(d: &TestDaemon, args: &[&str], api: &str) -> Streamer {
        let mut child = spawn(
            Command::new(bin("gpushare-streamer"))
                .arg(d.runtime_dir())
                .args(args)
                .env("GPUSHARE_STREAMER_API", api)
                .stdout(Stdio::piped()),
        );
        let out = BufReader::new(child.stdout.take().unwrap());
        Streamer { child, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "gpushare-streamer ended without output");
        l.trim().to_owned()
    }

    /// Waits for it to exit 0 and returns its last line.
    fn finish(mut self) -> String {
        let mut last = String::new();
        loop {
            let mut l = String::new();
            if self.out.read_line(&mut l).unwrap() == 0 {
                break;
            }
            last = l.trim().to_owned();
        }
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "gpushare-streamer: {status} (last line {last:?})"
        );
        last
    }
}

/// `consumed N last L gaps G` as numbers.
fn consumed(line: &str) -> (u64, u64, u64) {
    let w: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((w[0], w[2], w[4]), ("consumed", "last", "gaps"), "{line}");
    (
        w[1].parse().unwrap(),
        w[3].parse().unwrap(),
        w[5].parse().unwrap(),
    )
}

async fn session(d: &TestDaemon, name: &str) -> Client {
    Client::connect_with_session(d.runtime_dir(), name)
        .await
        .unwrap()
}

async fn unproduced(c: &Client, slots: u32) -> String {
    c.create_stream_unproduced(slots, &SlotKind::Buffer(SLOT), &StreamOptions::default())
        .await
        .unwrap()
        .id
}

/// Runs a blocking frame call on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_delivers_every_frame_in_order_to_every_consumer() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = session(&d, "fifo test").await;
    let id = unproduced(&c, 4).await;
    let frames = std::env::var("GPUSHARE_STREAM_FRAMES").unwrap_or_else(|_| "10000".into());
    let mut consumers: Vec<Streamer> = (0..2)
        .map(|i| {
            Streamer::start(
                &d,
                &["consume", &id, "fifo", if i == 0 { "1" } else { "3" }],
            )
        })
        .collect();
    for s in &mut consumers {
        assert_eq!(s.line(), "attached");
    }
    let started = Instant::now();
    let mut producer = Streamer::start(&d, &["produce", &id, &frames]);
    assert_eq!(producer.line(), "attached");
    let produced = producer.finish();
    assert!(
        produced.starts_with(&format!("produced {frames} ")),
        "{produced}"
    );
    let n: u64 = frames.parse().unwrap();
    for s in consumers {
        let (count, last, gaps) = consumed(&s.finish());
        assert_eq!(
            (count, last, gaps),
            (n, n, 0),
            "a FIFO consumer lost frames"
        );
    }
    println!(
        "{n} frames to 2 FIFO consumers, 3 processes, contents checked: {:.1} s ({:.0} frames/s)",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
    let info = c.describe_stream(&id).await.unwrap();
    assert_eq!(info.frames_presented, n);
    assert!(info.ended.contains("producer"), "{}", info.ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_never_blocks_the_producer_and_counts_its_drops() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = session(&d, "mailbox test").await;
    let p = Arc::new(
        c.create_stream(3, &SlotKind::Buffer(SLOT), &StreamOptions::default())
            .await
            .unwrap(),
    );
    let id = p.info().id.clone();
    let cc = session(&d, "mailbox consumer").await;
    let m = Arc::new(
        cc.attach_consumer(&id, v1::DeliveryMode::Mailbox, 1)
            .await
            .unwrap(),
    );
    // The producer presents 400 frames as fast as it can; the consumer takes one every 2 ms.
    let total = 400;
    let prod = {
        let p = p.clone();
        tokio::task::spawn_blocking(move || {
            for n in 1..=total {
                let g = p.acquire_slot(Duration::ZERO, false).expect("never waits");
                p.present(g.slot, 0, meta(n)).unwrap();
            }
        })
    };
    let (mut seen, mut last, mut gaps) = (0u64, 0u64, 0u64);
    loop {
        let m2 = m.clone();
        let f = match blocking(move || m2.acquire_frame(Duration::from_millis(300), false)).await {
            Ok(f) => f,
            Err(e) if e.code() == Some(Code::DeadlineExceeded) && prod.is_finished() => break,
            Err(e) => panic!("{e}"),
        };
        let n = f.metadata.unwrap().number;
        assert!(n > last, "mailbox went back from {last} to {n}");
        gaps += n - last - 1;
        last = n;
        seen += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
        m.release_frame(f.slot, 0).unwrap();
    }
    prod.await.unwrap();
    assert_eq!(last, total, "the newest frame is the last one seen");
    let info = c.describe_stream(&id).await.unwrap();
    assert_eq!(
        info.producer_stalls, 0,
        "a mailbox consumer made the producer wait"
    );
    let me = &info.consumers[0];
    assert_eq!(me.acquired, seen);
    assert_eq!(
        me.dropped, gaps,
        "the daemon's drop count and the consumer's gaps differ"
    );
    assert!(gaps > 0, "a slow mailbox consumer should miss frames");
    println!("mailbox: {seen} of {total} frames seen, {gaps} dropped, producer never waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_limits_late_attach_and_detach() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = session(&d, "producer").await;
    let p = Arc::new(
        c.create_stream(4, &SlotKind::Buffer(SLOT), &StreamOptions::default())
            .await
            .unwrap(),
    );
    let id = p.info().id.clone();
    // Every point below is given as 0 ("now"): the daemon signals it, HOST or GPU points alike.
    let c1 = session(&d, "a").await;
    let a = Arc::new(
        c1.attach_consumer(&id, v1::DeliveryMode::Fifo, 1)
            .await
            .unwrap(),
    );
    let c2 = session(&d, "b").await;
    let b = c2
        .attach_consumer(&id, v1::DeliveryMode::Fifo, 2)
        .await
        .unwrap();
    let present = |n: u64| {
        let g = p.acquire_slot(Duration::from_secs(5), false).unwrap();
        p.present(g.slot, 0, meta(n)).unwrap();
        g
    };
    present(1);
    present(2);
    // Both see frame 1; `a` is at its limit of 1.
    let fa = a.acquire_frame(Duration::from_secs(1), false).unwrap();
    assert_eq!(fa.metadata.as_ref().unwrap().number, 1);
    assert_eq!(
        code(a.acquire_frame(Duration::from_secs(1), false)),
        Some(Code::FailedPrecondition)
    );
    let fb1 = b.acquire_frame(Duration::from_secs(1), false).unwrap();
    let fb2 = b.acquire_frame(Duration::from_secs(1), false).unwrap();
    assert_eq!(fb2.metadata.as_ref().unwrap().number, 2);
    assert_eq!(fa.slot, fb1.slot);
    // A late consumer sees frames from its attach on.
    let c3 = session(&d, "late").await;
    let late = c3
        .attach_consumer(&id, v1::DeliveryMode::Fifo, 4)
        .await
        .unwrap();
    present(3);
    let fl = late.acquire_frame(Duration::from_secs(1), false).unwrap();
    assert_eq!(fl.metadata.unwrap().number, 3);
    // The 4th slot: then every slot is held or queued, and the producer waits.
    present(4);
    assert_eq!(
        code(p.acquire_slot(Duration::ZERO, false)),
        Some(Code::DeadlineExceeded)
    );
    // Frame 1's slot frees once both readers released it; the grant names their points.
    b.release_frame(fb1.slot, 0).unwrap();
    assert_eq!(
        code(p.acquire_slot(Duration::ZERO, false)),
        Some(Code::DeadlineExceeded)
    );
    let ra = a.release_frame(fa.slot, 0).unwrap();
    let g = p.acquire_slot(Duration::ZERO, false).unwrap();
    assert_eq!(g.slot, fa.slot);
    assert_eq!(g.wait.len(), 2, "{g:?}");
    assert!(g.wait.iter().any(|w| w.value == ra));
    p.present(g.slot, 0, meta(5)).unwrap();
    // `b` detaches mid-stream holding frame 2 and with 3.. queued: the producer goes on.
    let info = b.detach().await.unwrap();
    assert_eq!(info.consumers.len(), 2);
    // Releasing a frame not held, and releasing twice.
    assert_eq!(
        code(a.release_frame(fa.slot, 0)),
        Some(Code::FailedPrecondition)
    );
    // The detached consumer's handle is gone.
    let info = c.describe_stream(&id).await.unwrap();
    assert!(info.consumers.iter().all(|x| x.limit != 2));
    // `a` and `late` drain; slots come back.
    for want in [2, 3, 4, 5] {
        let f = a.acquire_frame(Duration::from_secs(1), false).unwrap();
        assert_eq!(f.metadata.unwrap().number, want);
        a.release_frame(f.slot, 0).unwrap();
    }
    late.release_frame(fl.slot, 0).unwrap();
    for want in [4, 5] {
        let f = late.acquire_frame(Duration::from_secs(1), false).unwrap();
        assert_eq!(f.metadata.unwrap().number, want);
        late.release_frame(f.slot, 0).unwrap();
    }
    for _ in 0..4 {
        let g = p.acquire_slot(Duration::ZERO, false).unwrap();
        p.present(g.slot, 0, meta(6)).unwrap();
        let f = a.acquire_frame(Duration::from_secs(1), false).unwrap();
        a.release_frame(f.slot, 0).unwrap();
        let f = late.acquire_frame(Duration::from_secs(1), false).unwrap();
        late.release_frame(f.slot, 0).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_frees_its_slots_within_100_ms() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = session(&d, "producer").await;
    let p = Arc::new(
        c.create_stream(2, &SlotKind::Buffer(SLOT), &StreamOptions::default())
            .await
            .unwrap(),
    );
    let id = p.info().id.clone();
    let fds = d.settled_fd_count();
    let (resources, _) = (c.list().await.unwrap().len(), ());
    let runs: u32 = std::env::var("GPUSHARE_STREAM_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut stalls = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for run in 0..runs {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let hold = (seed % 3) as u32;
        let mut holder = Streamer::start(&d, &["hold", &id, &hold.to_string()]);
        assert_eq!(holder.line(), "attached");
        for n in 0..2 {
            let g = p.acquire_slot(Duration::from_secs(5), false).unwrap();
            p.present(g.slot, 0, meta(u64::from(run * 2 + n))).unwrap();
        }
        assert_eq!(holder.line(), "holding");
        // Every slot is held or queued for the holder: the producer's acquire waits.
        let waiting = {
            let p = p.clone();
            std::thread::spawn(move || {
                let r = p.acquire_slot(Duration::from_secs(10), false);
                (r, Instant::now())
            })
        };
        std::thread::sleep(Duration::from_millis(5 + seed % 20));
        assert!(
            !waiting.is_finished(),
            "run {run}: the producer did not wait"
        );
        let killed = Instant::now();
        holder.child.kill().unwrap();
        let (r, served) = waiting.join().unwrap();
        holder.child.wait().unwrap();
        let g = r.unwrap_or_else(|e| panic!("run {run}: {e}"));
        stalls.push(served.saturating_duration_since(killed));
        // Back to the pool: no consumer now, so the frame goes nowhere.
        p.present(g.slot, 0, meta(0)).unwrap();
    }
    stalls.sort();
    let p99 = stalls[(stalls.len() * 99 / 100).min(stalls.len() - 1)];
    println!(
        "producer stall after a consumer SIGKILL, {runs} kills: p50 {:?}, p99 {p99:?}, max {:?}",
        stalls[stalls.len() / 2],
        stalls.last().unwrap()
    );
    assert!(p99 <= Duration::from_millis(100), "p99 {p99:?}");
    // Nothing left behind: each consumer's release timeline was freed with it.
    assert_eq!(c.list().await.unwrap().len(), resources);
    assert_eq!(c.describe_stream(&id).await.unwrap().consumers.len(), 0);
    assert!(
        d.settled_fd_count() <= fds,
        "the daemon kept descriptors of dead consumers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_producer_ends_the_stream_and_nothing_leaks() {
    let d = gpushare_tests::daemon_or_skip!();
    let fds = d.settled_fd_count();
    let rss = d.rss_kib();
    let c = session(&d, "owner").await;
    for round in 0..3 {
        let id = unproduced(&c, 3).await;
        let mut consumers: Vec<Streamer> = (0..2)
            .map(|_| Streamer::start(&d, &["consume", &id, "fifo", "2"]))
            .collect();
        for s in &mut consumers {
            assert_eq!(s.line(), "attached");
        }
        // A producer that would run for a minute, killed after a few frames.
        let mut producer = Streamer::start(&d, &["produce", &id, "100000", "2000"]);
        assert_eq!(producer.line(), "attached");
        std::thread::sleep(Duration::from_millis(150));
        producer.child.kill().unwrap();
        producer.child.wait().unwrap();
        let mut lasts = Vec::new();
        for s in consumers {
            let (count, last, gaps) = consumed(&s.finish());
            assert_eq!((count, gaps), (last, 0), "round {round}");
            lasts.push(last);
        }
        assert_eq!(lasts[0], lasts[1], "FIFO consumers drained the same frames");
        let info = c.describe_stream(&id).await.unwrap();
        assert!(info.ended.contains("session ended"), "{}", info.ended);
        assert_eq!(info.frames_presented, lasts[0]);
        assert!(
            c.release(&id).await.unwrap(),
            "the stream was freed with its parts"
        );
    }
    assert!(
        c.list().await.unwrap().is_empty(),
        "a stream left resources behind"
    );
    drop(c);
    assert!(d.settled_fd_count() <= fds, "descriptors leaked");
    let grew = d.rss_kib().saturating_sub(rss);
    println!("daemon RSS grew {grew} KiB over 3 streams with killed producers");
    assert!(grew < 64 * 1024, "RSS grew {grew} KiB");
}

/// GPU points (a device that exports timeline semaphores: the GPU suite): frames move with
/// CUDA and Vulkan on both sides, every hand-off waited for and signaled on the GPUs, every
/// frame checked byte for byte; then a consumer holding frames is killed mid-stream and the
/// producer goes on (the dead consumer's release timeline is poisoned, so the producer's GPU
/// waits on it pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_points_hand_frames_between_cuda_and_vulkan() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = session(&d, "gpu streams").await;
    let probe = c
        .create_stream(2, &SlotKind::Buffer(SLOT), &StreamOptions::default())
        .await
        .unwrap();
    if !probe.gpu_points() {
        assert!(
            !gpushare_tests::gpu_required(),
            "GPUSHARE_REQUIRE_GPU=1 but the stream's points are HOST points"
        );
        println!(
            "SKIP: the device exports no timeline semaphore (HOST points): GPU points need a GPU"
        );
        return;
    }
    probe.detach().await.unwrap();
    let frames = "2000";
    for (producer_api, consumer_apis) in
        [("vulkan", ["cuda", "vulkan"]), ("cuda", ["vulkan", "cuda"])]
    {
        let id = unproduced(&c, 3).await;
        let mut consumers: Vec<Streamer> = consumer_apis
            .iter()
            .map(|api| Streamer::start_with(&d, &["consume", &id, "fifo", "2"], api))
            .collect();
        for s in &mut consumers {
            assert_eq!(s.line(), "attached");
        }
        let started = Instant::now();
        let mut producer = Streamer::start_with(&d, &["produce", &id, frames], producer_api);
        assert_eq!(producer.line(), "attached");
        producer.finish();
        for (s, api) in consumers.into_iter().zip(consumer_apis) {
            let (count, last, gaps) = consumed(&s.finish());
            assert_eq!(
                (count, last, gaps),
                (2000, 2000, 0),
                "{producer_api} -> {api}"
            );
        }
        println!(
            "GPU points: {frames} frames {producer_api} -> {consumer_apis:?}: {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
    // A consumer holding two frames is SIGKILLed while the producer waits for a slot.
    let id = unproduced(&c, 3).await;
    let mut holder = Streamer::start_with(&d, &["hold", &id, "2"], "cuda");
    assert_eq!(holder.line(), "attached");
    let mut reader = Streamer::start_with(&d, &["consume", &id, "fifo", "2"], "cuda");
    assert_eq!(reader.line(), "attached");
    let mut producer = Streamer::start_with(&d, &["produce", &id, "500"], "vulkan");
    assert_eq!(producer.line(), "attached");
    assert_eq!(holder.line(), "holding");
    std::thread::sleep(Duration::from_millis(100));
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    producer.finish();
    let (count, last, gaps) = consumed(&reader.finish());
    assert_eq!((count, last, gaps), (500, 500, 0));
}

/// The raw gRPC client, for requests the typed client never makes.
async fn raw(
    d: &TestDaemon,
) -> (
    Client,
    gpushare_proto::v1::gpu_share_client::GpuShareClient<tonic::transport::Channel>,
) {
    let c = session(d, "raw").await;
    let g = c.grpc();
    (c, g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_inputs_get_precise_codes() {
    let d =
        gpushare_tests::daemon_or_skip!("socket_mode = 0o666\n[quotas]\nbuffers_per_uid = 12\n");
    let (c, mut g) = raw(&d).await;
    let create =
        |slots: u32, slot: Option<v1::create_stream_request::Slot>| v1::CreateStreamRequest {
            slots,
            slot,
            ..Default::default()
        };
    let buf = Some(v1::create_stream_request::Slot::BufferSize(SLOT));
    for (slots, slot, want) in [
        (0, buf.clone(), Code::InvalidArgument),
        (1, buf.clone(), Code::InvalidArgument),
        (65, buf.clone(), Code::InvalidArgument),
        (2, None, Code::InvalidArgument),
        (
            2,
            Some(v1::create_stream_request::Slot::BufferSize(0)),
            Code::InvalidArgument,
        ),
        (
            2,
            Some(v1::create_stream_request::Slot::Image(
                v1::CreateImageRequest::default(),
            )),
            Code::InvalidArgument,
        ),
    ] {
        let e = g
            .create_stream(c.request(create(slots, slot)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), want, "{slots} slots: {e}");
    }
    // Past the quota: named.
    let e = g
        .create_stream(c.request(create(13, buf.clone())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("buffers per uid"), "{e}");
    // No session, no pin: a producer needs a session.
    let e = g
        .create_stream(tonic::Request::new(create(2, buf.clone())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");

    let p = c
        .create_stream(2, &SlotKind::Buffer(SLOT), &StreamOptions::default())
        .await
        .unwrap();
    let id = p.info().id.clone();
    // Present of a slot not acquired; twice; metadata too long; a ready point not above.
    assert_eq!(
        code(p.present(0, 0, meta(1))),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(
        code(p.present(7, 0, meta(1))),
        Some(Code::FailedPrecondition)
    );
    let s = p.acquire_slot(Duration::ZERO, false).unwrap().slot;
    let long = FrameMetadata {
        user_data: vec![0; 257],
        ..meta(1)
    };
    assert_eq!(code(p.present(s, 0, long)), Some(Code::InvalidArgument));
    assert_eq!(p.present(s, 5, meta(1)).unwrap().ready_value, 5);
    assert_eq!(
        code(p.present(s, 0, meta(1))),
        Some(Code::FailedPrecondition)
    );
    let s2 = p.acquire_slot(Duration::ZERO, false).unwrap().slot;
    assert_eq!(
        code(p.present(s2, 5, meta(2))),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(
        code(p.present(s2, 3, meta(2))),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(p.present(s2, 0, meta(2)).unwrap().ready_value, 6);
    // Consumers: limit 0, no mode, an unknown stream; release of a frame not held.
    let cc = session(&d, "consumer").await;
    for (mode, limit) in [
        (v1::DeliveryMode::Fifo, 0),
        (v1::DeliveryMode::Unspecified, 1),
    ] {
        assert_eq!(
            code(cc.attach_consumer(&id, mode, limit).await),
            Some(Code::InvalidArgument)
        );
    }
    let unknown = format!("str-{}", "0".repeat(32));
    assert_eq!(
        code(
            cc.attach_consumer(&unknown, v1::DeliveryMode::Fifo, 1)
                .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            cc.attach_consumer("str-nothex", v1::DeliveryMode::Fifo, 1)
                .await
        ),
        Some(Code::InvalidArgument)
    );
    let con: Consumer = cc
        .attach_consumer(&id, v1::DeliveryMode::Fifo, 1)
        .await
        .unwrap();
    assert_eq!(
        code(con.release_frame(0, 0)),
        Some(Code::FailedPrecondition)
    );
    // A second producer.
    assert_eq!(
        code(cc.attach_producer(&id).await),
        Some(Code::FailedPrecondition)
    );
    // Nothing presented since the consumer attached: no frame, DEADLINE_EXCEEDED at once.
    assert_eq!(
        code(con.acquire_frame(Duration::ZERO, false)),
        Some(Code::DeadlineExceeded)
    );
    // Over gRPC too, and with a handle that names nothing.
    let mut cg = cc.grpc();
    let e = cg
        .acquire_frame(cc.request(v1::AcquireRequest {
            handle: con.attachment().handle.clone(),
            timeout_ms: 50,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    let e = cg
        .acquire_slot(cc.request(v1::AcquireRequest {
            handle: format!("role-{}", "0".repeat(32)),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    // A consumer's handle is no producer's.
    assert_eq!(
        cg.acquire_slot(cc.request(v1::AcquireRequest {
            handle: con.attachment().handle.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    // The producer detaches: the stream ended; acquires get ABORTED.
    let info = p.detach().await.unwrap();
    assert!(!info.ended.is_empty());
    assert_eq!(
        code(con.acquire_frame(Duration::from_secs(1), false)),
        Some(Code::Aborted)
    );
    assert_eq!(code(cc.attach_producer(&id).await), Some(Code::Aborted));
    // A parked acquire is answered ABORTED when the producer goes.
    let p2 = c
        .create_stream(2, &SlotKind::Buffer(SLOT), &StreamOptions::default())
        .await
        .unwrap();
    let con2 = Arc::new(
        cc.attach_consumer(&p2.info().id, v1::DeliveryMode::Fifo, 1)
            .await
            .unwrap(),
    );
    let waiting = {
        let con2 = con2.clone();
        std::thread::spawn(move || con2.acquire_frame(Duration::from_secs(10), false))
    };
    std::thread::sleep(Duration::from_millis(50));
    p2.detach().await.unwrap();
    assert_eq!(code(waiting.join().unwrap()), Some(Code::Aborted));
    // Another uid: the stream reads NOT_FOUND (as root: the streamer as uid 65534).
    if rustix::process::geteuid().is_root() {
        let p3: Producer = c
            .create_stream(2, &SlotKind::Buffer(SLOT), &StreamOptions::default())
            .await
            .unwrap();
        let out = Command::new(bin("gpushare-streamer"))
            .arg(d.runtime_dir())
            .args(["consume", &p3.info().id, "fifo", "1"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("not found") || err.contains("NotFound") || err.contains("ermission"),
            "{err}"
        );
    } else {
        println!("SKIP: another uid's attach needs root (runs gpushare-streamer as uid 65534)");
    }
}

use std::os::unix::process::CommandExt;

/// `gpusharectl stream`: create (pinned, no producer), ls, show, attach (prints frames), watch
/// and rm, against a producer in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_shows_and_consumes_streams() {
    let metrics_dir = gpushare_tests::TempDir::new();
    let metrics = metrics_dir.path().join("metrics.sock");
    let d = gpushare_tests::daemon_or_skip!(&format!(
        "[metrics]\nlisten = \"unix:{}\"\n",
        metrics.display()
    ));
    let ctl = |args: &[&str]| {
        let (status, out, err) = gpushare_tests::run(
            Command::new(bin("gpusharectl"))
                .arg("--runtime-dir")
                .arg(d.runtime_dir())
                .args(args),
            Duration::from_secs(30),
        );
        assert!(status.success(), "gpusharectl {args:?}: {status}\n{err}");
        out
    };
    let id = ctl(&[
        "stream", "create", "--slots", "3", "--size", "4K", "--name", "cam",
    ])
    .trim()
    .to_owned();
    assert!(id.starts_with("str-"), "{id}");
    assert!(ctl(&["stream", "ls"]).contains(&id));
    let c = session(&d, "producer").await;
    let p = Arc::new(c.attach_producer(&id).await.unwrap());
    let attach = {
        let dir = d.runtime_dir().to_owned();
        let id = id.clone();
        std::thread::spawn(move || {
            Command::new(bin("gpusharectl"))
                .arg("--runtime-dir")
                .arg(dir)
                .args(["stream", "attach", &id, "--count", "3"])
                .output()
                .unwrap()
        })
    };
    // Present until the attached CLI has taken three frames.
    let mut n = 0;
    while !attach.is_finished() {
        n += 1;
        let p2 = p.clone();
        let g = blocking(move || p2.acquire_slot(Duration::from_secs(5), false))
            .await
            .unwrap();
        p.present(g.slot, 0, meta(n)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = attach.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("frame ")).count(),
        3,
        "{text}"
    );
    let show = ctl(&["stream", "show", &id]);
    assert!(
        show.contains("cam") && show.contains("3 x buffer 4 KiB"),
        "{show}"
    );
    assert!(show.contains("producer") && show.contains("pid"), "{show}");
    let json: serde_json::Value =
        serde_json::from_str(&ctl(&["--json", "stream", "watch", &id, "--count", "1"])).unwrap();
    assert_eq!(json["frames_presented"], n);
    assert_eq!(json["points"], if p.gpu_points() { "gpu" } else { "host" });
    // Prometheus: per stream, labeled with its id and name.
    let body = scrape(&metrics).await;
    let l = format!("{{stream=\"{id}\",name=\"cam\"}}");
    assert!(
        body.contains(&format!("gpushare_stream_frames_presented_total{l} {n}")),
        "{body}"
    );
    assert!(
        body.contains(&format!("gpushare_stream_consumers{l} 0")),
        "{body}"
    );
    assert!(body.contains("gpushare_streams 1"), "{body}");
    assert!(ctl(&["stream", "rm", &id]).contains("released"));
}

/// The metrics endpoint's body.
async fn scrape(path: &std::path::Path) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    reply
}

/// Image slots: every slot an image of the spec, each a resource of its own that names its
/// stream, exported through the attachment's tickets; freed with the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_slots_are_images_of_the_stream() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = session(&d, "images").await;
    let spec = gpushare_client::ImageSpec::d2(gpushare_client::ImageFormat::Rgba8Unorm, 64, 32);
    let p = c
        .create_stream(3, &SlotKind::Image(spec), &StreamOptions::default())
        .await
        .unwrap();
    let info = p.info().clone();
    match &info.slot {
        Some(v1::stream_info::Slot::Image(i)) => assert_eq!((i.width, i.height), (64, 32)),
        other => panic!("{other:?}"),
    }
    let listed = c.list().await.unwrap();
    let parts: Vec<_> = listed.iter().filter(|r| r.stream_id == info.id).collect();
    // Three images and the ready timeline.
    assert_eq!(parts.len(), 4, "{listed:?}");
    assert_eq!(
        parts
            .iter()
            .filter(|r| r.kind == v1::ResourceKind::Image as i32)
            .count(),
        3
    );
    let slots = p.import_slots().await.unwrap();
    assert_eq!(slots.len(), 3);
    assert!(slots
        .iter()
        .all(|e| matches!(e.info.details, Some(v1::exported_fd::Details::Image(_)))));
    drop(slots);
    p.detach().await.unwrap();
    assert!(c.release(&info.id).await.unwrap());
    assert!(
        c.list().await.unwrap().is_empty(),
        "the parts went with the stream"
    );
}

/// The README's producer and consumer (`client/examples/stream_*.rs`), run as written.
#[test]
fn the_readme_stream_example_runs() {
    let d = gpushare_tests::daemon_or_skip!();
    let mut producer = spawn(
        Command::new(bin("examples/stream_producer"))
            .env("GPUSHARE_RUNTIME_DIR", d.runtime_dir())
            .stdout(Stdio::piped()),
    );
    let mut out = BufReader::new(producer.stdout.take().unwrap());
    let mut id = String::new();
    out.read_line(&mut id).unwrap();
    let (status, text, err) = gpushare_tests::run(
        Command::new(bin("examples/stream_consumer"))
            .arg(id.trim())
            .env("GPUSHARE_RUNTIME_DIR", d.runtime_dir()),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{status}: {err}");
    let want: Vec<String> = (1..=5).map(|n| format!("{n}: frame {n}")).collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), want);
    assert!(producer.wait().unwrap().success());
}

/// A parked acquire whose caller hangs up gets nothing: the frame (or slot) the daemon then
/// hands over goes back to the consumer's queue (or the pool), not to a reply nobody reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_abandoned_by_its_caller_loses_nothing() {
    use gpushare_proto::fdpass;
    use prost::Message;
    let d = gpushare_tests::daemon_or_skip!();
    let c = session(&d, "producer").await;
    let p = c
        .create_stream(2, &SlotKind::Buffer(SLOT), &StreamOptions::default())
        .await
        .unwrap();
    let cc = session(&d, "consumer").await;
    let con = cc
        .attach_consumer(&p.info().id, v1::DeliveryMode::Fifo, 1)
        .await
        .unwrap();
    let raw_acquire = |call: v1::stream_call::Call| {
        let sock = fdpass::connect(&d.runtime_dir().join(gpushare_proto::FD_SOCKET)).unwrap();
        let req = v1::FdRequest {
            request: Some(v1::fd_request::Request::Stream(v1::StreamCall {
                call: Some(call),
            })),
            word: false,
        };
        fdpass::send(std::os::fd::AsFd::as_fd(&sock), &req.encode_to_vec(), &[]).unwrap();
        sock
    };
    let acquire = |handle: &str| v1::AcquireRequest {
        handle: handle.to_owned(),
        timeout_ms: 10_000,
        ..Default::default()
    };
    // A consumer's acquire parks, then its connection closes; the frame comes after.
    let sock = raw_acquire(v1::stream_call::Call::AcquireFrame(acquire(
        &con.attachment().handle,
    )));
    std::thread::sleep(Duration::from_millis(50));
    drop(sock);
    std::thread::sleep(Duration::from_millis(50));
    let g = p.acquire_slot(Duration::from_secs(1), false).unwrap();
    p.present(g.slot, 0, meta(1)).unwrap();
    let f = con.acquire_frame(Duration::from_secs(1), false).unwrap();
    assert_eq!(
        f.metadata.unwrap().number,
        1,
        "the frame went to the closed connection"
    );
    // The producer's: every slot taken, its acquire parks and hangs up; a slot frees.
    let g2 = p.acquire_slot(Duration::from_secs(1), false).unwrap();
    p.present(g2.slot, 0, meta(2)).unwrap();
    let sock = raw_acquire(v1::stream_call::Call::AcquireSlot(acquire(
        &p.attachment().handle,
    )));
    std::thread::sleep(Duration::from_millis(50));
    drop(sock);
    std::thread::sleep(Duration::from_millis(50));
    con.release_frame(f.slot, 0).unwrap();
    let g3 = p.acquire_slot(Duration::from_secs(1), false).unwrap();
    assert_eq!(
        g3.slot, f.slot,
        "the freed slot went to the closed connection"
    );
    let info = c.describe_stream(&p.info().id).await.unwrap();
    assert_eq!(info.consumers[0].acquired, 1);
}
