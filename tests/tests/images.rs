//! Images end to end over lavapipe (or a real GPU): the real daemon creates them, another
//! process imports them into its own Vulkan device, and bytes cross both ways with no copy
//! between processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use gpushare_client::v1;
use gpushare_client::{
    ClearValue, Client, CreateOptions, ImageFormat, ImageRegion, ImageSpec, Sync,
};
use gpushare_tests::{bin, run};
use tonic::Code;

fn pattern(len: u64, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(29).wrapping_add(seed) as u8)
        .collect()
}

fn pinned() -> CreateOptions {
    CreateOptions {
        pin: true,
        ..Default::default()
    }
}

/// Runs the peer: `(success, stdout lines, stderr)`.
fn peer(d: &gpushare_tests::TestDaemon, args: &[&str]) -> (bool, Vec<String>, String) {
    let mut all = vec![d.runtime_dir().to_str().unwrap()];
    all.extend_from_slice(args);
    let (status, out, err) = run(
        Command::new(bin("gpushare-peer")).args(&all),
        Duration::from_secs(60),
    );
    (
        status.success(),
        out.lines().map(str::to_owned).collect(),
        err,
    )
}

/// For every format the device lists: a layered 2D image with a mip chain, written by the
/// daemon level by level and read by another process's Vulkan import, then written there and
/// read back through the daemon.
#[tokio::test]
async fn every_listed_format_crosses_processes_both_ways() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let info = c.info().await.unwrap();
    let formats: Vec<ImageFormat> = info.devices[0]
        .image_formats
        .iter()
        .map(|&f| ImageFormat::from_code(f as u32).expect("a format this client knows"))
        .collect();
    assert!(
        formats.contains(&ImageFormat::Rgba8Unorm) && formats.contains(&ImageFormat::R32Float),
        "every Vulkan 1.2 device shares rgba8unorm and r32float: {formats:?}"
    );
    println!("{} formats: {formats:?}", formats.len());
    for format in formats {
        let spec = ImageSpec::d2(format, 13, 7).mip_levels(3).layers(2);
        let image = c.create_image(&spec, &pinned()).await.unwrap();
        let levels: Vec<Vec<u8>> = (0..3)
            .map(|l| pattern(spec.desc.level_size(l), l * 11 + format.code()))
            .collect();
        for (l, bytes) in levels.iter().enumerate() {
            image
                .write(&image.level(l as u32), bytes, &Sync::default())
                .await
                .unwrap();
        }
        for l in 0..3u32 {
            let ticket = c.export_ticket(image.id()).await.unwrap().ticket;
            let (ok, out, err) = peer(&d, &["image-read", &hex::encode(&ticket), &l.to_string()]);
            assert!(ok, "{format} level {l}: {err}");
            assert_eq!(
                hex::decode(&out[0]).unwrap(),
                levels[l as usize],
                "{format} level {l}: the other process reads what the daemon wrote"
            );
        }
        let theirs = pattern(spec.desc.level_size(1), 99);
        let ticket = c.export_ticket(image.id()).await.unwrap().ticket;
        let (ok, _, err) = peer(
            &d,
            &[
                "image-write",
                &hex::encode(&ticket),
                "1",
                &hex::encode(&theirs),
            ],
        );
        assert!(ok, "{format}: {err}");
        assert_eq!(
            image.read(&image.level(1), &Sync::default()).await.unwrap(),
            theirs,
            "{format}: the daemon reads what the other process wrote"
        );
        assert_eq!(
            image.read(&image.level(0), &Sync::default()).await.unwrap(),
            levels[0],
            "{format}: level 0 untouched"
        );
        assert!(image.release().await.unwrap());
    }
}

/// 3D and layered images, regions, host buffers, clears, and what a new image holds.
#[tokio::test]
async fn shapes_regions_host_buffers_and_clears() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect_with_session(d.runtime_dir(), "images")
        .await
        .unwrap();
    let none = Sync::default();

    // 3D, full chain: written whole through a host buffer, a box read back in a message.
    let spec = ImageSpec::d3(ImageFormat::Rg16Float, 16, 8, 4).full_mip_chain();
    assert_eq!(spec.desc.mip_levels, 5);
    let volume = c
        .create_image(&spec, &CreateOptions::default())
        .await
        .unwrap();
    let zeros = volume.read(&volume.level(0), &none).await.unwrap();
    assert!(zeros.iter().all(|&b| b == 0), "a new image reads as zeros");
    let level0 = pattern(spec.desc.level_size(0), 3);
    let host = c
        .create_host_buffer(1 << 20, &CreateOptions::default())
        .await
        .unwrap();
    host.write_at(4096, &level0).unwrap();
    volume
        .write_from_host(&volume.level(0), &host, 4096, &none)
        .await
        .unwrap();
    let b = ImageRegion {
        x: 3,
        y: 2,
        z: 1,
        width: 5,
        height: 4,
        depth: 2,
        ..volume.level(0)
    };
    let got = volume.read(&b, &none).await.unwrap();
    let texel = 4usize;
    let mut want = Vec::new();
    for z in 1..3usize {
        for y in 2..6usize {
            let at = ((z * 8 + y) * 16 + 3) * texel;
            want.extend_from_slice(&level0[at..at + 5 * texel]);
        }
    }
    assert_eq!(got, want, "a box of a 3D level");
    // The smallest level is 1x1x1.
    let last = volume.level(4);
    assert_eq!((last.width, last.height, last.depth), (1, 1, 1));
    volume.write(&last, &[1, 2, 3, 4], &none).await.unwrap();
    assert_eq!(volume.read(&last, &none).await.unwrap(), [1, 2, 3, 4]);

    // Layered 2D: one layer of one level into a host buffer; clears of a level and layer range.
    let spec = ImageSpec::d2(ImageFormat::Rgba8Unorm, 32, 16)
        .mip_levels(2)
        .layers(3);
    let layered = c
        .create_image(&spec, &CreateOptions::default())
        .await
        .unwrap();
    let all = pattern(spec.desc.level_size(0), 5);
    layered.write(&layered.level(0), &all, &none).await.unwrap();
    let layer2 = ImageRegion {
        base_layer: 2,
        layers: 1,
        ..layered.level(0)
    };
    layered
        .read_into_host(&layer2, &host, 0, &none)
        .await
        .unwrap();
    let mut out = vec![0; 32 * 16 * 4];
    host.read_at(0, &mut out).unwrap();
    assert_eq!(out, all[2 * 32 * 16 * 4..], "layer 2 of level 0");
    layered
        .clear_range(1, 1, 1, 1, ClearValue::Float([0.0, 1.0, 0.0, 1.0]), &none)
        .await
        .unwrap();
    let level1 = layered.read(&layered.level(1), &none).await.unwrap();
    let per_layer = 16 * 8 * 4;
    assert!(
        level1[..per_layer].iter().all(|&b| b == 0),
        "layer 0 untouched"
    );
    assert!(
        level1[per_layer..2 * per_layer]
            .chunks(4)
            .all(|p| p == [0, 255, 0, 255]),
        "layer 1 cleared to green"
    );
    assert!(
        level1[2 * per_layer..].iter().all(|&b| b == 0),
        "layer 2 untouched"
    );
    assert_eq!(
        layered.read(&layered.level(0), &none).await.unwrap(),
        all,
        "level 0 untouched"
    );

    // A uint format clears with integers.
    let ints = c
        .create_image(
            &ImageSpec::d2(ImageFormat::R32Uint, 4, 4),
            &CreateOptions::default(),
        )
        .await
        .unwrap();
    ints.clear(ClearValue::Uint([0xdead_beef, 0, 0, 0]), &none)
        .await
        .unwrap();
    let words = ints.read(&ints.level(0), &none).await.unwrap();
    assert!(words.chunks(4).all(|w| w == 0xdead_beefu32.to_le_bytes()));

    // Describe and list show the shape; images count as buffers in the quota usage.
    let r = c.describe(layered.id()).await.unwrap();
    assert_eq!(r.kind, v1::ResourceKind::Image as i32);
    let Some(v1::resource::Details::Image(i)) = r.details else {
        panic!("image details: {r:?}")
    };
    assert_eq!(
        (i.width, i.height, i.mip_levels, i.array_layers),
        (32, 16, 2, 3)
    );
    assert_eq!(i.format, v1::ImageFormat::Rgba8Unorm as i32);
    assert!(i.allocation_size >= spec.desc.total_size());
    let exported = layered.export().await.unwrap();
    let desc = exported.image_import_desc().unwrap();
    assert_eq!(desc.desc, spec.desc);
    assert_eq!(desc.allocation_size, i.allocation_size);
    let Some(v1::exported_fd::Details::Image(m)) = &exported.info.details else {
        panic!()
    };
    assert!(m.dedicated);
    assert_eq!(
        (m.tiling, m.layout),
        (0, 1),
        "optimal tiling, general layout"
    );
    assert_eq!(m.vk_format, 37, "VK_FORMAT_R8G8B8A8_UNORM");
}

/// Every malformed or unsupported image request gets its status and a message that says why.
#[tokio::test]
async fn bad_image_requests_get_their_precise_status() {
    let d = gpushare_tests::daemon_or_skip!("[limits]\nmax_buffer_size = 268435456\n");
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let mut g = c.grpc();
    let create = |f: &dyn Fn(&mut v1::CreateImageRequest)| {
        let mut r = v1::CreateImageRequest {
            format: v1::ImageFormat::Rgba8Unorm as i32,
            kind: v1::ImageKind::ImageKind2d as i32,
            width: 16,
            height: 16,
            pin: true,
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let cases: Vec<(&str, v1::CreateImageRequest, Code, &str)> = vec![
        (
            "no format",
            create(&|r| r.format = 0),
            Code::InvalidArgument,
            "format",
        ),
        (
            "unknown format",
            create(&|r| r.format = 77),
            Code::InvalidArgument,
            "format",
        ),
        (
            "no kind",
            create(&|r| r.kind = 0),
            Code::InvalidArgument,
            "kind",
        ),
        (
            "zero width",
            create(&|r| r.width = 0),
            Code::InvalidArgument,
            "width",
        ),
        (
            "2D with depth",
            create(&|r| r.depth = 4),
            Code::InvalidArgument,
            "depth",
        ),
        (
            "3D with layers",
            create(&|r| {
                r.kind = v1::ImageKind::ImageKind3d as i32;
                r.array_layers = 2
            }),
            Code::InvalidArgument,
            "layers",
        ),
        (
            "too many levels",
            create(&|r| r.mip_levels = 6),
            Code::InvalidArgument,
            "mip levels",
        ),
        (
            "unknown usage",
            create(&|r| r.usage = 0x20),
            Code::InvalidArgument,
            "usage",
        ),
        (
            "wider than the device allows",
            create(&|r| {
                r.width = 1 << 20;
                r.height = 1
            }),
            Code::FailedPrecondition,
            "width",
        ),
        (
            "larger than max_buffer_size",
            create(&|r| {
                r.width = 8192;
                r.height = 8192;
                r.format = v1::ImageFormat::Rgba32Float as i32
            }),
            Code::InvalidArgument,
            "image size",
        ),
        (
            "no device",
            create(&|r| r.device = 9),
            Code::InvalidArgument,
            "device 9",
        ),
    ];
    for (what, request, code, needle) in cases {
        let e = g.create_image(c.request(request)).await.unwrap_err();
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(
            e.message().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            e.message()
        );
    }

    let image = c
        .create_image(
            &ImageSpec::d2(ImageFormat::Rgba8Unorm, 16, 8).mip_levels(2),
            &pinned(),
        )
        .await
        .unwrap();
    let id = image.id().to_owned();
    let write = |region: v1::ImageRegion, len: usize| v1::WriteImageRequest {
        image_id: id.clone(),
        region: Some(region),
        data: vec![0; len],
        ..Default::default()
    };
    let level1 = v1::ImageRegion {
        level: 1,
        ..Default::default()
    };
    for (what, request, needle) in [
        (
            "level beyond the chain",
            write(
                v1::ImageRegion {
                    level: 2,
                    ..Default::default()
                },
                4,
            ),
            "level 2",
        ),
        (
            "box beyond the level",
            write(
                v1::ImageRegion {
                    level: 1,
                    x: 6,
                    width: 4,
                    ..Default::default()
                },
                64,
            ),
            "width",
        ),
        (
            "short data",
            write(level1, 8 * 4 * 4 - 1),
            "takes 128 bytes",
        ),
        ("long data", write(level1, 8 * 4 * 4 + 4), "takes 128 bytes"),
    ] {
        let e = g.write_image(c.request(request)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            e.message()
        );
    }
    let e = g
        .clear_image(c.request(v1::ClearImageRequest {
            image_id: id.clone(),
            uint_color: vec![1],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("float_color"), "{e:?}");
    let e = g
        .clear_image(c.request(v1::ClearImageRequest {
            image_id: id.clone(),
            base_level: 1,
            levels: 2,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A buffer id is not an image; an image id is not a buffer.
    let buffer = c.create_buffer(64, &pinned()).await.unwrap();
    let e = g
        .read_image(c.request(v1::ReadImageRequest {
            image_id: buffer.id().into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "malformed image id: {e:?}");
    let e = g
        .read(c.request(v1::ReadRequest {
            buffer_id: id.clone(),
            length: 4,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "malformed buffer id: {e:?}"
    );
    let missing = format!("img-{}", "0".repeat(id.len() - 4));
    let e = g
        .read_image(c.request(v1::ReadImageRequest {
            image_id: missing,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Reads above the message limit must go through a host buffer.
    let limit = c.info().await.unwrap().limits.unwrap().max_transfer_size;
    let big = c
        .create_image(
            &ImageSpec::d2(ImageFormat::Rgba32Float, 2048, 2048),
            &pinned(),
        )
        .await
        .unwrap();
    assert!(big.desc().level_size(0) > limit, "test premise");
    let e = big.read(&big.level(0), &Sync::default()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert!(c.release(big.id()).await.unwrap());
    assert!(c.release(&id).await.unwrap());
}

/// Images count against the buffer quotas: number and allocation bytes.
#[tokio::test]
async fn images_count_against_the_buffer_quotas() {
    let d = gpushare_tests::daemon_or_skip!("[quotas]\nbuffers_per_uid = 2\n");
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let spec = ImageSpec::d2(ImageFormat::R8Unorm, 64, 64);
    c.create_buffer(4096, &pinned()).await.unwrap();
    let image = c.create_image(&spec, &pinned()).await.unwrap();
    let e = c.create_image(&spec, &pinned()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("buffers per uid"), "{e}");
    assert!(image.release().await.unwrap());
    c.create_image(&spec, &pinned()).await.unwrap();
}
