//! Introspection over the real daemon: `ListSessions` and `ListSemaphores` through the client,
//! and `gpusharectl stats` / `top` as other processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use gpushare_client::{v1, Client, CreateOptions};
use gpushare_tests::{bin, run, TestDaemon};
use serde_json::Value;

fn pinned() -> CreateOptions {
    CreateOptions {
        pin: true,
        ..Default::default()
    }
}

/// The listed semaphore `id`.
async fn semaphore_info(c: &Client, id: &str) -> v1::SemaphoreInfo {
    c.semaphores()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("{id} is not listed"))
}

/// Polls until semaphore `id` lists `n` pending waits; returns its listing.
async fn await_waits(c: &Client, id: &str, n: usize) -> v1::SemaphoreInfo {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = semaphore_info(c, id).await;
        if s.waits.len() == n {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never listed {n} waits: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs gpusharectl with `args` against the daemon, off the async runtime.
async fn ctl(d: &TestDaemon, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new(bin("gpusharectl"));
    cmd.arg("--runtime-dir").arg(d.runtime_dir()).args(args);
    tokio::task::spawn_blocking(move || run(&mut cmd, Duration::from_secs(30)))
        .await
        .unwrap()
}

#[tokio::test]
async fn sessions_list_live_sessions_and_drop_ended_ones() {
    let d = gpushare_tests::daemon_or_skip!();
    let a = Client::connect_with_session(d.runtime_dir(), "introspect-a")
        .await
        .unwrap();
    let a_id = a.session_id().unwrap().to_owned();
    let _buf = a
        .create_buffer(4096, &CreateOptions::default())
        .await
        .unwrap();

    let sessions = a.sessions().await.unwrap();
    let mine = sessions
        .iter()
        .find(|s| s.id == a_id)
        .expect("own session listed");
    assert_eq!(mine.pid, std::process::id() as i32);
    assert_eq!(mine.client_name, "introspect-a");
    assert_eq!(mine.uid, rustix::process::getuid().as_raw());
    assert_eq!(mine.references, 1);

    let b = Client::connect_with_session(d.runtime_dir(), "introspect-b")
        .await
        .unwrap();
    let b_id = b.session_id().unwrap().to_owned();
    let listed: Vec<_> = a.sessions().await.unwrap();
    let b_info = listed
        .iter()
        .find(|s| s.id == b_id)
        .expect("second session listed");
    assert_eq!(b_info.client_name, "introspect-b");
    assert_eq!(b_info.references, 0);
    // Oldest first.
    let pos = |id: &str| listed.iter().position(|s| s.id == id).unwrap();
    assert!(pos(&a_id) < pos(&b_id));

    // A session-less client sees the same sessions (same uid).
    let plain = Client::connect(d.runtime_dir()).await.unwrap();
    assert!(plain.sessions().await.unwrap().iter().any(|s| s.id == b_id));

    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ids: Vec<_> = a
            .sessions()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        if !ids.contains(&b_id) {
            assert!(ids.contains(&a_id), "{ids:?}");
            break;
        }
        assert!(Instant::now() < deadline, "ended session still listed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = a.info().await.unwrap().stats.unwrap();
    assert_eq!(stats.live_sessions, 1);
}

#[tokio::test]
async fn semaphore_created_in_a_session_shows_its_signaler() {
    let d = gpushare_tests::daemon_or_skip!();
    let a = Client::connect_with_session(d.runtime_dir(), "signaler")
        .await
        .unwrap();
    let sem = a
        .create_semaphore(3, &CreateOptions::default())
        .await
        .unwrap();
    let s = semaphore_info(&a, sem.id()).await;
    assert_eq!(s.signaler_session, a.session_id().unwrap());
    assert_eq!(s.value, 3);
    assert!(!s.abandoned);
    assert!(s.waits.is_empty());
    assert_eq!(s.references, 1);
    assert!(!s.pinned);
    let mine = a
        .sessions()
        .await
        .unwrap()
        .into_iter()
        .find(|x| Some(x.id.as_str()) == a.session_id())
        .unwrap();
    assert_eq!(mine.semaphores_signaled, 1);

    // A wait on it is satisfiable: its signaler lives.
    let waiter = tokio::spawn({
        let sem = sem.clone();
        async move { sem.wait(4, Duration::from_secs(20)).await }
    });
    let s = await_waits(&a, sem.id(), 1).await;
    assert!(!s.waits[0].unsatisfiable);
    assert_eq!(s.waits[0].value, 4);
    sem.signal(4).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 4);
    await_waits(&a, sem.id(), 0).await;

    // Buffers are not listed as semaphores.
    let buf = a
        .create_buffer(64, &CreateOptions::default())
        .await
        .unwrap();
    assert!(a
        .semaphores()
        .await
        .unwrap()
        .iter()
        .all(|s| s.id != buf.id()));
}

#[tokio::test]
async fn wait_on_a_sessionless_semaphore_is_flagged_unsatisfiable() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let sem = c.create_semaphore(1, &pinned()).await.unwrap();
    let waiter = tokio::spawn({
        let sem = sem.clone();
        async move { sem.wait(5, Duration::from_secs(20)).await }
    });
    let first = await_waits(&c, sem.id(), 1).await;
    assert!(first.signaler_session.is_empty());
    assert!(first.pinned);
    assert!(!first.abandoned);
    assert_eq!(first.value, 1);
    assert_eq!(first.waits[0].value, 5);
    assert!(first.waits[0].unsatisfiable);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let later = await_waits(&c, sem.id(), 1).await;
    assert!(later.waits[0].unsatisfiable);
    assert!(
        later.waits[0].age_ms >= first.waits[0].age_ms + 100,
        "age did not grow: {} then {}",
        first.waits[0].age_ms,
        later.waits[0].age_ms
    );
    assert_eq!(c.info().await.unwrap().stats.unwrap().pending_waits, 1);

    // "Unsatisfiable" means no live signaler session, not never: a host signal satisfies it.
    sem.signal(5).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 5);
    let done = await_waits(&c, sem.id(), 0).await;
    assert_eq!(done.value, 5);

    // A wait that timed out is no longer listed.
    let e = sem.wait(9, Duration::from_millis(50)).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::DeadlineExceeded));
    assert!(semaphore_info(&c, sem.id()).await.waits.is_empty());
    assert!(sem.release().await.unwrap());
}

#[tokio::test]
async fn stats_json_and_top_show_sessions_and_waits() {
    let d = gpushare_tests::daemon_or_skip!();
    let a = Client::connect_with_session(d.runtime_dir(), "stats-test")
        .await
        .unwrap();
    let owned = a
        .create_semaphore(0, &CreateOptions::default())
        .await
        .unwrap();
    let plain = Client::connect(d.runtime_dir()).await.unwrap();
    let lonely = plain.create_semaphore(0, &pinned()).await.unwrap();
    let waiter = tokio::spawn({
        let sem = lonely.clone();
        async move { sem.wait(2, Duration::from_secs(30)).await }
    });
    await_waits(&a, lonely.id(), 1).await;

    let (status, out, err) = ctl(&d, &["stats", "--json"]).await;
    assert!(status.success(), "gpusharectl stats failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["stats"]["live_sessions"], 1);
    assert_eq!(v["stats"]["pending_waits"], 1);
    let session = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == a.session_id().unwrap())
        .unwrap_or_else(|| panic!("session missing: {out}"));
    assert_eq!(session["pid"], std::process::id());
    assert_eq!(session["client_name"], "stats-test");
    let sems = v["semaphores"].as_array().unwrap();
    let find = |id: &str| {
        sems.iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {out}"))
    };
    let o = find(owned.id());
    assert_eq!(o["signaler_alive"], true);
    assert_eq!(o["signaler_session"], a.session_id().unwrap());
    assert_eq!(o["pending_waits"], 0);
    let l = find(lonely.id());
    assert_eq!(l["signaler_alive"], false);
    assert_eq!(l["abandoned"], false);
    assert_eq!(l["pending_waits"], 1);
    assert_eq!(l["unsatisfiable_waits"], 1);
    assert_eq!(l["waits"][0]["value"], 2);
    assert_eq!(l["waits"][0]["unsatisfiable"], true);
    assert!(l["oldest_wait_ms"].is_u64());

    // Text: the tables name both semaphores.
    let (status, out, err) = ctl(&d, &["stats"]).await;
    assert!(status.success(), "gpusharectl stats failed: {err}");
    assert!(
        out.contains(owned.id()) && out.contains(lonely.id()),
        "{out}"
    );
    assert!(out.contains("stats-test"), "{out}");

    // top: two refreshes, then exit 0; no screen clearing into a pipe.
    let started = Instant::now();
    let (status, out, err) = ctl(&d, &["top", "--count", "2", "--interval", "50"]).await;
    assert!(status.success(), "gpusharectl top failed: {err}");
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(out.matches("pending waits").count(), 2, "{out}");
    assert_eq!(out.matches(lonely.id()).count(), 2, "{out}");
    assert!(!out.contains('\x1b'), "{out:?}");

    // top --json: one JSON document per line and refresh.
    let (status, out, err) = ctl(&d, &["top", "--count", "2", "--interval", "10", "--json"]).await;
    assert!(status.success(), "gpusharectl top --json failed: {err}");
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["stats"]["pending_waits"], 1);
    }

    lonely.signal(2).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 2);
}
