//! The scenarios about semaphores and the operations ordered by them: `host-sync`, `fd-wait`,
//! `ops`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpushare_client::{CreateOptions, HostWaiter, Sync, Watch};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::{expect_code, fail, Context, Env, Fail, Outcome, Verdict};

/// The 4096-byte pattern every scenario writes: `byte[i] = i % 251`.
pub(crate) fn pattern() -> Vec<u8> {
    (0..4096u32).map(|i| (i % 251) as u8).collect()
}

/// The first offset where `got` and `want` differ, for a message.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(g, w)| g != w) {
        Some(i) => format!("byte {i} is {:#04x}, expected {:#04x}", got[i], want[i]),
        None => format!("{} bytes, expected {}", got.len(), want.len()),
    }
}

/// Checks that `got` is `want`.
pub(crate) fn expect_bytes(what: &str, got: &[u8], want: &[u8]) -> Result<(), Fail> {
    if got != want {
        fail!("{what}: {}", first_difference(got, want));
    }
    Ok(())
}

/// The watch's next value, within 2 s.
async fn next_value(watch: &mut Watch) -> Result<u64, Fail> {
    match tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
        Ok(Some(v)) => v.ctx("Watch"),
        Ok(None) => Err(Fail("Watch: the stream ended before 9".into())),
        Err(_) => Err(Fail("Watch: no value within 2 s".into())),
    }
}

/// Signal, GetValue, Watch and Wait on a semaphore from the host.
pub(crate) async fn host_sync(env: &Env) -> Outcome {
    let client = env.session().await?;
    let sem = client
        .create_semaphore(0, &CreateOptions::default())
        .await
        .ctx("CreateSemaphore at 0")?;
    let v = sem.signal(5).await.ctx("Signal(5)")?;
    if v != 5 {
        fail!("Signal(5): expected 5, got {v}");
    }
    let v = sem.value().await.ctx("GetValue")?;
    if v != 5 {
        fail!("GetValue: expected 5, got {v}");
    }
    expect_code(
        "Signal(5) again",
        sem.signal(5).await,
        &[Code::FailedPrecondition],
    )?;

    let mut watch = sem.watch();
    // The first value is the current one: the call is under way before the signals.
    let mut last = next_value(&mut watch).await?;
    sem.signal(7).await.ctx("Signal(7)")?;
    sem.signal(9).await.ctx("Signal(9)")?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = vec![last];
    while last < 9 {
        if Instant::now() > deadline {
            fail!("Watch: expected to reach 9 within 2 s, saw {seen:?}");
        }
        let v = next_value(&mut watch).await?;
        if v < last {
            fail!("Watch: values went down: {seen:?} then {v}");
        }
        seen.push(v);
        last = v;
    }
    drop(watch);

    let start = Instant::now();
    let v = sem
        .wait(9, Duration::from_millis(1000))
        .await
        .ctx("Wait(9, 1000 ms)")?;
    if v < 9 {
        fail!("Wait(9): expected a value of at least 9, got {v}");
    }
    if start.elapsed() >= Duration::from_millis(1000) {
        fail!(
            "Wait(9) on a semaphore at 9: expected at once, took {:?}",
            start.elapsed()
        );
    }
    expect_code(
        "Wait(20, 100 ms)",
        sem.wait(20, Duration::from_millis(100)).await,
        &[Code::DeadlineExceeded],
    )?;
    Ok(Verdict::Pass)
}

/// Waits on fd.sock: reached, timed out, an unknown semaphore.
pub(crate) async fn fd_wait(env: &Env) -> Outcome {
    let client = env.session().await?;
    let sem = client
        .create_semaphore(0, &CreateOptions::default())
        .await
        .ctx("CreateSemaphore at 0")?;
    let waiter = Arc::new(HostWaiter::connect(&env.runtime_dir).ctx("connect to fd.sock")?);
    let wait = |id: String, value: u64, timeout_ms: u64| {
        let waiter = Arc::clone(&waiter);
        tokio::task::spawn_blocking(move || {
            waiter.wait(
                &id,
                value,
                Duration::from_millis(timeout_ms),
                Duration::ZERO,
            )
        })
    };
    let joined = |r: Result<_, tokio::task::JoinError>| {
        r.map_err(|e| Fail(format!("the waiting thread failed: {e}")))
    };

    let reached = wait(sem.id().to_owned(), 3, 5000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    sem.signal(3).await.ctx("Signal(3)")?;
    let v = joined(reached.await)?.ctx("fd.sock wait for 3")?;
    if v < 3 {
        fail!("fd.sock wait for 3: expected a value of at least 3, got {v}");
    }
    expect_code(
        "fd.sock wait for 100, 50 ms",
        joined(wait(sem.id().to_owned(), 100, 50).await)?,
        &[Code::DeadlineExceeded],
    )?;
    let unknown = format!("sem-{}", "0".repeat(32));
    expect_code(
        "fd.sock wait on a semaphore that does not exist",
        joined(wait(unknown, 1, 1000).await)?,
        &[Code::NotFound],
    )?;
    Ok(Verdict::Pass)
}

/// Write, Fill and Read ordered by wait and signal points on one semaphore.
pub(crate) async fn ops(env: &Env) -> Outcome {
    let client = env.session().await?;
    let none = CreateOptions::default();
    let buffer = client
        .create_buffer(4096, &none)
        .await
        .ctx("CreateBuffer")?;
    let sem = client
        .create_semaphore(0, &none)
        .await
        .ctx("CreateSemaphore")?;
    let s = sem.id();
    let points = |wait: u64, signal: Option<u64>| {
        let sync = Sync::none().wait(s, wait).timeout(Duration::from_secs(10));
        match signal {
            Some(v) => sync.signal(s, v),
            None => sync,
        }
    };
    sem.signal(1).await.ctx("Signal(1)")?;
    let mut want = pattern();
    buffer
        .write(0, &want, &points(1, Some(2)))
        .await
        .ctx("Write waiting (sem, 1), signaling (sem, 2)")?;
    let v = sem.value().await.ctx("GetValue")?;
    if v < 2 {
        fail!("GetValue after the Write: expected at least 2, got {v}");
    }
    buffer
        .fill(1024, 1024, 0xABAB_ABAB, &points(2, Some(3)))
        .await
        .ctx("Fill waiting (sem, 2), signaling (sem, 3)")?;
    want[1024..2048].fill(0xAB);
    let got = buffer
        .read(0, 4096, &points(3, None))
        .await
        .ctx("Read waiting (sem, 3)")?;
    expect_bytes("Read", &got, &want)?;
    expect_code(
        "Write signaling (sem, 3) with the semaphore at 3",
        buffer
            .write(0, &want[..16], &Sync::none().signal(s, 3))
            .await,
        &[Code::InvalidArgument, Code::FailedPrecondition],
    )?;
    Ok(Verdict::Pass)
}
