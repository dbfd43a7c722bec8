//! `stream create`, `ls`, `show`, `watch`, `attach` and `rm`: frame streams from the command
//! line. `create` makes a pinned stream with no producer (this command ends, the stream stays
//! until `rm`); `attach` takes part as a consumer for as long as it runs (its own session),
//! printing each frame as it comes and releasing it at once.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use gpushare_client::{v1, Client, SlotKind, StreamOptions};
use serde_json::{json, Value};

use crate::args::StreamCommand;
use crate::failure::{Context, Failure, Out};
use crate::release;
use crate::table::{human_size, Table};

/// Clears a terminal before a refresh (as `top`).
const CLEAR: &str = "\x1b[H\x1b[2J";

fn mode_name(mode: i32) -> &'static str {
    match v1::DeliveryMode::try_from(mode) {
        Ok(v1::DeliveryMode::Fifo) => "fifo",
        Ok(v1::DeliveryMode::Mailbox) => "mailbox",
        _ => "unspecified",
    }
}

fn points_name(points: i32) -> &'static str {
    match v1::StreamPoints::try_from(points) {
        Ok(v1::StreamPoints::Gpu) => "gpu",
        Ok(v1::StreamPoints::Host) => "host",
        _ => "unspecified",
    }
}

fn slot_text(s: &v1::StreamInfo) -> String {
    match &s.slot {
        Some(v1::stream_info::Slot::BufferSize(n)) => format!("buffer {}", human_size(*n)),
        Some(v1::stream_info::Slot::Image(i)) => format!(
            "image {}x{} {}",
            i.width,
            i.height,
            crate::output::format_name(i.format)
        ),
        None => "-".into(),
    }
}

/// A stream as JSON.
pub(crate) fn stream_json(s: &v1::StreamInfo) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "device": s.device,
        "owner_uid": s.owner_uid,
        "slot_count": s.slot_count,
        "slot": slot_text(s),
        "points": points_name(s.points),
        "ready_timeline_id": s.ready_timeline_id,
        "ended": s.ended,
        "has_producer": s.has_producer,
        "producer_pid": s.producer_pid,
        "frames_presented": s.frames_presented,
        "producer_stalls": s.producer_stalls,
        "fps": s.fps,
        "slots": s.slots.iter().map(|x| json!({"state": x.state, "held_by_pids": x.held_by_pids})).collect::<Vec<_>>(),
        "consumers": s.consumers.iter().map(|c| json!({
            "pid": c.pid,
            "uid": c.uid,
            "mode": mode_name(c.mode),
            "limit": c.limit,
            "queued": c.queued,
            "held": c.held,
            "acquired": c.acquired,
            "dropped": c.dropped,
            "oldest_held_ms": c.oldest_held_ms,
            "release_timeline_id": c.release_timeline_id,
        })).collect::<Vec<_>>(),
    })
}

/// A stream as text: a summary, its slots and its consumers.
pub(crate) fn stream_text(s: &v1::StreamInfo) -> String {
    let mut t = Table::plain();
    t.row(["id", s.id.as_str()]);
    if !s.name.is_empty() {
        t.row(["name", s.name.as_str()]);
    }
    t.row([
        "slots".to_owned(),
        format!("{} x {}", s.slot_count, slot_text(s)),
    ]);
    t.row(["points", points_name(s.points)]);
    let producer = if s.has_producer {
        format!("pid {}", s.producer_pid)
    } else {
        "none".into()
    };
    t.row(["producer".to_owned(), producer]);
    if !s.ended.is_empty() {
        t.row(["ended", s.ended.as_str()]);
    }
    t.row(["frames".to_owned(), s.frames_presented.to_string()]);
    t.row(["fps".to_owned(), format!("{:.1}", s.fps)]);
    t.row(["producer stalls".to_owned(), s.producer_stalls.to_string()]);
    let mut out = t.render();
    let mut slots = Table::new(["slot", "state", "held by pids"]).right(0);
    for (i, x) in s.slots.iter().enumerate() {
        let pids: Vec<String> = x.held_by_pids.iter().map(i32::to_string).collect();
        slots.row([i.to_string(), x.state.clone(), pids.join(",")]);
    }
    out.push('\n');
    out.push_str(&slots.render());
    if s.consumers.is_empty() {
        out.push_str("\nno consumers\n");
    } else {
        let mut c = Table::new([
            "pid",
            "uid",
            "mode",
            "limit",
            "queued",
            "held",
            "acquired",
            "dropped",
            "oldest held",
        ])
        .right(0)
        .right(1)
        .right(3)
        .right(4)
        .right(5)
        .right(6)
        .right(7)
        .right(8);
        for x in &s.consumers {
            c.row([
                x.pid.to_string(),
                x.uid.to_string(),
                mode_name(x.mode).to_owned(),
                x.limit.to_string(),
                x.queued.to_string(),
                x.held.to_string(),
                x.acquired.to_string(),
                x.dropped.to_string(),
                format!("{} ms", x.oldest_held_ms),
            ]);
        }
        out.push('\n');
        out.push_str(&c.render());
    }
    out
}

pub(crate) async fn run(
    client: &Client,
    dir: &std::path::Path,
    out: &Out,
    command: StreamCommand,
) -> Result<(), Failure> {
    match command {
        StreamCommand::Create {
            slots,
            size,
            name,
            device,
            word,
        } => {
            let opts = StreamOptions {
                device,
                name,
                pin: true,
                word,
                ..StreamOptions::default()
            };
            let info = client
                .create_stream_unproduced(slots, &SlotKind::Buffer(size), &opts)
                .await
                .context(|| "create stream".to_owned())?;
            out.either(stream_json(&info), &info.id)
        }
        StreamCommand::Ls => {
            let streams = client
                .streams()
                .await
                .context(|| "list streams".to_owned())?;
            let value = Value::Array(streams.iter().map(stream_json).collect());
            let text = if streams.is_empty() {
                "no streams".to_owned()
            } else {
                let mut t = Table::new([
                    "id",
                    "name",
                    "slots",
                    "points",
                    "producer",
                    "consumers",
                    "frames",
                    "fps",
                    "ended",
                ])
                .right(5)
                .right(6)
                .right(7);
                for s in &streams {
                    t.row([
                        s.id.clone(),
                        s.name.clone(),
                        format!("{} x {}", s.slot_count, slot_text(s)),
                        points_name(s.points).to_owned(),
                        if s.has_producer {
                            format!("pid {}", s.producer_pid)
                        } else {
                            "none".into()
                        },
                        s.consumers.len().to_string(),
                        s.frames_presented.to_string(),
                        format!("{:.1}", s.fps),
                        s.ended.clone(),
                    ]);
                }
                t.render()
            };
            out.either(value, &text)
        }
        StreamCommand::Show { id } => {
            let s = client
                .describe_stream(&id)
                .await
                .context(|| format!("show {id}"))?;
            out.either(stream_json(&s), &stream_text(&s))
        }
        StreamCommand::Watch {
            id,
            interval,
            count,
        } => {
            let terminal = std::io::stdout().is_terminal();
            let mut shown = 0u64;
            while count.is_none_or(|n| shown < n) {
                if shown > 0 {
                    tokio::time::sleep(Duration::from_millis(interval)).await;
                }
                let s = client
                    .describe_stream(&id)
                    .await
                    .context(|| format!("watch {id}"))?;
                if out.json {
                    out.line(&stream_json(&s).to_string())?;
                } else if terminal {
                    out.text(&format!("{CLEAR}{}", stream_text(&s)))?;
                } else {
                    out.text(&format!("{}\n", stream_text(&s)))?;
                }
                shown += 1;
            }
            Ok(())
        }
        StreamCommand::Attach {
            id,
            mailbox,
            limit,
            count,
            timeout,
        } => {
            let session = Client::connect_with_session(dir, "gpusharectl stream attach")
                .await
                .context(|| "open a session".to_owned())?;
            let mode = if mailbox {
                v1::DeliveryMode::Mailbox
            } else {
                v1::DeliveryMode::Fifo
            };
            let consumer = Arc::new(
                session
                    .attach_consumer(&id, mode, limit)
                    .await
                    .context(|| format!("attach to {id}"))?,
            );
            let mut seen = 0u64;
            while count.is_none_or(|n| seen < n) {
                let c = consumer.clone();
                let t = Duration::from_millis(timeout);
                let frame = tokio::task::spawn_blocking(move || c.acquire_frame(t, true))
                    .await
                    .map_err(|e| Failure::Io {
                        what: "acquire a frame".into(),
                        source: std::io::Error::other(e),
                    })?;
                let frame = match frame {
                    Ok(f) => f,
                    // The stream ended: every frame was delivered.
                    Err(e) if e.code() == Some(tonic::Code::Aborted) => {
                        if !out.json {
                            out.line(&format!("stream ended: {e}"))?;
                        }
                        break;
                    }
                    Err(e) => return Err(e).context(|| format!("acquire a frame of {id}")),
                };
                let meta = frame.metadata.clone().unwrap_or_default();
                let ready = frame.ready.clone().unwrap_or_default();
                consumer
                    .release_frame(frame.slot, 0)
                    .context(|| format!("release slot {}", frame.slot))?;
                if out.json {
                    out.line(
                        &json!({
                            "sequence": frame.sequence,
                            "number": meta.number,
                            "timestamp_ns": meta.timestamp_ns,
                            "slot": frame.slot,
                            "ready_value": ready.value,
                            "user_data_bytes": meta.user_data.len(),
                        })
                        .to_string(),
                    )?;
                } else {
                    out.line(&format!(
                        "frame {} (sequence {}) slot {} ready {} user data {} bytes",
                        meta.number,
                        frame.sequence,
                        frame.slot,
                        ready.value,
                        meta.user_data.len()
                    ))?;
                }
                seen += 1;
            }
            Ok(())
        }
        StreamCommand::Rm { id } => release(client, out, &id).await,
    }
}
