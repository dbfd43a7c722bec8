//! GenerateMips end to end over lavapipe (or a real GPU): the real daemon filters each level from
//! the one before with its executor's blit chain. Levels are checked against box averages
//! computed here (linear light for sRGB), integer formats against their source blocks, and the
//! call against its ranges, its errors, and its wait and signal points.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use gpushare_client::v1;
use gpushare_client::{Client, CreateOptions, ImageFormat, ImageSpec, Sync};
use gpushare_interop::image::{f16_to_f32, f32_to_f16, linear_to_srgb, srgb_to_linear};
use gpushare_tests::mips::{assert_unorm_near, box_down, unorm};
use tonic::Code;

fn pinned() -> CreateOptions {
    CreateOptions {
        pin: true,
        ..Default::default()
    }
}

fn pattern(len: u64, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(29).wrapping_add(seed) as u8)
        .collect()
}

/// A 2D rgba8unorm image with a full chain: every level is the box average of the one before,
/// level 0 is untouched, and a single call fills the whole chain down to 1x1.
#[tokio::test]
async fn every_level_is_the_box_average_of_the_one_before() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let none = Sync::none();
    let spec = ImageSpec::d2(ImageFormat::Rgba8Unorm, 32, 16).full_mip_chain();
    assert_eq!(spec.desc.mip_levels, 6);
    let image = c.create_image(&spec, &pinned()).await.unwrap();
    let level0 = pattern(spec.desc.level_size(0), 7);
    image.write(&image.level(0), &level0, &none).await.unwrap();
    image.generate_mips(&none).await.unwrap();
    let mut previous = level0.clone();
    for level in 1..6 {
        let got = image.read(&image.level(level), &none).await.unwrap();
        let (w, h, _) = spec.desc.level_extent(level - 1);
        let want = box_down(&unorm(&previous), (w as usize, h as usize, 1), 1, 4);
        assert_unorm_near(&got, &want, &format!("level {level}"));
        assert!(got.iter().any(|&b| b != 0), "level {level} was generated");
        previous = got;
    }
    assert_eq!(
        image.read(&image.level(0), &none).await.unwrap(),
        level0,
        "level 0 untouched"
    );
    assert!(image.release().await.unwrap());
}

/// rgba8srgb is averaged in linear light: a black and white checkerboard gives 188 (the sRGB
/// encoding of 0.5), where rgba8unorm gives 128; alpha is not sRGB-encoded.
#[tokio::test]
async fn srgb_levels_are_averaged_in_linear_light() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let none = Sync::none();
    let checker: Vec<u8> = (0..64)
        .flat_map(|i| {
            let v = if (i % 8 + i / 8) % 2 == 0 { 0 } else { 255 };
            [v, v, v, 255]
        })
        .collect();
    let mid = linear_to_srgb((srgb_to_linear(0) + srgb_to_linear(255)) / 2.0);
    assert_eq!(mid, 188);
    for (format, grey) in [
        (ImageFormat::Rgba8Srgb, mid),
        (ImageFormat::Rgba8Unorm, 128),
    ] {
        let spec = ImageSpec::d2(format, 8, 8).mip_levels(3);
        let image = c.create_image(&spec, &pinned()).await.unwrap();
        image.write(&image.level(0), &checker, &none).await.unwrap();
        image.generate_mips(&none).await.unwrap();
        for level in 1..3 {
            let got = image.read(&image.level(level), &none).await.unwrap();
            for px in got.chunks(4) {
                assert!(
                    px[..3].iter().all(|&v| v.abs_diff(grey) <= 1) && px[3] == 255,
                    "{format} level {level}: {px:?}, expected {grey} and opaque"
                );
            }
        }
        assert!(image.release().await.unwrap());
    }
}

/// A layered 2D image: only the named levels and layers are written. A 3D image: levels shrink
/// in depth too, each texel the 2x2x2 average.
#[tokio::test]
async fn layered_ranges_and_3d_images() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let none = Sync::none();

    // 3 layers, 4 levels: levels 2..=3 from level 1, in layers 1..=2 only.
    let spec = ImageSpec::d2(ImageFormat::Rgba8Unorm, 16, 8)
        .mip_levels(4)
        .layers(3);
    let layered = c.create_image(&spec, &pinned()).await.unwrap();
    let level1 = pattern(spec.desc.level_size(1), 3);
    layered
        .write(&layered.level(1), &level1, &none)
        .await
        .unwrap();
    layered
        .generate_mips_range(1, 0, 1, 0, &none)
        .await
        .unwrap();
    let per_layer = |level| spec.desc.level_layer_size(level) as usize;
    let got2 = layered.read(&layered.level(2), &none).await.unwrap();
    assert!(
        got2[..per_layer(2)].iter().all(|&b| b == 0),
        "layer 0 untouched"
    );
    let want2 = box_down(&unorm(&level1[per_layer(1)..]), (8, 4, 1), 2, 4);
    assert_unorm_near(&got2[per_layer(2)..], &want2, "level 2, layers 1-2");
    let got3 = layered.read(&layered.level(3), &none).await.unwrap();
    let want3 = box_down(&unorm(&got2[per_layer(2)..]), (4, 2, 1), 2, 4);
    assert_unorm_near(&got3[per_layer(3)..], &want3, "level 3 from level 2");
    assert!(
        layered
            .read(&layered.level(0), &none)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0),
        "level 0, below the base level, untouched"
    );

    // 3D rg16float 8x8x4: level 1 is 4x4x2, level 2 is 2x2x1.
    let spec = ImageSpec::d3(ImageFormat::Rg16Float, 8, 8, 4).mip_levels(3);
    let volume = c.create_image(&spec, &pinned()).await.unwrap();
    let values: Vec<f32> = (0..8 * 8 * 4 * 2)
        .map(|i| ((i * 37) % 61) as f32 / 16.0)
        .collect();
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|&v| f32_to_f16(v).to_le_bytes())
        .collect();
    volume.write(&volume.level(0), &bytes, &none).await.unwrap();
    volume.generate_mips(&none).await.unwrap();
    let halves = |b: Vec<u8>| -> Vec<f32> {
        b.chunks(2)
            .map(|h| f16_to_f32(u16::from_le_bytes([h[0], h[1]])))
            .collect()
    };
    let level = volume.level(1);
    assert_eq!((level.width, level.height, level.depth), (4, 4, 2));
    let got1 = halves(volume.read(&level, &none).await.unwrap());
    let want1 = box_down(&values, (8, 8, 4), 1, 2);
    for (i, (g, w)) in got1.iter().zip(&want1).enumerate() {
        assert!((g - w).abs() <= 4e-3, "3D level 1 value {i}: {g} vs {w}");
    }
    let got2 = halves(volume.read(&volume.level(2), &none).await.unwrap());
    let want2 = box_down(&got1, (4, 4, 2), 1, 2);
    assert_eq!(got2.len(), 2 * 2 * 2, "2x2x1, two channels");
    for (g, w) in got2.iter().zip(&want2) {
        assert!((g - w).abs() <= 4e-3, "3D level 2: {got2:?} vs {want2:?}");
    }
}

/// Integer formats get the nearest filter: each texel is one of its 2x2 block's, never their
/// mean.
#[tokio::test]
async fn integer_levels_take_a_texel_of_their_block() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let none = Sync::none();
    let spec = ImageSpec::d2(ImageFormat::R32Uint, 8, 8).mip_levels(2);
    let image = c.create_image(&spec, &pinned()).await.unwrap();
    // Texel (x, y) holds 1000 + x + 8y: no block's mean is one of its texels.
    let texel = |x: usize, y: usize| 1000 + (x + 8 * y) as u32;
    let bytes: Vec<u8> = (0..64)
        .flat_map(|i| texel(i % 8, i / 8).to_le_bytes())
        .collect();
    image.write(&image.level(0), &bytes, &none).await.unwrap();
    image.generate_mips(&none).await.unwrap();
    let got = image.read(&image.level(1), &none).await.unwrap();
    for (i, word) in got.chunks(4).enumerate() {
        let v = u32::from_le_bytes(word.try_into().unwrap());
        let (x, y) = (i % 4, i / 4);
        let block = [
            texel(2 * x, 2 * y),
            texel(2 * x + 1, 2 * y),
            texel(2 * x, 2 * y + 1),
            texel(2 * x + 1, 2 * y + 1),
        ];
        assert!(
            block.contains(&v),
            "texel ({x}, {y}) = {v}, block {block:?}"
        );
    }
}

/// The call runs after its wait point is reached (a level 0 written after the call was made is
/// the one filtered) and signals its signal point once done; a wait point never reached ends
/// it with DEADLINE_EXCEEDED and nothing generated.
#[tokio::test]
async fn mips_wait_for_their_wait_points_and_signal_after() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect_with_session(d.runtime_dir(), "mips")
        .await
        .unwrap();
    let none = Sync::none();
    let s = c
        .create_semaphore(0, &CreateOptions::default())
        .await
        .unwrap();
    let spec = ImageSpec::d2(ImageFormat::Rgba8Unorm, 16, 16).mip_levels(2);
    let image = c
        .create_image(&spec, &CreateOptions::default())
        .await
        .unwrap();
    let generate = tokio::spawn({
        let (image, sid) = (image.clone(), s.id().to_owned());
        async move {
            image
                .generate_mips(&Sync::none().wait(sid.clone(), 1).signal(sid, 2))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!generate.is_finished(), "ran before its wait point");
    let level0 = pattern(spec.desc.level_size(0), 11);
    image.write(&image.level(0), &level0, &none).await.unwrap();
    assert_eq!(s.value().await.unwrap(), 0);
    s.signal(1).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), generate)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(s.value().await.unwrap(), 2, "the signal point was signaled");
    let want = box_down(&unorm(&level0), (16, 16, 1), 1, 4);
    let got = image.read(&image.level(1), &none).await.unwrap();
    assert_unorm_near(
        &got,
        &want,
        "level 1 of the level 0 written before the wait point",
    );

    // Never reached: DEADLINE_EXCEEDED, and level 1 keeps what it had.
    image
        .write(&image.level(0), &vec![0; level0.len()], &none)
        .await
        .unwrap();
    let e = image
        .generate_mips(
            &Sync::none()
                .wait(s.id(), 100)
                .timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::DeadlineExceeded), "{e}");
    assert_eq!(image.read(&image.level(1), &none).await.unwrap(), got);
    // A signal point that does not increase: refused before anything runs.
    let e = image
        .generate_mips(&Sync::none().signal(s.id(), 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert_eq!(image.read(&image.level(1), &none).await.unwrap(), got);
}

/// Single-level images and ranges outside the image are INVALID_ARGUMENT, naming why; ids as
/// for every image call.
#[tokio::test]
async fn bad_mip_requests_get_their_precise_status() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect(d.runtime_dir()).await.unwrap();
    let mut g = c.grpc();
    let single = c
        .create_image(&ImageSpec::d2(ImageFormat::Rgba8Unorm, 8, 8), &pinned())
        .await
        .unwrap();
    let chain = c
        .create_image(
            &ImageSpec::d2(ImageFormat::Rgba8Unorm, 8, 8)
                .mip_levels(3)
                .layers(2),
            &pinned(),
        )
        .await
        .unwrap();
    let req = |id: &str, base_level, levels, base_layer, layers| v1::GenerateMipsRequest {
        image_id: id.to_owned(),
        base_level,
        levels,
        base_layer,
        layers,
        sync: None,
    };
    let buffer = c.create_buffer(64, &pinned()).await.unwrap();
    let missing = format!("img-{}", "0".repeat(chain.id().len() - 4));
    for (what, request, code, needle) in [
        (
            "a single-level image",
            req(single.id(), 0, 0, 0, 0),
            Code::InvalidArgument,
            "one mip level",
        ),
        (
            "the last level as the base",
            req(chain.id(), 2, 0, 0, 0),
            Code::InvalidArgument,
            "no level to generate",
        ),
        (
            "levels past the chain",
            req(chain.id(), 0, 3, 0, 0),
            Code::InvalidArgument,
            "past the image's last level 2",
        ),
        (
            "layers past the image",
            req(chain.id(), 0, 0, 1, 2),
            Code::InvalidArgument,
            "layers 1..3",
        ),
        (
            "a buffer id",
            req(buffer.id(), 0, 0, 0, 0),
            Code::InvalidArgument,
            "malformed",
        ),
        (
            "an unknown image",
            req(&missing, 0, 0, 0, 0),
            Code::NotFound,
            "not found",
        ),
    ] {
        let e = g.generate_mips(c.request(request)).await.unwrap_err();
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(
            e.message().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            e.message()
        );
    }
}
