//! Images: [`Client::create_image`], the [`Image`] handle and its daemon-executed operations
//! (upload and download of a level or a region, clear, mip generation), and reading an image's
//! shape from the wire ([`Exported::image_import_desc`]).
//!
//! Imports are in [`import`](crate::import) (Vulkan) and [`cuda`](crate::cuda) (a mipmapped
//! array, surface and texture objects).

use gpushare_interop::image::{ImageDesc, ImageFormat, ImageKind, ImageRegion};
use gpushare_interop::vulkan::ImageImportDesc;
use gpushare_proto::v1;

use crate::client::created_id;
use crate::{Client, CreateOptions, Error, Exported, HostBuffer, Result, Sync};

/// What [`Client::create_image`] makes: format, kind, extent, mip levels, layers and usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// The shape.
    pub desc: ImageDesc,
    /// `VkImageUsageFlags` from SAMPLED, STORAGE and COLOR_ATTACHMENT; 0 for the daemon's
    /// default (SAMPLED | STORAGE; SAMPLED alone for sRGB formats). Transfer usage is always
    /// added.
    pub usage: u32,
}

impl ImageSpec {
    /// A 2D image of `width` x `height` with one level and one layer, default usage.
    pub fn d2(format: ImageFormat, width: u32, height: u32) -> ImageSpec {
        ImageSpec {
            desc: ImageDesc {
                format,
                kind: ImageKind::D2,
                width,
                height,
                depth: 1,
                mip_levels: 1,
                array_layers: 1,
            },
            usage: 0,
        }
    }

    /// A 3D image of `width` x `height` x `depth` with one level, default usage.
    pub fn d3(format: ImageFormat, width: u32, height: u32, depth: u32) -> ImageSpec {
        ImageSpec {
            desc: ImageDesc {
                kind: ImageKind::D3,
                depth,
                ..ImageSpec::d2(format, width, height).desc
            },
            usage: 0,
        }
    }

    /// With `levels` mip levels.
    pub fn mip_levels(mut self, levels: u32) -> ImageSpec {
        self.desc.mip_levels = levels;
        self
    }

    /// With the full mip chain (down to 1 x 1 x 1).
    pub fn full_mip_chain(mut self) -> ImageSpec {
        self.desc.mip_levels = self.desc.max_mip_levels();
        self
    }

    /// With `layers` array layers (2D).
    pub fn layers(mut self, layers: u32) -> ImageSpec {
        self.desc.array_layers = layers;
        self
    }

    /// With `usage` (`VkImageUsageFlags`).
    pub fn usage(mut self, usage: u32) -> ImageSpec {
        self.usage = usage;
        self
    }
}

/// The wire kind of an image kind.
fn kind_msg(kind: ImageKind) -> i32 {
    match kind {
        ImageKind::D2 => v1::ImageKind::ImageKind2d as i32,
        ImageKind::D3 => v1::ImageKind::ImageKind3d as i32,
    }
}

/// An image shape from its wire fields (ImageDetails and ImageImport carry the same ones).
#[allow(clippy::too_many_arguments)]
fn desc_from_wire(
    format: i32,
    kind: i32,
    width: u32,
    height: u32,
    depth: u32,
    mip_levels: u32,
    array_layers: u32,
) -> Result<ImageDesc> {
    let format = u32::try_from(format)
        .ok()
        .and_then(ImageFormat::from_code)
        .ok_or(Error::MissingField("image format (unknown to this client)"))?;
    let kind = match v1::ImageKind::try_from(kind) {
        Ok(v1::ImageKind::ImageKind2d) => ImageKind::D2,
        Ok(v1::ImageKind::ImageKind3d) => ImageKind::D3,
        _ => return Err(Error::MissingField("image kind (unknown to this client)")),
    };
    let desc = ImageDesc {
        format,
        kind,
        width,
        height,
        depth,
        mip_levels,
        array_layers,
    };
    desc.validate()
        .map_err(|e| Error::BadImage(e.to_string()))?;
    Ok(desc)
}

/// The shape in a resource's image details.
pub fn image_desc(resource: &v1::Resource) -> Result<ImageDesc> {
    match &resource.details {
        Some(v1::resource::Details::Image(i)) => desc_from_wire(
            i.format,
            i.kind,
            i.width,
            i.height,
            i.depth,
            i.mip_levels,
            i.array_layers,
        ),
        _ => Err(Error::MissingField("Resource.image")),
    }
}

impl Exported {
    /// What an importer (Vulkan or CUDA) needs to import this image: fails unless this is an
    /// image exported as `OPAQUE_FD` with a 16-byte device UUID and a valid shape.
    pub fn image_import_desc(&self) -> Result<ImageImportDesc> {
        crate::import::check_kind(self, v1::ResourceKind::Image)?;
        crate::import::check_opaque_fd(self)?;
        let Some(v1::exported_fd::Details::Image(i)) = &self.info.details else {
            return Err(Error::MissingField("ExportedFd.image"));
        };
        Ok(ImageImportDesc {
            desc: desc_from_wire(
                i.format,
                i.kind,
                i.width,
                i.height,
                i.depth,
                i.mip_levels,
                i.array_layers,
            )?,
            usage: i.usage,
            allocation_size: i.allocation_size,
            memory_type_index: i.memory_type_index,
            device_uuid: self.device_uuid()?,
        })
    }
}

/// The wire region for `region`.
fn region_msg(region: &ImageRegion) -> v1::ImageRegion {
    v1::ImageRegion {
        level: region.level,
        base_layer: region.base_layer,
        layers: region.layers,
        x: region.x,
        y: region.y,
        z: region.z,
        width: region.width,
        height: region.height,
        depth: region.depth,
    }
}

/// An image, named by id, with its shape. Holds a clone of its [`Client`] (and so keeps its
/// session alive).
///
/// Transfers carry tightly packed bytes: rows of the region's width, then its height in rows,
/// then its depth in slices, then its layers ([`ImageRegion::size`]). Like [`Buffer`](crate::Buffer)'s,
/// they wait for the [`Sync`]'s wait points, run, signal its signal points, and return once
/// done; bytes in messages are limited to `Limits.max_transfer_size` per call, host buffers are
/// not.
#[derive(Clone, Debug)]
pub struct Image {
    client: Client,
    id: String,
    desc: ImageDesc,
}

impl Client {
    /// Allocates an exportable image (see `CreateImage` in the proto for what is refused).
    pub async fn create_image(&self, spec: &ImageSpec, opts: &CreateOptions) -> Result<Image> {
        let request = v1::CreateImageRequest {
            device: opts.device,
            name: opts.name.clone(),
            pin: opts.pin,
            ..create_request(spec)
        };
        let resource = self
            .grpc()
            .create_image(self.request(request))
            .await?
            .into_inner();
        let desc = image_desc(&resource)?;
        Ok(Image {
            client: self.clone(),
            id: created_id(resource)?,
            desc,
        })
    }

    /// A handle to the image `id` (its shape is asked of the daemon).
    pub async fn image(&self, id: &str) -> Result<Image> {
        let resource = self.describe(id).await?;
        Ok(Image {
            client: self.clone(),
            id: id.to_owned(),
            desc: image_desc(&resource)?,
        })
    }
}

impl Image {
    /// The image's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its shape.
    pub fn desc(&self) -> &ImageDesc {
        &self.desc
    }

    /// The client this handle calls through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The whole of level `level`, every layer.
    pub fn level(&self, level: u32) -> ImageRegion {
        ImageRegion::level(&self.desc, level)
    }

    /// Writes `data` (exactly `region.size(format)` bytes) into `region`.
    pub async fn write(&self, region: &ImageRegion, data: &[u8], sync: &Sync) -> Result<()> {
        self.write_request(region, data.to_vec(), None, sync).await
    }

    /// Writes `region`'s bytes from `host` at `host_offset`. Do not change that host range until
    /// this returns.
    pub async fn write_from_host(
        &self,
        region: &ImageRegion,
        host: &HostBuffer,
        host_offset: u64,
        sync: &Sync,
    ) -> Result<()> {
        let range = host.range(host_offset, region.size(self.desc.format));
        self.write_request(region, Vec::new(), Some(range), sync)
            .await
    }

    async fn write_request(
        &self,
        region: &ImageRegion,
        data: Vec<u8>,
        from_host: Option<v1::HostRange>,
        sync: &Sync,
    ) -> Result<()> {
        let request = v1::WriteImageRequest {
            image_id: self.id.clone(),
            region: Some(region_msg(region)),
            data,
            sync: Some(sync.to_proto()),
            from_host,
        };
        self.client
            .grpc()
            .write_image(self.client.request(request))
            .await?;
        Ok(())
    }

    /// Reads `region`, tightly packed.
    pub async fn read(&self, region: &ImageRegion, sync: &Sync) -> Result<Vec<u8>> {
        let expected = region.size(self.desc.format);
        let data = self.read_request(region, None, sync).await?;
        if u64::try_from(data.len()).ok() != Some(expected) {
            return Err(Error::ShortRead {
                expected,
                got: data.len(),
            });
        }
        Ok(data)
    }

    /// Reads `region` into `host` at `host_offset`; read it there once this returned.
    pub async fn read_into_host(
        &self,
        region: &ImageRegion,
        host: &HostBuffer,
        host_offset: u64,
        sync: &Sync,
    ) -> Result<()> {
        let range = host.range(host_offset, region.size(self.desc.format));
        self.read_request(region, Some(range), sync).await?;
        Ok(())
    }

    async fn read_request(
        &self,
        region: &ImageRegion,
        to_host: Option<v1::HostRange>,
        sync: &Sync,
    ) -> Result<Vec<u8>> {
        let request = v1::ReadImageRequest {
            image_id: self.id.clone(),
            region: Some(region_msg(region)),
            sync: Some(sync.to_proto()),
            to_host,
        };
        Ok(self
            .client
            .grpc()
            .read_image(self.client.request(request))
            .await?
            .into_inner()
            .data)
    }

    /// Clears every level and layer to `color`: floats for unorm and float formats, integers
    /// for uint formats (missing channels are 0).
    pub async fn clear(&self, color: ClearValue, sync: &Sync) -> Result<()> {
        self.clear_range(0, 0, 0, 0, color, sync).await
    }

    /// Clears levels `base_level..base_level + levels` and layers `base_layer..base_layer +
    /// layers` to `color` (a count of 0 reaches the last level or layer).
    pub async fn clear_range(
        &self,
        base_level: u32,
        levels: u32,
        base_layer: u32,
        layers: u32,
        color: ClearValue,
        sync: &Sync,
    ) -> Result<()> {
        let (float_color, uint_color) = match color {
            ClearValue::Float(v) => (v.to_vec(), Vec::new()),
            ClearValue::Uint(v) => (Vec::new(), v.to_vec()),
        };
        let request = v1::ClearImageRequest {
            image_id: self.id.clone(),
            base_level,
            levels,
            base_layer,
            layers,
            float_color,
            uint_color,
            sync: Some(sync.to_proto()),
        };
        self.client
            .grpc()
            .clear_image(self.client.request(request))
            .await?;
        Ok(())
    }

    /// Generates every level after level 0, in every layer, each filtered from the one before
    /// (see `GenerateMips` in the proto: linear, sRGB in linear light, nearest for uint
    /// formats). INVALID_ARGUMENT for a single-level image.
    pub async fn generate_mips(&self, sync: &Sync) -> Result<()> {
        self.generate_mips_range(0, 0, 0, 0, sync).await
    }

    /// Generates levels `base_level + 1 ..= base_level + levels` (0: to the last level) from
    /// `base_level`, in layers `base_layer..base_layer + layers` (0: to the last layer).
    pub async fn generate_mips_range(
        &self,
        base_level: u32,
        levels: u32,
        base_layer: u32,
        layers: u32,
        sync: &Sync,
    ) -> Result<()> {
        let request = v1::GenerateMipsRequest {
            image_id: self.id.clone(),
            base_level,
            levels,
            base_layer,
            layers,
            sync: Some(sync.to_proto()),
        };
        self.client
            .grpc()
            .generate_mips(self.client.request(request))
            .await?;
        Ok(())
    }

    /// Releases the caller's reference ([`Client::release`]).
    pub async fn release(&self) -> Result<bool> {
        self.client.release(&self.id).await
    }

    /// Exports the image to this process ([`Client::export`]).
    pub async fn export(&self) -> Result<Exported> {
        self.client.export(&self.id).await
    }
}

/// A clear color.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClearValue {
    /// For unorm (in [0, 1]) and float formats.
    Float([f32; 4]),
    /// For uint formats.
    Uint([u32; 4]),
}

/// The CreateImage fields of `spec` (device, name and pin left unset).
pub(crate) fn create_request(spec: &ImageSpec) -> v1::CreateImageRequest {
    let d = &spec.desc;
    v1::CreateImageRequest {
        format: d.format.code() as i32,
        kind: kind_msg(d.kind),
        width: d.width,
        height: d.height,
        depth: d.depth,
        mip_levels: d.mip_levels,
        array_layers: d.array_layers,
        usage: spec.usage,
        ..v1::CreateImageRequest::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::fixtures;

    fn import(format: i32, kind: i32, mips: u32) -> v1::ExportedFd {
        v1::ExportedFd {
            resource_id: "img-x".into(),
            kind: v1::ResourceKind::Image as i32,
            handle_type: v1::HandleType::OpaqueFd as i32,
            device_uuid: vec![3; 16],
            driver_uuid: vec![4; 16],
            details: Some(v1::exported_fd::Details::Image(v1::ImageImport {
                format,
                kind,
                width: 16,
                height: 8,
                depth: 1,
                mip_levels: mips,
                array_layers: 2,
                usage: 0xf,
                allocation_size: 4096,
                dedicated: true,
                memory_type_index: 1,
                vk_format: 37,
                tiling: 0,
                layout: 1,
            })),
        }
    }

    #[test]
    fn image_metadata_is_checked_before_any_import() {
        let good = fixtures::exported(import(3, 1, 5));
        let desc = good.image_import_desc().unwrap();
        assert_eq!(desc.desc.format, ImageFormat::Rgba8Unorm);
        assert_eq!(
            (
                desc.desc.width,
                desc.desc.array_layers,
                desc.desc.mip_levels
            ),
            (16, 2, 5)
        );
        assert_eq!(desc.device_uuid, [3; 16]);
        assert!(fixtures::exported(import(99, 1, 1))
            .image_import_desc()
            .is_err());
        assert!(fixtures::exported(import(3, 0, 1))
            .image_import_desc()
            .is_err());
        assert!(
            fixtures::exported(import(3, 1, 6))
                .image_import_desc()
                .is_err(),
            "too many levels"
        );
        let mut not_image = import(3, 1, 1);
        not_image.kind = v1::ResourceKind::Buffer as i32;
        assert!(matches!(
            fixtures::exported(not_image).image_import_desc(),
            Err(Error::WrongKind { .. })
        ));
    }

    #[test]
    fn specs_build_shapes() {
        let s = ImageSpec::d2(ImageFormat::R32Float, 64, 16)
            .full_mip_chain()
            .layers(3);
        assert_eq!((s.desc.mip_levels, s.desc.array_layers), (7, 3));
        let v = ImageSpec::d3(ImageFormat::R8Uint, 8, 8, 8).mip_levels(2);
        assert_eq!(
            (v.desc.kind, v.desc.depth, v.desc.mip_levels),
            (ImageKind::D3, 8, 2)
        );
        assert_eq!(region_msg(&ImageRegion::level(&s.desc, 1)).width, 32);
    }
}
