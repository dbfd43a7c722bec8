//! Images, independent of the API: the formats gpushare shares ([`ImageFormat`], one table that
//! maps each to Vulkan, to CUDA arrays and to CUDA channel descriptions) and an image's shape
//! ([`ImageDesc`]: kind, extent, mip levels, layers) with its per-level arithmetic.
//!
//! The Vulkan image lives in `vulkan/image.rs`, its CUDA import in `cuda/array.rs`; both take
//! their format facts from here.

use std::fmt;

use ash::vk;
use cudarc::driver::sys::CUarray_format;

/// How a channel's bits are read: CUDA's `cudaChannelFormatKind`, with normalization spelled
/// out (`cudaChannelFormatKindUnsigned` + normalized read mode for the unorm formats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// Unsigned integer, read as an integer (`cudaChannelFormatKindUnsigned`).
    Unsigned,
    /// Unsigned integer, read normalized to [0, 1] by a texture (`cudaChannelFormatKindUnsigned`,
    /// `cudaReadModeNormalizedFloat`).
    UnsignedNormalized,
    /// IEEE float, 16 or 32 bits (`cudaChannelFormatKindFloat`).
    Float,
}

/// One format's facts, in one row of [`FORMATS`].
#[derive(Clone, Copy, Debug)]
pub struct FormatInfo {
    /// The format.
    pub format: ImageFormat,
    /// Its name in the CLI and the docs (`rgba8unorm`).
    pub name: &'static str,
    /// The Vulkan format.
    pub vk: vk::Format,
    /// Channels per texel: 1, 2 or 4 (CUDA arrays have no 3-channel formats).
    pub channels: u32,
    /// Bits per channel (`cudaChannelFormatDesc`'s x, y, z, w for the channels present).
    pub bits: u32,
    /// How channels are read.
    pub kind: ChannelKind,
    /// The CUDA array format of one channel (`CUDA_ARRAY3D_DESCRIPTOR::Format`).
    pub cuda: CUarray_format,
    /// Whether the color channels are sRGB-encoded (alpha never is): samplers, blits and clears
    /// convert them to and from linear values; the stored bytes are the encoded values.
    pub srgb: bool,
}

impl FormatInfo {
    /// Bytes per texel.
    pub const fn texel_size(&self) -> u32 {
        self.channels * self.bits / 8
    }

    /// `cudaChannelFormatDesc`'s (x, y, z, w) bits: `bits` for each channel present, 0 after.
    pub const fn channel_bits(&self) -> [u32; 4] {
        let b = self.bits;
        match self.channels {
            1 => [b, 0, 0, 0],
            2 => [b, b, 0, 0],
            _ => [b, b, b, b],
        }
    }
}

macro_rules! formats {
    ($( $variant:ident = $code:literal, $name:literal, $vk:ident, $ch:literal x $bits:literal,
        $kind:ident, $cuda:ident, $srgb:literal; )*) => {
        /// The image formats gpushare creates and shares. The discriminants are the wire values
        /// (`gpushare.v1.ImageFormat`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum ImageFormat {
            $(
                #[doc = concat!("`", $name, "`: `VK_FORMAT_", stringify!($vk), "`.")]
                $variant = $code,
            )*
        }

        /// Every format, one row each: the only place format facts are written down.
        pub const FORMATS: &[FormatInfo] = &[
            $(FormatInfo {
                format: ImageFormat::$variant,
                name: $name,
                vk: vk::Format::$vk,
                channels: $ch,
                bits: $bits,
                kind: ChannelKind::$kind,
                cuda: CUarray_format::$cuda,
                srgb: $srgb,
            },)*
        ];
    };
}

formats! {
    R8Unorm = 1, "r8unorm", R8_UNORM, 1 x 8, UnsignedNormalized, CU_AD_FORMAT_UNSIGNED_INT8, false;
    Rg8Unorm = 2, "rg8unorm", R8G8_UNORM, 2 x 8, UnsignedNormalized, CU_AD_FORMAT_UNSIGNED_INT8, false;
    Rgba8Unorm = 3, "rgba8unorm", R8G8B8A8_UNORM, 4 x 8, UnsignedNormalized, CU_AD_FORMAT_UNSIGNED_INT8, false;
    R8Uint = 4, "r8uint", R8_UINT, 1 x 8, Unsigned, CU_AD_FORMAT_UNSIGNED_INT8, false;
    Rg8Uint = 5, "rg8uint", R8G8_UINT, 2 x 8, Unsigned, CU_AD_FORMAT_UNSIGNED_INT8, false;
    Rgba8Uint = 6, "rgba8uint", R8G8B8A8_UINT, 4 x 8, Unsigned, CU_AD_FORMAT_UNSIGNED_INT8, false;
    R16Float = 7, "r16float", R16_SFLOAT, 1 x 16, Float, CU_AD_FORMAT_HALF, false;
    Rg16Float = 8, "rg16float", R16G16_SFLOAT, 2 x 16, Float, CU_AD_FORMAT_HALF, false;
    Rgba16Float = 9, "rgba16float", R16G16B16A16_SFLOAT, 4 x 16, Float, CU_AD_FORMAT_HALF, false;
    R32Float = 10, "r32float", R32_SFLOAT, 1 x 32, Float, CU_AD_FORMAT_FLOAT, false;
    Rg32Float = 11, "rg32float", R32G32_SFLOAT, 2 x 32, Float, CU_AD_FORMAT_FLOAT, false;
    Rgba32Float = 12, "rgba32float", R32G32B32A32_SFLOAT, 4 x 32, Float, CU_AD_FORMAT_FLOAT, false;
    R32Uint = 13, "r32uint", R32_UINT, 1 x 32, Unsigned, CU_AD_FORMAT_UNSIGNED_INT32, false;
    Rg32Uint = 14, "rg32uint", R32G32_UINT, 2 x 32, Unsigned, CU_AD_FORMAT_UNSIGNED_INT32, false;
    Rgba32Uint = 15, "rgba32uint", R32G32B32A32_UINT, 4 x 32, Unsigned, CU_AD_FORMAT_UNSIGNED_INT32, false;
    Rgba8Srgb = 16, "rgba8srgb", R8G8B8A8_SRGB, 4 x 8, UnsignedNormalized, CU_AD_FORMAT_UNSIGNED_INT8, true;
}

impl ImageFormat {
    /// Every format.
    pub fn all() -> impl Iterator<Item = ImageFormat> {
        FORMATS.iter().map(|f| f.format)
    }

    /// This format's row.
    pub fn info(self) -> &'static FormatInfo {
        // The table is written in discriminant order from 1 (checked by a test).
        &FORMATS[self as usize - 1]
    }

    /// The wire value.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The format with this wire value, if any.
    pub fn from_code(code: u32) -> Option<ImageFormat> {
        FORMATS
            .iter()
            .find(|f| f.format as u32 == code)
            .map(|f| f.format)
    }

    /// The format of this name (`rgba8unorm`; case-insensitive), if any.
    pub fn from_name(name: &str) -> Option<ImageFormat> {
        FORMATS
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.format)
    }

    /// The format of this Vulkan format, if gpushare shares it.
    pub fn from_vk(format: vk::Format) -> Option<ImageFormat> {
        FORMATS.iter().find(|f| f.vk == format).map(|f| f.format)
    }

    /// Its name (`rgba8unorm`).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Bytes per texel.
    pub fn texel_size(self) -> u32 {
        self.info().texel_size()
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A 2D image (with one or more array layers) or a 3D image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// 2D; `depth` is 1 and `array_layers` ≥ 1 (a 2D array when above 1).
    D2,
    /// 3D; `array_layers` is 1.
    D3,
}

/// What an image is: its format, kind, extent, mip levels and layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageDesc {
    /// Texel format.
    pub format: ImageFormat,
    /// 2D or 3D.
    pub kind: ImageKind,
    /// Level 0's width in texels.
    pub width: u32,
    /// Level 0's height in texels.
    pub height: u32,
    /// Level 0's depth in texels (1 for 2D).
    pub depth: u32,
    /// Mip levels, 1 to [`max_mip_levels`](Self::max_mip_levels).
    pub mip_levels: u32,
    /// Array layers (1 for 3D).
    pub array_layers: u32,
}

/// Why an [`ImageDesc`] is not a valid image.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid image {what} {value}: {reason}")]
pub struct DescError {
    /// Which field.
    pub what: &'static str,
    /// Its value.
    pub value: u64,
    /// Why it is refused.
    pub reason: &'static str,
}

impl ImageDesc {
    /// Checks the shape's internal consistency (not what a device supports).
    pub fn validate(&self) -> Result<(), DescError> {
        let err = |what, value: u32, reason| {
            Err(DescError {
                what,
                value: value.into(),
                reason,
            })
        };
        if self.width == 0 {
            return err("width", 0, "must be at least 1");
        }
        if self.height == 0 {
            return err("height", 0, "must be at least 1");
        }
        if self.depth == 0 {
            return err("depth", 0, "must be at least 1");
        }
        if self.array_layers == 0 {
            return err("array layers", 0, "must be at least 1");
        }
        match self.kind {
            ImageKind::D2 if self.depth != 1 => {
                return err("depth", self.depth, "a 2D image has depth 1")
            }
            ImageKind::D3 if self.array_layers != 1 => {
                return err(
                    "array layers",
                    self.array_layers,
                    "a 3D image has one layer",
                )
            }
            _ => {}
        }
        if self.mip_levels == 0 || self.mip_levels > self.max_mip_levels() {
            return err(
                "mip levels",
                self.mip_levels,
                "must be from 1 to floor(log2(largest dimension)) + 1",
            );
        }
        Ok(())
    }

    /// The full mip chain's length: `floor(log2(max(width, height, depth))) + 1`.
    pub fn max_mip_levels(&self) -> u32 {
        let largest = self.width.max(self.height).max(self.depth).max(1);
        32 - largest.leading_zeros()
    }

    /// Whether it is a layered 2D image (more than one array layer): CUDA imports it with
    /// `CUDA_ARRAY3D_LAYERED`.
    pub fn layered(&self) -> bool {
        self.kind == ImageKind::D2 && self.array_layers > 1
    }

    /// Level `level`'s extent (width, height, depth): each halves, rounding down, never below 1.
    pub fn level_extent(&self, level: u32) -> (u32, u32, u32) {
        let shrink = |v: u32| (v >> level.min(31)).max(1);
        (shrink(self.width), shrink(self.height), shrink(self.depth))
    }

    /// The bytes of one layer of level `level`, tightly packed (rows of `width × texel`).
    /// Saturates at `u64::MAX` (shapes come from requests; the driver's limits come later).
    pub fn level_layer_size(&self, level: u32) -> u64 {
        let (w, h, d) = self.level_extent(level);
        u64::from(w)
            .saturating_mul(u64::from(h))
            .saturating_mul(u64::from(d))
            .saturating_mul(u64::from(self.format.texel_size()))
    }

    /// The bytes of level `level` over all layers, tightly packed, layer after layer
    /// (saturating).
    pub fn level_size(&self, level: u32) -> u64 {
        self.level_layer_size(level)
            .saturating_mul(u64::from(self.array_layers))
    }

    /// Every level's bytes, all layers, tightly packed (saturating).
    pub fn total_size(&self) -> u64 {
        (0..self.mip_levels).fold(0u64, |sum, l| sum.saturating_add(self.level_size(l)))
    }
}

/// A box of texels within one level: `x, y, z` and `width, height, depth` in texels (z and depth
/// in slices for 3D), over layers `base_layer .. base_layer + layers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageRegion {
    /// The mip level.
    pub level: u32,
    /// First array layer.
    pub base_layer: u32,
    /// Number of layers.
    pub layers: u32,
    /// Offset in texels.
    pub x: u32,
    /// Offset in texels.
    pub y: u32,
    /// Offset in slices (3D).
    pub z: u32,
    /// Extent in texels.
    pub width: u32,
    /// Extent in texels.
    pub height: u32,
    /// Extent in slices (3D; 1 for 2D).
    pub depth: u32,
}

impl ImageRegion {
    /// The whole of level `level`, every layer.
    pub fn level(desc: &ImageDesc, level: u32) -> ImageRegion {
        let (width, height, depth) = desc.level_extent(level);
        ImageRegion {
            level,
            base_layer: 0,
            layers: desc.array_layers,
            x: 0,
            y: 0,
            z: 0,
            width,
            height,
            depth,
        }
    }

    /// Checks that the region is non-empty and lies within `desc`.
    pub fn validate(&self, desc: &ImageDesc) -> Result<(), DescError> {
        let err = |what, value: u64, reason| {
            Err(DescError {
                what,
                value,
                reason,
            })
        };
        if self.level >= desc.mip_levels {
            return err("level", self.level.into(), "beyond the image's mip levels");
        }
        let (w, h, d) = desc.level_extent(self.level);
        let fits = |off: u32, len: u32, size: u32| {
            len > 0 && u64::from(off) + u64::from(len) <= u64::from(size)
        };
        if !fits(self.x, self.width, w) {
            return err(
                "region x + width",
                u64::from(self.x) + u64::from(self.width),
                "empty or beyond the level's width",
            );
        }
        if !fits(self.y, self.height, h) {
            return err(
                "region y + height",
                u64::from(self.y) + u64::from(self.height),
                "empty or beyond the level's height",
            );
        }
        if !fits(self.z, self.depth, d) {
            return err(
                "region z + depth",
                u64::from(self.z) + u64::from(self.depth),
                "empty or beyond the level's depth",
            );
        }
        if !fits(self.base_layer, self.layers, desc.array_layers) {
            return err(
                "region base layer + layers",
                u64::from(self.base_layer) + u64::from(self.layers),
                "empty or beyond the image's layers",
            );
        }
        Ok(())
    }

    /// The region's bytes, tightly packed: rows of `width` texels, then `height` rows, then
    /// `depth` slices, then `layers` layers.
    pub fn size(&self, format: ImageFormat) -> u64 {
        self.size_bytes(format.texel_size())
    }

    /// The region's bytes, tightly packed, at `texel` bytes per texel.
    /// Saturates at `u64::MAX`.
    pub fn size_bytes(&self, texel: u32) -> u64 {
        u64::from(self.width)
            .saturating_mul(u64::from(self.height))
            .saturating_mul(u64::from(self.depth))
            .saturating_mul(u64::from(self.layers))
            .saturating_mul(u64::from(texel))
    }
}

/// The linear value of an sRGB-encoded 8-bit channel (the sRGB EOTF, as Vulkan decodes
/// `*_SRGB` formats).
pub fn srgb_to_linear(encoded: u8) -> f32 {
    let c = f32::from(encoded) / 255.0;
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// The sRGB-encoded 8-bit channel of a linear value in [0, 1] (clamped; NaN as 0), rounded to
/// nearest: how Vulkan encodes `*_SRGB` formats.
pub fn linear_to_srgb(linear: f32) -> u8 {
    let l = if linear.is_nan() {
        0.0
    } else {
        linear.clamp(0.0, 1.0)
    };
    let c = if l <= 0.003_130_8 {
        l * 12.92
    } else {
        1.055 * l.powf(1.0 / 2.4) - 0.055
    };
    (c * 255.0).round() as u8
}

/// Half-precision floats (the 16-bit float formats), converted exactly one way and rounded to
/// nearest, ties to even, the other.
/// IEEE 754 half precision from single precision, rounding to nearest, ties to even:
/// overflow becomes infinity, values below half the smallest subnormal become (signed) zero,
/// NaN stays NaN.
pub fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x007f_ffff;
    if exp == 0xff {
        // Infinity, or NaN kept quiet with the top of its payload.
        let nan = if man != 0 {
            0x0200 | (man >> 13) as u16
        } else {
            0
        };
        return sign | 0x7c00 | nan;
    }
    // The half's biased exponent.
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // A half subnormal (or zero): the value is m × 2^-24 with m = significand >> (14 - e).
        if e < -10 {
            // Below 2^-25, half the smallest subnormal: rounds to zero.
            return sign;
        }
        let significand = man | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = significand >> shift;
        let rem = significand & ((1 << shift) - 1);
        let mid = 1 << (shift - 1);
        let round = u32::from(rem > mid || (rem == mid && half & 1 == 1));
        // A carry into bit 10 is the smallest normal, exactly right.
        return sign | (half + round) as u16;
    }
    let half = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    let round = u32::from(rem > 0x1000 || (rem == 0x1000 && half & 1 == 1));
    // A carry out of the mantissa bumps the exponent (to infinity from the largest finite).
    sign | (half + round) as u16
}

/// Single precision from IEEE 754 half precision (exact).
pub fn f16_to_f32(half: u16) -> f32 {
    let sign = u32::from(half & 0x8000) << 16;
    let exp = u32::from((half >> 10) & 0x1f);
    let man = u32::from(half & 0x03ff);
    match exp {
        0 => {
            // Zero or subnormal: man × 2^-24, exact in f32.
            let magnitude = man as f32 * f32::from_bits(0x3380_0000);
            if sign != 0 {
                -magnitude
            } else {
                magnitude
            }
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 127 - 15) << 23) | (man << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_code_order_and_consistent() {
        for (i, f) in FORMATS.iter().enumerate() {
            assert_eq!(f.format as usize, i + 1, "{}", f.name);
            assert_eq!(f.format.info().name, f.name);
            assert_eq!(ImageFormat::from_code(f.format.code()), Some(f.format));
            assert_eq!(ImageFormat::from_name(f.name), Some(f.format));
            assert_eq!(ImageFormat::from_vk(f.vk), Some(f.format));
            assert!(matches!(f.channels, 1 | 2 | 4), "{}", f.name);
        }
        assert_eq!(ImageFormat::from_code(0), None);
        assert_eq!(ImageFormat::from_code(17), None);
        assert_eq!(ImageFormat::from_name("rgb8unorm"), None);
    }

    #[test]
    fn every_format_maps_to_vulkan_and_cuda() {
        use CUarray_format::*;
        // (format, vk, texel bytes, channel bits, kind, CUDA array format)
        let expected = [
            (
                ImageFormat::R8Unorm,
                vk::Format::R8_UNORM,
                1,
                [8, 0, 0, 0],
                ChannelKind::UnsignedNormalized,
                CU_AD_FORMAT_UNSIGNED_INT8,
            ),
            (
                ImageFormat::Rg8Unorm,
                vk::Format::R8G8_UNORM,
                2,
                [8, 8, 0, 0],
                ChannelKind::UnsignedNormalized,
                CU_AD_FORMAT_UNSIGNED_INT8,
            ),
            (
                ImageFormat::Rgba8Unorm,
                vk::Format::R8G8B8A8_UNORM,
                4,
                [8, 8, 8, 8],
                ChannelKind::UnsignedNormalized,
                CU_AD_FORMAT_UNSIGNED_INT8,
            ),
            (
                ImageFormat::R8Uint,
                vk::Format::R8_UINT,
                1,
                [8, 0, 0, 0],
                ChannelKind::Unsigned,
                CU_AD_FORMAT_UNSIGNED_INT8,
            ),
            (
                ImageFormat::Rg8Uint,
                vk::Format::R8G8_UINT,
                2,
                [8, 8, 0, 0],
                ChannelKind::Unsigned,
                CU_AD_FORMAT_UNSIGNED_INT8,
            ),
            (
                ImageFormat::Rgba8Uint,
                vk::Format::R8G8B8A8_UINT,
                4,
                [8, 8, 8, 8],
                ChannelKind::Unsigned,
                CU_AD_FORMAT_UNSIGNED_INT8,
            ),
            (
                ImageFormat::R16Float,
                vk::Format::R16_SFLOAT,
                2,
                [16, 0, 0, 0],
                ChannelKind::Float,
                CU_AD_FORMAT_HALF,
            ),
            (
                ImageFormat::Rg16Float,
                vk::Format::R16G16_SFLOAT,
                4,
                [16, 16, 0, 0],
                ChannelKind::Float,
                CU_AD_FORMAT_HALF,
            ),
            (
                ImageFormat::Rgba16Float,
                vk::Format::R16G16B16A16_SFLOAT,
                8,
                [16, 16, 16, 16],
                ChannelKind::Float,
                CU_AD_FORMAT_HALF,
            ),
            (
                ImageFormat::R32Float,
                vk::Format::R32_SFLOAT,
                4,
                [32, 0, 0, 0],
                ChannelKind::Float,
                CU_AD_FORMAT_FLOAT,
            ),
            (
                ImageFormat::Rg32Float,
                vk::Format::R32G32_SFLOAT,
                8,
                [32, 32, 0, 0],
                ChannelKind::Float,
                CU_AD_FORMAT_FLOAT,
            ),
            (
                ImageFormat::Rgba32Float,
                vk::Format::R32G32B32A32_SFLOAT,
                16,
                [32, 32, 32, 32],
                ChannelKind::Float,
                CU_AD_FORMAT_FLOAT,
            ),
            (
                ImageFormat::R32Uint,
                vk::Format::R32_UINT,
                4,
                [32, 0, 0, 0],
                ChannelKind::Unsigned,
                CU_AD_FORMAT_UNSIGNED_INT32,
            ),
            (
                ImageFormat::Rg32Uint,
                vk::Format::R32G32_UINT,
                8,
                [32, 32, 0, 0],
                ChannelKind::Unsigned,
                CU_AD_FORMAT_UNSIGNED_INT32,
            ),
            (
                ImageFormat::Rgba32Uint,
                vk::Format::R32G32B32A32_UINT,
                16,
                [32, 32, 32, 32],
                ChannelKind::Unsigned,
                CU_AD_FORMAT_UNSIGNED_INT32,
            ),
            (
                ImageFormat::Rgba8Srgb,
                vk::Format::R8G8B8A8_SRGB,
                4,
                [8, 8, 8, 8],
                ChannelKind::UnsignedNormalized,
                CU_AD_FORMAT_UNSIGNED_INT8,
            ),
        ];
        assert_eq!(expected.len(), FORMATS.len(), "every format is checked");
        for (format, vkf, texel, bits, kind, cuda) in expected {
            let info = format.info();
            assert_eq!(info.vk, vkf, "{format}");
            assert_eq!(info.texel_size(), texel, "{format}");
            assert_eq!(info.channel_bits(), bits, "{format}");
            assert_eq!(info.kind, kind, "{format}");
            assert_eq!(info.cuda, cuda, "{format}");
            assert_eq!(info.srgb, format == ImageFormat::Rgba8Srgb, "{format}");
        }
    }

    fn desc(kind: ImageKind, w: u32, h: u32, d: u32, levels: u32, layers: u32) -> ImageDesc {
        ImageDesc {
            format: ImageFormat::Rgba8Unorm,
            kind,
            width: w,
            height: h,
            depth: d,
            mip_levels: levels,
            array_layers: layers,
        }
    }

    #[test]
    fn mip_chains_and_sizes() {
        let d = desc(ImageKind::D2, 256, 64, 1, 9, 3);
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(d.max_mip_levels(), 9);
        assert_eq!(d.level_extent(0), (256, 64, 1));
        assert_eq!(d.level_extent(6), (4, 1, 1));
        assert_eq!(d.level_extent(8), (1, 1, 1));
        assert_eq!(d.level_size(0), 256 * 64 * 4 * 3);
        assert!(d.layered());
        assert_eq!(desc(ImageKind::D2, 1, 1, 1, 1, 1).max_mip_levels(), 1);
        let v = desc(ImageKind::D3, 16, 8, 32, 6, 1);
        assert_eq!(v.validate(), Ok(()));
        assert_eq!(v.level_extent(3), (2, 1, 4));
        assert!(!v.layered());
        assert_eq!(v.total_size(), (0..6).map(|l| v.level_size(l)).sum::<u64>());
    }

    #[test]
    fn sizes_of_absurd_shapes_saturate() {
        let d = desc(ImageKind::D3, u32::MAX, u32::MAX, u32::MAX, 32, 1);
        assert_eq!(d.level_size(0), u64::MAX);
        assert_eq!(d.total_size(), u64::MAX);
        let r = ImageRegion::level(&d, 0);
        assert_eq!(r.size(d.format), u64::MAX);
    }

    #[test]
    fn bad_shapes_are_refused_with_the_field() {
        assert_eq!(
            desc(ImageKind::D2, 0, 4, 1, 1, 1)
                .validate()
                .unwrap_err()
                .what,
            "width"
        );
        assert_eq!(
            desc(ImageKind::D2, 4, 4, 2, 1, 1)
                .validate()
                .unwrap_err()
                .what,
            "depth"
        );
        assert_eq!(
            desc(ImageKind::D3, 4, 4, 4, 1, 2)
                .validate()
                .unwrap_err()
                .what,
            "array layers"
        );
        assert_eq!(
            desc(ImageKind::D2, 4, 4, 1, 4, 1)
                .validate()
                .unwrap_err()
                .what,
            "mip levels"
        );
        assert_eq!(
            desc(ImageKind::D2, 4, 4, 1, 0, 1)
                .validate()
                .unwrap_err()
                .what,
            "mip levels"
        );
    }

    #[test]
    fn regions_must_lie_within_their_level() {
        let d = desc(ImageKind::D2, 64, 32, 1, 3, 2);
        let whole = ImageRegion::level(&d, 2);
        assert_eq!(whole.validate(&d), Ok(()));
        assert_eq!((whole.width, whole.height, whole.layers), (16, 8, 2));
        assert_eq!(whole.size(d.format), 16 * 8 * 2 * 4);
        let mut r = whole;
        r.x = 1;
        assert_eq!(r.validate(&d).unwrap_err().what, "region x + width");
        let mut r = whole;
        r.level = 3;
        assert_eq!(r.validate(&d).unwrap_err().what, "level");
        let mut r = whole;
        r.base_layer = 1;
        assert!(r.validate(&d).is_err());
        let mut r = whole;
        r.height = 0;
        assert!(r.validate(&d).is_err());
    }

    #[test]
    fn srgb_encoding_round_trips_and_averages_high() {
        for v in 0..=255u8 {
            assert_eq!(linear_to_srgb(srgb_to_linear(v)), v, "{v}");
        }
        assert_eq!(srgb_to_linear(0), 0.0);
        assert_eq!(srgb_to_linear(255), 1.0);
        // Black and white averaged in linear light: 188, not the 128 of averaging the bytes.
        let mid = (srgb_to_linear(0) + srgb_to_linear(255)) / 2.0;
        assert_eq!(linear_to_srgb(mid), 188);
        assert_eq!(linear_to_srgb(-1.0), 0);
        assert_eq!(linear_to_srgb(2.0), 255);
        assert_eq!(linear_to_srgb(f32::NAN), 0);
    }

    #[test]
    fn f16_known_values() {
        for (value, half) in [
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-1.0, 0xbc00),
            (0.5, 0x3800),
            (2.0, 0x4000),
            (65504.0, 0x7bff),
            (-65504.0, 0xfbff),
            // 2^-24, the smallest subnormal; 1023 × 2^-24, the largest; 2^-14, the smallest normal.
            (f32::from_bits(0x3380_0000), 0x0001),
            (1023.0 * f32::from_bits(0x3380_0000), 0x03ff),
            (f32::from_bits(0x3880_0000), 0x0400),
            (f32::INFINITY, 0x7c00),
            (f32::NEG_INFINITY, 0xfc00),
        ] {
            assert_eq!(f32_to_f16(value), half, "{value} to f16");
            assert_eq!(
                f16_to_f32(half).to_bits(),
                value.to_bits(),
                "{half:#06x} to f32"
            );
        }
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        let ulp = f32::from_bits(0x3a80_0000); // 2^-10, the ulp of half at 1.0
        assert_eq!(f32_to_f16(1.0 + ulp / 2.0), 0x3c00, "tie to even (down)");
        assert_eq!(f32_to_f16(1.0 + 1.5 * ulp), 0x3c02, "tie to even (up)");
        assert_eq!(f32_to_f16(1.0 + ulp * 0.51), 0x3c01, "above the tie");
        assert_eq!(f32_to_f16(65519.0), 0x7bff, "below the overflow tie");
        assert_eq!(
            f32_to_f16(65520.0),
            0x7c00,
            "the overflow tie rounds to infinity"
        );
        assert_eq!(f32_to_f16(1e10), 0x7c00);
        assert_eq!(f32_to_f16(-1e10), 0xfc00);
        let tiny = f32::from_bits(0x3300_0000); // 2^-25: half the smallest subnormal
        assert_eq!(f32_to_f16(tiny), 0x0000, "subnormal tie to even (zero)");
        assert_eq!(f32_to_f16(tiny * 1.5), 0x0001);
        assert_eq!(f32_to_f16(-tiny * 1.5), 0x8001);
        assert_eq!(f32_to_f16(tiny * 3.0), 0x0002, "1.5 ulp ties to even (2)");
        assert_eq!(f32_to_f16(f32::from_bits(0x3280_0000)), 0x0000, "2^-26");
        assert_eq!(f32_to_f16(f32::MIN_POSITIVE), 0x0000);
        // Just below the smallest normal rounds up into it.
        assert_eq!(f32_to_f16(f32::from_bits(0x387f_ffff)), 0x0400);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }

    #[test]
    fn every_f16_round_trips() {
        for half in 0..=u16::MAX {
            let value = f16_to_f32(half);
            if value.is_nan() {
                assert!(f16_to_f32(f32_to_f16(value)).is_nan(), "{half:#06x}");
                assert_eq!(half & 0x7c00, 0x7c00);
            } else {
                assert_eq!(f32_to_f16(value), half, "{half:#06x} ({value:e})");
            }
        }
    }
}
