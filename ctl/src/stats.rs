//! `stats` and `top`: the daemon's counters (`GetInfo.stats`), the caller's sessions
//! (`ListSessions`) and semaphores with their pending waits (`ListSemaphores`), once or refreshed.

use std::io::IsTerminal;
use std::time::Duration;

use gpushare_client::{v1, Client};
use serde_json::{json, Value};

use crate::failure::{Context, Failure, Out};
use crate::table::Table;

/// Clears a terminal and homes the cursor (between `top` refreshes, on a terminal only).
const CLEAR: &str = "\x1b[H\x1b[2J";

/// What one refresh shows.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) stats: v1::DaemonStats,
    pub(crate) sessions: Vec<v1::SessionInfo>,
    pub(crate) semaphores: Vec<v1::SemaphoreInfo>,
}

async fn snapshot(client: &Client) -> Result<Snapshot, Failure> {
    let info = client.info().await.context(|| "get info".to_owned())?;
    let sessions = client
        .sessions()
        .await
        .context(|| "list sessions".to_owned())?;
    let semaphores = client
        .semaphores()
        .await
        .context(|| "list semaphores".to_owned())?;
    Ok(Snapshot {
        stats: info.stats.unwrap_or_default(),
        sessions,
        semaphores,
    })
}

/// `gpusharectl stats`.
pub(crate) async fn once(client: &Client, out: &Out) -> Result<(), Failure> {
    let snap = snapshot(client).await?;
    out.either(to_json(&snap), &to_text(&snap))
}

/// `gpusharectl top`: `stats` every `interval_ms` until interrupted, or `count` times. The
/// screen is cleared between refreshes only when stdout is a terminal; with `--json` each
/// refresh is one line of JSON.
pub(crate) async fn top(
    client: &Client,
    out: &Out,
    interval_ms: u64,
    count: Option<u64>,
) -> Result<(), Failure> {
    let terminal = std::io::stdout().is_terminal();
    let mut shown = 0u64;
    while count.is_none_or(|n| shown < n) {
        if shown > 0 {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        }
        let snap = snapshot(client).await?;
        if out.json {
            out.line(&to_json(&snap).to_string())?;
        } else {
            let text = to_text(&snap);
            if terminal {
                out.text(&format!("{CLEAR}{text}"))?;
            } else {
                // Refreshes piped to a file or a test stay apart.
                out.text(&format!("{text}\n"))?;
            }
        }
        shown += 1;
    }
    Ok(())
}

/// A refresh as JSON.
pub(crate) fn to_json(s: &Snapshot) -> Value {
    json!({
        "stats": {
            "live_resources": s.stats.live_resources,
            "live_sessions": s.stats.live_sessions,
            "pending_waits": s.stats.pending_waits,
            "outstanding_tickets": s.stats.outstanding_tickets,
        },
        "sessions": s.sessions.iter().map(|x| json!({
            "id": x.id,
            "uid": x.uid,
            "pid": x.pid,
            "client_name": x.client_name,
            "age_ms": x.age_ms,
            "references": x.references,
            "semaphores_signaled": x.semaphores_signaled,
        })).collect::<Vec<_>>(),
        "semaphores": s.semaphores.iter().map(|x| json!({
            "id": x.id,
            "name": x.name,
            "device": x.device,
            "value": x.value,
            "signaler_session": x.signaler_session,
            "signaler_alive": !x.signaler_session.is_empty(),
            "abandoned": x.abandoned,
            "references": x.references,
            "pinned": x.pinned,
            "pending_waits": x.waits.len(),
            "oldest_wait_ms": oldest_wait_ms(x),
            "unsatisfiable_waits": unsatisfiable(x),
            "waits": x.waits.iter().map(|w| json!({
                "value": w.value,
                "age_ms": w.age_ms,
                "unsatisfiable": w.unsatisfiable,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn oldest_wait_ms(s: &v1::SemaphoreInfo) -> Option<u64> {
    s.waits.iter().map(|w| w.age_ms).max()
}

fn unsatisfiable(s: &v1::SemaphoreInfo) -> usize {
    s.waits.iter().filter(|w| w.unsatisfiable).count()
}

/// A refresh as text: a counters line, then the sessions and semaphores tables.
pub(crate) fn to_text(s: &Snapshot) -> String {
    let st = &s.stats;
    let mut out = format!(
        "resources {}  sessions {}  pending waits {}  export tickets {}\n\n",
        st.live_resources, st.live_sessions, st.pending_waits, st.outstanding_tickets
    );
    if s.sessions.is_empty() {
        out.push_str("no sessions\n");
    } else {
        let mut t = Table::new(["SESSION", "PID", "NAME", "AGE", "REFS"])
            .right(1)
            .right(3)
            .right(4);
        for x in &s.sessions {
            t.row([
                x.id.clone(),
                x.pid.to_string(),
                dash(&x.client_name),
                age(x.age_ms),
                x.references.to_string(),
            ]);
        }
        out.push_str(&t.render());
    }
    out.push('\n');
    if s.semaphores.is_empty() {
        out.push_str("no semaphores\n");
    } else {
        let mut t = Table::new([
            "SEMAPHORE",
            "VALUE",
            "SIGNALER",
            "ABANDONED",
            "WAITS",
            "OLDEST",
            "UNSAT",
        ])
        .right(1)
        .right(4)
        .right(5)
        .right(6);
        for x in &s.semaphores {
            t.row([
                x.id.clone(),
                x.value.to_string(),
                if x.signaler_session.is_empty() {
                    "none".to_owned()
                } else {
                    "alive".to_owned()
                },
                if x.abandoned { "yes" } else { "no" }.to_owned(),
                x.waits.len().to_string(),
                oldest_wait_ms(x).map_or_else(|| "-".to_owned(), age),
                unsatisfiable(x).to_string(),
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// A duration in milliseconds, short: `850ms`, `12.3s`, `5m07s`, `2h05m`.
pub(crate) fn age(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}.{}s", ms / 1000, ms % 1000 / 100),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_short() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_345), "12.3s");
        assert_eq!(age(307_000), "5m07s");
        assert_eq!(age(7_500_000), "2h05m");
    }

    #[test]
    fn snapshot_renders() {
        let snap = Snapshot {
            stats: v1::DaemonStats {
                live_resources: 1,
                live_sessions: 1,
                pending_waits: 2,
                outstanding_tickets: 0,
            },
            sessions: vec![v1::SessionInfo {
                id: "ses-1".into(),
                uid: 1000,
                pid: 42,
                client_name: "app".into(),
                age_ms: 1500,
                references: 3,
                semaphores_signaled: 1,
            }],
            semaphores: vec![v1::SemaphoreInfo {
                id: "sem-1".into(),
                value: 4,
                waits: vec![
                    v1::PendingWait {
                        value: 5,
                        age_ms: 20,
                        unsatisfiable: true,
                    },
                    v1::PendingWait {
                        value: 9,
                        age_ms: 70,
                        unsatisfiable: true,
                    },
                ],
                ..Default::default()
            }],
        };
        assert_eq!(
            to_text(&snap),
            "resources 1  sessions 1  pending waits 2  export tickets 0\n\n\
             SESSION  PID  NAME   AGE  REFS\n\
             ses-1     42  app   1.5s     3\n\n\
             SEMAPHORE  VALUE  SIGNALER  ABANDONED  WAITS  OLDEST  UNSAT\n\
             sem-1          4  none      no             2    70ms      2\n"
        );
        let v = to_json(&snap);
        assert_eq!(v["semaphores"][0]["unsatisfiable_waits"], 2);
        assert_eq!(v["semaphores"][0]["oldest_wait_ms"], 70);
        assert_eq!(v["semaphores"][0]["signaler_alive"], false);
        assert_eq!(v["sessions"][0]["pid"], 42);
    }
}
