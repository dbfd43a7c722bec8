//! Parsers for command-line values: sizes with binary suffixes, `SEM=VALUE` points, integers in
//! decimal or hex, image formats and usages.

use gpushare_client::ImageFormat;

/// A size, offset or length: decimal digits, optionally followed by a binary suffix `K`, `M`, `G`
/// or `T` (powers of 1024, any case, optionally followed by `iB` or `B`), or a `0x` hex number.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|e| format!("invalid hex size {s:?}: {e}"));
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number like 4096, 64K or 1G"
        ));
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("invalid size suffix {suffix:?}: use K, M, G or T")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|e| format!("invalid size {s:?}: {e}"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} does not fit in 64 bits"))
}

/// A 32-bit value in decimal or `0x` hex.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("invalid 32-bit value {s:?}: {e}"))
}

/// A 64-bit value in decimal or `0x` hex.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("invalid value {s:?}: {e}"))
}

/// A semaphore point `SEM=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// Semaphore id.
    pub semaphore: String,
    /// Timeline value.
    pub value: u64,
}

/// Parses `SEM=VALUE` (the id must be non-empty; the value decimal or `0x` hex).
pub fn parse_point(s: &str) -> Result<Point, String> {
    let (semaphore, value) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("invalid point {s:?}: expected SEM=VALUE"))?;
    if semaphore.is_empty() {
        return Err(format!("invalid point {s:?}: empty semaphore id"));
    }
    let value = parse_u64(value).map_err(|e| format!("in {s:?}: {e}"))?;
    Ok(Point {
        semaphore: semaphore.to_owned(),
        value,
    })
}

/// Hex bytes, ignoring whitespace and an optional `0x` prefix.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(&compact).map_err(|e| format!("invalid hex data: {e}"))
}

/// An image format by name (`rgba8unorm`, any case).
pub fn parse_format(s: &str) -> Result<ImageFormat, String> {
    ImageFormat::from_name(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = ImageFormat::all().map(ImageFormat::name).collect();
        format!(
            "unknown image format {s:?}: expected one of {}",
            names.join(", ")
        )
    })
}

/// `VkImageUsageFlags` as a comma-separated list of `sampled` (0x4), `storage` (0x8) and
/// `color_attachment` (0x10), or as a number (decimal or `0x` hex).
pub fn parse_usage(s: &str) -> Result<u32, String> {
    let s = s.trim();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return parse_u32(s);
    }
    let mut usage = 0;
    for name in s.split(',') {
        usage |= match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "sampled" => 0x4,
            "storage" => 0x8,
            "color_attachment" => 0x10,
            _ => {
                return Err(format!(
                    "unknown image usage {:?}: use sampled, storage, color_attachment \
                     (comma-separated) or a number",
                    name.trim()
                ))
            }
        };
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("0x100"), Ok(256));
        assert_eq!(parse_size(" 8M "), Ok(8 << 20));
    }

    #[test]
    fn bad_sizes() {
        for bad in ["", "K", "1.5M", "-1", "1X", "1MM", "0xZZ", "1 M"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_size("18446744073709551615").is_ok());
        assert!(parse_size("18446744073709551616").is_err());
        assert!(parse_size("16777216T").is_err(), "overflow");
    }

    #[test]
    fn points() {
        assert_eq!(
            parse_point("abc=5"),
            Ok(Point {
                semaphore: "abc".into(),
                value: 5
            })
        );
        assert_eq!(parse_point("s=0x10").map(|p| p.value), Ok(16));
        assert_eq!(
            parse_point("s=18446744073709551615").map(|p| p.value),
            Ok(u64::MAX)
        );
        for bad in [
            "abc",
            "=5",
            "abc=",
            "abc=x",
            "abc=-1",
            "abc=18446744073709551616",
        ] {
            assert!(parse_point(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn u32_values() {
        assert_eq!(parse_u32("0xdeadbeef"), Ok(0xdead_beef));
        assert_eq!(parse_u32("42"), Ok(42));
        assert!(parse_u32("4294967296").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(parse_format("rgba8unorm"), Ok(ImageFormat::Rgba8Unorm));
        assert_eq!(parse_format("R32Float"), Ok(ImageFormat::R32Float));
        for format in ImageFormat::all() {
            assert_eq!(parse_format(format.name()), Ok(format));
        }
        let err = parse_format("rgb8unorm").unwrap_err();
        assert!(err.contains("unknown image format \"rgb8unorm\""), "{err}");
        assert!(err.contains("rgba32uint"), "{err}");
    }

    #[test]
    fn usages() {
        assert_eq!(parse_usage("sampled"), Ok(0x4));
        assert_eq!(parse_usage("sampled,storage"), Ok(0xc));
        assert_eq!(parse_usage("storage, color-attachment"), Ok(0x18));
        assert_eq!(parse_usage("COLOR_ATTACHMENT"), Ok(0x10));
        assert_eq!(parse_usage("0x1c"), Ok(0x1c));
        assert_eq!(parse_usage("12"), Ok(12));
        for bad in ["", "sampled,", "depth", "sampled,bogus"] {
            assert!(parse_usage(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn hex_data() {
        assert_eq!(parse_hex("de ad\nbe ef"), Ok(vec![0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(parse_hex("0x0102"), Ok(vec![1, 2]));
        assert!(parse_hex("abc").is_err());
    }
}
