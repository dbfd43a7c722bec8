//! Wait and signal points for daemon-executed buffer operations.

use std::time::Duration;

use gpushare_proto::v1;

/// The semaphore points a daemon-executed operation waits for before it runs and signals after
/// it completes (`v1::Sync`). `Sync::default()` waits for nothing and signals nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sync {
    /// `(semaphore id, value)`: the operation starts once every semaphore reached its value.
    pub wait: Vec<(String, u64)>,
    /// `(semaphore id, value)`: signalled once the operation completed; each value must exceed
    /// the semaphore's value at that time.
    pub signal: Vec<(String, u64)>,
    /// Upper bound on waiting for the wait points. `None` means the daemon's
    /// `max_wait_timeout_ms`; durations are rounded up to whole milliseconds (at least 1 ms, as
    /// 0 on the wire means "the daemon's maximum") and saturate at `u32::MAX` ms.
    pub timeout: Option<Duration>,
}

impl Sync {
    /// No wait points, no signal points, the daemon's default timeout.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds a wait point.
    pub fn wait(mut self, semaphore: impl Into<String>, value: u64) -> Self {
        self.wait.push((semaphore.into(), value));
        self
    }

    /// Adds a signal point.
    pub fn signal(mut self, semaphore: impl Into<String>, value: u64) -> Self {
        self.signal.push((semaphore.into(), value));
        self
    }

    /// Sets the timeout for the wait points.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The wire form.
    pub fn to_proto(&self) -> v1::Sync {
        let points = |list: &[(String, u64)]| {
            list.iter()
                .map(|(id, value)| v1::SemaphorePoint {
                    semaphore_id: id.clone(),
                    value: *value,
                })
                .collect()
        };
        v1::Sync {
            wait: points(&self.wait),
            signal: points(&self.signal),
            timeout_ms: self.timeout.map_or(0, |t| duration_to_ms(t).max(1)),
        }
    }
}

impl From<&Sync> for v1::Sync {
    fn from(sync: &Sync) -> Self {
        sync.to_proto()
    }
}

/// Whole milliseconds, rounded up, saturating at `u32::MAX`.
pub(crate) fn duration_to_ms(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_and_saturate() {
        assert_eq!(duration_to_ms(Duration::ZERO), 0);
        assert_eq!(duration_to_ms(Duration::from_micros(1)), 1);
        assert_eq!(duration_to_ms(Duration::from_millis(250)), 250);
        assert_eq!(duration_to_ms(Duration::from_micros(250_001)), 251);
        assert_eq!(duration_to_ms(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn to_proto() {
        let s = Sync::none()
            .wait("a", 1)
            .signal("b", 2)
            .signal("c", 3)
            .timeout(Duration::ZERO);
        let p = s.to_proto();
        assert_eq!(p.wait.len(), 1);
        assert_eq!(p.wait[0].semaphore_id, "a");
        assert_eq!(p.signal[1].value, 3);
        // Zero would mean "the daemon's maximum": the shortest real timeout is 1 ms.
        assert_eq!(p.timeout_ms, 1);
        assert_eq!(Sync::default().to_proto().timeout_ms, 0);
    }
}
