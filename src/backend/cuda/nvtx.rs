//! NVTX ranges, so that an Nsight Systems timeline reads like the code: every CUDA op family
//! (GEMM, attention, LayerNorm, routing, the expert composition, the optimiser) and every
//! benchmark phase opens a range.
//!
//! Uses cudarc's `nvtx` bindings (a cargo feature of cudarc with no further dependency), which
//! `dlopen` libnvToolsExt. CUDA 13 toolkits no longer ship that library (NVTX 3 is header-only
//! for C++); it comes with older toolkits, Nsight Systems installs and the `nvidia-nvtx` Python
//! wheels, and `scripts/gpu-check.sh` adds its directory to the loader path when it finds one.
//! Without it every range is a no-op: cudarc would panic on the first call, so the library is
//! probed once first.

use std::sync::OnceLock;

/// An open NVTX range; closed when dropped.
#[must_use = "the range closes when this value is dropped"]
pub struct Range(#[allow(dead_code)] Option<cudarc::nvtx::Range>);

/// Whether libnvToolsExt could be loaded (probed once per process).
pub fn available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen the library.
    *PRESENT.get_or_init(|| unsafe { cudarc::nvtx::sys::is_culib_present() })
}

/// Opens a range named `name` (a no-op without libnvToolsExt).
pub fn range(name: &str) -> Range {
    if available() {
        Range(Some(cudarc::nvtx::scoped_range(name)))
    } else {
        Range(None)
    }
}
