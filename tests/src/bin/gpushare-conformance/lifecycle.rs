//! The scenarios about reaching the daemon and the lives of resources: `connect`, `session`,
//! `resources`.

use std::time::{Duration, Instant};

use gpushare_client::{v1, CreateOptions};
use gpushare_proto::{fdpass, FD_SOCKET};
use tonic::Code;

use crate::{expect_code, fail, Context, Env, Fail, Outcome, Verdict};

/// `GetInfo` answers with a version and a device; fd.sock accepts a connection.
pub(crate) async fn connect(env: &Env) -> Outcome {
    let client = env.sessionless().await?;
    let info = client.info().await.ctx("GetInfo")?;
    if info.daemon_version.is_empty() {
        fail!("GetInfo: expected a non-empty daemon_version, got an empty one");
    }
    if info.devices.is_empty() {
        fail!("GetInfo: expected at least one device, got none");
    }
    let fd_sock = env.runtime_dir.join(FD_SOCKET);
    let conn = fdpass::connect(&fd_sock)
        .map_err(|e| Fail(format!("connect to {}: {}", fd_sock.display(), e)))?;
    drop(conn);
    println!(
        "version {}, {} device(s)",
        info.daemon_version,
        info.devices.len()
    );
    Ok(Verdict::Pass)
}

/// A session's resources live while its stream is open, and go when it closes.
pub(crate) async fn session(env: &Env) -> Outcome {
    let client = env.session().await?;
    if client.session_id().is_none_or(str::is_empty) {
        fail!("Session: expected a session id in the first message, got none");
    }
    let buffer = client
        .create_buffer(4096, &CreateOptions::default())
        .await
        .ctx("CreateBuffer in the session")?;
    buffer.describe().await.ctx("DescribeResource")?;
    let id = buffer.id().to_owned();

    let sessionless = env.sessionless().await?;
    expect_code(
        "CreateBuffer without a session header, not pinned",
        sessionless
            .create_buffer(4096, &CreateOptions::default())
            .await
            .map(|b| b.id().to_owned()),
        &[Code::FailedPrecondition],
    )?;
    drop(sessionless);

    // The handle holds a clone of the client: both go, and with the last clone the stream.
    drop(buffer);
    drop(client);
    let other = env.session().await?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match other.describe(&id).await {
            Err(e) if e.code() == Some(Code::NotFound) => break,
            result => {
                if Instant::now() > deadline {
                    fail!(
                        "DescribeResource after the session closed: expected NotFound within 2 s, \
                         got {:?}",
                        result.map(|r| r.id).map_err(|e| e.to_string())
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Verdict::Pass)
}

/// Create, describe, list, a taken name, release.
pub(crate) async fn resources(env: &Env) -> Outcome {
    let client = env.session().await?;
    let name = format!("conformance-rust-{}", std::process::id());
    let named = CreateOptions {
        name: name.clone(),
        ..Default::default()
    };
    let buffer = client
        .create_buffer(65536, &named)
        .await
        .ctx("CreateBuffer 65536 named")?;
    let sem = client
        .create_semaphore(3, &CreateOptions::default())
        .await
        .ctx("CreateSemaphore at 3")?;

    let b = buffer.describe().await.ctx("DescribeResource (buffer)")?;
    if b.kind != v1::ResourceKind::Buffer as i32 {
        fail!("buffer: expected kind BUFFER, got {}", b.kind);
    }
    match &b.details {
        Some(v1::resource::Details::Buffer(d)) if d.size == 65536 => {}
        other => fail!("buffer: expected size 65536, got {other:?}"),
    }
    if b.name != name {
        fail!("buffer: expected name {name:?}, got {:?}", b.name);
    }
    let s = sem.describe().await.ctx("DescribeResource (semaphore)")?;
    if s.kind != v1::ResourceKind::Semaphore as i32 {
        fail!("semaphore: expected kind SEMAPHORE, got {}", s.kind);
    }
    match &s.details {
        Some(v1::resource::Details::Semaphore(d)) if d.value == 3 => {}
        other => fail!("semaphore: expected value 3, got {other:?}"),
    }

    let listed: Vec<String> = client
        .list()
        .await
        .ctx("ListResources")?
        .into_iter()
        .map(|r| r.id)
        .collect();
    for id in [buffer.id(), sem.id()] {
        if !listed.iter().any(|l| l == id) {
            fail!("ListResources: expected {id} among {listed:?}");
        }
    }
    expect_code(
        "CreateBuffer with a name taken",
        client
            .create_buffer(4096, &named)
            .await
            .map(|b| b.id().to_owned()),
        &[Code::AlreadyExists],
    )?;

    buffer.release().await.ctx("ReleaseResource (buffer)")?;
    sem.release().await.ctx("ReleaseResource (semaphore)")?;
    expect_code(
        "DescribeResource on the released buffer",
        buffer.describe().await.map(|r| r.id),
        &[Code::NotFound],
    )?;
    expect_code(
        "DescribeResource on the released semaphore",
        sem.describe().await.map(|r| r.id),
        &[Code::NotFound],
    )?;
    Ok(Verdict::Pass)
}
