//! Process-wide allocator policy of the `delo` binary.

/// Makes the C allocator keep freed memory for reuse instead of returning it to the kernel.
///
/// A forward or training step allocates and frees the same few hundred MB of activations on
/// every batch. With glibc's defaults, blocks above the mmap threshold are mapped and unmapped
/// per allocation and the heap top is trimmed on free, so each batch page-faults (and the
/// kernel zeroes) its whole working set again: ~100k faults, about a tenth of the CPU time of
/// a ViLT-B/32 forward at batch 4 on two cores. Serving large blocks from the heap and never
/// trimming it lets the next batch reuse the same pages, as PyTorch's caching allocators do on
/// the GPU. The cost is that the resident size stays at the peak of the run.
///
/// Call it once, first thing in `main`; a no-op where the C library is not glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(
                param: std::os::raw::c_int,
                value: std::os::raw::c_int,
            ) -> std::os::raw::c_int;
        }
        // From glibc's <malloc.h>.
        const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
        const M_MMAP_MAX: std::os::raw::c_int = -4;
        // SAFETY: mallopt only changes allocator parameters; it is called before any thread
        // that allocates is started. Failure leaves the defaults, which are merely slower.
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_TRIM_THRESHOLD, std::os::raw::c_int::MAX);
        }
    }
}
