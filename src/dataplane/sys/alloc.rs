//! The counting global allocator that makes "no allocation per packet" a
//! measurement.

/// The global allocator of `weftd` (and of the benchmarks): the system
/// allocator, counting allocations, separately for dataplane threads, so the
/// claim "no allocation per packet" is measured, not assumed (metric
/// `weft_dataplane_allocations_total`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static DATAPLANE_ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates.
    static IN_DATAPLANE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count_allocation() {
    ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if IN_DATAPLANE.try_with(|c| c.get()).unwrap_or(false) {
        DATAPLANE_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Marks the calling thread as a dataplane thread for allocation counting.
pub fn mark_dataplane_thread() {
    IN_DATAPLANE.with(|c| c.set(true));
}

/// Allocations made so far by every thread (when [`CountingAllocator`] is the global allocator).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Allocations made so far by dataplane threads.
pub fn dataplane_allocations() -> u64 {
    DATAPLANE_ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

// SAFETY: every method forwards to `std::alloc::System` with the caller's
// arguments unchanged, so the allocator contract is `System`'s; counting
// touches only atomics and a const thread-local, neither of which allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator, i.e. from `System`.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded unchanged; `ptr` came from `System` with `layout`.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
