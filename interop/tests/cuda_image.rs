//! CUDA imports of Vulkan images against real drivers: for every format, a 2D image with a full
//! mip chain, a layered 2D image and a 3D image that Vulkan exports are mapped as CUDA
//! mipmapped arrays; what Vulkan uploads is what CUDA copies out of each level, and what CUDA
//! copies in is what Vulkan downloads. Surface and texture objects over them, and the
//! handwritten kernels (`cuda::kernels`) writing through surfaces and sampling through textures.
//! Runs on the GPU machine.
//!
//! Without CUDA or without a Vulkan device that CUDA sees, each test prints `SKIP: <reason>` and
//! returns, unless `GPUSHARE_REQUIRE_GPU=1`, where that is a failure. Formats the Vulkan device
//! refuses for an image shape are reported and left out.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gpushare_interop::cuda::{
    self, copy_array_to_host, copy_dtoh, copy_host_to_array, kernels, ArrayLevel, CudaDevice,
    DeviceAllocation, ExternalMemory, MatchMethod, MipmappedArray, SurfaceObject, TextureObject,
    TextureOptions,
};
use gpushare_interop::image::{ImageDesc, ImageFormat, ImageKind, ImageRegion};
use gpushare_interop::vulkan::{
    self, vk, DeviceSelector, ExportableImage, Instance, SyncPoints, Transfer,
};

static LOCK: Mutex<()> = Mutex::new(());

/// A Vulkan device and the CUDA device with the same UUID.
struct Env {
    _guard: MutexGuard<'static, ()>,
    vk: Arc<vulkan::Device>,
    cu: Arc<CudaDevice>,
}

fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("GPUSHARE_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("GPUSHARE_REQUIRE_GPU=1 but {reason}");
    }
    println!("SKIP: {reason}");
    None
}

/// A Vulkan device paired with its CUDA device by UUID, or `None` after printing why not.
fn env() -> Option<Env> {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !cuda::is_present() {
        return skip("no CUDA driver (libcuda) on this host");
    }
    let cuda_devices = cuda::devices().expect("listing CUDA devices");
    if cuda_devices.is_empty() {
        return skip("the CUDA driver sees no device");
    }
    let instance = match Instance::new("gpushare-interop-cuda-image-tests") {
        Ok(i) => i,
        Err(e) => return skip(&format!("no Vulkan instance: {e}")),
    };
    let vk_devices = instance.devices().expect("listing Vulkan devices");
    let paired = vk_devices.iter().find_map(|d| {
        cuda::match_device(&d.device_uuid, &d.name, &cuda_devices, true)
            .ok()
            .map(|(_, method)| (d, method))
    });
    let Some((vk_info, method)) = paired else {
        let names: Vec<_> = vk_devices.iter().map(|d| d.name.as_str()).collect();
        return skip(&format!(
            "no Vulkan device has a CUDA device's UUID (Vulkan devices: {names:?})"
        ));
    };
    assert_eq!(method, MatchMethod::Uuid);
    let vk = vulkan::Device::open(&instance, &DeviceSelector::Uuid(vk_info.device_uuid))
        .expect("opening the Vulkan device");
    let cu = CudaDevice::by_uuid(&vk_info.device_uuid).expect("opening the CUDA device");
    println!(
        "Vulkan {} ({}) = CUDA {} {}",
        vk_info.name,
        vk_info.driver_info,
        cu.info().ordinal,
        cu.info().name
    );
    Some(Env {
        _guard: guard,
        vk,
        cu,
    })
}

fn sync<'a>() -> SyncPoints<'a> {
    SyncPoints {
        timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

/// The three shapes: 2D 64×32 with its full chain, 32×16 with 3 layers and 4 levels, 16×8×4
/// with 3 levels. The layered one has a partial chain on purpose: NVIDIA's Vulkan driver lays
/// its layers out for the full chain, and CUDA agrees only when told of the full chain (seen on
/// the H100 with driver 580.159: mapped with 4 levels, every layer after the first was
/// misplaced).
fn shapes(format: ImageFormat) -> [ImageDesc; 3] {
    let d2 = ImageDesc {
        format,
        kind: ImageKind::D2,
        width: 64,
        height: 32,
        depth: 1,
        mip_levels: 7,
        array_layers: 1,
    };
    let layered = ImageDesc {
        width: 32,
        height: 16,
        mip_levels: 4,
        array_layers: 3,
        ..d2
    };
    let d3 = ImageDesc {
        kind: ImageKind::D3,
        width: 16,
        height: 8,
        depth: 4,
        mip_levels: 3,
        ..d2
    };
    for d in [d2, layered, d3] {
        d.validate().unwrap();
    }
    assert_eq!(d2.mip_levels, d2.max_mip_levels());
    [d2, layered, d3]
}

fn name(desc: &ImageDesc) -> String {
    format!(
        "{} {:?} {}x{}x{} ({} levels, {} layers)",
        desc.format,
        desc.kind,
        desc.width,
        desc.height,
        desc.depth,
        desc.mip_levels,
        desc.array_layers
    )
}

/// The image, prepared (GENERAL layout, zeroed), or `None` where the device refuses it.
fn create(
    env: &Env,
    transfer: &mut Transfer,
    desc: &ImageDesc,
    usage: vk::ImageUsageFlags,
) -> Option<ExportableImage> {
    match env.vk.create_exportable_image(desc, usage) {
        Ok(image) => {
            transfer.prepare_image(&image).unwrap();
            Some(image)
        }
        Err(vulkan::Error::Unsupported(why)) => {
            println!(
                "{}: not supported with {usage:?}, left out: {why}",
                name(desc)
            );
            None
        }
        Err(e) => panic!("{}: {e}", name(desc)),
    }
}

/// The image's memory imported into CUDA and mapped as a mipmapped array.
fn import(env: &Env, image: &ExportableImage) -> Arc<MipmappedArray> {
    let mem = ExternalMemory::import_opaque_fd(
        &env.cu,
        image.export_fd().unwrap(),
        image.allocation_size(),
        image.dedicated(),
    )
    .unwrap();
    let array = mem.mipmapped_array(image.desc(), image.usage()).unwrap();
    assert_eq!(array.levels(), image.desc().mip_levels);
    assert_eq!(array.desc(), image.desc());
    array
}

/// `region` of `level`, copied out by CUDA (synchronously).
fn cuda_read(env: &Env, level: &ArrayLevel, region: &ImageRegion) -> Vec<u8> {
    let format = level.desc().format;
    let mut out = vec![0u8; region.size(format) as usize];
    // SAFETY: `out` holds the region's packed size and is read after the synchronize; the level
    // outlives it.
    unsafe {
        copy_array_to_host(
            env.cu.stream(),
            level,
            region,
            format,
            out.as_mut_ptr(),
            out.len(),
        )
        .unwrap()
    };
    env.cu.synchronize_stream().unwrap();
    out
}

/// `data` copied by CUDA into `region` of `level` (synchronously).
fn cuda_write(env: &Env, level: &ArrayLevel, region: &ImageRegion, data: &[u8]) {
    // SAFETY: `data` is the region's packed size (checked by the call) and outlives the
    // synchronize; so does the level.
    unsafe {
        copy_host_to_array(
            env.cu.stream(),
            level,
            region,
            level.desc().format,
            data.as_ptr(),
            data.len(),
        )
        .unwrap()
    };
    env.cu.synchronize_stream().unwrap();
}

/// `full` (a whole level, packed) with `sub` of it replaced by `data` (packed).
fn apply_region(desc: &ImageDesc, full: &mut [u8], sub: &ImageRegion, data: &[u8]) {
    let (w, h, d) = desc.level_extent(sub.level);
    let texel = desc.format.texel_size() as usize;
    let row = sub.width as usize * texel;
    let mut src = 0;
    for layer in sub.base_layer..sub.base_layer + sub.layers {
        for z in sub.z..sub.z + sub.depth {
            for y in sub.y..sub.y + sub.height {
                let at = (((layer * d + z) * h + y) * w + sub.x) as usize * texel;
                full[at..at + row].copy_from_slice(&data[src..src + row]);
                src += row;
            }
        }
    }
    assert_eq!(src, data.len());
}

/// An inner box of level `level`: one texel in from each side where the level has room, and
/// all layers but the first where there are several.
fn inner_region(desc: &ImageDesc, level: u32) -> ImageRegion {
    let whole = ImageRegion::level(desc, level);
    let shrink = |len: u32| if len > 2 { (1, len - 2) } else { (0, len) };
    let (x, width) = shrink(whole.width);
    let (y, height) = shrink(whole.height);
    let (z, depth) = shrink(whole.depth);
    let (base_layer, layers) = if desc.array_layers > 1 {
        (1, desc.array_layers - 1)
    } else {
        (0, 1)
    };
    ImageRegion {
        x,
        y,
        z,
        width,
        height,
        depth,
        base_layer,
        layers,
        ..whole
    }
}

/// Vulkan uploads every level, CUDA reads them; CUDA writes every level, Vulkan reads them;
/// then CUDA writes an inner box of level 0 and Vulkan sees exactly that box change.
#[test]
fn every_format_round_trips_between_vulkan_and_cuda() {
    let Some(env) = env() else { return };
    let mut transfer = Transfer::new(&env.vk).unwrap();
    let mut tested = Vec::new();
    for format in ImageFormat::all() {
        for desc in shapes(format) {
            let Some(image) = create(&env, &mut transfer, &desc, vk::ImageUsageFlags::SAMPLED)
            else {
                continue;
            };
            let what = name(&desc);
            println!(
                "{what}: allocation {} dedicated {}",
                image.allocation_size(),
                image.dedicated()
            );
            let uploaded: Vec<Vec<u8>> = (0..desc.mip_levels)
                .map(|l| pattern(desc.level_size(l) as usize, l as u8 * 17 + format as u8))
                .collect();
            for (l, data) in (0..).zip(&uploaded) {
                transfer
                    .upload_image(&image, &ImageRegion::level(&desc, l), data, &sync())
                    .unwrap();
            }
            let array = import(&env, &image);
            let levels: Vec<ArrayLevel> = (0..desc.mip_levels)
                .map(|l| array.level(l).unwrap())
                .collect();
            assert!(matches!(
                array.level(desc.mip_levels),
                Err(cuda::Error::InvalidValue { .. })
            ));
            for (l, level) in (0..).zip(&levels) {
                assert_eq!(level.level(), l);
                assert_eq!(level.extent(), desc.level_extent(l));
                let back = cuda_read(&env, level, &ImageRegion::level(&desc, l));
                assert!(
                    back == uploaded[l as usize],
                    "{what} level {l}: CUDA read other bytes than Vulkan uploaded"
                );
            }
            let mut written = Vec::new();
            for (l, level) in (0..).zip(&levels) {
                let data = pattern(desc.level_size(l) as usize, 99 + l as u8);
                cuda_write(&env, level, &ImageRegion::level(&desc, l), &data);
                written.push(data);
            }
            for (l, data) in (0..).zip(&written) {
                let back = transfer
                    .download_image(&image, &ImageRegion::level(&desc, l), &sync())
                    .unwrap();
                assert!(
                    back == *data,
                    "{what} level {l}: Vulkan read other bytes than CUDA wrote"
                );
            }
            // An inner box of level 0: offsets in x, y, z and layers.
            let inner = inner_region(&desc, 0);
            inner.validate(&desc).unwrap();
            let box_data = pattern(inner.size(format) as usize, 7);
            cuda_write(&env, &levels[0], &inner, &box_data);
            let mut expect = written[0].clone();
            apply_region(&desc, &mut expect, &inner, &box_data);
            let back = transfer
                .download_image(&image, &ImageRegion::level(&desc, 0), &sync())
                .unwrap();
            assert!(back == expect, "{what}: the inner box landed elsewhere");
            assert_eq!(cuda_read(&env, &levels[0], &inner), box_data);

            // Arguments CUDA would misread are refused before the call.
            let whole = ImageRegion::level(&desc, 0);
            let mut buf = vec![0u8; whole.size(format) as usize];
            let other = ImageFormat::all().find(|&f| f != format).unwrap();
            // SAFETY: each call is refused before any copy is enqueued.
            unsafe {
                let stream = env.cu.stream();
                let short = copy_array_to_host(
                    stream,
                    &levels[0],
                    &whole,
                    format,
                    buf.as_mut_ptr(),
                    buf.len() - 1,
                );
                assert!(matches!(short, Err(cuda::Error::InvalidValue { .. })));
                let wrong_format =
                    copy_array_to_host(stream, &levels[0], &whole, other, buf.as_mut_ptr(), 0);
                assert!(matches!(
                    wrong_format,
                    Err(cuda::Error::InvalidValue { .. })
                ));
                let wrong_level = copy_array_to_host(
                    stream,
                    &levels[1],
                    &whole,
                    format,
                    buf.as_mut_ptr(),
                    buf.len(),
                );
                assert!(matches!(wrong_level, Err(cuda::Error::InvalidValue { .. })));
                let outside = ImageRegion { x: 1, ..whole };
                let outside = copy_array_to_host(
                    stream,
                    &levels[0],
                    &outside,
                    format,
                    buf.as_mut_ptr(),
                    buf.len(),
                );
                assert!(matches!(outside, Err(cuda::Error::InvalidValue { .. })));
            }
            drop(levels);
            drop(array);
            // Vulkan still owns the image after the CUDA side is gone.
            let again = transfer
                .download_image(&image, &ImageRegion::level(&desc, 0), &sync())
                .unwrap();
            assert!(again == expect);
            tested.push(what);
        }
    }
    println!("round-tripped {} images: {tested:#?}", tested.len());
    for kind in ["D2", "D3"] {
        assert!(
            tested
                .iter()
                .any(|t| t.starts_with(&format!("rgba8unorm {kind} "))),
            "rgba8unorm {kind} must be supported (Vulkan requires it for sampled images)"
        );
    }
}

/// Surfaces over every level and textures over the chain and over one level, created and
/// destroyed in any order: each holds what it uses.
#[test]
fn surfaces_and_textures_over_imported_images() {
    let Some(env) = env() else { return };
    let mut transfer = Transfer::new(&env.vk).unwrap();
    let usage = vk::ImageUsageFlags::STORAGE | vk::ImageUsageFlags::SAMPLED;
    let normalized = TextureOptions {
        normalized_coords: true,
        ..Default::default()
    };
    for desc in shapes(ImageFormat::Rgba8Unorm) {
        let what = name(&desc);
        let image = create(&env, &mut transfer, &desc, usage)
            .unwrap_or_else(|| panic!("{what}: storage rgba8unorm must be supported"));
        let array = import(&env, &image);
        assert_ne!(
            array.flags() & cuda::cudarc::driver::sys::CUDA_ARRAY3D_SURFACE_LDST,
            0
        );
        let surfaces: Vec<SurfaceObject> = (0..desc.mip_levels)
            .map(|l| SurfaceObject::new(&array.level(l).unwrap()).unwrap())
            .collect();
        assert!(surfaces.iter().all(|s| s.raw() != 0));
        let chain = TextureObject::new(&array, &normalized).unwrap();
        assert_eq!(chain.level(), None);
        let linear = TextureObject::new(
            &array,
            &TextureOptions {
                filter_linear: true,
                ..normalized
            },
        )
        .unwrap();
        let last = TextureObject::for_level(
            &array.level(desc.mip_levels - 1).unwrap(),
            &TextureOptions::default(),
        )
        .unwrap();
        assert_eq!(last.level(), Some(desc.mip_levels - 1));
        // CUDA requires normalized coordinates over a mip chain: refused before the call.
        assert!(matches!(
            TextureObject::new(&array, &TextureOptions::default()),
            Err(cuda::Error::InvalidValue { .. })
        ));
        // The objects hold the array and the memory: drop those first, the objects after.
        drop(array);
        drop(chain);
        drop(surfaces);
        drop(linear);
        drop(last);
        env.cu.synchronize().unwrap();
        println!("{what}: surfaces and textures created and destroyed");
    }
    // Without STORAGE usage there is no surface.
    let desc = shapes(ImageFormat::Rgba8Unorm)[0];
    let image = create(&env, &mut transfer, &desc, vk::ImageUsageFlags::SAMPLED).unwrap();
    let array = import(&env, &image);
    assert!(matches!(
        SurfaceObject::new(&array.level(0).unwrap()),
        Err(cuda::Error::InvalidValue { .. })
    ));
    TextureObject::new(&array, &normalized).unwrap();
}

/// What the fill kernels write into level `level` of `desc` with `seed`, packed.
fn expected_fill(desc: &ImageDesc, level: u32, seed: u32) -> Vec<u8> {
    let (w, h, d) = desc.level_extent(level);
    let texel = desc.format.texel_size();
    let mut out = Vec::with_capacity(desc.level_size(level) as usize);
    for layer in 0..desc.array_layers {
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    let pattern_z = if desc.kind == ImageKind::D3 { z } else { layer };
                    out.extend(kernels::expected_texel_bytes(seed, x, y, pattern_z, texel));
                }
            }
        }
    }
    out
}

/// The fill kernels (every store width, every shape) write every level through surfaces;
/// Vulkan reads exactly the expected bytes. Then the texture kernel samples each level of an
/// rgba8unorm chain at its own level of detail and reads the same texels as normalized floats.
#[test]
fn kernels_write_through_surfaces_and_sample_through_textures() {
    let Some(env) = env() else { return };
    let mut transfer = Transfer::new(&env.vk).unwrap();
    let k = kernels::ImageKernels::load(&env.cu).unwrap();
    let stream = env.cu.stream();
    let usage = vk::ImageUsageFlags::STORAGE | vk::ImageUsageFlags::SAMPLED;
    // One format per store width: 1, 2, 4, 8 and 16 bytes.
    let formats = [
        ImageFormat::R8Unorm,
        ImageFormat::R16Float,
        ImageFormat::Rgba8Unorm,
        ImageFormat::Rg32Float,
        ImageFormat::Rgba32Float,
    ];
    let mut rgba8_chain = None;
    for format in formats {
        for desc in shapes(format) {
            let what = name(&desc);
            let Some(image) = create(&env, &mut transfer, &desc, usage) else {
                assert_ne!(format, ImageFormat::Rgba8Unorm, "{what} must be supported");
                continue;
            };
            let array = import(&env, &image);
            let surfaces: Vec<SurfaceObject> = (0..desc.mip_levels)
                .map(|l| SurfaceObject::new(&array.level(l).unwrap()).unwrap())
                .collect();
            for (l, surface) in (0..).zip(&surfaces) {
                // SAFETY: the surfaces live until after the synchronize below; nothing else
                // touches the image meanwhile.
                unsafe { k.fill_surface(surface, 5 + l, stream).unwrap() };
            }
            env.cu.synchronize_stream().unwrap();
            for l in 0..desc.mip_levels {
                let back = transfer
                    .download_image(&image, &ImageRegion::level(&desc, l), &sync())
                    .unwrap();
                let expect = expected_fill(&desc, l, 5 + l);
                if let Some(i) = back.iter().zip(&expect).position(|(a, b)| a != b) {
                    let end = (i + 16).min(back.len());
                    panic!(
                        "{what} level {l}: Vulkan read other bytes than the kernel wrote, from \
                         byte {i}: {:?} != {:?}",
                        &back[i..end],
                        &expect[i..end]
                    );
                }
                assert_eq!(back.len(), expect.len());
            }
            println!("{what}: kernels wrote every level");
            drop(surfaces);
            if format == ImageFormat::Rgba8Unorm && desc.kind == ImageKind::D2 && !desc.layered() {
                rgba8_chain = Some((image, array));
            }
        }
    }
    let (image, array) = rgba8_chain.expect("the rgba8unorm 2D image was filled");
    let desc = *image.desc();
    let texture = TextureObject::new(
        &array,
        &TextureOptions {
            normalized_coords: true,
            ..Default::default()
        },
    )
    .unwrap();
    for l in 0..desc.mip_levels {
        let (w, h, _) = desc.level_extent(l);
        let len = (w * h * 16) as usize;
        let out = DeviceAllocation::new(&env.cu, len as u64).unwrap();
        let mut host = vec![0u8; len];
        // SAFETY: `out` holds w × h float4s and, like the texture and `host`, outlives the
        // synchronize.
        unsafe {
            k.read_texture_2d_lod(&texture, w, h, l as f32, out.ptr(), stream)
                .unwrap();
            copy_dtoh(stream, out.ptr(), &mut host).unwrap();
        }
        env.cu.synchronize_stream().unwrap();
        let expect = expected_fill(&desc, l, 5 + l);
        for (i, (got, want)) in host.chunks_exact(4).zip(&expect).enumerate() {
            let got = f32::from_le_bytes(got.try_into().unwrap());
            let want = f32::from(*want) / 255.0;
            assert!(
                (got - want).abs() < 1e-6,
                "level {l} texel {} channel {}: sampled {got}, want {want}",
                i / 4,
                i % 4
            );
        }
    }
    println!("the texture kernel sampled every level");
    // An integer texture is refused by the float kernel; so is an unnormalized one.
    let for_level =
        TextureObject::for_level(&array.level(0).unwrap(), &TextureOptions::default()).unwrap();
    // SAFETY: refused before any launch.
    let refused = unsafe { k.read_texture_2d_lod(&for_level, 1, 1, 0.0, 0, stream) };
    assert!(matches!(refused, Err(cuda::Error::InvalidValue { .. })));
}
