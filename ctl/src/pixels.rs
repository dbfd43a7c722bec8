//! Pixel conversions for `image upload` and `image download`: PNG files (decoded and encoded
//! with the `png` crate) to and from the tightly packed texels of an image level, and IEEE half
//! floats.
//!
//! Upload: a PNG's pixels (8- or 16-bit gray, gray + alpha, RGB or RGBA; palette and sub-byte
//! images are expanded to 8-bit RGB(A) or gray) are first seen as RGBA — gray spreads to R, G
//! and B, a missing alpha is opaque — then the format's channels are taken from the front: R
//! for `r*`, R and G for `rg*`, all four for `rgba*`. Unorm formats take 8-bit samples as they
//! are and the high byte of 16-bit ones; float formats take samples normalized to [0, 1].
//! Download: unorm bytes as they are, floats clamped to [0, 1] (NaN as 0) and scaled to 8 bits;
//! `r*` becomes a gray PNG, `rg*` an RGB one with blue 0, `rgba*` an RGBA one. Uint formats
//! have no PNG conversion (their values are not intensities): they move as raw bytes.
//!
//! Texels are little-endian, like every host gpushare runs on (and the daemon's own packing).
//! Sample values are taken as they are: no gamma or sRGB conversion is applied. PNG files hold
//! sRGB-encoded samples, so `rgba8srgb` takes and gives them with their meaning kept (the GPU
//! decodes them to linear light where it filters); a unorm format holds the same bytes, read as
//! linear values.

use gpushare_client::ImageFormat;
use gpushare_interop::image::{f16_to_f32, f32_to_f16, ChannelKind};

/// The eight bytes every PNG file starts with.
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Whether `data` starts like a PNG file.
pub fn is_png(data: &[u8]) -> bool {
    data.starts_with(&PNG_SIGNATURE)
}

/// The channels of a PNG's pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Gray,
    GrayAlpha,
    Rgb,
    Rgba,
}

impl Layout {
    /// Samples per pixel.
    pub fn channels(self) -> usize {
        match self {
            Layout::Gray => 1,
            Layout::GrayAlpha => 2,
            Layout::Rgb => 3,
            Layout::Rgba => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::Gray => "gray",
            Layout::GrayAlpha => "gray-alpha",
            Layout::Rgb => "RGB",
            Layout::Rgba => "RGBA",
        }
    }
}

/// A PNG's pixels: `height` rows of `width` pixels of `layout.channels()` samples each, every
/// sample `bits` wide (8 or 16).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub bits: u8,
    pub samples: Vec<u16>,
}

impl Pixels {
    /// The largest sample value (opaque alpha, full intensity).
    fn max(&self) -> u16 {
        if self.bits == 16 {
            u16::MAX
        } else {
            u16::from(u8::MAX)
        }
    }

    /// Pixel `i` as RGBA: gray spreads to R, G and B; a missing alpha is opaque.
    fn rgba(&self, i: usize) -> [u16; 4] {
        let n = self.layout.channels();
        let s = &self.samples[i * n..(i + 1) * n];
        let max = self.max();
        match self.layout {
            Layout::Gray => [s[0], s[0], s[0], max],
            Layout::GrayAlpha => [s[0], s[0], s[0], s[1]],
            Layout::Rgb => [s[0], s[1], s[2], max],
            Layout::Rgba => [s[0], s[1], s[2], s[3]],
        }
    }

    /// A one-line description: `37x21 8-bit RGBA`.
    pub fn describe(&self) -> String {
        format!(
            "{}x{} {}-bit {}",
            self.width,
            self.height,
            self.bits,
            self.layout.name()
        )
    }
}

/// Fails for formats without a PNG conversion (the uint formats).
pub fn png_convertible(format: ImageFormat) -> Result<(), String> {
    match format.info().kind {
        ChannelKind::Unsigned => Err(format!(
            "{format} is a uint format: PNG files convert only to and from unorm and float \
             formats (move its texels with --raw)"
        )),
        ChannelKind::UnsignedNormalized | ChannelKind::Float => Ok(()),
    }
}

/// The tightly packed texels of `format` for `pixels` (see the module documentation).
pub fn to_texels(pixels: &Pixels, format: ImageFormat) -> Result<Vec<u8>, String> {
    png_convertible(format)?;
    let info = format.info();
    let channels = info.channels as usize;
    let count = pixels.width as usize * pixels.height as usize;
    let expected = count * pixels.layout.channels();
    if pixels.samples.len() != expected {
        return Err(format!(
            "{} has {} samples instead of {expected}",
            pixels.describe(),
            pixels.samples.len()
        ));
    }
    let max = f32::from(pixels.max());
    let mut out = Vec::with_capacity(count * info.texel_size() as usize);
    for i in 0..count {
        for &v in &pixels.rgba(i)[..channels] {
            match (info.kind, info.bits) {
                // Every unorm format has 8-bit channels.
                (ChannelKind::UnsignedNormalized, _) => out.push(if pixels.bits == 16 {
                    (v >> 8) as u8
                } else {
                    v as u8
                }),
                (_, 16) => out.extend(f32_to_f16(f32::from(v) / max).to_le_bytes()),
                _ => out.extend((f32::from(v) / max).to_le_bytes()),
            }
        }
    }
    Ok(out)
}

/// An 8-bit PNG's pixels for `width` x `height` texels of `format` (see the module
/// documentation).
pub fn from_texels(
    data: &[u8],
    width: u32,
    height: u32,
    format: ImageFormat,
) -> Result<Pixels, String> {
    png_convertible(format)?;
    let info = format.info();
    let texel = info.texel_size() as usize;
    let count = width as usize * height as usize;
    if data.len() != count * texel {
        return Err(format!(
            "{} bytes of {format} texels, expected {} for {width}x{height}",
            data.len(),
            count * texel
        ));
    }
    let layout = match info.channels {
        1 => Layout::Gray,
        2 => Layout::Rgb,
        _ => Layout::Rgba,
    };
    let width_bytes = (info.bits / 8) as usize;
    let mut samples = Vec::with_capacity(count * layout.channels());
    for t in data.chunks_exact(texel) {
        let mut px = [0u16; 4];
        for (c, bytes) in t.chunks_exact(width_bytes).enumerate() {
            px[c] = match (info.kind, bytes) {
                (ChannelKind::UnsignedNormalized, [v]) => u16::from(*v),
                (_, &[lo, hi]) => unit_to_u8(f16_to_f32(u16::from_le_bytes([lo, hi]))),
                (_, &[b0, b1, b2, b3]) => unit_to_u8(f32::from_le_bytes([b0, b1, b2, b3])),
                _ => unreachable!("channels are 1, 2 or 4 bytes wide"),
            };
        }
        // rg: [r, g, 0] (blue 0); gray and RGBA take their channels as they are.
        samples.extend_from_slice(&px[..layout.channels()]);
    }
    Ok(Pixels {
        width,
        height,
        layout,
        bits: 8,
        samples,
    })
}

/// A float clamped to [0, 1] (NaN as 0) and scaled to 0..=255.
fn unit_to_u8(v: f32) -> u16 {
    if v.is_nan() {
        0
    } else {
        (v.clamp(0.0, 1.0) * 255.0).round() as u16
    }
}

/// Decodes a PNG file. `check_size` sees the width and height from its header before any
/// pixel is decoded (a refusal stops there, whatever size the header claims).
pub fn decode_png(
    data: &[u8],
    check_size: impl FnOnce(u32, u32) -> Result<(), String>,
) -> Result<Pixels, String> {
    let invalid = |e: png::DecodingError| format!("not a valid PNG file: {e}");
    let mut decoder = png::Decoder::new(data);
    // Palette images to RGB(A), sub-byte gray to 8 bits, tRNS to an alpha channel.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(invalid)?;
    let (width, height) = (reader.info().width, reader.info().height);
    check_size(width, height)?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(invalid)?;
    let layout = match frame.color_type {
        png::ColorType::Grayscale => Layout::Gray,
        png::ColorType::GrayscaleAlpha => Layout::GrayAlpha,
        png::ColorType::Rgb => Layout::Rgb,
        png::ColorType::Rgba => Layout::Rgba,
        png::ColorType::Indexed => return Err("palette PNG was not expanded".into()),
    };
    let bits = match frame.bit_depth {
        png::BitDepth::Eight => 8,
        png::BitDepth::Sixteen => 16,
        other => return Err(format!("{other:?}-bit samples were not expanded")),
    };
    let row_samples = width as usize * layout.channels();
    let mut samples = Vec::with_capacity(row_samples * height as usize);
    for row in buf[..frame.buffer_size()].chunks_exact(frame.line_size) {
        if bits == 16 {
            let row = row
                .chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]));
            samples.extend(row.take(row_samples));
        } else {
            samples.extend(row[..row_samples].iter().map(|&b| u16::from(b)));
        }
    }
    Ok(Pixels {
        width,
        height,
        layout,
        bits,
        samples,
    })
}

/// Encodes `pixels` as a PNG file.
pub fn encode_png(pixels: &Pixels) -> Result<Vec<u8>, String> {
    let failed = |e: png::EncodingError| format!("cannot encode the PNG: {e}");
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, pixels.width, pixels.height);
    encoder.set_color(match pixels.layout {
        Layout::Gray => png::ColorType::Grayscale,
        Layout::GrayAlpha => png::ColorType::GrayscaleAlpha,
        Layout::Rgb => png::ColorType::Rgb,
        Layout::Rgba => png::ColorType::Rgba,
    });
    let bytes: Vec<u8> = if pixels.bits == 16 {
        encoder.set_depth(png::BitDepth::Sixteen);
        pixels
            .samples
            .iter()
            .flat_map(|s| s.to_be_bytes())
            .collect()
    } else {
        encoder.set_depth(png::BitDepth::Eight);
        pixels.samples.iter().map(|&s| s as u8).collect()
    };
    let mut writer = encoder.write_header().map_err(failed)?;
    writer.write_image_data(&bytes).map_err(failed)?;
    writer.finish().map_err(failed)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| f32_to_f16(v).to_le_bytes())
            .collect()
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn pixels(layout: Layout, bits: u8, samples: &[u16]) -> Pixels {
        let width = (samples.len() / layout.channels()) as u32;
        Pixels {
            width,
            height: 1,
            layout,
            bits,
            samples: samples.to_vec(),
        }
    }

    #[test]
    fn png_signature() {
        let png = encode_png(&pixels(Layout::Gray, 8, &[1, 2])).unwrap();
        assert!(is_png(&png));
        assert!(!is_png(b"\x89PNG"));
        assert!(!is_png(b"not a png at all"));
    }

    /// Two RGBA pixels, 8-bit: (10, 20, 30, 40) and (255, 0, 128, 255).
    fn two_rgba() -> Pixels {
        pixels(Layout::Rgba, 8, &[10, 20, 30, 40, 255, 0, 128, 255])
    }

    #[test]
    fn rgba8_png_into_every_format() {
        let px = two_rgba();
        let unit = |v: u16| f32::from(v) / 255.0;
        let rgba: Vec<f32> = px.samples.iter().map(|&v| unit(v)).collect();
        let pick = |channels: usize| -> Vec<f32> {
            rgba.chunks(4)
                .flat_map(|p| p[..channels].to_vec())
                .collect()
        };
        for format in ImageFormat::all() {
            let got = to_texels(&px, format);
            let expected = match format {
                ImageFormat::R8Unorm => vec![10, 255],
                ImageFormat::Rg8Unorm => vec![10, 20, 255, 0],
                ImageFormat::Rgba8Unorm | ImageFormat::Rgba8Srgb => {
                    vec![10, 20, 30, 40, 255, 0, 128, 255]
                }
                ImageFormat::R16Float => f16_bytes(&pick(1)),
                ImageFormat::Rg16Float => f16_bytes(&pick(2)),
                ImageFormat::Rgba16Float => f16_bytes(&pick(4)),
                ImageFormat::R32Float => f32_bytes(&pick(1)),
                ImageFormat::Rg32Float => f32_bytes(&pick(2)),
                ImageFormat::Rgba32Float => f32_bytes(&pick(4)),
                ImageFormat::R8Uint
                | ImageFormat::Rg8Uint
                | ImageFormat::Rgba8Uint
                | ImageFormat::R32Uint
                | ImageFormat::Rg32Uint
                | ImageFormat::Rgba32Uint => {
                    let err = got.expect_err("uint formats have no PNG conversion");
                    assert!(err.contains("uint format"), "{err}");
                    assert!(err.contains(format.name()), "{err}");
                    continue;
                }
            };
            assert_eq!(got.unwrap(), expected, "{format}");
            assert_eq!(expected.len(), 2 * format.texel_size() as usize, "{format}");
        }
        // The float values are the normalized samples.
        let r32 = to_texels(&px, ImageFormat::Rgba32Float).unwrap();
        assert_eq!(&r32[..4], &(10.0f32 / 255.0).to_le_bytes());
        assert_eq!(&r32[28..32], &1.0f32.to_le_bytes());
    }

    #[test]
    fn png_layouts_expand_to_rgba_then_take_channels() {
        let gray = pixels(Layout::Gray, 8, &[7, 200]);
        assert_eq!(
            to_texels(&gray, ImageFormat::Rgba8Unorm).unwrap(),
            [7, 7, 7, 255, 200, 200, 200, 255]
        );
        assert_eq!(
            to_texels(&gray, ImageFormat::Rg8Unorm).unwrap(),
            [7, 7, 200, 200]
        );
        assert_eq!(to_texels(&gray, ImageFormat::R8Unorm).unwrap(), [7, 200]);
        let gray_alpha = pixels(Layout::GrayAlpha, 8, &[7, 9, 200, 0]);
        assert_eq!(
            to_texels(&gray_alpha, ImageFormat::Rgba8Unorm).unwrap(),
            [7, 7, 7, 9, 200, 200, 200, 0]
        );
        assert_eq!(
            to_texels(&gray_alpha, ImageFormat::Rg8Unorm).unwrap(),
            [7, 7, 200, 200]
        );
        let rgb = pixels(Layout::Rgb, 8, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(
            to_texels(&rgb, ImageFormat::Rgba8Unorm).unwrap(),
            [1, 2, 3, 255, 4, 5, 6, 255]
        );
        assert_eq!(
            to_texels(&rgb, ImageFormat::Rg8Unorm).unwrap(),
            [1, 2, 4, 5]
        );
        assert_eq!(to_texels(&rgb, ImageFormat::R8Unorm).unwrap(), [1, 4]);
        assert_eq!(
            to_texels(&rgb, ImageFormat::Rgba32Float).unwrap()[12..16],
            1.0f32.to_le_bytes(),
            "opaque alpha is 1.0"
        );
        let short = Pixels { width: 3, ..rgb };
        assert!(to_texels(&short, ImageFormat::R8Unorm).is_err());
    }

    #[test]
    fn sixteen_bit_pngs() {
        let px = pixels(Layout::Rgba, 16, &[0x1234, 0xff00, 0x00ff, 0xffff]);
        assert_eq!(
            to_texels(&px, ImageFormat::Rgba8Unorm).unwrap(),
            [0x12, 0xff, 0x00, 0xff],
            "the high byte"
        );
        let floats = to_texels(&px, ImageFormat::Rgba32Float).unwrap();
        let expected = f32_bytes(&[
            f32::from(0x1234u16) / 65535.0,
            f32::from(0xff00u16) / 65535.0,
            f32::from(0x00ffu16) / 65535.0,
            1.0,
        ]);
        assert_eq!(floats, expected);
        let gray = pixels(Layout::Gray, 16, &[0xabcd]);
        assert_eq!(
            to_texels(&gray, ImageFormat::Rgba8Unorm).unwrap(),
            [0xab, 0xab, 0xab, 0xff]
        );
        assert_eq!(
            to_texels(&gray, ImageFormat::R16Float).unwrap(),
            f32_to_f16(f32::from(0xabcdu16) / 65535.0).to_le_bytes()
        );
    }

    #[test]
    fn every_format_to_png() {
        for format in ImageFormat::all() {
            let texel = format.texel_size() as usize;
            let got = from_texels(&vec![0; 2 * texel], 2, 1, format);
            let (layout, samples): (Layout, Vec<u16>) = match format {
                ImageFormat::R8Unorm => (Layout::Gray, vec![0; 2]),
                ImageFormat::Rg8Unorm | ImageFormat::Rg16Float | ImageFormat::Rg32Float => {
                    (Layout::Rgb, vec![0; 6])
                }
                ImageFormat::R16Float | ImageFormat::R32Float => (Layout::Gray, vec![0; 2]),
                ImageFormat::Rgba8Unorm
                | ImageFormat::Rgba8Srgb
                | ImageFormat::Rgba16Float
                | ImageFormat::Rgba32Float => (Layout::Rgba, vec![0; 8]),
                ImageFormat::R8Uint
                | ImageFormat::Rg8Uint
                | ImageFormat::Rgba8Uint
                | ImageFormat::R32Uint
                | ImageFormat::Rg32Uint
                | ImageFormat::Rgba32Uint => {
                    assert!(got.unwrap_err().contains("--raw"), "{format}");
                    continue;
                }
            };
            let got = got.unwrap();
            assert_eq!(
                (got.layout, got.bits, got.samples),
                (layout, 8, samples),
                "{format}"
            );
        }
        // Unorm bytes as they are; rg gets blue 0.
        let r8 = from_texels(&[3, 250], 1, 2, ImageFormat::R8Unorm).unwrap();
        assert_eq!((r8.width, r8.height, r8.samples), (1, 2, vec![3, 250]));
        let rg8 = from_texels(&[3, 250, 9, 8], 2, 1, ImageFormat::Rg8Unorm).unwrap();
        assert_eq!(rg8.samples, [3, 250, 0, 9, 8, 0]);
        let rgba8 = from_texels(&[1, 2, 3, 4], 1, 1, ImageFormat::Rgba8Unorm).unwrap();
        assert_eq!(rgba8.samples, [1, 2, 3, 4]);
        // Floats are clamped, NaN is 0, and 0.5 rounds to 128.
        let values = [-1.0, 2.0, f32::NAN, 0.5];
        let f32s = from_texels(&f32_bytes(&values), 1, 1, ImageFormat::Rgba32Float).unwrap();
        assert_eq!(f32s.samples, [0, 255, 0, 128]);
        let f16s = from_texels(&f16_bytes(&values), 1, 1, ImageFormat::Rgba16Float).unwrap();
        assert_eq!(f16s.samples, [0, 255, 0, 128]);
        let rg = from_texels(&f16_bytes(&[0.25, 1.0]), 1, 1, ImageFormat::Rg16Float).unwrap();
        assert_eq!(rg.samples, [64, 255, 0]);
        let r = from_texels(&f32_bytes(&[0.75]), 1, 1, ImageFormat::R32Float).unwrap();
        assert_eq!((r.layout, r.samples), (Layout::Gray, vec![191]));
        // The data must be exactly the texels of the extent.
        let err = from_texels(&[0; 5], 1, 1, ImageFormat::Rgba8Unorm).unwrap_err();
        assert!(err.contains("expected 4"), "{err}");
    }

    #[test]
    fn eight_bit_values_survive_every_float_format() {
        let samples: Vec<u16> = (0..=255).collect();
        let px = Pixels {
            width: 64,
            height: 1,
            layout: Layout::Rgba,
            bits: 8,
            samples,
        };
        for format in [ImageFormat::Rgba16Float, ImageFormat::Rgba32Float] {
            let texels = to_texels(&px, format).unwrap();
            let back = from_texels(&texels, 64, 1, format).unwrap();
            assert_eq!(back.samples, px.samples, "{format}");
        }
        for format in [
            ImageFormat::R16Float,
            ImageFormat::Rg16Float,
            ImageFormat::R32Float,
            ImageFormat::Rg32Float,
        ] {
            let texels = to_texels(&px, format).unwrap();
            let back = from_texels(&texels, 64, 1, format).unwrap();
            let channels = format.info().channels as usize;
            for (i, p) in back.samples.chunks(back.layout.channels()).enumerate() {
                assert_eq!(
                    p[..channels],
                    px.samples[i * 4..i * 4 + channels],
                    "{format}"
                );
            }
        }
    }

    #[test]
    fn png_files_round_trip() {
        for (layout, bits) in [
            (Layout::Gray, 8),
            (Layout::GrayAlpha, 8),
            (Layout::Rgb, 8),
            (Layout::Rgba, 8),
            (Layout::Gray, 16),
            (Layout::Rgba, 16),
        ] {
            let max = if bits == 16 { 65535 } else { 255 };
            let (width, height) = (5u32, 3u32);
            let n = (width * height) as usize * layout.channels();
            let samples = (0..n).map(|i| (i * 4099 % (max + 1)) as u16).collect();
            let px = Pixels {
                width,
                height,
                layout,
                bits,
                samples,
            };
            let file = encode_png(&px).unwrap();
            let mut seen = None;
            let back = decode_png(&file, |w, h| {
                seen = Some((w, h));
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, Some((width, height)));
            assert_eq!(back, px, "{layout:?} {bits}");
        }
    }

    #[test]
    fn palette_pngs_are_expanded_and_sizes_checked_first() {
        let mut file = Vec::new();
        let mut encoder = png::Encoder::new(&mut file, 2, 1);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(vec![255, 0, 0, 0, 0, 255]);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[1, 0]).unwrap();
        writer.finish().unwrap();
        let px = decode_png(&file, |_, _| Ok(())).unwrap();
        assert_eq!((px.layout, px.bits), (Layout::Rgb, 8));
        assert_eq!(px.samples, [0, 0, 255, 255, 0, 0]);
        let err = decode_png(&file, |w, h| Err(format!("{w}x{h} refused"))).unwrap_err();
        assert_eq!(err, "2x1 refused");
        let err = decode_png(b"\x89PNG\r\n\x1a\ngarbage", |_, _| Ok(())).unwrap_err();
        assert!(err.starts_with("not a valid PNG file"), "{err}");
    }
}
