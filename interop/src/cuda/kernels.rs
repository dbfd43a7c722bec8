//! Small GPU kernels over imported images, written in PTX by hand (no nvcc at build time), for
//! tests that check what CUDA writes through a surface and reads through a texture: a
//! the kernels' PTX ([`ptx`]), loaded as a [`Module`] (see `module.rs`), and
//! [`ImageKernels`], which runs them on [`SurfaceObject`]s and [`TextureObject`]s.
//!
//! The fill kernels write texel byte `i` at `(x, y, z)` as `(seed + x + 7y + 13z + i) & 0xff`
//! ([`expected_texel_bytes`]), z being the slice (3D), the layer (layered 2D) or 0. There is one
//! kernel per surface shape and store width (`sust.b` with `.b8`, `.b16`, `.b32`, `.v2.b32`,
//! `.v4.b32`: texels of 1, 2, 4, 8 and 16 bytes); the x coordinate of `sust.b` is in bytes.
//!
//! Not here: image import (`array.rs`), surface and texture objects (`texture.rs`), anything a
//! client runs in production.

use std::ffi::{c_void, CStr, CString};
use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::device::CudaDevice;
use super::error::{Error, Result};
pub use super::module::{launch, Function, Module};
use super::texture::{SurfaceObject, TextureObject};
use crate::image::{ChannelKind, ImageDesc, ImageKind};

/// The surface shapes the fill kernels write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SurfaceShape {
    /// A 2D image with one layer (`sust.b.2d`).
    D2,
    /// A 2D image with layers (`sust.b.a2d`), one layer per launch.
    Layered2D,
    /// A 3D image (`sust.b.3d`), z from the grid's z.
    D3,
}

impl SurfaceShape {
    /// Every shape.
    pub const ALL: [SurfaceShape; 3] =
        [SurfaceShape::D2, SurfaceShape::Layered2D, SurfaceShape::D3];

    /// The shape of images of shape `desc`.
    pub fn of(desc: &ImageDesc) -> SurfaceShape {
        match desc.kind {
            ImageKind::D3 => SurfaceShape::D3,
            ImageKind::D2 if desc.layered() => SurfaceShape::Layered2D,
            ImageKind::D2 => SurfaceShape::D2,
        }
    }
}

/// Texel sizes with a fill kernel, in the order of [`FILL_NAMES`]' rows.
const TEXEL_SIZES: [u32; 5] = [1, 2, 4, 8, 16];

/// The fill kernels' names, by shape (rows) and texel size ([`TEXEL_SIZES`]).
const FILL_NAMES: [[&CStr; 5]; 3] = [
    [
        c"fill_surface_2d_b8",
        c"fill_surface_2d_b16",
        c"fill_surface_2d_b32",
        c"fill_surface_2d_v2b32",
        c"fill_surface_2d_v4b32",
    ],
    [
        c"fill_surface_2d_layered_b8",
        c"fill_surface_2d_layered_b16",
        c"fill_surface_2d_layered_b32",
        c"fill_surface_2d_layered_v2b32",
        c"fill_surface_2d_layered_v4b32",
    ],
    [
        c"fill_surface_3d_b8",
        c"fill_surface_3d_b16",
        c"fill_surface_3d_b32",
        c"fill_surface_3d_v2b32",
        c"fill_surface_3d_v4b32",
    ],
];

/// The texture kernel's name.
pub const READ_TEXTURE_2D_LOD: &CStr = c"read_texture_2d_lod";

/// The fill kernels' block: 16 × 16 threads, one per texel.
pub const FILL_BLOCK: (u32, u32, u32) = (16, 16, 1);

/// The fill kernel for `shape` and texels of `texel_bytes` bytes, if there is one (1, 2, 4, 8 or
/// 16 bytes).
///
/// Its parameters: `(u64 surface, u32 width, u32 height, u32 layer, u32 texel_bytes, u32 seed)`;
/// each thread `(x, y)` of the grid within `width × height` writes texel `(x, y)`. `layer` is
/// the layer written (layered 2D) and the z of the pattern (2D: pass 0); for 3D it is the
/// depth instead, z being the thread's z.
pub fn fill_kernel_name(shape: SurfaceShape, texel_bytes: u32) -> Option<&'static CStr> {
    let column = TEXEL_SIZES.iter().position(|&t| t == texel_bytes)?;
    let row = match shape {
        SurfaceShape::D2 => 0,
        SurfaceShape::Layered2D => 1,
        SurfaceShape::D3 => 2,
    };
    Some(FILL_NAMES[row][column])
}

/// What the fill kernels write at `(x, y, z)` with `seed`: byte `i` of the texel is
/// `(seed + x + 7y + 13z + i) & 0xff`.
pub fn expected_texel_bytes(seed: u32, x: u32, y: u32, z: u32, texel_bytes: u32) -> Vec<u8> {
    let base = seed
        .wrapping_add(x)
        .wrapping_add(y.wrapping_mul(7))
        .wrapping_add(z.wrapping_mul(13));
    (0..texel_bytes)
        .map(|i| base.wrapping_add(i) as u8)
        .collect()
}

/// The PTX header: ISA 7.0 (CUDA 11.0 and later drivers), sm_70, 64-bit addresses.
const PTX_HEADER: &str = ".version 7.0\n.target sm_70\n.address_size 64\n";

/// Loads `%r9 = x` and `%r10 = y`, the thread's texel (uses `%r6`..`%r8`).
const PTX_THREAD_XY: &str = "\
\tmov.u32 %r6, %ctaid.x;
\tmov.u32 %r7, %ntid.x;
\tmov.u32 %r8, %tid.x;
\tmad.lo.u32 %r9, %r6, %r7, %r8;
\tmov.u32 %r6, %ctaid.y;
\tmov.u32 %r7, %ntid.y;
\tmov.u32 %r8, %tid.y;
\tmad.lo.u32 %r10, %r6, %r7, %r8;
";

/// One fill kernel's PTX.
///
/// Registers: `%rd1` surface; `%r1` width, `%r2` height, `%r3` layer (or depth), `%r4` texel
/// bytes, `%r5` seed; `%r9, %r10, %r11` x, y, z; `%r12` the pattern's base, `%r13` x in bytes;
/// `%r14` a word's base, `%r15` scratch, `%r20..%r23` the texel's words; `%rs1` a 1- or
/// 2-byte texel.
fn fill_entry(out: &mut String, name: &str, shape: SurfaceShape, texel_bytes: u32) {
    out.push_str(&format!(
        "
.visible .entry {name}(
\t.param .u64 {name}_param_0,
\t.param .u32 {name}_param_1,
\t.param .u32 {name}_param_2,
\t.param .u32 {name}_param_3,
\t.param .u32 {name}_param_4,
\t.param .u32 {name}_param_5
)
{{
\t.reg .pred %p<3>;
\t.reg .b16 %rs<2>;
\t.reg .b32 %r<24>;
\t.reg .b64 %rd<2>;

\tld.param.u64 %rd1, [{name}_param_0];
\tld.param.u32 %r1, [{name}_param_1];
\tld.param.u32 %r2, [{name}_param_2];
\tld.param.u32 %r3, [{name}_param_3];
\tld.param.u32 %r4, [{name}_param_4];
\tld.param.u32 %r5, [{name}_param_5];
{PTX_THREAD_XY}\tsetp.ge.u32 %p1, %r9, %r1;
\tsetp.ge.u32 %p2, %r10, %r2;
\tor.pred %p1, %p1, %p2;
"
    ));
    if shape == SurfaceShape::D3 {
        // z from the grid, bounded by the depth in %r3.
        out.push_str(
            "\tmov.u32 %r6, %ctaid.z;
\tmov.u32 %r7, %ntid.z;
\tmov.u32 %r8, %tid.z;
\tmad.lo.u32 %r11, %r6, %r7, %r8;
\tsetp.ge.u32 %p2, %r11, %r3;
\tor.pred %p1, %p1, %p2;
",
        );
    } else {
        out.push_str("\tmov.u32 %r11, %r3;\n");
    }
    out.push_str(&format!(
        "\t@%p1 bra {name}_done;
\tadd.u32 %r12, %r5, %r9;
\tmad.lo.u32 %r12, %r10, 7, %r12;
\tmad.lo.u32 %r12, %r11, 13, %r12;
\tmul.lo.u32 %r13, %r9, %r4;
"
    ));
    // Word k holds bytes base + 4k + i, i < 4, little-endian: bfi inserts each byte's low 8
    // bits at bit 8i.
    let words = (texel_bytes / 4).max(1);
    for k in 0..words {
        let w = 20 + k;
        out.push_str(&format!(
            "\tadd.u32 %r14, %r12, {};\n\tmov.b32 %r{w}, %r14;\n",
            4 * k
        ));
        for i in 1..texel_bytes.min(4) {
            out.push_str(&format!(
                "\tadd.u32 %r15, %r14, {i};\n\tbfi.b32 %r{w}, %r15, %r{w}, {}, 8;\n",
                8 * i
            ));
        }
    }
    let (store, values) = match texel_bytes {
        1 => ("b8", "{%rs1}"),
        2 => ("b16", "{%rs1}"),
        4 => ("b32", "{%r20}"),
        8 => ("v2.b32", "{%r20, %r21}"),
        _ => ("v4.b32", "{%r20, %r21, %r22, %r23}"),
    };
    if texel_bytes <= 2 {
        out.push_str("\tcvt.u16.u32 %rs1, %r20;\n");
    }
    let (geometry, coords) = match shape {
        SurfaceShape::D2 => ("2d", "{%r13, %r10}"),
        SurfaceShape::Layered2D => ("a2d", "{%r3, %r13, %r10, %r10}"),
        SurfaceShape::D3 => ("3d", "{%r13, %r10, %r11, %r11}"),
    };
    out.push_str(&format!(
        "\tsust.b.{geometry}.{store}.trap [%rd1, {coords}], {values};
{name}_done:
\tret;
}}
"
    ));
}

/// The texture kernel: `(u64 texture, u32 width, u32 height, f32 lod, u64 out)`; thread
/// `(x, y)` within `width × height` writes `tex2DLod(texture, (x + 0.5) / width,
/// (y + 0.5) / height, lod)` (normalized coordinates) as a float4 at `out[y * width + x]`.
const PTX_READ_TEXTURE: &str = "
.visible .entry read_texture_2d_lod(
\t.param .u64 read_texture_2d_lod_param_0,
\t.param .u32 read_texture_2d_lod_param_1,
\t.param .u32 read_texture_2d_lod_param_2,
\t.param .f32 read_texture_2d_lod_param_3,
\t.param .u64 read_texture_2d_lod_param_4
)
{
\t.reg .pred %p<3>;
\t.reg .b32 %r<12>;
\t.reg .f32 %f<10>;
\t.reg .b64 %rd<6>;

\tld.param.u64 %rd1, [read_texture_2d_lod_param_0];
\tld.param.u32 %r1, [read_texture_2d_lod_param_1];
\tld.param.u32 %r2, [read_texture_2d_lod_param_2];
\tld.param.f32 %f1, [read_texture_2d_lod_param_3];
\tld.param.u64 %rd2, [read_texture_2d_lod_param_4];
";

const PTX_READ_TEXTURE_BODY: &str = "\
\tsetp.ge.u32 %p1, %r9, %r1;
\tsetp.ge.u32 %p2, %r10, %r2;
\tor.pred %p1, %p1, %p2;
\t@%p1 bra read_texture_2d_lod_done;
\tcvt.rn.f32.u32 %f2, %r9;
\tadd.f32 %f2, %f2, 0f3F000000;
\tcvt.rn.f32.u32 %f3, %r1;
\tdiv.rn.f32 %f2, %f2, %f3;
\tcvt.rn.f32.u32 %f4, %r10;
\tadd.f32 %f4, %f4, 0f3F000000;
\tcvt.rn.f32.u32 %f5, %r2;
\tdiv.rn.f32 %f4, %f4, %f5;
\ttex.level.2d.v4.f32.f32 {%f6, %f7, %f8, %f9}, [%rd1, {%f2, %f4}], %f1;
\tmad.lo.u32 %r11, %r10, %r1, %r9;
\tcvta.to.global.u64 %rd3, %rd2;
\tmul.wide.u32 %rd4, %r11, 16;
\tadd.s64 %rd5, %rd3, %rd4;
\tst.global.v4.f32 [%rd5], {%f6, %f7, %f8, %f9};
read_texture_2d_lod_done:
\tret;
}
";

/// The PTX of every kernel here, NUL-terminated for [`Module::load`].
pub fn ptx() -> CString {
    let mut text = String::from(PTX_HEADER);
    for (row, shape) in SurfaceShape::ALL.into_iter().enumerate() {
        for (column, &texel) in TEXEL_SIZES.iter().enumerate() {
            let name = FILL_NAMES[row][column].to_string_lossy();
            fill_entry(&mut text, &name, shape, texel);
        }
    }
    text.push_str(PTX_READ_TEXTURE);
    text.push_str(PTX_THREAD_XY);
    text.push_str(PTX_READ_TEXTURE_BODY);
    // The text is ASCII written above, without NUL; an empty string (never) would fail to load.
    CString::new(text).unwrap_or_default()
}

/// The kernels of [`ptx`], loaded on one device, with launchers that derive every bound from
/// the objects they are given.
#[derive(Debug)]
pub struct ImageKernels {
    module: Module,
}

impl ImageKernels {
    /// JIT-compiles and loads the kernels on `device`.
    pub fn load(device: &Arc<CudaDevice>) -> Result<ImageKernels> {
        Ok(ImageKernels {
            module: Module::load(device, &ptx())?,
        })
    }

    /// The loaded module.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Enqueues on `stream` the fill of `surface`'s whole level, every layer or slice, with
    /// [`expected_texel_bytes`]`(seed, x, y, z, texel)` (z: slice, layer, or 0).
    ///
    /// # Safety
    ///
    /// `surface` stays alive until the stream has passed the kernels; nothing else accesses
    /// the level meanwhile.
    pub unsafe fn fill_surface(
        &self,
        surface: &SurfaceObject,
        seed: u32,
        stream: &CudaStream,
    ) -> Result<()> {
        let level = surface.level();
        let desc = level.desc();
        let shape = SurfaceShape::of(desc);
        let texel = desc.format.texel_size();
        let name = fill_kernel_name(shape, texel).ok_or(Error::InvalidValue {
            what: "texel size",
            value: texel.into(),
            reason: "no fill kernel for it",
        })?;
        let function = self.module.function(name)?;
        let (width, height, depth) = level.extent();
        let grid_z = if shape == SurfaceShape::D3 { depth } else { 1 };
        let grid = (
            width.div_ceil(FILL_BLOCK.0),
            height.div_ceil(FILL_BLOCK.1),
            grid_z,
        );
        let launches: Vec<u32> = match shape {
            SurfaceShape::D2 => vec![0],
            SurfaceShape::Layered2D => (0..desc.array_layers).collect(),
            SurfaceShape::D3 => vec![depth],
        };
        for layer in launches {
            let (mut surf, mut w, mut h, mut l, mut t, mut s) =
                (surface.raw(), width, height, layer, texel, seed);
            let mut params = [
                (&raw mut surf).cast::<c_void>(),
                (&raw mut w).cast(),
                (&raw mut h).cast(),
                (&raw mut l).cast(),
                (&raw mut t).cast(),
                (&raw mut s).cast(),
            ];
            // SAFETY: the parameters are the fill kernels' (u64, 5 × u32), in order; the kernel
            // writes only texels within the level's extent (and the layer written is one of
            // the image's), through the surface, which the caller keeps alive.
            unsafe { launch(&function, grid, FILL_BLOCK, &mut params, stream) }?;
        }
        Ok(())
    }

    /// Enqueues on `stream` a read of `texture` at level-of-detail `lod` over a `width × height`
    /// grid of normalized coordinates (`(x + 0.5) / width`, `(y + 0.5) / height`), writing one
    /// float4 (16 bytes) per texel, row after row, from device address `out`.
    ///
    /// [`Error::InvalidValue`] unless the texture uses normalized coordinates and reads floats
    /// (a float or unorm format), or for an empty grid.
    ///
    /// # Safety
    ///
    /// `out..out + 16 × width × height` is device memory of the stream's context, valid until
    /// the kernel has run; `texture` stays alive until then.
    pub unsafe fn read_texture_2d_lod(
        &self,
        texture: &TextureObject,
        width: u32,
        height: u32,
        lod: f32,
        out: u64,
        stream: &CudaStream,
    ) -> Result<()> {
        if !texture.options().normalized_coords {
            return Err(Error::InvalidValue {
                what: "texture coordinates",
                value: 0,
                reason: "the kernel samples with normalized coordinates",
            });
        }
        let format = texture.array().desc().format;
        if format.info().kind == ChannelKind::Unsigned {
            return Err(Error::InvalidValue {
                what: "texture format (code)",
                value: format.code().into(),
                reason: "the kernel reads floats: integer formats are read as integers",
            });
        }
        let function = self.module.function(READ_TEXTURE_2D_LOD)?;
        let grid = (
            width.div_ceil(FILL_BLOCK.0),
            height.div_ceil(FILL_BLOCK.1),
            1,
        );
        let (mut tex, mut w, mut h, mut l, mut o) = (texture.raw(), width, height, lod, out);
        let mut params = [
            (&raw mut tex).cast::<c_void>(),
            (&raw mut w).cast(),
            (&raw mut h).cast(),
            (&raw mut l).cast(),
            (&raw mut o).cast(),
        ];
        // SAFETY: the parameters are the kernel's (u64, u32, u32, f32, u64), in order; it writes
        // `width × height` float4s from `out`, which the caller guarantees, and samples the
        // texture, which the caller keeps alive.
        unsafe { launch(&function, grid, FILL_BLOCK, &mut params, stream) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_bytes_follow_the_formula_and_wrap() {
        assert_eq!(expected_texel_bytes(0, 0, 0, 0, 4), [0, 1, 2, 3]);
        assert_eq!(expected_texel_bytes(5, 1, 2, 3, 1), [5 + 1 + 14 + 39]);
        assert_eq!(
            expected_texel_bytes(250, 3, 0, 0, 8),
            [253, 254, 255, 0, 1, 2, 3, 4]
        );
        assert_eq!(
            expected_texel_bytes(u32::MAX, 1, 0, 0, 2),
            [0, 1],
            "the sum wraps like the kernel's u32 adds"
        );
        assert_eq!(expected_texel_bytes(7, 9, 9, 9, 16).len(), 16);
    }

    #[test]
    fn every_shape_and_texel_size_has_a_kernel() {
        for shape in SurfaceShape::ALL {
            for texel in TEXEL_SIZES {
                let name = fill_kernel_name(shape, texel).unwrap().to_str().unwrap();
                assert!(name.starts_with("fill_surface_"), "{name}");
            }
            assert_eq!(fill_kernel_name(shape, 3), None);
            assert_eq!(fill_kernel_name(shape, 32), None);
        }
        assert_eq!(
            fill_kernel_name(SurfaceShape::Layered2D, 4),
            Some(c"fill_surface_2d_layered_b32")
        );
        assert_eq!(
            fill_kernel_name(SurfaceShape::D3, 16),
            Some(c"fill_surface_3d_v4b32")
        );
        let d = ImageDesc {
            format: crate::image::ImageFormat::R8Unorm,
            kind: ImageKind::D2,
            width: 4,
            height: 4,
            depth: 1,
            mip_levels: 1,
            array_layers: 1,
        };
        assert_eq!(SurfaceShape::of(&d), SurfaceShape::D2);
        assert_eq!(
            SurfaceShape::of(&ImageDesc {
                array_layers: 2,
                ..d
            }),
            SurfaceShape::Layered2D
        );
        assert_eq!(
            SurfaceShape::of(&ImageDesc {
                kind: ImageKind::D3,
                depth: 2,
                ..d
            }),
            SurfaceShape::D3
        );
    }

    /// The highest `%name<N>` register used in `body`.
    fn max_register(body: &str, prefix: &str) -> Option<u32> {
        body.match_indices(prefix)
            .filter_map(|(i, _)| {
                let digits: String = body[i + prefix.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            })
            .max()
    }

    #[test]
    fn ptx_is_well_formed() {
        let ptx = ptx();
        assert!(ptx.as_bytes_with_nul().ends_with(b"\0"));
        let text = ptx.to_str().unwrap();
        assert!(text.starts_with(".version 7.0\n.target sm_70\n.address_size 64\n"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        let entries: Vec<&str> = text.split(".visible .entry ").skip(1).collect();
        assert_eq!(entries.len(), 16);
        let mut names: Vec<&str> = entries
            .iter()
            .map(|e| e.split('(').next().unwrap())
            .collect();
        for row in FILL_NAMES {
            for name in row {
                assert!(names.contains(&name.to_str().unwrap()), "{name:?}");
            }
        }
        assert!(names.contains(&"read_texture_2d_lod"));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 16, "names are unique");
        for entry in entries {
            let name = entry.split('(').next().unwrap();
            // Every register used is declared: %r<24> is %r0..%r23, and so on.
            let declared = |prefix: &str| -> u32 {
                let decl = format!("{prefix}<");
                let at = entry
                    .find(&decl)
                    .unwrap_or_else(|| panic!("{name}: no {prefix}"));
                entry[at + decl.len()..]
                    .split('>')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            for prefix in ["%rd", "%rs", "%r", "%p", "%f"] {
                // "%r" also matches "%rd"/"%rs": those are followed by a letter, not a digit.
                if let Some(max) = max_register(entry, prefix) {
                    assert!(
                        max < declared(prefix),
                        "{name}: {prefix}{max} is not declared"
                    );
                }
            }
            // Each kernel has exactly one store or sample, and its own label.
            let label = format!("{name}_done");
            assert_eq!(entry.matches(&label).count(), 2, "{name}");
            if name.starts_with("fill_surface_") {
                assert_eq!(entry.matches("sust.b.").count(), 1, "{name}");
                let geometry = if name.contains("_layered_") {
                    "sust.b.a2d."
                } else if name.contains("_3d_") {
                    "sust.b.3d."
                } else {
                    "sust.b.2d."
                };
                assert!(entry.contains(geometry), "{name}");
                let suffix = name
                    .rsplit('_')
                    .next()
                    .unwrap()
                    .replace("v2b", "v2.b")
                    .replace("v4b", "v4.b");
                assert!(
                    entry.contains(&format!(".{suffix}.trap ")),
                    "{name}: {suffix}"
                );
            } else {
                assert!(entry.contains("tex.level.2d.v4.f32.f32"));
                assert!(entry.contains("st.global.v4.f32"));
            }
        }
    }

    #[test]
    fn words_pack_bytes_in_order() {
        // The 16-byte kernel builds four words from base + 0, 4, 8, 12, inserting bytes 1..3.
        let mut text = String::new();
        fill_entry(&mut text, "k", SurfaceShape::D2, 16);
        for k in 0..4 {
            assert!(text.contains(&format!(
                "\tadd.u32 %r14, %r12, {};\n\tmov.b32 %r{}, %r14;\n",
                4 * k,
                20 + k
            )));
        }
        assert_eq!(text.matches("bfi.b32").count(), 12);
        let mut one = String::new();
        fill_entry(&mut one, "k", SurfaceShape::D2, 1);
        assert_eq!(one.matches("bfi.b32").count(), 0);
        assert!(one.contains("cvt.u16.u32 %rs1, %r20;"));
        assert!(one.contains("sust.b.2d.b8.trap [%rd1, {%r13, %r10}], {%rs1};"));
    }
}
