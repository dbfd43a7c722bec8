//! A child process of the running binary spoken to by lines (the benchmarks' peers:
//! `--role ...` selects the child's part), and the child side's two helpers.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The benchmarks' result type.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A child process of this binary (`<exe> --role <args>`), its stdin and stdout piped.
#[derive(Debug)]
pub struct LinePeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl LinePeer {
    /// Starts `<this executable> --role <args>`; its stderr goes to ours.
    pub fn spawn(args: &[&str]) -> Res<LinePeer> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--role")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("the child's stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("the child's stdout")?);
        Ok(LinePeer {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends one line.
    pub fn send(&mut self, line: &str) -> Res<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Reads one line (an error when the child ended instead).
    pub fn line(&mut self) -> Res<String> {
        let mut s = String::new();
        if self.stdout.read_line(&mut s)? == 0 {
            let status = self.child.wait()?;
            return Err(format!("the child process ended early ({status})").into());
        }
        Ok(s.trim_end().to_owned())
    }

    /// Reads one line, which must be `want`.
    pub fn expect(&mut self, want: &str) -> Res<()> {
        let line = self.line()?;
        if line != want {
            return Err(format!("the child said {line:?}, not {want:?}").into());
        }
        Ok(())
    }

    /// Closes its stdin (its signal to finish) and waits for a successful exit.
    pub fn close(self) -> Res<()> {
        let LinePeer {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("the child process failed ({status})").into());
        }
        Ok(())
    }

    /// Reads its last line, then waits for a successful exit.
    pub fn finish(mut self) -> Res<String> {
        let last = self.line()?;
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("the child process failed ({status})").into());
        }
        Ok(last)
    }
}

/// The child's side: prints one line and flushes.
pub fn say(line: &str) {
    let mut o = std::io::stdout();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// The child's side: reads one line from stdin, trimmed (empty at end of input).
pub fn read_stdin_line() -> Res<String> {
    let mut s = String::new();
    std::io::stdin().read_line(&mut s)?;
    Ok(s.trim().to_owned())
}
