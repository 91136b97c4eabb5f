//! Giving back the C heap's free memory after models load or unload.
//!
//! ONNX Runtime (and libstdc++, and C plugins) allocate through the C library's `malloc`, not
//! the server's allocator. Making a session allocates and frees much more than the session
//! keeps (the graph before and during optimisation), and glibc's `malloc` keeps most of what was
//! freed: all-MiniLM-L6-v2 left the server at 135-170 MiB of RSS from one start to the next,
//! depending on where the last allocations fell. `malloc_trim(0)` returns every free page of
//! every arena (`madvise`), whatever its place in the heap: 168 -> 135 MiB for that model, and
//! after serving requests and unloading it the server is at 50 MiB instead of 122 (its
//! session's memory goes back instead of waiting for reuse).

/// Returns the C heap's free pages to the system (glibc on Linux; elsewhere nothing). Called
/// once after a manifest's models are loaded, after models are unloaded or reloaded, and by the
/// last worker thread of a closed scheduler once it let go of the model's instances; never on
/// the request path. It holds each malloc arena's lock while it walks that arena (a few
/// milliseconds at most), so allocations by other models' C code may wait that long.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointer and only releases pages that glibc's malloc
        // holds free; glibc serialises it with every other malloc call (arena locks).
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// This process's resident set, in bytes.
    fn rss() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    #[test]
    #[allow(unsafe_code)]
    fn free_memory_inside_the_c_heap_goes_back() {
        // 64 MiB in small blocks (malloc's heap, not mmap), touched; all but the last freed, so
        // that malloc cannot give the memory back by moving the heap's end.
        const BLOCKS: usize = 256 * 1024;
        const SIZE: usize = 256;
        // SAFETY: blocks from malloc, written within their size, each freed once.
        let blocks: Vec<*mut u8> = (0..BLOCKS)
            .map(|_| unsafe {
                let p = libc::malloc(SIZE).cast::<u8>();
                assert!(!p.is_null());
                std::ptr::write_bytes(p, 1, SIZE);
                p
            })
            .collect();
        // Measured before the frees: another test's trim may run while they happen.
        let held = rss();
        for &p in &blocks[..BLOCKS - 1] {
            unsafe { libc::free(p.cast()) };
        }
        release_free_memory();
        let after = rss();
        unsafe { libc::free(blocks[BLOCKS - 1].cast()) };
        // Other tests run meanwhile and allocate too: half of the 64 MiB is plenty to tell.
        assert!(
            held.saturating_sub(after) > 32 << 20,
            "RSS {held} -> {after} bytes"
        );
    }
}
