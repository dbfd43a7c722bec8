//! Images imported into CUDA: an [`ExternalMemory`] that holds a Vulkan image, mapped as a
//! [`MipmappedArray`] (Falcor's `importTextureToMipmappedArray`), its levels ([`ArrayLevel`]),
//! surface and texture objects over them ([`SurfaceObject`], [`TextureObject`]), and copies
//! between a level and linear memory ([`copy_host_to_array`] and friends).
//!
//! The shape and format facts come from [`crate::image`]; the descriptors CUDA is given are built
//! by pure functions ([`array3d_descriptor`], `texture_descriptor`, `memcpy3d`) tested without a
//! GPU. Destruction runs child first: a surface or texture holds its array, an array holds its
//! memory.
//!
//! Not here: the Vulkan image (`vulkan/image.rs`), kernels that use surfaces (`kernels.rs`).

use std::fmt;
use std::sync::Arc;

use ash::vk;
use cudarc::driver::{sys, CudaStream};

use super::error::{Error, Result};
use super::external_memory::ExternalMemory;
use crate::image::{ChannelKind, DescError, ImageDesc, ImageFormat, ImageKind, ImageRegion};

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

    /// `cuSurfObjectCreate`.
    ///
    /// # Safety
    ///
    /// A context is current; `res` names a live array of it, created with
    /// `CUDA_ARRAY3D_SURFACE_LDST`. The object must be destroyed before the array.
    pub unsafe fn surf_object_create(res: &sys::CUDA_RESOURCE_DESC) -> Result<sys::CUsurfObject> {
        let mut surf: sys::CUsurfObject = 0;
        // SAFETY: the caller guarantees `res`; `surf` is a valid out-pointer.
        check("cuSurfObjectCreate", unsafe {
            sys::cuSurfObjectCreate(&mut surf, res)
        })?;
        Ok(surf)
    }

    /// `cuSurfObjectDestroy`.
    ///
    /// # Safety
    ///
    /// Its context is current; no pending GPU work uses `surf`; destroyed once.
    pub unsafe fn surf_object_destroy(surf: sys::CUsurfObject) -> Result<()> {
        // SAFETY: guaranteed by the caller.
        check("cuSurfObjectDestroy", unsafe {
            sys::cuSurfObjectDestroy(surf)
        })
    }

    /// `cuTexObjectCreate`, without a resource view.
    ///
    /// # Safety
    ///
    /// A context is current; `res` names a live array or mipmapped array of it. The object
    /// must be destroyed before the array.
    pub unsafe fn tex_object_create(
        res: &sys::CUDA_RESOURCE_DESC,
        tex: &sys::CUDA_TEXTURE_DESC,
    ) -> Result<sys::CUtexObject> {
        let mut object: sys::CUtexObject = 0;
        // SAFETY: the caller guarantees `res`; `tex` and `object` are valid for the call; a
        // null view is documented as "no view".
        check("cuTexObjectCreate", unsafe {
            sys::cuTexObjectCreate(&mut object, res, tex, std::ptr::null())
        })?;
        Ok(object)
    }

    /// `cuTexObjectDestroy`.
    ///
    /// # Safety
    ///
    /// Its context is current; no pending GPU work uses `tex`; destroyed once.
    pub unsafe fn tex_object_destroy(tex: sys::CUtexObject) -> Result<()> {
        // SAFETY: guaranteed by the caller.
        check("cuTexObjectDestroy", unsafe {
            sys::cuTexObjectDestroy(tex)
        })
    }

    /// `cuMemcpy3DAsync`.
    ///
    /// # Safety
    ///
    /// `stream`'s context is current; every address, array and range in `copy` is valid for
    /// that context until the copy has executed.
    pub unsafe fn memcpy_3d_async(copy: &sys::CUDA_MEMCPY3D, stream: sys::CUstream) -> Result<()> {
        // SAFETY: guaranteed by the caller; `copy` is read during the call only.
        check("cuMemcpy3DAsync", unsafe {
            sys::cuMemcpy3DAsync_v2(copy, stream)
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
fn invalid(e: DescError) -> Error {
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

/// A resource description of one array (a level) or of a mipmapped array.
fn resource_desc(resource: Resource) -> sys::CUDA_RESOURCE_DESC {
    // Start from the union's largest member, zeroed, so that no byte the driver may read is
    // uninitialized; then set the member the type names.
    let mut res = sys::CUDA_RESOURCE_DESC_st__bindgen_ty_1 {
        reserved: sys::CUDA_RESOURCE_DESC_st__bindgen_ty_1__bindgen_ty_5 { reserved: [0; 32] },
    };
    let res_type = match resource {
        Resource::Array(array) => {
            res.array = sys::CUDA_RESOURCE_DESC_st__bindgen_ty_1__bindgen_ty_1 { hArray: array };
            sys::CUresourcetype::CU_RESOURCE_TYPE_ARRAY
        }
        Resource::Mipmapped(mipmap) => {
            res.mipmap = sys::CUDA_RESOURCE_DESC_st__bindgen_ty_1__bindgen_ty_2 {
                hMipmappedArray: mipmap,
            };
            sys::CUresourcetype::CU_RESOURCE_TYPE_MIPMAPPED_ARRAY
        }
    };
    sys::CUDA_RESOURCE_DESC {
        resType: res_type,
        res,
        flags: 0,
    }
}

/// What a texture or surface reads.
#[derive(Clone, Copy)]
enum Resource {
    Array(sys::CUarray),
    Mipmapped(sys::CUmipmappedArray),
}

/// A surface object (`CUsurfObject`) over one level, for `surf2Dwrite`-style loads and stores
/// in kernels. Destroyed in `Drop`, before the level's array (held by `self`).
///
/// GPU work that uses it must be complete before it drops.
pub struct SurfaceObject {
    raw: sys::CUsurfObject,
    // Dropped after `raw` is destroyed (in `Drop::drop`, which runs before the fields drop).
    level: ArrayLevel,
}

impl fmt::Debug for SurfaceObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SurfaceObject")
            .field("raw", &format_args!("{:#x}", self.raw))
            .field("level", &self.level)
            .finish()
    }
}

impl SurfaceObject {
    /// A surface over `level` (`cuSurfObjectCreate`). [`Error::InvalidValue`] unless the image
    /// was imported with `STORAGE` usage (`CUDA_ARRAY3D_SURFACE_LDST`).
    pub fn new(level: &ArrayLevel) -> Result<SurfaceObject> {
        let array = level.array();
        if array.flags & sys::CUDA_ARRAY3D_SURFACE_LDST == 0 {
            return Err(Error::InvalidValue {
                what: "image usage",
                value: array.usage.into(),
                reason: "a surface needs STORAGE usage (CUDA_ARRAY3D_SURFACE_LDST)",
            });
        }
        let res = resource_desc(Resource::Array(level.raw));
        array.mem.device().bind()?;
        // SAFETY: the context is current; the level's array is live (held by the level, which
        // `self` keeps) and was mapped with SURFACE_LDST; `Drop` destroys the surface first.
        let raw = unsafe { raw::surf_object_create(&res) }?;
        Ok(SurfaceObject {
            raw,
            level: level.clone(),
        })
    }

    /// The handle kernels take (`CUsurfObject`), valid while `self` lives.
    pub fn raw(&self) -> u64 {
        self.raw
    }

    /// The level it covers.
    pub fn level(&self) -> &ArrayLevel {
        &self.level
    }
}

impl Drop for SurfaceObject {
    fn drop(&mut self) {
        if let Err(e) = self.level.array.mem.device().bind() {
            tracing::error!(error = %e, "leaking a CUDA surface object: cannot bind its context");
            return;
        }
        // SAFETY: the context is current; created by `new`, destroyed once, here, before the
        // array (held by `self.level`).
        if let Err(e) = unsafe { raw::surf_object_destroy(self.raw) } {
            tracing::warn!(error = %e, "destroying a CUDA surface object");
        }
    }
}

/// How a [`TextureObject`] samples. The default: point sampling, unnormalized coordinates,
/// clamped addressing (suits one level; a whole mip chain needs normalized coordinates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextureOptions {
    /// Linear filtering (within and between levels) instead of point sampling. Float and unorm
    /// formats only.
    pub filter_linear: bool,
    /// Coordinates in [0, 1) instead of [0, extent). CUDA requires them for mipmapped arrays.
    pub normalized_coords: bool,
    /// Clamp to the edge; otherwise wrap (wrap needs normalized coordinates).
    pub address_clamp: bool,
}

impl Default for TextureOptions {
    fn default() -> Self {
        TextureOptions {
            filter_linear: false,
            normalized_coords: false,
            address_clamp: true,
        }
    }
}

impl TextureOptions {
    /// Refuses what CUDA documents as invalid, before the driver sees it.
    fn validate(&self, format: ImageFormat, mip_chain: bool) -> Result<()> {
        let refuse = |what, reason| {
            Err(Error::InvalidValue {
                what,
                value: format.code().into(),
                reason,
            })
        };
        if mip_chain && !self.normalized_coords {
            return refuse(
                "texture coordinates",
                "a texture over a mip chain needs normalized coordinates",
            );
        }
        if !self.address_clamp && !self.normalized_coords {
            return refuse(
                "texture addressing",
                "wrap addressing needs normalized coordinates",
            );
        }
        if self.filter_linear && format.info().kind == ChannelKind::Unsigned {
            return refuse(
                "texture filter (format code)",
                "integer formats are read as integers: point sampling only",
            );
        }
        Ok(())
    }
}

/// The texture description for `format` over `levels` levels: address mode, filter, mipmap
/// filter and level clamp from `opts`; `CU_TRSF_NORMALIZED_COORDINATES` when asked,
/// `CU_TRSF_READ_AS_INTEGER` for the integer formats (unorm formats read as normalized floats).
fn texture_descriptor(
    format: ImageFormat,
    levels: u32,
    opts: &TextureOptions,
) -> sys::CUDA_TEXTURE_DESC {
    let address = if opts.address_clamp {
        sys::CUaddress_mode::CU_TR_ADDRESS_MODE_CLAMP
    } else {
        sys::CUaddress_mode::CU_TR_ADDRESS_MODE_WRAP
    };
    let filter = if opts.filter_linear {
        sys::CUfilter_mode::CU_TR_FILTER_MODE_LINEAR
    } else {
        sys::CUfilter_mode::CU_TR_FILTER_MODE_POINT
    };
    let mut flags = 0;
    if opts.normalized_coords {
        flags |= sys::CU_TRSF_NORMALIZED_COORDINATES;
    }
    if format.info().kind == ChannelKind::Unsigned {
        flags |= sys::CU_TRSF_READ_AS_INTEGER;
    }
    sys::CUDA_TEXTURE_DESC {
        addressMode: [address; 3],
        filterMode: filter,
        flags,
        maxAnisotropy: 0,
        mipmapFilterMode: filter,
        mipmapLevelBias: 0.0,
        minMipmapLevelClamp: 0.0,
        maxMipmapLevelClamp: levels.saturating_sub(1) as f32,
        borderColor: [0.0; 4],
        reserved: [0; 12],
    }
}

/// A texture object (`CUtexObject`) over a whole mip chain or one level. Destroyed in `Drop`,
/// before the array (held by `self`).
///
/// GPU work that uses it must be complete before it drops.
pub struct TextureObject {
    raw: sys::CUtexObject,
    // Dropped after `raw` is destroyed (in `Drop::drop`, which runs before the fields drop).
    array: Arc<MipmappedArray>,
    level: Option<u32>,
    opts: TextureOptions,
}

impl fmt::Debug for TextureObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextureObject")
            .field("raw", &format_args!("{:#x}", self.raw))
            .field("array", &self.array.raw)
            .field("level", &self.level)
            .finish()
    }
}

impl TextureObject {
    /// A texture over every level of `array` (`tex2DLod` and friends). CUDA requires
    /// `opts.normalized_coords` here: [`Error::InvalidValue`] without it, with wrap addressing
    /// without normalized coordinates, or with linear filtering of an integer format.
    pub fn new(array: &Arc<MipmappedArray>, opts: &TextureOptions) -> Result<TextureObject> {
        opts.validate(array.desc.format, true)?;
        Self::create(array, Resource::Mipmapped(array.raw), opts, None)
    }

    /// A texture over one level. [`Error::InvalidValue`] as for [`new`](Self::new), except
    /// that unnormalized coordinates are allowed.
    pub fn for_level(level: &ArrayLevel, opts: &TextureOptions) -> Result<TextureObject> {
        opts.validate(level.desc().format, false)?;
        Self::create(
            level.array(),
            Resource::Array(level.raw),
            opts,
            Some(level.level),
        )
    }

    fn create(
        array: &Arc<MipmappedArray>,
        resource: Resource,
        opts: &TextureOptions,
        level: Option<u32>,
    ) -> Result<TextureObject> {
        let levels = if level.is_some() { 1 } else { array.levels() };
        let tex = texture_descriptor(array.desc.format, levels, opts);
        let res = resource_desc(resource);
        array.mem.device().bind()?;
        // SAFETY: the context is current; the resource is `array` or one of its levels, live
        // while `array` is, which `self` keeps; `Drop` destroys the texture first.
        let raw = unsafe { raw::tex_object_create(&res, &tex) }?;
        Ok(TextureObject {
            raw,
            array: Arc::clone(array),
            level,
            opts: *opts,
        })
    }

    /// The handle kernels take (`CUtexObject`), valid while `self` lives.
    pub fn raw(&self) -> u64 {
        self.raw
    }

    /// The mipmapped array it samples.
    pub fn array(&self) -> &Arc<MipmappedArray> {
        &self.array
    }

    /// The one level it samples, or `None` for the whole chain.
    pub fn level(&self) -> Option<u32> {
        self.level
    }

    /// How it samples.
    pub fn options(&self) -> &TextureOptions {
        &self.opts
    }
}

impl Drop for TextureObject {
    fn drop(&mut self) {
        if let Err(e) = self.array.mem.device().bind() {
            tracing::error!(error = %e, "leaking a CUDA texture object: cannot bind its context");
            return;
        }
        // SAFETY: the context is current; created by `create`, destroyed once, here, before the
        // array (held by `self`).
        if let Err(e) = unsafe { raw::tex_object_destroy(self.raw) } {
            tracing::warn!(error = %e, "destroying a CUDA texture object");
        }
    }
}

/// The linear side of a copy.
#[derive(Clone, Copy, Debug)]
enum Linear {
    /// Host memory (read or written).
    Host(*mut u8),
    /// A device address.
    Device(u64),
}

/// Which way a copy goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    ToArray,
    FromArray,
}

/// The copy between `region` of the level `array` and tightly packed linear memory (rows of
/// `region.width` texels, `region.height` rows a slice, then slices or layers). The array side
/// starts at x in bytes, y, and z (3D) or the first layer (layered 2D); depth counts slices or
/// layers.
fn memcpy3d(
    array: sys::CUarray,
    region: &ImageRegion,
    texel: u32,
    linear: Linear,
    direction: Direction,
) -> sys::CUDA_MEMCPY3D {
    let texel = texel as usize;
    let row = region.width as usize * texel;
    let (linear_type, host, device) = match linear {
        Linear::Host(p) => (sys::CUmemorytype::CU_MEMORYTYPE_HOST, p, 0),
        Linear::Device(d) => (
            sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            std::ptr::null_mut(),
            d,
        ),
    };
    // One of `z` and `base_layer` is 0 (a 3D image has one layer, a 2D image depth 1); so is
    // one of `depth - 1` and `layers - 1`.
    let (z, depth) = (
        (region.z + region.base_layer) as usize,
        region.depth as usize * region.layers as usize,
    );
    let array_type = sys::CUmemorytype::CU_MEMORYTYPE_ARRAY;
    let mut copy = sys::CUDA_MEMCPY3D {
        srcXInBytes: 0,
        srcY: 0,
        srcZ: 0,
        srcLOD: 0,
        srcMemoryType: linear_type,
        srcHost: host.cast_const().cast(),
        srcDevice: device,
        srcArray: std::ptr::null_mut(),
        reserved0: std::ptr::null_mut(),
        srcPitch: row,
        srcHeight: region.height as usize,
        dstXInBytes: 0,
        dstY: 0,
        dstZ: 0,
        dstLOD: 0,
        dstMemoryType: linear_type,
        dstHost: host.cast(),
        dstDevice: device,
        dstArray: std::ptr::null_mut(),
        reserved1: std::ptr::null_mut(),
        dstPitch: row,
        dstHeight: region.height as usize,
        WidthInBytes: row,
        Height: region.height as usize,
        Depth: depth,
    };
    let x = region.x as usize * texel;
    let y = region.y as usize;
    match direction {
        Direction::ToArray => {
            copy.dstMemoryType = array_type;
            copy.dstHost = std::ptr::null_mut();
            copy.dstDevice = 0;
            copy.dstArray = array;
            copy.dstPitch = 0;
            copy.dstHeight = 0;
            (copy.dstXInBytes, copy.dstY, copy.dstZ) = (x, y, z);
        }
        Direction::FromArray => {
            copy.srcMemoryType = array_type;
            copy.srcHost = std::ptr::null();
            copy.srcDevice = 0;
            copy.srcArray = array;
            copy.srcPitch = 0;
            copy.srcHeight = 0;
            (copy.srcXInBytes, copy.srcY, copy.srcZ) = (x, y, z);
        }
    }
    copy
}

/// Checks a copy's arguments and enqueues it on `stream`.
///
/// # Safety
///
/// As for the public copies: the linear side covers `len` bytes, valid until the copy has
/// executed.
unsafe fn copy(
    stream: &CudaStream,
    level: &ArrayLevel,
    region: &ImageRegion,
    format: ImageFormat,
    linear: Linear,
    len: usize,
    direction: Direction,
) -> Result<()> {
    let desc = level.desc();
    if format != desc.format {
        return Err(Error::InvalidValue {
            what: "copy format (code)",
            value: format.code().into(),
            reason: "not the image's format",
        });
    }
    if region.level != level.level {
        return Err(Error::InvalidValue {
            what: "copy region level",
            value: region.level.into(),
            reason: "not the level copied",
        });
    }
    region.validate(desc).map_err(invalid)?;
    if len as u64 != region.size(format) {
        return Err(Error::InvalidValue {
            what: "copy length",
            value: len as u64,
            reason: "must be the region's tightly packed size",
        });
    }
    let device = level.array.mem.device();
    device.check_stream("copy stream", stream)?;
    device.bind()?;
    let copy = memcpy3d(level.raw, region, format.texel_size(), linear, direction);
    // SAFETY: the context is current and the stream is of it (checked above); the level is
    // live while borrowed and the caller keeps it until the copy has executed; the region lies
    // within the level (validated); the caller guarantees the linear side for `len` bytes,
    // which is the region's packed size (checked).
    unsafe { raw::memcpy_3d_async(&copy, stream.cu_stream()) }
}

/// Enqueues on `stream` a copy of `len` bytes of tightly packed texels (rows, then slices, then
/// layers: [`ImageRegion::size`]) from host address `src` into `region` of `level`.
/// Asynchronous: the caller synchronizes `stream` before relying on the result.
///
/// [`Error::InvalidValue`] unless `format` is the image's, `region` is on `level` and within it,
/// and `len` is `region.size(format)`; [`Error::WrongContext`] for a stream of another context.
///
/// # Safety
///
/// `src..src + len` is readable host memory, valid and unmodified until the copy has executed
/// (pageable memory is staged before this returns); `level` (its array) stays alive until then.
pub unsafe fn copy_host_to_array(
    stream: &CudaStream,
    level: &ArrayLevel,
    region: &ImageRegion,
    format: ImageFormat,
    src: *const u8,
    len: usize,
) -> Result<()> {
    let linear = Linear::Host(src.cast_mut());
    // SAFETY: the caller's guarantees carry over; the host side is only read.
    unsafe {
        copy(
            stream,
            level,
            region,
            format,
            linear,
            len,
            Direction::ToArray,
        )
    }
}

/// Enqueues on `stream` a copy of `region` of `level` into `len` bytes at host address `dst`,
/// tightly packed (see [`copy_host_to_array`], with its errors). Asynchronous: `dst` holds the
/// texels once the caller has synchronized `stream`.
///
/// # Safety
///
/// `dst..dst + len` is writable host memory, valid until the copy has executed and neither read
/// nor written before then; `level` (its array) stays alive until then.
pub unsafe fn copy_array_to_host(
    stream: &CudaStream,
    level: &ArrayLevel,
    region: &ImageRegion,
    format: ImageFormat,
    dst: *mut u8,
    len: usize,
) -> Result<()> {
    // SAFETY: the caller's guarantees carry over.
    unsafe {
        copy(
            stream,
            level,
            region,
            format,
            Linear::Host(dst),
            len,
            Direction::FromArray,
        )
    }
}

/// Enqueues on `stream` a copy of `len` tightly packed bytes at device address `src` into
/// `region` of `level` (see [`copy_host_to_array`], with its errors).
///
/// # Safety
///
/// `src..src + len` is device memory accessible to `stream`'s context, valid until the copy has
/// executed; `level` (its array) stays alive until then.
pub unsafe fn copy_device_to_array(
    stream: &CudaStream,
    level: &ArrayLevel,
    region: &ImageRegion,
    format: ImageFormat,
    src: u64,
    len: usize,
) -> Result<()> {
    // SAFETY: the caller's guarantees carry over.
    unsafe {
        copy(
            stream,
            level,
            region,
            format,
            Linear::Device(src),
            len,
            Direction::ToArray,
        )
    }
}

/// Enqueues on `stream` a copy of `region` of `level` into `len` tightly packed bytes at device
/// address `dst` (see [`copy_host_to_array`], with its errors).
///
/// # Safety
///
/// `dst..dst + len` is device memory accessible to `stream`'s context, valid until the copy has
/// executed; `level` (its array) stays alive until then.
pub unsafe fn copy_array_to_device(
    stream: &CudaStream,
    level: &ArrayLevel,
    region: &ImageRegion,
    format: ImageFormat,
    dst: u64,
    len: usize,
) -> Result<()> {
    // SAFETY: the caller's guarantees carry over.
    unsafe {
        copy(
            stream,
            level,
            region,
            format,
            Linear::Device(dst),
            len,
            Direction::FromArray,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn textures_read_integers_as_integers_and_clamp_levels() {
        let opts = TextureOptions {
            filter_linear: true,
            normalized_coords: true,
            address_clamp: true,
        };
        let t = texture_descriptor(ImageFormat::Rgba8Unorm, 7, &opts);
        assert_eq!(t.flags, sys::CU_TRSF_NORMALIZED_COORDINATES);
        assert_eq!(t.filterMode, sys::CUfilter_mode::CU_TR_FILTER_MODE_LINEAR);
        assert_eq!(
            t.mipmapFilterMode,
            sys::CUfilter_mode::CU_TR_FILTER_MODE_LINEAR
        );
        assert_eq!(
            t.addressMode,
            [sys::CUaddress_mode::CU_TR_ADDRESS_MODE_CLAMP; 3]
        );
        assert_eq!((t.minMipmapLevelClamp, t.maxMipmapLevelClamp), (0.0, 6.0));

        let t = texture_descriptor(ImageFormat::R32Uint, 1, &TextureOptions::default());
        assert_eq!(t.flags, sys::CU_TRSF_READ_AS_INTEGER);
        assert_eq!(t.filterMode, sys::CUfilter_mode::CU_TR_FILTER_MODE_POINT);
        assert_eq!(t.maxMipmapLevelClamp, 0.0);
        let wrap = TextureOptions {
            normalized_coords: true,
            address_clamp: false,
            ..Default::default()
        };
        let t = texture_descriptor(ImageFormat::R16Float, 2, &wrap);
        assert_eq!(t.flags, sys::CU_TRSF_NORMALIZED_COORDINATES);
        assert_eq!(
            t.addressMode,
            [sys::CUaddress_mode::CU_TR_ADDRESS_MODE_WRAP; 3]
        );
    }

    #[test]
    fn texture_options_refuse_what_cuda_forbids() {
        let default = TextureOptions::default();
        assert!(default.validate(ImageFormat::Rgba8Unorm, false).is_ok());
        // Mip chains need normalized coordinates.
        assert!(matches!(
            default.validate(ImageFormat::Rgba8Unorm, true),
            Err(Error::InvalidValue {
                what: "texture coordinates",
                ..
            })
        ));
        let normalized = TextureOptions {
            normalized_coords: true,
            ..default
        };
        assert!(normalized.validate(ImageFormat::Rgba8Unorm, true).is_ok());
        // Wrap needs normalized coordinates.
        let wrap = TextureOptions {
            address_clamp: false,
            ..default
        };
        assert!(wrap.validate(ImageFormat::R8Unorm, false).is_err());
        // Integers are not filtered.
        let linear = TextureOptions {
            filter_linear: true,
            ..normalized
        };
        assert!(linear.validate(ImageFormat::Rgba32Float, true).is_ok());
        assert!(linear.validate(ImageFormat::R8Unorm, true).is_ok());
        assert!(linear.validate(ImageFormat::R8Uint, true).is_err());
    }

    #[test]
    fn texture_options_default_is_point_unnormalized_clamp() {
        let d = TextureOptions::default();
        assert!(!d.filter_linear && !d.normalized_coords);
        assert!(d.address_clamp, "the default clamps");
    }

    #[test]
    fn resource_descriptions_name_their_type() {
        let fake_array = 0x1000 as sys::CUarray;
        let r = resource_desc(Resource::Array(fake_array));
        assert_eq!(r.resType, sys::CUresourcetype::CU_RESOURCE_TYPE_ARRAY);
        // SAFETY: the `array` member was the one written.
        assert_eq!(unsafe { r.res.array.hArray }, fake_array);
        let fake_mip = 0x2000 as sys::CUmipmappedArray;
        let r = resource_desc(Resource::Mipmapped(fake_mip));
        assert_eq!(
            r.resType,
            sys::CUresourcetype::CU_RESOURCE_TYPE_MIPMAPPED_ARRAY
        );
        // SAFETY: the `mipmap` member was the one written.
        assert_eq!(unsafe { r.res.mipmap.hMipmappedArray }, fake_mip);
        // SAFETY: every byte of the union was zeroed before the member was set.
        let words = unsafe { r.res.reserved.reserved };
        assert!(words[2..].iter().all(|&w| w == 0));
    }

    fn region(
        level: u32,
        (x, y, z): (u32, u32, u32),
        (w, h, d): (u32, u32, u32),
        layers: (u32, u32),
    ) -> ImageRegion {
        ImageRegion {
            level,
            base_layer: layers.0,
            layers: layers.1,
            x,
            y,
            z,
            width: w,
            height: h,
            depth: d,
        }
    }

    #[test]
    fn host_to_array_copies_are_tightly_packed() {
        let arr = 0x10 as sys::CUarray;
        let host = 0x5000 as *mut u8;
        // 2D: depth 1, offsets in bytes.
        let r = region(2, (3, 4, 0), (10, 6, 1), (0, 1));
        let c = memcpy3d(arr, &r, 4, Linear::Host(host), Direction::ToArray);
        assert_eq!(c.srcMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_HOST);
        assert_eq!(c.srcHost, host.cast_const().cast());
        assert_eq!((c.srcXInBytes, c.srcY, c.srcZ), (0, 0, 0));
        assert_eq!((c.srcPitch, c.srcHeight), (40, 6));
        assert_eq!(c.dstMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_ARRAY);
        assert_eq!(c.dstArray, arr);
        assert!(c.dstHost.is_null() && c.srcArray.is_null());
        assert_eq!((c.dstXInBytes, c.dstY, c.dstZ), (12, 4, 0));
        assert_eq!((c.WidthInBytes, c.Height, c.Depth), (40, 6, 1));
        assert_eq!((c.srcLOD, c.dstLOD), (0, 0));
    }

    #[test]
    fn layered_and_3d_copies_put_layers_or_slices_in_z() {
        let arr = 0x10 as sys::CUarray;
        let host = 0x5000 as *mut u8;
        // Layered 2D: layers 1..3 as z.
        let r = region(0, (0, 0, 0), (8, 8, 1), (1, 2));
        let c = memcpy3d(arr, &r, 2, Linear::Host(host), Direction::FromArray);
        assert_eq!(c.srcMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_ARRAY);
        assert_eq!(c.srcArray, arr);
        assert_eq!((c.srcXInBytes, c.srcY, c.srcZ), (0, 0, 1));
        assert_eq!(c.dstMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_HOST);
        assert_eq!(c.dstHost, host.cast());
        assert_eq!((c.dstPitch, c.dstHeight), (16, 8));
        assert_eq!((c.dstXInBytes, c.dstY, c.dstZ), (0, 0, 0));
        assert_eq!((c.WidthInBytes, c.Height, c.Depth), (16, 8, 2));
        // 3D: slices 2..4.
        let r = region(1, (1, 2, 2), (3, 2, 2), (0, 1));
        let c = memcpy3d(arr, &r, 16, Linear::Device(0xdead_0000), Direction::ToArray);
        assert_eq!(c.srcMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_DEVICE);
        assert_eq!(c.srcDevice, 0xdead_0000);
        assert!(c.srcHost.is_null());
        assert_eq!((c.srcPitch, c.srcHeight), (48, 2));
        assert_eq!((c.dstXInBytes, c.dstY, c.dstZ), (16, 2, 2));
        assert_eq!((c.WidthInBytes, c.Height, c.Depth), (48, 2, 2));
    }
}
