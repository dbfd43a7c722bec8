//! The transfer engine's image operations: prepare (first use), upload and download of a region,
//! and clear. Each is one submission, like the buffer operations in `transfer.rs`.
//!
//! Images rest in `VK_IMAGE_LAYOUT_GENERAL` (see `image.rs`). Every submission acquires the
//! image from `VK_QUEUE_FAMILY_EXTERNAL` before its commands and releases it back after them, so
//! that other processes and APIs sharing the memory see the writes.
//!
//! Bytes are tightly packed: rows of the region's width, then its height in rows, then its depth
//! in slices, then its layers (`ImageRegion::size`).

use ash::vk;

use super::error::{Error, Result};
use super::image::DeviceImage;
use super::transfer::{StagingUse, SyncPoints, Transfer};
use crate::image::{ChannelKind, ImageRegion};

/// A clear color: floats for normalized and float formats, unsigned integers for the integer
/// formats (missing channels are 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClearColor {
    /// For unorm and float formats.
    Float([f32; 4]),
    /// For uint formats.
    Uint([u32; 4]),
}

/// Every level and layer.
fn whole(image: &dyn DeviceImage) -> vk::ImageSubresourceRange {
    vk::ImageSubresourceRange {
        aspect_mask: vk::ImageAspectFlags::COLOR,
        base_mip_level: 0,
        level_count: vk::REMAINING_MIP_LEVELS,
        base_array_layer: 0,
        layer_count: image.desc().array_layers,
    }
}

/// The barrier that hands the image between the external world and this queue, in `GENERAL`
/// (from `old` when it is the image's first use).
fn handover(
    image: &dyn DeviceImage,
    family: u32,
    acquire: bool,
    old: vk::ImageLayout,
    access: vk::AccessFlags,
) -> vk::ImageMemoryBarrier<'static> {
    let (src_family, dst_family) = if old == vk::ImageLayout::UNDEFINED {
        // Nothing to acquire: the contents are discarded.
        (vk::QUEUE_FAMILY_IGNORED, vk::QUEUE_FAMILY_IGNORED)
    } else if acquire {
        (vk::QUEUE_FAMILY_EXTERNAL, family)
    } else {
        (family, vk::QUEUE_FAMILY_EXTERNAL)
    };
    let (src_access, dst_access) = if acquire {
        (vk::AccessFlags::empty(), access)
    } else {
        (access, vk::AccessFlags::empty())
    };
    vk::ImageMemoryBarrier::default()
        .src_access_mask(src_access)
        .dst_access_mask(dst_access)
        .old_layout(old)
        .new_layout(vk::ImageLayout::GENERAL)
        .src_queue_family_index(src_family)
        .dst_queue_family_index(dst_family)
        .image(image.raw())
        .subresource_range(whole(image))
}

/// Records `commands` between an acquire of `image` and its release, with `access` the
/// commands' transfer access.
pub(super) fn record_around(
    dev: &ash::Device,
    cmd: vk::CommandBuffer,
    image: &dyn DeviceImage,
    family: u32,
    old: vk::ImageLayout,
    access: vk::AccessFlags,
    commands: impl FnOnce(),
) {
    let acquire = handover(image, family, true, old, access);
    let release = handover(image, family, false, vk::ImageLayout::GENERAL, access);
    // SAFETY: `cmd` is recording; the barriers name a live image of this device with valid
    // subresource ranges; GENERAL is valid for transfers.
    unsafe {
        dev.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TOP_OF_PIPE,
            vk::PipelineStageFlags::TRANSFER,
            vk::DependencyFlags::empty(),
            &[],
            &[],
            &[acquire],
        );
    }
    commands();
    // SAFETY: as above.
    unsafe {
        dev.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::BOTTOM_OF_PIPE,
            vk::DependencyFlags::empty(),
            &[],
            &[],
            &[release],
        );
    }
}

fn copy_region(region: &ImageRegion) -> vk::BufferImageCopy {
    vk::BufferImageCopy {
        buffer_offset: 0,
        buffer_row_length: 0,
        buffer_image_height: 0,
        image_subresource: vk::ImageSubresourceLayers {
            aspect_mask: vk::ImageAspectFlags::COLOR,
            mip_level: region.level,
            base_array_layer: region.base_layer,
            layer_count: region.layers,
        },
        image_offset: vk::Offset3D {
            x: region.x as i32,
            y: region.y as i32,
            z: region.z as i32,
        },
        image_extent: vk::Extent3D {
            width: region.width,
            height: region.height,
            depth: region.depth,
        },
    }
}

impl Transfer {
    /// An image argument must live on this engine's device and have `usage`.
    pub(super) fn check_image(
        &self,
        what: &'static str,
        image: &dyn DeviceImage,
        usage: vk::ImageUsageFlags,
    ) -> Result<()> {
        if !std::sync::Arc::ptr_eq(image.device(), self.device()) {
            return Err(Error::WrongDevice { what });
        }
        if !image.usage().contains(usage) {
            return Err(Error::MissingUsage {
                usage: image.usage().as_raw(),
                needed: usage.as_raw(),
            });
        }
        Ok(())
    }

    /// Moves a new image (layout `UNDEFINED`, as created) to `GENERAL` and zeroes every level
    /// and layer, so that no importer ever reads what the memory held before.
    pub fn prepare_image(&mut self, image: &dyn DeviceImage) -> Result<()> {
        self.check_image("image", image, vk::ImageUsageFlags::TRANSFER_DST)?;
        let family = self.device().queue_family_index();
        let raw = image.raw();
        let range = whole(image);
        let zero = vk::ClearColorValue { uint32: [0; 4] };
        self.run(
            &SyncPoints::default(),
            vec![image.retain()],
            StagingUse::None,
            |dev, cmd| {
                record_around(
                    dev,
                    cmd,
                    image,
                    family,
                    vk::ImageLayout::UNDEFINED,
                    vk::AccessFlags::TRANSFER_WRITE,
                    // SAFETY: `cmd` is recording on a graphics or compute queue (the device
                    // picks one where it has one; lavapipe and NVIDIA do); the image is live,
                    // in GENERAL after the acquire, with TRANSFER_DST usage; the range is the
                    // whole image.
                    || unsafe {
                        dev.cmd_clear_color_image(
                            cmd,
                            raw,
                            vk::ImageLayout::GENERAL,
                            &zero,
                            &[range],
                        )
                    },
                )
            },
        )
    }

    /// Writes `data` (tightly packed, `region.size` bytes) into `region` of `dst`.
    pub fn upload_image(
        &mut self,
        dst: &dyn DeviceImage,
        region: &ImageRegion,
        data: &[u8],
        sync: &SyncPoints<'_>,
    ) -> Result<()> {
        self.check_image("upload destination", dst, vk::ImageUsageFlags::TRANSFER_DST)?;
        check_region(dst, region, data.len() as u64)?;
        let family = self.device().queue_family_index();
        let staging = self.staging(data.len() as u64)?;
        staging.write(data);
        let s = staging.buffer();
        let d = dst.raw();
        let copy = copy_region(region);
        self.run(sync, vec![dst.retain()], StagingUse::Used, |dev, cmd| {
            record_around(
                dev,
                cmd,
                dst,
                family,
                vk::ImageLayout::GENERAL,
                vk::AccessFlags::TRANSFER_WRITE,
                // SAFETY: `cmd` is recording; the staging buffer holds the region's bytes,
                // written by the host before submission; the image is live with TRANSFER_DST
                // usage, in GENERAL, and the region lies within it (checked above).
                || unsafe {
                    dev.cmd_copy_buffer_to_image(cmd, s, d, vk::ImageLayout::GENERAL, &[copy])
                },
            )
        })
    }

    /// Reads `region` of `src`, tightly packed.
    pub fn download_image(
        &mut self,
        src: &dyn DeviceImage,
        region: &ImageRegion,
        sync: &SyncPoints<'_>,
    ) -> Result<Vec<u8>> {
        self.check_image("download source", src, vk::ImageUsageFlags::TRANSFER_SRC)?;
        let len = region.size(src.desc().format);
        check_region(src, region, len)?;
        let family = self.device().queue_family_index();
        let staging = self.staging(len)?.buffer();
        let s = src.raw();
        let copy = copy_region(region);
        self.run(sync, vec![src.retain()], StagingUse::Used, |dev, cmd| {
            record_around(
                dev,
                cmd,
                src,
                family,
                vk::ImageLayout::GENERAL,
                vk::AccessFlags::TRANSFER_READ,
                // SAFETY: `cmd` is recording; the image is live with TRANSFER_SRC usage, in
                // GENERAL, the region within it; the staging buffer holds at least `len` bytes.
                || unsafe {
                    dev.cmd_copy_image_to_buffer(cmd, s, vk::ImageLayout::GENERAL, staging, &[copy])
                },
            );
            let barrier = vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ);
            // SAFETY: `cmd` is recording; the barrier makes the copy visible to host reads
            // after the fence.
            unsafe {
                dev.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::HOST,
                    vk::DependencyFlags::empty(),
                    &[barrier],
                    &[],
                    &[],
                )
            }
        })?;
        Ok(self.staged(len))
    }

    /// Clears levels `base_level .. base_level + levels` and layers `base_layer .. + layers` of
    /// `dst` to `color`, which must suit the format (floats for unorm and float formats,
    /// integers for uint ones).
    #[allow(clippy::too_many_arguments)]
    pub fn clear_image(
        &mut self,
        dst: &dyn DeviceImage,
        base_level: u32,
        levels: u32,
        base_layer: u32,
        layers: u32,
        color: ClearColor,
        sync: &SyncPoints<'_>,
    ) -> Result<()> {
        self.check_image("clear destination", dst, vk::ImageUsageFlags::TRANSFER_DST)?;
        let desc = *dst.desc();
        let within = |base: u32, n: u32, total: u32| {
            n > 0 && u64::from(base) + u64::from(n) <= u64::from(total)
        };
        if !within(base_level, levels, desc.mip_levels) {
            return Err(Error::OutOfRange {
                what: "clear levels",
                offset: base_level.into(),
                len: levels.into(),
                size: desc.mip_levels.into(),
            });
        }
        if !within(base_layer, layers, desc.array_layers) {
            return Err(Error::OutOfRange {
                what: "clear layers",
                offset: base_layer.into(),
                len: layers.into(),
                size: desc.array_layers.into(),
            });
        }
        let value = match (color, desc.format.info().kind) {
            (ClearColor::Uint(v), ChannelKind::Unsigned) => vk::ClearColorValue { uint32: v },
            (ClearColor::Float(v), ChannelKind::Float | ChannelKind::UnsignedNormalized) => {
                vk::ClearColorValue { float32: v }
            }
            _ => {
                return Err(Error::InvalidImage(format!(
                    "a {} image is cleared with {} values",
                    desc.format,
                    match desc.format.info().kind {
                        ChannelKind::Unsigned => "unsigned integer",
                        _ => "float",
                    }
                )))
            }
        };
        let range = vk::ImageSubresourceRange {
            aspect_mask: vk::ImageAspectFlags::COLOR,
            base_mip_level: base_level,
            level_count: levels,
            base_array_layer: base_layer,
            layer_count: layers,
        };
        let family = self.device().queue_family_index();
        let d = dst.raw();
        self.run(sync, vec![dst.retain()], StagingUse::None, |dev, cmd| {
            record_around(
                dev,
                cmd,
                dst,
                family,
                vk::ImageLayout::GENERAL,
                vk::AccessFlags::TRANSFER_WRITE,
                // SAFETY: `cmd` is recording on a graphics or compute queue; the image is live
                // with TRANSFER_DST usage, in GENERAL; the range lies within it (checked above)
                // and the value's type suits the format.
                || unsafe {
                    dev.cmd_clear_color_image(cmd, d, vk::ImageLayout::GENERAL, &value, &[range])
                },
            )
        })
    }
}

/// The region must lie within the image and `len` be its packed size.
fn check_region(image: &dyn DeviceImage, region: &ImageRegion, len: u64) -> Result<()> {
    let desc = image.desc();
    region
        .validate(desc)
        .map_err(|e| Error::InvalidImage(e.to_string()))?;
    let expected = region.size(desc.format);
    if len != expected {
        return Err(Error::InvalidSize {
            what: "image region data",
            size: len,
            minimum: expected,
        });
    }
    Ok(())
}
