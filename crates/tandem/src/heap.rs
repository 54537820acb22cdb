//! How the C library's allocator gives memory back to the kernel.
//!
//! glibc's `malloc` returns the free space at the top of its heap to the kernel (`brk`) once
//! that space passes a threshold, 128 KiB at first. It raises the threshold only after the
//! process frees a block it had mapped on its own (one of 128 KiB or more), which a sidecar
//! serving small requests may never do. Under load the sidecar's buffers (16 KiB per read
//! buffer, freed whenever the last request or answer sharing one is sent) keep the top of the
//! heap going up and down across that threshold: the heap shrinks, then grows again, and
//! every page it grows by is faulted in and zeroed by the kernel once more. In a closed loop
//! of service invocations the callee sidecar made one `brk` call for every five to nine calls,
//! and about 7 % of its CPU time went to `brk` and the page faults after it.
//!
//! At start-up the sidecar fixes the thresholds where glibc's own adjustment would take them
//! after one such free: blocks of up to 1 MiB come from the heap, and the heap keeps up to
//! 2 MiB of free space at its top. At most that much memory stays resident after a burst.
//! What start-up freed is given back once, a moment after readiness ([`give_back`]).
//! Settings the user gave glibc (`GLIBC_TUNABLES`, `MALLOC_TRIM_THRESHOLD_`,
//! `MALLOC_MMAP_THRESHOLD_`) win: then nothing is changed. Other C libraries are left alone.

/// Blocks at least this large are mapped on their own rather than taken from the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 1 << 20;
/// Free space at the top of the heap past this is given back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 2 << 20;

/// Whether the thresholds are Tandem's to set: not when the user's environment sets either
/// of them. `var` looks an environment variable up.
pub(crate) fn ours_to_set(var: impl Fn(&str) -> Option<String>) -> bool {
    if var("MALLOC_TRIM_THRESHOLD_").is_some() || var("MALLOC_MMAP_THRESHOLD_").is_some() {
        return false;
    }
    // `GLIBC_TUNABLES=name=value:name=value`.
    !var("GLIBC_TUNABLES").is_some_and(|tunables| {
        tunables.split(':').any(|t| {
            let name = t.split_once('=').map_or(t, |(name, _)| name).trim();
            name == "glibc.malloc.trim_threshold" || name == "glibc.malloc.mmap_threshold"
        })
    })
}

/// Sets the thresholds (see the module comment) unless the environment already does. Called
/// first thing in `main`, before any other thread exists.
pub(crate) fn tune() {
    if ours_to_set(|name| std::env::var(name).ok()) {
        set_thresholds();
    }
}

/// Gives the heap's free memory back to the kernel: called once after start-up, whose
/// parsing, building and connecting freed more than the heap keeps at its top.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn give_back() {
    // SAFETY: `malloc_trim` only returns free memory of the allocator's own to the kernel,
    // under the allocator's lock; no memory in use moves or changes.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn give_back() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_thresholds() {
    // SAFETY: `mallopt` only changes allocator parameters; it takes the allocator's own lock
    // and dereferences nothing of ours. Both values are within what glibc accepts (its
    // largest mmap threshold on 64-bit targets is 32 MiB). A refusal (0) leaves glibc's
    // defaults, which are correct, only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_users_malloc_settings_win() {
        assert!(ours_to_set(env(&[])));
        assert!(ours_to_set(env(&[("MALLOC_ARENA_MAX", "2")])));
        assert!(ours_to_set(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=2:glibc.rtld.optional_static_tls=512"
        )])));
        assert!(!ours_to_set(env(&[("MALLOC_TRIM_THRESHOLD_", "65536")])));
        assert!(!ours_to_set(env(&[("MALLOC_MMAP_THRESHOLD_", "65536")])));
        assert!(!ours_to_set(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=65536"
        )])));
        assert!(!ours_to_set(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=65536"
        )])));
    }

    /// After tuning, a 512 KiB block comes from the heap instead of a mapping of its own (with
    /// glibc's defaults it would be mapped: 128 KiB and more are).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    #[allow(unsafe_code)]
    fn blocks_under_the_threshold_come_from_the_heap() {
        set_thresholds();
        // SAFETY: `mallinfo2` only reads the allocator's statistics.
        let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
        let before = mapped();
        let block = std::hint::black_box(vec![1u8; 512 << 10]);
        let after = mapped();
        assert!(
            after < before + block.len(),
            "the block was mapped on its own: mapped bytes went from {before} to {after}"
        );
        assert_eq!(block[block.len() - 1], 1);
    }
}
