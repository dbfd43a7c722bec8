//! The fuzz targets' entry points (`fuzz/`): everything that parses what a client sends, before
//! any lookup or GPU work. None of them may panic, whatever the bytes; each returns whether its
//! input was accepted, and a refusal is always INVALID_ARGUMENT (checked here, so that a fuzz
//! run fails on a wrong code as on a panic).
//!
//! Not here: anything that needs a device or a running daemon.

use gpushare_proto::v1;
use prost::Message;

use crate::buffer::BUFFER_PREFIX;
use crate::config::Config;
use crate::daemon::{ops, Daemon};
use crate::error::{Error, Result};
use crate::host_buffer::HOST_BUFFER_PREFIX;
use crate::semaphore::SEMAPHORE_PREFIX;
use crate::{executor, ids, image, requests, selection};

/// Panics unless `r` is accepted or refused with INVALID_ARGUMENT.
fn invalid_or_ok<T>(r: Result<T>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
            false
        }
    }
}

/// One fd.sock message: parsed into a well-formed request, or refused with INVALID_ARGUMENT.
pub fn fd_request(data: &[u8]) -> bool {
    invalid_or_ok(crate::fd_server::parse_request(data))
}

/// Request fields checked before anything is looked up, picked by the first byte: a Write's
/// and a Copy's ranges and ids, an Open's name, an image's shape and then a region, a clear
/// color and a mip range against it, a device selector, a configuration file, ids.
pub fn request_fields(data: &[u8]) -> bool {
    let Some((&selector, rest)) = data.split_first() else {
        return false;
    };
    let text = || std::str::from_utf8(rest).ok();
    match selector % 7 {
        0 => v1::WriteRequest::decode(rest).is_ok_and(|w| {
            let mut ok = invalid_or_ok(ops::check_range(
                "buffer",
                w.offset,
                w.data.len() as u64,
                u64::MAX / 2,
            ));
            if let Some(h) = w.from_host {
                ok &= invalid_or_ok(ops::check_range("host buffer", h.offset, h.length, 1 << 30));
                ok &= ids::is_well_formed(&h.host_buffer_id, HOST_BUFFER_PREFIX);
            }
            ok & ids::is_well_formed(&w.buffer_id, BUFFER_PREFIX)
        }),
        1 => v1::CopyRequest::decode(rest).is_ok_and(|c| {
            invalid_or_ok(ops::check_range("source", c.src_offset, c.length, 4096))
                & invalid_or_ok(ops::check_range(
                    "destination",
                    c.dst_offset,
                    c.length,
                    4096,
                ))
        }),
        2 => v1::OpenRequest::decode(rest).is_ok_and(|o| {
            let name = match &o.target {
                Some(v1::open_request::Target::Named(n)) => Some(n.name.clone()),
                _ => None,
            };
            let ok = invalid_or_ok(requests::open_target(o.target));
            ok & name.is_none_or(|n| invalid_or_ok(Daemon::check_name("name", &n)))
        }),
        3 => text().is_some_and(|s| selection::parse_selection(s).is_ok()),
        4 => text().is_some_and(|s| {
            Config::from_toml(s, std::path::Path::new("fuzz.toml"))
                .is_ok_and(|c| c.validate().is_ok())
        }),
        5 => image_fields(rest),
        _ => text().is_some_and(|s| {
            let _ = ids::shown(s);
            let _ = Daemon::check_name("name", s);
            ids::is_well_formed(s, SEMAPHORE_PREFIX)
        }),
    }
}

/// An image request's shape (the first 64 bytes), then a region, a clear color and a mip
/// range against it (the rest).
fn image_fields(data: &[u8]) -> bool {
    let (head, tail) = data.split_at(data.len().min(64));
    let Ok(c) = v1::CreateImageRequest::decode(head) else {
        return false;
    };
    let Ok(desc) = requests::image_desc(&c).inspect_err(assert_invalid) else {
        return false;
    };
    let _ = desc.total_size();
    if let Ok(w) = v1::WriteImageRequest::decode(tail) {
        if let Ok(region) = requests::region(&desc, w.region.as_ref()).inspect_err(assert_invalid) {
            let _ = region.size(desc.format);
            let _ = executor::image_pieces(&region, desc.format.texel_size());
        }
    }
    if let Ok(k) = v1::ClearImageRequest::decode(tail) {
        if let Ok(color) =
            requests::clear_color(&desc, &k.float_color, &k.uint_color).inspect_err(assert_invalid)
        {
            let _ = image::texel_bytes(desc.format, color);
        }
    }
    if let Ok(m) = v1::GenerateMipsRequest::decode(tail) {
        let _ = requests::mip_range(&desc, &m).inspect_err(assert_invalid);
    }
    true
}

fn assert_invalid(e: &Error) {
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few inputs of each kind, accepted and refused, so that the entry points are known to
    /// reach what they should before any fuzzing.
    #[test]
    fn entry_points_accept_and_refuse() {
        let buf = ids::new_id(BUFFER_PREFIX);
        let export = v1::FdRequest {
            request: Some(v1::fd_request::Request::Export(buf.clone())),
            word: true,
        };
        assert!(fd_request(&export.encode_to_vec()));
        assert!(!fd_request(b"\xff garbage"));
        let write = v1::WriteRequest {
            buffer_id: buf,
            offset: 8,
            data: vec![1; 8],
            ..Default::default()
        };
        let mut bytes = vec![0];
        bytes.extend(write.encode_to_vec());
        assert!(request_fields(&bytes));
        assert!(request_fields(b"\x03auto"));
        assert!(!request_fields(b"\x03nonsense"));
        let image = v1::CreateImageRequest {
            format: v1::ImageFormat::Rgba8Unorm as i32,
            kind: v1::ImageKind::ImageKind2d as i32,
            width: 8,
            height: 8,
            ..Default::default()
        };
        let mut bytes = vec![5];
        bytes.extend(image.encode_to_vec());
        assert!(request_fields(&bytes));
        assert!(!request_fields(&[]));
    }
}
