//! Quotas (`[quotas]`): every one refuses with RESOURCE_EXHAUSTED naming itself and its value,
//! the daemon keeps serving, and a slot given back (release, signal, stream or connection
//! closed) can be taken again. Run against the real daemon with tiny quotas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gpushare_client::{v1, Buffer, Client, CreateOptions, OpenTarget, Sync};
use gpushare_proto::fdpass::SeqPacket;
use prost::Message;
use tonic::Code;

/// Asserts RESOURCE_EXHAUSTED naming `quota`.
#[track_caller]
fn exhausted<T: std::fmt::Debug>(r: gpushare_client::Result<T>, quota: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{quota}: {e}");
    assert!(
        e.to_string().contains(quota),
        "the error must name {quota:?}: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quotas_per_uid_and_session() {
    let d = gpushare_tests::daemon_or_skip!(
        "[quotas]\nbuffers_per_uid = 3\nbuffer_bytes_per_uid = 1048576\nsemaphores_per_uid = 2\n\
         host_buffers_per_uid = 2\nhost_buffer_bytes_per_uid = 131072\nresources_per_session = 4\n\
         sessions_per_uid = 3\ntickets_per_uid = 2\n"
    );
    let c = Client::connect_with_session(d.runtime_dir(), "quotas")
        .await
        .unwrap();
    let opts = CreateOptions::default();
    // Bytes: 256 KiB + 256 KiB fit in 1 MiB, 768 KiB more does not.
    let a = c.create_buffer(256 << 10, &opts).await.unwrap();
    let _b = c.create_buffer(256 << 10, &opts).await.unwrap();
    exhausted(
        c.create_buffer(768 << 10, &opts).await,
        "buffer bytes per uid (limit 1048576",
    );
    // Count: a third buffer fits, a fourth does not.
    let _c3 = c.create_buffer(4096, &opts).await.unwrap();
    exhausted(
        c.create_buffer(4096, &opts).await,
        "buffers per uid (limit 3",
    );
    // A freed buffer gives its slot back.
    assert!(a.release().await.unwrap());
    let _c4 = c.create_buffer(4096, &opts).await.unwrap();

    // Per session: this session holds 3 buffers; one semaphore makes 4, the next is refused
    // by the session's quota, while another session of the same uid may still create.
    let s1 = c.create_semaphore(0, &opts).await.unwrap();
    exhausted(
        c.create_semaphore(0, &opts).await,
        "resources per session (limit 4",
    );
    let c2 = Client::connect_with_session(d.runtime_dir(), "quotas 2")
        .await
        .unwrap();
    let _s2 = c2.create_semaphore(0, &opts).await.unwrap();
    exhausted(
        c2.create_semaphore(0, &opts).await,
        "semaphores per uid (limit 2",
    );

    // Host buffers: bytes, then count.
    let _h1 = c2.create_host_buffer(65536, &opts).await.unwrap();
    exhausted(
        c2.create_host_buffer(131072, &opts).await,
        "host buffer bytes per uid (limit 131072",
    );
    let _h2 = c2.create_host_buffer(4096, &opts).await.unwrap();
    exhausted(
        c2.create_host_buffer(4096, &opts).await,
        "host buffers per uid (limit 2",
    );

    // Tickets: two outstanding, the third refused; redeeming one frees a slot.
    let t1 = c.export_ticket(s1.id()).await;
    let buf_id = _c3.id().to_owned();
    let t1 = match t1 {
        Ok(t) => t,
        // lavapipe cannot export semaphores: use a buffer.
        Err(_) => c.export_ticket(&buf_id).await.unwrap(),
    };
    let _t2 = c.export_ticket(&buf_id).await.unwrap();
    exhausted(
        c.export_ticket(&buf_id).await,
        "outstanding export tickets per uid (limit 2",
    );
    drop(c.redeem(&t1.ticket).await.unwrap());
    let _t3 = c.export_ticket(&buf_id).await.unwrap();

    // Sessions: two are open; a third fits, a fourth is refused.
    let c3 = Client::connect_with_session(d.runtime_dir(), "quotas 3")
        .await
        .unwrap();
    exhausted(
        Client::connect_with_session(d.runtime_dir(), "quotas 4").await,
        "sessions per uid (limit 3",
    );
    drop(c3);
    // The session ends when its stream does; a new one fits again.
    let mut reopened = None;
    for _ in 0..100 {
        match Client::connect_with_session(d.runtime_dir(), "quotas 4").await {
            Ok(c) => {
                reopened = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(reopened.is_some(), "an ended session's slot came back");

    // The daemon serves on, and its usage shows what the quotas let through.
    let info = c.info().await.unwrap();
    assert_eq!(info.stats.unwrap().live_resources, 7);
}

/// Starts `n` Wait calls for value 1 of `sem` and returns once the daemon counts them pending.
async fn pending_waits(
    c: &Client,
    sem: &gpushare_client::Semaphore,
    n: u64,
    timeout: Duration,
) -> Vec<tokio::task::JoinHandle<gpushare_client::Result<u64>>> {
    let mut waits = Vec::new();
    for _ in 0..n {
        let s = sem.clone();
        waits.push(tokio::spawn(async move { s.wait(1, timeout).await }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.info().await.unwrap().stats.unwrap().pending_waits < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the waits never became pending"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    waits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_waits_and_watches_per_uid_are_bounded() {
    let d = gpushare_tests::daemon_or_skip!(
        "[quotas]\npending_waits_per_uid = 2\nwatches_per_uid = 1\n"
    );
    let c = Client::connect_with_session(d.runtime_dir(), "waits")
        .await
        .unwrap();
    let opts = CreateOptions::default();
    let sem = c.create_semaphore(0, &opts).await.unwrap();
    let waits = pending_waits(&c, &sem, 2, Duration::from_secs(20)).await;
    // A third Wait, and a daemon operation's wait point, are refused.
    exhausted(
        sem.wait(1, Duration::from_secs(20)).await,
        "pending waits per uid (limit 2",
    );
    let buf = c.create_buffer(4096, &opts).await.unwrap();
    exhausted(
        buf.fill(0, 4096, 0, &Sync::none().wait(sem.id(), 1)).await,
        "pending waits per uid (limit 2",
    );
    // An operation without wait points takes no slot.
    buf.fill(0, 4096, 0, &Sync::none()).await.unwrap();

    // Watches: one stream open, a second refused until the first is dropped.
    let mut w1 = sem.watch();
    assert_eq!(w1.next().await.unwrap().unwrap(), 0);
    let mut w2 = sem.watch();
    exhausted(w2.next().await.unwrap(), "Watch streams per uid (limit 1");

    // Every slot comes back once the waits end and the stream is dropped.
    assert_eq!(sem.signal(1).await.unwrap(), 1);
    for w in waits {
        assert_eq!(w.await.unwrap().unwrap(), 1);
    }
    drop(w1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut w3 = sem.watch();
        match w3.next().await.unwrap() {
            Ok(v) => {
                assert_eq!(v, 1);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the watch slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(sem.wait(1, Duration::from_secs(1)).await.unwrap(), 1);
    buf.fill(0, 4096, 0, &Sync::none().wait(sem.id(), 1))
        .await
        .unwrap();
}

/// A session cannot take all of its uid's waits, streams or tickets: each has its own quota,
/// and another session of the same uid is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_waits_watches_and_tickets_per_session_are_bounded() {
    let d = gpushare_tests::daemon_or_skip!(
        "[quotas]\npending_waits_per_session = 1\nwatches_per_session = 1\n\
         tickets_per_session = 1\nbuffer_bytes_per_session = 1048576\n"
    );
    let a = Client::connect_with_session(d.runtime_dir(), "session a")
        .await
        .unwrap();
    let b = Client::connect_with_session(d.runtime_dir(), "session b")
        .await
        .unwrap();
    let opts = CreateOptions::default();
    let sem = a.create_semaphore(0, &opts).await.unwrap();
    let sem_b = b.semaphore(sem.id());
    let buf = a.create_buffer(4096, &opts).await.unwrap();

    // Waits: session a's one slot is taken; its next Wait and wait point are refused, while
    // session b's Wait becomes pending (and times out: a deadline, not a refusal).
    let waits = pending_waits(&a, &sem, 1, Duration::from_secs(20)).await;
    exhausted(
        sem.wait(1, Duration::from_secs(20)).await,
        "pending waits per session (limit 1",
    );
    exhausted(
        buf.fill(0, 4096, 0, &Sync::none().wait(sem.id(), 1)).await,
        "pending waits per session (limit 1",
    );
    let e = sem_b.wait(1, Duration::from_millis(50)).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::DeadlineExceeded), "{e}");

    // Watches.
    let mut w1 = sem.watch();
    assert_eq!(w1.next().await.unwrap().unwrap(), 0);
    exhausted(
        sem.watch().next().await.unwrap(),
        "Watch streams per session (limit 1",
    );
    let mut wb = sem_b.watch();
    assert_eq!(wb.next().await.unwrap().unwrap(), 0);

    // Tickets.
    a.export_ticket(buf.id()).await.unwrap();
    exhausted(
        a.export_ticket(buf.id()).await,
        "outstanding export tickets per session (limit 1",
    );
    b.export_ticket(buf.id()).await.unwrap();

    // The waits' slots come back when they end.
    assert_eq!(sem.signal(1).await.unwrap(), 1);
    for w in waits {
        assert_eq!(w.await.unwrap().unwrap(), 1);
    }
    buf.fill(0, 4096, 0, &Sync::none().wait(sem.id(), 1))
        .await
        .unwrap();

    // Bytes: session a holds 4 KiB + 768 KiB of its 1 MiB; 512 KiB more is refused, in b too
    // once b opens a's 768 KiB beside its own 512 KiB, until b releases its own.
    let big = a.create_buffer(768 << 10, &opts).await.unwrap();
    exhausted(
        a.create_buffer(512 << 10, &opts).await,
        "buffer bytes per session (limit 1048576",
    );
    let own = b.create_buffer(512 << 10, &opts).await.unwrap();
    exhausted(
        b.open(OpenTarget::Id(big.id().to_owned()), false).await,
        "buffer bytes per session (limit 1048576",
    );
    assert!(own.release().await.unwrap());
    b.open(OpenTarget::Id(big.id().to_owned()), false)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_in_flight_quota_are_shed_at_once() {
    let d = gpushare_tests::daemon_or_skip!("[quotas]\ncalls_in_flight = 2\n");
    let c = Client::connect_with_session(d.runtime_dir(), "shedding")
        .await
        .unwrap();
    let sem = c
        .create_semaphore(0, &CreateOptions::default())
        .await
        .unwrap();
    // Calls parked in host waits do not count: five pending Waits (more than the quota of
    // two), each admitted while the others were parked, leave other calls served. Otherwise
    // one uid's parked waits would starve every uid.
    let mut waits = Vec::new();
    for n in 1..=5 {
        waits.extend(pending_waits(&c, &sem, 1, Duration::from_secs(60)).await);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while c.info().await.unwrap().stats.unwrap().pending_waits < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "wait {n} never parked"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for _ in 0..20 {
        assert_eq!(sem.value().await.unwrap(), 0);
    }
    // A burst of concurrent 4 MiB Writes (each in flight while its bytes arrive): past two at
    // once they are shed, at once, with the quota named; the others are served; nothing else
    // fails.
    let buf = c
        .create_buffer(4 << 20, &CreateOptions::default())
        .await
        .unwrap();
    let data = std::sync::Arc::new(vec![7u8; 4 << 20]);
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (b, data) = (buf.clone(), data.clone());
        burst.spawn(async move {
            let t = std::time::Instant::now();
            (
                b.write(0, &data, &Sync::none()).await.map(|()| 0),
                t.elapsed(),
            )
        });
    }
    let (mut served, mut shed) = (0, 0);
    while let Some(r) = burst.join_next().await {
        match r.unwrap() {
            (Ok(v), _) => {
                assert_eq!(v, 0);
                served += 1;
            }
            (Err(e), took) => {
                assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
                assert!(e.to_string().contains("calls in flight (limit 2"), "{e}");
                assert!(
                    took < Duration::from_secs(2),
                    "a shed call must not queue: {took:?}"
                );
                shed += 1;
            }
        }
    }
    println!("16 concurrent Writes with calls_in_flight = 2: {served} served, {shed} shed");
    assert!(shed > 0, "nothing was shed");
    assert!(served >= 2, "the quota's own calls must be served");
    // The parked waits end normally.
    assert_eq!(sem.signal(1).await.unwrap(), 1);
    for w in waits {
        assert_eq!(w.await.unwrap().unwrap(), 1);
    }
}

/// `n` tasks that write 4 MiB to `buf` back to back until `stop` is set: each Write is a call in
/// flight while its bytes arrive. A refusal must be RESOURCE_EXHAUSTED naming `quota`. Each
/// task returns how many of its Writes were served and how many refused.
fn keep_writing(
    buf: &Buffer,
    n: usize,
    quota: &'static str,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinSet<(u32, u32)> {
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (buf, stop) = (buf.clone(), stop.clone());
        writers.spawn(async move {
            let data = vec![5u8; 4 << 20];
            let (mut served, mut refused) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                match buf.write(0, &data, &Sync::none()).await {
                    Ok(()) => served += 1,
                    Err(e) => {
                        assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
                        assert!(e.to_string().contains(quota), "{e}");
                        refused += 1;
                    }
                }
            }
            (served, refused)
        });
    }
    writers
}

/// Export requests on fd.sock are calls in flight too: past the quota they are refused at once
/// with RESOURCE_EXHAUSTED naming it, as gRPC calls are, and served again once it has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_sock_exports_share_the_in_flight_quota() {
    let d = gpushare_tests::daemon_or_skip!("[quotas]\ncalls_in_flight = 1\n");
    let c = Client::connect_with_session(d.runtime_dir(), "fd shedding")
        .await
        .unwrap();
    let buf = c
        .create_buffer(4 << 20, &CreateOptions::default())
        .await
        .unwrap();
    // One writer keeps a 4 MiB Write in flight most of the time; its own refusals (when an
    // export holds the one slot) are expected.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = keep_writing(&buf, 1, "calls in flight (limit 1", &stop);
    let (mut exported, mut refused) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while refused == 0 || exported == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no export refused ({exported} served) or none served ({refused} refused)"
        );
        match c.export(buf.id()).await {
            Ok(fd) => {
                assert_eq!(fd.info.resource_id, buf.id());
                exported += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
                assert!(e.to_string().contains("calls in flight (limit 1"), "{e}");
                refused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join_next().await.unwrap().unwrap();
    println!(
        "exports beside a writer with calls_in_flight = 1: {exported} served, {refused} refused"
    );
    // Alone, an export is served.
    c.export(buf.id()).await.unwrap();
}

/// One uid's calls in flight are bounded below the total (`calls_in_flight_per_uid`): a uid
/// that floods the daemon is refused, naming its own quota, while another uid still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uid_cannot_take_every_call_slot() {
    let d = gpushare_tests::daemon_or_skip!(
        "socket_mode = 0o666\n[quotas]\ncalls_in_flight = 2\ncalls_in_flight_per_uid = 1\n"
    );
    let c = Client::connect_with_session(d.runtime_dir(), "flooder")
        .await
        .unwrap();
    let buf = c
        .create_buffer(4 << 20, &CreateOptions::default())
        .await
        .unwrap();
    // Two writers of this uid keep 4 MiB Writes coming; at most one is in flight at a time,
    // and only this uid's own quota refuses them: alone, it cannot reach the total of two.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = keep_writing(&buf, 2, "calls in flight per uid (limit 1, uid ", &stop);
    // Another uid (root only: a process of another uid) is served meanwhile, every time.
    if rustix::process::getuid().is_root() {
        use std::os::unix::process::CommandExt;
        let exe = gpushare_tests::bin_copy_in("gpushare-peer", d.scratch());
        for _ in 0..5 {
            let (_, out, err) = gpushare_tests::run(
                std::process::Command::new(&exe)
                    .args([
                        d.runtime_dir().to_str().unwrap(),
                        "try-grant",
                        buf.id(),
                        "0",
                    ])
                    .uid(65534)
                    .gid(65534),
                Duration::from_secs(60),
            );
            // It does not own the buffer: NOT_FOUND, never RESOURCE_EXHAUSTED.
            assert!(
                err.contains("error Some(NotFound)"),
                "stdout {out:?} stderr {err:?}"
            );
        }
    } else {
        println!("SKIP: the other uid's calls need root to run a process as another uid");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut served, mut refused) = (0, 0);
    while let Some(r) = writers.join_next().await {
        let (s, r) = r.unwrap();
        served += s;
        refused += r;
    }
    println!(
        "two writers of one uid, calls_in_flight_per_uid = 1: {served} served, {refused} refused"
    );
    assert!(
        served > 0 && refused > 0,
        "{served} served, {refused} refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_uid_are_bounded_on_both_sockets() {
    let d = gpushare_tests::daemon_or_skip!("[quotas]\nconnections_per_uid = 2\n");
    // fd.sock: two connections fit; the third gets one FdError (RESOURCE_EXHAUSTED) and closes.
    let path = d.runtime_dir().join(gpushare_proto::FD_SOCKET);
    let request = v1::FdRequest {
        request: Some(v1::fd_request::Request::Redeem(vec![0; 16])),
        word: false,
    }
    .encode_to_vec();
    // Each connection is admitted when the daemon starts serving it: a round trip on the
    // first two makes sure both hold their slots before the third arrives.
    let f1 = SeqPacket::connect(&path).await.unwrap();
    let f2 = SeqPacket::connect(&path).await.unwrap();
    for f in [&f1, &f2] {
        f.send(&request, &[]).await.unwrap();
        f.recv().await.unwrap();
    }
    let f3 = SeqPacket::connect(&path).await.unwrap();
    let _ = f3.send(&request, &[]).await;
    let reply = v1::FdReply::decode(&*f3.recv().await.unwrap().bytes).unwrap();
    match reply.reply {
        Some(v1::fd_reply::Reply::Error(e)) => {
            assert_eq!(e.code, Code::ResourceExhausted as i32, "{e:?}");
            assert!(
                e.message.contains("fd.sock connections per uid (limit 2"),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A connection within the quota is served normally (an unknown ticket: NOT_FOUND).
    f1.send(&request, &[]).await.unwrap();
    let reply = v1::FdReply::decode(&*f1.recv().await.unwrap().bytes).unwrap();
    assert!(
        matches!(&reply.reply, Some(v1::fd_reply::Reply::Error(e)) if e.code == Code::NotFound as i32),
        "{reply:?}"
    );
    drop(f1);

    // control.sock: two clients fit; a third connection is closed by the daemon.
    let c1 = Client::connect(d.runtime_dir()).await.unwrap();
    let c2 = Client::connect(d.runtime_dir()).await.unwrap();
    c1.info().await.unwrap();
    c2.info().await.unwrap();
    let third = async {
        let c3 = Client::connect(d.runtime_dir()).await?;
        c3.info().await
    };
    let e = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("a refused connection must fail fast, not hang")
        .unwrap_err();
    println!("third control connection: {e}");
    // Closing one gives its slot back.
    drop(c2);
    let mut served = false;
    for _ in 0..100 {
        if let Ok(c) = Client::connect(d.runtime_dir()).await {
            if c.info().await.is_ok() {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a closed connection's slot came back");
    c1.info().await.unwrap();
}

/// 10,000 connections at once (5,000 on each socket) from one uid: the daemon admits
/// `connections_per_uid` (256 here) on each and closes the rest at once, so its descriptors
/// stay bounded and other uids are still served; once the flood closes, its descriptor count
/// is back where it was and it serves as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_at_once() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    const PER_SOCKET: usize = 5000;
    let mut limit = getrlimit(Resource::Nofile);
    let need = 2 * PER_SOCKET as u64 + 512;
    if limit.maximum.is_some_and(|m| m < need) {
        println!(
            "SKIP: this process may open at most {:?} descriptors",
            limit.maximum
        );
        return;
    }
    limit.current = Some(limit.current.unwrap_or(0).max(need));
    setrlimit(Resource::Nofile, limit).unwrap();
    let d = gpushare_tests::daemon_or_skip!(
        "socket_mode = 0o666\n[quotas]\nconnections_per_uid = 256\n"
    );
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    c.info().await.unwrap();
    drop(c);
    let base = d.settled_fd_count();

    let control = d.runtime_dir().join(gpushare_proto::CONTROL_SOCKET);
    let fd_sock = d.runtime_dir().join(gpushare_proto::FD_SOCKET);
    let mut flood_control = Vec::with_capacity(PER_SOCKET);
    let mut flood_fd = Vec::with_capacity(PER_SOCKET);
    for _ in 0..PER_SOCKET {
        // The backlog may fill while the daemon catches up: retry briefly.
        let mut tries = 0;
        let s = loop {
            match tokio::net::UnixStream::connect(&control).await {
                Ok(s) => break s,
                Err(e) if tries < 200 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("connect: {e}"),
            }
        };
        flood_control.push(s);
        let mut tries = 0;
        let f = loop {
            match SeqPacket::connect(&fd_sock).await {
                Ok(f) => break f,
                Err(e) if tries < 200 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("connect: {e}"),
            }
        };
        flood_fd.push(f);
    }
    // Let the daemon accept (and refuse) them all, then look at its descriptors.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = d.fd_count();
    println!("10,000 connections held: the daemon has {during} descriptors ({base} before)");
    assert!(
        during <= base + 2 * 256 + 64,
        "descriptors must stay bounded by the connection quotas: {during}"
    );
    // Another uid is served meanwhile (root only: the peer drops to uid 65534).
    if rustix::process::getuid().is_root() {
        use std::os::unix::process::CommandExt;
        let exe = gpushare_tests::bin_copy_in("gpusharectl", d.scratch());
        let (status, _, err) = gpushare_tests::run(
            std::process::Command::new(&exe)
                .arg("--runtime-dir")
                .arg(d.runtime_dir())
                .arg("info")
                .uid(65534)
                .gid(65534),
            Duration::from_secs(30),
        );
        assert!(
            status.success(),
            "another uid was not served during the flood: {err}"
        );
    }
    drop(flood_control);
    drop(flood_fd);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = d.settled_fd_count();
        if now <= base {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "descriptors after the flood: {now}, before: {base}"
        );
    }
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    c.info().await.unwrap();
}

/// GPU out-of-memory is RESOURCE_EXHAUSTED and leaves the daemon healthy: it keeps serving,
/// makes the same allocation again once memory is freed, and keeps nothing of the failed one.
/// The memory really runs out in the driver. On a GPU the test fills the largest device-local
/// heap (the GPU suite runs one test at a time). On a CPU Vulkan driver (lavapipe), device
/// memory is mapped into the daemon itself and is as large as the host's, so the test caps the
/// running daemon's address space (RLIMIT_AS) 1 GiB above what it uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_device_memory_is_resource_exhausted_and_the_daemon_recovers() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect_with_session(d.runtime_dir(), "oom")
        .await
        .unwrap();
    let dev = c.info().await.unwrap().devices.remove(0);
    let heap = dev
        .memory_heaps
        .iter()
        .filter(|h| h.device_local)
        .map(|h| h.size)
        .max()
        .unwrap();
    let cpu = dev.device_type == v1::DeviceType::Cpu as i32;
    let size = if cpu {
        let vm_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", d.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let cap = (vm_kib << 10) + (1 << 30);
        let pid = rustix::process::Pid::from_raw(d.pid() as i32).unwrap();
        let limit = rustix::process::Rlimit {
            current: Some(cap),
            maximum: None,
        };
        rustix::process::prlimit(Some(pid), rustix::process::Resource::As, limit).unwrap();
        256 << 20
    } else {
        heap / 16
    };
    let opts = CreateOptions::default();
    // A driver may open descriptors of its own on first use (NVIDIA does): made before the
    // baseline, by one buffer and one semaphore of each kind, released.
    for b in [
        c.create_buffer(1 << 20, &opts).await.unwrap(),
        c.create_buffer(size, &opts).await.unwrap(),
    ] {
        assert!(b.release().await.unwrap());
    }
    assert!(c
        .create_semaphore(0, &opts)
        .await
        .unwrap()
        .release()
        .await
        .unwrap());
    let base_fds = d.settled_fd_count();
    let base_targets = d.fd_targets();
    let mut held = Vec::new();
    // Sixteen fill the heap on a GPU, four the 1 GiB of room on a CPU driver; the rest is slack.
    let refused = loop {
        assert!(
            held.len() < 24,
            "{} buffers of {size} bytes, and memory has not run out (heap {heap})",
            held.len()
        );
        match c.create_buffer(size, &opts).await {
            Ok(b) => held.push(b),
            Err(e) => break e,
        }
    };
    assert_eq!(refused.code(), Some(Code::ResourceExhausted), "{refused}");
    assert!(
        refused.to_string().contains("out of device memory")
            || refused.to_string().contains("out of host memory")
            || refused.to_string().contains("out of memory"),
        "the error must say that memory ran out: {refused}"
    );
    assert!(!held.is_empty(), "the first buffer failed: {refused}");
    println!(
        "{} buffers of {} MiB, then: {refused}",
        held.len(),
        size >> 20
    );
    // Still serving, and the freed memory serves the same request again.
    c.info().await.unwrap();
    let sem = c.create_semaphore(0, &opts).await.unwrap();
    assert!(held.pop().unwrap().release().await.unwrap());
    held.push(c.create_buffer(size, &opts).await.unwrap());
    // Nothing of the failed allocations stays: once all are released, neither resources nor
    // descriptors remain.
    for b in held.drain(..) {
        assert!(b.release().await.unwrap());
    }
    assert!(sem.release().await.unwrap());
    let stats = c.info().await.unwrap().stats.unwrap();
    assert_eq!(stats.live_resources, 0, "{stats:?}");
    let fds = d.settled_fd_count();
    let targets = d.fd_targets();
    let extra: Vec<&String> = targets
        .iter()
        .filter(|t| {
            targets.iter().filter(|x| x == t).count()
                > base_targets.iter().filter(|x| x == t).count()
        })
        .collect();
    assert!(
        fds <= base_fds,
        "daemon descriptors {base_fds} -> {fds}; more of these than before: {extra:?}"
    );
}
