//! Futures boxed in memory the shard recycles: [`boxed`].
//!
//! A connection task that awaits a large future (a request handler's state, kilobytes)
//! inline carries that room for its whole life, idle or not. Boxing the future keeps
//! it only while it runs, but a fresh heap block per request costs: glibc serves
//! blocks over 1 KiB outside its thread cache, and a request for one first
//! consolidates its fast bins (`malloc_consolidate` was 2% of a heartbeat's CPU,
//! `perf`). So a shard keeps the blocks it freed, by size class, and hands them out
//! again: a pop and a push on a thread-local list per request.
//!
//! Bounds: [`CLASS_SIZE`]-byte steps up to [`POOLED_SIZE_MAX`]; at most
//! [`FREE_PER_CLASS_MAX`] free blocks kept per class (more are returned to the
//! allocator), so what a shard keeps idle is bounded. A future larger than the largest
//! class, or aligned above [`POOLED_ALIGN`], is boxed as usual.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Size classes step by this many bytes (a class holds futures up to its size).
pub const CLASS_SIZE: usize = 512;
/// Number of classes: futures up to `CLASSES × CLASS_SIZE` bytes are pooled.
const CLASSES: usize = 32;
/// The largest future kept in a recycled block (16 KiB); larger ones use `Box`.
pub const POOLED_SIZE_MAX: usize = CLASSES * CLASS_SIZE;
/// Alignment of every pooled block; a future that needs more uses `Box`.
pub const POOLED_ALIGN: usize = 16;
/// Free blocks a shard keeps per class. As many requests in flight at once as this
/// reuse blocks without the allocator; a burst of more frees the extra blocks when it
/// ends. Class `c` holds blocks of `(c + 1) × CLASS_SIZE` bytes, so a shard keeps at
/// most `FREE_PER_CLASS_MAX × CLASS_SIZE × CLASSES × (CLASSES + 1) / 2` bytes idle
/// (16.5 MiB) if every class were used; in practice one is (the request handler's:
/// 64 × 4 KiB).
pub const FREE_PER_CLASS_MAX: usize = 64;

struct FreeLists([Vec<NonNull<u8>>; CLASSES]);

impl Drop for FreeLists {
    fn drop(&mut self) {
        for (class, list) in self.0.iter_mut().enumerate() {
            for block in list.drain(..) {
                // SAFETY: every block on list `class` was allocated by `alloc_block`
                // with `class_layout(class)` and is owned by the list alone.
                unsafe { alloc::dealloc(block.as_ptr(), class_layout(class)) };
            }
        }
    }
}

thread_local! {
    static FREE: RefCell<FreeLists> = RefCell::new(FreeLists(std::array::from_fn(|_| Vec::new())));
}

fn class_layout(class: usize) -> Layout {
    // `(class + 1) × CLASS_SIZE` is at most POOLED_SIZE_MAX and a multiple of the
    // (power-of-two) alignment, so the layout is always valid.
    Layout::from_size_align((class + 1) * CLASS_SIZE, POOLED_ALIGN).expect("valid class layout")
}

/// The class that holds `layout`, if any.
fn class_of(layout: Layout) -> Option<usize> {
    (layout.align() <= POOLED_ALIGN && layout.size() <= POOLED_SIZE_MAX && layout.size() > 0)
        .then(|| (layout.size() - 1) / CLASS_SIZE)
}

fn alloc_block(class: usize) -> NonNull<u8> {
    let reused = FREE
        .try_with(|f| f.borrow_mut().0[class].pop())
        .ok()
        .flatten();
    reused.unwrap_or_else(|| {
        let layout = class_layout(class);
        // SAFETY: the layout's size is non-zero.
        let p = unsafe { alloc::alloc(layout) };
        NonNull::new(p).unwrap_or_else(|| alloc::handle_alloc_error(layout))
    })
}

fn free_block(class: usize, block: NonNull<u8>) {
    let kept = FREE
        .try_with(|f| {
            let mut f = f.borrow_mut();
            let list = &mut f.0[class];
            if list.len() < FREE_PER_CLASS_MAX {
                list.push(block);
                true
            } else {
                false
            }
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: `block` came from `alloc_block(class)`, allocated with
        // `class_layout(class)`, and nothing refers to it any more.
        unsafe { alloc::dealloc(block.as_ptr(), class_layout(class)) };
    }
}

/// A future in a block of the shard's pool (or in a `Box` when too large). `!Send`:
/// its block goes back to the pool of the thread that drops it.
pub struct LocalBox<F: Future> {
    inner: Inner<F>,
}

enum Inner<F> {
    Pooled { ptr: NonNull<F>, class: usize },
    Boxed(Pin<Box<F>>),
}

/// Moves `f` into a block from this thread's pool.
pub fn boxed<F: Future>(f: F) -> LocalBox<F> {
    boxed_with(|| f)
}

/// The future `make` returns, made in a block from this thread's pool: the block is
/// taken first, so that the future (an `async fn`'s state: as large as its largest
/// await, kilobytes for a router) can be written where it will live rather than built
/// on the stack and copied whole.
#[inline(always)]
pub fn boxed_with<F: Future>(make: impl FnOnce() -> F) -> LocalBox<F> {
    let inner = match class_of(Layout::new::<F>()) {
        Some(class) => {
            let ptr = alloc_block(class).cast::<F>();
            // SAFETY: the block is at least `size_of::<F>()` bytes, aligned to
            // POOLED_ALIGN ≥ `align_of::<F>()`, and unused: writing an `F` there is
            // valid. Should `make` panic, the block is not given back (a leak, not
            // unsoundness).
            unsafe { ptr.as_ptr().write(make()) };
            Inner::Pooled { ptr, class }
        }
        None => Inner::Boxed(Box::pin(make())),
    };
    LocalBox { inner }
}

impl<F: Future> Future for LocalBox<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // `LocalBox` is `Unpin` (a pointer or a `Pin<Box>`): the future itself never
        // moves, whatever happens to the `LocalBox`.
        match &mut self.get_mut().inner {
            Inner::Pooled { ptr, .. } => {
                // SAFETY: `ptr` holds a live `F` written by `boxed` and owned by this
                // `LocalBox` alone; it stays at this address until `drop`, so pinning
                // it is sound.
                unsafe { Pin::new_unchecked(ptr.as_mut()) }.poll(cx)
            }
            Inner::Boxed(b) => b.as_mut().poll(cx),
        }
    }
}

impl<F: Future> Drop for LocalBox<F> {
    fn drop(&mut self) {
        if let Inner::Pooled { ptr, class } = self.inner {
            /// Gives the block back when dropped: also when the future's own `Drop`
            /// panics (as `Box` frees its memory then).
            struct Release(usize, NonNull<u8>);
            impl Drop for Release {
                fn drop(&mut self) {
                    free_block(self.0, self.1);
                }
            }
            let _release = Release(class, ptr.cast());
            // SAFETY: `ptr` holds a live `F` that nothing else refers to; it is dropped
            // in place once, and its block is not used again until `alloc_block`
            // hands it out anew (after `_release` returned it).
            unsafe { std::ptr::drop_in_place(ptr.as_ptr()) };
        }
    }
}

// `LocalBox` holds a raw pointer, so it is neither `Send` nor `Sync`; it is `Unpin`
// (a pointer or a `Pin<Box>`) like `Box`.

impl<F: Future> LocalBox<F> {
    /// Whether the future sits in a pooled block (not the `Box` fallback for futures
    /// too large or too aligned): a caller on a hot path asserts it in debug builds, so
    /// that a handler growing past the classes shows in tests rather than as a slower
    /// allocation per request.
    pub fn is_pooled(&self) -> bool {
        matches!(self.inner, Inner::Pooled { .. })
    }
}

/// Free blocks this thread keeps, all classes.
#[cfg(test)]
fn free_blocks() -> usize {
    FREE.try_with(|f| f.borrow().0.iter().map(Vec::len).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn block_on<F: Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    struct Dropped(Rc<Cell<u32>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn a_block_is_reused_and_the_future_runs_and_drops_once() {
        let drops = Rc::new(Cell::new(0));
        let big = [7u8; 3000];
        let d = Dropped(drops.clone());
        let before = free_blocks();
        let f = boxed(async move {
            let _d = d;
            big.iter().map(|&b| b as u32).sum::<u32>()
        });
        assert_eq!(block_on(f), 21_000);
        assert_eq!(drops.get(), 1);
        assert_eq!(free_blocks(), before + 1, "the block went back to the pool");
        // The next future of that class takes it.
        let f = boxed(async move { big.len() });
        assert!(f.is_pooled());
        assert_eq!(free_blocks(), before);
        drop(f);
        assert_eq!(free_blocks(), before + 1);
    }

    #[test]
    fn a_future_dropped_unfinished_is_dropped_in_place() {
        let drops = Rc::new(Cell::new(0));
        let d = Dropped(drops.clone());
        let f = boxed(async move {
            let _d = d;
            std::future::pending::<()>().await;
        });
        let mut f = f;
        let waker = std::task::Waker::noop();
        assert!(Pin::new(&mut f)
            .poll(&mut Context::from_waker(waker))
            .is_pending());
        assert_eq!(drops.get(), 0);
        drop(f);
        assert_eq!(drops.get(), 1);
    }

    #[test]
    fn a_block_goes_back_when_the_futures_drop_panics() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("boom");
            }
        }
        let bomb = Bomb;
        let f = boxed(async move {
            let _b = bomb;
            std::future::pending::<()>().await;
        });
        let before = free_blocks();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(f)));
        assert!(r.is_err());
        assert_eq!(free_blocks(), before + 1);
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound_per_class() {
        let many: Vec<_> = (0..FREE_PER_CLASS_MAX + 10)
            .map(|i| boxed(async move { i }))
            .collect();
        let before = free_blocks();
        drop(many);
        assert!(free_blocks() - before <= FREE_PER_CLASS_MAX);
    }

    #[test]
    fn too_large_or_overaligned_futures_use_a_box() {
        #[repr(align(64))]
        struct Aligned(u8);
        let a = Aligned(3);
        let f = boxed(async move {
            let a = a;
            a.0
        });
        assert!(!f.is_pooled());
        assert_eq!(block_on(f), 3);
        let huge = [1u8; POOLED_SIZE_MAX + 1];
        let f = boxed(async move { huge.len() });
        assert!(matches!(f.inner, Inner::Boxed(_)));
        assert_eq!(block_on(f), POOLED_SIZE_MAX + 1);
    }

    #[test]
    fn classes_cover_their_sizes() {
        assert_eq!(class_of(Layout::from_size_align(1, 1).unwrap()), Some(0));
        assert_eq!(class_of(Layout::from_size_align(512, 8).unwrap()), Some(0));
        assert_eq!(class_of(Layout::from_size_align(513, 8).unwrap()), Some(1));
        assert_eq!(
            class_of(Layout::from_size_align(POOLED_SIZE_MAX, 16).unwrap()),
            Some(CLASSES - 1)
        );
        assert_eq!(
            class_of(Layout::from_size_align(POOLED_SIZE_MAX + 1, 16).unwrap()),
            None
        );
        assert_eq!(class_of(Layout::from_size_align(0, 1).unwrap()), None);
        assert_eq!(class_of(Layout::from_size_align(64, 32).unwrap()), None);
    }
}
