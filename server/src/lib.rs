//! gpushared, the gpushare daemon: owns the GPUs' Vulkan devices (and CUDA devices where
//! present), allocates exportable buffers, images and timeline semaphores, hands their
//! descriptors to client processes over fd.sock, serves the gRPC control API on control.sock,
//! and sequences host signal and wait. The binary's `main` calls [`cli::main`]; [`fuzzing`]
//! exposes the request parsers to the fuzz targets. Nothing else is public.
//!
//! # Layers
//!
//! Modules are listed bottom-up; a module may import only modules listed above it (a test,
//! `layers_point_down`, reads this table and the `use crate::` lines of every file, and fails
//! on an import that points up or sideways down the list). `docs/ARCHITECTURE.md` describes
//! each module, what it may call, and four requests walked through them.
//!
//! | layer | modules | what they are |
//! |---|---|---|
//! | 0 | error, ids, log_budget, peer, selection, config, runtime_dir, systemd | foundations: status codes, ids, settings, sockets' directory, service-manager glue |
//! | 1 | buffer, host_buffer, image, word, semaphore | the shared objects and the rules of their state |
//! | 2 | waits, executor, stream | host waits on semaphores; GPU work on buffers and images; frame streams' booking |
//! | 3 | quota, resource, usage, access, session, tickets, inflight, devices, requests | what a resource is, who may use it, what it costs; sessions, tickets, call admission; devices; request fields |
//! | 4 | registry | the table of resources and sessions |
//! | 5 | daemon | the daemon's state and use cases (creation, lifetime, waits, export, operations, introspection) |
//! | 6 | wire | domain values as `gpushare.v1` messages |
//! | 7 | connections, service, fd_server, metrics | the adapters: control.sock admission, gRPC, fd.sock, Prometheus |
//! | 8 | server, cli, fuzzing | wiring and shutdown; the process; the fuzz targets' entry points |
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(unreachable_pub)]

mod config;
mod error;
mod ids;
mod log_budget;
mod peer;
mod runtime_dir;
mod selection;
mod systemd;

mod buffer;
mod host_buffer;
mod image;
mod semaphore;
mod word;

mod executor;
mod stream;
mod waits;

mod access;
mod devices;
mod inflight;
mod quota;
mod requests;
mod resource;
mod session;
mod tickets;
mod usage;

mod registry;

mod daemon;

mod wire;

mod connections;
mod fd_server;
mod metrics;
mod service;

pub mod cli;
pub mod fuzzing;
mod server;

#[cfg(test)]
mod layers;
