//! What the CLI prints: JSON values built by hand from the proto messages (prost messages do not
//! derive `Serialize`), and their human-readable tables.

use gpushare_client::v1;
use serde_json::{json, Value};

use crate::table::{human_size, uuid, Table};

/// A resource kind's short name.
pub fn kind_name(kind: i32) -> String {
    match v1::ResourceKind::try_from(kind) {
        Ok(v1::ResourceKind::Buffer) => "buffer".into(),
        Ok(v1::ResourceKind::Semaphore) => "semaphore".into(),
        Ok(v1::ResourceKind::HostBuffer) => "host_buffer".into(),
        Ok(v1::ResourceKind::Image) => "image".into(),
        Ok(v1::ResourceKind::Stream) => "stream".into(),
        Ok(v1::ResourceKind::Unspecified) => "unspecified".into(),
        Err(_) => format!("unknown({kind})"),
    }
}

/// An image format's name (`rgba8unorm`).
pub fn format_name(format: i32) -> String {
    u32::try_from(format)
        .ok()
        .and_then(gpushare_client::ImageFormat::from_code)
        .map_or_else(|| format!("unknown({format})"), |f| f.name().to_owned())
}

/// An image kind's short name.
pub fn image_kind_name(kind: i32) -> String {
    match v1::ImageKind::try_from(kind) {
        Ok(v1::ImageKind::ImageKind2d) => "2d".into(),
        Ok(v1::ImageKind::ImageKind3d) => "3d".into(),
        _ => format!("unknown({kind})"),
    }
}

/// An image's shape in one cell: `rgba8unorm 2d 64x32 mips 7 layers 3`.
fn image_shape(i: &v1::ImageDetails) -> String {
    let extent = if i.depth > 1 {
        format!("{}x{}x{}", i.width, i.height, i.depth)
    } else {
        format!("{}x{}", i.width, i.height)
    };
    let mut s = format!(
        "{} {} {extent}",
        format_name(i.format),
        image_kind_name(i.kind)
    );
    if i.mip_levels > 1 {
        s.push_str(&format!(" mips {}", i.mip_levels));
    }
    if i.array_layers > 1 {
        s.push_str(&format!(" layers {}", i.array_layers));
    }
    s
}

/// A handle type's short name.
pub fn handle_type_name(handle_type: i32) -> String {
    match v1::HandleType::try_from(handle_type) {
        Ok(v1::HandleType::OpaqueFd) => "opaque_fd".into(),
        Ok(v1::HandleType::DmaBuf) => "dma_buf".into(),
        Ok(v1::HandleType::Memfd) => "memfd".into(),
        Ok(v1::HandleType::Unspecified) => "unspecified".into(),
        Err(_) => format!("unknown({handle_type})"),
    }
}

fn handle_types(list: &[i32]) -> Vec<String> {
    list.iter().map(|&h| handle_type_name(h)).collect()
}

/// A device type's short name.
pub fn device_type_name(device_type: i32) -> String {
    match v1::DeviceType::try_from(device_type) {
        Ok(v1::DeviceType::Other) => "other".into(),
        Ok(v1::DeviceType::IntegratedGpu) => "integrated_gpu".into(),
        Ok(v1::DeviceType::DiscreteGpu) => "discrete_gpu".into(),
        Ok(v1::DeviceType::VirtualGpu) => "virtual_gpu".into(),
        Ok(v1::DeviceType::Cpu) => "cpu".into(),
        Ok(v1::DeviceType::Unspecified) => "unspecified".into(),
        Err(_) => format!("unknown({device_type})"),
    }
}

/// A resource as JSON.
pub fn resource_json(r: &v1::Resource) -> Value {
    let mut v = json!({
        "id": r.id,
        "kind": kind_name(r.kind),
        "name": r.name,
        "device": r.device,
        "owner_uid": r.owner_uid,
        "references": r.references,
        "pinned": r.pinned,
        "granted_uids": r.granted_uids,
        "granted_gids": r.granted_gids,
    });
    match &r.details {
        Some(v1::resource::Details::Buffer(b)) => {
            v["buffer"] = json!({
                "size": b.size,
                "allocation_size": b.allocation_size,
                "dedicated": b.dedicated,
            });
        }
        Some(v1::resource::Details::Semaphore(s)) => {
            v["semaphore"] = json!({
                "value": s.value,
                "exportable": s.exportable,
                "word": s.word,
                "word_unavailable": s.word_unavailable,
            });
        }
        Some(v1::resource::Details::HostBuffer(h)) => {
            v["host_buffer"] = json!({ "size": h.size, "registered": h.registered });
        }
        Some(v1::resource::Details::Image(i)) => {
            v["image"] = json!({
                "format": format_name(i.format),
                "kind": image_kind_name(i.kind),
                "width": i.width,
                "height": i.height,
                "depth": i.depth,
                "mip_levels": i.mip_levels,
                "array_layers": i.array_layers,
                "usage": i.usage,
                "allocation_size": i.allocation_size,
            });
        }
        None => {}
    }
    v
}

/// Resources as a table: one row each.
pub fn resources_table(resources: &[v1::Resource]) -> Table {
    let mut t = Table::new(["ID", "KIND", "NAME", "DEV", "SIZE/VALUE", "REFS", "PINNED"])
        .right(3)
        .right(4)
        .right(5);
    for r in resources {
        let detail = match &r.details {
            Some(v1::resource::Details::Buffer(b)) => human_size(b.size),
            Some(v1::resource::Details::Semaphore(s)) => s.value.to_string(),
            Some(v1::resource::Details::HostBuffer(h)) => human_size(h.size),
            Some(v1::resource::Details::Image(i)) => image_shape(i),
            None => "-".into(),
        };
        t.row([
            r.id.clone(),
            kind_name(r.kind),
            if r.name.is_empty() {
                "-".into()
            } else {
                r.name.clone()
            },
            r.device.to_string(),
            detail,
            r.references.to_string(),
            yes_no(r.pinned).into(),
        ]);
    }
    t
}

/// Images as a table: one row each (other resources are left out).
pub fn images_table(resources: &[v1::Resource]) -> Table {
    let mut t = Table::new([
        "ID", "NAME", "FORMAT", "KIND", "EXTENT", "MIPS", "LAYERS", "SIZE",
    ])
    .right(5)
    .right(6)
    .right(7);
    for r in resources {
        let Some(v1::resource::Details::Image(i)) = &r.details else {
            continue;
        };
        let extent = if i.kind == v1::ImageKind::ImageKind3d as i32 {
            format!("{}x{}x{}", i.width, i.height, i.depth)
        } else {
            format!("{}x{}", i.width, i.height)
        };
        t.row([
            r.id.clone(),
            if r.name.is_empty() {
                "-".into()
            } else {
                r.name.clone()
            },
            format_name(i.format),
            image_kind_name(i.kind),
            extent,
            i.mip_levels.to_string(),
            i.array_layers.to_string(),
            human_size(i.allocation_size),
        ]);
    }
    t
}

/// An image's shape as JSON (what `image create --json` prints).
pub fn image_desc_json(d: &gpushare_client::ImageDesc) -> Value {
    json!({
        "format": d.format.name(),
        "kind": match d.kind {
            gpushare_client::ImageKind::D2 => "2d",
            gpushare_client::ImageKind::D3 => "3d",
        },
        "width": d.width,
        "height": d.height,
        "depth": d.depth,
        "mip_levels": d.mip_levels,
        "array_layers": d.array_layers,
    })
}

/// One resource as key/value lines.
pub fn resource_table(r: &v1::Resource) -> Table {
    let mut t = Table::plain();
    t.row(["id", &r.id]);
    t.row(["kind", &kind_name(r.kind)]);
    t.row(["name", &r.name]);
    t.row(["device", &r.device.to_string()]);
    t.row(["owner uid", &r.owner_uid.to_string()]);
    t.row(["references", &r.references.to_string()]);
    t.row(["pinned", yes_no(r.pinned)]);
    let list = |v: &[u32]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    t.row(["granted uids", &list(&r.granted_uids)]);
    t.row(["granted gids", &list(&r.granted_gids)]);
    match &r.details {
        Some(v1::resource::Details::Buffer(b)) => {
            t.row(["size", &sized(b.size)]);
            t.row(["allocation size", &sized(b.allocation_size)]);
            t.row(["dedicated", yes_no(b.dedicated)]);
        }
        Some(v1::resource::Details::Semaphore(s)) => {
            t.row(["value", &s.value.to_string()]);
            t.row(["exportable", yes_no(s.exportable)]);
            if s.word {
                t.row(["memop word", "yes (the CUDA fast path)"]);
            } else if !s.word_unavailable.is_empty() {
                t.row(["memop word", &format!("none: {}", s.word_unavailable)]);
            }
        }
        Some(v1::resource::Details::HostBuffer(h)) => {
            t.row(["size", &sized(h.size)]);
            t.row(["page-locked", yes_no(h.registered)]);
        }
        Some(v1::resource::Details::Image(i)) => {
            t.row(["image", &image_shape(i)]);
            t.row(["usage", &format!("{:#x}", i.usage)]);
            t.row(["allocation size", &sized(i.allocation_size)]);
        }
        None => {}
    }
    t
}

/// `GetInfo` as JSON.
pub fn info_json(info: &v1::GetInfoResponse) -> Value {
    let limits = info.limits.unwrap_or_default();
    json!({
        "daemon_version": info.daemon_version,
        "executor": info.executor,
        "cuda_driver_version": info.cuda_driver_version,
        "limits": {
            "max_buffer_size": limits.max_buffer_size,
            "max_transfer_size": limits.max_transfer_size,
            "ticket_ttl_ms": limits.ticket_ttl_ms,
            "max_wait_timeout_ms": limits.max_wait_timeout_ms,
            "max_host_buffer_size": limits.max_host_buffer_size,
        },
        "stats": info.stats.map(|s| json!({
            "live_resources": s.live_resources,
            "live_sessions": s.live_sessions,
            "pending_waits": s.pending_waits,
            "outstanding_tickets": s.outstanding_tickets,
        })),
        "devices": info.devices.iter().map(device_json).collect::<Vec<_>>(),
    })
}

fn device_json(d: &v1::DeviceInfo) -> Value {
    let caps = d.capabilities.clone().unwrap_or_default();
    json!({
        "index": d.index,
        "vulkan_index": d.vulkan_index,
        "executor": d.executor,
        "fast_path": d.fast_path.as_ref().map(|f| json!({
            "offered": f.offered,
            "unavailable": f.unavailable,
        })),
        "name": d.name,
        "vendor_id": d.vendor_id,
        "device_id": d.device_id,
        "device_type": device_type_name(d.device_type),
        "driver_name": d.driver_name,
        "driver_info": d.driver_info,
        "device_uuid": uuid(&d.device_uuid),
        "driver_uuid": uuid(&d.driver_uuid),
        "api_version": d.api_version,
        "memory_heaps": d.memory_heaps.iter()
            .map(|h| json!({ "size": h.size, "device_local": h.device_local }))
            .collect::<Vec<_>>(),
        "capabilities": {
            "buffer_export": handle_types(&caps.buffer_export),
            "buffer_import": handle_types(&caps.buffer_import),
            "timeline_semaphore_export": handle_types(&caps.timeline_semaphore_export),
            "timeline_semaphore_import": handle_types(&caps.timeline_semaphore_import),
        },
        "image_formats": d.image_formats.iter().map(|&f| format_name(f)).collect::<Vec<_>>(),
        "cuda": d.cuda.as_ref().map(|c| json!({
            "ordinal": c.ordinal,
            "name": c.name,
            "compute_capability": format!("{}.{}", c.compute_capability_major, c.compute_capability_minor),
            "match_method": match_method_name(c.match_method),
        })),
    })
}

fn match_method_name(m: i32) -> &'static str {
    match v1::MatchMethod::try_from(m) {
        Ok(v1::MatchMethod::Uuid) => "uuid",
        Ok(v1::MatchMethod::Name) => "name (fallback)",
        Ok(v1::MatchMethod::FirstCapable) => "first capable (fallback)",
        _ => "unknown",
    }
}

/// `GetInfo` as text: the daemon's key/values, then one block per device.
pub fn info_text(info: &v1::GetInfoResponse) -> String {
    let limits = info.limits.unwrap_or_default();
    let mut t = Table::plain();
    t.row(["daemon version", &info.daemon_version]);
    t.row(["executor", &info.executor]);
    let cuda_driver = if info.cuda_driver_version.is_empty() {
        "none"
    } else {
        &info.cuda_driver_version
    };
    t.row(["cuda driver", cuda_driver]);
    t.row(["max buffer size", &sized(limits.max_buffer_size)]);
    t.row(["max transfer size", &sized(limits.max_transfer_size)]);
    t.row(["ticket ttl", &format!("{} ms", limits.ticket_ttl_ms)]);
    t.row([
        "max wait timeout",
        &format!("{} ms", limits.max_wait_timeout_ms),
    ]);
    t.row(["max host buffer size", &sized(limits.max_host_buffer_size)]);
    let mut out = t.render();
    for d in &info.devices {
        let caps = d.capabilities.clone().unwrap_or_default();
        let list = |l: &[i32]| {
            let names = handle_types(l);
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        let heaps: Vec<String> = d
            .memory_heaps
            .iter()
            .map(|h| {
                format!(
                    "{}{}",
                    human_size(h.size),
                    if h.device_local {
                        " (device-local)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        let mut t = Table::plain();
        t.row(["name", &d.name]);
        t.row(["type", &device_type_name(d.device_type)]);
        t.row(["vulkan index", &d.vulkan_index.to_string()]);
        t.row(["executor", &d.executor]);
        let fast = d.fast_path.clone().unwrap_or_default();
        t.row([
            "CUDA fast path",
            &if fast.offered {
                "offered".to_owned()
            } else {
                format!("not offered: {}", fast.unavailable)
            },
        ]);
        t.row([
            "vendor:device",
            &format!("{:04x}:{:04x}", d.vendor_id, d.device_id),
        ]);
        t.row(["driver", &format!("{} {}", d.driver_name, d.driver_info)]);
        t.row(["api version", &d.api_version]);
        t.row(["device uuid", &uuid(&d.device_uuid)]);
        t.row(["driver uuid", &uuid(&d.driver_uuid)]);
        t.row(["memory heaps", &heaps.join(", ")]);
        t.row(["buffer export", &list(&caps.buffer_export)]);
        t.row(["buffer import", &list(&caps.buffer_import)]);
        t.row(["semaphore export", &list(&caps.timeline_semaphore_export)]);
        t.row(["semaphore import", &list(&caps.timeline_semaphore_import)]);
        let formats: Vec<String> = d.image_formats.iter().map(|&f| format_name(f)).collect();
        t.row([
            "image formats",
            &if formats.is_empty() {
                "none".to_owned()
            } else {
                formats.join(", ")
            },
        ]);
        let cuda = match &d.cuda {
            Some(c) => format!(
                "{} {} (cc {}.{}), matched by {}",
                c.ordinal,
                c.name,
                c.compute_capability_major,
                c.compute_capability_minor,
                match_method_name(c.match_method)
            ),
            None => "none".to_owned(),
        };
        t.row(["cuda device", &cuda]);
        out.push_str(&format!("\ndevice {}:\n", d.index));
        for line in t.render().lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Exported descriptor metadata as JSON.
pub fn exported_json(e: &v1::ExportedFd) -> Value {
    let mut v = json!({
        "resource_id": e.resource_id,
        "kind": kind_name(e.kind),
        "handle_type": handle_type_name(e.handle_type),
        "device_uuid": uuid(&e.device_uuid),
        "driver_uuid": uuid(&e.driver_uuid),
    });
    match &e.details {
        Some(v1::exported_fd::Details::Buffer(b)) => {
            v["buffer"] = json!({
                "size": b.size,
                "allocation_size": b.allocation_size,
                "dedicated": b.dedicated,
                "memory_type_index": b.memory_type_index,
                "usage": b.usage,
            });
        }
        Some(v1::exported_fd::Details::Semaphore(s)) => {
            v["semaphore"] = json!({ "timeline": s.timeline, "value": s.value });
        }
        Some(v1::exported_fd::Details::HostBuffer(h)) => {
            v["host_buffer"] = json!({ "size": h.size });
        }
        Some(v1::exported_fd::Details::Image(i)) => {
            v["image"] = json!({
                "format": format_name(i.format),
                "kind": image_kind_name(i.kind),
                "width": i.width,
                "height": i.height,
                "depth": i.depth,
                "mip_levels": i.mip_levels,
                "array_layers": i.array_layers,
                "usage": i.usage,
                "allocation_size": i.allocation_size,
                "dedicated": i.dedicated,
                "memory_type_index": i.memory_type_index,
                "vk_format": i.vk_format,
                "tiling": i.tiling,
                "layout": i.layout,
            });
        }
        None => {}
    }
    v
}

/// Exported descriptor metadata as key/value lines.
pub fn exported_table(e: &v1::ExportedFd) -> Table {
    let mut t = Table::plain();
    t.row(["resource", &e.resource_id]);
    t.row(["kind", &kind_name(e.kind)]);
    t.row(["handle type", &handle_type_name(e.handle_type)]);
    t.row(["device uuid", &uuid(&e.device_uuid)]);
    t.row(["driver uuid", &uuid(&e.driver_uuid)]);
    match &e.details {
        Some(v1::exported_fd::Details::Buffer(b)) => {
            t.row(["size", &sized(b.size)]);
            t.row(["allocation size", &sized(b.allocation_size)]);
            t.row(["dedicated", yes_no(b.dedicated)]);
            t.row(["memory type", &b.memory_type_index.to_string()]);
            t.row(["usage", &format!("{:#x}", b.usage)]);
        }
        Some(v1::exported_fd::Details::Semaphore(s)) => {
            t.row(["timeline", yes_no(s.timeline)]);
            t.row(["value", &s.value.to_string()]);
        }
        Some(v1::exported_fd::Details::HostBuffer(h)) => {
            t.row(["size", &sized(h.size)]);
        }
        Some(v1::exported_fd::Details::Image(i)) => {
            t.row(["format", &format_name(i.format)]);
            t.row(["kind", &image_kind_name(i.kind)]);
            t.row(["extent", &format!("{}x{}x{}", i.width, i.height, i.depth)]);
            t.row(["mip levels", &i.mip_levels.to_string()]);
            t.row(["array layers", &i.array_layers.to_string()]);
            t.row(["usage", &format!("{:#x}", i.usage)]);
            t.row(["allocation size", &sized(i.allocation_size)]);
            t.row(["dedicated", yes_no(i.dedicated)]);
            t.row(["memory type", &i.memory_type_index.to_string()]);
            t.row(["vk format", &i.vk_format.to_string()]);
            let tiling = match i.tiling {
                0 => "optimal".to_owned(),
                t => format!("VkImageTiling {t}"),
            };
            t.row(["tiling", &tiling]);
            let layout = match i.layout {
                1 => "general".to_owned(),
                l => format!("VkImageLayout {l}"),
            };
            t.row(["layout", &layout]);
        }
        None => {}
    }
    t
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Bytes, exact and human: `1048576 (1 MiB)`.
fn sized(bytes: u64) -> String {
    format!("{bytes} ({})", human_size(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> v1::Resource {
        v1::Resource {
            id: "b1".into(),
            kind: v1::ResourceKind::Buffer as i32,
            name: "frames".into(),
            device: 0,
            owner_uid: 1000,
            references: 2,
            pinned: true,
            details: Some(v1::resource::Details::Buffer(v1::BufferDetails {
                size: 4096,
                allocation_size: 8192,
                dedicated: false,
            })),
            granted_uids: vec![1001],
            granted_gids: Vec::new(),
            stream_id: String::new(),
        }
    }

    #[test]
    fn resource_as_json() {
        let v = resource_json(&buffer());
        assert_eq!(v["kind"], "buffer");
        assert_eq!(v["buffer"]["allocation_size"], 8192);
        assert_eq!(v["pinned"], true);
        assert!(v.get("semaphore").is_none());
    }

    #[test]
    fn resources_as_table() {
        let sem = v1::Resource {
            id: "s22".into(),
            kind: v1::ResourceKind::Semaphore as i32,
            references: 1,
            details: Some(v1::resource::Details::Semaphore(v1::SemaphoreDetails {
                value: 17,
                exportable: false,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            resources_table(&[buffer(), sem]).render(),
            "ID   KIND       NAME    DEV  SIZE/VALUE  REFS  PINNED\n\
             b1   buffer     frames    0       4 KiB     2  yes\n\
             s22  semaphore  -         0          17     1  no\n"
        );
    }

    fn image(id: &str, kind: v1::ImageKind, depth: u32, layers: u32) -> v1::Resource {
        v1::Resource {
            id: id.into(),
            kind: v1::ResourceKind::Image as i32,
            references: 1,
            pinned: true,
            details: Some(v1::resource::Details::Image(v1::ImageDetails {
                format: v1::ImageFormat::Rgba8Unorm as i32,
                kind: kind as i32,
                width: 37,
                height: 21,
                depth,
                mip_levels: 3,
                array_layers: layers,
                usage: 0xf,
                allocation_size: 6656,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn images_as_table_and_json() {
        let mut named = image("img-2", v1::ImageKind::ImageKind3d, 5, 1);
        named.name = "volume".into();
        assert_eq!(
            images_table(&[
                image("img-1", v1::ImageKind::ImageKind2d, 1, 2),
                buffer(),
                named
            ])
            .render(),
            "ID     NAME    FORMAT      KIND  EXTENT   MIPS  LAYERS     SIZE\n\
             img-1  -       rgba8unorm  2d    37x21       3       2  6.5 KiB\n\
             img-2  volume  rgba8unorm  3d    37x21x5     3       1  6.5 KiB\n"
        );
        let v = resource_json(&image("img-1", v1::ImageKind::ImageKind2d, 1, 2));
        assert_eq!(v["kind"], "image");
        assert_eq!(v["image"]["format"], "rgba8unorm");
        assert_eq!(v["image"]["array_layers"], 2);
        let desc = gpushare_client::ImageDesc {
            format: gpushare_client::ImageFormat::R16Float,
            kind: gpushare_client::ImageKind::D3,
            width: 8,
            height: 4,
            depth: 2,
            mip_levels: 2,
            array_layers: 1,
        };
        let v = image_desc_json(&desc);
        assert_eq!(
            (v["format"].as_str(), v["kind"].as_str()),
            (Some("r16float"), Some("3d"))
        );
        assert_eq!(v["depth"], 2);
    }

    #[test]
    fn unknown_enum_values_are_named() {
        assert_eq!(kind_name(9), "unknown(9)");
        assert_eq!(handle_type_name(1), "opaque_fd");
        assert_eq!(device_type_name(5), "cpu");
    }
}
