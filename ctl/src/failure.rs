//! How a command fails and reports it (`gpusharectl: <what failed>: <why>`), and stdout writing
//! that turns a closed pipe into a quiet stop.

use std::fmt;
use std::io::{self, Write};

use serde_json::Value;

use crate::exit;

/// Why a command failed: what it was doing, and the cause.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A client call failed.
    Client {
        what: String,
        source: gpushare_client::Error,
    },
    /// Local I/O failed (reading input, writing output).
    Io { what: String, source: io::Error },
    /// Arguments that parse but make no sense together.
    Usage(String),
}

impl Failure {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Failure::Client { source, .. } => exit::for_error(source),
            Failure::Io { .. } => exit::OTHER,
            Failure::Usage(_) => exit::USAGE,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, source): (&str, &dyn std::error::Error) = match self {
            Failure::Client { what, source } => (what, source),
            Failure::Io { what, source } => (what, source),
            Failure::Usage(message) => return f.write_str(message),
        };
        write!(f, "{what}: {source}")?;
        let mut last = source.to_string();
        let mut cause = source.source();
        while let Some(e) = cause {
            let text = e.to_string();
            // Some errors repeat their cause in their own message.
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            cause = e.source();
        }
        Ok(())
    }
}

/// Attaches "what was being done" to a client error.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T> Context<T> for gpushare_client::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|source| Failure::Client {
            what: what(),
            source,
        })
    }
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|source| Failure::Io {
            what: what(),
            source,
        })
    }
}

/// Writes to stdout; a closed pipe ends the command quietly.
pub(crate) struct Out {
    pub(crate) json: bool,
}

/// Raised by [`Out`] when stdout is a closed pipe: stop, successfully.
pub(crate) const BROKEN_PIPE: &str = "write to stdout";

impl Out {
    pub(crate) fn text(&self, text: &str) -> Result<(), Failure> {
        let mut stdout = io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .context(|| BROKEN_PIPE.to_owned())
    }

    pub(crate) fn line(&self, text: &str) -> Result<(), Failure> {
        self.text(&format!("{text}\n"))
    }

    pub(crate) fn value(&self, value: &Value) -> Result<(), Failure> {
        // Serializing a `Value` cannot fail.
        let text = serde_json::to_string_pretty(value).unwrap_or_default();
        self.line(&text)
    }

    /// JSON `value` with `--json`, else `text` (a line added when it lacks one; nothing when
    /// empty).
    pub(crate) fn either(&self, value: Value, text: &str) -> Result<(), Failure> {
        if self.json {
            self.value(&value)
        } else if text.is_empty() || text.ends_with('\n') {
            self.text(text)
        } else {
            self.line(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_message_chains_causes() {
        let f = Failure::Client {
            what: "wait for s to reach 3".into(),
            source: tonic::Status::deadline_exceeded("timed out after 10 ms").into(),
        };
        assert_eq!(
            f.to_string(),
            "wait for s to reach 3: timed out after 10 ms"
        );
        assert_eq!(f.exit_code(), 4);
        let f = Failure::Io {
            what: "read in.bin".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(f.to_string(), "read in.bin: no such file");
        assert_eq!(f.exit_code(), 1);
    }
}
