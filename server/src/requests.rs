//! Request fields that name domain values, parsed and checked before anything is looked up:
//! the shapes, regions, clear colors and mip ranges that image requests ask for (checked
//! against the image), image usage, grantees and Open targets. INVALID_ARGUMENT for what cannot
//! be.
//!
//! Not here: domain values on the wire (`wire`); ranges of buffer operations (`daemon::ops`).

use gpushare_interop::image::{ImageDesc, ImageFormat, ImageKind, ImageRegion};

use crate::stream::book::{FrameMeta, Mode};
use crate::stream::SlotSpec;
use gpushare_interop::vulkan::{vk, ClearColor, MipRange};
use gpushare_proto::v1;

use crate::access::{Grantee, OpenTarget};
use crate::devices::default_image_usage;
use crate::error::{Error, Result};
use crate::session::SignalPath;

/// The image a CreateImage asks for (shape only; the device's limits are checked by the driver
/// query at creation).
pub(crate) fn image_desc(r: &v1::CreateImageRequest) -> Result<ImageDesc> {
    let format = u32::try_from(r.format)
        .ok()
        .and_then(ImageFormat::from_code)
        .ok_or_else(|| Error::BadImage(format!("unknown or missing image format {}", r.format)))?;
    let kind = match v1::ImageKind::try_from(r.kind) {
        Ok(v1::ImageKind::ImageKind2d) => ImageKind::D2,
        Ok(v1::ImageKind::ImageKind3d) => ImageKind::D3,
        _ => {
            return Err(Error::BadImage(format!(
                "unknown or missing image kind {} (IMAGE_KIND_2D or IMAGE_KIND_3D)",
                r.kind
            )))
        }
    };
    let one = |v: u32| v.max(1);
    let desc = ImageDesc {
        format,
        kind,
        width: r.width,
        height: r.height,
        depth: one(r.depth),
        mip_levels: one(r.mip_levels),
        array_layers: one(r.array_layers),
    };
    desc.validate()
        .map_err(|e| Error::BadImage(e.to_string()))?;
    Ok(desc)
}

/// The region a request names, with its zero fields filled in (see `ImageRegion` in the
/// proto), checked against the image.
pub(crate) fn region(desc: &ImageDesc, r: Option<&v1::ImageRegion>) -> Result<ImageRegion> {
    let r = r.cloned().unwrap_or_default();
    if r.level >= desc.mip_levels {
        return Err(Error::BadImage(format!(
            "level {} is beyond the image's {} mip levels",
            r.level, desc.mip_levels
        )));
    }
    let (w, h, d) = desc.level_extent(r.level);
    let rest = |len: u32, off: u32, size: u32| {
        if len == 0 {
            size.saturating_sub(off)
        } else {
            len
        }
    };
    let region = ImageRegion {
        level: r.level,
        base_layer: r.base_layer,
        layers: rest(r.layers, r.base_layer, desc.array_layers),
        x: r.x,
        y: r.y,
        z: r.z,
        width: rest(r.width, r.x, w),
        height: rest(r.height, r.y, h),
        depth: rest(r.depth, r.z, d),
    };
    region.validate(desc).map_err(|e| {
        Error::BadImage(format!(
            "{e} (level {} is {w}x{h}x{d}, {} layers)",
            r.level, desc.array_layers
        ))
    })?;
    Ok(region)
}

/// The levels and layers a GenerateMips asks for, with its zero fields filled in (see
/// `GenerateMipsRequest` in the proto), checked against the image: at least one level to
/// generate after `base_level`, none past the last, layers within the image.
pub(crate) fn mip_range(desc: &ImageDesc, r: &v1::GenerateMipsRequest) -> Result<MipRange> {
    let total = desc.mip_levels;
    if r.base_level >= total.saturating_sub(1) {
        return Err(Error::BadImage(if total == 1 {
            "the image has one mip level: there is no level to generate (create it with more)"
                .to_owned()
        } else {
            format!(
                "base level {} leaves no level to generate: the image has levels 0..={}",
                r.base_level,
                total - 1
            )
        }));
    }
    let levels = match r.levels {
        0 => total - 1 - r.base_level,
        n => n,
    };
    if u64::from(r.base_level) + u64::from(levels) >= u64::from(total) {
        return Err(Error::BadImage(format!(
            "levels {}..={} are past the image's last level {}",
            u64::from(r.base_level) + 1,
            u64::from(r.base_level) + u64::from(levels),
            total - 1
        )));
    }
    let layers = match r.layers {
        0 => desc.array_layers.saturating_sub(r.base_layer),
        n => n,
    };
    if layers == 0 || u64::from(r.base_layer) + u64::from(layers) > u64::from(desc.array_layers) {
        return Err(Error::BadImage(format!(
            "layers {}..{} are outside the image's {}",
            r.base_layer,
            u64::from(r.base_layer) + u64::from(layers),
            desc.array_layers
        )));
    }
    Ok(MipRange {
        base_level: r.base_level,
        levels,
        base_layer: r.base_layer,
        layers,
    })
}

/// The clear color a ClearImage asks for, of the kind the format needs.
pub(crate) fn clear_color(desc: &ImageDesc, floats: &[f32], uints: &[u32]) -> Result<ClearColor> {
    use gpushare_interop::image::ChannelKind;
    if floats.len() > 4 || uints.len() > 4 {
        return Err(Error::BadImage(
            "a clear color has at most 4 channels".into(),
        ));
    }
    let integer = desc.format.info().kind == ChannelKind::Unsigned;
    match (integer, floats.is_empty(), uints.is_empty()) {
        (_, false, false) => Err(Error::BadImage(
            "ClearImage takes float_color or uint_color, not both".into(),
        )),
        (true, false, true) => Err(Error::BadImage(format!(
            "a {} image is cleared with uint_color",
            desc.format
        ))),
        (false, true, false) => Err(Error::BadImage(format!(
            "a {} image is cleared with float_color",
            desc.format
        ))),
        (true, _, _) => {
            let mut v = [0; 4];
            v[..uints.len()].copy_from_slice(uints);
            Ok(ClearColor::Uint(v))
        }
        (false, _, _) => {
            let mut v = [0.0; 4];
            v[..floats.len()].copy_from_slice(floats);
            Ok(ClearColor::Float(v))
        }
    }
}

/// The usage a CreateImage asks for: 0 means the default (sampled and storage, or sampled
/// only for sRGB formats, which no driver can store to).
pub(crate) fn image_usage(usage: u32, desc: &ImageDesc) -> vk::ImageUsageFlags {
    match usage {
        0 => default_image_usage(desc.format),
        u => vk::ImageUsageFlags::from_raw(u),
    }
}

/// Whom a Grant or Revoke names.
pub(crate) fn grantee(g: Option<v1::grant_request::Grantee>) -> Result<Grantee> {
    match g {
        Some(v1::grant_request::Grantee::Uid(u)) => Ok(Grantee::Uid(u)),
        Some(v1::grant_request::Grantee::Gid(g)) => Ok(Grantee::Gid(g)),
        None => Err(Error::BadGrant),
    }
}

/// What an Open names.
pub(crate) fn open_target(t: Option<v1::open_request::Target>) -> Result<OpenTarget> {
    match t {
        Some(v1::open_request::Target::Id(id)) => Ok(OpenTarget::Id(id)),
        Some(v1::open_request::Target::Token(t)) => Ok(OpenTarget::Token(t)),
        Some(v1::open_request::Target::Named(n)) => Ok(OpenTarget::Named {
            owner_uid: n.owner_uid,
            name: n.name,
        }),
        None => Err(Error::BadOpen),
    }
}

/// What every slot of a CreateStream is.
pub(crate) fn slot_spec(r: &v1::CreateStreamRequest) -> Result<SlotSpec> {
    match &r.slot {
        Some(v1::create_stream_request::Slot::BufferSize(size)) => Ok(SlotSpec::Buffer(*size)),
        Some(v1::create_stream_request::Slot::Image(i)) => {
            let desc = image_desc(i)?;
            let usage = image_usage(i.usage, &desc);
            Ok(SlotSpec::Image(desc, usage))
        }
        None => Err(Error::BadStream(
            "a stream names its slots: buffer_size or image".into(),
        )),
    }
}

/// A consumer's delivery mode.
pub(crate) fn delivery_mode(mode: i32) -> Result<Mode> {
    match v1::DeliveryMode::try_from(mode) {
        Ok(v1::DeliveryMode::Fifo) => Ok(Mode::Fifo),
        Ok(v1::DeliveryMode::Mailbox) => Ok(Mode::Mailbox),
        _ => Err(Error::BadStream(format!(
            "unknown or missing delivery mode {mode} (DELIVERY_MODE_FIFO or DELIVERY_MODE_MAILBOX)"
        ))),
    }
}

/// How a session signals a semaphore (unspecified: through the semaphore).
pub(crate) fn signal_path(path: i32) -> Result<SignalPath> {
    match v1::SignalPath::try_from(path) {
        Ok(v1::SignalPath::Unspecified | v1::SignalPath::Semaphore) => Ok(SignalPath::Semaphore),
        Ok(v1::SignalPath::Word) => Ok(SignalPath::Word),
        Err(_) => Err(Error::BadSignalPath(path)),
    }
}

/// A frame's metadata.
pub(crate) fn frame_meta(m: Option<v1::FrameMetadata>) -> FrameMeta {
    let m = m.unwrap_or_default();
    FrameMeta {
        number: m.number,
        timestamp_ns: m.timestamp_ns,
        user_data: m.user_data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> ImageDesc {
        ImageDesc {
            format: ImageFormat::Rgba8Unorm,
            kind: ImageKind::D2,
            width: 64,
            height: 32,
            depth: 1,
            mip_levels: 3,
            array_layers: 4,
        }
    }

    #[test]
    fn requests_default_and_refuse() {
        let mut r = v1::CreateImageRequest {
            format: v1::ImageFormat::Rgba16Float as i32,
            kind: v1::ImageKind::ImageKind2d as i32,
            width: 8,
            height: 8,
            ..Default::default()
        };
        let d = image_desc(&r).unwrap();
        assert_eq!((d.depth, d.mip_levels, d.array_layers), (1, 1, 1));
        assert_eq!(d.format, ImageFormat::Rgba16Float);
        r.mip_levels = 5;
        assert!(image_desc(&r).is_err());
        r.mip_levels = 4;
        r.format = 0;
        assert!(image_desc(&r).is_err());
        r.format = 99;
        assert!(image_desc(&r).is_err());
        r.format = 1;
        r.kind = 0;
        assert!(image_desc(&r).is_err());
    }

    #[test]
    fn regions_fill_in_their_zero_fields() {
        let d = desc();
        let whole = region(&d, None).unwrap();
        assert_eq!(
            (whole.width, whole.height, whole.depth, whole.layers),
            (64, 32, 1, 4)
        );
        let r = region(
            &d,
            Some(&v1::ImageRegion {
                level: 1,
                base_layer: 1,
                x: 8,
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(
            (r.x, r.width, r.height, r.base_layer, r.layers),
            (8, 24, 16, 1, 3)
        );
        for bad in [
            v1::ImageRegion {
                level: 3,
                ..Default::default()
            },
            v1::ImageRegion {
                x: 64,
                ..Default::default()
            },
            v1::ImageRegion {
                width: 65,
                ..Default::default()
            },
            v1::ImageRegion {
                base_layer: 4,
                ..Default::default()
            },
            v1::ImageRegion {
                z: 1,
                ..Default::default()
            },
        ] {
            assert!(
                matches!(region(&d, Some(&bad)), Err(Error::BadImage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn mip_ranges_fill_in_their_zero_fields_and_refuse() {
        let d = desc(); // 3 levels, 4 layers
        let req = |base_level, levels, base_layer, layers| v1::GenerateMipsRequest {
            base_level,
            levels,
            base_layer,
            layers,
            ..Default::default()
        };
        let r = mip_range(&d, &req(0, 0, 0, 0)).unwrap();
        assert_eq!(
            (r.base_level, r.levels, r.base_layer, r.layers),
            (0, 2, 0, 4),
            "every level after 0, every layer"
        );
        let r = mip_range(&d, &req(1, 0, 2, 0)).unwrap();
        assert_eq!(
            (r.base_level, r.levels, r.base_layer, r.layers),
            (1, 1, 2, 2)
        );
        let r = mip_range(&d, &req(0, 1, 3, 1)).unwrap();
        assert_eq!((r.levels, r.layers), (1, 1));
        for (bad, needle) in [
            (req(2, 0, 0, 0), "no level to generate"),
            (req(7, 0, 0, 0), "no level to generate"),
            (req(0, 3, 0, 0), "past the image's last level 2"),
            (req(1, 2, 0, 0), "past the image's last level 2"),
            (req(0, u32::MAX, 0, 0), "past"),
            (req(0, 0, 4, 0), "layers 4..4"),
            (req(0, 0, 1, 4), "layers 1..5"),
            (req(0, 0, u32::MAX, u32::MAX), "outside"),
        ] {
            match mip_range(&d, &bad) {
                Err(Error::BadImage(m)) => assert!(m.contains(needle), "{bad:?}: {m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let single = ImageDesc { mip_levels: 1, ..d };
        match mip_range(&single, &req(0, 0, 0, 0)) {
            Err(Error::BadImage(m)) => assert!(m.contains("one mip level"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clear_colors_match_their_format() {
        let d = desc();
        assert_eq!(
            clear_color(&d, &[1.0], &[]).unwrap(),
            ClearColor::Float([1.0, 0.0, 0.0, 0.0])
        );
        assert_eq!(
            clear_color(&d, &[], &[]).unwrap(),
            ClearColor::Float([0.0; 4])
        );
        assert!(clear_color(&d, &[], &[1]).is_err());
        assert!(clear_color(&d, &[1.0], &[1]).is_err());
        assert!(clear_color(&d, &[0.0; 5], &[]).is_err());
        let u = ImageDesc {
            format: ImageFormat::R32Uint,
            ..d
        };
        assert_eq!(
            clear_color(&u, &[], &[7]).unwrap(),
            ClearColor::Uint([7, 0, 0, 0])
        );
        assert!(clear_color(&u, &[1.0], &[]).is_err());
    }
}
