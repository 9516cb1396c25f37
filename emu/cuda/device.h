// The CUDA C++ that kernels/*.cu use, for compiling them as ordinary C++ on the host.
//
// Every CUDA thread of a block is a fiber (fiber.cpp); the fibers of a block run on one host
// thread, one at a time, and switch only at barriers (__syncthreads, __syncwarp, shuffles), so a
// block costs two context switches per thread plus two per barrier per thread. threadIdx and
// the other built-ins are host-thread-local: the scheduler sets threadIdx before it resumes a
// fiber. `__shared__` variables are thread_local statics, so concurrent launches on different
// host threads each have their own.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

struct dim3e {
    unsigned x = 1, y = 1, z = 1;
};
// Set by the scheduler (fiber.cpp) for the running fiber.
extern thread_local dim3e threadIdx, blockIdx, blockDim, gridDim;

struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

#define __global__
#define __device__
#define __host__
#define __shared__ static thread_local
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
using std::max;
using std::min;

// Round-to-nearest intrinsics that nvcc never contracts into an FMA.
inline float __fadd_rn(float a, float b) {
    volatile float r = a + b;
    return r;
}
inline float __fmul_rn(float a, float b) {
    volatile float r = a * b;
    return r;
}
inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

namespace emu {
// Barriers of the running block (fiber.cpp). Each fails the launch when it cannot complete
// (a thread of the block or warp already returned: a hang or undefined behaviour on a GPU).
void block_barrier();
void warp_barrier(unsigned mask);
// One 8-byte slot per thread of the block, for shuffles.
unsigned long long* exchange_slots();
// Linear thread index in the block: warps are consecutive runs of 32, x fastest.
inline unsigned linear_tid() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
// Dynamic shared memory of the running block (cuLaunchKernel's sharedMemBytes).
extern thread_local unsigned char* dynamic_smem;
}  // namespace emu

inline void __syncthreads() { emu::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_barrier(mask); }

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    const unsigned tid = emu::linear_tid(), lane = tid % 32, base = tid - lane;
    unsigned long long* slot = emu::exchange_slots();
    memcpy(&slot[tid], &v, sizeof(T));
    emu::warp_barrier(mask);
    T r;
    memcpy(&r, &slot[base + (lane ^ (unsigned)lane_mask)], sizeof(T));
    emu::warp_barrier(mask);
    return r;
}

inline int atomicCAS(int* p, int cmp, int val) {
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
// Launches on different host threads (streams) may touch the same memory: a real atomic.
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
