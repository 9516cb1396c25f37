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
inline std::barrier<>* g_block_bar;
inline std::vector<std::unique_ptr<std::barrier<>>> g_warp_bars;
inline unsigned char* g_dyn_smem;
inline size_t g_dyn_bytes = 0;
alignas(16) inline unsigned long long g_xchg[1024];
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_warp_bars[threadIdx.x / 32]->arrive_and_wait(); }
template <class T> T __shfl_xor_sync(unsigned, T v, int o) {
    const int tid = threadIdx.x, w = tid / 32, lane = tid % 32;
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
inline float atomicAdd(float* p, float v) { float o = *p; *p += v; return o; }
// Runs f for every thread of every block.
inline void emu_launch(dim3e grid, dim3e block, const std::function<void()>& f) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::vector<float4> dyn((g_dyn_bytes + 15) / 16);
                g_dyn_smem = g_dyn_bytes ? (unsigned char*)dyn.data() : nullptr;
                std::barrier<> bar(n);
                g_block_bar = &bar;
                g_warp_bars.clear();
                for (unsigned w = 0; w < (n + 31) / 32; ++w)
                    g_warp_bars.emplace_back(new std::barrier<>(std::min(32u, n - 32 * w)));
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < n; ++t)
                    ts.emplace_back([&, t] {
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = {bx, by, bz};
                        f();
                    });
                for (auto& t : ts) t.join();
            }
}
