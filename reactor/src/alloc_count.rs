//! A global allocator that counts allocations per thread, for tests that pin down how
//! many heap allocations a hot path makes (`tests/it/alloc_per_request.rs`). It lives here
//! because `reactor/` is the only crate allowed `unsafe`; a test binary installs it with
//! `#[global_allocator] static A: reactor::alloc_count::Counting = reactor::alloc_count::Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Forwards to the system allocator and counts `alloc` and `realloc` calls on the
/// calling thread (so that tests running in parallel do not count each other).
pub struct Counting;

thread_local! {
    // const-initialised Cell: touching it neither allocates nor registers a destructor,
    // so it is safe to use from inside the allocator.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// Allocations (and reallocations) made by this thread so far.
pub fn allocations() -> u64 {
    ALLOCS.with(|c| c.get())
}

fn bump() {
    ALLOCS.with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the only extra work is a thread-local counter that does not
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: the caller's contract (non-zero size layout) is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: as for `dealloc`, and the caller guarantees a valid `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
