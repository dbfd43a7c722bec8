//! The scenarios about descriptors on fd.sock: `export-redeem` (and its second process,
//! `redeem-child`), `tickets`, `foreign`, `extra-fds`.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gpushare_client::{v1, Client, CreateOptions, Error, Exported, Sync};
use gpushare_proto::fdpass::FdPassError;
use gpushare_proto::{CONTROL_SOCKET, FD_SOCKET};
use tonic::Code;

use crate::sync_ops::{expect_bytes, pattern};
use crate::{chain, code_name, expect_code, fail, Context, Env, Fail, Outcome, Verdict};

/// How long the second process of `export-redeem` may take.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks an exported buffer's descriptor and metadata.
fn check_exported(what: &str, e: &Exported, id: &str, size: u64) -> Result<(), Fail> {
    if e.info.resource_id != id {
        fail!(
            "{what}: expected resource_id {id}, got {:?}",
            e.info.resource_id
        );
    }
    if e.kind() != v1::ResourceKind::Buffer {
        fail!("{what}: expected kind BUFFER, got {:?}", e.kind());
    }
    match &e.info.details {
        Some(v1::exported_fd::Details::Buffer(b)) => {
            if b.size != size {
                fail!("{what}: expected buffer.size {size}, got {}", b.size);
            }
            if b.allocation_size < size {
                fail!(
                    "{what}: expected buffer.allocation_size >= {size}, got {}",
                    b.allocation_size
                );
            }
        }
        other => fail!("{what}: expected buffer details, got {other:?}"),
    }
    rustix::fs::fstat(e.fd.as_fd())
        .map_err(|err| Fail(format!("{what}: fstat on the descriptor failed: {err}")))?;
    Ok(())
}

/// A ticket handed to a second process, a direct export, and the bytes written before both.
pub(crate) async fn export_redeem(env: &Env) -> Outcome {
    const SIZE: u64 = 1 << 20;
    let client = env.session().await?;
    let buffer = client
        .create_buffer(SIZE, &CreateOptions::default())
        .await
        .ctx("CreateBuffer 1 MiB")?;
    let want = pattern();
    buffer
        .write(0, &want, &Sync::none())
        .await
        .ctx("Write the pattern")?;
    let ticket = client
        .export_ticket(buffer.id())
        .await
        .ctx("Export")?
        .ticket;

    let exe =
        std::env::current_exe().map_err(|e| Fail(format!("cannot find this executable: {e}")))?;
    let args = [
        "redeem-child".to_owned(),
        hex::encode(&ticket),
        buffer.id().to_owned(),
        SIZE.to_string(),
    ];
    let status = tokio::task::spawn_blocking(move || run_child(&exe, &args))
        .await
        .map_err(|e| Fail(format!("the thread running redeem-child failed: {e}")))??;
    if !status.success() {
        fail!("redeem-child: expected exit status 0, got {status}");
    }

    let exported = client.export(buffer.id()).await.ctx("fd.sock export")?;
    check_exported("fd.sock export", &exported, buffer.id(), SIZE)?;
    drop(exported);
    let got = buffer
        .read(0, 4096, &Sync::none())
        .await
        .ctx("Read 4096 bytes")?;
    expect_bytes("Read after the exports", &got, &want)?;
    Ok(Verdict::Pass)
}

/// Runs `exe args` to its end (its output goes to this process's), at most [`CHILD_TIMEOUT`].
fn run_child(exe: &Path, args: &[String]) -> Result<std::process::ExitStatus, Fail> {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| Fail(format!("cannot start redeem-child: {e}")))?;
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                fail!("redeem-child did not finish within {CHILD_TIMEOUT:?}");
            }
            Err(e) => fail!("waiting for redeem-child failed: {e}"),
        }
    }
}

/// The second process of `export-redeem`: redeems the ticket and checks what came.
pub(crate) async fn redeem_child(env: &Env, ticket: &str, id: &str, size: u64) -> Outcome {
    let ticket = hex::decode(ticket)
        .map_err(|e| Fail(format!("redeem-child: the ticket is not hex: {e}")))?;
    let client = env.sessionless().await?;
    let exported = client.redeem(&ticket).await.ctx("redeem-child: redeem")?;
    check_exported("redeem-child", &exported, id, size)?;
    Ok(Verdict::Pass)
}

/// 16 random bytes.
fn random16() -> Result<[u8; 16], Fail> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Fail(format!("reading /dev/urandom failed: {e}")))?;
    Ok(bytes)
}

/// Unknown, replayed and expired tickets.
pub(crate) async fn tickets(env: &Env) -> Outcome {
    let client = env.session().await?;
    expect_code(
        "redeeming 16 random bytes",
        client.redeem(&random16()?).await,
        &[Code::NotFound],
    )?;
    let buffer = client
        .create_buffer(4096, &CreateOptions::default())
        .await
        .ctx("CreateBuffer")?;
    let ticket = client
        .export_ticket(buffer.id())
        .await
        .ctx("Export")?
        .ticket;
    drop(
        client
            .redeem(&ticket)
            .await
            .ctx("redeeming a fresh ticket")?,
    );
    expect_code(
        "redeeming a ticket again (replayed)",
        client.redeem(&ticket).await,
        &[Code::NotFound],
    )?;
    let issued = client
        .export_ticket(buffer.id())
        .await
        .ctx("Export again")?;
    let ttl = env
        .ticket_ttl
        .unwrap_or(Duration::from_millis(issued.ttl_ms.into()));
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    expect_code(
        "redeeming an expired ticket",
        client.redeem(&issued.ticket).await,
        &[Code::DeadlineExceeded],
    )?;
    Ok(Verdict::Pass)
}

/// Another uid's buffer is as unknown as one that never existed.
pub(crate) async fn foreign(env: &Env) -> Outcome {
    let Some(id) = &env.foreign_id else {
        return Ok(Verdict::Skip(
            "GPUSHARE_CONFORMANCE_FOREIGN_ID is unset (the harness is not root)".into(),
        ));
    };
    let client = env.session().await?;
    expect_code(
        "DescribeResource on another uid's buffer",
        client.describe(id).await.map(|r| r.id),
        &[Code::NotFound],
    )?;
    expect_code(
        "Export on another uid's buffer",
        client.export_ticket(id).await,
        &[Code::NotFound],
    )?;
    expect_code(
        "fd.sock export of another uid's buffer",
        client.export(id).await,
        &[Code::NotFound],
    )?;
    Ok(Verdict::Pass)
}

/// Whether `e` is this client's protocol error for a bad fd.sock reply (as opposed to a
/// daemon's refusal, or the socket not being reachable).
fn is_protocol_error(e: &Error) -> bool {
    matches!(
        e,
        Error::FdCount { .. }
            | Error::Decode(_)
            | Error::MissingField(_)
            | Error::FdSocket(
                FdPassError::ControlTruncated { .. } | FdPassError::DataTruncated { .. }
            )
    )
}

/// A directory whose `control.sock` is the daemon's and whose `fd.sock` is the hostile
/// server's (symbolic links), removed on drop: a client's runtime directory for `extra-fds`.
#[derive(Debug)]
struct LinkDir(PathBuf);

impl LinkDir {
    fn new(runtime_dir: &Path, hostile: &Path) -> Result<Self, Fail> {
        let dir =
            std::env::temp_dir().join(format!("gpushare-conformance-rust-{}", std::process::id()));
        let made = (|| {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            std::os::unix::fs::symlink(runtime_dir.join(CONTROL_SOCKET), dir.join(CONTROL_SOCKET))?;
            std::os::unix::fs::symlink(hostile, dir.join(FD_SOCKET))
        })();
        let links = LinkDir(dir);
        made.map_err(|e| Fail(format!("cannot make {}: {e}", links.0.display())))?;
        Ok(links)
    }
}

impl Drop for LinkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replies with the wrong descriptors (3, none, 64): each a protocol error, none kept.
pub(crate) async fn extra_fds(env: &Env) -> Outcome {
    let Some(hostile) = &env.hostile_fd_sock else {
        fail!("GPUSHARE_CONFORMANCE_HOSTILE_FD_SOCK is unset");
    };
    let links = LinkDir::new(&env.runtime_dir, hostile)?;
    let client = Client::connect(&links.0)
        .await
        .ctx("connect (control.sock the daemon's, fd.sock the hostile server's)")?;
    // The client keeps one fd.sock connection while its exchanges complete: the server's 1st,
    // 2nd and 3rd replies on it.
    for attempt in 1..=3 {
        match client.redeem(&random16()?).await {
            Ok(e) => fail!(
                "redeem #{attempt} from the hostile server: expected a protocol error, got a \
                 descriptor ({e:?})"
            ),
            Err(e) if is_protocol_error(&e) => println!("redeem #{attempt}: {}", chain(&e)),
            Err(e) => fail!(
                "redeem #{attempt} from the hostile server: expected a protocol error, got {} ({})",
                chain(&e),
                code_name(&e)
            ),
        }
    }
    drop(client);
    drop(links);
    Ok(Verdict::Pass)
}
