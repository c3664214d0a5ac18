//! The process's memory allocator.

/// mimalloc instead of glibc's malloc. With a request thread per core, memory allocated on one
/// thread is often freed on another (a guest instance's store serves requests on any thread);
/// glibc's per-thread arenas made that ~10 % of the CPU (`_int_malloc`, `malloc_consolidate`
/// in the profile). Measured on the bench box: 48 → 41 µs per cached-key request, 51 → 37 µs
/// per invalid-key request. Every binary linking this crate (tests, benches) uses it too, so
/// what they measure is what `keygate` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Give what this thread freed back to the OS. Compiling a component (on this thread: the
/// engine compiles serially for that reason) frees ~100 MiB that mimalloc would otherwise keep
/// resident; glibc happened to return it.
pub fn return_freed_memory() {
    unsafe extern "C" {
        /// mimalloc's own API (linked in by the `mimalloc` crate).
        fn mi_collect(force: bool);
    }
    // SAFETY: `mi_collect` takes no pointers; it walks mimalloc's structures for this thread.
    unsafe { mi_collect(true) };
}
