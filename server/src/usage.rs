//! What resources cost their owner, and the quotas on it (`[quotas]`: buffers, buffer bytes,
//! semaphores and host buffers per uid; references and buffer bytes per session). The registry
//! keeps each uid's [`Usage`] with every insert and removal and asks [`admit_uid`] and
//! [`admit_session`] before it adds one.
//!
//! Not here: counts of calls and streams (`quota`).

use crate::config::Quotas;
use crate::error::Result;
use crate::resource::Object;

/// One uid's live resources, or what one resource adds to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Live buffers (and images).
    pub(crate) buffers: u64,
    /// Live semaphores.
    pub(crate) semaphores: u64,
    /// The buffers' and images' allocation sizes, summed.
    pub(crate) buffer_bytes: u64,
    /// Live host buffers.
    pub(crate) host_buffers: u64,
    /// Their sizes, summed.
    pub(crate) host_buffer_bytes: u64,
}

impl Usage {
    /// What `object` counts for.
    pub(crate) fn of(object: &Object) -> Usage {
        match object {
            Object::Buffer(b) => Usage {
                buffers: 1,
                buffer_bytes: b.allocation_size(),
                ..Usage::default()
            },
            Object::Semaphore(_) => Usage {
                semaphores: 1,
                ..Usage::default()
            },
            Object::HostBuffer(h) => Usage {
                host_buffers: 1,
                host_buffer_bytes: h.size(),
                ..Usage::default()
            },
            // Images count against the buffer quotas.
            Object::Image(i) => Usage {
                buffers: 1,
                buffer_bytes: i.vk().allocation_size(),
                ..Usage::default()
            },
            // Its slots and timelines count for themselves.
            Object::Stream(_) => Usage::default(),
        }
    }

    /// Saturating: estimates come from client input (a size of `u64::MAX` is refused later,
    /// by its own check, not by an overflow here).
    pub(crate) fn add(&mut self, d: &Usage) {
        self.buffers = self.buffers.saturating_add(d.buffers);
        self.semaphores = self.semaphores.saturating_add(d.semaphores);
        self.buffer_bytes = self.buffer_bytes.saturating_add(d.buffer_bytes);
        self.host_buffers = self.host_buffers.saturating_add(d.host_buffers);
        self.host_buffer_bytes = self.host_buffer_bytes.saturating_add(d.host_buffer_bytes);
    }

    /// Takes `d` away (saturating).
    pub(crate) fn sub(&mut self, d: &Usage) {
        self.buffers = self.buffers.saturating_sub(d.buffers);
        self.semaphores = self.semaphores.saturating_sub(d.semaphores);
        self.buffer_bytes = self.buffer_bytes.saturating_sub(d.buffer_bytes);
        self.host_buffers = self.host_buffers.saturating_sub(d.host_buffers);
        self.host_buffer_bytes = self.host_buffer_bytes.saturating_sub(d.host_buffer_bytes);
    }

    /// Whether it counts nothing.
    pub(crate) fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

/// Refuses `add` for `uid`, whose live resources are `current`, past a per-uid quota.
pub(crate) fn admit_uid(q: &Quotas, uid: u32, current: Usage, add: &Usage) -> Result<()> {
    let mut after = current;
    after.add(add);
    let checks = [
        (
            "buffers per uid",
            q.buffers_per_uid,
            after.buffers,
            add.buffers,
        ),
        (
            "buffer bytes per uid",
            q.buffer_bytes_per_uid,
            after.buffer_bytes,
            add.buffer_bytes,
        ),
        (
            "semaphores per uid",
            q.semaphores_per_uid,
            after.semaphores,
            add.semaphores,
        ),
        (
            "host buffers per uid",
            q.host_buffers_per_uid,
            after.host_buffers,
            add.host_buffers,
        ),
        (
            "host buffer bytes per uid",
            q.host_buffer_bytes_per_uid,
            after.host_buffer_bytes,
            add.host_buffer_bytes,
        ),
    ];
    match checks
        .into_iter()
        .find(|&(_, limit, value, counted)| counted > 0 && limit > 0 && value > limit)
    {
        Some((what, limit, _, _)) => {
            Err(crate::quota::refused(what, limit, format!(", uid {uid}")))
        }
        None => Ok(()),
    }
}

/// Refuses one more reference of a session of `uid` that holds `references` already, to a
/// resource that counts for `add`, past `resources_per_session` or `buffer_bytes_per_session`.
/// `held_bytes` sums the buffer bytes the session references; it is called only where that
/// quota is set (default: none).
pub(crate) fn admit_session(
    q: &Quotas,
    uid: u32,
    references: usize,
    held_bytes: impl FnOnce() -> u64,
    add: &Usage,
) -> Result<()> {
    if references as u64 >= q.resources_per_session {
        return Err(crate::quota::refused(
            "resources per session",
            q.resources_per_session,
            format!(", uid {uid}"),
        ));
    }
    if q.buffer_bytes_per_session > 0
        && add.buffer_bytes > 0
        && held_bytes().saturating_add(add.buffer_bytes) > q.buffer_bytes_per_session
    {
        return Err(crate::quota::refused(
            "buffer bytes per session",
            q.buffer_bytes_per_session,
            format!(", uid {uid}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_and_session_quotas_refuse_past_their_limits() {
        let q = Quotas {
            buffers_per_uid: 2,
            resources_per_session: 1,
            buffer_bytes_per_session: 100,
            ..Quotas::default()
        };
        let one = Usage {
            buffers: 1,
            buffer_bytes: 60,
            ..Usage::default()
        };
        assert!(admit_uid(&q, 7, Usage::default(), &one).is_ok());
        assert!(admit_uid(&q, 7, one, &one).is_ok());
        let mut two = one;
        two.add(&one);
        let e = admit_uid(&q, 7, two, &one).unwrap_err();
        assert!(
            e.to_string().contains("buffers per uid (limit 2, uid 7)"),
            "{e}"
        );
        // A semaphore is not a buffer.
        let sem = Usage {
            semaphores: 1,
            ..Usage::default()
        };
        assert!(admit_uid(&q, 7, two, &sem).is_ok());
        assert!(admit_session(&q, 7, 0, || 0, &one).is_ok());
        assert!(admit_session(&q, 7, 1, || 0, &one).is_err());
        let q = Quotas {
            resources_per_session: 10,
            ..q
        };
        let e = admit_session(&q, 7, 1, || 60, &one).unwrap_err();
        assert!(e.to_string().contains("buffer bytes per session"), "{e}");
        two.sub(&one);
        two.sub(&one);
        assert!(two.is_zero());
    }
}
