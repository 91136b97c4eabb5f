//! Giving back the C heap's free memory after models load or unload.
//!
//! ONNX Runtime (and libstdc++, and C plugins) allocate through the C library's `malloc`, not
//! the server's allocator. Making a session allocates and frees much more than the session
//! keeps (the graph before and during optimisation), and glibc's `malloc` keeps most of what was
//! freed: all-MiniLM-L6-v2 left the server at 135-170 MiB of RSS from one start to the next,
//! depending on where the last allocations fell. `malloc_trim(0)` returns every free page of
//! every arena (`madvise`), whatever its place in the heap: 168 -> 135 MiB for that model, and
//! after unloading it the server is at 48 MiB instead of 91 (its session's memory goes back
//! instead of waiting for reuse).

/// Returns the C heap's free pages to the system (glibc on Linux; elsewhere nothing). Called
/// once after a manifest's models are loaded, and after models are unloaded or reloaded: a few
/// milliseconds at most, never on the request path.
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
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
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
        for &p in &blocks[..BLOCKS - 1] {
            unsafe { libc::free(p.cast()) };
        }
        let held = rss();
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
