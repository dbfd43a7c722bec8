//! `gpusharectl`: command-line control of the gpushare daemon.
//!
//! Inspect the daemon (`info`, `ls`, `describe`, `stats`, a live `top`), create and drive buffers (`buffer create`,
//! `write`, `read`, `fill`, `copy`, `rm`), images (`image create`, `ls`, `upload`, `download`,
//! `rm`: PNG files converted to and from the image's format, or raw texels) and timeline
//! semaphores (`sem create`, `signal`, `wait`, `get`, `watch`, `rm`), and check what an export
//! delivers (`export`). Buffer and image operations take `--wait SEM=VALUE` and
//! `--signal SEM=VALUE` points, run by the daemon in GPU order.
//!
//! The CLI opens no client session: what it creates is pinned, lives on after it exits, and is
//! freed by `rm`. Output is aligned text by default and JSON with `--json`; errors go to stderr
//! as `gpusharectl: <what failed>: <why>`.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other error |
//! | 2 | usage error (bad arguments) |
//! | 3 | `NOT_FOUND`: no such resource (or another user's), unknown or used ticket |
//! | 4 | `DEADLINE_EXCEEDED`: a wait timed out (or an export ticket expired) |
//! | 5 | `FAILED_PRECONDITION`: valid call in the wrong state (e.g. non-increasing signal) |
//! | 6 | `PERMISSION_DENIED`: an owner's operation, or no access to the daemon's sockets |
//! | 7 | `RESOURCE_EXHAUSTED`: a quota, limit or GPU memory ran out |
//! | 8 | `UNAVAILABLE`: the daemon is not reachable or is shutting down |
//! | 9 | `INVALID_ARGUMENT`: the daemon rejected an argument (size, range, id) |
//! | 10 | `ALREADY_EXISTS`: the name is taken by another live resource of the owner |
//! | 11 | `ABORTED`: the semaphore waited on was abandoned (its signaler ended) or freed |

mod args;
mod exit;
mod failure;
mod images;
mod output;
mod parse;
mod pixels;
mod stats;
mod streams;
mod table;

use std::io::{self, Read};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gpushare_client::{v1, Client, CreateOptions};
use serde_json::{json, Value};
use tokio_stream::StreamExt;

use crate::args::{BufferCommand, Cli, Command, SemCommand};
use crate::failure::{Context, Failure, Out, BROKEN_PIPE};
use crate::parse::parse_hex;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gpusharectl: cannot start the async runtime: {e}");
            return exit::exit(exit::OTHER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Io { what, source })
            if what == BROKEN_PIPE && source.kind() == io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("gpusharectl: {failure}");
            exit::exit(failure.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let dir = cli
        .runtime_dir
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(gpushare_client::default_runtime_dir);
    let out = Out { json: cli.json };
    let client = Client::connect(&dir)
        .await
        .context(|| "daemon not reachable".to_owned())?;
    match cli.command {
        Command::Info => {
            let info = client.info().await.context(|| "get info".to_owned())?;
            out.either(output::info_json(&info), &output::info_text(&info))
        }
        Command::Ls => {
            let resources = client
                .list()
                .await
                .context(|| "list resources".to_owned())?;
            let value = Value::Array(resources.iter().map(output::resource_json).collect());
            let text = if resources.is_empty() {
                "no resources".to_owned()
            } else {
                output::resources_table(&resources).render()
            };
            out.either(value, &text)
        }
        Command::Describe { id } => {
            let r = client
                .describe(&id)
                .await
                .context(|| format!("describe {id}"))?;
            out.either(
                output::resource_json(&r),
                &output::resource_table(&r).render(),
            )
        }
        Command::Stats => stats::once(&client, &out).await,
        Command::Top { interval, count } => stats::top(&client, &out, interval, count).await,
        Command::Buffer(command) => buffer(&client, &out, command).await,
        Command::Image(command) => images::run(&client, &out, command).await,
        Command::Sem(command) => semaphore(&client, &dir, &out, command).await,
        Command::Stream(command) => streams::run(&client, &dir, &out, command).await,
        Command::Grant { id, uid, gid } => grant(&client, &out, &id, uid, gid, true).await,
        Command::Revoke { id, uid, gid } => grant(&client, &out, &id, uid, gid, false).await,
        Command::Token { id, revoke: false } => {
            let token = client
                .create_token(&id)
                .await
                .context(|| format!("token {id}"))?;
            out.either(
                serde_json::json!({ "id": id, "token": hex::encode(&token) }),
                &hex::encode(&token),
            )
        }
        Command::Token { id, revoke: true } => {
            let r = client
                .revoke_tokens(&id)
                .await
                .context(|| format!("token --revoke {id}"))?;
            out.either(
                output::resource_json(&r),
                &output::resource_table(&r).render(),
            )
        }
        Command::Export { id } => {
            let exported = client
                .export(&id)
                .await
                .context(|| format!("export {id}"))?;
            // The descriptor closes when `exported` drops.
            out.either(
                output::exported_json(&exported.info),
                &output::exported_table(&exported.info).render(),
            )
        }
    }
}

async fn buffer(client: &Client, out: &Out, command: BufferCommand) -> Result<(), Failure> {
    match command {
        BufferCommand::Create { size, name, device } => {
            let opts = CreateOptions {
                device,
                name,
                pin: true,
                ..CreateOptions::default()
            };
            let buffer = client
                .create_buffer(size, &opts)
                .await
                .context(|| "create buffer".to_owned())?;
            out.either(json!({ "id": buffer.id(), "kind": "buffer" }), buffer.id())
        }
        BufferCommand::Write {
            id,
            offset,
            file,
            hex,
            sync,
        } => {
            let data = match (file, hex) {
                (Some(path), _) => {
                    std::fs::read(&path).context(|| format!("read {}", path.display()))?
                }
                (None, Some(hex)) => parse_hex(&hex).map_err(Failure::Usage)?,
                (None, None) => {
                    let mut data = Vec::new();
                    io::stdin()
                        .read_to_end(&mut data)
                        .context(|| "read stdin".to_owned())?;
                    data
                }
            };
            client
                .buffer(&id)
                .write(offset, &data, &sync.to_sync())
                .await
                .context(|| format!("write {id}"))?;
            let value = json!({ "id": id, "offset": offset, "written": data.len() });
            out.either(value, "")
        }
        BufferCommand::Read {
            id,
            offset,
            length,
            out: path,
            sync,
        } => {
            let data = client
                .buffer(&id)
                .read(offset, length, &sync.to_sync())
                .await
                .context(|| format!("read {id}"))?;
            match path {
                Some(path) => {
                    std::fs::write(&path, &data).context(|| format!("write {}", path.display()))?;
                    let value = json!({
                        "id": id, "offset": offset, "length": data.len(),
                        "out": path.display().to_string(),
                    });
                    out.either(value, "")
                }
                None => {
                    let value = json!({
                        "id": id, "offset": offset, "length": data.len(),
                        "data": hex::encode(&data),
                    });
                    out.either(value, &table::hex_dump(offset, &data))
                }
            }
        }
        BufferCommand::Fill {
            id,
            value,
            offset,
            length,
            sync,
        } => {
            let length = match length {
                Some(length) => length,
                None => rest_of_buffer(client, &id, offset).await?,
            };
            client
                .buffer(&id)
                .fill(offset, length, value, &sync.to_sync())
                .await
                .context(|| format!("fill {id}"))?;
            let json = json!({ "id": id, "offset": offset, "length": length, "value": value });
            out.either(json, "")
        }
        BufferCommand::Copy {
            src,
            dst,
            src_offset,
            dst_offset,
            length,
            sync,
        } => {
            client
                .buffer(&dst)
                .copy_from(
                    &client.buffer(&src),
                    src_offset,
                    dst_offset,
                    length,
                    &sync.to_sync(),
                )
                .await
                .context(|| format!("copy {src} to {dst}"))?;
            let value = json!({
                "src": src, "src_offset": src_offset,
                "dst": dst, "dst_offset": dst_offset, "length": length,
            });
            out.either(value, "")
        }
        BufferCommand::Rm { id } => release(client, out, &id).await,
    }
}

/// The bytes from `offset` to the end of buffer `id`.
async fn rest_of_buffer(client: &Client, id: &str, offset: u64) -> Result<u64, Failure> {
    let resource = client
        .describe(id)
        .await
        .context(|| format!("describe {id}"))?;
    let Some(v1::resource::Details::Buffer(details)) = resource.details else {
        return Err(Failure::Usage(format!("{id} is not a buffer")));
    };
    match details.size.checked_sub(offset) {
        Some(rest) if rest > 0 => Ok(rest),
        _ => Err(Failure::Usage(format!(
            "offset {offset} is at or past the end of {id} ({} bytes)",
            details.size
        ))),
    }
}

async fn release(client: &Client, out: &Out, id: &str) -> Result<(), Failure> {
    let freed = client
        .release(id)
        .await
        .context(|| format!("release {id}"))?;
    let text = if freed {
        "freed"
    } else {
        "released (still referenced)"
    };
    out.either(json!({ "id": id, "freed": freed }), text)
}

async fn semaphore(
    client: &Client,
    dir: &std::path::Path,
    out: &Out,
    command: SemCommand,
) -> Result<(), Failure> {
    let value_out =
        |id: &str, value: u64| out.either(json!({ "id": id, "value": value }), &value.to_string());
    match command {
        SemCommand::Create {
            initial,
            name,
            device,
            word,
        } => {
            let opts = CreateOptions {
                device,
                name,
                pin: true,
                word,
                ..CreateOptions::default()
            };
            let sem = client
                .create_semaphore(initial, &opts)
                .await
                .context(|| "create semaphore".to_owned())?;
            out.either(json!({ "id": sem.id(), "kind": "semaphore" }), sem.id())
        }
        SemCommand::Signal { id, value } => {
            let now = client
                .semaphore(&id)
                .signal(value)
                .await
                .context(|| format!("signal {id} to {value}"))?;
            value_out(&id, now)
        }
        SemCommand::Wait {
            id,
            value,
            timeout,
            spin_us: None,
        } => {
            let now = wait(client, &id, value, timeout)
                .await
                .context(|| format!("wait for {id} to reach {value}"))?;
            value_out(&id, now)
        }
        SemCommand::Wait {
            id,
            value,
            timeout,
            spin_us: Some(spin),
        } => {
            let (dir, sem) = (dir.to_owned(), id.clone());
            let spin = Duration::from_micros(spin);
            let now =
                tokio::task::spawn_blocking(move || fd_wait(&dir, &sem, value, timeout, spin))
                    .await
                    .map_err(|e| Failure::Io {
                        what: "the waiting thread".into(),
                        source: std::io::Error::other(e),
                    })?
                    .context(|| format!("wait for {id} to reach {value} on fd.sock"))?;
            value_out(&id, now)
        }
        SemCommand::Get { id } => {
            let now = client
                .semaphore(&id)
                .value()
                .await
                .context(|| format!("get value of {id}"))?;
            value_out(&id, now)
        }
        SemCommand::Watch { id, count } => {
            if count == Some(0) {
                return Ok(());
            }
            let mut stream = client.semaphore(&id).watch();
            let mut seen = 0;
            while let Some(item) = stream.next().await {
                let value = item.context(|| format!("watch {id}"))?;
                if out.json {
                    out.line(&json!({ "id": id, "value": value }).to_string())?;
                } else {
                    out.line(&value.to_string())?;
                }
                seen += 1;
                if Some(seen) == count {
                    break;
                }
            }
            Ok(())
        }
        SemCommand::Rm { id } => release(client, out, &id).await,
    }
}

/// Waits for `id` to reach `value`: once with `timeout_ms`, or without one in rounds of the
/// daemon's longest wait until it is reached.
async fn wait(
    client: &Client,
    id: &str,
    value: u64,
    timeout_ms: Option<u64>,
) -> gpushare_client::Result<u64> {
    /// Round length when the daemon reports no maximum.
    const DEFAULT_ROUND_MS: u32 = 60_000;
    let sem = client.semaphore(id);
    if let Some(ms) = timeout_ms {
        return sem.wait(value, Duration::from_millis(ms)).await;
    }
    let max = client
        .info()
        .await?
        .limits
        .map_or(0, |l| l.max_wait_timeout_ms);
    let round = Duration::from_millis(u64::from(if max == 0 { DEFAULT_ROUND_MS } else { max }));
    loop {
        match sem.wait(value, round).await {
            Err(e) if e.code() == Some(tonic::Code::DeadlineExceeded) => continue,
            result => return result,
        }
    }
}

/// A wait on fd.sock ([`HostWaiter`]); without a timeout, in rounds of the longest the daemon
/// allows, like [`wait`].
fn fd_wait(
    dir: &std::path::Path,
    id: &str,
    value: u64,
    timeout_ms: Option<u64>,
    spin: Duration,
) -> gpushare_client::Result<u64> {
    let waiter = gpushare_client::HostWaiter::connect(dir)?;
    let round = Duration::from_millis(timeout_ms.unwrap_or(u64::from(u32::MAX)));
    loop {
        match waiter.wait(id, value, round, spin) {
            Err(e) if timeout_ms.is_none() && e.code() == Some(tonic::Code::DeadlineExceeded) => {
                continue
            }
            result => return result,
        }
    }
}

/// `grant` and `revoke`.
async fn grant(
    client: &Client,
    out: &Out,
    id: &str,
    uid: Option<u32>,
    gid: Option<u32>,
    grant: bool,
) -> Result<(), Failure> {
    let who = match (uid, gid) {
        (Some(u), None) => gpushare_client::Grantee::Uid(u),
        (None, Some(g)) => gpushare_client::Grantee::Gid(g),
        _ => return Err(Failure::Usage("give exactly one of --uid or --gid".into())),
    };
    let verb = if grant { "grant" } else { "revoke" };
    let r = if grant {
        client.grant(id, who).await
    } else {
        client.revoke(id, who).await
    }
    .context(|| format!("{verb} {id}"))?;
    out.either(
        output::resource_json(&r),
        &output::resource_table(&r).render(),
    )
}
