//! Who may do what to a resource.
//!
//! A resource is *reached* (used) by its owner uid, by the uids and groups (primary or
//! supplementary: [`Peer::in_group`]) it was granted to, and by the sessions that hold a
//! reference to it (a capability token redeemed with Open puts one there). The admin group
//! *sees* (lists, describes) and releases every resource but uses none that is not its own.
//! Anybody else's lookup reads exactly like an unknown id (NOT_FOUND); a caller that reaches a
//! resource but asks for an owner's operation gets PERMISSION_DENIED.
//!
//! Not here: the references themselves (`registry`, `session`).

use std::collections::{BTreeSet, HashSet};

use crate::error::{Error, Result};
use crate::ids;
use crate::peer::Peer;

/// Who is calling: from the connection's peer credentials, plus the session header.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The connection's peer: its uid, groups and pid.
    pub(crate) peer: Peer,
    /// The session named by the call, checked live and the caller's.
    pub(crate) session: Option<String>,
    /// Whether the caller is in the admin group (`admin_gid`, matched on the primary gid and
    /// the supplementary groups).
    pub(crate) admin: bool,
}

impl Caller {
    /// The caller's uid.
    pub(crate) fn uid(&self) -> u32 {
        self.peer.uid
    }

    /// A caller known only by uid, with no session and no group (tests).
    #[cfg(test)]
    pub(crate) fn of_uid(uid: u32) -> Self {
        Self {
            peer: Peer {
                uid,
                gid: u32::MAX,
                pid: 0,
                groups: std::sync::Arc::from([]),
            },
            session: None,
            admin: false,
        }
    }

    /// Whether the caller is a member of `gid` (primary or supplementary).
    pub(crate) fn in_group(&self, gid: u32) -> bool {
        self.peer.in_group(gid)
    }
}

/// Whom a grant names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grantee {
    /// A uid.
    Uid(u32),
    /// A gid: its members, by primary gid or supplementary group.
    Gid(u32),
}

/// What Open names.
#[derive(Debug, Clone)]
pub(crate) enum OpenTarget {
    /// An id the caller reaches.
    Id(String),
    /// A capability token.
    Token(Vec<u8>),
    /// An owner's resource by name.
    Named {
        /// The owner.
        owner_uid: u32,
        /// The name.
        name: String,
    },
}

/// Most uid grants, gid grants, or tokens, each, per resource.
pub(crate) const MAX_GRANTS: usize = 64;

/// A capability token: 16 random bytes.
pub(crate) type Token = [u8; ids::ID_BYTES];

/// One resource's grants and capability tokens.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
    tokens: Vec<Token>,
}

impl Grants {
    /// Grants (`grant`) or revokes the use to `who`; at most [`MAX_GRANTS`] of each kind.
    pub(crate) fn set(&mut self, who: Grantee, grant: bool) -> Result<()> {
        let (set, n) = match who {
            Grantee::Uid(u) => (&mut self.uids, u),
            Grantee::Gid(g) => (&mut self.gids, g),
        };
        if !grant {
            set.remove(&n);
            return Ok(());
        }
        if set.len() >= MAX_GRANTS && !set.contains(&n) {
            return Err(Error::TooLarge {
                what: "grants of one kind per resource",
                value: set.len() as u64 + 1,
                limit: MAX_GRANTS as u64,
            });
        }
        set.insert(n);
        Ok(())
    }

    /// Mints a new capability token; at most [`MAX_GRANTS`].
    pub(crate) fn mint(&mut self) -> Result<Token> {
        if self.tokens.len() >= MAX_GRANTS {
            return Err(Error::TooLarge {
                what: "tokens per resource",
                value: self.tokens.len() as u64 + 1,
                limit: MAX_GRANTS as u64,
            });
        }
        let token = ids::random16();
        self.tokens.push(token);
        Ok(token)
    }

    /// Takes every token away (to unindex them).
    pub(crate) fn take_tokens(&mut self) -> Vec<Token> {
        std::mem::take(&mut self.tokens)
    }

    /// The tokens minted (to unindex them when the resource goes).
    pub(crate) fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The uids granted, ascending.
    pub(crate) fn uids(&self) -> Vec<u32> {
        self.uids.iter().copied().collect()
    }

    /// The gids granted, ascending.
    pub(crate) fn gids(&self) -> Vec<u32> {
        self.gids.iter().copied().collect()
    }
}

/// Whether `caller` may use a resource of `owner` with `grants`, held by the sessions
/// `holders` (see the module docs). The admin group does not use other uids' resources.
pub(crate) fn reaches(
    owner: u32,
    grants: &Grants,
    holders: &HashSet<String>,
    caller: &Caller,
) -> bool {
    owner == caller.uid()
        || grants.uids.contains(&caller.uid())
        || grants.gids.iter().any(|g| caller.in_group(*g))
        || caller.session.as_ref().is_some_and(|s| holders.contains(s))
}

/// Whether `caller` may see (list, describe) and release it: whoever reaches it, and the admin
/// group.
pub(crate) fn sees(caller: &Caller, reaches: impl FnOnce() -> bool) -> bool {
    caller.admin || reaches()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_grantees_holders_and_admins() {
        let mut g = Grants::default();
        let holders: HashSet<String> = ["ses-a".to_owned()].into();
        let owner = Caller::of_uid(1000);
        let other = Caller::of_uid(2000);
        assert!(reaches(1000, &g, &holders, &owner));
        assert!(!reaches(1000, &g, &holders, &other));
        g.set(Grantee::Uid(2000), true).unwrap();
        assert!(reaches(1000, &g, &holders, &other));
        g.set(Grantee::Uid(2000), false).unwrap();
        let holder = Caller {
            session: Some("ses-a".into()),
            ..Caller::of_uid(3000)
        };
        assert!(reaches(1000, &g, &holders, &holder));
        let admin = Caller {
            admin: true,
            ..Caller::of_uid(4000)
        };
        assert!(!reaches(1000, &g, &holders, &admin));
        assert!(sees(&admin, || reaches(1000, &g, &holders, &admin)));
        for n in 0..MAX_GRANTS as u32 {
            g.set(Grantee::Gid(n), true).unwrap();
        }
        assert!(g.set(Grantee::Gid(9999), true).is_err());
        assert!(
            g.set(Grantee::Gid(0), true).is_ok(),
            "granting again is idempotent"
        );
    }
}
