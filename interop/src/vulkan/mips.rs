//! Mip generation: levels of an image filtered down, each from the one before it, with
//! `vkCmdBlitImage` in one submission of the transfer engine (like the operations of
//! `image_transfer.rs`, whose acquire and release it shares).
//!
//! What a blit does, and so what the levels hold:
//! - Each level is one blit of the whole previous level onto the whole of it, every layer of
//!   the range at once. 2D levels halve in width and height, 3D levels in depth too; a dimension
//!   already 1 stays 1. With an odd dimension the blit scales by a little more than 2 and
//!   filters over the whole source, as every blit-based mip chain does.
//! - The filter ([`MipFilter`]) is linear for unorm, float and sRGB formats: a 2x2 (2x2x2 in 3D)
//!   box average for even sizes. Blits read sRGB formats as linear values and write them back
//!   encoded, so the average is taken in linear light: a black and white checkerboard becomes
//!   188, not 128. Integer (uint) formats cannot be filtered linearly (Vulkan forbids it: their
//!   values are not intensities); they get the nearest filter: each texel is one texel of its
//!   2x2 (2x2x2) block of the level before, never a mix of them.
//!
//! Everything the driver could refuse is checked first, with an error naming the format and what
//! is missing (`Error::Unsupported`): the format's optimal-tiling features (`BLIT_SRC`,
//! `BLIT_DST`, and `SAMPLED_IMAGE_FILTER_LINEAR` for the linear filter) and the queue (blits are
//! graphics commands). The image stays in `VK_IMAGE_LAYOUT_GENERAL` throughout: source and
//! destination levels are both used in that layout, each blit waits for the one that wrote its
//! source level (a transfer write → transfer read barrier on that level).
//!
//! Not here: who asks for it and when (the daemon's executors), which levels a request names
//! (the daemon checks and fills in its fields, [`MipRange`] is already explicit).

use ash::vk;

use super::device::Device;
use super::error::{Error, Result};
use super::image::DeviceImage;
use super::image_transfer::record_around;
use super::transfer::{StagingUse, SyncPoints, Transfer};
use crate::image::{ChannelKind, ImageFormat};

/// How each level is filtered from the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MipFilter {
    /// `VK_FILTER_LINEAR`: unorm, float and sRGB formats (sRGB averaged in linear light).
    Linear,
    /// `VK_FILTER_NEAREST`: integer formats, which cannot be filtered linearly.
    Nearest,
}

impl MipFilter {
    /// The filter for `format`: linear, except nearest for the integer formats.
    pub fn for_format(format: ImageFormat) -> MipFilter {
        match format.info().kind {
            ChannelKind::Unsigned => MipFilter::Nearest,
            ChannelKind::UnsignedNormalized | ChannelKind::Float => MipFilter::Linear,
        }
    }

    fn vk(self) -> vk::Filter {
        match self {
            MipFilter::Linear => vk::Filter::LINEAR,
            MipFilter::Nearest => vk::Filter::NEAREST,
        }
    }
}

/// Which levels to generate, over which layers: levels `base_level + 1 ..= base_level +
/// levels`, each from the one before it (the first from `base_level`), in layers `base_layer ..
/// base_layer + layers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MipRange {
    /// The level the others are made from.
    pub base_level: u32,
    /// How many levels after it are generated (at least 1).
    pub levels: u32,
    /// First array layer.
    pub base_layer: u32,
    /// Number of layers (at least 1).
    pub layers: u32,
}

/// The format features a filter needs of the source and destination (optimal tiling).
fn needed_features(filter: MipFilter) -> [(vk::FormatFeatureFlags, &'static str); 3] {
    let linear = match filter {
        MipFilter::Linear => vk::FormatFeatureFlags::SAMPLED_IMAGE_FILTER_LINEAR,
        MipFilter::Nearest => vk::FormatFeatureFlags::empty(),
    };
    [
        (vk::FormatFeatureFlags::BLIT_SRC, "BLIT_SRC"),
        (vk::FormatFeatureFlags::BLIT_DST, "BLIT_DST"),
        (linear, "SAMPLED_IMAGE_FILTER_LINEAR (a linear filter)"),
    ]
}

/// What `features` lacks for `filter`, by name.
fn missing_features(features: vk::FormatFeatureFlags, filter: MipFilter) -> Vec<&'static str> {
    needed_features(filter)
        .into_iter()
        .filter(|(flag, _)| !features.contains(*flag))
        .map(|(_, name)| name)
        .collect()
}

impl Device {
    /// The optimal-tiling features of `format` on this device.
    fn optimal_tiling_features(&self, format: vk::Format) -> vk::FormatFeatureFlags {
        // SAFETY: the physical device was enumerated from this device's live instance; any
        // VkFormat value may be queried (core 1.0).
        let props = unsafe {
            self.instance()
                .raw()
                .get_physical_device_format_properties(self.physical().handle, format)
        };
        props.optimal_tiling_features
    }

    /// How this device generates mips of `format` ([`MipFilter::for_format`]), or
    /// [`Error::Unsupported`] naming the format and what is missing: its queue has no graphics
    /// capability (blits are graphics commands), or the format's optimal-tiling features lack
    /// `BLIT_SRC`, `BLIT_DST` or, for a linear filter, `SAMPLED_IMAGE_FILTER_LINEAR`.
    pub fn mip_filter(&self, format: ImageFormat) -> Result<MipFilter> {
        let name = &self.info().name;
        if !self.queue_flags().contains(vk::QueueFlags::GRAPHICS) {
            return Err(Error::Unsupported(format!(
                "mip generation on {name}: blits need a graphics queue, and the device's queue \
                 (family {}, flags {:?}) has none",
                self.queue_family_index(),
                self.queue_flags()
            )));
        }
        let filter = MipFilter::for_format(format);
        let missing = missing_features(self.optimal_tiling_features(format.info().vk), filter);
        if !missing.is_empty() {
            return Err(Error::Unsupported(format!(
                "mip generation of {format} images on {name}: the format's optimal-tiling \
                 features lack {}",
                missing.join(", ")
            )));
        }
        Ok(filter)
    }
}

/// The offsets of a whole level (from the origin to its far corner).
fn level_box(extent: (u32, u32, u32)) -> Result<[vk::Offset3D; 2]> {
    let coord = |v: u32| {
        i32::try_from(v)
            .map_err(|_| Error::InvalidImage(format!("a level extent {v} is beyond i32")))
    };
    Ok([
        vk::Offset3D::default(),
        vk::Offset3D {
            x: coord(extent.0)?,
            y: coord(extent.1)?,
            z: coord(extent.2)?,
        },
    ])
}

impl Transfer {
    /// Generates levels `range.base_level + 1 ..= range.base_level + range.levels` of `image`,
    /// each filtered from the one before it (see the module docs), in `range`'s layers; other
    /// levels and layers are untouched.
    ///
    /// [`Error::OutOfRange`] for a range outside the image (no level to generate, levels past
    /// the last, layers past the last); [`Error::Unsupported`] for what the device cannot do
    /// ([`Device::mip_filter`]).
    pub fn generate_mips(
        &mut self,
        image: &dyn DeviceImage,
        range: &MipRange,
        sync: &SyncPoints<'_>,
    ) -> Result<()> {
        self.check_image(
            "mip image",
            image,
            vk::ImageUsageFlags::TRANSFER_SRC | vk::ImageUsageFlags::TRANSFER_DST,
        )?;
        let desc = *image.desc();
        // Levels base_level + 1 ..= base_level + levels must exist.
        let last = u64::from(range.base_level) + u64::from(range.levels);
        if range.levels == 0 || last >= u64::from(desc.mip_levels) {
            return Err(Error::OutOfRange {
                what: "generated mip levels",
                offset: u64::from(range.base_level) + 1,
                len: range.levels.into(),
                size: desc.mip_levels.into(),
            });
        }
        if range.layers == 0
            || u64::from(range.base_layer) + u64::from(range.layers) > u64::from(desc.array_layers)
        {
            return Err(Error::OutOfRange {
                what: "mip layers",
                offset: range.base_layer.into(),
                len: range.layers.into(),
                size: desc.array_layers.into(),
            });
        }
        let filter = self.device().mip_filter(desc.format)?.vk();
        let layers = |level| vk::ImageSubresourceLayers {
            aspect_mask: vk::ImageAspectFlags::COLOR,
            mip_level: level,
            base_array_layer: range.base_layer,
            layer_count: range.layers,
        };
        let mut blits = Vec::new();
        for level in range.base_level + 1..=range.base_level + range.levels {
            blits.push(
                vk::ImageBlit::default()
                    .src_subresource(layers(level - 1))
                    .src_offsets(level_box(desc.level_extent(level - 1))?)
                    .dst_subresource(layers(level))
                    .dst_offsets(level_box(desc.level_extent(level))?),
            );
        }
        let family = self.device().queue_family_index();
        let raw = image.raw();
        self.run(sync, vec![image.retain()], StagingUse::None, |dev, cmd| {
            record_around(
                dev,
                cmd,
                image,
                family,
                vk::ImageLayout::GENERAL,
                vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE,
                || {
                    for (i, blit) in blits.iter().enumerate() {
                        if i > 0 {
                            // The previous blit wrote this one's source level.
                            let written = vk::ImageMemoryBarrier::default()
                                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                                .dst_access_mask(vk::AccessFlags::TRANSFER_READ)
                                .old_layout(vk::ImageLayout::GENERAL)
                                .new_layout(vk::ImageLayout::GENERAL)
                                .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                                .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                                .image(raw)
                                .subresource_range(vk::ImageSubresourceRange {
                                    aspect_mask: vk::ImageAspectFlags::COLOR,
                                    base_mip_level: blit.src_subresource.mip_level,
                                    level_count: 1,
                                    base_array_layer: range.base_layer,
                                    layer_count: range.layers,
                                });
                            // SAFETY: `cmd` is recording; the barrier names a live image of
                            // this device and a level and layers within it (checked above).
                            unsafe {
                                dev.cmd_pipeline_barrier(
                                    cmd,
                                    vk::PipelineStageFlags::TRANSFER,
                                    vk::PipelineStageFlags::TRANSFER,
                                    vk::DependencyFlags::empty(),
                                    &[],
                                    &[],
                                    &[written],
                                )
                            }
                        }
                        // SAFETY: `cmd` is recording on a queue with graphics capability
                        // (mip_filter checked it); the image is live, single-sampled, with
                        // TRANSFER_SRC and TRANSFER_DST usage, in GENERAL after the acquire; its
                        // format has BLIT_SRC, BLIT_DST and, for a linear filter,
                        // SAMPLED_IMAGE_FILTER_LINEAR (checked above); source and destination
                        // are two different levels (no overlap), each box the whole level, the
                        // same layers in both.
                        unsafe {
                            dev.cmd_blit_image(
                                cmd,
                                raw,
                                vk::ImageLayout::GENERAL,
                                raw,
                                vk::ImageLayout::GENERAL,
                                std::slice::from_ref(blit),
                                filter,
                            )
                        }
                    }
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_formats_get_the_nearest_filter_the_rest_linear() {
        for format in ImageFormat::all() {
            let want = if format.info().kind == ChannelKind::Unsigned {
                MipFilter::Nearest
            } else {
                MipFilter::Linear
            };
            assert_eq!(MipFilter::for_format(format), want, "{format}");
        }
    }

    #[test]
    fn missing_features_are_named() {
        let blit = vk::FormatFeatureFlags::BLIT_SRC | vk::FormatFeatureFlags::BLIT_DST;
        let all = blit | vk::FormatFeatureFlags::SAMPLED_IMAGE_FILTER_LINEAR;
        assert!(missing_features(all, MipFilter::Linear).is_empty());
        assert!(missing_features(blit, MipFilter::Nearest).is_empty());
        assert_eq!(
            missing_features(blit, MipFilter::Linear),
            ["SAMPLED_IMAGE_FILTER_LINEAR (a linear filter)"]
        );
        assert_eq!(
            missing_features(vk::FormatFeatureFlags::BLIT_SRC, MipFilter::Nearest),
            ["BLIT_DST"]
        );
    }

    #[test]
    fn level_boxes_span_whole_levels() {
        let b = level_box((5, 3, 1)).unwrap();
        assert_eq!((b[0].x, b[0].y, b[0].z), (0, 0, 0));
        assert_eq!((b[1].x, b[1].y, b[1].z), (5, 3, 1));
        assert!(matches!(
            level_box((u32::MAX, 1, 1)),
            Err(Error::InvalidImage(_))
        ));
    }
}
