// Minimal CPU emulation of the CUDA features the delo kernels use: one std::thread per CUDA
// thread of a block (blocks run one after another), std::barrier for __syncthreads and per-warp
// barriers for __syncwarp and shuffles.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
struct dim3e { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3e threadIdx, blockIdx;
inline dim3e blockDim, gridDim;
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
using std::max;
using std::min;
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline std::barrier<>* g_block_bar;
inline std::vector<std::unique_ptr<std::barrier<>>> g_warp_bars;
inline unsigned char* g_dyn_smem;
inline size_t g_dyn_bytes = 0;
alignas(16) inline unsigned long long g_xchg[1024];
// Linear thread index of the block: warps are consecutive runs of 32 of it, x fastest.
inline unsigned emu_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_warp_bars[emu_tid() / 32]->arrive_and_wait(); }
template <class T> T __shfl_xor_sync(unsigned, T v, int o) {
    const int tid = emu_tid(), w = tid / 32, lane = tid % 32;
    static_assert(sizeof(T) <= 8);
    memcpy(&g_xchg[tid], &v, sizeof(T));
    __syncwarp();
    T r;
    memcpy(&r, &g_xchg[w * 32 + (lane ^ o)], sizeof(T));
    __syncwarp();
    return r;
}
inline int atomicCAS(int* p, int cmp, int val) {
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
// Threads of a block run concurrently here, so this must be a real atomic (as on the device).
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
// Runs f for every thread of every block. One std::thread per thread of a block, reused for
// every block in turn (a barrier between blocks), since starting threads dominates the run time.
inline void emu_launch(dim3e grid, dim3e block, const std::function<void()>& f) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z;
    std::vector<float4> dyn((g_dyn_bytes + 15) / 16);
    g_dyn_smem = g_dyn_bytes ? (unsigned char*)dyn.data() : nullptr;
    std::barrier<> bar(n), next_block(n);
    g_block_bar = &bar;
    g_warp_bars.clear();
    for (unsigned w = 0; w < (n + 31) / 32; ++w)
        g_warp_bars.emplace_back(new std::barrier<>(std::min(32u, n - 32 * w)));
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < n; ++t)
        ts.emplace_back([&, t] {
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            for (unsigned bz = 0; bz < grid.z; ++bz)
                for (unsigned by = 0; by < grid.y; ++by)
                    for (unsigned bx = 0; bx < grid.x; ++bx) {
                        blockIdx = {bx, by, bz};
                        f();
                        next_block.arrive_and_wait();
                    }
        });
    for (auto& t : ts) t.join();
}
