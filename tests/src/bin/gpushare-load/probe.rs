//! The probe: a well-behaved client in its own process, whose latencies before, under and after
//! the overload are the load test's figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gpushare_tests::rng::SplitMix64;
use serde_json::json;
use tonic::Code;

use crate::mix::{call, kind_of, probe_mix, Kit};
use crate::{pin_thread, Outcome, Res, PROBE_EVERY, UNLOADED_CALLS};

/// When a probe sample was taken.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Unloaded, before the overload.
    Before,
    /// Admitted under the overload.
    Overload,
    /// Unloaded, after the callers stopped.
    After,
}

/// A probe sample: the kind of call ([`KINDS`]), its phase, microseconds.
pub type KindSample = (usize, Phase, f64);

/// What the probe measured.
pub struct ProbeRun {
    /// Unloaded latencies before and after the overload (µs).
    pub before: Vec<f64>,
    pub after: Vec<f64>,
    /// Under the overload.
    pub overload: Outcome,
    pub by_kind: Vec<KindSample>,
}

/// The probe's unloaded run: 200 warm-up calls, then [`UNLOADED_CALLS`] measured, each
/// [`PROBE_EVERY`] after the last one's end.
async fn paced_unloaded(
    kit: &mut Kit,
    rng: &mut SplitMix64,
    phase: Phase,
    by_kind: &mut Vec<KindSample>,
) -> Res<Vec<f64>> {
    let mut lat = Vec::with_capacity(UNLOADED_CALLS);
    for i in 0..200 + UNLOADED_CALLS {
        let r = probe_mix(rng);
        let t = Instant::now();
        call(kit, r).await?;
        if i >= 200 {
            let us = t.elapsed().as_secs_f64() * 1e6;
            lat.push(us);
            by_kind.push((kind_of(r), phase, us));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    Ok(lat)
}

/// The probe's process, driven over its stdin and stdout (one line each way per step).
pub struct ProbeChild {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl ProbeChild {
    /// Runs `exe` (this binary) as the probe (`--probe-child DIR CPU`) against the daemon at
    /// `dir`, as `uid` (and the same gid) when given.
    pub fn spawn(
        exe: &std::path::Path,
        dir: &std::path::Path,
        cpu: Option<usize>,
        uid: Option<u32>,
    ) -> Res<ProbeChild> {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(exe);
        command
            .arg("--probe-child")
            .arg(dir)
            .arg(cpu.map_or("-".to_owned(), |c| c.to_string()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        let mut child = command.spawn()?;
        let stdin = child.stdin.take().ok_or("no probe stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().ok_or("no probe stdout")?);
        Ok(ProbeChild {
            child,
            stdin,
            stdout,
        })
    }

    fn line(&mut self) -> Res<String> {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut self.stdout, &mut line)? == 0 {
            return Err(format!("the probe exited: {}", self.child.wait()?).into());
        }
        Ok(line.trim_end().to_owned())
    }

    pub fn expect(&mut self, what: &str) -> Res<()> {
        match self.line()? {
            l if l == what => Ok(()),
            l => Err(format!("the probe said {l:?}, not {what:?}").into()),
        }
    }

    pub fn send(&mut self, line: &str) -> Res<()> {
        use std::io::Write;
        writeln!(self.stdin, "{line}")?;
        Ok(self.stdin.flush()?)
    }

    /// Its figures, once it has measured its unloaded latency again.
    pub fn finish(mut self) -> Res<ProbeRun> {
        let v: serde_json::Value = serde_json::from_str(&self.line()?)?;
        self.child.wait()?;
        let floats = |k: &str| -> Vec<f64> {
            v[k].as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default()
        };
        let phase = |p: u64| match p {
            0 => Phase::Before,
            1 => Phase::Overload,
            _ => Phase::After,
        };
        Ok(ProbeRun {
            before: floats("before"),
            after: floats("after"),
            overload: (
                floats("ok"),
                floats("shed"),
                v["other"].as_u64().unwrap_or(0),
                v["first_other"].as_str().map(str::to_owned),
            ),
            by_kind: v["by_kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| {
                    Some((
                        s[0].as_u64()? as usize,
                        phase(s[1].as_u64()?),
                        s[2].as_f64()?,
                    ))
                })
                .collect(),
        })
    }
}

/// The probe process (`--probe-child DIR CPU`): prints `ready` after its unloaded run, runs
/// under the overload from `go MICROS` for that long, measures its unloaded latency again after
/// `done`, and prints its figures as one JSON line.
pub fn probe_child(dir: PathBuf, cpu: Option<usize>) -> Res<()> {
    use std::io::{BufRead, Write};
    if let Some(cpu) = cpu {
        pin_thread(&[cpu]);
    }
    let mut stdin = std::io::stdin().lock();
    let mut read = move || -> Res<String> {
        let mut line = String::new();
        stdin.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    };
    let say = |line: &str| -> Res<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        Ok(out.flush()?)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut kit = Kit::new(&dir, "overload probe").await?;
        let mut rng = SplitMix64(7);
        let mut by_kind = Vec::new();
        let before = paced_unloaded(&mut kit, &mut rng, Phase::Before, &mut by_kind).await?;
        say("ready")?;
        let go = read()?;
        let micros: u64 = go
            .strip_prefix("go ")
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| format!("expected go MICROS, got {go:?}"))?;
        let deadline = Instant::now() + Duration::from_micros(micros);
        let (mut ok, mut shed, mut other) = (Vec::new(), Vec::new(), 0u64);
        let mut first_other = None;
        while Instant::now() < deadline {
            let r = probe_mix(&mut rng);
            let t = Instant::now();
            let out = call(&mut kit, r).await;
            let us = t.elapsed().as_secs_f64() * 1e6;
            match out {
                Ok(()) => {
                    ok.push(us);
                    by_kind.push((kind_of(r), Phase::Overload, us));
                }
                Err(e) if e.code() == Some(Code::ResourceExhausted) => shed.push(us),
                Err(e) => {
                    other += 1;
                    first_other.get_or_insert(e.to_string());
                }
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
        let done = read()?;
        if done != "done" {
            return Err(format!("expected done, got {done:?}").into());
        }
        let after = paced_unloaded(&mut kit, &mut rng, Phase::After, &mut by_kind).await?;
        let by_kind: Vec<_> = by_kind
            .iter()
            .map(|&(k, p, us)| json!([k, p as u8, us]))
            .collect();
        say(
            &json!({"before": before, "after": after, "ok": ok, "shed": shed,
                    "other": other, "first_other": first_other, "by_kind": by_kind})
            .to_string(),
        )
    })
}
