//! Range and alignment checks for transfer operations: pure logic, run before anything is
//! recorded, unit-tested without a driver.

use super::error::{Error, Result};

/// `offset..offset + len` must be non-empty, not overflow, and lie within `0..size`.
pub(crate) fn check_range(what: &'static str, offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if len > 0 && end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            what,
            offset,
            len,
            size,
        }),
    }
}

/// `value` must be a multiple of `alignment` (a power of two).
pub(crate) fn check_aligned(what: &'static str, value: u64, alignment: u64) -> Result<()> {
    if value % alignment == 0 {
        Ok(())
    } else {
        Err(Error::Misaligned {
            what,
            value,
            alignment,
        })
    }
}

/// Whether `a..a + len` and `b..b + len` overlap (both ranges already checked).
pub(crate) fn overlaps(a: u64, b: u64, len: u64) -> bool {
    a < b.saturating_add(len) && b < a.saturating_add(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(check_range("r", 0, 16, 16).is_ok());
        assert!(check_range("r", 15, 1, 16).is_ok());
        assert!(matches!(
            check_range("r", 16, 1, 16),
            Err(Error::OutOfRange {
                offset: 16,
                len: 1,
                size: 16,
                ..
            })
        ));
        assert!(check_range("r", 0, 0, 16).is_err());
        assert!(check_range("r", u64::MAX, 2, u64::MAX).is_err());
        assert!(check_range("r", 1, u64::MAX, u64::MAX).is_err());
    }

    #[test]
    fn alignment_and_overlap() {
        assert!(check_aligned("a", 8, 4).is_ok());
        assert!(matches!(
            check_aligned("a", 6, 4),
            Err(Error::Misaligned {
                value: 6,
                alignment: 4,
                ..
            })
        ));
        assert!(overlaps(0, 3, 4));
        assert!(overlaps(3, 0, 4));
        assert!(!overlaps(0, 4, 4));
        assert!(!overlaps(8, 0, 8));
    }
}
