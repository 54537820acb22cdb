//! The sidecar's CPU scheduling policy.
//!
//! On Linux the sidecar runs under `SCHED_BATCH` rather than the default policy. A sidecar is
//! woken by every packet its app and the other sidecars send it. Under the default policy a
//! woken thread may preempt the task running on its CPU at once, often the app or its client
//! in the middle of sending more: under load the work then splits into batches of one or two
//! requests, each paying for a wake-up, a switch and a system call of its own. Under
//! `SCHED_BATCH` a woken sidecar does not preempt: it runs at once on an idle CPU, and
//! otherwise when the running task blocks or its time slice ends, by which time more requests
//! are waiting and one turn of the sidecar's loop serves them all. On an idle machine nothing
//! changes. The nice value stays, and no privilege is needed.
//!
//! `TANDEM_SCHED_BATCH=0` (or `false`, `no`, `off`) keeps the policy the sidecar was started
//! with, and so does any policy other than the default one (set with `chrt`, say): the user's
//! choice wins. Every thread the sidecar starts afterwards inherits the policy of the thread
//! that starts it, so [`tune`] runs first, before any other thread exists.

/// What [`tune`] did.
#[derive(Debug)]
pub(crate) enum Policy {
    /// The sidecar now runs under `SCHED_BATCH`.
    Batch,
    /// `TANDEM_SCHED_BATCH` turned it off.
    TurnedOff,
    /// The sidecar was started under a policy other than the default one: it is kept.
    Kept,
    /// Not on this platform.
    #[cfg(not(target_os = "linux"))]
    Unsupported,
    /// The system refused.
    Refused(std::io::Error),
}

/// Whether `TANDEM_SCHED_BATCH` (`setting`) leaves the batch policy on: unset or anything but
/// `0`, `false`, `no` and `off`.
pub(crate) fn wanted(setting: Option<&str>) -> bool {
    setting.is_none_or(|v| {
        let v = v.trim().to_ascii_lowercase();
        !matches!(v.as_str(), "0" | "false" | "no" | "off")
    })
}

/// Moves the calling thread, and so every thread it starts, to `SCHED_BATCH` (see the module
/// comment). Called first in the sidecar's `main`.
pub(crate) fn tune() -> Policy {
    if !wanted(std::env::var("TANDEM_SCHED_BATCH").ok().as_deref()) {
        return Policy::TurnedOff;
    }
    batch_this_thread()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn batch_this_thread() -> Policy {
    // SAFETY: `sched_getscheduler` only reads the calling thread's policy (0: this thread).
    let now = unsafe { libc::sched_getscheduler(0) };
    if now < 0 {
        return Policy::Refused(std::io::Error::last_os_error());
    }
    if now != libc::SCHED_OTHER {
        return Policy::Kept;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call, which reads it and
    // changes the calling thread's policy only. `SCHED_BATCH` takes priority 0 and needs no
    // privilege; the nice value is kept.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        return Policy::Refused(std::io::Error::last_os_error());
    }
    Policy::Batch
}

#[cfg(not(target_os = "linux"))]
fn batch_this_thread() -> Policy {
    Policy::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_turns_it_off_only_when_it_says_so() {
        assert!(wanted(None));
        assert!(wanted(Some("1")));
        assert!(wanted(Some("true")));
        assert!(wanted(Some("")));
        for off in ["0", "false", "FALSE", " no ", "off", "Off"] {
            assert!(!wanted(Some(off)), "{off:?} should turn it off");
        }
    }

    /// On a thread of its own (the policy is per thread): the thread moves to `SCHED_BATCH`,
    /// a thread it starts inherits it, and a second call keeps what is now set.
    #[cfg(target_os = "linux")]
    #[test]
    #[allow(unsafe_code)]
    fn the_thread_and_the_threads_it_starts_run_batch() {
        // SAFETY: `sched_getscheduler` only reads the calling thread's policy.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        std::thread::spawn(move || {
            assert_eq!(policy(), libc::SCHED_OTHER);
            assert!(matches!(batch_this_thread(), Policy::Batch));
            assert_eq!(policy(), libc::SCHED_BATCH);
            let child = std::thread::spawn(policy).join().unwrap();
            assert_eq!(child, libc::SCHED_BATCH);
            assert!(matches!(batch_this_thread(), Policy::Kept));
        })
        .join()
        .unwrap();
        assert_eq!(
            policy(),
            libc::SCHED_OTHER,
            "the test's own thread is untouched"
        );
    }
}
