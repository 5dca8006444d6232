//! How a node hands memory back to the system (glibc only; elsewhere these do nothing).
//!
//! A node holds one large, long-lived structure (the map) while short-lived buffers of every size
//! pass through it: decoded log entries, sled pages, snapshot images and their chunks. glibc's
//! default keeps freed memory in its heap for reuse, so the resident size stays well above what
//! is in use (figures in docs/performance.md).

/// Buffers at least this large get memory mapped pages of their own, returned to the system as
/// soon as they are freed. glibc starts at 128 KiB too, but raises the threshold each time such a
/// buffer is freed (up to 32 MiB), after which grouped log entries, sled pages and image chunks
/// are carved from the heap between map records and stay there as holes when freed. A fixed
/// threshold keeps them out of the heap.
const MMAP_THRESHOLD_BYTES: i32 = 128 * 1024;

/// Sets the allocator up for a long-running node; call once at start, before the heavy lifting.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator parameter; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

/// Returns free heap pages to the system, after work that freed a lot at once (writing or
/// reading a snapshot): glibc otherwise keeps them until the heap's top is free.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
