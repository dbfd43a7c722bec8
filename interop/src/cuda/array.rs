//! Images imported into CUDA: an [`ExternalMemory`] that holds a Vulkan image, mapped as a
//! [`MipmappedArray`] (Falcor's `importTextureToMipmappedArray`), and its levels
//! ([`ArrayLevel`]).
//!
//! The shape and format facts come from [`crate::image`]; the descriptor CUDA is given is built
//! by a pure function ([`array3d_descriptor`]) tested without a GPU. Destruction runs child
//! first: a level holds its array, an array holds its memory.
//!
//! Not here: surface and texture objects over an array (`texture.rs`), copies between a level
//! and linear memory (`array_copy.rs`), the Vulkan image (`vulkan/image.rs`), kernels that use
//! surfaces (`kernels.rs`).

use std::fmt;
use std::sync::Arc;

use ash::vk;
use cudarc::driver::sys;

use super::error::{Error, Result};
use super::external_memory::ExternalMemory;
use crate::image::{DescError, ImageDesc, ImageKind};

/// Thin wrappers, one per driver call.
mod raw {
    use cudarc::driver::sys;

    use super::super::error::{check, Result};

    /// `cuExternalMemoryGetMappedMipmappedArray`.
    ///
    /// # Safety
    ///
    /// `mem`'s context is current and `mem` is live. The array must be destroyed with
    /// [`mipmapped_array_destroy`] before `mem` is.
    pub unsafe fn get_mapped_mipmapped_array(
        mem: sys::CUexternalMemory,
        desc: &sys::CUDA_EXTERNAL_MEMORY_MIPMAPPED_ARRAY_DESC,
    ) -> Result<sys::CUmipmappedArray> {
        let mut array: sys::CUmipmappedArray = std::ptr::null_mut();
        // SAFETY: the caller guarantees `mem`; `desc` and `array` are valid for the call.
        check("cuExternalMemoryGetMappedMipmappedArray", unsafe {
            sys::cuExternalMemoryGetMappedMipmappedArray(&mut array, mem, desc)
        })?;
        Ok(array)
    }

    /// `cuMipmappedArrayGetLevel`: the array of level `level`, owned by `array`.
    ///
    /// # Safety
    ///
    /// `array`'s context is current and `array` is live.
    pub unsafe fn mipmapped_array_get_level(
        array: sys::CUmipmappedArray,
        level: u32,
    ) -> Result<sys::CUarray> {
        let mut level_array: sys::CUarray = std::ptr::null_mut();
        // SAFETY: the caller guarantees `array`; `level_array` is a valid out-pointer.
        check("cuMipmappedArrayGetLevel", unsafe {
            sys::cuMipmappedArrayGetLevel(&mut level_array, array, level)
        })?;
        Ok(level_array)
    }

    /// `cuMipmappedArrayDestroy`.
    ///
    /// # Safety
    ///
    /// Its context is current; every surface and texture object over it is destroyed and no
    /// pending GPU work uses it; destroyed once.
    pub unsafe fn mipmapped_array_destroy(array: sys::CUmipmappedArray) -> Result<()> {
        // SAFETY: guaranteed by the caller.
        check("cuMipmappedArrayDestroy", unsafe {
            sys::cuMipmappedArrayDestroy(array)
        })
    }
}

/// `VkImageUsageFlags` bits that decide the CUDA array's flags.
const USAGE_STORAGE: u32 = vk::ImageUsageFlags::STORAGE.as_raw();
const USAGE_COLOR_ATTACHMENT: u32 = vk::ImageUsageFlags::COLOR_ATTACHMENT.as_raw();

/// The array descriptor that imports an image of shape `desc` created with `usage`
/// (`VkImageUsageFlags` bits): width and height; depth 0 for a 2D image, its layer count for a
/// layered 2D image (`CUDA_ARRAY3D_LAYERED`), its depth for a 3D one; `CUDA_ARRAY3D_SURFACE_LDST`
/// for `STORAGE` usage and `CUDA_ARRAY3D_COLOR_ATTACHMENT` for `COLOR_ATTACHMENT` (as Falcor's
/// `importTextureToMipmappedArray`, and as the CUDA docs require for Vulkan images).
pub fn array3d_descriptor(desc: &ImageDesc, usage: u32) -> sys::CUDA_ARRAY3D_DESCRIPTOR {
    let info = desc.format.info();
    let (depth, mut flags) = match desc.kind {
        ImageKind::D3 => (desc.depth, 0),
        ImageKind::D2 if desc.layered() => (desc.array_layers, sys::CUDA_ARRAY3D_LAYERED),
        ImageKind::D2 => (0, 0),
    };
    if usage & USAGE_STORAGE != 0 {
        flags |= sys::CUDA_ARRAY3D_SURFACE_LDST;
    }
    if usage & USAGE_COLOR_ATTACHMENT != 0 {
        flags |= sys::CUDA_ARRAY3D_COLOR_ATTACHMENT;
    }
    sys::CUDA_ARRAY3D_DESCRIPTOR {
        Width: desc.width as usize,
        Height: desc.height as usize,
        Depth: depth as usize,
        Format: info.cuda,
        NumChannels: info.channels,
        Flags: flags,
    }
}

/// How many levels CUDA maps for an image of shape `desc`: its own, except for a layered image
/// with a partial mip chain (more than one level, fewer than
/// [`max_mip_levels`](ImageDesc::max_mip_levels)), which is mapped with the full chain.
///
/// CUDA places layer `i` at `i` times the size of one layer's chain of the levels it is told
/// of, and NVIDIA's Vulkan driver (seen on 580.159, H100) sizes each layer of a mipmapped 2D
/// array for the full chain: mapped with its own level count, every layer after the first
/// lands in the wrong place. With the full chain both agree; the extra levels lie in what is
/// padding to Vulkan and are never exposed ([`MipmappedArray::levels`] is the image's count).
/// Single-level layered images, 2D and 3D images agree as they are.
fn mapped_levels(desc: &ImageDesc) -> u32 {
    if desc.layered() && desc.mip_levels > 1 {
        desc.max_mip_levels()
    } else {
        desc.mip_levels
    }
}

/// A shape or region error, as this layer's error.
pub(super) fn invalid(e: DescError) -> Error {
    Error::InvalidValue {
        what: e.what,
        value: e.value,
        reason: e.reason,
    }
}

impl ExternalMemory {
    /// Maps the whole of this memory, which holds an image of shape `desc` created with `usage`
    /// (`VkImageUsageFlags` bits, as exported), as a mipmapped array with `desc.mip_levels`
    /// levels (`cuExternalMemoryGetMappedMipmappedArray`, offset 0; see
    /// [`array3d_descriptor`]).
    ///
    /// A layered image with a partial mip chain is mapped with the full chain, which is how
    /// NVIDIA's Vulkan driver lays out its layers (see `mapped_levels`); only the image's own
    /// levels are exposed.
    ///
    /// [`Error::InvalidValue`] for an inconsistent shape; [`Error::OutOfRange`] when the memory
    /// is smaller than the image's texels alone. The shape must be the image's: CUDA cannot
    /// check it and reads garbage otherwise.
    pub fn mipmapped_array(
        self: &Arc<Self>,
        desc: &ImageDesc,
        usage: u32,
    ) -> Result<Arc<MipmappedArray>> {
        desc.validate().map_err(invalid)?;
        if desc.total_size() > self.size() {
            return Err(Error::OutOfRange {
                what: "image texels",
                offset: 0,
                len: desc.total_size(),
                size: self.size(),
            });
        }
        let array_desc = array3d_descriptor(desc, usage);
        let mapping = sys::CUDA_EXTERNAL_MEMORY_MIPMAPPED_ARRAY_DESC {
            offset: 0,
            arrayDesc: array_desc,
            numLevels: mapped_levels(desc),
            reserved: [0; 16],
        };
        self.device().bind()?;
        // SAFETY: the context is current; `raw` is live (held by `self`); the MipmappedArray
        // holds `self` and destroys the array first.
        let raw = unsafe { raw::get_mapped_mipmapped_array(self.raw(), &mapping) }?;
        Ok(Arc::new(MipmappedArray {
            mem: Arc::clone(self),
            raw,
            desc: *desc,
            usage,
            flags: array_desc.Flags,
        }))
    }
}

/// An image in imported memory, as a CUDA mipmapped array. Destroyed in `Drop`, before the
/// memory it holds; its levels, surfaces and textures hold it alive.
///
/// GPU work that uses the array must be complete before the last reference goes (synchronize
/// the stream that used it).
pub struct MipmappedArray {
    mem: Arc<ExternalMemory>,
    raw: sys::CUmipmappedArray,
    desc: ImageDesc,
    usage: u32,
    flags: u32,
}

// SAFETY: `raw` is a driver handle, not memory: the driver API is thread-safe and every call
// here makes the memory's context current first.
unsafe impl Send for MipmappedArray {}
// SAFETY: as for `Send`; `&self` methods only read the handle.
unsafe impl Sync for MipmappedArray {}

impl fmt::Debug for MipmappedArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MipmappedArray")
            .field("raw", &self.raw)
            .field("desc", &self.desc)
            .field("flags", &format_args!("{:#x}", self.flags))
            .finish()
    }
}

impl MipmappedArray {
    /// The image's shape.
    pub fn desc(&self) -> &ImageDesc {
        &self.desc
    }

    /// Its mip levels.
    pub fn levels(&self) -> u32 {
        self.desc.mip_levels
    }

    /// The `VkImageUsageFlags` it was imported with.
    pub fn usage(&self) -> u32 {
        self.usage
    }

    /// The `CUDA_ARRAY3D_*` flags it was mapped with.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// The memory it lies in.
    pub fn memory(&self) -> &Arc<ExternalMemory> {
        &self.mem
    }

    /// The driver handle (`CUmipmappedArray`), valid while `self` lives.
    pub fn raw(&self) -> sys::CUmipmappedArray {
        self.raw
    }

    /// Level `level` (`cuMipmappedArrayGetLevel`). The level's array belongs to this one:
    /// [`ArrayLevel`] holds it alive and frees nothing.
    pub fn level(self: &Arc<Self>, level: u32) -> Result<ArrayLevel> {
        if level >= self.desc.mip_levels {
            return Err(Error::InvalidValue {
                what: "mip level",
                value: level.into(),
                reason: "beyond the image's mip levels",
            });
        }
        self.mem.device().bind()?;
        // SAFETY: the context is current; `raw` is live (held by `self`, which the level holds).
        let raw = unsafe { raw::mipmapped_array_get_level(self.raw, level) }?;
        Ok(ArrayLevel {
            array: Arc::clone(self),
            raw,
            level,
        })
    }
}

impl Drop for MipmappedArray {
    fn drop(&mut self) {
        if let Err(e) = self.mem.device().bind() {
            tracing::error!(error = %e, "leaking a CUDA mipmapped array: cannot bind its context");
            return;
        }
        // SAFETY: the context is current; every level, surface and texture holds `self` alive,
        // so none is left; destroyed once, here, before the memory (held by `self`).
        if let Err(e) = unsafe { raw::mipmapped_array_destroy(self.raw) } {
            tracing::warn!(error = %e, "destroying a CUDA mipmapped array");
        }
    }
}

/// One level of a [`MipmappedArray`], as a CUDA array. Owned by the mipmapped array, which this
/// holds alive; dropping it frees nothing.
#[derive(Clone)]
pub struct ArrayLevel {
    array: Arc<MipmappedArray>,
    raw: sys::CUarray,
    level: u32,
}

// SAFETY: `raw` is a driver handle owned by the mipmapped array this holds; see there.
unsafe impl Send for ArrayLevel {}
// SAFETY: as for `Send`.
unsafe impl Sync for ArrayLevel {}

impl fmt::Debug for ArrayLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayLevel")
            .field("raw", &self.raw)
            .field("level", &self.level)
            .field("extent", &self.extent())
            .finish()
    }
}

impl ArrayLevel {
    /// The driver handle (`CUarray`), valid while `self` lives.
    pub fn raw(&self) -> sys::CUarray {
        self.raw
    }

    /// Its mip level.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Its extent in texels (width, height, depth; depth 1 for 2D). Layers are
    /// [`desc`](Self::desc)`().array_layers`.
    pub fn extent(&self) -> (u32, u32, u32) {
        self.array.desc.level_extent(self.level)
    }

    /// The whole image's shape.
    pub fn desc(&self) -> &ImageDesc {
        &self.array.desc
    }

    /// The mipmapped array it belongs to.
    pub fn array(&self) -> &Arc<MipmappedArray> {
        &self.array
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageFormat;

    fn desc(
        format: ImageFormat,
        kind: ImageKind,
        w: u32,
        h: u32,
        d: u32,
        levels: u32,
        layers: u32,
    ) -> ImageDesc {
        ImageDesc {
            format,
            kind,
            width: w,
            height: h,
            depth: d,
            mip_levels: levels,
            array_layers: layers,
        }
    }

    const SAMPLED: u32 = vk::ImageUsageFlags::SAMPLED.as_raw();

    #[test]
    fn a_2d_image_has_depth_0_and_no_flags() {
        let d = desc(ImageFormat::Rgba8Unorm, ImageKind::D2, 64, 32, 1, 7, 1);
        let a = array3d_descriptor(&d, SAMPLED);
        assert_eq!((a.Width, a.Height, a.Depth), (64, 32, 0));
        assert_eq!(a.Format, sys::CUarray_format::CU_AD_FORMAT_UNSIGNED_INT8);
        assert_eq!(a.NumChannels, 4);
        assert_eq!(a.Flags, 0);
        let r = desc(ImageFormat::R32Float, ImageKind::D2, 5, 3, 1, 1, 1);
        let a = array3d_descriptor(&r, 0);
        assert_eq!((a.Width, a.Height, a.Depth, a.NumChannels), (5, 3, 0, 1));
        assert_eq!(a.Format, sys::CUarray_format::CU_AD_FORMAT_FLOAT);
    }

    #[test]
    fn a_layered_image_has_its_layers_as_depth() {
        let d = desc(ImageFormat::Rg16Float, ImageKind::D2, 32, 16, 1, 4, 3);
        let a = array3d_descriptor(&d, SAMPLED);
        assert_eq!((a.Width, a.Height, a.Depth), (32, 16, 3));
        assert_eq!(a.Flags, sys::CUDA_ARRAY3D_LAYERED);
        assert_eq!(a.Format, sys::CUarray_format::CU_AD_FORMAT_HALF);
        assert_eq!(a.NumChannels, 2);
    }

    #[test]
    fn a_3d_image_has_its_depth() {
        let d = desc(ImageFormat::Rgba32Uint, ImageKind::D3, 16, 8, 4, 3, 1);
        let a = array3d_descriptor(&d, SAMPLED);
        assert_eq!((a.Width, a.Height, a.Depth), (16, 8, 4));
        assert_eq!(a.Flags, 0);
        assert_eq!(a.Format, sys::CUarray_format::CU_AD_FORMAT_UNSIGNED_INT32);
        assert_eq!(a.NumChannels, 4);
    }

    #[test]
    fn usage_sets_surface_and_color_attachment_flags() {
        let storage = vk::ImageUsageFlags::STORAGE.as_raw();
        let color = vk::ImageUsageFlags::COLOR_ATTACHMENT.as_raw();
        assert_eq!((storage, color), (0x8, 0x10));
        let d2 = desc(ImageFormat::Rgba8Unorm, ImageKind::D2, 8, 8, 1, 1, 1);
        let layered = desc(ImageFormat::Rgba8Unorm, ImageKind::D2, 8, 8, 1, 1, 2);
        let d3 = desc(ImageFormat::Rgba8Unorm, ImageKind::D3, 8, 8, 8, 1, 1);
        assert_eq!(
            array3d_descriptor(&d2, storage | SAMPLED).Flags,
            sys::CUDA_ARRAY3D_SURFACE_LDST
        );
        assert_eq!(
            array3d_descriptor(&d2, color).Flags,
            sys::CUDA_ARRAY3D_COLOR_ATTACHMENT
        );
        assert_eq!(
            array3d_descriptor(&layered, storage | color).Flags,
            sys::CUDA_ARRAY3D_LAYERED
                | sys::CUDA_ARRAY3D_SURFACE_LDST
                | sys::CUDA_ARRAY3D_COLOR_ATTACHMENT
        );
        assert_eq!(
            array3d_descriptor(&d3, storage).Flags,
            sys::CUDA_ARRAY3D_SURFACE_LDST
        );
        // Transfer bits change nothing.
        let transfer =
            (vk::ImageUsageFlags::TRANSFER_SRC | vk::ImageUsageFlags::TRANSFER_DST).as_raw();
        assert_eq!(array3d_descriptor(&d2, transfer).Flags, 0);
    }

    #[test]
    fn layered_partial_chains_are_mapped_with_the_full_chain() {
        let layered = desc(ImageFormat::R8Unorm, ImageKind::D2, 32, 16, 1, 4, 3);
        assert_eq!(mapped_levels(&layered), 6);
        let full = ImageDesc {
            mip_levels: 6,
            ..layered
        };
        assert_eq!(mapped_levels(&full), 6);
        let single = ImageDesc {
            mip_levels: 1,
            ..layered
        };
        assert_eq!(mapped_levels(&single), 1);
        let d2 = desc(ImageFormat::R8Unorm, ImageKind::D2, 32, 16, 1, 4, 1);
        assert_eq!(mapped_levels(&d2), 4);
        let d3 = desc(ImageFormat::R8Unorm, ImageKind::D3, 16, 8, 4, 3, 1);
        assert_eq!(mapped_levels(&d3), 3);
    }
}
