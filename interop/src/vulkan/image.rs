//! Images whose memory can cross process boundaries: [`ExportableImage`] (its own dedicated
//! `OPAQUE_FD` allocation, optimal tiling), [`ImportedImage`] (another process's image bound to
//! the imported memory), and the [`DeviceImage`] trait the transfer engine works on.
//!
//! Every shared image rests in `VK_IMAGE_LAYOUT_GENERAL`: the daemon moves a new image there
//! once ([`Transfer::prepare_image`](super::Transfer::prepare_image)), and every user leaves it
//! there. Work on it acquires it from `VK_QUEUE_FAMILY_EXTERNAL` first and releases it back
//! after, so another process (or CUDA) sees its writes.
//!
//! What a device supports is asked of the driver (`vkGetPhysicalDeviceImageFormatProperties2`
//! with the external-memory info) before anything is created; refusals name the format, the
//! usage and the limit.

use std::any::Any;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use ash::vk;

use super::buffer::{export_opaque_fd, Sealed};
use super::caps::HandleType;
use super::device::Device;
use super::error::{Check, Error, Result};
use super::import::{check_import_memory, settle_import_fd};
use super::memory::select_memory_type;
use crate::image::{ImageDesc, ImageKind};

/// Usage bits an image may be created with (`VkImageUsageFlags`).
pub const IMAGE_KNOWN_USAGE: vk::ImageUsageFlags = vk::ImageUsageFlags::from_raw(
    vk::ImageUsageFlags::TRANSFER_SRC.as_raw()
        | vk::ImageUsageFlags::TRANSFER_DST.as_raw()
        | vk::ImageUsageFlags::SAMPLED.as_raw()
        | vk::ImageUsageFlags::STORAGE.as_raw()
        | vk::ImageUsageFlags::COLOR_ATTACHMENT.as_raw(),
);

/// Usage every shared image has: the daemon's uploads, downloads and clears need it.
pub const IMAGE_BASE_USAGE: vk::ImageUsageFlags = vk::ImageUsageFlags::from_raw(
    vk::ImageUsageFlags::TRANSFER_SRC.as_raw() | vk::ImageUsageFlags::TRANSFER_DST.as_raw(),
);

/// An image on a [`Device`] that transfer operations can read and write. Sealed: implemented by
/// [`ExportableImage`] and [`ImportedImage`].
pub trait DeviceImage: Sealed + Send + Sync {
    /// The Vulkan handle, valid while `self` lives.
    fn raw(&self) -> vk::Image;
    /// What the image is.
    fn desc(&self) -> &ImageDesc;
    /// The device it lives on.
    fn device(&self) -> &Arc<Device>;
    /// Its usage flags.
    fn usage(&self) -> vk::ImageUsageFlags;
}

/// An image bound to memory it owns. Destroys both in `Drop`.
struct ImageAllocation {
    device: Arc<Device>,
    image: vk::Image,
    memory: vk::DeviceMemory,
    desc: ImageDesc,
    usage: vk::ImageUsageFlags,
    allocation_size: u64,
    memory_type_index: u32,
}

impl fmt::Debug for ImageAllocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("image", &self.image)
            .field("memory", &self.memory)
            .field("desc", &self.desc)
            .field("usage", &self.usage)
            .field("allocation_size", &self.allocation_size)
            .field("memory_type_index", &self.memory_type_index)
            .finish()
    }
}

impl Drop for ImageAllocation {
    fn drop(&mut self) {
        // SAFETY: the handles belong to `self.device` and are destroyed once, when the last
        // holder goes: transfer submissions in flight hold the allocation too.
        unsafe {
            self.device.raw().destroy_image(self.image, None);
            if self.memory != vk::DeviceMemory::null() {
                self.device.raw().free_memory(self.memory, None);
            }
        }
    }
}

/// What a device allows for an image of a format, kind and usage, shared as `OPAQUE_FD`.
#[derive(Clone, Copy, Debug)]
pub struct ImageSupport {
    /// The largest extent.
    pub max_extent: (u32, u32, u32),
    /// The most mip levels.
    pub max_mip_levels: u32,
    /// The most array layers.
    pub max_array_layers: u32,
    /// Whether its memory must be a dedicated allocation.
    pub dedicated_only: bool,
    /// Whether the device can export it.
    pub exportable: bool,
    /// Whether the device can import it.
    pub importable: bool,
}

/// Everything besides the descriptor that importing an image needs: the exporter's image
/// parameters and memory facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageImportDesc {
    /// What the image is.
    pub desc: ImageDesc,
    /// Its `VkImageUsageFlags`.
    pub usage: u32,
    /// The memory object's size.
    pub allocation_size: u64,
    /// The exporter's memory type index.
    pub memory_type_index: u32,
    /// The exporting device's UUID.
    pub device_uuid: [u8; 16],
}

fn image_type(kind: ImageKind) -> vk::ImageType {
    match kind {
        ImageKind::D2 => vk::ImageType::TYPE_2D,
        ImageKind::D3 => vk::ImageType::TYPE_3D,
    }
}

/// The usage flags an image is created with: the caller's (known bits only) plus
/// [`IMAGE_BASE_USAGE`].
fn checked_usage(usage: u32) -> Result<vk::ImageUsageFlags> {
    if usage & !IMAGE_KNOWN_USAGE.as_raw() != 0 {
        return Err(Error::InvalidUsage { usage });
    }
    Ok(vk::ImageUsageFlags::from_raw(usage) | IMAGE_BASE_USAGE)
}

impl Device {
    /// What the device allows for `desc`'s format and kind with `usage`, in optimal tiling,
    /// shared as `OPAQUE_FD`. [`Error::Unsupported`] when the driver refuses the combination.
    pub fn image_support(
        &self,
        desc: &ImageDesc,
        usage: vk::ImageUsageFlags,
    ) -> Result<ImageSupport> {
        let physical = self.physical();
        let mut external = vk::PhysicalDeviceExternalImageFormatInfo::default()
            .handle_type(HandleType::OpaqueFd.memory_handle_type());
        let info = vk::PhysicalDeviceImageFormatInfo2::default()
            .format(desc.format.info().vk)
            .ty(image_type(desc.kind))
            .tiling(vk::ImageTiling::OPTIMAL)
            .usage(usage)
            .push_next(&mut external);
        let mut external_props = vk::ExternalImageFormatProperties::default();
        let mut props = vk::ImageFormatProperties2::default().push_next(&mut external_props);
        // SAFETY: the physical device belongs to this device's instance; `info` names a valid
        // format, type, tiling and usage with one external handle type; the output structures
        // are valid and outlive the call (core in 1.1).
        let result = unsafe {
            self.instance()
                .raw()
                .get_physical_device_image_format_properties2(physical.handle, &info, &mut props)
        };
        match result {
            Ok(()) => {}
            Err(vk::Result::ERROR_FORMAT_NOT_SUPPORTED) => {
                return Err(Error::Unsupported(format!(
                    "{} {:?} image with usage {:#x} shared as OPAQUE_FD on {}",
                    desc.format,
                    desc.kind,
                    usage.as_raw(),
                    physical.info.name
                )))
            }
            Err(e) => return Err(Error::call("vkGetPhysicalDeviceImageFormatProperties2", e)),
        }
        let p = props.image_format_properties;
        let features = external_props
            .external_memory_properties
            .external_memory_features;
        Ok(ImageSupport {
            max_extent: (p.max_extent.width, p.max_extent.height, p.max_extent.depth),
            max_mip_levels: p.max_mip_levels,
            max_array_layers: p.max_array_layers,
            dedicated_only: features.contains(vk::ExternalMemoryFeatureFlags::DEDICATED_ONLY),
            exportable: features.contains(vk::ExternalMemoryFeatureFlags::EXPORTABLE),
            importable: features.contains(vk::ExternalMemoryFeatureFlags::IMPORTABLE),
        })
    }

    /// Checks `desc` and `usage` against the driver's limits; the usage the image gets.
    fn check_image(
        &self,
        desc: &ImageDesc,
        usage: u32,
        export: bool,
    ) -> Result<vk::ImageUsageFlags> {
        desc.validate()
            .map_err(|e| Error::InvalidImage(e.to_string()))?;
        let usage = checked_usage(usage)?;
        let support = self.image_support(desc, usage)?;
        let name = &self.info().name;
        let (can, verb) = if export {
            (support.exportable, "export")
        } else {
            (support.importable, "import")
        };
        if !can || (export && self.memory_fd().is_none()) {
            return Err(Error::Unsupported(format!(
                "OPAQUE_FD {verb} of {} {:?} images with usage {:#x} on {name}",
                desc.format,
                desc.kind,
                usage.as_raw()
            )));
        }
        let (mw, mh, md) = support.max_extent;
        let limit = |what: &str, value: u32, max: u32| -> Result<()> {
            if value > max {
                return Err(Error::Unsupported(format!(
                    "{what} {value} for a {} {:?} image on {name} (the device allows {max})",
                    desc.format, desc.kind
                )));
            }
            Ok(())
        };
        limit("width", desc.width, mw)?;
        limit("height", desc.height, mh)?;
        limit("depth", desc.depth, md)?;
        limit("mip levels", desc.mip_levels, support.max_mip_levels)?;
        limit("array layers", desc.array_layers, support.max_array_layers)?;
        Ok(usage)
    }

    /// Creates the image (no memory yet) with `OPAQUE_FD` external memory.
    fn create_image(
        self: &Arc<Self>,
        desc: &ImageDesc,
        usage: vk::ImageUsageFlags,
    ) -> Result<ImageAllocation> {
        let mut external = vk::ExternalMemoryImageCreateInfo::default()
            .handle_types(HandleType::OpaqueFd.memory_handle_type());
        let info = vk::ImageCreateInfo::default()
            .image_type(image_type(desc.kind))
            .format(desc.format.info().vk)
            .extent(vk::Extent3D {
                width: desc.width,
                height: desc.height,
                depth: desc.depth,
            })
            .mip_levels(desc.mip_levels)
            .array_layers(desc.array_layers)
            .samples(vk::SampleCountFlags::TYPE_1)
            .tiling(vk::ImageTiling::OPTIMAL)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .initial_layout(vk::ImageLayout::UNDEFINED)
            .push_next(&mut external);
        // SAFETY: the parameters were checked against the driver's image format properties for
        // this format, type, tiling, usage and handle type (check_image); every structure
        // outlives the call.
        let image = unsafe { self.raw().create_image(&info, None) }.check("vkCreateImage")?;
        Ok(ImageAllocation {
            device: Arc::clone(self),
            image,
            memory: vk::DeviceMemory::null(),
            desc: *desc,
            usage,
            allocation_size: 0,
            memory_type_index: 0,
        })
    }

    /// Creates an image whose memory (dedicated, device-local where the device has such memory)
    /// can be exported as an `OPAQUE_FD`, in optimal tiling, with `usage` plus
    /// [`IMAGE_BASE_USAGE`]. Its contents are undefined and its layout `UNDEFINED` until
    /// [`Transfer::prepare_image`](super::Transfer::prepare_image) runs.
    ///
    /// [`Error::InvalidImage`] for an inconsistent shape, [`Error::InvalidUsage`] for unknown
    /// usage bits, [`Error::Unsupported`] for what the device refuses (naming the limit), an
    /// out-of-memory error when memory runs out.
    pub fn create_exportable_image(
        self: &Arc<Self>,
        desc: &ImageDesc,
        usage: vk::ImageUsageFlags,
    ) -> Result<ExportableImage> {
        let usage = self.check_image(desc, usage.as_raw(), true)?;
        let mut alloc = self.create_image(desc, usage)?;
        let (size, type_bits) = image_requirements(self, alloc.image);
        let memory_type_index = select_memory_type(
            &self.physical().memory,
            type_bits,
            vk::MemoryPropertyFlags::empty(),
            vk::MemoryPropertyFlags::DEVICE_LOCAL,
        )
        .ok_or(Error::NoMemoryType {
            flags: 0,
            type_bits,
        })?;
        let mut export = vk::ExportMemoryAllocateInfo::default()
            .handle_types(HandleType::OpaqueFd.memory_handle_type());
        // SAFETY: the export info names a handle type the device exports for this image
        // (check_image); the memory type is in the image's type bits and the size its
        // requirement.
        unsafe { allocate_and_bind(&mut alloc, size, memory_type_index, Some(&mut export)) }?;
        Ok(ExportableImage {
            alloc: Arc::new(alloc),
        })
    }

    /// Imports image memory exported as an `OPAQUE_FD` (always a dedicated allocation), creating
    /// an image of the same parameters bound to it. Takes ownership of `fd` only on success.
    ///
    /// The imported image's contents are in `VK_IMAGE_LAYOUT_GENERAL` (see the module docs):
    /// use it in that layout, acquiring it from `VK_QUEUE_FAMILY_EXTERNAL` first.
    pub fn import_image(
        self: &Arc<Self>,
        fd: OwnedFd,
        desc: &ImageImportDesc,
    ) -> Result<ImportedImage> {
        let physical = self.physical();
        if desc.device_uuid != physical.info.device_uuid {
            return Err(Error::DeviceMismatch {
                expected: desc.device_uuid,
                found: physical.info.device_uuid,
            });
        }
        if self.memory_fd().is_none() {
            return Err(Error::Unsupported(
                "VK_KHR_external_memory_fd on this device".to_owned(),
            ));
        }
        let usage = self.check_image(&desc.desc, desc.usage, false)?;
        let mut alloc = self.create_image(&desc.desc, usage)?;
        let (size, type_bits) = image_requirements(self, alloc.image);
        check_import_memory(
            self,
            (type_bits, size),
            desc.memory_type_index,
            desc.allocation_size,
        )?;
        let mut import = vk::ImportMemoryFdInfoKHR::default()
            .handle_type(HandleType::OpaqueFd.memory_handle_type())
            .fd(fd.as_raw_fd());
        // SAFETY: the import info names a descriptor we own, of a handle type the device
        // imports for this image; type and size checked against the image's requirements;
        // their match with the exporter is the descriptor's contract.
        let result = unsafe {
            allocate_and_bind(
                &mut alloc,
                desc.allocation_size,
                desc.memory_type_index,
                Some(&mut import),
            )
        };
        settle_import_fd(fd, alloc.memory);
        result?;
        Ok(ImportedImage {
            alloc: Arc::new(alloc),
        })
    }
}

/// The image's memory size and allowed memory types.
fn image_requirements(device: &Device, image: vk::Image) -> (u64, u32) {
    // SAFETY: `image` is a live image of this device with no memory bound.
    let reqs = unsafe { device.raw().get_image_memory_requirements(image) };
    (reqs.size, reqs.memory_type_bits)
}

/// Allocates dedicated memory for the image and binds it; the memory, once allocated, is owned
/// by `alloc` (freed in `Drop`).
///
/// # Safety
///
/// `extra`, if any, is a valid extension of `VkMemoryAllocateInfo` for this device with a null
/// `pNext`; `memory_type_index` and `allocation_size` are valid for the image and `extra`.
unsafe fn allocate_and_bind(
    alloc: &mut ImageAllocation,
    allocation_size: u64,
    memory_type_index: u32,
    extra: Option<&mut dyn vk::ExtendsMemoryAllocateInfo>,
) -> Result<()> {
    let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().image(alloc.image);
    let mut info = vk::MemoryAllocateInfo::default()
        .allocation_size(allocation_size)
        .memory_type_index(memory_type_index)
        .push_next(&mut dedicated);
    if let Some(extra) = extra {
        info = info.push_next(extra);
    }
    // SAFETY: the caller guarantees `extra` and the size and type; the dedicated info names
    // this image, which has no memory bound yet; all structures outlive the call.
    let memory =
        unsafe { alloc.device.raw().allocate_memory(&info, None) }.check("vkAllocateMemory")?;
    alloc.memory = memory;
    alloc.allocation_size = allocation_size;
    alloc.memory_type_index = memory_type_index;
    // SAFETY: image and memory belong to this device; the memory is a dedicated allocation for
    // this image, of a type in its type bits, at least its required size; nothing is bound yet.
    unsafe { alloc.device.raw().bind_image_memory(alloc.image, memory, 0) }
        .check("vkBindImageMemory")
}

/// An image with its own exportable dedicated allocation. `Send + Sync`: its methods call
/// nothing Vulkan requires external synchronization for.
#[derive(Debug)]
pub struct ExportableImage {
    alloc: Arc<ImageAllocation>,
}

impl ExportableImage {
    /// What the image is.
    pub fn desc(&self) -> &ImageDesc {
        &self.alloc.desc
    }

    /// The memory object's size: what importers must pass (CUDA included).
    pub fn allocation_size(&self) -> u64 {
        self.alloc.allocation_size
    }

    /// Always true: image memory is a dedicated allocation.
    pub fn dedicated(&self) -> bool {
        true
    }

    /// The memory type the memory was allocated from.
    pub fn memory_type_index(&self) -> u32 {
        self.alloc.memory_type_index
    }

    /// The image's `VkImageUsageFlags`.
    pub fn usage(&self) -> u32 {
        self.alloc.usage.as_raw()
    }

    /// Exports the memory as a new `OPAQUE_FD` (a new descriptor on every call).
    pub fn export_fd(&self) -> Result<OwnedFd> {
        // SAFETY: the memory was allocated on this device with OPAQUE_FD in its export handle
        // types, and lives as long as `self`.
        unsafe { export_opaque_fd(&self.alloc.device, self.alloc.memory) }
    }

    /// Everything an importer needs besides the descriptor.
    pub fn import_desc(&self) -> ImageImportDesc {
        ImageImportDesc {
            desc: self.alloc.desc,
            usage: self.alloc.usage.as_raw(),
            allocation_size: self.alloc.allocation_size,
            memory_type_index: self.alloc.memory_type_index,
            device_uuid: self.alloc.device.info().device_uuid,
        }
    }
}

/// Another process's image, bound to its imported memory.
#[derive(Debug)]
pub struct ImportedImage {
    alloc: Arc<ImageAllocation>,
}

impl ImportedImage {
    /// The imported memory object's size.
    pub fn allocation_size(&self) -> u64 {
        self.alloc.allocation_size
    }
}

macro_rules! device_image {
    ($t:ty) => {
        impl Sealed for $t {
            fn retain(&self) -> Arc<dyn Any + Send + Sync> {
                self.alloc.clone()
            }
        }

        impl DeviceImage for $t {
            fn raw(&self) -> vk::Image {
                self.alloc.image
            }
            fn desc(&self) -> &ImageDesc {
                &self.alloc.desc
            }
            fn device(&self) -> &Arc<Device> {
                &self.alloc.device
            }
            fn usage(&self) -> vk::ImageUsageFlags {
                self.alloc.usage
            }
        }
    };
}

device_image!(ExportableImage);
device_image!(ImportedImage);
