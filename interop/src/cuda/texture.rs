//! Surface and texture objects over an imported image ([`MipmappedArray`] and its
//! [`ArrayLevel`]s): [`SurfaceObject`] for loads and stores in kernels, [`TextureObject`] for
//! sampling, as [`TextureOptions`] say.
//!
//! The descriptors CUDA is given are built by pure functions (`texture_descriptor`,
//! `resource_desc`) tested without a GPU. Destruction runs child first: a surface or texture
//! holds its array.
//!
//! Not here: importing the image (`array.rs`), copies (`array_copy.rs`), kernels that use
//! surfaces and textures (`kernels.rs`).

use std::fmt;
use std::sync::Arc;

use cudarc::driver::sys;

use super::array::{ArrayLevel, MipmappedArray};
use super::error::{Error, Result};
use crate::image::{ChannelKind, ImageFormat};

/// Thin wrappers, one per driver call.
mod raw {
    use cudarc::driver::sys;

    use super::super::error::{check, Result};

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
        if array.flags() & sys::CUDA_ARRAY3D_SURFACE_LDST == 0 {
            return Err(Error::InvalidValue {
                what: "image usage",
                value: array.usage().into(),
                reason: "a surface needs STORAGE usage (CUDA_ARRAY3D_SURFACE_LDST)",
            });
        }
        let res = resource_desc(Resource::Array(level.raw()));
        array.memory().device().bind()?;
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
        if let Err(e) = self.level.array().memory().device().bind() {
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
/// `CU_TRSF_READ_AS_INTEGER` for the integer formats (unorm formats read as normalized floats),
/// `CU_TRSF_SRGB` for sRGB formats (reads decode to linear values, as Vulkan samplers do).
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
    if format.info().srgb {
        flags |= sys::CU_TRSF_SRGB;
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
            .field("array", &self.array.raw())
            .field("level", &self.level)
            .finish()
    }
}

impl TextureObject {
    /// A texture over every level of `array` (`tex2DLod` and friends). CUDA requires
    /// `opts.normalized_coords` here: [`Error::InvalidValue`] without it, with wrap addressing
    /// without normalized coordinates, or with linear filtering of an integer format.
    pub fn new(array: &Arc<MipmappedArray>, opts: &TextureOptions) -> Result<TextureObject> {
        opts.validate(array.desc().format, true)?;
        Self::create(array, Resource::Mipmapped(array.raw()), opts, None)
    }

    /// A texture over one level. [`Error::InvalidValue`] as for [`new`](Self::new), except
    /// that unnormalized coordinates are allowed.
    pub fn for_level(level: &ArrayLevel, opts: &TextureOptions) -> Result<TextureObject> {
        opts.validate(level.desc().format, false)?;
        Self::create(
            level.array(),
            Resource::Array(level.raw()),
            opts,
            Some(level.level()),
        )
    }

    fn create(
        array: &Arc<MipmappedArray>,
        resource: Resource,
        opts: &TextureOptions,
        level: Option<u32>,
    ) -> Result<TextureObject> {
        let levels = if level.is_some() { 1 } else { array.levels() };
        let tex = texture_descriptor(array.desc().format, levels, opts);
        let res = resource_desc(resource);
        array.memory().device().bind()?;
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
        if let Err(e) = self.array.memory().device().bind() {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let t = texture_descriptor(ImageFormat::Rgba8Srgb, 1, &TextureOptions::default());
        assert_eq!(t.flags, sys::CU_TRSF_SRGB, "sRGB reads decode to linear");
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
}
