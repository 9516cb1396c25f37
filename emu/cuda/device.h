// The CUDA C++ that kernels/*.cu use, for compiling them as ordinary C++ on the host.
//
// Every CUDA thread of a block is a fiber (fiber.cpp); the fibers of a block run on one host
// thread, one at a time, and switch only at barriers (__syncthreads, __syncwarp, shuffles), so a
// block costs about one context switch per thread plus one per barrier per thread. One block
// runs at a time in the process (the driver runs all device work under one lock), so the
// built-ins are plain globals (the scheduler sets threadIdx before it resumes a fiber) and
// `__shared__` variables are function statics.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

struct dim3e {
    unsigned x = 1, y = 1, z = 1;
};


struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

#define __global__
#define __device__
#define __shared__ static
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
// The bits of one 4-byte value as another type.
template <class To, class From>
inline To emu_bits(From v) {
    static_assert(sizeof(To) == sizeof(From));
    To r;
    memcpy(&r, &v, sizeof r);
    return r;
}
inline int __float_as_int(float f) { return emu_bits<int>(f); }
inline unsigned __float_as_uint(float f) { return emu_bits<unsigned>(f); }
inline float __int_as_float(int i) { return emu_bits<float>(i); }
inline float __uint_as_float(unsigned u) { return emu_bits<float>(u); }

namespace emu {
// Set by the scheduler (fiber.cpp) for the running fiber.
extern dim3e threadIdx, blockIdx, blockDim, gridDim;
// Barriers of the running block (fiber.cpp). Each fails the launch when it cannot complete
// (a thread of the block or warp already returned: a hang or undefined behaviour on a GPU).
void block_barrier();
void warp_barrier(unsigned mask);
// The value `v` of lane (own lane ^ lane_mask) of the calling thread's warp.
unsigned long long shuffle_xor(unsigned long long v, unsigned lane_mask, unsigned mask);
// Linear thread index in the block: warps are consecutive runs of 32, x fastest.
inline unsigned linear_tid() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
// Dynamic shared memory of the running block (cuLaunchKernel's sharedMemBytes).
extern unsigned char* dynamic_smem;
}  // namespace emu
using emu::blockDim;
using emu::blockIdx;
using emu::gridDim;
using emu::threadIdx;

inline void __syncthreads() { emu::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_barrier(mask); }

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    unsigned long long in = 0, out;
    memcpy(&in, &v, sizeof(T));
    out = emu::shuffle_xor(in, (unsigned)lane_mask, mask);
    T r;
    memcpy(&r, &out, sizeof(T));
    return r;
}

inline int atomicCAS(int* p, int cmp, int val) {
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
// Launches on different host threads (streams) may touch the same memory: a real atomic.
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
