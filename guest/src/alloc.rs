//! The guest's allocator: small blocks recycled through per-size free lists, everything else
//! from std's allocator (wasi-libc's `dlmalloc`).
//!
//! A request's decision is built from and into a few dozen short strings and vectors (the
//! head the host lowers, the plan it lifts back), and `dlmalloc`'s bookkeeping (bins, splitting,
//! coalescing) cost about half of the guest's own instructions per request (callgrind, cached
//! key). Here a small block is a pop from, or a push onto, the free list of its size class;
//! blocks are carved from chunks and, once made, stay blocks of their class for the instance's
//! life (bounded by the most blocks of that class ever live at once; an instance is retired
//! after `guest.instance_reuse` requests anyway).
//!
//! Not every block Rust frees came from here: what the host lowers into the guest goes through
//! the canonical ABI's `cabi_realloc`, and wasi-libc frees what it receives from imports (its
//! environment, for one) with `free`, so within an export call `cabi_realloc` (below)
//! allocates with `malloc`; only between calls, when the host lowers the next call's arguments
//! (which Rust code owns), does it take pooled blocks. Rust code frees everything it owns
//! through this allocator: a block is recycled only when it lies in one of this allocator's
//! chunks (a bit per 64 KiB of the address space), and goes back to `free` otherwise.
//!
//! A component instance runs one call at a time on one thread (wasm32 without threads), so the
//! state needs no lock. Native builds (the unit tests) do not install it.
#![cfg_attr(not(target_family = "wasm"), allow(dead_code))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

/// Size classes are multiples of this (and blocks are aligned to it).
const GRANULE: usize = 16;
/// Blocks of up to `GRANULE * CLASSES` bytes are pooled.
const CLASSES: usize = 32;
/// What the pool takes from `dlmalloc` at a time: a chunk this large, aligned to its size.
const CHUNK_SHIFT: u32 = 16;
const CHUNK: usize = 1 << CHUNK_SHIFT;
/// One bit per chunk-sized piece of a 32-bit address space.
const CHUNK_WORDS: usize = (1usize << (u32::BITS - CHUNK_SHIFT)) / 32;

pub struct Pooled {
    state: UnsafeCell<State>,
}

struct State {
    /// Per class, the first free block; each free block holds the address of the next.
    free: [*mut u8; CLASSES],
    /// The unused rest of the current chunk.
    next: *mut u8,
    end: *mut u8,
    /// Which chunk-sized pieces of memory are this pool's chunks.
    chunks: [u32; CHUNK_WORDS],
}

// SAFETY: the guest is single-threaded (see the module's documentation).
unsafe impl Sync for Pooled {}

impl Pooled {
    pub const fn new() -> Self {
        Self {
            state: UnsafeCell::new(State {
                free: [ptr::null_mut(); CLASSES],
                next: ptr::null_mut(),
                end: ptr::null_mut(),
                chunks: [0; CHUNK_WORDS],
            }),
        }
    }
}

/// The class of a block of `layout`, when it is pooled.
fn class(layout: Layout) -> Option<usize> {
    let size = layout.size();
    (layout.align() <= GRANULE && size != 0 && size <= GRANULE * CLASSES)
        .then(|| (size - 1) / GRANULE)
}

impl State {
    /// A new block of `class` from the current chunk, or from a new one.
    unsafe fn carve(&mut self, class: usize) -> *mut u8 {
        let size = (class + 1) * GRANULE;
        if (self.end as usize) - (self.next as usize) < size {
            // The old chunk's rest is left unused (less than one block of this class).
            // Aligned to its size: this pool's memory fills whole 64 KiB pieces (see `owns`).
            // SAFETY: a valid, non-zero layout.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, CHUNK)) };
            if chunk.is_null() {
                return chunk;
            }
            let piece = (chunk as usize) >> CHUNK_SHIFT;
            if let Some(word) = self.chunks.get_mut(piece / 32) {
                *word |= 1 << (piece % 32);
            }
            self.next = chunk;
            self.end = chunk.wrapping_add(CHUNK);
        }
        let block = self.next;
        self.next = block.wrapping_add(size);
        block
    }

    fn owns(&self, block: *mut u8) -> bool {
        let piece = (block as usize) >> CHUNK_SHIFT;
        self.chunks
            .get(piece / 32)
            .is_some_and(|word| word & (1 << (piece % 32)) != 0)
    }
}

unsafe impl GlobalAlloc for Pooled {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            // SAFETY: forwarded as given.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: single-threaded, and no reference into the state outlives this call.
        let state = unsafe { &mut *self.state.get() };
        let head = state.free[class];
        if head.is_null() {
            // SAFETY: as above.
            return unsafe { state.carve(class) };
        }
        // SAFETY: a free block of this class holds the next free block's address.
        state.free[class] = unsafe { head.cast::<*mut u8>().read() };
        head
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: single-threaded, and no reference into the state outlives this call.
        let state = unsafe { &mut *self.state.get() };
        match class(layout) {
            Some(class) if state.owns(block) => {
                // SAFETY: a block of ours, at least one granule, aligned to it.
                unsafe { block.cast::<*mut u8>().write(state.free[class]) };
                state.free[class] = block;
            }
            // SAFETY: from `System` (directly, or through wasi-libc's `cabi_realloc`).
            _ => unsafe { System.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees the new size forms a valid layout with this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: single-threaded, and no reference into the state outlives this call.
        let ours = unsafe { &*self.state.get() }.owns(block);
        match (class(layout), class(new_layout)) {
            (Some(old), Some(new)) if ours && old == new => block,
            // SAFETY: forwarded as given: a block of `System`'s, staying there.
            (_, None) if !ours => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: `new_layout` is valid and non-zero (`realloc`'s contract).
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks hold at least the smaller size; distinct blocks.
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

/// Whether the guest is between export calls: then the only allocations `cabi_realloc` makes
/// are the host lowering the next call's arguments, which Rust code owns and frees.
static BETWEEN_CALLS: AtomicBool = AtomicBool::new(false);

/// Held for the whole of an export call: inside one, `cabi_realloc` serves with `malloc`
/// (wasi-libc may free what it gets from an import); once it ends, with the pool, so the
/// next request's head is lowered into pooled blocks. Every export takes one first thing.
pub struct InCall(());

impl InCall {
    pub fn enter() -> Self {
        BETWEEN_CALLS.store(false, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        BETWEEN_CALLS.store(true, Ordering::Relaxed);
    }
}

/// The canonical ABI's allocator. Within an export call it is `malloc`, as wasi-libc expects
/// of the memory it gets from imports (it frees its environment, for one, with `free`);
/// between calls (the host lowering arguments) the pool, through the Rust allocator.
/// Defined here so that no library's version is linked instead.
#[cfg(target_family = "wasm")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    if old_len == 0 && new_len == 0 {
        return align as *mut u8;
    }
    let pooled = BETWEEN_CALLS.load(Ordering::Relaxed);
    // SAFETY: the canonical ABI passes a power-of-two alignment and a non-zero new size, and
    // `old` (when `old_len` is not 0) came from this function with `old_len` and `align`,
    // within the same phase (a call's lowering does not span an export call).
    let block = unsafe {
        match (old_len, pooled) {
            (0, true) => std::alloc::alloc(Layout::from_size_align_unchecked(new_len, align)),
            (0, false) => System.alloc(Layout::from_size_align_unchecked(new_len, align)),
            (_, true) => std::alloc::realloc(
                old,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            ),
            (_, false) => System.realloc(
                old,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            ),
        }
    };
    if block.is_null() {
        core::arch::wasm32::unreachable();
    }
    block
}
