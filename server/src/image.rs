//! An image as the daemon holds it: the exportable Vulkan image, and its CUDA import (a
//! mipmapped array) when the CUDA executor has used it; and a clear color's texel bytes.
//!
//! Not here: image requests and replies on the wire (`wire::image`).

use std::sync::{Arc, OnceLock};

use gpushare_interop::cuda::{CudaDevice, ExternalMemory, MipmappedArray};
use gpushare_interop::image::{f32_to_f16, linear_to_srgb, ImageDesc, ImageFormat};
use gpushare_interop::vulkan::{ClearColor, ExportableImage};

use crate::buffer::CudaViewError;

/// The id prefix of images (`img-…`).
pub(crate) const IMAGE_PREFIX: &str = "img";

/// The daemon's image.
#[derive(Debug)]
pub(crate) struct SharedImage {
    // Declared first: dropped before the Vulkan memory it imports.
    cuda: OnceLock<Arc<MipmappedArray>>,
    vk: ExportableImage,
}

impl SharedImage {
    /// Wraps a freshly allocated (and prepared) image.
    pub(crate) fn new(vk: ExportableImage) -> Self {
        Self {
            cuda: OnceLock::new(),
            vk,
        }
    }

    /// The Vulkan image.
    pub(crate) fn vk(&self) -> &ExportableImage {
        &self.vk
    }

    /// What the image is.
    pub(crate) fn desc(&self) -> &ImageDesc {
        self.vk.desc()
    }

    /// The image as a CUDA mipmapped array in `device`'s context: exported from Vulkan and
    /// imported on first use, then kept until the image is freed. Called by the image's own
    /// device's CUDA executor thread only.
    pub(crate) fn cuda_array(
        &self,
        device: &Arc<CudaDevice>,
    ) -> std::result::Result<Arc<MipmappedArray>, CudaViewError> {
        if let Some(array) = self.cuda.get() {
            return Ok(array.clone());
        }
        let fd = self.vk.export_fd().map_err(CudaViewError::Export)?;
        let mem = ExternalMemory::import_opaque_fd(device, fd, self.vk.allocation_size(), true)?;
        let array = mem.mipmapped_array(self.vk.desc(), self.vk.usage())?;
        Ok(self.cuda.get_or_init(|| array).clone())
    }
}

/// The packed bytes of one texel of `color` in `format` (for executors that clear by copying),
/// as Vulkan's clear stores them: an sRGB format's color channels are encoded from the linear
/// values given, its alpha is not.
pub(crate) fn texel_bytes(format: ImageFormat, color: ClearColor) -> Vec<u8> {
    use gpushare_interop::image::ChannelKind;
    let info = format.info();
    let channels = info.channels as usize;
    let mut out = Vec::with_capacity(info.texel_size() as usize);
    for c in 0..channels {
        match (color, info.kind, info.bits) {
            (ClearColor::Uint(v), _, 8) => out.push(v[c].min(255) as u8),
            (ClearColor::Uint(v), _, 16) => out.extend((v[c].min(65535) as u16).to_le_bytes()),
            (ClearColor::Uint(v), _, _) => out.extend(v[c].to_le_bytes()),
            (ClearColor::Float(v), ChannelKind::UnsignedNormalized, _) if info.srgb && c < 3 => {
                out.push(linear_to_srgb(v[c]))
            }
            (ClearColor::Float(v), ChannelKind::UnsignedNormalized, _) => {
                out.push((v[c].clamp(0.0, 1.0) * 255.0).round() as u8)
            }
            (ClearColor::Float(v), _, 16) => out.extend(f32_to_f16(v[c]).to_le_bytes()),
            (ClearColor::Float(v), _, _) => out.extend(v[c].to_le_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texels_pack_like_the_gpu() {
        let red = ClearColor::Float([1.0, 0.5, 0.0, 1.0]);
        assert_eq!(
            texel_bytes(ImageFormat::Rgba8Unorm, red),
            [255, 128, 0, 255]
        );
        assert_eq!(
            texel_bytes(ImageFormat::R16Float, red),
            0x3c00u16.to_le_bytes()
        );
        assert_eq!(
            texel_bytes(ImageFormat::Rg16Float, red),
            [0x00, 0x3c, 0x00, 0x38]
        );
        assert_eq!(
            texel_bytes(ImageFormat::R32Float, red),
            1.0f32.to_le_bytes()
        );
        assert_eq!(
            texel_bytes(
                ImageFormat::Rgba8Srgb,
                ClearColor::Float([1.0, 0.5, 0.0, 0.5])
            ),
            [255, 188, 0, 128],
            "sRGB encodes the color channels, not alpha"
        );
        let n = ClearColor::Uint([300, 2, 3, 4]);
        assert_eq!(texel_bytes(ImageFormat::Rgba8Uint, n), [255, 2, 3, 4]);
        assert_eq!(texel_bytes(ImageFormat::R32Uint, n), 300u32.to_le_bytes());
        for f in ImageFormat::all() {
            let c = if f.info().kind == gpushare_interop::image::ChannelKind::Unsigned {
                n
            } else {
                red
            };
            assert_eq!(texel_bytes(f, c).len() as u32, f.texel_size(), "{f}");
        }
    }
}
