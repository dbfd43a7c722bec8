//! GPU suite: images across processes and APIs, handed over only through a shared timeline
//! semaphore on each process's own GPU stream or queue.
//!
//! - A CUDA kernel in another process writes every mip level of every image through surface
//!   objects and signals in stream order; this process imports the images into its own Vulkan
//!   device and reads every level back in submissions that wait on the semaphore on its queue.
//!   Every format but the sRGB ones (sampled images, never storage), 2D with a full mip chain,
//!   layered 2D with a partial chain, and 3D.
//! - The other way round: this process writes every level with Vulkan and signals on its queue;
//!   the other process waits in stream order and samples every level with a CUDA texture object
//!   (`tex2DLod`). Every float and unorm format (integer formats are read as integers, which the
//!   sampling kernel does not), 2D with a full mip chain; sRGB color decoded to linear light.
//!
//! - GenerateMips on the CUDA executor (the Vulkan blit chain in stream order) gives the same
//!   bytes as on the Vulkan executor, and the box averages (sRGB in linear light, the nearest
//!   texel for integers) the blits must give.
//!
//! Needs CUDA and a device that exports timeline semaphores: elsewhere it prints `SKIP: <reason>`,
//! and fails instead under `GPUSHARE_REQUIRE_GPU=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use gpushare_client::{import, v1, Client, CreateOptions, ImageFormat, ImageRegion, ImageSpec};
use gpushare_interop::cuda::kernels::expected_texel_bytes;
use gpushare_interop::image::{
    f16_to_f32, f32_to_f16, srgb_to_linear, ChannelKind, ImageDesc, ImageKind,
};
use gpushare_interop::vulkan::{Instance, SyncPoints, Transfer};
use gpushare_tests::{bin, gpu_required, TestDaemon};

macro_rules! skip {
    ($($why:tt)*) => {{
        let why = format!($($why)*);
        if gpu_required() {
            panic!("GPUSHARE_REQUIRE_GPU=1, but {why}");
        }
        println!("SKIP: {why}");
        return;
    }};
}

/// A daemon on a GPU that exports timeline semaphores, with CUDA present, or why not.
async fn gpu_daemon() -> Result<(TestDaemon, Client), String> {
    if !gpushare_interop::cuda::is_present() {
        return Err("no CUDA driver (libcuda) on this machine".into());
    }
    let Some(d) = TestDaemon::start() else {
        return Err("the daemon found no Vulkan device".into());
    };
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let info = c.info().await.unwrap();
    let caps = info.devices[0].capabilities.clone().unwrap_or_default();
    if !caps
        .timeline_semaphore_export
        .contains(&(v1::HandleType::OpaqueFd as i32))
    {
        return Err(format!(
            "the daemon's device ({}) cannot export timeline semaphores",
            info.devices[0].name
        ));
    }
    Ok((d, c))
}

fn pinned() -> CreateOptions {
    CreateOptions {
        pin: true,
        ..Default::default()
    }
}

/// What the fill kernel wrote into level `level` (every layer), tightly packed.
fn filled_level(desc: &ImageDesc, level: u32, seed: u32) -> Vec<u8> {
    let (w, h, d) = desc.level_extent(level);
    let texel = desc.format.texel_size();
    let mut out = Vec::with_capacity(desc.level_size(level) as usize);
    for layer in 0..desc.array_layers {
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    let zz = if desc.kind == ImageKind::D3 { z } else { layer };
                    out.extend(expected_texel_bytes(seed + level, x, y, zz, texel));
                }
            }
        }
    }
    out
}

async fn tickets(c: &Client, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(hex::encode(c.export_ticket(id).await.unwrap().ticket));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_surfaces_write_every_level_and_vulkan_reads_on_its_queue() {
    let (d, c) = match gpu_daemon().await {
        Ok(v) => v,
        Err(why) => skip!("{why}"),
    };
    let formats = c.info().await.unwrap().devices[0].image_formats.clone();
    assert_eq!(
        formats.len(),
        16,
        "the H100 shares every format: {formats:?}"
    );
    let mut specs = Vec::new();
    // CUDA surfaces write storage images: sRGB formats are sampled only.
    for &f in &formats {
        let f = ImageFormat::from_code(f as u32).unwrap();
        if f.info().srgb {
            continue;
        }
        specs.push(ImageSpec::d2(f, 64, 32).full_mip_chain());
        specs.push(ImageSpec::d2(f, 32, 16).mip_levels(4).layers(3));
        specs.push(ImageSpec::d3(f, 16, 8, 4).mip_levels(3));
    }
    let mut images = Vec::new();
    for spec in &specs {
        images.push(c.create_image(spec, &pinned()).await.unwrap());
    }
    let sem = c.create_semaphore(0, &pinned()).await.unwrap();
    let ids: Vec<String> = images.iter().map(|i| i.id().to_owned()).collect();
    let image_tickets = tickets(&c, &ids).await;
    let sem_ticket = hex::encode(c.export_ticket(sem.id()).await.unwrap().ticket);

    // This process: Vulkan imports of the images and the semaphore.
    let instance = Instance::new("gpu_images").unwrap();
    let sem_fd = c.export(sem.id()).await.unwrap();
    let device = import::vulkan_device_for(&instance, &sem_fd).unwrap();
    let vk_sem = import::import_semaphore_vulkan(&device, sem_fd).unwrap();
    let mut imported = Vec::new();
    for image in &images {
        imported.push(import::import_image_vulkan(&device, image.export().await.unwrap()).unwrap());
    }

    // The other process: CUDA fills, then a stream-ordered signal to 1.
    let seed = 17;
    let mut args = vec![
        d.runtime_dir().to_str().unwrap().to_owned(),
        "cuda-image-fill".into(),
        sem_ticket,
        "1".into(),
        seed.to_string(),
    ];
    args.extend(image_tickets);
    let producer = Command::new(bin("gpushare-peer"))
        .args(&args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Every read waits on the semaphore on this process's queue: none runs before the kernels.
    let mut transfer = Transfer::new(&device).unwrap();
    let sync = SyncPoints {
        wait: vec![(&vk_sem, 1)],
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let mut mismatches = Vec::new();
    for (spec, image) in specs.iter().zip(&imported) {
        for level in 0..spec.desc.mip_levels {
            let region = ImageRegion::level(&spec.desc, level);
            let got = transfer.download_image(image, &region, &sync).unwrap();
            if got != filled_level(&spec.desc, level, seed) {
                mismatches.push(format!(
                    "{} {:?} {}x{}x{} layers {} level {level}",
                    spec.desc.format,
                    spec.desc.kind,
                    spec.desc.width,
                    spec.desc.height,
                    spec.desc.depth,
                    spec.desc.array_layers
                ));
            }
        }
    }
    let out = producer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let levels: u32 = specs.iter().map(|s| s.desc.mip_levels).sum();
    println!(
        "{} images, {levels} levels written by CUDA surfaces, read by Vulkan: {} mismatches",
        specs.len(),
        mismatches.len()
    );
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

/// The float a texture returns for channel `c` of the texel at `bytes`: sRGB color channels
/// decoded to linear light.
fn channel_value(format: ImageFormat, bytes: &[u8], c: usize) -> f32 {
    let info = format.info();
    match (info.kind, info.bits) {
        (ChannelKind::UnsignedNormalized, 8) if info.srgb && c < 3 => srgb_to_linear(bytes[c]),
        (ChannelKind::UnsignedNormalized, 8) => f32::from(bytes[c]) / 255.0,
        (ChannelKind::Float, 16) => {
            f16_to_f32(u16::from_le_bytes([bytes[2 * c], bytes[2 * c + 1]]))
        }
        (ChannelKind::Float, 32) => f32::from_le_bytes(bytes[4 * c..4 * c + 4].try_into().unwrap()),
        other => panic!("not sampled as floats: {other:?}"),
    }
}

/// Finite floats from a byte pattern (for float formats: no NaN or infinity).
fn level_bytes(format: ImageFormat, texels: u64, seed: u32) -> Vec<u8> {
    let info = format.info();
    let mut out = Vec::new();
    for t in 0..texels {
        for c in 0..info.channels {
            let v = ((t as u32).wrapping_mul(7).wrapping_add(c * 3 + seed)) % 251;
            match (info.kind, info.bits) {
                (ChannelKind::UnsignedNormalized, _) => out.push(v as u8),
                (_, 16) => out.extend(f32_to_f16(v as f32 / 8.0).to_le_bytes()),
                _ => out.extend((v as f32 / 8.0).to_le_bytes()),
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vulkan_writes_every_level_and_cuda_textures_sample_them() {
    let (d, c) = match gpu_daemon().await {
        Ok(v) => v,
        Err(why) => skip!("{why}"),
    };
    let formats: Vec<ImageFormat> = c.info().await.unwrap().devices[0]
        .image_formats
        .iter()
        .map(|&f| ImageFormat::from_code(f as u32).unwrap())
        .filter(|f| f.info().kind != ChannelKind::Unsigned)
        .collect();
    assert_eq!(formats.len(), 10, "{formats:?}");
    let specs: Vec<ImageSpec> = formats
        .iter()
        .map(|&f| ImageSpec::d2(f, 40, 24).full_mip_chain())
        .collect();
    let mut images = Vec::new();
    for spec in &specs {
        images.push(c.create_image(spec, &pinned()).await.unwrap());
    }
    let sem = c.create_semaphore(0, &pinned()).await.unwrap();
    let instance = Instance::new("gpu_images").unwrap();
    let sem_fd = c.export(sem.id()).await.unwrap();
    let device = import::vulkan_device_for(&instance, &sem_fd).unwrap();
    let vk_sem = import::import_semaphore_vulkan(&device, sem_fd).unwrap();
    let mut transfer = Transfer::new(&device).unwrap();

    // The consumer starts first and waits on its stream for value 1.
    let ids: Vec<String> = images.iter().map(|i| i.id().to_owned()).collect();
    let mut args = vec![
        d.runtime_dir().to_str().unwrap().to_owned(),
        "cuda-image-sample".into(),
        hex::encode(c.export_ticket(sem.id()).await.unwrap().ticket),
        "1".into(),
    ];
    args.extend(tickets(&c, &ids).await);
    let consumer = Command::new(bin("gpushare-peer"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Every level written by this process's Vulkan queue; the last write signals 1.
    let mut written = Vec::new();
    let count: usize = specs.iter().map(|s| s.desc.mip_levels as usize).sum();
    let mut n = 0;
    for (spec, image) in specs.iter().zip(&images) {
        let vk_image = import::import_image_vulkan(&device, image.export().await.unwrap()).unwrap();
        for level in 0..spec.desc.mip_levels {
            let (w, h, _) = spec.desc.level_extent(level);
            let bytes = level_bytes(spec.desc.format, u64::from(w * h), level + 5);
            n += 1;
            let sync = SyncPoints {
                signal: if n == count {
                    vec![(&vk_sem, 1)]
                } else {
                    Vec::new()
                },
                timeout: Some(Duration::from_secs(60)),
                ..Default::default()
            };
            transfer
                .upload_image(
                    &vk_image,
                    &ImageRegion::level(&spec.desc, level),
                    &bytes,
                    &sync,
                )
                .unwrap();
            written.push(bytes);
        }
    }
    let out = consumer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), count, "one line per level");
    let mut worst = 0f32;
    let mut line = 0;
    for spec in &specs {
        let info = spec.desc.format.info();
        let texel = info.texel_size() as usize;
        for level in 0..spec.desc.mip_levels {
            let floats = hex::decode(lines[line]).unwrap();
            let bytes = &written[line];
            line += 1;
            for (t, sample) in floats.chunks(16).enumerate() {
                for ch in 0..info.channels as usize {
                    let got = f32::from_le_bytes(sample[4 * ch..4 * ch + 4].try_into().unwrap());
                    let want =
                        channel_value(spec.desc.format, &bytes[t * texel..(t + 1) * texel], ch);
                    let err = (got - want).abs();
                    worst = worst.max(err);
                    // The texture unit decodes sRGB in hardware, to 8-bit precision: the H100
                    // returned 126/256 for 0.49102 (2026-12-07). Within one 8-bit step, then;
                    // no decode at all would be off by up to 0.2.
                    let tolerance = if info.srgb && ch < 3 {
                        1.0 / 256.0
                    } else {
                        1e-6
                    };
                    assert!(
                        err <= tolerance,
                        "{} level {level} texel {t} channel {ch}: sampled {got}, wrote {want}",
                        spec.desc.format
                    );
                }
            }
        }
    }
    println!("{} formats, {count} levels written by Vulkan, sampled by CUDA textures: worst error {worst}", specs.len());
}

/// Runs the same GenerateMips calls on daemon `d` and returns every level read back: a 2D
/// rgba8unorm chain made after its wait point (signaled from the host once the call is made),
/// signaling its signal point; an rgba8srgb checkerboard; r32uint; a 3D rg16float chain; a
/// layered range. Level 0s are written through the executor (CUDA arrays on the CUDA executor):
/// the blits must see those writes, and the reads must see the blits'.
async fn mips_sequence(d: &TestDaemon) -> (String, Vec<Vec<u8>>) {
    use gpushare_client::Sync;
    let c = Client::connect_with_session(d.runtime_dir(), "gpu mips")
        .await
        .unwrap();
    let executor = c.info().await.unwrap().devices[0].executor.clone();
    let none = Sync::none();
    let opts = CreateOptions::default();
    let sem = c.create_semaphore(0, &opts).await.unwrap();
    let mut out = Vec::new();

    let spec = ImageSpec::d2(ImageFormat::Rgba8Unorm, 64, 32).full_mip_chain();
    let chain = c.create_image(&spec, &opts).await.unwrap();
    let generate = tokio::spawn({
        let (chain, sid) = (chain.clone(), sem.id().to_owned());
        async move {
            chain
                .generate_mips(&Sync::none().wait(sid.clone(), 1).signal(sid, 2))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !generate.is_finished(),
        "{executor}: ran before its wait point"
    );
    let level0: Vec<u8> = (0..spec.desc.level_size(0))
        .map(|i| (i * 131 % 251) as u8)
        .collect();
    chain.write(&chain.level(0), &level0, &none).await.unwrap();
    sem.signal(1).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), generate)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(sem.value().await.unwrap(), 2, "{executor}: signal point");
    for level in 0..spec.desc.mip_levels {
        out.push(chain.read(&chain.level(level), &none).await.unwrap());
    }

    let checker: Vec<u8> = (0..256)
        .flat_map(|i| {
            let v = if (i % 16 + i / 16) % 2 == 0 { 0 } else { 255 };
            [v, v, v, 255]
        })
        .collect();
    let srgb = c
        .create_image(
            &ImageSpec::d2(ImageFormat::Rgba8Srgb, 16, 16).mip_levels(3),
            &opts,
        )
        .await
        .unwrap();
    srgb.write(&srgb.level(0), &checker, &none).await.unwrap();
    srgb.generate_mips(&none).await.unwrap();
    out.push(srgb.read(&srgb.level(1), &none).await.unwrap());

    let ints = c
        .create_image(
            &ImageSpec::d2(ImageFormat::R32Uint, 8, 8).mip_levels(2),
            &opts,
        )
        .await
        .unwrap();
    let words: Vec<u8> = (0..64u32).flat_map(|i| (1000 + i).to_le_bytes()).collect();
    ints.write(&ints.level(0), &words, &none).await.unwrap();
    ints.generate_mips(&none).await.unwrap();
    out.push(ints.read(&ints.level(1), &none).await.unwrap());

    let volume = c
        .create_image(
            &ImageSpec::d3(ImageFormat::Rg16Float, 8, 8, 4).mip_levels(3),
            &opts,
        )
        .await
        .unwrap();
    let halves: Vec<u8> = (0..8 * 8 * 4 * 2)
        .flat_map(|i| f32_to_f16(((i * 37) % 61) as f32 / 16.0).to_le_bytes())
        .collect();
    volume
        .write(&volume.level(0), &halves, &none)
        .await
        .unwrap();
    volume.generate_mips(&none).await.unwrap();
    for level in 1..3 {
        out.push(volume.read(&volume.level(level), &none).await.unwrap());
    }

    let layered = c
        .create_image(
            &ImageSpec::d2(ImageFormat::Rgba16Float, 16, 8)
                .mip_levels(4)
                .layers(3),
            &opts,
        )
        .await
        .unwrap();
    let texels: Vec<u8> = (0..16 * 8 * 4 * 3)
        .flat_map(|i| f32_to_f16((i % 97) as f32 / 97.0).to_le_bytes())
        .collect();
    layered
        .write(&layered.level(0), &texels, &none)
        .await
        .unwrap();
    layered
        .generate_mips_range(0, 2, 1, 2, &none)
        .await
        .unwrap();
    for level in 1..4 {
        out.push(layered.read(&layered.level(level), &none).await.unwrap());
    }
    (executor, out)
}

/// GenerateMips on the CUDA executor (Vulkan blits in stream order) agrees byte for byte with
/// the Vulkan executor, and with the box averages, the sRGB grey and the nearest integer texels
/// the blits must give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_executor_mips_agree_with_the_vulkan_executor_and_box_averages() {
    use gpushare_tests::mips::{assert_unorm_near, box_down, unorm};
    let (cuda, _) = match gpu_daemon().await {
        Ok(v) => v,
        Err(why) => skip!("{why}"),
    };
    let vulkan = TestDaemon::start_with("executor = \"vulkan\"\n").unwrap();
    let (e1, on_cuda) = mips_sequence(&cuda).await;
    let (e2, on_vulkan) = mips_sequence(&vulkan).await;
    assert_eq!((e1.as_str(), e2.as_str()), ("cuda", "vulkan"));
    assert_eq!(on_cuda.len(), on_vulkan.len());
    for (i, (a, b)) in on_cuda.iter().zip(&on_vulkan).enumerate() {
        assert!(a == b, "level read {i}: the executors' bytes differ");
    }

    // The rgba8unorm chain: each level the box average of the one before.
    let spec = ImageSpec::d2(ImageFormat::Rgba8Unorm, 64, 32).full_mip_chain();
    for level in 1..spec.desc.mip_levels {
        let (w, h, _) = spec.desc.level_extent(level - 1);
        let want = box_down(
            &unorm(&on_cuda[level as usize - 1]),
            (w as usize, h as usize, 1),
            1,
            4,
        );
        assert_unorm_near(&on_cuda[level as usize], &want, &format!("level {level}"));
    }
    let mut rest = on_cuda[spec.desc.mip_levels as usize..].iter();
    // sRGB checkerboard: 188 in linear light.
    for px in rest.next().unwrap().chunks(4) {
        assert!(
            px[..3].iter().all(|&v| v.abs_diff(188) <= 1) && px[3] == 255,
            "rgba8srgb level 1: {px:?}"
        );
    }
    // r32uint: each texel one of its block's.
    for (i, w) in rest.next().unwrap().chunks(4).enumerate() {
        let v = u32::from_le_bytes(w.try_into().unwrap());
        let (x, y) = (i as u32 % 4, i as u32 / 4);
        let block: Vec<u32> = [(0, 0), (1, 0), (0, 1), (1, 1)]
            .iter()
            .map(|(dx, dy)| 1000 + 2 * x + dx + 8 * (2 * y + dy))
            .collect();
        assert!(
            block.contains(&v),
            "r32uint ({x}, {y}) = {v}, block {block:?}"
        );
    }
    println!(
        "{} mip levels read, identical on both executors",
        on_cuda.len()
    );
}
