//! What generated mip levels should hold, computed on the host: box averages of the level
//! before (what a linear blit to half the size gives), for the mip tests over lavapipe
//! (`tests/mips.rs`) and on the GPU (`tests/gpu_images.rs`).

/// The box average of a level of extents `(w, h, d)` (each even, or 1) with `layers` layers of
/// `channels` values per texel: each texel of the level below (half the size; 1 stays 1) is the
/// mean of its 2x2 (3D: 2x2x2) block, fewer along a dimension of 1. What a linear blit gives.
pub fn box_down(
    src: &[f32],
    (w, h, d): (usize, usize, usize),
    layers: usize,
    channels: usize,
) -> Vec<f32> {
    let taps = |n: usize| if n > 1 { 2 } else { 1 };
    let (tx, ty, tz) = (taps(w), taps(h), taps(d));
    let mut out = Vec::new();
    for l in 0..layers {
        for z in 0..(d / 2).max(1) {
            for y in 0..(h / 2).max(1) {
                for x in 0..(w / 2).max(1) {
                    for c in 0..channels {
                        let mut sum = 0.0;
                        for dz in 0..tz {
                            for dy in 0..ty {
                                for dx in 0..tx {
                                    let (sx, sy, sz) = (tx * x + dx, ty * y + dy, tz * z + dz);
                                    sum += src[(((l * d + sz) * h + sy) * w + sx) * channels + c];
                                }
                            }
                        }
                        out.push(sum / (tx * ty * tz) as f32);
                    }
                }
            }
        }
    }
    out
}

pub fn unorm(bytes: &[u8]) -> Vec<f32> {
    bytes.iter().map(|&b| f32::from(b) / 255.0).collect()
}

/// `got` (8-bit unorm) is `want` (in [0, 1]) to within one step.
pub fn assert_unorm_near(got: &[u8], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f32::from(g) - w * 255.0).abs() <= 1.0,
            "{what}: byte {i} is {g}, the box average is {}",
            w * 255.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_averages_of_known_levels() {
        // 4x2, one channel: two 2x2 blocks.
        let src = [0.0, 2.0, 4.0, 8.0, 2.0, 4.0, 8.0, 16.0];
        assert_eq!(box_down(&src, (4, 2, 1), 1, 1), [2.0, 9.0]);
        // 2x1 to 1x1: two texels; 2x2x2 to 1x1x1: eight.
        assert_eq!(box_down(&[1.0, 3.0], (2, 1, 1), 1, 1), [2.0]);
        let cube: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(box_down(&cube, (2, 2, 2), 1, 1), [3.5]);
        // Layers and channels stay apart.
        let two = [1.0, 10.0, 3.0, 30.0, 5.0, 50.0, 7.0, 70.0];
        assert_eq!(box_down(&two, (2, 1, 1), 2, 2), [2.0, 20.0, 6.0, 60.0]);
    }
}
