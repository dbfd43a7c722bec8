//! The Prometheus metrics endpoint: `GET /metrics` in text format 0.0.4, on a Unix socket or a
//! loopback TCP address (`[metrics] listen`), off by default.
//!
//! What it reports: live resources and sessions, buffers, semaphores and buffer bytes per uid,
//! outstanding export tickets, tickets issued (successful `Export` calls), descriptors sent on
//! fd.sock (redeemed tickets and direct exports), pending host waits,
//! gRPC calls in flight, and per method the calls, the calls that failed at once (a status in
//! the response headers), and a latency histogram. Latency runs from a call's arrival to its
//! response headers: for the streaming calls (`Session`, `Watch`) that is the start of the
//! stream, not its length.
//!
//! The figures are gathered at scrape time from the daemon's own state; the [`MetricsLayer`]
//! around the gRPC router records per-method calls. HTTP is hyper's HTTP/1.1 server (already
//! the gRPC server's), one request per connection, bounded in size and time.
//!
//! Why not `metrics` + `metrics-exporter-prometheus`: the exporter's HTTP listener binds TCP
//! addresses only, and the default (and recommended) endpoint is a Unix socket with the
//! daemon's socket mode; its recorder model records values as they happen, while almost every
//! figure here is read from the daemon's state when scraped (live resources, usage per uid,
//! pending waits, quota refusals), which would mean mirroring that state into a second
//! registry; and it would add a dozen crates to build for the text format's few rules
//! (`# HELP`, `# TYPE`, escaped label values, histogram buckets), which [`escape`], [`gauge`] and
//! [`labeled`] follow and the tests check.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

use crate::config::MetricsAddr;
use crate::daemon::Daemon;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub(crate) const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Distinct methods tracked; calls beyond that are counted under `method="other"`.
const MAX_METHODS: usize = 128;

/// Services whose methods get their own label. Any other path counts as `other`, so that a
/// client cannot grow the label set with made-up paths.
const KNOWN_SERVICES: [&str; 4] = [
    "gpushare.v1.GpuShare",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The `Export` call's path: a successful one issued an export ticket.
const EXPORT_PATH: &str = "/gpushare.v1.GpuShare/Export";

/// gRPC status UNIMPLEMENTED: an unknown method, counted as `other`.
const UNIMPLEMENTED: &str = "12";

#[derive(Debug, Default, Clone)]
struct MethodStats {
    calls: u64,
    errors: u64,
    buckets: [u64; LATENCY_BUCKETS.len()],
    sum_seconds: f64,
}

/// What the gRPC layer records.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    methods: Mutex<BTreeMap<(String, String), MethodStats>>,
    exports: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a few additions that leave the map consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    fn record(&self, path: &str, status: Option<&str>, elapsed: Duration) {
        let failed = status.is_some_and(|s| s != "0");
        if path == EXPORT_PATH && !failed {
            self.exports.fetch_add(1, Ordering::Relaxed);
        }
        let (service, method) = match path.trim_start_matches('/').split_once('/') {
            Some((s, m))
                if KNOWN_SERVICES.contains(&s)
                    && status != Some(UNIMPLEMENTED)
                    && !m.is_empty()
                    && m.len() <= 64
                    && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                (s, m)
            }
            _ => ("other", "other"),
        };
        let mut methods = lock(&self.methods);
        let key = (service.to_owned(), method.to_owned());
        let key = if methods.len() >= MAX_METHODS && !methods.contains_key(&key) {
            ("other".to_owned(), "other".to_owned())
        } else {
            key
        };
        let stats = methods.entry(key).or_default();
        stats.calls += 1;
        stats.errors += u64::from(failed);
        let secs = elapsed.as_secs_f64();
        stats.sum_seconds += secs;
        for (bucket, bound) in stats.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
    }

    /// Renders every figure in the Prometheus text format 0.0.4. `in_flight` counts the gRPC
    /// calls in flight and those shed for load.
    pub(crate) fn render(&self, d: &Daemon, in_flight: &crate::inflight::InFlight) -> String {
        let (shed, parked, in_flight, shed_per_uid) = (
            in_flight.shed(),
            in_flight.parked(),
            in_flight.count(),
            in_flight.shed_per_uid(),
        );
        let mut out = String::with_capacity(4096);
        let (resources, sessions) = d.registry.counts();
        gauge(&mut out, "gpushare_up", "1 while the daemon serves.", 1.0);
        gauge(
            &mut out,
            "gpushare_devices",
            "Devices the daemon serves.",
            d.devices.len() as f64,
        );
        gauge(
            &mut out,
            "gpushare_resources",
            "Live resources (buffers and semaphores).",
            resources as f64,
        );
        gauge(
            &mut out,
            "gpushare_sessions",
            "Live client sessions.",
            sessions as f64,
        );

        let mut buffers = Vec::new();
        let mut semaphores = Vec::new();
        let mut bytes = Vec::new();
        let mut host_bytes = Vec::new();
        for (uid, usage) in d.registry.usage_by_uid() {
            let label = format!("uid=\"{uid}\"");
            buffers.push((label.clone(), usage.buffers as f64));
            semaphores.push((label.clone(), usage.semaphores as f64));
            host_bytes.push((label.clone(), usage.host_buffer_bytes as f64));
            bytes.push((label, usage.buffer_bytes as f64));
        }
        labeled(
            &mut out,
            "gpushare_uid_buffers",
            "gauge",
            "Live buffers per owner uid.",
            &buffers,
        );
        labeled(
            &mut out,
            "gpushare_uid_semaphores",
            "gauge",
            "Live semaphores per owner uid.",
            &semaphores,
        );
        labeled(
            &mut out,
            "gpushare_uid_buffer_bytes",
            "gauge",
            "Bytes of buffer memory (allocation sizes) per owner uid.",
            &bytes,
        );
        labeled(
            &mut out,
            "gpushare_uid_host_buffer_bytes",
            "gauge",
            "Bytes of host buffers (shared host memory, page-locked under CUDA) per owner uid.",
            &host_bytes,
        );
        self.render_streams(&mut out, d);
        let fast: Vec<(String, f64)> = d
            .devices
            .iter()
            .map(|s| {
                let offered = s.fast_path.writer().is_some();
                (
                    format!("device=\"{}\"", s.index),
                    f64::from(u8::from(offered)),
                )
            })
            .collect();
        labeled(
            &mut out,
            "gpushare_fast_path_offered",
            "gauge",
            "1 where the device offers the CUDA fast path (memop words), 0 where not (GetInfo \
             says why).",
            &fast,
        );
        gauge(
            &mut out,
            "gpushare_word_bridges",
            "Semaphores whose memop word the daemon bridges (a live session signals them through \
             the semaphore alone).",
            d.bridges.len() as f64,
        );
        gauge(
            &mut out,
            "gpushare_pending_waits",
            "Host waits pending in the wait service (Wait calls, fd.sock waits and wait points).",
            d.waits.pending_waits() as f64,
        );
        let wakeups: Vec<(String, f64)> = d
            .waits
            .wakeups()
            .iter()
            .map(|(by, n)| (format!("by=\"{}\"", by.label()), *n as f64))
            .collect();
        labeled(
            &mut out,
            "gpushare_wait_wakeups_total",
            "counter",
            "Host waits completed, by what noticed the value: driver (a vkWaitSemaphores thread), \
             poll (the poller's periodic read), notify (a read the daemon asked for), spin (the \
             poller's continuous reads while an fd.sock wait that asked to spin is young).",
            &wakeups,
        );
        gauge(
            &mut out,
            "gpushare_driver_waits_active",
            "1 while driver-wait threads serve host waits, 0 when waits are only polled.",
            if d.waits.driver_waits_active() {
                1.0
            } else {
                0.0
            },
        );
        gauge(
            &mut out,
            "gpushare_wait_poller_relaxed",
            "1 while the driver waits complete the host waits first and the poller only \
             backstops them at a tenth of its cadence; 0 while it polls tightly.",
            if d.waits.poller_relaxed() { 1.0 } else { 0.0 },
        );
        gauge(
            &mut out,
            "gpushare_export_tickets_outstanding",
            "Export tickets issued and not yet redeemed or expired.",
            d.tickets.len() as f64,
        );
        labeled(
            &mut out,
            "gpushare_export_tickets_issued_total",
            "counter",
            "Export tickets issued (successful Export calls).",
            &[(String::new(), self.exports.load(Ordering::Relaxed) as f64)],
        );
        labeled(
            &mut out,
            "gpushare_descriptors_sent_total",
            "counter",
            "Descriptors sent on fd.sock (redeemed tickets and direct exports; a semaphore's word \
             buffer counts as one more).",
            &[(
                String::new(),
                d.descriptors_sent.load(Ordering::Relaxed) as f64,
            )],
        );
        gauge(
            &mut out,
            "gpushare_grpc_calls_in_flight",
            "gRPC calls whose handler has not returned yet.",
            in_flight as f64,
        );
        gauge(
            &mut out,
            "gpushare_grpc_calls_parked",
            "gRPC calls in flight that are parked in a host wait (not counted against \
             quotas.calls_in_flight or calls_in_flight_per_uid).",
            parked as f64,
        );
        labeled(
            &mut out,
            "gpushare_grpc_calls_shed_total",
            "counter",
            "gRPC calls and fd.sock requests refused at once with RESOURCE_EXHAUSTED because \
             quotas.calls_in_flight calls, or calls_in_flight_per_uid of the caller's uid, were \
             in flight (load shedding).",
            &[(String::new(), shed as f64)],
        );
        // Load shedding counts itself (`InFlight::admit` takes no lock).
        let refused: Vec<(String, f64)> = crate::quota::refusals()
            .into_iter()
            .chain(
                [
                    (
                        crate::inflight::SHED_QUOTA,
                        shed.saturating_sub(shed_per_uid),
                    ),
                    (crate::inflight::SHED_PER_UID_QUOTA, shed_per_uid),
                ]
                .into_iter()
                .filter(|&(_, n)| n > 0)
                .map(|(what, n)| (what, n as u64)),
            )
            .map(|(what, n)| (format!("quota=\"{what}\""), n as f64))
            .collect();
        labeled(
            &mut out,
            "gpushare_quota_refusals_total",
            "counter",
            "Requests and connections refused because a quota would be exceeded, by quota.",
            &refused,
        );

        let methods = lock(&self.methods).clone();
        let label = |(s, m): &(String, String)| {
            format!("service=\"{}\",method=\"{}\"", escape(s), escape(m))
        };
        let calls: Vec<_> = methods
            .iter()
            .map(|(k, v)| (label(k), v.calls as f64))
            .collect();
        let errors: Vec<_> = methods
            .iter()
            .map(|(k, v)| (label(k), v.errors as f64))
            .collect();
        labeled(
            &mut out,
            "gpushare_grpc_calls_total",
            "counter",
            "gRPC calls received, per method.",
            &calls,
        );
        labeled(
            &mut out,
            "gpushare_grpc_call_errors_total",
            "counter",
            "gRPC calls that returned an error status at once, per method.",
            &errors,
        );
        let name = "gpushare_grpc_call_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a call's arrival to its response headers, per method.\n# TYPE {name} histogram"
        );
        for (key, stats) in &methods {
            let l = label(key);
            for (bound, count) in LATENCY_BUCKETS.iter().zip(stats.buckets) {
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", stats.calls);
            let _ = writeln!(out, "{name}_sum{{{l}}} {}", stats.sum_seconds);
            let _ = writeln!(out, "{name}_count{{{l}}} {}", stats.calls);
        }
        out
    }
}

impl Metrics {
    /// Per stream: frames presented, producer stalls, consumers, frames dropped for mailbox
    /// consumers, frames per second, whether it ended.
    fn render_streams(&self, out: &mut String, d: &Daemon) {
        let streams = d.streams(None);
        gauge(
            out,
            "gpushare_streams",
            "Live frame streams.",
            streams.len() as f64,
        );
        let mut rows: [Vec<(String, f64)>; 6] = Default::default();
        for (snap, s) in &streams {
            let v = s.view();
            let l = format!(
                "stream=\"{}\",name=\"{}\"",
                escape(&snap.resource.id),
                escape(&snap.resource.name)
            );
            let dropped: u64 = v.consumers.iter().map(|c| c.view.dropped).sum();
            let values = [
                v.presented as f64,
                v.stalls as f64,
                v.consumers.len() as f64,
                dropped as f64,
                v.fps,
                if v.ended.is_some() { 1.0 } else { 0.0 },
            ];
            for (row, value) in rows.iter_mut().zip(values) {
                row.push((l.clone(), value));
            }
        }
        let [presented, stalls, consumers, dropped, fps, ended] = rows;
        labeled(
            out,
            "gpushare_stream_frames_presented_total",
            "counter",
            "Frames presented per stream.",
            &presented,
        );
        labeled(
            out,
            "gpushare_stream_producer_stalls_total",
            "counter",
            "Producer acquires that found no free slot and waited, per stream.",
            &stalls,
        );
        labeled(
            out,
            "gpushare_stream_consumers",
            "gauge",
            "Attached consumers per stream.",
            &consumers,
        );
        labeled(out, "gpushare_stream_frames_dropped_total", "counter", "Frames dropped for mailbox consumers (a newer frame replaced one not acquired), per stream.", &dropped);
        labeled(
            out,
            "gpushare_stream_fps",
            "gauge",
            "Frames presented per second lately, per stream.",
            &fps,
        );
        labeled(
            out,
            "gpushare_stream_ended",
            "gauge",
            "1 once a stream's producer left (it ended).",
            &ended,
        );
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

fn labeled(out: &mut String, name: &str, kind: &str, help: &str, values: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in values {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Tower layer that records per-method calls in a [`Metrics`]; `None`
/// records nothing (the endpoint is off).
#[derive(Debug, Clone)]
pub(crate) struct MetricsLayer(pub Option<Arc<Metrics>>);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`MetricsLayer`] wraps around the router.
#[derive(Debug, Clone)]
pub(crate) struct MetricsService<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

impl<S, B, R> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return Box::pin(self.inner.call(req));
        };
        let path = req.uri().path().to_owned();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            let status = match &out {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .map(|v| v.to_str().unwrap_or("2").to_owned()),
                Err(_) => Some("2".to_owned()),
            };
            metrics.record(&path, status.as_deref(), start.elapsed());
            out
        })
    }
}

/// A bound metrics listener. A Unix socket's file is removed when it is dropped.
#[derive(Debug)]
pub(crate) struct Endpoint {
    listener: Listener,
    addr: MetricsAddr,
}

#[derive(Debug)]
enum Listener {
    Unix(tokio::net::UnixListener, PathBuf),
    Tcp(tokio::net::TcpListener),
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Why the metrics endpoint could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}")]
pub(crate) struct BindError {
    /// The address.
    pub(crate) addr: MetricsAddr,
    /// Why.
    #[source]
    pub(crate) source: std::io::Error,
}

impl Endpoint {
    /// Binds `addr`. A Unix socket gets permission bits `mode`; a stale socket at its path is
    /// replaced, any other file there is an error. Must be called inside a tokio runtime.
    pub(crate) fn bind(addr: &MetricsAddr, mode: u32) -> Result<Self, BindError> {
        let err = |source| BindError {
            addr: addr.clone(),
            source,
        };
        let listener = match addr {
            MetricsAddr::Tcp(a) => {
                let std = std::net::TcpListener::bind(a).map_err(err)?;
                std.set_nonblocking(true).map_err(err)?;
                Listener::Tcp(tokio::net::TcpListener::from_std(std).map_err(err)?)
            }
            MetricsAddr::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.file_type().is_socket() => {
                        std::fs::remove_file(path).map_err(err)?
                    }
                    Ok(_) => {
                        return Err(err(std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            "a file that is not a socket is in the way",
                        )))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(err(e)),
                }
                let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(!mode & 0o777));
                let bound = tokio::net::UnixListener::bind(path);
                rustix::process::umask(old);
                let l = bound.map_err(err)?;
                let l = Listener::Unix(l, path.clone());
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(err)?;
                l
            }
        };
        Ok(Self {
            listener,
            addr: addr.clone(),
        })
    }

    /// The address, as configured (TCP port 0 is shown as bound).
    pub(crate) fn addr(&self) -> MetricsAddr {
        match &self.listener {
            Listener::Tcp(l) => l
                .local_addr()
                .map(MetricsAddr::Tcp)
                .unwrap_or_else(|_| self.addr.clone()),
            Listener::Unix(..) => self.addr.clone(),
        }
    }
}

/// How long a scraper has to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Scrapes served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8;

/// Serves the endpoint until `shutdown` is cancelled. `render` produces the body.
pub(crate) async fn serve(
    endpoint: Endpoint,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted: std::io::Result<Box<dyn Conn>> = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = accept(&endpoint.listener) => c,
        };
        match accepted {
            Ok(conn) => {
                let render = render.clone();
                tokio::spawn(async move {
                    if let Err(e) = respond(conn, render).await {
                        tracing::debug!(error = %e, "metrics connection failed");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

async fn accept(listener: &Listener) -> std::io::Result<Box<dyn Conn>> {
    Ok(match listener {
        Listener::Unix(l, _) => Box::new(l.accept().await?.0),
        Listener::Tcp(l) => Box::new(l.accept().await?.0),
    })
}

/// The answer to one request: `/metrics` renders, `/` says where they are, any other path is
/// 404 and any other method 405.
fn answer(
    req: &http::Request<hyper::body::Incoming>,
    render: &(dyn Fn() -> String + Send + Sync),
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let get = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
    let (status, content_type, body) = match (get, req.uri().path()) {
        (true, "/metrics") => (
            http::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(),
        ),
        (true, "/") => (
            http::StatusCode::OK,
            "text/plain; charset=utf-8",
            "gpushared metrics: GET /metrics\n".to_owned(),
        ),
        (true, _) => (
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
        (false, _) => (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        ),
    };
    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

/// Serves one connection with hyper's HTTP/1.1 server: one request (no keep-alive: a scrape
/// is one request every few seconds), its head within [`REQUEST_TIMEOUT`] and hyper's buffer
/// limit, HEAD answered without a body.
async fn respond(
    conn: Box<dyn Conn>,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::result::Result<(), hyper::Error> {
    let service = hyper::service::service_fn(move |req| {
        let response = answer(&req, &*render);
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .title_case_headers(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labelled_only_for_known_services() {
        let m = Metrics::default();
        m.record(
            "/gpushare.v1.GpuShare/CreateBuffer",
            None,
            Duration::from_micros(70),
        );
        m.record(
            "/gpushare.v1.GpuShare/Export",
            Some("0"),
            Duration::from_micros(70),
        );
        m.record(
            "/gpushare.v1.GpuShare/Export",
            Some("5"),
            Duration::from_millis(3),
        );
        m.record(
            "/gpushare.v1.GpuShare/Nope",
            Some(UNIMPLEMENTED),
            Duration::ZERO,
        );
        m.record("/evil\"service/x", Some(UNIMPLEMENTED), Duration::ZERO);
        let methods = lock(&m.methods).clone();
        let keys: Vec<_> = methods.keys().map(|(s, m)| format!("{s}/{m}")).collect();
        assert_eq!(
            keys,
            [
                "gpushare.v1.GpuShare/CreateBuffer",
                "gpushare.v1.GpuShare/Export",
                "other/other"
            ]
        );
        let export = &methods[&("gpushare.v1.GpuShare".into(), "Export".into())];
        assert_eq!((export.calls, export.errors), (2, 1));
        // 70 µs is above the 50 µs bucket and within the 100 µs one; 3 ms within 5 ms.
        assert_eq!(export.buckets[0], 0);
        assert_eq!(export.buckets[1], 1);
        assert_eq!(export.buckets[6], 2);
        assert_eq!(m.exports.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// One request per connection, answered by hyper: the metrics, 404 and 405, HEAD without
    /// a body, title-case headers, the connection closed after the answer.
    #[tokio::test]
    async fn requests_get_their_answers_and_the_connection_closes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(|| "gpushare_up 1\n".into());
        for (request, status, body) in [
            (
                "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "200 OK",
                "gpushare_up 1\n",
            ),
            ("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK", ""),
            (
                "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
                "404 Not Found",
                "not found\n",
            ),
            (
                "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                "405 Method Not Allowed",
                "only GET\n",
            ),
        ] {
            let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
            let served = tokio::spawn(respond(Box::new(server), render.clone()));
            client.write_all(request.as_bytes()).await.unwrap();
            let mut reply = String::new();
            client.read_to_string(&mut reply).await.unwrap();
            served.await.unwrap().unwrap();
            let (head, got) = reply.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
            assert!(head.contains("Content-Type: text/plain"), "{head}");
            assert_eq!(got, body, "{request:?}");
        }
    }
}
