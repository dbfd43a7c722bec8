//! Importing exported descriptors into Vulkan on the exporting physical device.
//!
//! Each importer takes the [`Exported`] by value, checks the metadata (kind, handle type, UUID
//! length) before any driver call, and hands the descriptor to `gpushare-interop`, which checks the
//! device UUID, usage and memory type before the driver sees them. An import takes ownership of
//! the descriptor when it succeeds; when it fails, the descriptor is closed.
//!
//! CUDA imports are in [`crate::cuda`].

use std::sync::Arc;

use gpushare_interop::vulkan::{
    BufferImportDesc, Device, DeviceSelector, ImportedBuffer, ImportedImage, Instance,
    TimelineSemaphore,
};
use gpushare_proto::v1;

use crate::{Error, Exported, Result};

/// Opens the Vulkan device that exported `exported`, chosen by the device UUID in its metadata.
pub fn vulkan_device_for(instance: &Arc<Instance>, exported: &Exported) -> Result<Arc<Device>> {
    let uuid = exported.device_uuid()?;
    Ok(Device::open(instance, &DeviceSelector::Uuid(uuid))?)
}

/// Imports an exported buffer's memory into `device` (which must be the exporting physical
/// device: see [`vulkan_device_for`]), as a buffer of the same size and usage.
pub fn import_buffer_vulkan(device: &Arc<Device>, exported: Exported) -> Result<ImportedBuffer> {
    let desc = exported.buffer_import_desc()?;
    check_driver(device, &exported)?;
    Ok(device.import_buffer(exported.fd, &desc)?)
}

/// Imports an exported image's memory into `device` (the exporting physical device: see
/// [`vulkan_device_for`]), bound to an image of the same parameters. Its contents are in
/// `VK_IMAGE_LAYOUT_GENERAL`: use it there, acquiring it from `VK_QUEUE_FAMILY_EXTERNAL`
/// before your work and releasing it back after (the daemon's own transfers do the same).
pub fn import_image_vulkan(device: &Arc<Device>, exported: Exported) -> Result<ImportedImage> {
    let desc = exported.image_import_desc()?;
    check_driver(device, &exported)?;
    Ok(device.import_image(exported.fd, &desc)?)
}

/// Imports an exported timeline semaphore into `device`.
pub fn import_semaphore_vulkan(
    device: &Arc<Device>,
    exported: Exported,
) -> Result<TimelineSemaphore> {
    exported.check_timeline_semaphore()?;
    check_driver(device, &exported)?;
    Ok(device.import_timeline_semaphore(exported.fd)?)
}

impl Exported {
    /// What an importer (Vulkan or CUDA) needs to import this buffer: fails unless this is a
    /// buffer exported as `OPAQUE_FD` with a 16-byte device UUID and its buffer details, whose
    /// size fits in its allocation.
    pub fn buffer_import_desc(&self) -> Result<BufferImportDesc> {
        check_kind(self, v1::ResourceKind::Buffer)?;
        check_opaque_fd(self)?;
        let Some(v1::exported_fd::Details::Buffer(buffer)) = &self.info.details else {
            return Err(Error::MissingField("ExportedFd.buffer"));
        };
        if buffer.size == 0 || buffer.size > buffer.allocation_size {
            return Err(Error::BufferSize {
                size: buffer.size,
                allocation_size: buffer.allocation_size,
            });
        }
        Ok(BufferImportDesc {
            size: buffer.size,
            allocation_size: buffer.allocation_size,
            dedicated: buffer.dedicated,
            memory_type_index: buffer.memory_type_index,
            usage: buffer.usage,
            device_uuid: self.device_uuid()?,
        })
    }
}

impl Exported {
    /// Fails unless this is a timeline semaphore exported as `OPAQUE_FD` (what the Vulkan and
    /// CUDA importers accept).
    pub fn check_timeline_semaphore(&self) -> Result<()> {
        check_kind(self, v1::ResourceKind::Semaphore)?;
        check_opaque_fd(self)?;
        match &self.info.details {
            Some(v1::exported_fd::Details::Semaphore(s)) if s.timeline => Ok(()),
            _ => Err(Error::MissingField("ExportedFd.semaphore.timeline")),
        }
    }
}

/// [`Error::WrongDriver`] unless `device` runs the exporting driver (the device itself is
/// checked by `gpushare-interop` against the device UUID).
fn check_driver(device: &Device, exported: &Exported) -> Result<()> {
    let exporter = exported.driver_uuid()?;
    let importer = device.info().driver_uuid;
    if exporter != importer {
        return Err(Error::WrongDriver {
            exported: crate::cuda::Uuid(exporter),
            device: crate::cuda::Uuid(importer),
        });
    }
    Ok(())
}

pub(crate) fn check_kind(exported: &Exported, expected: v1::ResourceKind) -> Result<()> {
    if exported.info.kind != expected as i32 {
        return Err(Error::WrongKind {
            expected,
            found: exported.info.kind,
        });
    }
    Ok(())
}

pub(crate) fn check_opaque_fd(exported: &Exported) -> Result<()> {
    if exported.info.handle_type != v1::HandleType::OpaqueFd as i32 {
        return Err(Error::HandleType(exported.info.handle_type));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::fixtures::{buffer_info, exported};

    #[test]
    fn desc_from_metadata() {
        let desc = exported(buffer_info(1000, 1024))
            .buffer_import_desc()
            .expect("valid metadata");
        assert_eq!(desc.size, 1000);
        assert_eq!(desc.allocation_size, 1024);
        assert!(desc.dedicated);
        assert_eq!(desc.memory_type_index, 2);
        assert_eq!(desc.usage, 0x3);
        assert_eq!(desc.device_uuid, [3; 16]);
    }

    #[test]
    fn desc_checks_metadata() {
        let mut info = buffer_info(1000, 1024);
        info.kind = v1::ResourceKind::Semaphore as i32;
        assert!(matches!(
            exported(info).buffer_import_desc(),
            Err(Error::WrongKind { .. })
        ));
        let mut info = buffer_info(1000, 1024);
        info.handle_type = v1::HandleType::DmaBuf as i32;
        assert!(matches!(
            exported(info).buffer_import_desc(),
            Err(Error::HandleType(2))
        ));
        let mut info = buffer_info(1000, 1024);
        info.device_uuid.pop();
        assert!(matches!(
            exported(info).buffer_import_desc(),
            Err(Error::BadUuid { len: 15, .. })
        ));
        let mut info = buffer_info(1000, 1024);
        info.details = None;
        assert!(matches!(
            exported(info).buffer_import_desc(),
            Err(Error::MissingField(_))
        ));
    }
}
