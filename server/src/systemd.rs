//! The daemon as a systemd citizen, without libsystemd: socket activation
//! (`LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`), the notify protocol (`READY=1`, `STATUS=`,
//! `STOPPING=1`, `WATCHDOG=1` over the `SOCK_DGRAM` socket named by `NOTIFY_SOCKET`), and
//! journald-friendly log lines when stderr is the journal (`JOURNAL_STREAM`).
//!
//! Everything here reads the environment once, at the start of `main` (before any thread
//! exists), and removes the variables it consumed, so that nothing the daemon starts inherits
//! them. Outside systemd every piece is inert: no sockets are passed, notifications go nowhere,
//! logs keep their usual format.
//!
//! Why not the `sd-notify` crate (0.5): its `notify` reads `NOTIFY_SOCKET` from the environment
//! at every call, so the variable would have to stay set for the process's whole life (and be
//! inherited), and it connects the path as given, so an abstract socket (`@name`, which
//! container managers use) is unreachable; its `listen_fds_with_names` yields descriptor
//! numbers and names but checks neither that a socket is a listening Unix socket of the type
//! its role needs nor that both roles are present, which is most of [`take_listen_fds`]; and
//! reading the variables through it would leave [`parse_listen_env`] and [`watchdog_interval`]
//! untestable (they are pure functions here, with unit tests). When restart survival needs the
//! fd store (`FDSTORE=1` with the descriptors as `SCM_RIGHTS`), [`Notifier`] sends it over the
//! socket it already holds, with `gpushare_proto::fdpass`.
//!
//! Why not `tracing-journald`: it writes to journald's native socket
//! (`/run/systemd/journal/socket`), which test machines and many containers lack; a service's
//! stderr is the journal stream systemd already connects, and its documented line protocol
//! (`<N>` syslog priority prefixes, [`JournalFormat`]) is what the service test checks.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketType};

/// The first descriptor the service manager passes (`SD_LISTEN_FDS_START`).
pub(crate) const LISTEN_FDS_START: RawFd = 3;

/// More passed descriptors than this is refused as nonsense.
const MAX_LISTEN_FDS: usize = 64;

/// `FileDescriptorName=` of the control socket (`gpushared.socket`).
pub(crate) const CONTROL_NAME: &str = "control";

/// `FileDescriptorName=` of the descriptor socket (`gpushared-fd.socket`).
pub(crate) const FD_NAME: &str = "fd";

/// Why the passed sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActivationError {
    /// A variable that does not parse.
    #[error("invalid {var}={value:?}")]
    BadVariable {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// `LISTEN_FDNAMES` names a different number of descriptors than `LISTEN_FDS` passes.
    #[error("LISTEN_FDNAMES names {names} descriptors but LISTEN_FDS passes {fds}")]
    NameCount {
        /// Names given.
        names: usize,
        /// Descriptors passed.
        fds: usize,
    },
    /// A passed descriptor is not open.
    #[error("passed descriptor {fd} ({name}) is not open")]
    NotOpen {
        /// The descriptor number.
        fd: RawFd,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A passed descriptor is not what its name says.
    #[error("passed descriptor {fd} ({name}) is not {expected}")]
    WrongKind {
        /// The descriptor number.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// Two descriptors claim one role.
    #[error("more than one passed socket is the {0} socket")]
    Duplicate(&'static str),
    /// One socket was passed and the other was not: the daemon cannot bind the missing one
    /// next to a socket it does not own.
    #[error("socket activation passed the {passed} socket but not the {missing} socket")]
    Incomplete {
        /// The one passed.
        passed: &'static str,
        /// The one missing.
        missing: &'static str,
    },
}

/// Descriptors passed by socket activation, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Passed {
    /// `(descriptor number, name)`, starting at [`LISTEN_FDS_START`].
    pub(crate) fds: Vec<(RawFd, String)>,
}

/// Parses the activation variables. `None` when no descriptors are meant for process `pid`
/// (no `LISTEN_PID`, or another process's: the variables were inherited, not passed).
pub(crate) fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    pid: u32,
) -> Result<Option<Passed>, ActivationError> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    let bad = |var, value: &str| ActivationError::BadVariable {
        var,
        value: value.to_owned(),
    };
    let for_pid: u32 = listen_pid
        .trim()
        .parse()
        .map_err(|_| bad("LISTEN_PID", listen_pid))?;
    if for_pid != pid {
        return Ok(None);
    }
    let n: usize = listen_fds
        .trim()
        .parse()
        .map_err(|_| bad("LISTEN_FDS", listen_fds))?;
    if n > MAX_LISTEN_FDS {
        return Err(bad("LISTEN_FDS", listen_fds));
    }
    let names: Vec<String> = match listen_fdnames {
        Some(names) if n > 0 => names.split(':').map(str::to_owned).collect(),
        _ => vec!["unknown".to_owned(); n],
    };
    if names.len() != n {
        return Err(ActivationError::NameCount {
            names: names.len(),
            fds: n,
        });
    }
    Ok(Some(Passed {
        fds: (LISTEN_FDS_START..).zip(names).collect(),
    }))
}

/// The two listening sockets the service manager passed.
#[derive(Debug)]
pub(crate) struct ActivatedSockets {
    /// `control.sock`: a listening `SOCK_STREAM` Unix socket.
    pub(crate) control: OwnedFd,
    /// `fd.sock`: a listening `SOCK_SEQPACKET` Unix socket.
    pub(crate) fd: OwnedFd,
}

/// Takes the sockets passed by socket activation, if any were passed to this process, and
/// removes `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment.
///
/// Must run first thing in `main`, before any thread exists and before the daemon opens any
/// file: the passed descriptors sit at 3, 4, ... and nothing else may have claimed them.
///
/// Sockets are matched by name (`control`, `fd`); a socket named `unknown` (no
/// `FileDescriptorName=`, or no `LISTEN_FDNAMES` at all) is matched by its type. Every socket
/// must be a listening Unix socket of the right type. Descriptors with other names are closed
/// with a warning once logging is up (they are returned as `ignored`).
pub(crate) fn take_listen_fds() -> Result<Option<(ActivatedSockets, Vec<String>)>, ActivationError>
{
    let var = |name| std::env::var(name).ok();
    let parsed = parse_listen_env(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    let Some(passed) = parsed? else {
        return Ok(None);
    };
    if passed.fds.is_empty() {
        return Ok(None);
    }
    // Own every passed descriptor first, so that an error below closes all of them.
    let mut owned = Vec::with_capacity(passed.fds.len());
    for (raw, name) in passed.fds {
        // SAFETY: fcntl(F_GETFD) on a descriptor number only inspects the table; a number that
        // is not open fails with EBADF and is not used further.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        if let Err(e) = rustix::io::fcntl_getfd(borrowed) {
            return Err(ActivationError::NotOpen {
                fd: raw,
                name,
                source: e.into(),
            });
        }
        // SAFETY: LISTEN_PID names this process, so the service manager passed descriptors
        // LISTEN_FDS_START.. to it; `raw` is open (checked just above), and it is taken exactly
        // once, at the start of main, before anything else in the process could own it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Children must not inherit the listeners.
        let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
        owned.push((raw, name, fd));
    }
    let mut control = None;
    let mut fd_sock = None;
    let mut ignored = Vec::new();
    for (raw, name, fd) in owned {
        let kind = listening_unix_type(fd.as_fd());
        let role = match name.as_str() {
            CONTROL_NAME => Some(CONTROL_NAME),
            FD_NAME => Some(FD_NAME),
            "unknown" | "" => match kind {
                Some(t) if t == SocketType::STREAM => Some(CONTROL_NAME),
                Some(t) if t == SocketType::SEQPACKET => Some(FD_NAME),
                _ => None,
            },
            _ => None,
        };
        match role {
            Some(CONTROL_NAME) => {
                if kind != Some(SocketType::STREAM) {
                    return Err(ActivationError::WrongKind {
                        fd: raw,
                        name,
                        expected: "a listening SOCK_STREAM Unix socket",
                    });
                }
                if control.replace(fd).is_some() {
                    return Err(ActivationError::Duplicate(CONTROL_NAME));
                }
            }
            Some(_) => {
                if kind != Some(SocketType::SEQPACKET) {
                    return Err(ActivationError::WrongKind {
                        fd: raw,
                        name,
                        expected: "a listening SOCK_SEQPACKET Unix socket",
                    });
                }
                if fd_sock.replace(fd).is_some() {
                    return Err(ActivationError::Duplicate(FD_NAME));
                }
            }
            None => {
                ignored.push(format!("{raw} ({name})"));
                drop(fd);
            }
        }
    }
    match (control, fd_sock) {
        (Some(control), Some(fd)) => Ok(Some((ActivatedSockets { control, fd }, ignored))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ActivationError::Incomplete {
            passed: CONTROL_NAME,
            missing: FD_NAME,
        }),
        (None, Some(_)) => Err(ActivationError::Incomplete {
            passed: FD_NAME,
            missing: CONTROL_NAME,
        }),
    }
}

/// The type of `fd` when it is a listening `AF_UNIX` socket (`SO_DOMAIN`, `SO_ACCEPTCONN`,
/// `SO_TYPE`), else `None`.
fn listening_unix_type(fd: BorrowedFd<'_>) -> Option<SocketType> {
    use rustix::net::sockopt;
    if sockopt::socket_domain(fd).ok()? != AddressFamily::UNIX {
        return None;
    }
    if !sockopt::socket_acceptconn(fd).ok()? {
        return None;
    }
    sockopt::socket_type(fd).ok()
}

/// The filesystem path a Unix socket is bound to, for logs.
pub(crate) fn socket_path(fd: BorrowedFd<'_>) -> Option<std::path::PathBuf> {
    let addr = rustix::net::getsockname(fd).ok()?;
    let unix = rustix::net::SocketAddrUnix::try_from(addr).ok()?;
    unix.path()
        .map(|p| std::path::PathBuf::from(p.to_string_lossy().into_owned()))
}

/// Sends `sd_notify` messages to the service manager. Inert when `NOTIFY_SOCKET` was unset.
#[derive(Debug)]
pub(crate) struct Notifier {
    target: Option<(OwnedFd, rustix::net::SocketAddrUnix)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, then removes them from the
    /// environment. A path starting with `@` names an abstract socket.
    pub(crate) fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let wpid = std::env::var("WATCHDOG_PID").ok();
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
        let target = socket.and_then(|s| match Self::connect(&s) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("gpushared: ignoring NOTIFY_SOCKET={s:?}: {e}");
                None
            }
        });
        let watchdog = target
            .as_ref()
            .and_then(|_| watchdog_interval(usec.as_deref(), wpid.as_deref(), std::process::id()));
        Self { target, watchdog }
    }

    /// A notifier that sends nothing.
    pub(crate) fn disabled() -> Self {
        Self {
            target: None,
            watchdog: None,
        }
    }

    fn connect(path: &std::ffi::OsStr) -> std::io::Result<(OwnedFd, rustix::net::SocketAddrUnix)> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => rustix::net::SocketAddrUnix::new_abstract_name(name)?,
            None if bytes.first() == Some(&b'/') => rustix::net::SocketAddrUnix::new(bytes)?,
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract name (@...)",
                ))
            }
        };
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((fd, addr))
    }

    /// Whether notifications go anywhere.
    pub(crate) fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1` (half of `WatchdogSec`), when the watchdog is on.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification (newline-separated `KEY=value` lines). Errors are logged: the
    /// service manager going away must not take the daemon with it.
    pub(crate) fn notify(&self, message: &str) {
        let Some((fd, addr)) = &self.target else {
            return;
        };
        if let Err(e) = rustix::net::sendto(
            fd,
            message.as_bytes(),
            rustix::net::SendFlags::NOSIGNAL,
            addr,
        ) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    /// `READY=1` with a status line.
    pub(crate) fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A `STATUS=` line (`systemctl status` shows it).
    pub(crate) fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// `STOPPING=1` with a status line.
    pub(crate) fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1`.
    pub(crate) fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// Half of `WATCHDOG_USEC` when the watchdog is meant for process `pid` (`WATCHDOG_PID` unset
/// or equal to it), else `None`.
pub(crate) fn watchdog_interval(
    usec: Option<&str>,
    wpid: Option<&str>,
    pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(wpid) = wpid {
        if wpid.trim().parse::<u32>().ok()? != pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` (`device:inode`) names the
/// same file as stderr. Checked rather than trusted, since the variable is inherited by
/// processes whose stderr was redirected elsewhere.
pub(crate) fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let value = value.to_string_lossy();
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // st_dev and st_ino are not u64 on every architecture.
    #[allow(clippy::unnecessary_cast)]
    match rustix::fs::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev as u64 == dev && st.st_ino as u64 == ino,
        Err(_) => false,
    }
}

/// A `tracing` event format for the journal: the syslog priority as a `<N>` prefix (which
/// journald turns into the entry's PRIORITY), no timestamp (journald adds one), no ANSI
/// colours, then the spans, the message and its fields.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JournalFormat;

/// The syslog priority of a `tracing` level.
pub(crate) fn syslog_priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        write!(writer, "<{}>", syslog_priority(*meta.level()))?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                write!(writer, ": ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_env_is_for_this_pid_only() {
        assert_eq!(parse_listen_env(None, Some("2"), None, 7).unwrap(), None);
        assert_eq!(
            parse_listen_env(Some("8"), Some("2"), None, 7).unwrap(),
            None
        );
        let p = parse_listen_env(Some("7"), Some("2"), Some("control:fd"), 7)
            .unwrap()
            .unwrap();
        assert_eq!(p.fds, vec![(3, "control".into()), (4, "fd".into())]);
        let p = parse_listen_env(Some("7"), Some("2"), None, 7)
            .unwrap()
            .unwrap();
        assert_eq!(p.fds, vec![(3, "unknown".into()), (4, "unknown".into())]);
    }

    #[test]
    fn bad_listen_env_is_refused() {
        assert!(parse_listen_env(Some("x"), Some("2"), None, 7).is_err());
        assert!(parse_listen_env(Some("7"), Some("two"), None, 7).is_err());
        assert!(parse_listen_env(Some("7"), Some("100000"), None, 7).is_err());
        assert!(matches!(
            parse_listen_env(Some("7"), Some("2"), Some("control"), 7),
            Err(ActivationError::NameCount { names: 1, fds: 2 })
        ));
    }

    #[test]
    fn watchdog_is_half_the_interval_and_for_this_pid() {
        assert_eq!(
            watchdog_interval(Some("2000000"), None, 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn notifications_reach_a_datagram_socket() {
        let dir = std::env::temp_dir().join(format!("gpushare-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let (fd, addr) = Notifier::connect(path.as_os_str()).unwrap();
        let n = Notifier {
            target: Some((fd, addr)),
            watchdog: None,
        };
        n.ready("serving\n1 device");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving 1 device");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn abstract_notify_socket_names_start_with_at() {
        let name = format!("gpushare-notify-test-{}", std::process::id());
        let addr = rustix::net::SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap();
        let rx = rustix::net::socket(AddressFamily::UNIX, SocketType::DGRAM, None).unwrap();
        rustix::net::bind(&rx, &addr).unwrap();
        let (fd, addr) = Notifier::connect(std::ffi::OsStr::new(&format!("@{name}"))).unwrap();
        let n = Notifier {
            target: Some((fd, addr)),
            watchdog: None,
        };
        n.watchdog();
        let mut buf = [0u8; 64];
        let len = rustix::net::recv(&rx, &mut buf, rustix::net::RecvFlags::empty())
            .unwrap()
            .0;
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(tracing::Level::ERROR), 3);
        assert_eq!(syslog_priority(tracing::Level::WARN), 4);
        assert_eq!(syslog_priority(tracing::Level::INFO), 6);
        assert_eq!(syslog_priority(tracing::Level::DEBUG), 7);
    }
}
