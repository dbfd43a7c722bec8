//! `image create`, `ls`, `upload`, `mips`, `download` and `rm`: images through the daemon, with
//! PNG files converted to and from the image's format (`pixels`), or raw texels; mip levels
//! generated on the GPU (`GenerateMips`).
//!
//! Transfers go in one message when they fit the daemon's `Limits.max_transfer_size`, and
//! through a host buffer (pinned, the CLI having no session, and released once done)
//! otherwise.

use std::path::Path;

use gpushare_client::{
    v1, Client, CreateOptions, Image, ImageDesc, ImageKind, ImageRegion, ImageSpec, Sync,
};
use serde_json::{json, Value};

use crate::args::ImageCommand;
use crate::failure::{Context, Failure, Out};
use crate::{output, pixels, release};

/// Largest transfer sent in one message even when the daemon allows more: the client's gRPC
/// messages are limited to 64 MiB, envelope included.
const MESSAGE_CAP: u64 = 60 << 20;

pub(crate) async fn run(client: &Client, out: &Out, command: ImageCommand) -> Result<(), Failure> {
    match command {
        ImageCommand::Create {
            format,
            width,
            height,
            depth,
            kind,
            mip_levels,
            full_mip_chain,
            layers,
            usage,
            device,
            name,
        } => {
            let kind = kind.map_or(
                if depth > 1 {
                    ImageKind::D3
                } else {
                    ImageKind::D2
                },
                ImageKind::from,
            );
            let mut spec = ImageSpec {
                desc: ImageDesc {
                    format,
                    kind,
                    width,
                    height,
                    depth,
                    mip_levels: mip_levels.unwrap_or(1),
                    array_layers: layers,
                },
                usage: usage.unwrap_or(0),
            };
            if full_mip_chain {
                spec = spec.full_mip_chain();
            }
            spec.desc
                .validate()
                .map_err(|e| Failure::Usage(e.to_string()))?;
            // The CLI has no session: what it creates must be pinned.
            let opts = CreateOptions {
                device,
                name,
                pin: true,
                ..CreateOptions::default()
            };
            let image = client
                .create_image(&spec, &opts)
                .await
                .context(|| "create image".to_owned())?;
            let value = json!({
                "id": image.id(),
                "kind": "image",
                "image": output::image_desc_json(image.desc()),
            });
            out.either(value, image.id())
        }
        ImageCommand::Ls => {
            let images: Vec<v1::Resource> = client
                .list()
                .await
                .context(|| "list resources".to_owned())?
                .into_iter()
                .filter(|r| r.kind == v1::ResourceKind::Image as i32)
                .collect();
            let value = Value::Array(images.iter().map(output::resource_json).collect());
            let text = if images.is_empty() {
                "no images".to_owned()
            } else {
                output::images_table(&images).render()
            };
            out.either(value, &text)
        }
        ImageCommand::Upload {
            id,
            file,
            level,
            layer,
            raw,
            mips,
            sync,
        } => {
            let image = open(client, &id).await?;
            let region = region(image.desc(), &id, level, layer)?;
            if mips {
                check_mips_after(image.desc(), &id, level)?;
            }
            let data = std::fs::read(&file).context(|| format!("read {}", file.display()))?;
            let (texels, kind) = if raw {
                check_raw_size(&file, data.len(), image.desc(), &region, &id)?;
                (data, "raw")
            } else if pixels::is_png(&data) {
                (png_texels(&file, &data, &image, &region, &id)?, "png")
            } else {
                return Err(Failure::Usage(format!(
                    "{} is not a PNG file: pass --raw to upload its bytes as they are \
                     (exactly {})",
                    file.display(),
                    describe_size(image.desc(), &region)
                )));
            };
            // With --mips, the wait points hold the upload and the signal points follow the mips.
            let sync = sync.to_sync();
            let (upload_sync, mips_sync) = if mips {
                let signal = Sync {
                    signal: sync.signal.clone(),
                    timeout: sync.timeout,
                    ..Sync::none()
                };
                (
                    Sync {
                        signal: Vec::new(),
                        ..sync
                    },
                    signal,
                )
            } else {
                (sync, Sync::none())
            };
            write(client, &image, &region, &texels, &upload_sync)
                .await
                .context(|| format!("upload {} to {id}", file.display()))?;
            let generated = if mips {
                image
                    .generate_mips_range(level, 0, region.base_layer, region.layers, &mips_sync)
                    .await
                    .context(|| format!("generate the mip levels of {id} after level {level}"))?;
                image.desc().mip_levels - 1 - level
            } else {
                0
            };
            let value = json!({
                "id": id, "level": level, "layer": layer,
                "file": file.display().to_string(), "format": kind, "bytes": texels.len(),
                "mip_levels_generated": generated,
            });
            out.either(value, "")
        }
        ImageCommand::Mips {
            id,
            base_level,
            levels,
            layer,
            sync,
        } => {
            let image = open(client, &id).await?;
            check_mips_after(image.desc(), &id, base_level)?;
            let (base_layer, layers) = match layer {
                Some(l) if l >= image.desc().array_layers => {
                    return Err(Failure::Usage(format!(
                        "{id} has {} layer(s): there is no layer {l}",
                        image.desc().array_layers
                    )))
                }
                Some(l) => (l, 1),
                None => (0, 0),
            };
            let levels = levels.unwrap_or(0);
            image
                .generate_mips_range(base_level, levels, base_layer, layers, &sync.to_sync())
                .await
                .context(|| format!("generate the mip levels of {id}"))?;
            let generated = if levels == 0 {
                image.desc().mip_levels - 1 - base_level
            } else {
                levels
            };
            let value = json!({
                "id": id, "base_level": base_level, "levels": generated, "layer": layer,
            });
            out.either(value, "")
        }
        ImageCommand::Download {
            id,
            file,
            level,
            layer,
            raw,
            sync,
        } => {
            let png = !raw;
            if png && !has_png_extension(&file) {
                return Err(Failure::Usage(format!(
                    "{} does not end in .png: name a PNG file, or pass --raw to write the \
                     texels as they are",
                    file.display()
                )));
            }
            let image = open(client, &id).await?;
            let region = region(image.desc(), &id, level, layer)?;
            if png {
                png_checks(image.desc(), &id, layer)?;
            }
            let data = read(client, &image, &region, &sync.to_sync())
                .await
                .context(|| format!("download {id}"))?;
            let bytes = if png {
                pixels::from_texels(&data, region.width, region.height, image.desc().format)
                    .and_then(|px| pixels::encode_png(&px))
                    .map_err(Failure::Usage)?
            } else {
                data
            };
            std::fs::write(&file, &bytes).context(|| format!("write {}", file.display()))?;
            let value = json!({
                "id": id, "level": level, "layer": layer,
                "file": file.display().to_string(),
                "format": if png { "png" } else { "raw" }, "bytes": bytes.len(),
            });
            out.either(value, "")
        }
        ImageCommand::Rm { id } => release(client, out, &id).await,
    }
}

/// A handle to image `id`; a usage error when `id` is another kind of resource.
async fn open(client: &Client, id: &str) -> Result<Image, Failure> {
    let resource = client
        .describe(id)
        .await
        .context(|| format!("describe {id}"))?;
    if resource.kind != v1::ResourceKind::Image as i32 {
        return Err(Failure::Usage(format!(
            "{id} is a {}, not an image",
            output::kind_name(resource.kind)
        )));
    }
    client.image(id).await.context(|| format!("describe {id}"))
}

/// Level `level` of `desc`: every layer, or only `layer`.
fn region(
    desc: &ImageDesc,
    id: &str,
    level: u32,
    layer: Option<u32>,
) -> Result<ImageRegion, Failure> {
    if level >= desc.mip_levels {
        return Err(Failure::Usage(format!(
            "{id} has {} mip level(s): there is no level {level}",
            desc.mip_levels
        )));
    }
    let mut region = ImageRegion::level(desc, level);
    if let Some(layer) = layer {
        if layer >= desc.array_layers {
            return Err(Failure::Usage(format!(
                "{id} has {} layer(s): there is no layer {layer}",
                desc.array_layers
            )));
        }
        region.base_layer = layer;
        region.layers = 1;
    }
    Ok(region)
}

/// Mips made from `level` need a level after it: a usage error otherwise, before anything is
/// sent.
fn check_mips_after(desc: &ImageDesc, id: &str, level: u32) -> Result<(), Failure> {
    if level < desc.mip_levels.saturating_sub(1) {
        return Ok(());
    }
    Err(Failure::Usage(format!(
        "{id} has {} mip level(s): there is no level after level {level} to generate (create \
         the image with --mip-levels or --full-mip-chain)",
        desc.mip_levels
    )))
}

/// `9324 bytes (level 1, 37x21, 3 layers, 4 bytes per texel)`.
fn describe_size(desc: &ImageDesc, region: &ImageRegion) -> String {
    let extent = if desc.kind == ImageKind::D3 {
        format!("{}x{}x{}", region.width, region.height, region.depth)
    } else {
        format!("{}x{}", region.width, region.height)
    };
    let layers = if region.layers == 1 && desc.array_layers > 1 {
        format!("layer {}", region.base_layer)
    } else if region.layers == 1 {
        "1 layer".to_owned()
    } else {
        format!("{} layers", region.layers)
    };
    format!(
        "{} bytes: level {}, {extent}, {layers}, {} bytes per {} texel",
        region.size(desc.format),
        region.level,
        desc.format.texel_size(),
        desc.format
    )
}

fn check_raw_size(
    file: &Path,
    len: usize,
    desc: &ImageDesc,
    region: &ImageRegion,
    id: &str,
) -> Result<(), Failure> {
    if u64::try_from(len).ok() == Some(region.size(desc.format)) {
        return Ok(());
    }
    Err(Failure::Usage(format!(
        "{} is {len} bytes, but {id} takes exactly {}",
        file.display(),
        describe_size(desc, region)
    )))
}

/// What a PNG cannot be converted to or from: 3D images, several layers at once, uint formats.
fn png_checks(desc: &ImageDesc, id: &str, layer: Option<u32>) -> Result<(), Failure> {
    if desc.kind == ImageKind::D3 {
        return Err(Failure::Usage(format!(
            "{id} is a 3D image: PNG files hold 2D levels only (use --raw)"
        )));
    }
    if layer.is_none() && desc.array_layers > 1 {
        return Err(Failure::Usage(format!(
            "{id} has {} layers: a PNG file holds one, name it with --layer",
            desc.array_layers
        )));
    }
    pixels::png_convertible(desc.format).map_err(Failure::Usage)
}

/// The texels of `region` from PNG file `data`, whose size must be the level's.
fn png_texels(
    file: &Path,
    data: &[u8],
    image: &Image,
    region: &ImageRegion,
    id: &str,
) -> Result<Vec<u8>, Failure> {
    let desc = image.desc();
    png_checks(
        desc,
        id,
        Some(region.base_layer).filter(|_| region.layers == 1),
    )?;
    let (width, height) = (region.width, region.height);
    let px = pixels::decode_png(data, |w, h| {
        if (w, h) == (width, height) {
            Ok(())
        } else {
            Err(format!(
                "the PNG is {w}x{h}, but level {} of {id} is {width}x{height}: its size must \
                 match exactly",
                region.level
            ))
        }
    })
    .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    pixels::to_texels(&px, desc.format)
        .map_err(|e| Failure::Usage(format!("{} ({}): {e}", file.display(), px.describe())))
}

fn has_png_extension(file: &Path) -> bool {
    file.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

/// Whether `len` bytes may travel in one message.
async fn fits_in_message(client: &Client, len: u64) -> gpushare_client::Result<bool> {
    let limit = client
        .info()
        .await?
        .limits
        .map_or(0, |l| l.max_transfer_size);
    let limit = if limit == 0 {
        MESSAGE_CAP
    } else {
        limit.min(MESSAGE_CAP)
    };
    Ok(len <= limit)
}

/// A pinned host buffer of `len` bytes: the CLI has no session to hold it.
async fn host_buffer(
    client: &Client,
    len: u64,
) -> gpushare_client::Result<gpushare_client::HostBuffer> {
    let opts = CreateOptions {
        pin: true,
        ..CreateOptions::default()
    };
    client.create_host_buffer(len, &opts).await
}

/// Writes `data` into `region`: in one message, or through a host buffer.
async fn write(
    client: &Client,
    image: &Image,
    region: &ImageRegion,
    data: &[u8],
    sync: &Sync,
) -> gpushare_client::Result<()> {
    let len = data.len() as u64;
    if fits_in_message(client, len).await? {
        return image.write(region, data, sync).await;
    }
    let host = host_buffer(client, len).await?;
    let result = match host.write_at(0, data) {
        Ok(()) => image.write_from_host(region, &host, 0, sync).await,
        Err(e) => Err(e),
    };
    let released = host.release().await;
    result.and(released.map(drop))
}

/// Reads `region`: in one message, or through a host buffer.
async fn read(
    client: &Client,
    image: &Image,
    region: &ImageRegion,
    sync: &Sync,
) -> gpushare_client::Result<Vec<u8>> {
    let len = region.size(image.desc().format);
    if fits_in_message(client, len).await? {
        return image.read(region, sync).await;
    }
    let host = host_buffer(client, len).await?;
    let result = match image.read_into_host(region, &host, 0, sync).await {
        Ok(()) => {
            let mut data = vec![0; len as usize];
            host.read_at(0, &mut data).map(|()| data)
        }
        Err(e) => Err(e),
    };
    let released = host.release().await;
    result.and_then(|data| released.map(|_| data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpushare_client::ImageFormat;

    fn desc(kind: ImageKind, depth: u32, layers: u32) -> ImageDesc {
        ImageDesc {
            format: ImageFormat::Rgba8Unorm,
            kind,
            width: 37,
            height: 21,
            depth,
            mip_levels: 3,
            array_layers: layers,
        }
    }

    #[test]
    fn regions_name_a_level_and_maybe_a_layer() {
        let d = desc(ImageKind::D2, 1, 3);
        let all = region(&d, "i", 1, None).unwrap();
        assert_eq!((all.width, all.height, all.layers), (18, 10, 3));
        let one = region(&d, "i", 2, Some(2)).unwrap();
        assert_eq!((one.width, one.base_layer, one.layers), (9, 2, 1));
        let err = region(&d, "i", 3, None).unwrap_err().to_string();
        assert_eq!(err, "i has 3 mip level(s): there is no level 3");
        let err = region(&d, "i", 0, Some(3)).unwrap_err().to_string();
        assert_eq!(err, "i has 3 layer(s): there is no layer 3");
    }

    #[test]
    fn mips_need_a_level_after_their_base() {
        let d = desc(ImageKind::D2, 1, 1); // 3 levels
        assert!(check_mips_after(&d, "i", 0).is_ok());
        assert!(check_mips_after(&d, "i", 1).is_ok());
        let err = check_mips_after(&d, "i", 2).unwrap_err().to_string();
        assert!(
            err.starts_with("i has 3 mip level(s): there is no level after level 2"),
            "{err}"
        );
        let one = ImageDesc { mip_levels: 1, ..d };
        assert!(check_mips_after(&one, "i", 0).is_err());
        assert!(check_mips_after(&d, "i", u32::MAX).is_err());
    }

    #[test]
    fn sizes_are_spelled_out() {
        let d = desc(ImageKind::D2, 1, 3);
        let r = region(&d, "i", 1, None).unwrap();
        assert_eq!(
            describe_size(&d, &r),
            "2160 bytes: level 1, 18x10, 3 layers, 4 bytes per rgba8unorm texel"
        );
        let r = region(&d, "i", 0, Some(1)).unwrap();
        assert_eq!(
            describe_size(&d, &r),
            "3108 bytes: level 0, 37x21, layer 1, 4 bytes per rgba8unorm texel"
        );
        let err = check_raw_size(Path::new("x.bin"), 5, &d, &r, "i").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.bin is 5 bytes, but i takes exactly 3108 bytes: level 0, 37x21, layer 1, 4 \
             bytes per rgba8unorm texel"
        );
        assert!(check_raw_size(Path::new("x.bin"), 3108, &d, &r, "i").is_ok());
        let v = desc(ImageKind::D3, 4, 1);
        let r = region(&v, "v", 1, None).unwrap();
        assert_eq!(
            describe_size(&v, &r),
            "1440 bytes: level 1, 18x10x2, 1 layer, 4 bytes per rgba8unorm texel"
        );
    }

    #[test]
    fn png_refusals() {
        let err = png_checks(&desc(ImageKind::D3, 4, 1), "v", None).unwrap_err();
        assert!(err.to_string().contains("3D image"), "{err}");
        let err = png_checks(&desc(ImageKind::D2, 1, 2), "a", None).unwrap_err();
        assert!(err.to_string().contains("--layer"), "{err}");
        assert!(png_checks(&desc(ImageKind::D2, 1, 2), "a", Some(1)).is_ok());
        let uint = ImageDesc {
            format: ImageFormat::R32Uint,
            ..desc(ImageKind::D2, 1, 1)
        };
        let err = png_checks(&uint, "u", None).unwrap_err();
        assert!(
            err.to_string().contains("r32uint is a uint format"),
            "{err}"
        );
        assert!(has_png_extension(Path::new("a/b.PNG")));
        assert!(!has_png_extension(Path::new("b.bin")));
        assert!(!has_png_extension(Path::new("png")));
    }
}
