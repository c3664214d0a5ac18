//! The process's memory allocator.

use std::alloc::GlobalAlloc;

/// mimalloc instead of glibc's malloc. With a request thread per core, memory allocated on one
/// thread is often freed on another (a guest instance's store serves requests on any thread);
/// glibc's per-thread arenas made that ~10 % of the CPU (`_int_malloc`, `malloc_consolidate`
/// in the profile). Measured on the bench box: 48 → 41 µs per cached-key request, 51 → 37 µs
/// per invalid-key request. Every binary linking this crate (tests, benches) uses it too, so
/// what they measure is what `keygate` runs.
///
/// Through [`Mi`]: the `mimalloc` crate asks for every block with `mi_malloc_aligned`, whose
/// alignment handling cost ~2 % of the instructions of a cached-key request (callgrind).
#[global_allocator]
static ALLOCATOR: Mi = Mi;

/// mimalloc's plain entry points for what they align anyway (every block is aligned to 8),
/// the aligned ones (the `mimalloc` crate's) for the rest.
pub struct Mi;

/// The alignment `mi_malloc` gives any block.
const PLAIN_ALIGN: usize = 8;

unsafe extern "C" {
    fn mi_malloc(size: usize) -> *mut std::ffi::c_void;
    fn mi_zalloc(size: usize) -> *mut std::ffi::c_void;
    fn mi_realloc(block: *mut std::ffi::c_void, size: usize) -> *mut std::ffi::c_void;
}

// SAFETY: forwards to mimalloc, which upholds `GlobalAlloc`'s contract; blocks of either kind
// are freed with `mi_free`.
unsafe impl GlobalAlloc for Mi {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: any size is valid.
            unsafe { mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: forwarded as given.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: any size is valid.
            unsafe { mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: forwarded as given.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: a block of mimalloc's (either kind).
        unsafe { mimalloc::MiMalloc.dealloc(block, layout) }
    }

    #[inline]
    unsafe fn realloc(
        &self,
        block: *mut u8,
        layout: std::alloc::Layout,
        new_size: usize,
    ) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: a block of mimalloc's; a block aligned to 8 stays so.
            unsafe { mi_realloc(block.cast(), new_size).cast() }
        } else {
            // SAFETY: forwarded as given.
            unsafe { mimalloc::MiMalloc.realloc(block, layout, new_size) }
        }
    }
}

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

/// Opt this process out of transparent huge pages. With them, the kernel's background
/// collapsing turns sparsely touched regions (guest memory slots, allocator arenas) into
/// resident 2 MiB pages over time: in the soak, RSS crept up by a few MiB a minute for half an
/// hour with 70 of its ~120 MiB in huge pages, though nothing the gateway holds grew (Redis
/// recommends the same). Linux only; elsewhere, and when the kernel says no, nothing changes.
pub fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and changes only this process's
    // memory advice; it has no memory-safety preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
