// The emulated cuBLAS: handles and the two GEMM entry points delo uses (cublasGemmEx and
// cublasGemmStridedBatchedEx), column-major as cuBLAS is, queued on the handle's stream.
//
// Arguments are checked as the cuBLAS documentation states, with its status codes: op codes,
// m, n, k, batch ≥ 0, lda ≥ max(1, rows of op(A)'s stored matrix) and likewise ldb, ldc ≥ max(1,
// m), supported type/compute combinations, null scalars. A product with m or n of 0 does
// nothing; k = 0 scales C by β; β = 0 never reads C. When the call runs, each operand's whole
// range must lie inside one live device allocation (else an illegal-address fault, as a GPU
// would take). Products accumulate in f32, as CUBLAS_COMPUTE_32F does.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "runtime.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// cublasStatus_t
constexpr int kOk = 0, kNotInitialized = 1, kInvalidValue = 7, kExecutionFailed = 13,
              kNotSupported = 15;
// cudaDataType_t
constexpr int kR32F = 0, kR16F = 2, kR16BF = 14;
// cublasComputeType_t: 32F, 32F_PEDANTIC, 32F_FAST_16F, 32F_FAST_16BF, 32F_FAST_TF32
bool compute_32f(int c) { return c == 68 || c == 69 || c == 74 || c == 75 || c == 77; }

struct Handle {
    void* stream = nullptr;
    int pointer_mode = 0;  // CUBLAS_POINTER_MODE_HOST
    int math_mode = 0;
};

float load(const unsigned char* p, int type, size_t i) {
    if (type == kR32F) {
        float v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    if (type == kR16BF) {
        const uint32_t u = (uint32_t)h << 16;
        float v;
        memcpy(&v, &u, 4);
        return v;
    }
    // IEEE half.
    const uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023;
    float v;
    if (exp == 0) {
        v = std::ldexp((float)man, -24);
    } else if (exp == 31) {
        v = man ? NAN : INFINITY;
    } else {
        v = std::ldexp((float)(man | 1024), (int)exp - 25);
    }
    return sign ? -v : v;
}

void store(unsigned char* p, int type, size_t i, float v) {
    if (type == kR32F) {
        memcpy(p + 4 * i, &v, 4);
        return;
    }
    uint16_t h;
    if (type == kR16BF) {
        uint32_t u;
        memcpy(&u, &v, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            h = (uint16_t)((u >> 16) | 0x40);  // quiet NaN
        } else {
            u += 0x7fffu + ((u >> 16) & 1);  // round to nearest even
            h = (uint16_t)(u >> 16);
        }
    } else {
        // IEEE half through the conversion the compiler provides.
        _Float16 x = (_Float16)v;
        memcpy(&h, &x, 2);
    }
    memcpy(p + 2 * i, &h, 2);
}

size_t type_size(int t) { return t == kR32F ? 4 : 2; }

struct Gemm {
    int ta, tb, m, n, k;
    float alpha, beta;
    uint64_t a, b, c;
    int type_a, type_b, type_c;
    long long lda, ldb, ldc, sa, sb, sc;
    int batch;
};

// Elements a column-major `rows × cols` operand with leading dimension `ld` spans.
size_t span(long long rows, long long cols, long long ld) {
    return rows == 0 || cols == 0 ? 0 : (size_t)((cols - 1) * ld + rows);
}

void run(const Gemm& g, const char* who) {
    if (emu::sticky()) return;
    const long long ra = g.ta ? g.k : g.m, ca = g.ta ? g.m : g.k;
    const long long rb = g.tb ? g.n : g.k, cb = g.tb ? g.k : g.n;
    const size_t last = (size_t)(g.batch - 1);
    const std::string name(who);
    if (g.k > 0 && g.alpha != 0.0f) {
        if (!emu::require_range(g.a, (last * g.sa + span(ra, ca, g.lda)) * type_size(g.type_a), name + ": A") ||
            !emu::require_range(g.b, (last * g.sb + span(rb, cb, g.ldb)) * type_size(g.type_b), name + ": B"))
            return;
    }
    if (!emu::require_range(g.c, (last * g.sc + span(g.m, g.n, g.ldc)) * type_size(g.type_c), name + ": C"))
        return;
    // α = 0 or k = 0: cuBLAS reads neither A nor B, C becomes β·C (0 when β = 0).
    const bool product = g.k > 0 && g.alpha != 0.0f;
    std::vector<float> at(product ? (size_t)g.m * g.k : 0), bt(product ? (size_t)g.n * g.k : 0);
    for (int item = 0; item < g.batch; ++item) {
        const unsigned char* a = (const unsigned char*)g.a + item * g.sa * type_size(g.type_a);
        const unsigned char* b = (const unsigned char*)g.b + item * g.sb * type_size(g.type_b);
        unsigned char* c = (unsigned char*)g.c + item * g.sc * type_size(g.type_c);
        if (!product) {
            for (int j = 0; j < g.n; ++j)
                for (int i = 0; i < g.m; ++i) {
                    const size_t at_c = (size_t)j * g.ldc + i;
                    store(c, g.type_c, at_c, g.beta != 0.0f ? g.beta * load(c, g.type_c, at_c) : 0.0f);
                }
            continue;
        }
        // op(A) row i and op(B) column j, each contiguous over l.
        for (int i = 0; i < g.m; ++i)
            for (int l = 0; l < g.k; ++l)
                at[(size_t)i * g.k + l] =
                    load(a, g.type_a, g.ta ? (size_t)i * g.lda + l : (size_t)l * g.lda + i);
        for (int j = 0; j < g.n; ++j)
            for (int l = 0; l < g.k; ++l)
                bt[(size_t)j * g.k + l] =
                    load(b, g.type_b, g.tb ? (size_t)l * g.ldb + j : (size_t)j * g.ldb + l);
        for (int j = 0; j < g.n; ++j)
            for (int i = 0; i < g.m; ++i) {
                const float* x = &at[(size_t)i * g.k];
                const float* y = &bt[(size_t)j * g.k];
                float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                int l = 0;
                for (; l + 8 <= g.k; l += 8)
                    for (int u = 0; u < 8; ++u) acc[u] += x[l + u] * y[l + u];
                float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
                for (; l < g.k; ++l) s += x[l] * y[l];
                const size_t at_c = (size_t)j * g.ldc + i;
                float v = g.alpha * s;
                if (g.beta != 0.0f) v += g.beta * load(c, g.type_c, at_c);
                store(c, g.type_c, at_c, v);
            }
    }
}

int check_and_queue(Handle* h, int ta, int tb, int m, int n, int k, const void* alpha,
                    uint64_t a, int type_a, long long lda, long long sa, uint64_t b, int type_b,
                    long long ldb, long long sb, const void* beta, uint64_t c, int type_c,
                    long long ldc, long long sc, int batch, int compute, const char* who) {
    if (!h) return kNotInitialized;
    if (ta < 0 || ta > 2 || tb < 0 || tb > 2) return kInvalidValue;
    if (m < 0 || n < 0 || k < 0 || batch < 0) return kInvalidValue;
    const long long rows_a = ta ? k : m, rows_b = tb ? n : k;
    if (lda < std::max(1LL, rows_a) || ldb < std::max(1LL, rows_b) || ldc < std::max(1LL, (long long)m))
        return kInvalidValue;
    if (!alpha || !beta) return kInvalidValue;
    const bool ab_ok = type_a == type_b && (type_a == kR32F || type_a == kR16BF || type_a == kR16F);
    const bool c_ok = type_c == kR32F || type_c == type_a;
    if (!ab_ok || !c_ok || !compute_32f(compute)) return kNotSupported;
    if (!emu::context_current()) return kExecutionFailed;
    if (m == 0 || n == 0 || batch == 0) return kOk;
    float al, be;
    if (h->pointer_mode == 0) {
        al = *(const float*)alpha;
        be = *(const float*)beta;
    } else {
        // Device pointer mode: the scalars are read when the call runs.
        if (!emu::device_range_ok((uint64_t)alpha, 4) || !emu::device_range_ok((uint64_t)beta, 4))
            return kInvalidValue;
        al = NAN;
        be = NAN;
    }
    Gemm g{ta != 0, tb != 0, m, n, k, al, be, a, b, c, type_a, type_b, type_c,
           lda, ldb, ldc, sa, sb, sc, batch};
    const bool device_scalars = h->pointer_mode != 0;
    const int r = emu::enqueue(h->stream, [g, who, device_scalars, alpha, beta]() mutable {
        if (device_scalars) {
            if (!emu::require_range((uint64_t)alpha, 4, std::string(who) + ": alpha") ||
                !emu::require_range((uint64_t)beta, 4, std::string(who) + ": beta"))
                return;
            g.alpha = *(const float*)alpha;
            g.beta = *(const float*)beta;
        }
        emu::count_launch(who);
        run(g, who);
    });
    return r != 0 ? kExecutionFailed : kOk;
}

}  // namespace

EXPORT int cublasCreate_v2(Handle** h) {
    if (!h) return kInvalidValue;
    if (!emu::context_current()) return kNotInitialized;
    *h = new Handle();
    return kOk;
}

EXPORT int cublasDestroy_v2(Handle* h) {
    if (!h) return kNotInitialized;
    delete h;
    return kOk;
}

EXPORT int cublasSetStream_v2(Handle* h, void* stream) {
    if (!h) return kNotInitialized;
    h->stream = stream;
    return kOk;
}

EXPORT int cublasGetStream_v2(Handle* h, void** stream) {
    if (!h) return kNotInitialized;
    if (!stream) return kInvalidValue;
    *stream = h->stream;
    return kOk;
}

EXPORT int cublasSetPointerMode_v2(Handle* h, int mode) {
    if (!h) return kNotInitialized;
    if (mode != 0 && mode != 1) return kInvalidValue;
    h->pointer_mode = mode;
    return kOk;
}

EXPORT int cublasGetPointerMode_v2(Handle* h, int* mode) {
    if (!h) return kNotInitialized;
    if (!mode) return kInvalidValue;
    *mode = h->pointer_mode;
    return kOk;
}

EXPORT int cublasSetMathMode(Handle* h, int mode) {
    if (!h) return kNotInitialized;
    h->math_mode = mode;
    return kOk;
}

EXPORT int cublasGetMathMode(Handle* h, int* mode) {
    if (!h) return kNotInitialized;
    if (!mode) return kInvalidValue;
    *mode = h->math_mode;
    return kOk;
}

// The workspace must be live device memory of the size given, 256-byte aligned (cuBLAS's
// documented requirement), or null with size 0 (back to cuBLAS's own).
EXPORT int cublasSetWorkspace_v2(Handle* h, void* w, size_t bytes) {
    if (!h) return kNotInitialized;
    if (!w) return bytes ? kInvalidValue : kOk;
    if ((uint64_t)w % 256 || !emu::device_range_ok((uint64_t)w, bytes)) return kInvalidValue;
    return kOk;
}

EXPORT int cublasGetVersion_v2(Handle* h, int* v) {
    if (!h) return kNotInitialized;
    if (!v) return kInvalidValue;
    *v = 130000;
    return kOk;
}

EXPORT int cublasGemmEx(Handle* h, int ta, int tb, int m, int n, int k, const void* alpha,
                        const void* a, int type_a, int lda, const void* b, int type_b, int ldb,
                        const void* beta, void* c, int type_c, int ldc, int compute, int /*algo*/) {
    return check_and_queue(h, ta, tb, m, n, k, alpha, (uint64_t)a, type_a, lda, 0, (uint64_t)b,
                           type_b, ldb, 0, beta, (uint64_t)c, type_c, ldc, 0, 1, compute,
                           "cublasGemmEx");
}

EXPORT int cublasGemmStridedBatchedEx(Handle* h, int ta, int tb, int m, int n, int k,
                                      const void* alpha, const void* a, int type_a, int lda,
                                      long long sa, const void* b, int type_b, int ldb,
                                      long long sb, const void* beta, void* c, int type_c, int ldc,
                                      long long sc, int batch, int compute, int /*algo*/) {
    return check_and_queue(h, ta, tb, m, n, k, alpha, (uint64_t)a, type_a, lda, sa, (uint64_t)b,
                           type_b, ldb, sb, beta, (uint64_t)c, type_c, ldc, sc, batch, compute,
                           "cublasGemmStridedBatchedEx");
}

EXPORT const char* cublasGetStatusName(int s) {
    switch (s) {
        case 0: return "CUBLAS_STATUS_SUCCESS";
        case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case 7: return "CUBLAS_STATUS_INVALID_VALUE";
        case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
        default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

EXPORT const char* cublasGetStatusString(int s) {
    switch (s) {
        case 0: return "success";
        case 1: return "the library was not initialized";
        case 7: return "an unsupported value or parameter was passed to the function";
        case 13: return "the GPU program failed to execute";
        case 15: return "the functionality requested is not supported";
        default: return "unknown error";
    }
}
