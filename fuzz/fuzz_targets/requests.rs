//! Request validation that runs before any lookup or GPU work: gRPC messages decoded from any
//! bytes, then the checks the handlers apply to their fields (ranges, names, ids, device
//! selectors, configuration text). Nothing may panic, whatever the input.
#![no_main]

use gpushare_proto::v1;
use gpushare_server::{config, daemon, devices, executor, ids, image, ops};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 7 {
        0 => {
            if let Ok(w) = v1::WriteRequest::decode(rest) {
                let _ = ops::check_range("buffer", w.offset, w.data.len() as u64, u64::MAX / 2);
                if let Some(h) = w.from_host {
                    let _ = ops::check_range("host buffer", h.offset, h.length, 1 << 30);
                    let _ = ids::is_well_formed(&h.host_buffer_id, daemon::HOST_BUFFER_PREFIX);
                }
                let _ = ids::is_well_formed(&w.buffer_id, "buf");
            }
        }
        1 => {
            if let Ok(c) = v1::CopyRequest::decode(rest) {
                let _ = ops::check_range("source", c.src_offset, c.length, 4096);
                let _ = ops::check_range("destination", c.dst_offset, c.length, 4096);
            }
        }
        2 => {
            if let Ok(o) = v1::OpenRequest::decode(rest) {
                if let Some(v1::open_request::Target::Named(n)) = o.target {
                    let _ = daemon::Daemon::check_name("name", &n.name);
                }
            }
        }
        5 => {
            // An image request: its shape, then a region, a clear color and a mip range
            // against it.
            let (head, tail) = rest.split_at(rest.len().min(64));
            if let Ok(c) = v1::CreateImageRequest::decode(head) {
                if let Ok(desc) = image::requested_desc(&c) {
                    let _ = desc.total_size();
                    if let Ok(w) = v1::WriteImageRequest::decode(tail) {
                        if let Ok(region) = image::region(&desc, w.region.as_ref()) {
                            let _ = region.size(desc.format);
                            let _ = executor::image_pieces(&region, desc.format.texel_size());
                        }
                    }
                    if let Ok(k) = v1::ClearImageRequest::decode(tail) {
                        if let Ok(color) = image::clear_color(&desc, &k.float_color, &k.uint_color) {
                            let _ = image::texel_bytes(desc.format, color);
                        }
                    }
                    if let Ok(m) = v1::GenerateMipsRequest::decode(tail) {
                        let _ = image::mip_range(&desc, &m);
                    }
                }
            }
        }
        3 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = devices::parse_selection(s);
            }
        }
        4 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                if let Ok(c) = config::Config::from_toml(s, std::path::Path::new("fuzz.toml")) {
                    let _ = c.validate();
                }
            }
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = ids::shown(s);
                let _ = ids::is_well_formed(s, "sem");
            }
        }
    }
});
