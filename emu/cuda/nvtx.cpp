// The emulated NVTX: ranges and marks are counted (there is no timeline to draw on the CPU) and
// nested ranges are tracked per thread, so that push/pop pairs can be checked.
#include <cstdint>

#include "runtime.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {
thread_local int t_depth = 0;
uint64_t g_next_id = 1;
}  // namespace

EXPORT int nvtxRangePushA(const char*) {
    emu::count_nvtx_range();
    return t_depth++;
}
EXPORT int nvtxRangePushEx(const void*) {
    emu::count_nvtx_range();
    return t_depth++;
}
EXPORT int nvtxRangePop() { return t_depth > 0 ? --t_depth : -1; }
EXPORT uint64_t nvtxRangeStartA(const char*) {
    emu::count_nvtx_range();
    return __atomic_fetch_add(&g_next_id, 1, __ATOMIC_RELAXED);
}
EXPORT uint64_t nvtxRangeStartEx(const void*) {
    emu::count_nvtx_range();
    return __atomic_fetch_add(&g_next_id, 1, __ATOMIC_RELAXED);
}
EXPORT void nvtxRangeEnd(uint64_t) {}
EXPORT void nvtxMarkA(const char*) {}
EXPORT void nvtxMarkEx(const void*) {}
