//! Random, unguessable identifiers: resource ids (`buf-…`, `sem-…`), session ids and tickets,
//! each 128 bits from the OS's random source.

/// Bytes of randomness in every id and ticket.
pub(crate) const ID_BYTES: usize = 16;

/// 16 random bytes. The OS random source failing is unrecoverable for a security daemon:
/// ids would become guessable, so the process aborts rather than continue.
pub(crate) fn random16() -> [u8; ID_BYTES] {
    let mut bytes = [0u8; ID_BYTES];
    if let Err(e) = getrandom::fill(&mut bytes) {
        tracing::error!(error = %e, "the OS random source failed");
        std::process::abort();
    }
    bytes
}

/// A new id: `prefix` + `-` + 32 lowercase hex digits.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(random16()))
}

/// Whether `id` has the shape `new_id(prefix)` produces.
pub(crate) fn is_well_formed(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            hex.len() == 2 * ID_BYTES
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// `id` cut to a length fit for an error message.
pub(crate) fn shown(id: &str) -> String {
    id.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_and_distinct() {
        let a = new_id("buf");
        let b = new_id("buf");
        assert_ne!(a, b);
        assert!(is_well_formed(&a, "buf"));
        assert!(!is_well_formed(&a, "sem"));
        assert!(!is_well_formed("buf-", "buf"));
        assert!(!is_well_formed(&a.to_uppercase(), "buf"));
        assert!(!is_well_formed(&format!("{a}0"), "buf"));
    }
}
