//! `gpusharectl image` against the real daemon: create, list, upload and download PNG files and
//! raw texels (in messages and, above the daemon's transfer limit, through host buffers), the
//! refusals, and rm.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use gpushare_tests::rng::SplitMix64;
use gpushare_tests::{bin, run, TestDaemon};
use serde_json::Value;

/// A transfer limit that sends level 0 of the 37x21 RGBA8 image (3108 bytes) and every float
/// level 0 through a host buffer, and level 1 (720 bytes) in a message.
const CONFIG: &str = "[limits]\nmax_transfer_size = 1024\n";

/// Usage errors (arguments that make no sense for the image, and clap's own).
const EXIT_USAGE: i32 = 2;
const EXIT_NOT_FOUND: i32 = 3;
const EXIT_INVALID_ARGUMENT: i32 = 9;

fn ctl(d: &TestDaemon, args: &[&str]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(bin("gpusharectl"));
    cmd.arg("--runtime-dir").arg(d.runtime_dir()).args(args);
    run(&mut cmd, Duration::from_secs(30))
}

/// Runs gpusharectl, which must succeed; returns its stdout.
fn ok(d: &TestDaemon, args: &[&str]) -> String {
    let (status, out, err) = ctl(d, args);
    assert!(
        status.success(),
        "gpusharectl {args:?} failed ({status}): {err}"
    );
    out
}

/// Runs gpusharectl, which must fail with `code` and say `needle` on stderr.
fn fails(d: &TestDaemon, args: &[&str], code: i32, needles: &[&str]) {
    let (status, _, err) = ctl(d, args);
    assert_eq!(status.code(), Some(code), "gpusharectl {args:?}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "gpusharectl {args:?}: {needle:?} not in {err:?}"
        );
    }
}

fn json(d: &TestDaemon, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(d, &all)).expect("JSON output")
}

/// Creates an image; returns its id.
fn create(d: &TestDaemon, args: &[&str]) -> String {
    let mut all = vec!["image", "create"];
    all.extend_from_slice(args);
    let v = json(d, &all);
    assert_eq!(v["kind"], "image");
    v["id"].as_str().unwrap().to_owned()
}

fn write_png(path: &Path, width: u32, height: u32, color: png::ColorType, data: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
}

/// A PNG's pixels (8-bit) with its width, height and color type.
fn read_png(path: &Path) -> (u32, u32, png::ColorType, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).unwrap();
    assert_eq!(frame.bit_depth, png::BitDepth::Eight);
    buf.truncate(frame.buffer_size());
    (frame.width, frame.height, frame.color_type, buf)
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    SplitMix64(seed).fill(&mut data);
    data
}

/// Resource kinds listed by `ls`.
fn kinds(d: &TestDaemon) -> Vec<String> {
    json(d, &["ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn rgba8_levels_round_trip_as_png_and_raw() {
    let d = gpushare_tests::daemon_or_skip!(CONFIG);
    let dir = d.scratch();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let id = create(
        &d,
        &[
            "--format",
            "rgba8unorm",
            "--width",
            "37",
            "--height",
            "21",
            "--mip-levels",
            "3",
            "--name",
            "cli-image",
        ],
    );

    // Listed, with its format and shape.
    let table = ok(&d, &["image", "ls"]);
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in {table}"));
    for cell in ["cli-image", "rgba8unorm", "2d", "37x21"] {
        assert!(row.contains(cell), "{cell} not in {row:?}");
    }
    let listed = json(&d, &["image", "ls"]);
    let mine = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .expect("listed in JSON");
    assert_eq!(mine["image"]["format"], "rgba8unorm");
    assert_eq!(mine["image"]["mip_levels"], 3);
    assert_eq!(mine["pinned"], true);

    // Level 0 from a PNG (3108 bytes: through a host buffer), back as PNG and raw.
    let level0 = random(1, 37 * 21 * 4);
    write_png(
        Path::new(&path("l0.png")),
        37,
        21,
        png::ColorType::Rgba,
        &level0,
    );
    ok(&d, &["image", "upload", &id, &path("l0.png")]);
    ok(&d, &["image", "download", &id, &path("l0-back.png")]);
    assert_eq!(
        read_png(Path::new(&path("l0-back.png"))),
        (37, 21, png::ColorType::Rgba, level0.clone())
    );
    ok(&d, &["image", "download", &id, &path("l0.raw"), "--raw"]);
    assert_eq!(std::fs::read(path("l0.raw")).unwrap(), level0);

    // Level 1 from raw bytes (720 bytes: in a message), back raw and as PNG.
    let level1 = random(2, 18 * 10 * 4);
    std::fs::write(path("l1.raw"), &level1).unwrap();
    let v = json(
        &d,
        &[
            "image",
            "upload",
            &id,
            &path("l1.raw"),
            "--level",
            "1",
            "--raw",
        ],
    );
    assert_eq!(
        (v["format"].as_str(), v["bytes"].as_u64()),
        (Some("raw"), Some(720))
    );
    ok(
        &d,
        &[
            "image",
            "download",
            &id,
            &path("l1-back.raw"),
            "--level",
            "1",
            "--raw",
        ],
    );
    assert_eq!(std::fs::read(path("l1-back.raw")).unwrap(), level1);
    ok(
        &d,
        &["image", "download", &id, &path("l1.png"), "--level", "1"],
    );
    assert_eq!(
        read_png(Path::new(&path("l1.png"))),
        (18, 10, png::ColorType::Rgba, level1)
    );

    // An RGB PNG gets opaque alpha; level 0 is untouched.
    let rgb = random(3, 9 * 5 * 3);
    write_png(Path::new(&path("l2.png")), 9, 5, png::ColorType::Rgb, &rgb);
    ok(
        &d,
        &["image", "upload", &id, &path("l2.png"), "--level", "2"],
    );
    ok(
        &d,
        &[
            "image",
            "download",
            &id,
            &path("l2.raw"),
            "--level",
            "2",
            "--raw",
        ],
    );
    let expanded: Vec<u8> = rgb
        .chunks(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    assert_eq!(std::fs::read(path("l2.raw")).unwrap(), expanded);
    ok(&d, &["image", "download", &id, &path("l0.raw"), "--raw"]);
    assert_eq!(std::fs::read(path("l0.raw")).unwrap(), level0);

    // The host buffers the large transfers used are gone.
    assert_eq!(kinds(&d), ["image"]);

    // rm frees it.
    let v = json(&d, &["image", "rm", &id]);
    assert_eq!(v["freed"], true);
    assert!(!ok(&d, &["image", "ls"]).contains(&id));
    fails(&d, &["describe", &id], EXIT_NOT_FOUND, &[]);
    fails(
        &d,
        &["image", "download", &id, &path("gone.png")],
        EXIT_NOT_FOUND,
        &[&id],
    );
}

#[test]
fn float_image_round_trips_a_png_within_one_step() {
    let d = gpushare_tests::daemon_or_skip!(CONFIG);
    let dir = d.scratch();
    let id = create(
        &d,
        &[
            "--format",
            "rgba32float",
            "--width",
            "37",
            "--height",
            "21",
            "--full-mip-chain",
        ],
    );
    let source = dir.join("f.png");
    let pixels = random(4, 37 * 21 * 4);
    write_png(&source, 37, 21, png::ColorType::Rgba, &pixels);
    // 12432 bytes each way: through host buffers.
    ok(&d, &["image", "upload", &id, source.to_str().unwrap()]);
    let back = dir.join("f-back.png");
    ok(&d, &["image", "download", &id, back.to_str().unwrap()]);
    let (w, h, color, got) = read_png(&back);
    assert_eq!((w, h, color), (37, 21, png::ColorType::Rgba));
    for (i, (a, b)) in pixels.iter().zip(&got).enumerate() {
        assert!(
            a.abs_diff(*b) <= 1,
            "sample {i}: {a} uploaded, {b} downloaded"
        );
    }
    // The texels are the samples normalized to [0, 1].
    let raw = dir.join("f.raw");
    ok(
        &d,
        &["image", "download", &id, raw.to_str().unwrap(), "--raw"],
    );
    let floats: Vec<f32> = std::fs::read(&raw)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(floats.len(), pixels.len());
    for (f, &p) in floats.iter().zip(&pixels) {
        assert!((f - f32::from(p) / 255.0).abs() < 1e-6, "{f} for {p}");
    }
    assert_eq!(kinds(&d), ["image"]);
}

/// `image upload --mips` fills the chain below the uploaded level: `image download --level 1`
/// gives a half-size PNG, each byte the 2x2 average; `image mips` regenerates levels alone;
/// signal points follow the mips; an image without a level to generate is a usage error.
#[test]
fn upload_with_mips_gives_a_half_size_level() {
    let d = gpushare_tests::daemon_or_skip!(CONFIG);
    let dir = d.scratch();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let id = create(
        &d,
        &[
            "--format",
            "rgba8unorm",
            "--width",
            "64",
            "--height",
            "32",
            "--full-mip-chain",
        ],
    );
    let sem = ok(&d, &["sem", "create"]).trim().to_owned();
    let photo = random(7, 64 * 32 * 4);
    write_png(
        Path::new(&path("photo.png")),
        64,
        32,
        png::ColorType::Rgba,
        &photo,
    );
    let signal = format!("{sem}=1");
    let v = json(
        &d,
        &[
            "image",
            "upload",
            &id,
            &path("photo.png"),
            "--mips",
            "--signal",
            &signal,
        ],
    );
    assert_eq!(v["mip_levels_generated"], 6);
    ok(&d, &["sem", "wait", &sem, "1", "--timeout", "0"]);
    ok(
        &d,
        &["image", "download", &id, &path("half.png"), "--level", "1"],
    );
    let (w, h, color, half) = read_png(Path::new(&path("half.png")));
    assert_eq!((w, h, color), (32, 16, png::ColorType::Rgba));
    assert!(half.iter().any(|&b| b != 0), "level 1 is not black");
    let average = |src: &[u8], width: usize, x: usize, y: usize, c: usize| {
        let at = |xx: usize, yy: usize| f32::from(src[(yy * width + xx) * 4 + c]);
        (at(2 * x, 2 * y) + at(2 * x + 1, 2 * y) + at(2 * x, 2 * y + 1) + at(2 * x + 1, 2 * y + 1))
            / 4.0
    };
    for y in 0..16 {
        for x in 0..32 {
            for c in 0..4 {
                let got = f32::from(half[(y * 32 + x) * 4 + c]);
                let want = average(&photo, 64, x, y, c);
                assert!(
                    (got - want).abs() <= 1.0,
                    "texel ({x}, {y}) channel {c}: {got}, the 2x2 average is {want}"
                );
            }
        }
    }
    let quarter = |name: &str| {
        ok(&d, &["image", "download", &id, &path(name), "--level", "2"]);
        read_png(Path::new(&path(name))).3
    };
    let before = quarter("quarter.png");

    // `image mips`: a new level 0, then level 1 only; level 2 keeps what it had.
    let other = random(8, 64 * 32 * 4);
    write_png(
        Path::new(&path("other.png")),
        64,
        32,
        png::ColorType::Rgba,
        &other,
    );
    ok(&d, &["image", "upload", &id, &path("other.png")]);
    let v = json(&d, &["image", "mips", &id, "--levels", "1"]);
    assert_eq!(
        (v["base_level"].as_u64(), v["levels"].as_u64()),
        (Some(0), Some(1))
    );
    ok(
        &d,
        &["image", "download", &id, &path("half2.png"), "--level", "1"],
    );
    let half2 = read_png(Path::new(&path("half2.png"))).3;
    assert!(
        (0..32 * 16 * 4).all(|i| {
            let (t, c) = (i / 4, i % 4);
            (f32::from(half2[i]) - average(&other, 64, t % 32, t / 32, c)).abs() <= 1.0
        }),
        "level 1 is the average of the new level 0"
    );
    assert_eq!(quarter("quarter2.png"), before, "level 2 untouched");

    // Nothing to generate: refused before anything is sent.
    let single = create(
        &d,
        &["--format", "rgba8unorm", "--width", "64", "--height", "32"],
    );
    fails(
        &d,
        &["image", "upload", &single, &path("photo.png"), "--mips"],
        EXIT_USAGE,
        &["no level after level 0", "--full-mip-chain"],
    );
    fails(
        &d,
        &["image", "mips", &id, "--base-level", "6"],
        EXIT_USAGE,
        &["no level after level 6"],
    );
    fails(
        &d,
        &["image", "mips", &id, "--levels", "9"],
        EXIT_INVALID_ARGUMENT,
        &["past the image's last level 6"],
    );
}

#[test]
fn refusals_name_the_problem() {
    let d = gpushare_tests::daemon_or_skip!(CONFIG);
    let dir = d.scratch();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    fails(
        &d,
        &[
            "image",
            "create",
            "--format",
            "rgb8unorm",
            "--width",
            "4",
            "--height",
            "4",
        ],
        EXIT_USAGE,
        &["unknown image format \"rgb8unorm\"", "rgba8unorm"],
    );
    fails(
        &d,
        &[
            "image",
            "create",
            "--format",
            "r8unorm",
            "--width",
            "4",
            "--height",
            "4",
            "--mip-levels",
            "4",
        ],
        EXIT_USAGE,
        &["mip levels 4"],
    );

    let rgba = create(
        &d,
        &["--format", "rgba8unorm", "--width", "37", "--height", "21"],
    );
    write_png(
        Path::new(&path("small.png")),
        10,
        10,
        png::ColorType::Rgba,
        &[7; 400],
    );
    fails(
        &d,
        &["image", "upload", &rgba, &path("small.png")],
        EXIT_USAGE,
        &["the PNG is 10x10", "37x21"],
    );
    std::fs::write(path("short.raw"), [0; 100]).unwrap();
    fails(
        &d,
        &["image", "upload", &rgba, &path("short.raw"), "--raw"],
        EXIT_USAGE,
        &["is 100 bytes", "exactly 3108 bytes"],
    );
    fails(
        &d,
        &["image", "upload", &rgba, &path("short.raw")],
        EXIT_USAGE,
        &["not a PNG file", "--raw"],
    );
    fails(
        &d,
        &["image", "upload", &rgba, &path("small.png"), "--level", "1"],
        EXIT_USAGE,
        &["no level 1"],
    );

    let uint = create(
        &d,
        &["--format", "r8uint", "--width", "10", "--height", "10"],
    );
    fails(
        &d,
        &["image", "upload", &uint, &path("small.png")],
        EXIT_USAGE,
        &["r8uint is a uint format", "--raw"],
    );
    fails(
        &d,
        &["image", "download", &uint, &path("uint.png")],
        EXIT_USAGE,
        &["r8uint is a uint format"],
    );
    assert!(!dir.join("uint.png").exists());
    fails(
        &d,
        &["image", "download", &uint, &path("uint.bin")],
        EXIT_USAGE,
        &["does not end in .png", "--raw"],
    );

    // Not an image at all.
    let buffer = ok(&d, &["buffer", "create", "--size", "4K"]);
    fails(
        &d,
        &["image", "upload", buffer.trim(), &path("small.png")],
        EXIT_USAGE,
        &["is a buffer, not an image"],
    );
}
