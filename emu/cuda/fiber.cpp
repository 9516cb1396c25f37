// CUDA threads as fibers: the threads of a block run on the calling host thread, each on its own
// small stack, switching only where a CUDA thread would wait for others (barriers). A fiber that
// meets no barrier runs from start to end in one go, so a barrier-free kernel costs two stack
// switches per thread; a block barrier costs two more per thread.
//
// Scheduling is round-robin over the fibers still running. A barrier completes when every thread
// of its scope (the block, or the warp) has arrived; a round in which no fiber arrives anywhere,
// passes a barrier or finishes means the rest wait for threads that will never come (they have
// returned, or wait elsewhere): the launch fails, as it would hang or be undefined on a GPU.
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "device.h"
#include "kernel_table.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif

namespace emu {
namespace {

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack pointer in *from,
// switches to `to` and restores what was saved there.
extern "C" void emu_switch(void** from, void* to);
asm(R"(
.text
.p2align 4
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch,.-emu_switch
)");
constexpr size_t kSavedWords = 6;
#elif defined(__aarch64__)
extern "C" void emu_switch(void** from, void* to);
asm(R"(
.text
.p2align 4
.type emu_switch,%function
emu_switch:
    sub sp, sp, #176
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #176
    ret
.size emu_switch,.-emu_switch
)");
#else
#error "the CUDA emulator's fibers support x86-64 and aarch64"
#endif

#if defined(EMU_ASAN)
constexpr size_t kStackBytes = 512 * 1024;
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif
constexpr size_t kMaxThreads = 1024;

struct Fiber {
    void* sp = nullptr;
    dim3e idx;
    bool done = false;
    unsigned shuffles = 0;  // shuffles this thread made: picks the exchange buffer
#if defined(EMU_ASAN)
    void* fake_stack = nullptr;
#endif
};

struct Block {
    std::vector<Fiber> fibers;
    unsigned char* stacks = nullptr;  // kMaxThreads stacks, each with a guard page below it
    size_t page = 0;
    void* scheduler_sp = nullptr;
    const std::function<void()>* body = nullptr;
    unsigned cur = 0, nthreads = 0, alive = 0;
    // Resumes of waiting fibers since anything last happened (an arrival, a completed barrier,
    // a finished thread): more than the live fibers means no one can move.
    unsigned idle = 0;
    bool stuck = false;
    // Barrier state: arrivals and generation, for the block and for each warp.
    unsigned block_arrived = 0;
    unsigned long long block_gen = 0;
    unsigned warp_arrived[kMaxThreads / 32] = {};
    unsigned long long warp_gen[kMaxThreads / 32] = {};
    // Shuffle exchange, double-buffered so that one barrier per shuffle suffices: a thread
    // writes buffer p again only after the next shuffle's barrier, which every lane reaches
    // after reading buffer p.
    alignas(16) unsigned long long slots[2][kMaxThreads];
#if defined(EMU_ASAN)
    void* main_fake_stack = nullptr;
    const void* main_bottom = nullptr;
    size_t main_size = 0;
#endif

    Block() {
        page = (size_t)sysconf(_SC_PAGESIZE);
        const size_t each = kStackBytes + page;
        void* m = mmap(nullptr, each * kMaxThreads, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "emulated CUDA: cannot map the fibers' stacks\n");
            abort();
        }
        stacks = (unsigned char*)m;
        for (size_t i = 0; i < kMaxThreads; ++i) mprotect(stacks + i * each, page, PROT_NONE);
        fibers.resize(kMaxThreads);
    }
    unsigned char* stack_top(unsigned i) const { return stacks + (i + 1) * (kStackBytes + page); }
    unsigned char* stack_bottom(unsigned i) const { return stacks + i * (kStackBytes + page) + page; }
};

// One block runs at a time in the whole process (the driver runs device work under one lock),
// so the scheduler's state is global rather than per host thread.
Block* g_block;

// Switches from the running fiber (or the scheduler, `from` null) to fiber `to` (or back to
// the scheduler, `to` = kMaxThreads). `finishing`: the running fiber never resumes.
void jump(Fiber* from, unsigned to, bool finishing = false) {
    Block& b = *g_block;
    void** save = from ? &from->sp : &b.scheduler_sp;
    void* target = to < kMaxThreads ? b.fibers[to].sp : b.scheduler_sp;
    if (to < kMaxThreads) {
        b.cur = to;
        threadIdx = b.fibers[to].idx;
    }
#if defined(EMU_ASAN)
    void** fake = finishing ? nullptr : (from ? &from->fake_stack : &b.main_fake_stack);
    if (to < kMaxThreads)
        __sanitizer_start_switch_fiber(fake, b.stack_bottom(to), kStackBytes);
    else
        __sanitizer_start_switch_fiber(fake, b.main_bottom, b.main_size);
#else
    (void)finishing;
#endif
    emu_switch(save, target);
#if defined(EMU_ASAN)
    __sanitizer_finish_switch_fiber(from ? from->fake_stack : b.main_fake_stack, nullptr, nullptr);
#endif
}

// Hands the host thread on from the running fiber: to the next live fiber in turn, or back to
// the scheduler when none is left or the block cannot move.
void pass_on(bool finishing) {
    Block& b = *g_block;
    Fiber* me = &b.fibers[b.cur];
    if (b.alive == 0 || b.idle > b.alive) {
        b.stuck = b.alive != 0;
        jump(me, kMaxThreads, finishing);
        return;
    }
    unsigned j = b.cur;
    do {
        j = j + 1 == b.nthreads ? 0 : j + 1;
    } while (b.fibers[j].done);
    if (j == b.cur) {
        // Alone and waiting: the others have returned.
        b.stuck = true;
        jump(me, kMaxThreads, finishing);
        return;
    }
    jump(me, j, finishing);
}

// Reached only from assembly (emu_fiber_start, or the aarch64 link register): kept by `used`.
extern "C" __attribute__((used)) void emu_fiber_main() {
#if defined(EMU_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    (*g_block->body)();
    Block& b = *g_block;
    b.fibers[b.cur].done = true;
    --b.alive;
    b.idle = 0;
    pass_on(true);
    abort();  // a finished fiber is never resumed
}

#if defined(__x86_64__)
// First entry of a fiber: `ret` of emu_switch lands here with the stack as after a call.
extern "C" void emu_fiber_start();
asm(R"(
.text
.p2align 4
.type emu_fiber_start,@function
emu_fiber_start:
    call emu_fiber_main
    ud2
.size emu_fiber_start,.-emu_fiber_start
)");
void* initial_sp(unsigned char* top) {
    // [top-8]: where emu_switch's `ret` goes (leaving the stack 16-byte aligned for the call
    // emu_fiber_start makes), then the six callee-saved registers emu_switch pops.
    void** sp = (void**)(((uintptr_t)top & ~(uintptr_t)15));
    *--sp = (void*)&emu_fiber_start;
    for (size_t i = 0; i < kSavedWords; ++i) *--sp = nullptr;
    return sp;
}
#else
void* initial_sp(unsigned char* top) {
    // x30 (the link register) is restored from offset 88 and `ret` jumps there.
    unsigned char* sp = (unsigned char*)(((uintptr_t)top & ~(uintptr_t)15)) - 176;
    memset(sp, 0, 176);
    *(void**)(sp + 88) = (void*)&emu_fiber_main;
    return sp;
}
#endif

// Runs one block; false when it cannot finish.
bool run_block(Block& b, unsigned n) {
    b.nthreads = b.alive = n;
    b.idle = 0;
    b.stuck = false;
    b.block_arrived = 0;
    for (unsigned w = 0; w < (n + 31) / 32; ++w) b.warp_arrived[w] = 0;
    const dim3e bd = blockDim;
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = b.fibers[t];
        f.idx = {t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
        f.done = false;
        f.shuffles = 0;
        f.sp = initial_sp(b.stack_top(t));
    }
    jump(nullptr, 0);
    return !b.stuck;
}

// Waits at a barrier of `expected` threads whose arrival count and generation are given.
void barrier(unsigned& arrived, unsigned long long& gen, unsigned expected) {
    Block& b = *g_block;
    b.idle = 0;
    if (++arrived == expected) {
        arrived = 0;
        ++gen;
        return;
    }
    const unsigned long long mine = gen;
    for (;;) {
        pass_on(false);
        if (gen != mine) break;
        ++b.idle;
    }
    b.idle = 0;
}

}  // namespace

dim3e threadIdx, blockIdx, blockDim, gridDim;
unsigned char* dynamic_smem;

void block_barrier() {
    Block& b = *g_block;
    barrier(b.block_arrived, b.block_gen, b.nthreads);
}

void warp_barrier(unsigned mask) {
    Block& b = *g_block;
    const unsigned w = linear_tid() / 32;
    const unsigned lanes = std::min(32u, b.nthreads - 32 * w);
    const unsigned full = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
    if ((mask & full) != full) {
        fprintf(stderr, "emulated CUDA: a warp barrier with a partial mask is not emulated\n");
        abort();
    }
    barrier(b.warp_arrived[w], b.warp_gen[w], lanes);
}

unsigned long long shuffle_xor(unsigned long long v, unsigned lane_mask, unsigned mask) {
    Block& b = *g_block;
    Fiber& me = b.fibers[b.cur];
    unsigned long long* slot = b.slots[me.shuffles++ & 1];
    const unsigned tid = linear_tid(), lane = tid % 32;
    slot[tid] = v;
    warp_barrier(mask);
    return slot[tid - lane + (lane ^ lane_mask)];
}

bool run_grid(const Dims& d, size_t smem, const std::function<void()>& body, std::string* err) {
    if (!g_block) g_block = new Block();  // kept for the process's lifetime
    Block& b = *g_block;
#if defined(EMU_ASAN)
    {
        pthread_attr_t a;
        void* lo;
        size_t size;
        pthread_getattr_np(pthread_self(), &a);
        pthread_attr_getstack(&a, &lo, &size);
        pthread_attr_destroy(&a);
        b.main_bottom = lo;
        b.main_size = size;
    }
#endif
    b.body = &body;
    gridDim = {d.gx, d.gy, d.gz};
    blockDim = {d.bx, d.by, d.bz};
    const unsigned n = d.bx * d.by * d.bz;
    // Dynamic shared memory starts as 0xFF bytes (NaN) in every block, so a read before any
    // write shows; a buffer of exactly `smem` bytes lets AddressSanitizer see overruns.
    std::vector<unsigned char> dyn(smem ? smem : 1);
    dynamic_smem = smem ? dyn.data() : nullptr;
    for (unsigned z = 0; z < d.gz; ++z)
        for (unsigned y = 0; y < d.gy; ++y)
            for (unsigned x = 0; x < d.gx; ++x) {
                blockIdx = {x, y, z};
                if (smem) memset(dyn.data(), 0xFF, smem);
                if (!run_block(b, n)) {
                    *err = "block (" + std::to_string(x) + "," + std::to_string(y) + "," +
                           std::to_string(z) +
                           ") cannot finish: some of its threads wait at a barrier "
                           "(__syncthreads, __syncwarp or a shuffle) that others never reach";
                    return false;
                }
            }
    return true;
}

}  // namespace emu
