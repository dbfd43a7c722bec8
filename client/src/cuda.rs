//! Importing exported descriptors into CUDA, on the CUDA device that is the exporting GPU: the
//! client half of Falcor's `CudaUtils` (`InteropBuffer`, `createInteropBuffer`,
//! `getSharedDevicePtr`, `importExternalSemaphore`), across processes.
//!
//! [`cuda_device_for`] opens the CUDA device whose UUID the descriptor's metadata names.
//! [`InteropBuffer::import`] and [`import_semaphore_cuda`] take the [`Exported`] by value, check
//! its metadata (kind, handle type, the device) before any driver call, and hand the descriptor to
//! `gpushare_interop::cuda`, which passes its ownership to the driver only when the import
//! succeeds; on any failure the descriptor is closed.
//!
//! Not here: Vulkan imports ([`import`](crate::import)); device memory CUDA allocates itself
//! (use `gpushare_interop::cuda::cudarc`).

use std::fmt;
use std::sync::Arc;

use gpushare_interop::cuda::{
    ArrayLevel, CudaDevice, ExternalMemory, MipmappedArray, SurfaceObject, TextureObject,
    TextureOptions,
};
use gpushare_interop::image::ImageDesc;

pub use crate::cuda_sync::{CudaSemaphore, Path, SyncPath};
use crate::{Buffer, Client, CreateOptions, Error, Exported, Image, ImageSpec, Result};

/// Opens the CUDA device that is the GPU which exported `exported`, chosen by the device UUID in
/// its metadata (Vulkan's `deviceUUID` and CUDA's `cuDeviceGetUuid` agree for one GPU).
///
/// A process that cannot see that GPU (no CUDA, no device, or `CUDA_VISIBLE_DEVICES` hiding it)
/// gets [`Error::CudaDevice`], naming the UUID.
pub fn cuda_device_for(exported: &Exported) -> Result<Arc<CudaDevice>> {
    let uuid = exported.device_uuid()?;
    CudaDevice::by_uuid(&uuid).map_err(|source| Error::CudaDevice {
        uuid: Uuid(uuid),
        source,
    })
}

/// A shared buffer imported into CUDA, and its device pointer, in one object (Falcor's
/// `InteropBuffer`): the pointer is valid while the object lives, and dropping it unmaps and
/// destroys the import (after every other holder of [`memory`](Self::memory) has let go).
///
/// The import holds the memory on its own: it stays valid after the daemon releases the buffer.
/// GPU work that uses the pointer must be complete before the object is dropped (synchronize the
/// stream that used it).
pub struct InteropBuffer {
    id: String,
    size: u64,
    ptr: u64,
    memory: Arc<ExternalMemory>,
}

impl fmt::Debug for InteropBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InteropBuffer")
            .field("id", &self.id)
            .field("size", &self.size)
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("memory", &self.memory)
            .finish()
    }
}

impl InteropBuffer {
    /// Imports an exported buffer into `device` (which must be the exporting GPU: see
    /// [`cuda_device_for`]) and maps it whole. The import uses the allocation size and the
    /// dedicated flag from the metadata, as `cuImportExternalMemory` requires.
    ///
    /// The descriptor's ownership passes to the driver only on success; on any failure it is
    /// closed.
    pub fn import(device: &Arc<CudaDevice>, exported: Exported) -> Result<InteropBuffer> {
        let desc = exported.buffer_import_desc()?;
        check_device(&desc.device_uuid, device)?;
        let Exported { fd, info, .. } = exported;
        let memory =
            ExternalMemory::import_opaque_fd(device, fd, desc.allocation_size, desc.dedicated)?;
        let ptr = memory.device_ptr()?;
        Ok(InteropBuffer {
            id: info.resource_id,
            size: desc.size,
            ptr,
            memory,
        })
    }

    /// The device pointer (`CUdeviceptr`) to the buffer's first byte, valid while `self` lives
    /// (the seed's `getSharedDevicePtr`).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// The buffer's size in bytes, as created (the allocation may be larger).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The daemon's id of the buffer.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The CUDA device it was imported into.
    pub fn device(&self) -> &Arc<CudaDevice> {
        self.memory.device()
    }

    /// The imported memory (for range mappings: [`ExternalMemory::map_range`]).
    pub fn memory(&self) -> &Arc<ExternalMemory> {
        &self.memory
    }
}

/// A shared image imported into CUDA as a mipmapped array (Falcor's
/// `importTextureToMipmappedArray`, across processes and with every level, layer and 3D): each
/// level's array, surface objects to write levels from kernels (`mapTextureToSurface`), and
/// texture objects to sample them.
///
/// Surface and texture objects, level arrays and this import each keep what they were made
/// from alive, so any drop order is safe: objects are destroyed first, then the mipmapped
/// array, then the imported memory. GPU work that uses them must be complete before the last
/// one goes (synchronize the stream that used them).
pub struct InteropImage {
    id: String,
    array: Arc<MipmappedArray>,
}

impl fmt::Debug for InteropImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InteropImage")
            .field("id", &self.id)
            .field("desc", self.array.desc())
            .finish()
    }
}

impl InteropImage {
    /// Imports an exported image into `device` (the exporting GPU: see [`cuda_device_for`]) as
    /// a mipmapped array of its format, extent, levels and layers (layered for a 2D image of
    /// more than one layer; surface load/store when its usage has STORAGE). The descriptor's
    /// ownership passes to the driver only on success; on any failure it is closed.
    pub fn import(device: &Arc<CudaDevice>, exported: Exported) -> Result<InteropImage> {
        let desc = exported.image_import_desc()?;
        check_device(&desc.device_uuid, device)?;
        let Exported { fd, info, .. } = exported;
        let memory = ExternalMemory::import_opaque_fd(device, fd, desc.allocation_size, true)?;
        let array = memory.mipmapped_array(&desc.desc, desc.usage)?;
        Ok(InteropImage {
            id: info.resource_id,
            array,
        })
    }

    /// The daemon's id of the image.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its shape.
    pub fn desc(&self) -> &ImageDesc {
        self.array.desc()
    }

    /// The mipmapped array (`CUmipmappedArray`).
    pub fn array(&self) -> &Arc<MipmappedArray> {
        &self.array
    }

    /// Level `level`'s array (`cuMipmappedArrayGetLevel`).
    pub fn level(&self, level: u32) -> Result<ArrayLevel> {
        Ok(self.array.level(level)?)
    }

    /// A surface object on level `level`, for `surf2Dwrite`-style stores from kernels (the
    /// seed's `mapTextureToSurface`, any level). Needs STORAGE usage.
    pub fn surface(&self, level: u32) -> Result<SurfaceObject> {
        Ok(SurfaceObject::new(&self.level(level)?)?)
    }

    /// A texture object over the whole mip chain (`tex2DLod` and friends).
    pub fn texture(&self, opts: &TextureOptions) -> Result<TextureObject> {
        Ok(TextureObject::new(&self.array, opts)?)
    }
}

impl Client {
    /// Creates an image, exports it to this process and imports it into `device` as a
    /// mipmapped array. The daemon's device must be the same GPU as `device`. If the import
    /// fails, the image is released again.
    pub async fn create_interop_image(
        &self,
        spec: &ImageSpec,
        opts: &CreateOptions,
        device: &Arc<CudaDevice>,
    ) -> Result<(Image, InteropImage)> {
        let image = self.create_image(spec, opts).await?;
        let imported = match image.export().await {
            Ok(exported) => InteropImage::import(device, exported),
            Err(e) => Err(e),
        };
        match imported {
            Ok(imported) => Ok((image, imported)),
            Err(e) => {
                let _ = image.release().await;
                Err(e)
            }
        }
    }
}

/// Imports an exported timeline semaphore into `device` (the exporting GPU: see
/// [`cuda_device_for`]), to signal and wait on in stream order: on the CUDA fast path when the
/// semaphore came with its memop word and this device runs 64-bit stream memory operations,
/// else through the semaphore ([`SyncPath::Auto`]; [`CudaSemaphore::path`] and
/// [`CudaSemaphore::fallback`] tell which and why). The descriptors' ownership passes to the
/// driver only on success; on any failure they are closed.
pub fn import_semaphore_cuda(
    device: &Arc<CudaDevice>,
    exported: Exported,
) -> Result<CudaSemaphore> {
    CudaSemaphore::import(device, exported, SyncPath::Auto)
}

/// [`Error::WrongDevice`] unless `device` is the GPU that exported `exported`.
pub(crate) fn check_exporter(exported: &Exported, device: &CudaDevice) -> Result<()> {
    check_device(&exported.device_uuid()?, device)
}

impl Client {
    /// Creates a buffer, exports it to this process and imports it into `device` (the seed's
    /// `createInteropBuffer`). The daemon's device must be the same GPU as `device`. If the import
    /// fails, the buffer is released again.
    pub async fn create_interop_buffer(
        &self,
        size: u64,
        opts: &CreateOptions,
        device: &Arc<CudaDevice>,
    ) -> Result<(Buffer, InteropBuffer)> {
        let buffer = self.create_buffer(size, opts).await?;
        let imported = match self.export(buffer.id()).await {
            Ok(exported) => InteropBuffer::import(device, exported),
            Err(e) => Err(e),
        };
        match imported {
            Ok(imported) => Ok((buffer, imported)),
            Err(e) => {
                // Best effort: the error that matters is the import's.
                let _ = self.release(buffer.id()).await;
                Err(e)
            }
        }
    }
}

/// A device UUID, shown the way `nvidia-smi -L` shows it (`GPU-` left out).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Uuid(pub [u8; 16]);

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`Error::WrongDevice`] unless `device` is the GPU with UUID `exported_uuid`.
fn check_device(exported_uuid: &[u8; 16], device: &CudaDevice) -> Result<()> {
    check_uuid(exported_uuid, &device.info().uuid)
}

fn check_uuid(exported: &[u8; 16], device: &[u8; 16]) -> Result<()> {
    if exported != device {
        return Err(Error::WrongDevice {
            exported: Uuid(*exported),
            device: Uuid(*device),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::fixtures::{buffer_info, exported, semaphore_info};
    use gpushare_proto::v1;

    #[test]
    fn buffer_metadata_is_checked() {
        let desc = exported(buffer_info(1000, 1024))
            .buffer_import_desc()
            .expect("valid");
        assert_eq!((desc.size, desc.allocation_size), (1000, 1024));
        assert!(desc.dedicated);
        for (size, allocation_size) in [(0, 1024), (2048, 1024)] {
            assert!(matches!(
                exported(buffer_info(size, allocation_size)).buffer_import_desc(),
                Err(Error::BufferSize { .. })
            ));
        }
        assert!(matches!(
            exported(semaphore_info()).buffer_import_desc(),
            Err(Error::WrongKind { .. })
        ));
        let mut info = buffer_info(1000, 1024);
        info.handle_type = v1::HandleType::DmaBuf as i32;
        assert!(matches!(
            exported(info).buffer_import_desc(),
            Err(Error::HandleType(2))
        ));
    }

    #[test]
    fn uuid_shows_like_nvidia_smi() {
        let uuid = Uuid([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ]);
        assert_eq!(uuid.to_string(), "12345678-9abc-def0-0123-456789abcdef");
    }

    #[test]
    fn semaphore_metadata_is_checked() {
        exported(semaphore_info())
            .check_timeline_semaphore()
            .expect("a timeline semaphore");
        let mut info = semaphore_info();
        info.kind = v1::ResourceKind::Buffer as i32;
        assert!(matches!(
            exported(info).check_timeline_semaphore(),
            Err(Error::WrongKind { .. })
        ));
        let mut info = semaphore_info();
        info.handle_type = v1::HandleType::DmaBuf as i32;
        assert!(matches!(
            exported(info).check_timeline_semaphore(),
            Err(Error::HandleType(2))
        ));
        let mut info = semaphore_info();
        info.details = Some(v1::exported_fd::Details::Semaphore(v1::SemaphoreImport {
            timeline: false,
            ..Default::default()
        }));
        assert!(matches!(
            exported(info).check_timeline_semaphore(),
            Err(Error::MissingField(_))
        ));
    }

    #[test]
    fn another_gpu_is_refused_before_the_driver_sees_it() {
        check_uuid(&[1; 16], &[1; 16]).expect("same GPU");
        let e = check_uuid(&[1; 16], &[2; 16]).expect_err("another GPU");
        assert!(matches!(e, Error::WrongDevice { .. }));
        let text = e.to_string();
        assert!(
            text.contains("01010101-0101-0101-0101-010101010101"),
            "{text}"
        );
        assert!(
            text.contains("02020202-0202-0202-0202-020202020202"),
            "{text}"
        );
    }

    /// Without CUDA (CI), or with CUDA but no GPU of that UUID, the error names the UUID.
    #[test]
    fn a_gpu_this_process_cannot_see_is_named() {
        let mut info = semaphore_info();
        info.device_uuid = vec![0xee; 16];
        let e = cuda_device_for(&exported(info)).expect_err("no such GPU");
        assert!(matches!(e, Error::CudaDevice { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee"),
            "{e}"
        );
        let mut info = semaphore_info();
        info.device_uuid = vec![0xee; 3];
        assert!(matches!(
            cuda_device_for(&exported(info)),
            Err(Error::BadUuid { len: 3, .. })
        ));
    }
}
