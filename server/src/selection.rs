//! The `device` setting: which Vulkan devices the daemon serves, parsed before anything is
//! opened (configuration checks use it; `devices` resolves it against the machine).

use gpushare_interop::vulkan::DeviceSelector;

/// Why a device selector string is invalid.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid device selector {0:?}: expected \"auto\", \"all\", or a comma-separated list of \
     indexes and 32-hex-digit UUIDs"
)]
pub(crate) struct BadSelector(pub(crate) String);

/// Which devices the daemon serves (the `device` setting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Every GPU (every device with timeline semaphores that is not a CPU driver); when there
    /// is none, the first usable device (lavapipe on a machine without a GPU).
    Auto,
    /// Every device with timeline semaphores, CPU drivers included.
    All,
    /// These devices, in this order (daemon index 0, 1, ...).
    List(Vec<DeviceSelector>),
}

/// Parses one selector: an index, or a UUID (dashes allowed).
fn parse_one(s: &str) -> Option<DeviceSelector> {
    let s = s.trim();
    if let Ok(index) = s.parse::<u32>() {
        return Some(DeviceSelector::Index(index));
    }
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let mut uuid = [0u8; 16];
    hex::decode_to_slice(&hex, &mut uuid).ok()?;
    Some(DeviceSelector::Uuid(uuid))
}

/// Parses the `device` setting: `auto`, `all`, or a comma-separated list of indexes and UUIDs.
pub(crate) fn parse_selection(s: &str) -> Result<Selection, BadSelector> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(Selection::Auto);
    }
    if t.eq_ignore_ascii_case("all") {
        return Ok(Selection::All);
    }
    let list: Option<Vec<DeviceSelector>> = t.split(',').map(parse_one).collect();
    match list {
        Some(list) if !list.is_empty() => Ok(Selection::List(list)),
        _ => Err(BadSelector(s.to_owned())),
    }
}
