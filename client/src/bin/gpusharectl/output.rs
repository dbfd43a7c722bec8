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
        Ok(v1::ResourceKind::Unspecified) => "unspecified".into(),
        Err(_) => format!("unknown({kind})"),
    }
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
            v["semaphore"] = json!({ "value": s.value, "exportable": s.exportable });
        }
        Some(v1::resource::Details::HostBuffer(h)) => {
            v["host_buffer"] = json!({ "size": h.size, "registered": h.registered });
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
        }
        Some(v1::resource::Details::HostBuffer(h)) => {
            t.row(["size", &sized(h.size)]);
            t.row(["page-locked", yes_no(h.registered)]);
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

    #[test]
    fn unknown_enum_values_are_named() {
        assert_eq!(kind_name(9), "unknown(9)");
        assert_eq!(handle_type_name(1), "opaque_fd");
        assert_eq!(device_type_name(5), "cpu");
    }
}
