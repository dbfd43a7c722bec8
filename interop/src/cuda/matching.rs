//! Pairing a Vulkan physical device with its CUDA device (Falcor's `CudaDevice` matching), as pure
//! logic over device lists, so that it is tested without hardware.
//!
//! Order: the same UUID (on Linux the only reliable key: NVIDIA reports one UUID to both APIs);
//! else the same name; else the first device of compute capability 7 or more. Each fallback is
//! logged as a warning; `strict` forbids them.
//!
//! One deviation from Falcor: the fallbacks only consider CUDA devices whose pairing the UUIDs
//! cannot settle, that is where the Vulkan UUID or the CUDA device's UUID is unknown (all zero). A
//! CUDA device with a known UUID that differs from a known Vulkan UUID is another device, so a
//! CPU Vulkan driver or another vendor's GPU matches nothing instead of grabbing the first GPU.

use super::device::CudaDeviceInfo;
use super::error::{Error, Result};

/// How a Vulkan device was paired with its CUDA device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchMethod {
    /// Same device UUID.
    Uuid,
    /// Same device name (fallback).
    Name,
    /// The first CUDA device of compute capability 7 or more (fallback).
    FirstCapable,
}

/// The smallest compute capability (major) the last fallback accepts (Falcor's rule).
const MIN_CAPABLE_MAJOR: i32 = 7;

/// Finds the CUDA device for the Vulkan device with UUID `vk_uuid` and name `vk_name` (see the
/// module docs). Returns its index into `cuda` and how it matched.
///
/// Errors: [`Error::NoMatch`] when nothing matches; [`Error::FallbackForbidden`] when only a
/// fallback would match and `strict` is set.
pub fn match_device(
    vk_uuid: &[u8; 16],
    vk_name: &str,
    cuda: &[CudaDeviceInfo],
    strict: bool,
) -> Result<(usize, MatchMethod)> {
    let known = |uuid: &[u8; 16]| uuid.iter().any(|&b| b != 0);
    if known(vk_uuid) {
        if let Some(i) = cuda.iter().position(|d| d.uuid == *vk_uuid) {
            return Ok((i, MatchMethod::Uuid));
        }
    }
    // Candidates the UUIDs cannot rule out.
    let undecided = |d: &CudaDeviceInfo| !known(vk_uuid) || !known(&d.uuid);
    let by_name = || {
        let name = vk_name.trim();
        cuda.iter()
            .position(|d| undecided(d) && !name.is_empty() && d.name.trim() == name)
            .map(|i| (i, MatchMethod::Name))
    };
    let first_capable = || {
        cuda.iter()
            .position(|d| undecided(d) && d.compute_capability.0 >= MIN_CAPABLE_MAJOR)
            .map(|i| (i, MatchMethod::FirstCapable))
    };
    let Some((index, method)) = by_name().or_else(first_capable) else {
        return Err(Error::NoMatch {
            uuid: *vk_uuid,
            name: vk_name.to_owned(),
        });
    };
    let found = &cuda[index];
    if strict {
        return Err(Error::FallbackForbidden {
            uuid: *vk_uuid,
            name: vk_name.to_owned(),
            method,
            ordinal: found.ordinal,
        });
    }
    let same_name = cuda
        .iter()
        .filter(|d| d.name.trim() == found.name.trim())
        .count();
    tracing::warn!(
        vulkan_device = vk_name,
        cuda_ordinal = found.ordinal,
        cuda_device = %found.name,
        ?method,
        ambiguous = same_name > 1,
        "no CUDA device has this Vulkan device's UUID; matched by fallback"
    );
    Ok((index, method))
}

/// One Vulkan device to pair ([`match_devices`]).
#[derive(Clone, Debug)]
pub struct VulkanCandidate {
    /// `deviceUUID` (all zero when unknown).
    pub uuid: [u8; 16],
    /// `deviceName`.
    pub name: String,
    /// A CPU driver (lavapipe): paired with nothing, without a warning.
    pub cpu: bool,
}

/// Pairs every Vulkan device of a multi-GPU host with its own CUDA device: [`match_device`] for
/// each, with two rules that only matter when there are several.
///
/// - **UUIDs first, for every device**, then the fallbacks for those still unpaired, in
///   Vulkan order. A device matched by UUID is never taken by another device's fallback, whatever
///   the order.
/// - **Each CUDA device is paired at most once.** Two GPUs of the same name whose UUIDs are
///   unknown get the first and the second CUDA device of that name, not the same one twice.
///
/// CPU devices get [`Error::NoMatch`]. The result has one entry per Vulkan device, in order:
/// the index into `cuda` and the method, or why none matched.
pub fn match_devices(
    vulkan: &[VulkanCandidate],
    cuda: &[CudaDeviceInfo],
    strict: bool,
) -> Vec<Result<(usize, MatchMethod)>> {
    let no_match = |v: &VulkanCandidate| Error::NoMatch {
        uuid: v.uuid,
        name: v.name.clone(),
    };
    let known = |uuid: &[u8; 16]| uuid.iter().any(|&b| b != 0);
    let mut claimed = vec![false; cuda.len()];
    let mut out: Vec<Option<Result<(usize, MatchMethod)>>> = vulkan.iter().map(|_| None).collect();
    // Pass 1: UUIDs.
    for (slot, v) in out.iter_mut().zip(vulkan) {
        if v.cpu {
            *slot = Some(Err(no_match(v)));
            continue;
        }
        if !known(&v.uuid) {
            continue;
        }
        if let Some(i) = (0..cuda.len()).find(|&i| !claimed[i] && cuda[i].uuid == v.uuid) {
            claimed[i] = true;
            *slot = Some(Ok((i, MatchMethod::Uuid)));
        }
    }
    // Pass 2: fallbacks among the CUDA devices nobody claimed.
    for (slot, v) in out.iter_mut().zip(vulkan) {
        if slot.is_some() {
            continue;
        }
        let free: Vec<usize> = (0..cuda.len()).filter(|&i| !claimed[i]).collect();
        let subset: Vec<CudaDeviceInfo> = free.iter().map(|&i| cuda[i].clone()).collect();
        let result = match match_device(&v.uuid, &v.name, &subset, strict) {
            Ok((j, method)) => {
                claimed[free[j]] = true;
                Ok((free[j], method))
            }
            Err(e) => Err(e),
        };
        *slot = Some(result);
    }
    out.into_iter()
        .zip(vulkan)
        .map(|(r, v)| r.unwrap_or_else(|| Err(no_match(v))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u8) -> [u8; 16] {
        let mut u = [0u8; 16];
        u[0] = 0x5a;
        u[15] = n;
        u
    }

    fn dev(ordinal: i32, name: &str, uuid: [u8; 16], cc: (i32, i32)) -> CudaDeviceInfo {
        CudaDeviceInfo {
            ordinal,
            name: name.to_owned(),
            uuid,
            compute_capability: cc,
            total_memory: 80 << 30,
        }
    }

    /// Four GPUs, two pairs of identical names.
    fn machine() -> Vec<CudaDeviceInfo> {
        vec![
            dev(0, "NVIDIA H100 80GB HBM3", uuid(1), (9, 0)),
            dev(1, "NVIDIA H100 80GB HBM3", uuid(2), (9, 0)),
            dev(2, "Tesla P100-PCIE-16GB", uuid(3), (6, 0)),
            dev(3, "Tesla P100-PCIE-16GB", uuid(4), (6, 0)),
        ]
    }

    #[test]
    fn uuid_wins_over_names_and_order() {
        let cuda = machine();
        for (i, d) in cuda.iter().enumerate() {
            assert_eq!(
                match_device(&d.uuid, &d.name, &cuda, true).unwrap(),
                (i, MatchMethod::Uuid)
            );
            // A misleading name does not matter when the UUID matches.
            assert_eq!(
                match_device(&d.uuid, "something else", &cuda, true).unwrap(),
                (i, MatchMethod::Uuid)
            );
        }
    }

    #[test]
    fn unknown_vulkan_uuid_falls_back_to_name_then_capability() {
        let cuda = machine();
        let zero = [0u8; 16];
        assert_eq!(
            match_device(&zero, "Tesla P100-PCIE-16GB", &cuda, false).unwrap(),
            (2, MatchMethod::Name)
        );
        assert_eq!(
            match_device(&zero, "  NVIDIA H100 80GB HBM3 ", &cuda, false).unwrap(),
            (0, MatchMethod::Name)
        );
        assert_eq!(
            match_device(&zero, "Some GPU", &cuda, false).unwrap(),
            (0, MatchMethod::FirstCapable)
        );
        // The first capable device, not the first device.
        let old_first: Vec<_> = cuda.iter().rev().cloned().collect();
        assert_eq!(
            match_device(&zero, "Some GPU", &old_first, false).unwrap(),
            (2, MatchMethod::FirstCapable)
        );
    }

    #[test]
    fn strict_forbids_fallbacks() {
        let cuda = machine();
        let zero = [0u8; 16];
        match match_device(&zero, "Tesla P100-PCIE-16GB", &cuda, true) {
            Err(Error::FallbackForbidden {
                method: MatchMethod::Name,
                ordinal: 2,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        match match_device(&zero, "Some GPU", &cuda, true) {
            Err(Error::FallbackForbidden {
                method: MatchMethod::FirstCapable,
                ordinal: 0,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cuda_devices_without_uuid_are_matched_by_fallback() {
        let mut cuda = machine();
        cuda[3].uuid = [0; 16];
        // The Vulkan UUID is known but no CUDA UUID equals it: only device 3 is undecided.
        assert_eq!(
            match_device(&uuid(9), "Tesla P100-PCIE-16GB", &cuda, false).unwrap(),
            (3, MatchMethod::Name)
        );
        // Device 3 is not capable and names differ: nothing.
        assert!(matches!(
            match_device(&uuid(9), "Other", &cuda, false),
            Err(Error::NoMatch { .. })
        ));
        cuda[1].uuid = [0; 16];
        assert_eq!(
            match_device(&uuid(9), "Other", &cuda, false).unwrap(),
            (1, MatchMethod::FirstCapable)
        );
    }

    #[test]
    fn cpu_vulkan_device_matches_nothing() {
        let cuda = machine();
        let llvmpipe_uuid = *b"llvmpipe-uuid-01";
        for strict in [false, true] {
            match match_device(
                &llvmpipe_uuid,
                "llvmpipe (LLVM 15.0.6, 256 bits)",
                &cuda,
                strict,
            ) {
                Err(Error::NoMatch { uuid, name }) => {
                    assert_eq!(uuid, llvmpipe_uuid);
                    assert!(name.starts_with("llvmpipe"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn empty_lists_and_names_match_nothing() {
        assert!(matches!(
            match_device(&uuid(1), "NVIDIA H100 80GB HBM3", &[], false),
            Err(Error::NoMatch { .. })
        ));
        assert!(matches!(
            match_device(&[0; 16], "", &[], false),
            Err(Error::NoMatch { .. })
        ));
        // An empty name never matches by name, even an empty CUDA name.
        let cuda = vec![dev(0, "", [0; 16], (6, 1))];
        assert!(matches!(
            match_device(&[0; 16], "", &cuda, false),
            Err(Error::NoMatch { .. })
        ));
    }

    #[test]
    fn duplicate_uuids_pick_the_first() {
        let mut cuda = machine();
        cuda[1].uuid = cuda[0].uuid;
        assert_eq!(
            match_device(&uuid(1), "x", &cuda, true).unwrap(),
            (0, MatchMethod::Uuid)
        );
    }

    fn vk(uuid: [u8; 16], name: &str) -> VulkanCandidate {
        VulkanCandidate {
            uuid,
            name: name.to_owned(),
            cpu: false,
        }
    }

    fn pairs(r: &[Result<(usize, MatchMethod)>]) -> Vec<Option<(usize, MatchMethod)>> {
        r.iter().map(|x| x.as_ref().ok().copied()).collect()
    }

    #[test]
    fn several_gpus_pair_by_uuid_whatever_the_order() {
        let cuda = machine();
        // Vulkan enumerates in another order than CUDA (CUDA_VISIBLE_DEVICES, PCI order).
        let vulkan = vec![
            vk(uuid(4), "Tesla P100-PCIE-16GB"),
            vk(uuid(1), "NVIDIA H100 80GB HBM3"),
            vk(uuid(3), "Tesla P100-PCIE-16GB"),
            vk(uuid(2), "NVIDIA H100 80GB HBM3"),
        ];
        use MatchMethod::Uuid;
        assert_eq!(
            pairs(&match_devices(&vulkan, &cuda, true)),
            vec![
                Some((3, Uuid)),
                Some((0, Uuid)),
                Some((2, Uuid)),
                Some((1, Uuid))
            ]
        );
    }

    #[test]
    fn same_names_without_uuids_get_distinct_devices() {
        let mut cuda = machine();
        for d in &mut cuda {
            d.uuid = [0; 16];
        }
        let zero = [0u8; 16];
        let vulkan = vec![
            vk(zero, "NVIDIA H100 80GB HBM3"),
            vk(zero, "NVIDIA H100 80GB HBM3"),
            vk(zero, "Tesla P100-PCIE-16GB"),
            vk(zero, "NVIDIA H100 80GB HBM3"),
        ];
        use MatchMethod::Name;
        let got = match_devices(&vulkan, &cuda, false);
        assert_eq!(
            pairs(&got)[..3],
            [Some((0, Name)), Some((1, Name)), Some((2, Name))]
        );
        // A third H100 finds both H100s taken and no free device of capability >= 7.
        assert!(matches!(got[3], Err(Error::NoMatch { .. })), "{got:?}");
        // Strict: every pairing here is a fallback.
        assert!(match_devices(&vulkan, &cuda, true)
            .iter()
            .all(|r| matches!(r, Err(Error::FallbackForbidden { .. }))));
    }

    #[test]
    fn a_uuid_match_is_never_taken_by_an_earlier_fallback() {
        let mut cuda = machine();
        cuda[1].uuid = [0; 16];
        let vulkan = vec![
            // Unknown UUID first: its name fallback must not take device 0, which the second
            // Vulkan device owns by UUID.
            vk([0; 16], "NVIDIA H100 80GB HBM3"),
            vk(uuid(1), "NVIDIA H100 80GB HBM3"),
        ];
        use MatchMethod::{Name, Uuid};
        assert_eq!(
            pairs(&match_devices(&vulkan, &cuda, false)),
            vec![Some((1, Name)), Some((0, Uuid))]
        );
    }

    #[test]
    fn a_cpu_device_among_gpus_pairs_with_nothing() {
        let cuda = machine();
        let vulkan = vec![
            vk(uuid(2), "NVIDIA H100 80GB HBM3"),
            VulkanCandidate {
                uuid: [0; 16],
                name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
                cpu: true,
            },
            vk(uuid(1), "NVIDIA H100 80GB HBM3"),
        ];
        let got = match_devices(&vulkan, &cuda, false);
        assert_eq!(got[0].as_ref().unwrap(), &(1, MatchMethod::Uuid));
        assert!(matches!(got[1], Err(Error::NoMatch { .. })));
        assert_eq!(got[2].as_ref().unwrap(), &(0, MatchMethod::Uuid));
        assert!(match_devices(&[], &cuda, false).is_empty());
    }
}
