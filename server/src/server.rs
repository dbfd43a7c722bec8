//! Wiring: the gRPC server on control.sock (GpuShare, health, reflection v1 and v1alpha), the
//! fd.sock server, and graceful shutdown.
//!
//! [`run`] takes bound listeners and a shutdown future, so tests and socket activation hand it
//! sockets and the binary hands it SIGTERM/SIGINT. On shutdown: health turns NOT_SERVING, no new
//! connection is accepted, waits and watches end with UNAVAILABLE, calls in flight finish with
//! their sessions still open (bounded by [`DRAIN_TIMEOUT`]), then the session streams end, the
//! executors stop and every resource is freed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gpushare_proto::fdpass::SeqPacketListener;
use gpushare_proto::v1::gpu_share_server::GpuShareServer;
use tokio::net::UnixListener;
use tokio_util::task::TaskTracker;

use crate::connections::InFlightLayer;
use crate::daemon::Daemon;
use crate::metrics::{Metrics, MetricsLayer};
use crate::service::Service;

/// How long calls in flight may take to finish once shutdown began.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// Time for the last responses to reach their sockets once no call is in flight.
const FLUSH_GRACE: Duration = Duration::from_millis(100);

/// Largest gRPC message in either direction.
pub(crate) const MAX_GRPC_MESSAGE: usize = 64 << 20;

/// Why the server stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Grpc(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves gRPC on `control` and fd.sock on `fd`, and the Prometheus endpoint on `metrics` when
/// given (see [`crate::metrics`]; gRPC calls are recorded only then), until `shutdown`
/// resolves; then drains and stops.
pub(crate) async fn run(
    d: Arc<Daemon>,
    control: UnixListener,
    fd: SeqPacketListener,
    metrics: Option<crate::metrics::Endpoint>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GpuShareServer<Service>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gpushare_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gpushare_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let service = GpuShareServer::new(Service::new(d.clone()))
        .max_decoding_message_size(MAX_GRPC_MESSAGE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE);

    // Shutdown fan-out: health, waits, session streams (they watch the token).
    let token = d.shutdown.clone();
    tokio::spawn({
        let d = d.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = d.shutdown.cancelled() => {}
            }
            tracing::info!("shutting down: draining calls in flight");
            health.set_not_serving::<GpuShareServer<Service>>().await;
            // Waits and watches first, so that they end with UNAVAILABLE rather than seeing
            // their semaphores freed by the session streams that the token ends.
            let waits = d.waits.clone();
            let _ = tokio::task::spawn_blocking(move || waits.shutdown()).await;
            d.shutdown.cancel();
        }
    });

    let fd_tasks = TaskTracker::new();
    let fd_server = tokio::spawn(crate::fd_server::serve(d.clone(), fd, fd_tasks.clone()));

    let in_flight = d.in_flight.clone();
    let recorder = metrics.as_ref().map(|_| Arc::new(Metrics::default()));
    let metrics_server = metrics.map(|endpoint| {
        let (d, in_flight) = (d.clone(), in_flight.clone());
        let recorder = recorder.clone().unwrap_or_default();
        tracing::info!(listen = %endpoint.addr(), "serving metrics");
        tokio::spawn(crate::metrics::serve(
            endpoint,
            Arc::new(move || recorder.render(&d, &in_flight)),
            token.clone(),
        ))
    });
    let grpc = tonic::transport::Server::builder()
        .layer(InFlightLayer(in_flight.clone()))
        .layer(MetricsLayer(recorder))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(crate::connections::admitted(d.clone(), control), {
            let token = token.clone();
            async move { token.cancelled().await }
        });
    tracing::info!("serving");
    let served = tokio::select! {
        r = grpc => r,
        _ = async {
            // Idle client connections would hold tonic's graceful close open; calls in flight
            // are what must finish.
            token.cancelled().await;
            if !in_flight.drained(DRAIN_TIMEOUT).await {
                tracing::warn!(calls = in_flight.count(), timeout_s = DRAIN_TIMEOUT.as_secs(), "calls still in flight after the drain timeout; stopping anyway");
            }
            d.sessions_end.cancel();
            tokio::time::sleep(FLUSH_GRACE).await;
        } => Ok(()),
    };
    // However serving ended: waits end (UNAVAILABLE) before the token, so that fd.sock waits
    // answer before their connections close.
    let waits = d.waits.clone();
    let _ = tokio::task::spawn_blocking(move || waits.shutdown()).await;
    token.cancel();
    d.sessions_end.cancel();
    let _ = fd_server.await;
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    fd_tasks.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, fd_tasks.wait()).await;
    d.clear();
    tracing::info!("stopped");
    served.map_err(ServeError::from)
}
