//! Daemon configuration: defaults, then the TOML file, then environment variables, then
//! command-line flags (each later source overrides the earlier ones).
//!
//! | setting | flag | environment | TOML key | default |
//! |---|---|---|---|---|
//! | runtime directory | `--runtime-dir` | `GPUSHARE_RUNTIME_DIR` | `runtime_dir` | `$XDG_RUNTIME_DIR/gpushare`, else `/run/gpushare` |
//! | devices | `--device` | `GPUSHARE_DEVICE` | `device` | `auto` (every GPU; the CPU device when there is none) |
//! | log filter | `--log` | `GPUSHARE_LOG` | `log` | `info` |
//! | socket mode | — | — | `socket_mode` | `0o660` |
//! | executor | — | — | `executor` | `auto` (CUDA when present and matched, else Vulkan) |
//! | strict device matching | — | — | `strict_device_match` | `false` |
//! | CUDA fast path | — | — | `fast_path` | `true` (memop words where the device can; see `word.rs`) |
//! | driver waits | — | — | `driver_waits` | `true` (see `waits/`) |
//! | limits | — | — | `[limits]` | see [`Limits`] |
//! | quotas | — | — | `[quotas]` | see [`Quotas`] |
//! | admin group | — | — | `admin_gid` | unset (no admin) |
//! | metrics endpoint | — | — | `[metrics] listen` | off (see [`MetricsConfig`]) |

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Resource limits. Every field has a safe default.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Limits {
    /// Largest buffer, in bytes. 0 means the size of the device's largest memory heap.
    pub(crate) max_buffer_size: u64,
    /// Largest Write payload or Read length, in bytes (default 32 MiB).
    pub(crate) max_transfer_size: u64,
    /// How long an export ticket stays redeemable, in milliseconds (default 10 s).
    pub(crate) ticket_ttl_ms: u32,
    /// Longest Wait or wait-point timeout a call may ask for, in milliseconds (default 1 h).
    pub(crate) max_wait_timeout_ms: u32,
    /// A connection on fd.sock that sends nothing for this long is closed (default 30 s).
    pub(crate) fd_idle_timeout_ms: u32,
    /// Longest spin an fd.sock wait may ask for (`FdWait.spin_us`), in microseconds (default
    /// 5000): while such a wait is that young, the wait service reads counters continuously,
    /// one thread busy. 0 turns spinning off.
    pub(crate) max_spin_us: u32,
    /// Largest host buffer (CreateHostBuffer), in bytes (default 1 GiB). Host buffers are
    /// page-locked while they live when the executor is CUDA.
    pub(crate) max_host_buffer_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_buffer_size: 0,
            max_transfer_size: 32 << 20,
            ticket_ttl_ms: 10_000,
            max_wait_timeout_ms: 3_600_000,
            fd_idle_timeout_ms: 30_000,
            max_spin_us: 5_000,
            max_host_buffer_size: 1 << 30,
        }
    }
}

/// Quotas: how much one uid, one session, or everybody together may hold at once. A request
/// past one is refused with RESOURCE_EXHAUSTED naming the quota and its value. 0 means no limit
/// (only for `buffer_bytes_per_uid`, whose natural bound is GPU memory). Every other default is
/// finite, generous for one user's pipelines and small enough that no uid can exhaust the
/// daemon's memory, descriptors or threads for the others.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Quotas {
    /// Live buffers and images per uid (default 4096).
    pub(crate) buffers_per_uid: u64,
    /// Bytes of buffer memory (allocation sizes) per uid; 0: bounded by GPU memory only
    /// (default 0).
    pub(crate) buffer_bytes_per_uid: u64,
    /// Live semaphores per uid (default 4096).
    pub(crate) semaphores_per_uid: u64,
    /// Live host buffers per uid (default 256).
    pub(crate) host_buffers_per_uid: u64,
    /// Bytes of host buffers per uid (default 4 GiB): page-locked memory under CUDA.
    pub(crate) host_buffer_bytes_per_uid: u64,
    /// Resources one session holds references to (default 4096).
    pub(crate) resources_per_session: u64,
    /// Bytes of the buffers and images one session holds references to (created or opened);
    /// 0: no limit beyond the uid's (default 0).
    pub(crate) buffer_bytes_per_session: u64,
    /// Live sessions per uid (default 4096).
    pub(crate) sessions_per_uid: u64,
    /// Host waits pending per uid: Wait calls, fd.sock waits, Write/Read/Fill/Copy waiting for
    /// their wait points (default 1024).
    pub(crate) pending_waits_per_uid: u64,
    /// The same, per client session (default 256): the calls that name a session (fd.sock
    /// waits name none), so that one session of a uid cannot take all of the uid's.
    pub(crate) pending_waits_per_session: u64,
    /// Open Watch streams per uid (default 256).
    pub(crate) watches_per_uid: u64,
    /// The same, per client session (default 64).
    pub(crate) watches_per_session: u64,
    /// Outstanding export tickets per uid (default 1024).
    pub(crate) tickets_per_uid: u64,
    /// The same, per client session: tickets issued by Export calls that named it (default
    /// 256).
    pub(crate) tickets_per_session: u64,
    /// gRPC calls and fd.sock exports and redeems being handled at once, all uids together;
    /// past it calls are refused at once (load shedding) instead of queueing (default 1024).
    /// Streams count only while they start; calls parked in a host wait (Wait, wait points)
    /// do not count while they wait.
    pub(crate) calls_in_flight: u64,
    /// The same, per uid (default 256): one uid flooding the daemon is refused before it takes
    /// every slot of `calls_in_flight` from the others.
    pub(crate) calls_in_flight_per_uid: u64,
    /// Open connections per uid, on control.sock and fd.sock each (default 4096: a service
    /// account may run thousands of clients); past it a new connection is closed at once.
    pub(crate) connections_per_uid: u64,
    /// Open connections, all uids together, on each socket (default 16384).
    pub(crate) connections: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            buffers_per_uid: 4096,
            buffer_bytes_per_uid: 0,
            semaphores_per_uid: 4096,
            host_buffers_per_uid: 256,
            host_buffer_bytes_per_uid: 4 << 30,
            resources_per_session: 4096,
            buffer_bytes_per_session: 0,
            sessions_per_uid: 4096,
            pending_waits_per_uid: 1024,
            pending_waits_per_session: 256,
            watches_per_uid: 256,
            watches_per_session: 64,
            tickets_per_uid: 1024,
            tickets_per_session: 256,
            calls_in_flight: 1024,
            calls_in_flight_per_uid: 256,
            connections_per_uid: 4096,
            connections: 16384,
        }
    }
}

/// The daemon's configuration after every source was applied.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// Directory holding control.sock, fd.sock and the lock file.
    pub(crate) runtime_dir: PathBuf,
    /// Which devices to serve: `auto` (every GPU, or the first usable device when there is no
    /// GPU), `all` (every device, CPU drivers included), or a comma-separated list of device
    /// indexes (`0`) and UUIDs (32 hex digits, dashes allowed), served in that order.
    pub(crate) device: String,
    /// A `tracing` filter (`info`, `gpushare_server=debug`, ...).
    pub(crate) log: String,
    /// Permission bits of both sockets.
    pub(crate) socket_mode: u32,
    /// Which executor runs Write/Read/Fill/Copy: `auto` (CUDA where the host has it and the
    /// device has a CUDA match, else Vulkan), `cuda` (fail to start without), or `vulkan`.
    pub(crate) executor: String,
    /// Forbid the device-matching fallbacks (by name, then first CUDA device of compute
    /// capability >= 7): only a UUID match pairs a Vulkan device with a CUDA device.
    pub(crate) strict_device_match: bool,
    /// Offer the CUDA fast path: semaphores and streams created with `word` get a memop word
    /// on devices whose CUDA device runs 64-bit stream memory operations. Off: none get one,
    /// and GetInfo says the configuration turned it off.
    pub(crate) fast_path: bool,
    /// Let one thread per device block in `vkWaitSemaphores` for the semaphores that have host
    /// waiters, besides polling their counters; the poller relaxes while that thread notices
    /// values first. Off: polling alone.
    pub(crate) driver_waits: bool,
    /// Resource limits.
    pub(crate) limits: Limits,
    /// Quotas per uid, per session and overall.
    pub(crate) quotas: Quotas,
    /// The admin group: processes in it (primary gid or supplementary group) may list, describe
    /// and release every resource, and see every session and semaphore in introspection. Unset:
    /// nobody.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) admin_gid: Option<u32>,
    /// The Prometheus metrics endpoint.
    pub(crate) metrics: MetricsConfig,
}

/// The Prometheus metrics endpoint (`GET /metrics`, text format 0.0.4). Off by default.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MetricsConfig {
    /// Empty (off), `unix:/absolute/path`, or a loopback `IP:port` (`127.0.0.1:9464`,
    /// `[::1]:9464`). Other addresses are refused: the figures name uids and are not meant for
    /// the network.
    pub(crate) listen: String,
}

/// Where the metrics endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetricsAddr {
    /// A Unix stream socket at this absolute path.
    Unix(PathBuf),
    /// A loopback TCP address.
    Tcp(std::net::SocketAddr),
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            MetricsAddr::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

impl MetricsConfig {
    /// The parsed address; `None` when the endpoint is off.
    pub(crate) fn addr(&self) -> Result<Option<MetricsAddr>, ConfigError> {
        let invalid = |reason| ConfigError::Invalid {
            key: "metrics.listen",
            reason,
        };
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        if let Some(path) = listen.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(invalid("a unix: path must be absolute"));
            }
            return Ok(Some(MetricsAddr::Unix(path)));
        }
        let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
            invalid("expected unix:/path or a loopback IP:port such as 127.0.0.1:9464")
        })?;
        if !addr.ip().is_loopback() {
            return Err(invalid(
                "only loopback TCP addresses (127.0.0.0/8, ::1) are allowed",
            ));
        }
        Ok(Some(MetricsAddr::Tcp(addr)))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            runtime_dir: default_runtime_dir(),
            device: "auto".into(),
            log: "info".into(),
            socket_mode: 0o660,
            executor: "auto".into(),
            strict_device_match: false,
            fast_path: true,
            driver_waits: true,
            limits: Limits::default(),
            quotas: Quotas::default(),
            admin_gid: None,
            metrics: MetricsConfig::default(),
        }
    }
}

/// `$XDG_RUNTIME_DIR/gpushare` when set, else `/run/gpushare` (the service's directory).
pub(crate) fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("gpushare"),
        _ => PathBuf::from("/run/gpushare"),
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A value that is out of its allowed range.
    #[error("invalid setting {key}: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// Overrides from the command line and the environment (clap reads both).
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    /// `--runtime-dir` / `GPUSHARE_RUNTIME_DIR`.
    pub(crate) runtime_dir: Option<PathBuf>,
    /// `--device` / `GPUSHARE_DEVICE`.
    pub(crate) device: Option<String>,
    /// `--log` / `GPUSHARE_LOG`.
    pub(crate) log: Option<String>,
}

impl Config {
    /// Parses a TOML document.
    pub(crate) fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Loads `path` if given (defaults otherwise), applies the overrides and validates.
    pub(crate) fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::from_toml(&text, path)?
            }
            None => Self::default(),
        };
        if let Some(dir) = overrides.runtime_dir {
            config.runtime_dir = dir;
        }
        if let Some(device) = overrides.device {
            config.device = device;
        }
        if let Some(log) = overrides.log {
            config.log = log;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks values that the types alone do not.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        if self.socket_mode & !0o777 != 0 {
            return invalid(
                "socket_mode",
                "only permission bits (0o000..=0o777) are allowed",
            );
        }
        if self.socket_mode & 0o600 != 0o600 {
            return invalid("socket_mode", "the owner needs read and write (0o600)");
        }
        if !["auto", "cuda", "vulkan"].contains(&self.executor.as_str()) {
            return invalid("executor", "must be \"auto\", \"cuda\" or \"vulkan\"");
        }
        if self.runtime_dir.as_os_str().is_empty() {
            return invalid("runtime_dir", "must not be empty");
        }
        let l = &self.limits;
        if l.max_transfer_size == 0 || l.max_transfer_size > (1 << 30) {
            return invalid("limits.max_transfer_size", "must be in 1..=1 GiB");
        }
        if l.ticket_ttl_ms == 0 {
            return invalid("limits.ticket_ttl_ms", "must not be zero");
        }
        if l.max_wait_timeout_ms == 0 {
            return invalid("limits.max_wait_timeout_ms", "must not be zero");
        }
        if l.fd_idle_timeout_ms == 0 {
            return invalid("limits.fd_idle_timeout_ms", "must not be zero");
        }
        if l.max_host_buffer_size == 0 {
            return invalid("limits.max_host_buffer_size", "must not be zero");
        }
        let q = &self.quotas;
        for (key, value) in [
            ("quotas.buffers_per_uid", q.buffers_per_uid),
            ("quotas.semaphores_per_uid", q.semaphores_per_uid),
            ("quotas.host_buffers_per_uid", q.host_buffers_per_uid),
            (
                "quotas.host_buffer_bytes_per_uid",
                q.host_buffer_bytes_per_uid,
            ),
            ("quotas.resources_per_session", q.resources_per_session),
            ("quotas.sessions_per_uid", q.sessions_per_uid),
            ("quotas.pending_waits_per_uid", q.pending_waits_per_uid),
            (
                "quotas.pending_waits_per_session",
                q.pending_waits_per_session,
            ),
            ("quotas.watches_per_uid", q.watches_per_uid),
            ("quotas.watches_per_session", q.watches_per_session),
            ("quotas.tickets_per_uid", q.tickets_per_uid),
            ("quotas.tickets_per_session", q.tickets_per_session),
            ("quotas.calls_in_flight", q.calls_in_flight),
            ("quotas.calls_in_flight_per_uid", q.calls_in_flight_per_uid),
            ("quotas.connections_per_uid", q.connections_per_uid),
            ("quotas.connections", q.connections),
        ] {
            if value == 0 {
                return invalid(key, "must not be zero");
            }
        }
        if crate::selection::parse_selection(&self.device).is_err() {
            return invalid(
                "device",
                "expected \"auto\", \"all\", or a comma-separated list of device indexes and UUIDs",
            );
        }
        self.metrics.addr()?;
        Ok(())
    }

    /// The configuration as TOML, every setting included (`gpushared --check-config`).
    pub(crate) fn to_toml(&self) -> String {
        let text =
            toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        // TOML has octal integers; permission bits read better that way.
        let decimal = format!("socket_mode = {}", self.socket_mode);
        text.lines()
            .map(|line| {
                if line == decimal {
                    format!("socket_mode = 0o{:o}", self.socket_mode)
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults_where_commented_out() {
        let text = include_str!("../../deploy/config.example.toml");
        let config = Config::from_toml(text, Path::new("config.example.toml")).unwrap();
        config.validate().unwrap();
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn overrides_win_over_file() {
        let dir = std::env::temp_dir().join(format!("gpushare-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "device = \"1\"\nlog = \"debug\"\n[limits]\nticket_ttl_ms = 5\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            Overrides {
                device: Some("0".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(config.device, "0");
        assert_eq!(config.log, "debug");
        assert_eq!(config.limits.ticket_ttl_ms, 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metrics_listen_accepts_unix_paths_and_loopback_only() {
        let addr = |s: &str| {
            MetricsConfig {
                listen: s.to_owned(),
            }
            .addr()
        };
        assert_eq!(addr("").unwrap(), None);
        assert_eq!(
            addr("unix:/run/gpushare/metrics.sock").unwrap(),
            Some(MetricsAddr::Unix("/run/gpushare/metrics.sock".into()))
        );
        assert_eq!(
            addr("127.0.0.1:9464").unwrap(),
            Some(MetricsAddr::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        assert!(addr("[::1]:9464").unwrap().is_some());
        for bad in [
            "0.0.0.0:9464",
            "192.168.1.2:9464",
            "[::]:9464",
            "localhost:9464",
            "unix:relative.sock",
            "9464",
        ] {
            assert!(addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rendered_config_parses_back_to_the_same_config() {
        let config = Config {
            metrics: MetricsConfig {
                listen: "127.0.0.1:9464".into(),
            },
            ..Config::default()
        };
        let text = config.to_toml();
        assert!(text.contains("socket_mode = 0o660"), "{text}");
        assert_eq!(Config::from_toml(&text, Path::new("x")).unwrap(), config);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let p = Path::new("x.toml");
        assert!(matches!(
            Config::from_toml("devcie = \"0\"", p),
            Err(ConfigError::Parse { .. })
        ));
        let bad = |c: Config| assert!(c.validate().is_err(), "{c:?}");
        bad(Config {
            socket_mode: 0o1777,
            ..Config::default()
        });
        bad(Config {
            socket_mode: 0o060,
            ..Config::default()
        });
        bad(Config {
            limits: Limits {
                ticket_ttl_ms: 0,
                ..Limits::default()
            },
            ..Config::default()
        });
    }
}
