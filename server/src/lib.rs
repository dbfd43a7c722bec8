//! gpushared, the gpushare daemon: owns the GPU's Vulkan device, allocates exportable buffers
//! and timeline semaphores, hands their descriptors to client processes over fd.sock, serves the
//! gRPC control API on control.sock, and sequences host signal and wait.
//!
//! Module map: [`config`] (settings), [`runtime_dir`] (lock + sockets), [`server`] (wiring and
//! shutdown), [`service`] (gRPC handlers), [`ops`] (daemon-executed operations),
//! [`executor`] (GPU execution), [`waiter`] (host waits), [`registry`] (resources and
//! sessions), [`tickets`] and [`fd_server`] (descriptor export), [`error`] (status codes),
//! [`systemd`] (socket activation, readiness, journald), [`introspect`] (session and semaphore
//! listings) and [`metrics`] (Prometheus endpoint).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod buffer;
pub mod cli;
pub mod config;
pub mod connections;
pub mod daemon;
pub mod devices;
pub mod error;
pub mod executor;
pub mod fd_server;
pub mod host_buffer;
pub mod ids;
pub mod image;
pub mod inflight;
pub mod introspect;
mod log_budget;
pub mod metrics;
pub mod ops;
pub mod peer;
pub mod quota;
pub mod registry;
pub mod runtime_dir;
mod semaphore;
pub mod server;
pub mod service;
pub mod systemd;
pub mod tickets;
mod waits;
