//! The poller: one thread that [`scan`]s whenever the daemon says something changed (a host
//! signal, a wait added, a semaphore ended), and on a timer while waits on exportable
//! semaphores are pending, tightly while they are young and less often as they age
//! ([`poll_interval`]). Waits that asked to spin are read continuously while young.

use std::time::Duration;

use super::{deliver, scan, Shared, Wakeup};

/// How long the poller sleeps when only semaphores that never leave the daemon are pending:
/// every change of theirs wakes it ([`super::WaitService::notify`]), so this only bounds what a
/// missed wake-up could cost.
pub(crate) const UNEXPORTED_BACKSTOP: Duration = Duration::from_secs(1);

/// How the poller stands behind the driver waits ([`poll_interval`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backing {
    /// No driver waits: the poller alone notices values.
    Alone,
    /// Driver-wait threads run: the poller backstops them.
    Driver,
    /// Driver waits run and have been noticing values before the poller
    /// ([`super::TRUSTED`]).
    Trusted,
}

/// How long the poller sleeps, given the age of its youngest pending wait or watched
/// value on an external semaphore, and how it stands behind the driver waits.
///
/// Reading a counter costs well under a microsecond; what polling costs is the poller's
/// wake-ups (about 10 µs of CPU each on the H100 machine). Young waits, a pipeline's next
/// frames, get a 20-100 µs cadence; a wait that has gone on for a second is not one whose
/// microseconds matter, and is read every millisecond, then every 2 ms (about 0.2% of a
/// core on its own). Behind running driver waits, which wake within microseconds where they
/// work, the poller only bounds the damage of a driver that wakes late: 5 ms from one
/// second on. Behind driver waits that have been noticing values first, a tenth of the
/// wake-ups at any age.
pub(crate) fn poll_interval(youngest: Duration, backing: Backing) -> Duration {
    let ms = Duration::from_millis;
    let alone = match youngest {
        age if age < ms(2) => Duration::from_micros(20),
        age if age < ms(20) => Duration::from_micros(50),
        age if age < ms(200) => Duration::from_micros(100),
        age if age < ms(1000) => Duration::from_micros(500),
        age if age < ms(10_000) => ms(1),
        _ => ms(2),
    };
    match backing {
        Backing::Alone => alone,
        Backing::Driver if youngest >= ms(1000) => ms(5),
        Backing::Driver => alone,
        Backing::Trusted => alone * 10,
    }
}

/// One pause between continuous reads while a wait spins: a `sched_yield`, which lets another
/// thread on this CPU run. No `PAUSE` loop: on a VM, a vCPU that loops on `PAUSE` triggers
/// pause-loop exiting, and a busy host may then run something else on its physical CPU.
fn spin_pause() {
    std::thread::yield_now();
}

/// The poller thread's body, until shutdown (which ends every wait and watch with UNAVAILABLE).
pub(super) fn poll_loop(shared: &Shared) {
    // The default 50 µs timer slack stays: a 20 µs sleep lasts ~70 µs. With a 1 µs slack the
    // H100 run at 76393d4 spent 680 µs of daemon CPU per 1-2 ms wait (300 µs before) without a
    // measurable gain, the gRPC reply being most of the latency (bench/README.md).
    let mut direct = Vec::new();
    let mut spinning = false;
    let mut st = shared.lock();
    loop {
        if st.shutdown {
            for (_, w) in st.sems.drain() {
                super::end_all(w, super::End::ShuttingDown);
            }
            return;
        }
        if st.sems.is_empty() {
            st.kick = false;
            st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        let by = if st.kick {
            Wakeup::Notify
        } else if spinning {
            Wakeup::Spin
        } else {
            Wakeup::Poll
        };
        st.kick = false;
        let scanned = scan(shared, &mut st, by, &mut direct);
        spinning = scanned.spin;
        if !direct.is_empty() || spinning {
            drop(st);
            deliver(&mut direct);
            if spinning {
                spin_pause();
            }
            st = shared.lock();
            continue;
        }
        if st.kick {
            continue;
        }
        let interval = match scanned.youngest {
            Some(age) => poll_interval(age, shared.backing()),
            None => UNEXPORTED_BACKSTOP,
        };
        st = shared
            .wake
            .wait_timeout_while(st, interval, |s| !s.kick && !s.shutdown)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_backs_off_with_age() {
        let ms = Duration::from_millis;
        for backing in [Backing::Alone, Backing::Driver, Backing::Trusted] {
            let young = poll_interval(Duration::from_micros(100), backing);
            let old = poll_interval(Duration::from_secs(60), backing);
            assert!(young < old, "{backing:?}");
            assert!(old <= ms(20), "{backing:?}");
            let mut last = Duration::ZERO;
            for age in [0, 2, 20, 200, 1000, 2000, 10_000, 100_000] {
                let i = poll_interval(ms(age), backing);
                assert!(i >= last, "{backing:?}: interval shrank at {age} ms");
                last = i;
            }
        }
        // Young waits keep their cadence unless the driver waits proved faster.
        for backing in [Backing::Alone, Backing::Driver] {
            assert_eq!(poll_interval(ms(1), backing), Duration::from_micros(20));
            assert_eq!(poll_interval(ms(100), backing), Duration::from_micros(100));
        }
        assert!(poll_interval(ms(1), Backing::Trusted) > poll_interval(ms(1), Backing::Alone));
        // A wait pending for minutes costs at most 500 wake-ups a second, 200 behind driver
        // waits.
        assert!(poll_interval(ms(60_000), Backing::Alone) >= ms(2));
        assert!(poll_interval(ms(60_000), Backing::Driver) >= ms(5));
    }
}
