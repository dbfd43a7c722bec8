//! Images on the wire: formats and kinds, an image's details, and its import metadata.
//!
//! Not here: what image requests ask for (`requests`).

use gpushare_interop::image::{ImageFormat, ImageKind};
use gpushare_interop::vulkan::{vk, ExportableImage};
use gpushare_proto::v1;

/// The wire value of a format.
pub(crate) fn format_msg(format: ImageFormat) -> i32 {
    format.code() as i32
}

/// The wire value of a kind.
pub(crate) fn kind_msg(kind: ImageKind) -> i32 {
    match kind {
        ImageKind::D2 => v1::ImageKind::ImageKind2d as i32,
        ImageKind::D3 => v1::ImageKind::ImageKind3d as i32,
    }
}

/// The wire description of an image (Resource.image).
pub(crate) fn details_msg(i: &ExportableImage) -> v1::ImageDetails {
    let d = i.desc();
    v1::ImageDetails {
        format: format_msg(d.format),
        kind: kind_msg(d.kind),
        width: d.width,
        height: d.height,
        depth: d.depth,
        mip_levels: d.mip_levels,
        array_layers: d.array_layers,
        usage: i.usage(),
        allocation_size: i.allocation_size(),
    }
}

/// What an importer needs besides the descriptor (ExportedFd.image).
pub(crate) fn import_msg(i: &ExportableImage) -> v1::ImageImport {
    let d = i.desc();
    v1::ImageImport {
        format: format_msg(d.format),
        kind: kind_msg(d.kind),
        width: d.width,
        height: d.height,
        depth: d.depth,
        mip_levels: d.mip_levels,
        array_layers: d.array_layers,
        usage: i.usage(),
        allocation_size: i.allocation_size(),
        dedicated: i.dedicated(),
        memory_type_index: i.memory_type_index(),
        vk_format: d.format.info().vk.as_raw() as u32,
        tiling: vk::ImageTiling::OPTIMAL.as_raw() as u32,
        layout: vk::ImageLayout::GENERAL.as_raw() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire enum and the format table agree, value for value.
    #[test]
    fn formats_match_the_wire_enum() {
        for f in ImageFormat::all() {
            let wire = v1::ImageFormat::try_from(format_msg(f)).unwrap();
            let name = wire
                .as_str_name()
                .trim_start_matches("IMAGE_FORMAT_")
                .replace('_', "");
            let ours = f.name().to_uppercase();
            assert_eq!(name, ours, "{f}");
        }
    }
}
