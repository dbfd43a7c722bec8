//! The benchmark binaries' report: a table of rows (metric, value, baseline from the same run,
//! ratio, target, result) printed as Markdown and written as JSON, with the machine it ran on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What is measured.
    pub metric: String,
    /// The measured value, formatted.
    pub value: String,
    /// The baseline from the same run, formatted.
    pub baseline: String,
    /// value / baseline.
    pub ratio: Option<f64>,
    /// The target, as text ("-" when none).
    pub target: String,
    /// Whether the target is met (None: no target).
    pub result: Option<bool>,
}

impl Row {
    /// A row with a target.
    pub fn new(
        metric: &str,
        value: String,
        baseline: String,
        ratio: Option<f64>,
        target: String,
        result: Option<bool>,
    ) -> Self {
        Row {
            metric: metric.to_owned(),
            value,
            baseline,
            ratio,
            target,
            result,
        }
    }

    /// A row without a target.
    pub fn info(metric: &str, value: String, baseline: String, ratio: Option<f64>) -> Self {
        Row::new(metric, value, baseline, ratio, "-".into(), None)
    }

    /// The ratio as text.
    pub fn ratio_text(&self) -> String {
        self.ratio
            .map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
    }

    /// PASS, FAIL or -.
    pub fn result_text(&self) -> &'static str {
        match self.result {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "-",
        }
    }

    /// The row as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "metric": self.metric,
            "value": self.value,
            "baseline": self.baseline,
            "ratio": self.ratio.map(|r| (r * 1000.0).round() / 1000.0),
            "target": self.target,
            "result": self.result_text(),
        })
    }
}

/// The metrics of the rows whose target failed.
pub fn failed(rows: &[Row]) -> Vec<&str> {
    rows.iter()
        .filter(|r| r.result == Some(false))
        .map(|r| r.metric.as_str())
        .collect()
}

/// Prints the rows as a Markdown table.
pub fn print_table(rows: &[Row]) {
    let header = ["metric", "value", "baseline", "ratio", "target", "result"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.clone(),
                r.value.clone(),
                r.baseline.clone(),
                r.ratio_text(),
                r.target.clone(),
                r.result_text().to_owned(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: [&str; 6]| {
        let parts: Vec<String> = cols
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    println!();
    line(header);
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    println!("|-{}-|", rule.join("-|-"));
    for row in &cells {
        line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
    }
}

/// Hostname, CPUs, CPU model, kernel, UTC date, git commit.
pub fn machine_info() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).ok();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    });
    let nproc = command_output("nproc", &[])
        .and_then(|s| s.parse::<u64>().ok())
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u64)
        });
    // A GPU bundle names the commit it was built from; the GPU machine's copy of the tree may
    // carry a stale git checkout (seen: its HEAD was an older commit), so the bundle comes first.
    let commit = read(".gpu/COMMIT")
        .or_else(|| read(".gpu-gb/COMMIT"))
        .or_else(|| command_output("git", &["rev-parse", "HEAD"]));
    let dirty = commit
        .as_ref()
        .and_then(|_| command_output_raw("git", &["status", "--porcelain"]))
        .map(|s| !s.trim().is_empty());
    json!({
        "hostname": read("/proc/sys/kernel/hostname"),
        "nproc": nproc,
        "cpu_model": cpu_model,
        "kernel": read("/proc/sys/kernel/osrelease"),
        "date_utc": utc_now(),
        "git_commit": commit,
        "git_dirty": dirty,
    })
}

/// A command's trimmed stdout, if it ran and printed something.
pub fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    command_output_raw(cmd, args)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn command_output_raw(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Writes a bench report as pretty JSON to `path`, creating its directory.
pub fn write_json(path: &std::path::Path, report: &Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
}
