// The emulated CUDA driver API: one device, its primary context, streams whose work runs when
// the host synchronises, device memory as separate host blocks, and modules whose kernels are
// the kernels/*.cu sources compiled as C++ (kernel_table.h), matched against the PTX by name.
//
// Strict where the hardware and the driver are strict:
// - launch limits (block ≤ 1024 threads and per-dimension limits, `.maxntid`, grid limits,
//   static + dynamic shared memory ≤ 48 KiB unless raised by the function attribute, never above
//   the device's opt-in maximum), params and `extra` not both;
// - every copy range, and every pointer a kernel receives, inside one live allocation; new
//   allocations filled with 0xFF bytes (NaN as f32 and bf16); guard bytes around each block that
//   a kernel must not touch; a fault makes the context's error sticky, as on a GPU;
// - stream order: work runs only when the host synchronises (stream/event/context synchronise,
//   a copy into pageable host memory, a blocking free), so a read of pinned memory that an
//   asynchronous copy fills, before the host synchronised, sees 0xFF bytes, not the data.
// - a context must be current on the calling thread for every call that needs one.
//
// Counters (launches per kernel, host synchronisations, bytes each way, allocations, frees) are
// printed at exit when DELO_EMU_STATS is set (1: to stderr; a path: JSON into that file) and can
// be read at any time through delo_emu_stats_json().
#include <algorithm>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kernel_table.h"
#include "ptx.h"
#include "runtime.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;

namespace emu {
namespace {

// CUresult codes (cuda.h).
constexpr Result kOutOfMemory = 2, kInvalidDevice = 101, kNoBinaryForGpu = 209,
                 kInvalidPtx = 218, kUnsupportedPtxVersion = 222, kIllegalState = 401,
                 kNotFound = 500, kNotReady = 600, kPrimaryContextActive = 708,
                 kCaptureUnsupported = 900, kCaptureInvalidated = 901;

// The emulated device: an H100/H200-class part (compute capability 9.0, 132 SMs).
constexpr int kCcMajor = 9, kCcMinor = 0, kSms = 132;
constexpr int kMaxThreads = 1024, kMaxBlock[3] = {1024, 1024, 64};
constexpr long long kMaxGrid[3] = {2147483647LL, 65535, 65535};
constexpr int kSmemPerBlock = 48 * 1024, kSmemOptin = 232448, kSmemPerSm = 233472;
constexpr int kPtxIsaMax = 90;  // CUDA 13.0 drivers JIT PTX ISA up to 9.0
constexpr int kDriverVersion = 13000;
constexpr const char* kName = "delo emulated CUDA device (CPU)";

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer checks exact-size blocks itself.
constexpr size_t kGuard = 0;
#else
constexpr size_t kGuard = 256;
#endif
constexpr unsigned char kGuardByte = 0xA5;

struct Alloc {
    size_t size;
    unsigned char* raw;  // what malloc returned; the allocation starts kGuard bytes in
};

// A captured or instantiated graph: the ops of one stream capture, run in order on launch.
struct Graph {
    std::vector<std::function<void()>> ops;
};

struct Stream {
    std::mutex m;
    std::deque<std::function<void()>> q;
    unsigned long long queued = 0, done = 0;  // ops queued and run so far
    // While capturing: where queued work goes instead of `q`, and whether an operation that
    // cannot be captured has invalidated the capture.
    Graph* capture = nullptr;
    bool invalidated = false;
};

struct Event {
    Stream* stream = nullptr;
    unsigned long long seq = 0;  // the stream's op count when recorded
    bool recorded = false, happened = false, timing = true;
    std::chrono::steady_clock::time_point at;
};

struct Function {
    const KernelInfo* kernel;
    ptx::Entry entry;
    int max_dynamic_smem;
};

struct Module {
    std::map<std::string, std::unique_ptr<Function>> functions;
};

struct Context {
    int retained = 0;
};

struct Counters {
    std::map<std::string, unsigned long long> launches;
    unsigned long long host_syncs = 0, event_waits = 0, bytes_htod = 0, bytes_dtoh = 0,
                       bytes_dtod = 0, memsets = 0, allocs = 0, frees = 0, nvtx_ranges = 0,
                       graph_launches = 0;
    size_t live_bytes = 0, peak_bytes = 0;
};

struct State {
    std::mutex mu;  // everything below but the streams' queues
    bool initialised = false;
    Context primary;
    Stream legacy;
    std::set<Stream*> streams;
    std::set<Event*> events;
    std::set<Module*> modules;
    std::set<Graph*> graphs, execs;
    std::map<uint64_t, Alloc> device;      // base → block
    std::map<uint64_t, size_t> pinned;     // page-locked host blocks: base → size
    unsigned long long release_threshold = 0;
    size_t capacity = 0;
    Counters counters;
    Result sticky = kSuccess;
    std::string sticky_what;
    std::mutex exec;  // one stream's work runs at a time
};

State& g() {
    static State* s = new State();  // never destroyed: calls may come from exit handlers
    return *s;
}

thread_local Context* t_current = nullptr;

size_t device_capacity() {
    if (const char* v = getenv("DELO_EMU_MEMORY_GIB")) return (size_t)(atof(v) * (1ull << 30));
    return 16ull << 30;
}

// The live device block holding [p, p + bytes), or nullptr. Caller holds g().mu.
const std::pair<const uint64_t, Alloc>* find_block(uint64_t p, size_t bytes) {
    auto& d = g().device;
    auto it = d.upper_bound(p);
    if (it == d.begin()) return nullptr;
    --it;
    const uint64_t end = it->first + it->second.size;
    if (p < it->first || p > end || bytes > end - p) return nullptr;
    return &*it;
}

bool pinned_range(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> l(g().mu);
    auto& m = g().pinned;
    const uint64_t a = (uint64_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin()) return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second;
}

Stream* stream_of(void* s) {
    if (s == nullptr || s == (void*)0x1 || s == (void*)0x2) return &g().legacy;
    std::lock_guard<std::mutex> l(g().mu);
    return g().streams.count((Stream*)s) ? (Stream*)s : nullptr;
}

// Runs `s`'s queued work up to op number `until` (all of it by default). The caller holds
// g().exec.
void flush_locked(Stream* s, unsigned long long until = ~0ull) {
    for (;;) {
        std::function<void()> op;
        {
            std::lock_guard<std::mutex> l(s->m);
            if (s->q.empty() || s->done >= until) return;
            op = std::move(s->q.front());
            s->q.pop_front();
        }
        op();
        std::lock_guard<std::mutex> l(s->m);
        ++s->done;
    }
}

void flush(Stream* s, unsigned long long until = ~0ull) {
    std::lock_guard<std::mutex> x(g().exec);
    flush_locked(s, until);
}

// Runs every stream's work. Holding g().exec throughout keeps streams from being destroyed
// meanwhile (cuStreamDestroy_v2 takes it too).
void flush_all() {
    std::lock_guard<std::mutex> x(g().exec);
    std::vector<Stream*> all{&g().legacy};
    {
        std::lock_guard<std::mutex> l(g().mu);
        all.insert(all.end(), g().streams.begin(), g().streams.end());
    }
    for (Stream* s : all) flush_locked(s);
}

void count_sync() {
    std::lock_guard<std::mutex> l(g().mu);
    ++g().counters.host_syncs;
}

// The common prologue: initialised, no sticky error, and (when asked) a current context.
Result ready(bool needs_context = true) {
    if (!g().initialised) return kNotInitialized;
    if (Result e = sticky()) return e;
    if (needs_context && !t_current) return kInvalidContext;
    return kSuccess;
}

std::string hex(uint64_t p) {
    char b[32];
    snprintf(b, sizeof b, "0x%llx", (unsigned long long)p);
    return b;
}

// A guard byte around `a` that something overwrote, as a description; empty when intact.
std::string damaged_guard(uint64_t base, const Alloc& a) {
    for (size_t i = 0; i < kGuard; ++i) {
        if (a.raw[i] != kGuardByte)
            return std::to_string(kGuard - i) + " byte(s) before the " +
                   std::to_string(a.size) + "-byte allocation at " + hex(base);
        if (a.raw[kGuard + a.size + i] != kGuardByte)
            return "byte " + std::to_string(i) + " past the end of the " +
                   std::to_string(a.size) + "-byte allocation at " + hex(base);
    }
    return {};
}

Result alloc_device(CUdeviceptr* out, size_t bytes) {
    if (!out || bytes == 0) return kInvalidValue;
    std::lock_guard<std::mutex> l(g().mu);
    Counters& c = g().counters;
    if (c.live_bytes + bytes > g().capacity) return kOutOfMemory;
    // 256-byte aligned like cudaMalloc; kGuard is a multiple of 256. Under AddressSanitizer
    // (kGuard 0) the block is exactly `bytes` long, so that it sees the smallest overrun.
    const size_t total = kGuard ? (kGuard + bytes + kGuard + 255) / 256 * 256 : bytes;
    void* mem = nullptr;
    if (posix_memalign(&mem, 256, total) != 0) return kOutOfMemory;
    unsigned char* raw = (unsigned char*)mem;
    memset(raw, kGuardByte, kGuard);
    memset(raw + kGuard, 0xFF, bytes);
    memset(raw + kGuard + bytes, kGuardByte, total - kGuard - bytes);
    const uint64_t base = (uint64_t)(raw + kGuard);
    g().device[base] = {bytes, raw};
    ++c.allocs;
    c.live_bytes += bytes;
    c.peak_bytes = std::max(c.peak_bytes, c.live_bytes);
    *out = base;
    return kSuccess;
}

// Releases a block now (its work has run). Faults when a kernel damaged its guard bytes.
void release_block(uint64_t base) {
    std::string damaged;
    {
        std::lock_guard<std::mutex> l(g().mu);
        auto it = g().device.find(base);
        if (it == g().device.end()) return;
        damaged = damaged_guard(base, it->second);
        free(it->second.raw);
        g().counters.live_bytes -= it->second.size;
        ++g().counters.frees;
        g().device.erase(it);
    }
    if (!damaged.empty()) fault(kIllegalAddress, "device memory written out of bounds: " + damaged);
}

// Whether pointer parameter `i` of kernel `name` is declared optional (may be null).
bool is_optional(const std::string& name, int i) {
    for (const auto& [kernel, params] : optional_params())
        if (kernel == name) return std::find(params.begin(), params.end(), i) != params.end();
    return false;
}

bool is_block_base(uint64_t p) {
    std::lock_guard<std::mutex> l(g().mu);
    return g().device.count(p) > 0;
}

void run_kernel(const Function* f, const Dims& d, unsigned smem,
                const std::vector<unsigned char>& args) {
    if (sticky()) return;
    const KernelInfo& k = *f->kernel;
    count_launch(k.name);
    std::vector<uint64_t> bases;
    for (size_t i = 0; i < k.params.size(); ++i) {
        if (!k.params[i].is_pointer) continue;
        uint64_t p;
        memcpy(&p, args.data() + k.params[i].offset, 8);
        // A null pointer is an absent operand where the kernel declares the parameter
        // optional (it tests it before any access); anywhere else it is refused below.
        if (p == 0 && is_optional(k.name, (int)i)) continue;
        uint64_t base = 0;
        {
            std::lock_guard<std::mutex> l(g().mu);
            if (const auto* b = find_block(p, 0)) base = b->first;
        }
        if (base == 0) {
            fault(kIllegalAddress, "kernel " + k.name + ": pointer parameter " +
                                       std::to_string(i) + " (" + hex(p) +
                                       ") is not inside any live device allocation");
            return;
        }
        bases.push_back(base);
    }
    std::string err;
    if (!k.run(d, smem, args.data(), &err)) {
        fault(kLaunchFailed, "kernel " + k.name + ": " + err);
        return;
    }
    std::string damaged;
    {
        std::lock_guard<std::mutex> l(g().mu);
        for (uint64_t base : bases) {
            auto it = g().device.find(base);
            if (it == g().device.end() || !damaged.empty()) continue;
            damaged = damaged_guard(base, it->second);
            // Restored, so that a later free does not report the same damage again.
            memset(it->second.raw, kGuardByte, kGuard);
            memset(it->second.raw + kGuard + it->second.size, kGuardByte, kGuard);
        }
    }
    if (!damaged.empty()) fault(kIllegalAddress, "kernel " + k.name + " wrote " + damaged);
}

void print_stats(FILE* f, bool json);

void at_exit() {
    const char* v = getenv("DELO_EMU_STATS");
    if (!v || !*v || strcmp(v, "0") == 0) return;
    if (strcmp(v, "1") == 0) {
        print_stats(stderr, false);
    } else {
        // `%p` in the path stands for the process id (one file per test binary of a run).
        std::string path(v);
        const size_t at = path.find("%p");
        if (at != std::string::npos) path.replace(at, 2, std::to_string(getpid()));
        if (FILE* f = fopen(path.c_str(), "w")) {
            print_stats(f, true);
            fclose(f);
        }
    }
}

std::string stats_json() {
    std::lock_guard<std::mutex> l(g().mu);
    const Counters& c = g().counters;
    std::ostringstream o;
    unsigned long long total = 0;
    for (auto& [n, v] : c.launches) total += v;
    o << "{\"launches\":" << total << ",\"host_syncs\":" << c.host_syncs
      << ",\"event_waits\":" << c.event_waits << ",\"graph_launches\":" << c.graph_launches
      << ",\"bytes_htod\":" << c.bytes_htod << ",\"bytes_dtoh\":" << c.bytes_dtoh
      << ",\"bytes_dtod\":" << c.bytes_dtod << ",\"memsets\":" << c.memsets
      << ",\"allocs\":" << c.allocs << ",\"frees\":" << c.frees
      << ",\"nvtx_ranges\":" << c.nvtx_ranges << ",\"live_bytes\":" << c.live_bytes
      << ",\"peak_bytes\":" << c.peak_bytes << ",\"launches_by_kernel\":{";
    bool first = true;
    for (auto& [n, v] : c.launches) {
        o << (first ? "" : ",") << "\"" << n << "\":" << v;
        first = false;
    }
    o << "}}";
    return o.str();
}

void print_stats(FILE* f, bool json) {
    if (json) {
        fprintf(f, "%s\n", stats_json().c_str());
        return;
    }
    std::lock_guard<std::mutex> l(g().mu);
    const Counters& c = g().counters;
    unsigned long long total = 0;
    for (auto& [n, v] : c.launches) total += v;
    fprintf(f,
            "emulated CUDA: %llu launches, %llu graph launches, %llu host synchronisations, "
            "%llu event waits, %llu B host→device, "
            "%llu B device→host, %llu B device→device, %llu memsets, %llu allocations, %llu "
            "frees, peak %zu B live\n",
            total, c.graph_launches, c.host_syncs, c.event_waits, c.bytes_htod, c.bytes_dtoh, c.bytes_dtod,
            c.memsets, c.allocs, c.frees, c.peak_bytes);
    for (auto& [n, v] : c.launches) fprintf(f, "  %8llu  %s\n", v, n.c_str());
}

// Queues a device-side memory operation after checking its ranges now (the driver refuses
// ranges outside allocations at the call) and again when it runs (a block freed in between).
Result queue_checked(void* stream, std::vector<std::pair<uint64_t, size_t>> ranges,
                     const std::string& who, std::function<void()> op) {
    if (Result e = ready()) return e;
    for (auto& [p, n] : ranges)
        if (!device_range_ok(p, n)) return kInvalidValue;
    return enqueue(stream, [ranges, who, op = std::move(op)] {
        if (sticky()) return;
        for (auto& [p, n] : ranges)
            if (!require_range(p, n, who)) return;
        op();
    });
}

}  // namespace

std::vector<KernelInfo>& kernel_table() {
    static std::vector<KernelInfo> table;
    return table;
}

std::vector<std::pair<std::string, std::vector<int>>>& optional_params() {
    static std::vector<std::pair<std::string, std::vector<int>>> table;
    return table;
}

Result sticky() {
    std::lock_guard<std::mutex> l(g().mu);
    return g().sticky;
}

void fault(Result code, const std::string& what) {
    {
        std::lock_guard<std::mutex> l(g().mu);
        if (g().sticky) return;
        g().sticky = code;
        g().sticky_what = what;
    }
    fprintf(stderr, "emulated CUDA: %s (the context's error is now sticky: error %d)\n",
            what.c_str(), code);
}

Result enqueue(void* stream, std::function<void()> op) {
    if (!t_current) return kInvalidContext;
    Stream* s = stream_of(stream);
    if (!s) return kInvalidHandle;
    std::lock_guard<std::mutex> l(s->m);
    if (s->capture) {
        if (s->invalidated) return kCaptureInvalidated;
        s->capture->ops.push_back(std::move(op));
        return kSuccess;
    }
    s->q.push_back(std::move(op));
    ++s->queued;
    return kSuccess;
}

// ---- stream capture ----------------------------------------------------------------------------
// A capturing stream records its work into a graph instead of queueing it. Operations that
// cannot be captured (a host wait, an allocation, a copy from pageable memory, an event record
// on the capturing stream) fail with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidate the
// capture, as the driver does in the global capture mode; ending an invalidated capture fails.

// `s` alone, or (a null `s`) every created stream: the legacy stream cannot capture.
std::vector<Stream*> streams_or_all(Stream* s) {
    if (s) return {s};
    std::lock_guard<std::mutex> l(g().mu);
    return {g().streams.begin(), g().streams.end()};
}

// Whether `s` is capturing (a null `s`: whether any stream is).
bool capturing(Stream* s = nullptr) {
    for (Stream* x : streams_or_all(s)) {
        std::lock_guard<std::mutex> l(x->m);
        if (x->capture) return true;
    }
    return false;
}

// Refuses an operation during capture: invalidates `s`'s capture (every capture when `s` is
// null) and returns CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED.
Result refuse_in_capture(Stream* s = nullptr) {
    for (Stream* x : streams_or_all(s)) {
        std::lock_guard<std::mutex> l(x->m);
        if (x->capture) x->invalidated = true;
    }
    return kCaptureUnsupported;
}

bool device_range_ok(uint64_t p, size_t bytes) {
    std::lock_guard<std::mutex> l(g().mu);
    return find_block(p, bytes) != nullptr;
}

bool require_range(uint64_t p, size_t bytes, const std::string& who) {
    if (device_range_ok(p, bytes)) return true;
    fault(kIllegalAddress, who + ": the range [" + hex(p) + ", +" + std::to_string(bytes) +
                               " bytes) is not inside one live device allocation");
    return false;
}

bool context_current() { return t_current != nullptr; }

void count_launch(const std::string& name) {
    std::lock_guard<std::mutex> l(g().mu);
    ++g().counters.launches[name];
}

void count_nvtx_range() {
    std::lock_guard<std::mutex> l(g().mu);
    ++g().counters.nvtx_ranges;
}

}  // namespace emu

using namespace emu;

// ---- counters, for tests and benchmarks -------------------------------------------------------

// Writes the counters as one JSON object into buf (NUL-terminated, truncated to len) and returns
// the length the whole object needs.
EXPORT size_t delo_emu_stats_json(char* buf, size_t len) {
    const std::string s = stats_json();
    if (buf && len) {
        const size_t n = std::min(len - 1, s.size());
        memcpy(buf, s.data(), n);
        buf[n] = 0;
    }
    return s.size() + 1;
}

EXPORT void delo_emu_reset_stats() {
    std::lock_guard<std::mutex> l(g().mu);
    Counters& c = g().counters;
    const size_t live = c.live_bytes;
    c = Counters{};
    c.live_bytes = c.peak_bytes = live;
}

// ---- initialisation, devices, contexts ---------------------------------------------------------

EXPORT CUresult cuInit(unsigned flags) {
    if (flags != 0) return kInvalidValue;
    std::lock_guard<std::mutex> l(g().mu);
    if (!g().initialised) {
        g().initialised = true;
        g().capacity = device_capacity();
        atexit(at_exit);
    }
    return kSuccess;
}

EXPORT CUresult cuDriverGetVersion(int* v) {
    if (!v) return kInvalidValue;
    *v = kDriverVersion;
    return kSuccess;
}

EXPORT CUresult cuDeviceGetCount(int* n) {
    if (Result e = ready(false)) return e;
    if (!n) return kInvalidValue;
    *n = 1;
    return kSuccess;
}

EXPORT CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (Result e = ready(false)) return e;
    if (!d) return kInvalidValue;
    if (ordinal != 0) return kInvalidDevice;
    *d = 0;
    return kSuccess;
}

EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (Result e = ready(false)) return e;
    if (d != 0) return kInvalidDevice;
    if (!name || len <= 0) return kInvalidValue;
    snprintf(name, (size_t)len, "%s", kName);
    return kSuccess;
}

EXPORT CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice d) {
    if (Result e = ready(false)) return e;
    if (d != 0) return kInvalidDevice;
    if (!uuid) return kInvalidValue;
    for (int i = 0; i < 16; ++i) uuid[i] = (unsigned char)(0xde + i);
    return kSuccess;
}

EXPORT CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }

EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    if (Result e = ready(false)) return e;
    if (d != 0) return kInvalidDevice;
    if (!bytes) return kInvalidValue;
    *bytes = g().capacity;
    return kSuccess;
}

EXPORT CUresult cuDeviceComputeCapability(int* major, int* minor, CUdevice d) {
    if (Result e = ready(false)) return e;
    if (d != 0) return kInvalidDevice;
    if (!major || !minor) return kInvalidValue;
    *major = kCcMajor;
    *minor = kCcMinor;
    return kSuccess;
}

EXPORT CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
    if (Result e = ready(false)) return e;
    if (d != 0) return kInvalidDevice;
    if (!v || attr <= 0 || attr > 150) return kInvalidValue;
    switch (attr) {
        case 1: *v = kMaxThreads; break;                 // MAX_THREADS_PER_BLOCK
        case 2: case 3: case 4: *v = kMaxBlock[attr - 2]; break;
        case 5: case 6: case 7: *v = (int)kMaxGrid[attr - 5]; break;
        case 8: *v = kSmemPerBlock; break;               // MAX_SHARED_MEMORY_PER_BLOCK
        case 9: *v = 65536; break;                       // TOTAL_CONSTANT_MEMORY
        case 10: *v = 32; break;                         // WARP_SIZE
        case 12: *v = 65536; break;                      // MAX_REGISTERS_PER_BLOCK
        case 13: *v = 1980000; break;                    // CLOCK_RATE (kHz)
        case 16: *v = kSms; break;                       // MULTIPROCESSOR_COUNT
        case 19: case 31: case 41: case 83: *v = 1; break;  // map host, concurrent, UVA, managed
        case 36: *v = 3201000; break;                    // MEMORY_CLOCK_RATE (kHz)
        case 37: *v = 6144; break;                       // GLOBAL_MEMORY_BUS_WIDTH (bits)
        case 38: *v = 60 * 1024 * 1024; break;           // L2_CACHE_SIZE
        case 39: *v = 2048; break;                       // MAX_THREADS_PER_MULTIPROCESSOR
        case 40: *v = 2; break;                          // ASYNC_ENGINE_COUNT
        case 75: *v = kCcMajor; break;
        case 76: *v = kCcMinor; break;
        case 81: *v = kSmemPerSm; break;                 // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        case 82: *v = 65536; break;                      // MAX_REGISTERS_PER_MULTIPROCESSOR
        case 97: *v = kSmemOptin; break;                 // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 106: *v = 32; break;                        // MAX_BLOCKS_PER_MULTIPROCESSOR
        case 115: *v = 1; break;                         // MEMORY_POOLS_SUPPORTED
        default: *v = 0;
    }
    return kSuccess;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice d) {
    if (Result e = ready(false)) return e;
    if (d != 0) return kInvalidDevice;
    if (!ctx) return kInvalidValue;
    std::lock_guard<std::mutex> l(g().mu);
    ++g().primary.retained;
    *ctx = &g().primary;
    return kSuccess;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    if (!g().initialised) return kNotInitialized;
    if (d != 0) return kInvalidDevice;
    flush_all();
    std::lock_guard<std::mutex> l(g().mu);
    if (g().primary.retained <= 0) return kInvalidContext;
    --g().primary.retained;
    return kSuccess;
}

EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice d, unsigned* flags, int* active) {
    if (Result e = ready(false)) return e;
    if (d != 0) return kInvalidDevice;
    if (!flags || !active) return kInvalidValue;
    std::lock_guard<std::mutex> l(g().mu);
    *flags = 0;
    *active = g().primary.retained > 0;
    return kSuccess;
}

EXPORT CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice d, unsigned) {
    if (Result e = ready(false)) return e;
    if (d != 0) return kInvalidDevice;
    std::lock_guard<std::mutex> l(g().mu);
    return g().primary.retained > 0 ? kPrimaryContextActive : kSuccess;
}

EXPORT CUresult cuCtxSetCurrent(void* ctx) {
    if (!g().initialised) return kNotInitialized;
    if (ctx && ctx != &g().primary) return kInvalidContext;
    t_current = (Context*)ctx;
    return kSuccess;
}

EXPORT CUresult cuCtxGetCurrent(void** ctx) {
    if (!g().initialised) return kNotInitialized;
    if (!ctx) return kInvalidValue;
    *ctx = t_current;
    return kSuccess;
}

EXPORT CUresult cuCtxPushCurrent_v2(void* ctx) { return cuCtxSetCurrent(ctx); }

EXPORT CUresult cuCtxPopCurrent_v2(void** ctx) {
    if (!g().initialised) return kNotInitialized;
    if (ctx) *ctx = t_current;
    t_current = nullptr;
    return kSuccess;
}

EXPORT CUresult cuCtxGetDevice(CUdevice* d) {
    if (Result e = ready()) return e;
    if (!d) return kInvalidValue;
    *d = 0;
    return kSuccess;
}

EXPORT CUresult cuCtxSynchronize() {
    if (Result e = ready()) return e;
    if (capturing()) return refuse_in_capture();
    flush_all();
    count_sync();
    return sticky();
}

// ---- streams and events ----------------------------------------------------------------------

EXPORT CUresult cuStreamCreate(void** s, unsigned flags) {
    if (Result e = ready()) return e;
    if (!s || flags > 1) return kInvalidValue;
    Stream* n = new Stream();
    std::lock_guard<std::mutex> l(g().mu);
    g().streams.insert(n);
    *s = n;
    return kSuccess;
}

EXPORT CUresult cuStreamCreateWithPriority(void** s, unsigned flags, int) {
    return cuStreamCreate(s, flags);
}

EXPORT CUresult cuStreamGetPriority(void* s, int* p) {
    if (Result e = ready()) return e;
    if (!stream_of(s) || !p) return kInvalidValue;
    *p = 0;
    return kSuccess;
}

EXPORT CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (Result e = ready()) return e;
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return kSuccess;
}

// How a host call that runs queued work waits on a GPU.
enum class Wait { None, Stream, Event };

// Runs `st`'s work up to op number `until` (none without a stream), counting the host wait:
// a whole stream's synchronisation, one event's (work queued earlier, typically done by then on
// a GPU), or none (a query does not block).
static CUresult run_until(Stream* st, unsigned long long until, Wait wait) {
    if (st) flush(st, until);
    if (wait == Wait::Stream) count_sync();
    if (wait == Wait::Event) {
        std::lock_guard<std::mutex> l(g().mu);
        ++g().counters.event_waits;
    }
    return sticky();
}

EXPORT CUresult cuStreamSynchronize(void* s) {
    if (Result e = ready()) return e;
    Stream* st = stream_of(s);
    if (st && capturing(st)) return refuse_in_capture(st);
    return st ? run_until(st, ~0ull, Wait::Stream) : kInvalidHandle;
}

EXPORT CUresult cuStreamQuery(void* s) {
    if (Result e = ready()) return e;
    Stream* st = stream_of(s);
    if (st && capturing(st)) return refuse_in_capture(st);
    return st ? run_until(st, ~0ull, Wait::None) : kInvalidHandle;
}

EXPORT CUresult cuStreamDestroy_v2(void* s) {
    if (Result e = ready()) return e;
    Stream* st = stream_of(s);
    if (!st || st == &g().legacy) return kInvalidHandle;
    std::lock_guard<std::mutex> x(g().exec);
    flush_locked(st);
    std::lock_guard<std::mutex> l(g().mu);
    // Events recorded on it have happened; they no longer refer to the stream.
    for (Event* ev : g().events)
        if (ev->stream == st) ev->stream = nullptr;
    g().streams.erase(st);
    delete st;
    return kSuccess;
}

EXPORT CUresult cuEventCreate(void** e, unsigned flags) {
    if (Result r = ready()) return r;
    if (!e || flags > 0xF) return kInvalidValue;
    Event* ev = new Event();
    ev->timing = (flags & 0x2) == 0;  // CU_EVENT_DISABLE_TIMING
    std::lock_guard<std::mutex> l(g().mu);
    g().events.insert(ev);
    *e = ev;
    return kSuccess;
}

static Event* event_of(void* e) {
    std::lock_guard<std::mutex> l(g().mu);
    return g().events.count((Event*)e) ? (Event*)e : nullptr;
}

EXPORT CUresult cuEventRecord(void* e, void* s) {
    if (Result r = ready()) return r;
    Event* ev = event_of(e);
    Stream* st = stream_of(s);
    if (!ev || !st) return kInvalidHandle;
    // Events between captured work are graph edges on a GPU; this emulation has none.
    if (capturing(st)) return refuse_in_capture(st);
    std::lock_guard<std::mutex> l(st->m);
    ev->stream = st;
    ev->recorded = true;
    ev->happened = false;
    st->q.push_back([ev] {
        ev->at = std::chrono::steady_clock::now();
        ev->happened = true;
    });
    ev->seq = ++st->queued;
    return kSuccess;
}

EXPORT CUresult cuEventRecordWithFlags(void* e, void* s, unsigned) { return cuEventRecord(e, s); }

EXPORT CUresult cuEventSynchronize(void* e) {
    if (Result r = ready()) return r;
    Event* ev = event_of(e);
    if (!ev) return kInvalidHandle;
    return run_until(ev->recorded ? ev->stream : nullptr, ev->seq, Wait::Event);
}

EXPORT CUresult cuEventQuery(void* e) {
    if (Result r = ready()) return r;
    Event* ev = event_of(e);
    if (!ev) return kInvalidHandle;
    return run_until(ev->recorded ? ev->stream : nullptr, ev->seq, Wait::None);
}

EXPORT CUresult cuStreamWaitEvent(void* s, void* e, unsigned flags) {
    if (Result r = ready()) return r;
    Event* ev = event_of(e);
    if (!ev || !stream_of(s)) return kInvalidHandle;
    if (flags > 1) return kInvalidValue;
    // Work of other streams only runs when the host synchronises, so the event's stream is run
    // up to the event now: everything queued on `s` afterwards then follows it.
    if (ev->recorded && ev->stream && ev->stream != stream_of(s)) flush(ev->stream, ev->seq);
    return kSuccess;
}

EXPORT CUresult cuEventElapsedTime(float* ms, void* start, void* end) {
    if (Result r = ready()) return r;
    Event *a = event_of(start), *b = event_of(end);
    if (!ms || !a || !b) return kInvalidHandle;
    if (!a->timing || !b->timing) return kInvalidHandle;
    if (!a->recorded || !b->recorded) return kInvalidHandle;
    if (!a->happened || !b->happened) return kNotReady;
    *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
    return kSuccess;
}

EXPORT CUresult cuEventElapsedTime_v2(float* ms, void* start, void* end) {
    return cuEventElapsedTime(ms, start, end);
}

EXPORT CUresult cuEventDestroy_v2(void* e) {
    if (Result r = ready()) return r;
    Event* ev = event_of(e);
    if (!ev) return kInvalidHandle;
    if (ev->recorded && ev->stream) flush(ev->stream, ev->seq);
    std::lock_guard<std::mutex> l(g().mu);
    g().events.erase(ev);
    delete ev;
    return kSuccess;
}

// ---- memory ------------------------------------------------------------------------------------

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    if (Result e = ready()) return e;
    if (capturing()) return refuse_in_capture();
    return alloc_device(p, bytes);
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void* s) {
    if (Result e = ready()) return e;
    Stream* st = stream_of(s);
    if (!st) return kInvalidHandle;
    // Graph memory nodes are not emulated: allocate before capturing.
    if (capturing(st)) return refuse_in_capture(st);
    return alloc_device(p, bytes);
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
    if (Result e = ready()) return e;
    if (capturing()) return refuse_in_capture();
    if (!is_block_base(p)) return kInvalidValue;
    flush_all();  // a blocking free waits for the device
    count_sync();
    release_block(p);
    return sticky();
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, void* s) {
    if (Result e = ready()) return e;
    if (Stream* st = stream_of(s); st && capturing(st)) return refuse_in_capture(st);
    if (!is_block_base(p)) return kInvalidValue;
    return enqueue(s, [p] { release_block(p); });
}

EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    if (Result e = ready()) return e;
    if (!free_bytes || !total) return kInvalidValue;
    std::lock_guard<std::mutex> l(g().mu);
    *total = g().capacity;
    *free_bytes = g().capacity - g().counters.live_bytes;
    return kSuccess;
}

EXPORT CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned flags) {
    if (Result e = ready()) return e;
    if (!p || bytes == 0 || flags > 0xF) return kInvalidValue;
    void* m = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (!m) return kOutOfMemory;
    memset(m, 0xFF, bytes);
    std::lock_guard<std::mutex> l(g().mu);
    g().pinned[(uint64_t)m] = bytes;
    *p = m;
    return kSuccess;
}

EXPORT CUresult cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }

EXPORT CUresult cuMemFreeHost(void* p) {
    if (Result e = ready()) return e;
    if (capturing()) return refuse_in_capture();
    {
        std::lock_guard<std::mutex> l(g().mu);
        if (!g().pinned.count((uint64_t)p)) return kInvalidValue;
    }
    flush_all();
    std::lock_guard<std::mutex> l(g().mu);
    g().pinned.erase((uint64_t)p);
    free(p);
    return kSuccess;
}

EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
    if (!src && n) return kInvalidValue;
    if (Stream* st = stream_of(s); st && capturing(st)) {
        // A captured copy reads the host memory when the graph runs; only page-locked memory
        // can be captured.
        if (!pinned_range(src, n)) return refuse_in_capture(st);
        Result r = queue_checked(s, {{dst, n}}, "cuMemcpyHtoDAsync (graph)",
                                 [dst, src, n] { memcpy((void*)dst, src, n); });
        if (r == kSuccess) {
            std::lock_guard<std::mutex> l(g().mu);
            g().counters.bytes_htod += n;
        }
        return r;
    }
    // Staged at the call, from pinned memory too: a later stream-ordered copy into the same
    // pinned buffer (which fills it with 0xFF until the host synchronises) must not change
    // what this one uploads.
    auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char*)src,
                                                               (const unsigned char*)src + n);
    std::function<void()> copy = [dst, staged] {
        memcpy((void*)dst, staged->data(), staged->size());
    };
    Result r = queue_checked(s, {{dst, n}}, "cuMemcpyHtoDAsync", std::move(copy));
    if (r == kSuccess) {
        std::lock_guard<std::mutex> l(g().mu);
        g().counters.bytes_htod += n;
    }
    return r;
}

EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* s) {
    if (!dst && n) return kInvalidValue;
    const bool pinned = pinned_range(dst, n);
    Stream* st = stream_of(s);
    const bool captured = st && capturing(st);
    if (captured && !pinned) return refuse_in_capture(st);
    if (pinned && !captured && device_range_ok(src, n)) {
        // Until the host synchronises, the destination holds no data yet.
        memset(dst, 0xFF, n);
    }
    Result r = queue_checked(s, {{src, n}}, "cuMemcpyDtoHAsync",
                             [dst, src, n] { memcpy(dst, (const void*)src, n); });
    if (r != kSuccess) return r;
    {
        std::lock_guard<std::mutex> l(g().mu);
        g().counters.bytes_dtoh += n;
    }
    if (pinned) return kSuccess;
    // Into pageable memory the copy is complete when the call returns.
    flush(stream_of(s));
    count_sync();
    return sticky();
}

EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* s) {
    Result r = queue_checked(s, {{dst, n}, {src, n}}, "cuMemcpyDtoDAsync",
                             [dst, src, n] { memmove((void*)dst, (const void*)src, n); });
    if (r == kSuccess) {
        std::lock_guard<std::mutex> l(g().mu);
        g().counters.bytes_dtod += n;
    }
    return r;
}

EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    if (Result e = ready()) return e;
    if (capturing()) return refuse_in_capture();
    flush_all();
    Result r = cuMemcpyHtoDAsync_v2(dst, src, n, nullptr);
    if (r) return r;
    flush(&g().legacy);
    count_sync();
    return sticky();
}

EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    if (Result e = ready()) return e;
    if (capturing()) return refuse_in_capture();
    flush_all();
    Result r = cuMemcpyDtoHAsync_v2(dst, src, n, nullptr);
    if (r) return r;
    flush(&g().legacy);  // a blocking copy is complete on return, pinned destination or not
    count_sync();
    return sticky();
}

EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (Result e = ready()) return e;
    if (capturing()) return refuse_in_capture();
    flush_all();
    Result r = cuMemcpyDtoDAsync_v2(dst, src, n, nullptr);
    if (r) return r;
    flush(&g().legacy);
    return sticky();
}

static CUresult memset_async(CUdeviceptr p, unsigned value, size_t count, unsigned width, void* s) {
    Result r = queue_checked(s, {{p, count * width}}, "cuMemset", [p, value, count, width] {
        if (width == 1) {
            memset((void*)p, (int)value, count);
        } else {
            for (size_t i = 0; i < count; ++i) memcpy((unsigned char*)p + 4 * i, &value, 4);
        }
    });
    if (r == kSuccess) {
        std::lock_guard<std::mutex> l(g().mu);
        ++g().counters.memsets;
    }
    return r;
}

EXPORT CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, void* s) {
    return memset_async(p, v, n, 1, s);
}

EXPORT CUresult cuMemsetD32Async(CUdeviceptr p, unsigned v, size_t n, void* s) {
    if (p % 4) return kInvalidValue;
    return memset_async(p, v, n, 4, s);
}

EXPORT CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
    if (capturing()) return refuse_in_capture();
    Result r = memset_async(p, v, n, 1, nullptr);
    if (r) return r;
    flush(&g().legacy);
    return sticky();
}

EXPORT CUresult cuMemsetD32_v2(CUdeviceptr p, unsigned v, size_t n) {
    if (capturing()) return refuse_in_capture();
    if (p % 4) return kInvalidValue;
    Result r = memset_async(p, v, n, 4, nullptr);
    if (r) return r;
    flush(&g().legacy);
    return sticky();
}

// The default memory pool: allocations are separate blocks whatever its attributes say; the
// release threshold is kept so that it reads back as set.
static int g_pool;

EXPORT CUresult cuDeviceGetDefaultMemPool(void** pool, CUdevice d) {
    if (Result e = ready(false)) return e;
    if (d != 0) return kInvalidDevice;
    if (!pool) return kInvalidValue;
    *pool = &g_pool;
    return kSuccess;
}

EXPORT CUresult cuMemPoolSetAttribute(void* pool, int attr, void* value) {
    if (Result e = ready(false)) return e;
    if (pool != &g_pool || !value) return kInvalidValue;
    if (attr == 4) {  // CU_MEMPOOL_ATTR_RELEASE_THRESHOLD
        std::lock_guard<std::mutex> l(g().mu);
        g().release_threshold = *(unsigned long long*)value;
        return kSuccess;
    }
    return attr >= 1 && attr <= 3 ? kSuccess : kInvalidValue;
}

EXPORT CUresult cuMemPoolGetAttribute(void* pool, int attr, void* value) {
    if (Result e = ready(false)) return e;
    if (pool != &g_pool || !value) return kInvalidValue;
    std::lock_guard<std::mutex> l(g().mu);
    switch (attr) {
        case 4: *(unsigned long long*)value = g().release_threshold; return kSuccess;
        case 5: case 7: *(unsigned long long*)value = g().counters.live_bytes; return kSuccess;
        case 6: case 8: *(unsigned long long*)value = g().counters.peak_bytes; return kSuccess;
        case 1: case 2: case 3: *(int*)value = 1; return kSuccess;
        default: return kInvalidValue;
    }
}

EXPORT CUresult cuMemPoolTrimTo(void* pool, size_t) {
    if (Result e = ready(false)) return e;
    return pool == &g_pool ? kSuccess : kInvalidValue;
}

// ---- modules and launches ----------------------------------------------------------------------

EXPORT CUresult cuModuleLoadData(void** module, const void* image) {
    if (Result e = ready()) return e;
    if (!module || !image) return kInvalidValue;
    ptx::Module parsed;
    std::string err;
    if (!ptx::parse((const char*)image, &parsed, &err)) {
        fprintf(stderr, "emulated CUDA: cuModuleLoadData: %s\n", err.c_str());
        return kInvalidPtx;
    }
    if (parsed.isa_version > kPtxIsaMax) {
        fprintf(stderr,
                "emulated CUDA: cuModuleLoadData: PTX ISA %d.%d is newer than this CUDA 13.0 "
                "driver's %d.%d\n",
                parsed.isa_version / 10, parsed.isa_version % 10, kPtxIsaMax / 10, kPtxIsaMax % 10);
        return kUnsupportedPtxVersion;
    }
    if (parsed.target_sm > kCcMajor * 10 + kCcMinor ||
        (parsed.arch_specific && parsed.target_sm != kCcMajor * 10 + kCcMinor)) {
        fprintf(stderr, "emulated CUDA: cuModuleLoadData: .target %s does not run on sm_%d%d\n",
                parsed.target.c_str(), kCcMajor, kCcMinor);
        return kNoBinaryForGpu;
    }
    auto m = std::make_unique<Module>();
    std::map<std::string, const KernelInfo*> by_name;
    for (const KernelInfo& k : kernel_table()) by_name[k.name] = &k;
    for (const ptx::Entry& e : parsed.entries) {
        auto it = by_name.find(e.name);
        if (it == by_name.end()) {
            fprintf(stderr,
                    "emulated CUDA: cuModuleLoadData: the PTX's kernel %s has no emulated twin "
                    "(the emulator was built from other kernels/*.cu sources)\n",
                    e.name.c_str());
            return kInvalidPtx;
        }
        const KernelInfo& k = *it->second;
        std::string want, got;
        for (auto& p : k.params) want += std::string(want.empty() ? "" : ", ") + p.ptx_type;
        for (auto& t : e.param_types) got += std::string(got.empty() ? "" : ", ") + t;
        if (want != got) {
            fprintf(stderr,
                    "emulated CUDA: cuModuleLoadData: kernel %s takes (%s) in the PTX but (%s) in "
                    "the emulated source\n",
                    e.name.c_str(), got.c_str(), want.c_str());
            return kInvalidPtx;
        }
        m->functions[e.name] = std::make_unique<Function>(
            Function{&k, e, (int)kSmemPerBlock - (int)e.static_smem});
    }
    Module* raw = m.release();
    std::lock_guard<std::mutex> l(g().mu);
    g().modules.insert(raw);
    *module = raw;
    return kSuccess;
}

EXPORT CUresult cuModuleLoadDataEx(void** module, const void* image, unsigned, void*, void**) {
    return cuModuleLoadData(module, image);
}

EXPORT CUresult cuModuleLoad(void** module, const char* path) {
    if (Result e = ready()) return e;
    std::ifstream f(path ? path : "", std::ios::binary);
    if (!f) return 301;  // CUDA_ERROR_FILE_NOT_FOUND
    std::stringstream ss;
    ss << f.rdbuf();
    return cuModuleLoadData(module, ss.str().c_str());
}

static Module* module_of(void* m) {
    std::lock_guard<std::mutex> l(g().mu);
    return g().modules.count((Module*)m) ? (Module*)m : nullptr;
}

EXPORT CUresult cuModuleUnload(void* module) {
    if (Result e = ready()) return e;
    Module* m = module_of(module);
    if (!m) return kInvalidHandle;
    flush_all();
    std::lock_guard<std::mutex> l(g().mu);
    g().modules.erase(m);
    delete m;
    return kSuccess;
}

EXPORT CUresult cuModuleGetFunction(void** f, void* module, const char* name) {
    if (Result e = ready()) return e;
    Module* m = module_of(module);
    if (!m) return kInvalidHandle;
    if (!f || !name) return kInvalidValue;
    auto it = m->functions.find(name);
    if (it == m->functions.end()) return kNotFound;
    *f = it->second.get();
    return kSuccess;
}

EXPORT CUresult cuFuncGetAttribute(int* v, int attr, void* fn) {
    if (Result e = ready()) return e;
    Function* f = (Function*)fn;
    if (!v || !f) return kInvalidValue;
    switch (attr) {
        case 0: *v = f->entry.max_threads ? (int)f->entry.max_threads : kMaxThreads; break;
        case 1: *v = (int)f->entry.static_smem; break;
        case 2: case 3: *v = 0; break;
        case 4: *v = 32; break;  // registers: unknown on the CPU; a plausible value
        case 5: case 6: *v = kCcMajor * 10 + kCcMinor; break;
        case 8: *v = f->max_dynamic_smem; break;
        default: return kInvalidValue;
    }
    return kSuccess;
}

EXPORT CUresult cuFuncSetAttribute(void* fn, int attr, int value) {
    if (Result e = ready()) return e;
    Function* f = (Function*)fn;
    if (!f) return kInvalidHandle;
    if (attr == 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value < 0 || value + (int)f->entry.static_smem > kSmemOptin) return kInvalidValue;
        f->max_dynamic_smem = value;
        return kSuccess;
    }
    return attr == 9 ? kSuccess : kInvalidValue;  // the carveout is only a hint
}

EXPORT CUresult cuFuncSetCacheConfig(void* fn, int) {
    if (Result e = ready()) return e;
    return fn ? kSuccess : kInvalidHandle;
}

static CUresult launch_refused(const Function* f, const std::string& why) {
    fprintf(stderr, "emulated CUDA: cuLaunchKernel(%s) refused: %s\n",
            f->kernel->name.c_str(), why.c_str());
    return kInvalidValue;
}

EXPORT CUresult cuLaunchKernel(void* fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                               unsigned by, unsigned bz, unsigned smem, void* s, void** params,
                               void** extra) {
    if (Result e = ready()) return e;
    const Function* f = (const Function*)fn;
    if (!f) return kInvalidHandle;
    const unsigned grid[3] = {gx, gy, gz}, blk[3] = {bx, by, bz};
    for (int i = 0; i < 3; ++i) {
        if (grid[i] == 0 || blk[i] == 0) return launch_refused(f, "a grid or block dimension is 0");
        if ((long long)grid[i] > kMaxGrid[i])
            return launch_refused(f, "grid dimension " + std::to_string(i) + " = " +
                                         std::to_string(grid[i]) + " is above the device limit " +
                                         std::to_string(kMaxGrid[i]));
        if ((int)blk[i] > kMaxBlock[i])
            return launch_refused(f, "block dimension " + std::to_string(i) + " = " +
                                         std::to_string(blk[i]) + " is above the device limit " +
                                         std::to_string(kMaxBlock[i]));
    }
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (threads > (unsigned long long)kMaxThreads)
        return launch_refused(f, std::to_string(threads) + " threads per block, above " +
                                     std::to_string(kMaxThreads));
    if (f->entry.max_threads && threads > f->entry.max_threads)
        return launch_refused(f, std::to_string(threads) + " threads per block, above the " +
                                     "kernel's .maxntid (__launch_bounds__) of " +
                                     std::to_string(f->entry.max_threads));
    if ((long long)smem > f->max_dynamic_smem)
        return launch_refused(f, std::to_string(smem) + " bytes of dynamic shared memory with " +
                                     std::to_string(f->entry.static_smem) +
                                     " static: above the " + std::to_string(f->max_dynamic_smem) +
                                     " the kernel may use (raise it with "
                                     "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, up to " +
                                     std::to_string(kSmemOptin) + " in all)");
    const KernelInfo& k = *f->kernel;
    std::vector<unsigned char> args(k.args_bytes);
    if (params && extra) return launch_refused(f, "both kernelParams and extra are given");
    if (extra) {
        // {CU_LAUNCH_PARAM_BUFFER_POINTER, p, CU_LAUNCH_PARAM_BUFFER_SIZE, &n, CU_LAUNCH_PARAM_END}
        const void* buf = nullptr;
        size_t n = 0;
        for (size_t i = 0; extra[i] != nullptr; i += 2) {
            if (extra[i] == (void*)0x1) buf = extra[i + 1];
            else if (extra[i] == (void*)0x2) n = *(size_t*)extra[i + 1];
            else return launch_refused(f, "an unknown entry in extra");
        }
        if (!buf || n != k.args_bytes)
            return launch_refused(f, "extra's argument buffer is " + std::to_string(n) +
                                         " bytes, the kernel takes " +
                                         std::to_string(k.args_bytes));
        memcpy(args.data(), buf, n);
    } else if (!k.params.empty()) {
        if (!params) return launch_refused(f, "the kernel has parameters but kernelParams is null");
        for (size_t i = 0; i < k.params.size(); ++i) {
            if (!params[i])
                return launch_refused(f, "kernelParams[" + std::to_string(i) + "] is null");
            memcpy(args.data() + k.params[i].offset, params[i], k.params[i].size);
        }
    }
    const Dims d{gx, gy, gz, bx, by, bz};
    return enqueue(s, [f, d, smem, args = std::move(args)] { run_kernel(f, d, smem, args); });
}

// ---- graphs ------------------------------------------------------------------------------------

EXPORT CUresult cuStreamBeginCapture_v2(void* s, int mode) {
    if (Result e = ready()) return e;
    if (mode < 0 || mode > 2) return kInvalidValue;
    if (s == nullptr || s == (void*)0x1 || s == (void*)0x2) return kCaptureUnsupported;
    Stream* st = stream_of(s);
    if (!st) return kInvalidHandle;
    std::lock_guard<std::mutex> l(st->m);
    if (st->capture) return kIllegalState;
    st->capture = new Graph();
    st->invalidated = false;
    return kSuccess;
}

EXPORT CUresult cuStreamBeginCapture(void* s, int mode) { return cuStreamBeginCapture_v2(s, mode); }

EXPORT CUresult cuStreamEndCapture(void* s, void** graph) {
    if (Result e = ready()) return e;
    if (!graph) return kInvalidValue;
    Stream* st = stream_of(s);
    if (!st) return kInvalidHandle;
    Graph* cap;
    bool invalidated;
    {
        std::lock_guard<std::mutex> l(st->m);
        if (!st->capture) return kIllegalState;
        cap = st->capture;
        invalidated = st->invalidated;
        st->capture = nullptr;
        st->invalidated = false;
    }
    if (invalidated) {
        delete cap;
        *graph = nullptr;
        return kCaptureInvalidated;
    }
    std::lock_guard<std::mutex> l(g().mu);
    g().graphs.insert(cap);
    *graph = cap;
    return kSuccess;
}

// CU_STREAM_CAPTURE_STATUS_NONE, _ACTIVE, _INVALIDATED.
EXPORT CUresult cuStreamIsCapturing(void* s, int* status) {
    if (Result e = ready()) return e;
    if (!status) return kInvalidValue;
    Stream* st = stream_of(s);
    if (!st) return kInvalidHandle;
    std::lock_guard<std::mutex> l(st->m);
    *status = st->capture ? (st->invalidated ? 2 : 1) : 0;
    return kSuccess;
}

static Graph* graph_in(std::set<Graph*> State::*set, void* h) {
    std::lock_guard<std::mutex> l(g().mu);
    return (g().*set).count((Graph*)h) ? (Graph*)h : nullptr;
}

EXPORT CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long flags) {
    if (Result e = ready()) return e;
    if (!exec || flags > 0xF) return kInvalidValue;
    Graph* gr = graph_in(&State::graphs, graph);
    if (!gr) return kInvalidHandle;
    Graph* x = new Graph(*gr);
    std::lock_guard<std::mutex> l(g().mu);
    g().execs.insert(x);
    *exec = x;
    return kSuccess;
}

EXPORT CUresult cuGraphLaunch(void* exec, void* s) {
    if (Result e = ready()) return e;
    Graph* x = graph_in(&State::execs, exec);
    if (!x) return kInvalidHandle;
    Stream* st = stream_of(s);
    if (!st) return kInvalidHandle;
    // Child graphs are not emulated.
    if (capturing(st)) return refuse_in_capture(st);
    // The graph's ops are copied: destroying the exec while a launch is queued is legal.
    Result r = enqueue(s, [ops = x->ops] {
        for (const auto& op : ops) op();
    });
    if (r == kSuccess) {
        std::lock_guard<std::mutex> l(g().mu);
        ++g().counters.graph_launches;
    }
    return r;
}

EXPORT CUresult cuGraphExecDestroy(void* exec) {
    if (Result e = ready()) return e;
    std::lock_guard<std::mutex> l(g().mu);
    if (!g().execs.erase((Graph*)exec)) return kInvalidHandle;
    delete (Graph*)exec;
    return kSuccess;
}

EXPORT CUresult cuGraphDestroy(void* graph) {
    if (Result e = ready()) return e;
    std::lock_guard<std::mutex> l(g().mu);
    if (!g().graphs.erase((Graph*)graph)) return kInvalidHandle;
    delete (Graph*)graph;
    return kSuccess;
}

// ---- errors ------------------------------------------------------------------------------------

static const char* error_name(int e) {
    switch (e) {
        case 0: return "CUDA_SUCCESS";
        case 1: return "CUDA_ERROR_INVALID_VALUE";
        case 2: return "CUDA_ERROR_OUT_OF_MEMORY";
        case 3: return "CUDA_ERROR_NOT_INITIALIZED";
        case 100: return "CUDA_ERROR_NO_DEVICE";
        case 101: return "CUDA_ERROR_INVALID_DEVICE";
        case 201: return "CUDA_ERROR_INVALID_CONTEXT";
        case 209: return "CUDA_ERROR_NO_BINARY_FOR_GPU";
        case 218: return "CUDA_ERROR_INVALID_PTX";
        case 222: return "CUDA_ERROR_UNSUPPORTED_PTX_VERSION";
        case 301: return "CUDA_ERROR_FILE_NOT_FOUND";
        case 400: return "CUDA_ERROR_INVALID_HANDLE";
        case 401: return "CUDA_ERROR_ILLEGAL_STATE";
        case 500: return "CUDA_ERROR_NOT_FOUND";
        case 600: return "CUDA_ERROR_NOT_READY";
        case 700: return "CUDA_ERROR_ILLEGAL_ADDRESS";
        case 708: return "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE";
        case 719: return "CUDA_ERROR_LAUNCH_FAILED";
        case 801: return "CUDA_ERROR_NOT_SUPPORTED";
        case 900: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
        case 901: return "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
        case 999: return "CUDA_ERROR_UNKNOWN";
        default: return nullptr;
    }
}

static const char* error_text(int e) {
    switch (e) {
        case 0: return "no error";
        case 1: return "invalid argument";
        case 2: return "out of memory";
        case 3: return "initialization error";
        case 100: return "no CUDA-capable device is detected";
        case 101: return "invalid device ordinal";
        case 201: return "invalid device context";
        case 209: return "no kernel image is available for execution on the device";
        case 218: return "a PTX JIT compilation failed";
        case 222: return "the provided PTX was compiled with an unsupported toolchain";
        case 301: return "file not found";
        case 400: return "invalid resource handle";
        case 401: return "the operation cannot be performed in the present state";
        case 500: return "named symbol not found";
        case 600: return "device not ready";
        case 700: return "an illegal memory access was encountered";
        case 708: return "primary context active";
        case 719: return "unspecified launch failure";
        case 801: return "operation not supported";
        case 900: return "operation not permitted when stream is capturing";
        case 901: return "operation failed due to a previous error during capture";
        case 999: return "unknown error";
        default: return nullptr;
    }
}

EXPORT CUresult cuGetErrorName(int e, const char** out) {
    if (!out) return kInvalidValue;
    *out = error_name(e);
    return *out ? kSuccess : kInvalidValue;
}

EXPORT CUresult cuGetErrorString(int e, const char** out) {
    if (!out) return kInvalidValue;
    *out = error_text(e);
    return *out ? kSuccess : kInvalidValue;
}

// ---- profiler ----------------------------------------------------------------------------------

EXPORT CUresult cuProfilerStart() { return ready(); }
EXPORT CUresult cuProfilerStop() { return ready(); }
