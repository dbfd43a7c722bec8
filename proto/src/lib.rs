//! Everything on gpushare's wire: the `gpushare.v1` gRPC service and fd-socket messages
//! (generated from `gpushare/v1/gpushare.proto`), the encoded descriptor set for reflection, and
//! [`fdpass`], the SEQPACKET + SCM_RIGHTS framing that the daemon and every client share.
//!
//! This crate holds no policy: no tickets, no GPU code, no sessions.

pub mod codec;
pub mod fdpass;

/// Generated protobuf messages and tonic client/server for `gpushare.v1`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("gpushare.v1");
    include!(concat!(env!("OUT_DIR"), "/decode_failure.rs"));
}

/// The encoded `FileDescriptorSet` of `gpushare.v1`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gpushare_descriptor");

/// Metadata header that names the caller's client session on control-socket calls.
pub const SESSION_HEADER: &str = "x-gpushare-session";

/// File name of the gRPC socket inside the runtime directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// File name of the descriptor socket inside the runtime directory.
pub const FD_SOCKET: &str = "fd.sock";
/// Length of an export ticket in bytes.
pub const TICKET_LEN: usize = 16;
