//! Giving back the pages of code that only start-up used.
//!
//! The kernel maps the pages of an executable into a process as the process runs them, and
//! it maps a whole 64 KiB block around each page it faults in ("fault-around"). Start-up —
//! parsing flags and resources, building the components, connecting to their services,
//! setting up TLS and the servers — runs code spread over most of the 35 MiB `tandem`
//! executable, so a sidecar that has just started has about 25 MiB of it mapped, and keeps it
//! mapped while idle, although serving requests runs a much smaller part.
//!
//! Those pages are clean copies of the file. Once start-up is over, the sidecar tells the
//! kernel (`madvise(MADV_DONTNEED)`) that it no longer needs the pages of its read-only file
//! mappings: the executable's code and read-only data, and those of the shared libraries. The
//! pages stay in the page cache, shared with every process running the same files; code that
//! runs again is mapped back in by a minor page fault, without reading the disk. Mappings that
//! hold private copies (relocated data, pages a debugger wrote to) and writable mappings are
//! left alone: dropping their pages would lose what was written to them.

/// How long after readiness the pages are given back: start-up work continues for a moment
/// after the sidecar reports ready (the first probes of the app, background connections), and
/// code it runs again would only be faulted back in.
pub(crate) const RELEASE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// A mapping whose pages can be given back: `len` bytes at `start`, `rss_kib` of them mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Region {
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) rss_kib: u64,
}

/// The mappings in `/proc/self/smaps` text whose pages are clean copies of a file: private,
/// not writable, backed by a file (an inode), with pages mapped and none of them private
/// copies (`Anonymous: 0 kB`). A read-only mapping cannot gain private copies later, so
/// dropping its pages loses nothing.
pub(crate) fn releasable(smaps: &str) -> Vec<Region> {
    struct Candidate {
        region: Region,
        eligible: bool,
        anonymous_kib: Option<u64>,
    }
    let mut found = Vec::new();
    let mut current: Option<Candidate> = None;
    let finish = |c: Option<Candidate>, found: &mut Vec<Region>| {
        if let Some(c) = c
            && c.eligible
            && c.anonymous_kib == Some(0)
            && c.region.rss_kib > 0
        {
            found.push(c.region);
        }
    };
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            finish(current.take(), &mut found);
            current = Some(header);
            continue;
        }
        let Some(c) = current.as_mut() else { continue };
        let kib = |rest: &str| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        };
        if let Some(rest) = line.strip_prefix("Rss:") {
            c.region.rss_kib = kib(rest).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Anonymous:") {
            c.anonymous_kib = kib(rest);
        }
    }
    finish(current.take(), &mut found);

    /// `start-end perms offset dev inode [path]`; `None` for the `Key: value` lines.
    fn mapping_header(line: &str) -> Option<Candidate> {
        let mut fields = line.split_ascii_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        let perms = fields.next()?;
        let _offset = fields.next()?;
        let _dev = fields.next()?;
        let inode: u64 = fields.next()?.parse().ok()?;
        let path = fields.next().unwrap_or("");
        let perms = perms.as_bytes();
        let eligible = perms.len() == 4
            && perms[0] == b'r'
            && perms[1] == b'-'
            && perms[3] == b'p'
            && inode != 0
            && path.starts_with('/')
            && end > start;
        Some(Candidate {
            region: Region {
                start,
                len: end.saturating_sub(start),
                rss_kib: 0,
            },
            eligible,
            anonymous_kib: None,
        })
    }
    found
}

/// Gives back the pages of this process's read-only file mappings (see the module comment).
/// Returns how many KiB were mapped in the mappings given back.
#[cfg(target_os = "linux")]
pub(crate) fn release_start_up_pages() -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for region in releasable(&smaps) {
        if dont_need(&region) {
            released += region.rss_kib;
        }
    }
    Ok(released)
}

/// Elsewhere the kernel's page accounting differs; nothing is done.
#[cfg(not(target_os = "linux"))]
pub(crate) fn release_start_up_pages() -> std::io::Result<u64> {
    Ok(0)
}

/// `madvise(MADV_DONTNEED)` on one region listed by [`releasable`].
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn dont_need(region: &Region) -> bool {
    // SAFETY: the region is a whole mapping of this process, read-only, private and backed by
    // a file, holding no private (anonymous) pages; a read-only mapping cannot gain any since
    // nothing in Tandem changes mapping protections. On such a mapping MADV_DONTNEED only
    // unmaps page-cache pages, as the kernel itself does when it reclaims them under memory
    // pressure: later reads fault the same file contents back in, so no memory that Rust code
    // refers to changes. The call does not dereference the pointer.
    let rc = unsafe {
        libc::madvise(
            region.start as *mut libc::c_void,
            region.len,
            libc::MADV_DONTNEED,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c09cf000 r--p 00000000 fe:00 1234                       /usr/bin/tandem
Size:              10044 kB
Rss:                4000 kB
Anonymous:             0 kB
55d0c09d0000-55d0c2bd3000 r-xp 009cf000 fe:00 1234                       /usr/bin/tandem
Size:              34828 kB
Rss:               20000 kB
Anonymous:             0 kB
55d0c2bd4000-55d0c2d11000 r--p 02bd2000 fe:00 1234                       /usr/bin/tandem
Size:               1268 kB
Rss:                1268 kB
Anonymous:          1268 kB
55d0c2d11000-55d0c2d1c000 rw-p 02d0e000 fe:00 1234                       /usr/bin/tandem
Size:                 44 kB
Rss:                  44 kB
Anonymous:            44 kB
55d0c3000000-55d0c3063000 rw-p 00000000 00:00 0                          [heap]
Size:                396 kB
Rss:                 260 kB
Anonymous:           260 kB
7f0000000000-7f0000100000 r-xp 00028000 fe:00 99                         /usr/lib/libc.so.6
Size:               1024 kB
Rss:                1008 kB
Anonymous:             0 kB
7f0000200000-7f0000210000 r--p 00000000 fe:00 100                        /usr/lib/libz.so.1
Size:                 64 kB
Rss:                   0 kB
Anonymous:             0 kB
7f0000300000-7f0000308000 rw-s 00000000 fe:00 101                        /tmp/nr.db-shm
Size:                 32 kB
Rss:                  32 kB
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Rss:                   4 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        let found = releasable(SMAPS);
        assert_eq!(
            found,
            vec![
                Region {
                    start: 0x55d0c0000000,
                    len: 0x9cf000,
                    rss_kib: 4000
                },
                Region {
                    start: 0x55d0c09d0000,
                    len: 0x2203000,
                    rss_kib: 20000
                },
                Region {
                    start: 0x7f0000000000,
                    len: 0x100000,
                    rss_kib: 1008
                },
            ],
            "relocated read-only data, writable, shared, anonymous, unmapped and vdso mappings stay"
        );
    }

    #[test]
    fn a_mapping_without_an_anonymous_line_is_left_alone() {
        let smaps = "\
55d0c09d0000-55d0c2bd3000 r-xp 009cf000 fe:00 1234                       /usr/bin/tandem
Size:              34828 kB
Rss:               20000 kB
";
        assert!(releasable(smaps).is_empty());
    }

    /// Gives back this test process's own code and read-only data, then keeps running code
    /// and reading constant data: everything is faulted back in from the files.
    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_keeps_the_process_running() {
        let before = std::fs::read_to_string("/proc/self/smaps").unwrap();
        assert!(
            !releasable(&before).is_empty(),
            "the test binary has read-only file mappings"
        );
        let released = release_start_up_pages().unwrap();
        assert!(released > 0, "some pages were mapped before");
        let text: String = (0..1000).map(|i| format!("{i:x}")).collect();
        assert!(text.starts_with("0123456789abcdef10"));
        let parsed: serde_json::Value = serde_json::from_str(r#"{"still":["working"]}"#).unwrap();
        assert_eq!(parsed["still"][0], "working");
    }
}
