// What the emulated driver (driver.cpp) offers the emulated cuBLAS (cublas.cpp) and NVTX
// (nvtx.cpp): stream-ordered work, checked device ranges, the sticky context error, counters.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace emu {

using Result = int;  // CUresult
constexpr Result kSuccess = 0, kInvalidValue = 1, kNotInitialized = 3, kInvalidContext = 201,
                 kInvalidHandle = 400, kIllegalAddress = 700, kLaunchFailed = 719;

// The sticky error of the context: once a fault happened on the device, every later call fails
// with it (CUDA_SUCCESS while there is none).
Result sticky();
// Records a device fault (the first one wins) and prints it once to stderr.
void fault(Result code, const std::string& what);

// Queues `op` on `stream` (a CUstream; 0 and CU_STREAM_PER_THREAD are the legacy stream): it runs
// when the host synchronises with the stream, in the order queued. Fails on an invalid stream
// or when no context is current.
Result enqueue(void* stream, std::function<void()> op);

// Whether [p, p + bytes) lies inside one live device allocation.
bool device_range_ok(uint64_t p, size_t bytes);
// At execution time: faults (illegal address) naming `who` unless the range is live device memory.
bool require_range(uint64_t p, size_t bytes, const std::string& who);

// Whether a context is current on the calling thread (every stream-ordered call needs one).
bool context_current();

// Counts one launch of `name` (kernels by name, cuBLAS calls by function).
void count_launch(const std::string& name);
void count_nvtx_range();

}  // namespace emu
