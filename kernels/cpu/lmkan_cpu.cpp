// Native CPU kernels of the lmKAN 2-D lookup: OpenMP drivers and runtime instruction-set dispatch.
// The per-task kernels live in lmkan_cpu_kernels.inc, compiled three times: a generic baseline, an AVX2+FMA path
// and an AVX-512F/VL path, chosen at run time by CPUID (and XGETBV for the OS-enabled register state); the
// forward and backward drivers in lmkan_cpu_forward.inc and lmkan_cpu_backward.inc. See lmkan_cpu.h for the contract.
#include "lmkan_cpu.h"
#include "lmkan_cpu_half.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using lmkan_half::Bf16;
using lmkan_half::F16;
using lmkan_half::to_float;

// Sizes shared by every kernel: n = G + 1 nodes per axis, n2 = n * n corner rows per pair.
struct Dims {
    int64_t B, P, G, n, n2, N;
};

// P rounded up to a multiple of 8: the per-sample scratch arrays take whole 8-pair vectors.
constexpr int64_t padded_pairs(int64_t P) { return (P + 7) / 8 * 8; }

// Forward record per (sample, pair): corner row i1 * n + i2 and the 4 bilinear weights (00, 01, 10, 11). A pair with
// a coordinate more than kNear cells beyond its edge cell (t outside [-kNear, 1 + kNear], or NaN) is "far": row is
// bit-inverted (negative) and w[0], w[1], w[2] hold t1, t2 and t1 t2 capped to the largest float, for the
// cancellation-free difference form (so a cross difference of exactly 0, as exact tables have, never gives
// inf * 0 = NaN). Near extrapolation keeps the 4-weight form: its weights sum to at most (1 + 2 kNear)^2 = 25 in
// magnitude, i.e. an error of at most 25 float32 roundings of the largest corner value, and it keeps the ~7% of
// pairs of unit-variance inputs that fall past the end nodes (|x| > 2.08 at G = 8) off the slower, branchy path.
struct FwdRec {
    int32_t row;
    float w[4];
};

constexpr float kNear = 2.0f;

// The record of one (sample, pair): the scalar form of precompute_fwd's 8-lane step (same operations, same bits),
// branch-free (whether a pair is far is data-dependent and mispredicts; measured as about half of conv_records).
FwdRec make_fwd_rec(int32_t row, float t1, float t2) {
    const bool near = (t1 >= -kNear) & (t1 <= 1.0f + kNear) & (t2 >= -kNear) & (t2 <= 1.0f + kNear);
    const float s1 = 1.0f - t1, s2 = 1.0f - t2, t12 = t1 * t2;
    const float cap = std::isinf(t12) ? std::copysign(std::numeric_limits<float>::max(), t12) : t12;
    return FwdRec{near ? row : ~row,
                  {near ? s1 * s2 : t1, near ? s1 * t2 : t2, near ? t1 * s2 : cap, near ? t12 : 0.0f}};
}

// Backward record per (sample, pair): corner row and local coordinates.
struct BwdRec {
    int32_t row;
    float t1, t2;
};

// Table-gradient record, sorted by cell: corner row, sample index within its block and the 4 weights (00, 01, 10, 11).
struct CellRec {
    int32_t row, b;
    float w[4];
};

// Lane-layout scratch of the few-output path (lmkan_cpu_lanes.inc): inputs of 8 samples transposed to [feature][8]
// (xt), then their cells and local coordinates in the same layout.
struct LaneScratch {
    float* xt;
    int32_t* cell;
    float* t;
};

// Outputs per tile of the fused forward's packed path: kCarryWidth (the narrowest; its slice sets the pairs per
// part), 2 and 4 times that (kCarryTiles widths).
constexpr int64_t kCarryWidth = 32, kCarryTiles = 3;

struct Isa {
    const char* name;
    // widest sweep (output columns) of the cell-sorted kernels (forward_runs, grad_table): 4 corners x sweep / 8
    // vectors fit the registers; 64 on AVX-512 (4 corners x 4 zmm)
    int64_t sweep;
    void (*locate_span)(const float*, int64_t, int64_t, const float*, const float*, int32_t*, float*);
    void (*precompute_fwd)(const float*, FwdRec*, int64_t, int64_t, int64_t, int64_t, int64_t, const Dims&,
                           const float*, const float*, int32_t*, float*);
    void (*precompute_bwd)(const float*, BwdRec*, int64_t, int64_t, int64_t, int64_t, int64_t, const Dims&,
                           const float*, const float*, int32_t*, float*);
    // forward, grad_x and widen per table storage dtype (LMKAN_CPU_FLOAT32, FLOAT16, BFLOAT16)
    void (*forward[3])(const FwdRec*, int64_t, const void*, int64_t, float*, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, const Dims&, bool);
    // forward over a packed slice of kCarryWidth << k outputs (k = 0, 1, 2; null where the ISA's registers do not
    // hold that tile's sums), a pair chunk in L1-sized parts (block_carried, lmkan_cpu_forward.inc)
    void (*forward_carried[kCarryTiles])(const FwdRec*, int64_t, const float*, float*, float*, uint8_t*, int64_t,
                                         int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const Dims&, bool);
    // table gradient over cell-sorted records: output-gradient rows at a given stride (packed: the sweep's width)
    void (*grad_table)(const CellRec*, int64_t, const float*, int64_t, float*, int64_t, int64_t, const Dims&);
    // table gradient sample by sample, unsorted (grad_table_by_samples in lmkan_cpu_backward.inc)
    void (*grad_table_samples)(const BwdRec*, const float*, float*, int64_t, int64_t, const Dims&);
    void (*grad_x[3])(const BwdRec*, const void*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                      const Dims&, const float*);
    // grad_x over cell differences (lmkan_cpu_kernels.inc): the differences of a pair range, per table storage dtype
    void (*cell_differences[3])(const void*, float*, int64_t, int64_t, const Dims&);
    void (*grad_x_diff)(const BwdRec*, const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                        const Dims&, const float*);
    void (*widen[3])(const void*, float*, int64_t);
    // forward over cell-sorted records (forward_sorted in lmkan_cpu_forward_sorted.inc), per table storage dtype
    void (*forward_runs[3])(const CellRec*, int64_t, const void*, int64_t, float*, int64_t, const Dims&);
    // sort keys and weights of one pair's records for a block of conv pixels (sorted_pair_cells, lmkan_cpu_conv.inc)
    void (*pair_keys)(const int32_t*, const float*, const int64_t*, int64_t, int64_t, int64_t, int32_t, float, int64_t,
                      int64_t, int32_t*, float*);
    // forward of 1 or 2 consecutive pairs' keys and weights (pair_keys) in pixel order, unsorted
    // (lmkan_cpu_conv.inc), per dtype
    void (*forward_pixels[3])(const int32_t*, const float*, int64_t, int64_t, const void*, const void*, int64_t,
                              int64_t, float*, int64_t, const Dims&);
    // direct convolution with one output channel per group (lmkan_cpu_conv.inc), per table storage dtype
    void (*depthwise[3])(const int32_t*, const float*, const int64_t*, int64_t, const int64_t*, int32_t, float,
                         const void*, float*, int64_t, const Dims&);
    // direct convolution's x gradient over cell-sorted records (lmkan_cpu_kernels_conv.inc), per table storage dtype
    void (*conv_grad_x[3])(const CellRec*, int64_t, int64_t, const BwdRec*, int64_t, const void*, const float*,
                           float*, int64_t, int64_t, float*, const Dims&, const float*);
    // both gradients of one pair's cell-sorted records at 64 outputs in one pass (conv_both_runs64,
    // lmkan_cpu_kernels_conv.inc), per table storage dtype; null where the sweep is narrower than 64
    void (*conv_grads64[3])(const CellRec*, int64_t, const BwdRec*, const void*, const float*, float*, float*,
                            int64_t, float*, const Dims&, const float*);
    // few-output path, 8 samples per vector (lmkan_cpu_kernels_lanes.inc), per table storage dtype: forward and
    // the gradients of a sample range and a pair range
    void (*lanes_forward[3])(const float*, const void*, float*, int64_t, int64_t, const Dims&, const float*,
                             const float*, const LaneScratch&);
    void (*lanes_backward[3])(const float*, const void*, const float*, float*, float*, int64_t, int64_t, int64_t,
                              int64_t, const Dims&, const float*, const float*, const LaneScratch&);
    // depthwise convolution's backward, 8 pixels per vector (lmkan_cpu_kernels_depthwise_backward.inc), per dtype
    void (*depthwise_backward[3])(const int32_t*, const float*, const int64_t*, int64_t, const int64_t*, int32_t,
                                  float, const void*, const float*, int64_t, float*, float*, const Dims&,
                                  const float*);
    // depthwise forward with 8 groups per vector (channels-last input, one channel per group), per dtype
    void (*depthwise_groups[3])(const int32_t*, const float*, const int64_t*, int64_t, const int64_t*, int32_t, float,
                                const void*, int64_t, float*, int64_t, const Dims&);
    // its backward (lmkan_cpu_kernels_depthwise_backward.inc), per dtype
    void (*depthwise_groups_backward[3])(const int32_t*, const float*, const int64_t*, int64_t, const int64_t*,
                                         int32_t, float, const void*, int64_t, const float*, int64_t, float*, float*,
                                         const Dims&, const float*);
};

namespace generic {
#define ISA_NAME "generic"
#define ISA_SWEEP 16
#define ISA_F16C 0
#include "lmkan_cpu_kernels.inc"
#undef ISA_F16C
#undef ISA_SWEEP
#undef ISA_NAME
}  // namespace generic

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LMKAN_HAVE_X86_PATHS 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
namespace avx2 {
#define ISA_NAME "avx2"
#define ISA_SWEEP 16
#define ISA_F16C 1
#include "lmkan_cpu_kernels.inc"
#undef ISA_F16C
#undef ISA_SWEEP
#undef ISA_NAME
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma,f16c")
#endif
// The same 8-lane code with AVX-512VL: 32 vector registers, and 16-lane zmm vectors (vz) where they pay: the 64-, 32-
// and 16-output forward tiles and the cell-sorted kernels' 64-column sweeps (4 corners x 4 zmm).
namespace avx512 {
#define ISA_NAME "avx512"
#define ISA_SWEEP 64
#define ISA_F16C 1
#include "lmkan_cpu_kernels.inc"
#undef ISA_F16C
#undef ISA_SWEEP
#undef ISA_NAME
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// AVX2 + FMA + F16C (every AVX2 CPU has F16C; the x86 paths use it for float16 tables).
bool avx2_supported() {
    __builtin_cpu_init();
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __get_cpuid(1, &eax, &ebx, &ecx, &edx) &&
           (ecx & bit_F16C);
}

// AVX-512F/VL in the CPU and the opmask and upper-ZMM register state enabled by the OS (XCR0 bits 1, 2, 5, 6, 7).
bool avx512_supported() {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!avx2_supported() || !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vl") ||
        !__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE))
        return false;
    uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xe6) == 0xe6;
}
#endif

// The paths this CPU and OS support, best first (the generic one always last).
std::vector<const Isa*> supported_isas() {
    std::vector<const Isa*> out;
#ifdef LMKAN_HAVE_X86_PATHS
    if (avx512_supported()) out.push_back(&avx512::kIsa);
    if (avx2_supported()) out.push_back(&avx2::kIsa);
#endif
    out.push_back(&generic::kIsa);
    return out;
}

const Isa* best_isa() { return supported_isas().front(); }

std::atomic<const Isa*> g_isa{nullptr};

const Isa& active_isa() {
    const Isa* isa = g_isa.load(std::memory_order_acquire);
    if (isa == nullptr) {
        isa = best_isa();
        g_isa.store(isa, std::memory_order_release);
    }
    return *isa;
}

// Cache budgets (bytes). The forward's pair chunk fixes its summation order, so it depends on the shape only;
// the other partitions (sample blocks, gradient chunks) may follow the thread count without changing any bit.
constexpr int64_t kSliceBytes = 512 * 1024;  // table slice of one pair chunk (per output tile): L2-resident
constexpr int64_t kTile = 64;  // outputs per register tile
constexpr int64_t kFusedTableBytes = 8 << 20;  // tables up to this size take the fused (per-block records) path
constexpr int64_t kRecBlockBytes = 128 * 1024;  // records of one fused forward block

// Node positions and inverse cell lengths: computed in double exactly as grid.py does, then cast to float.
struct Grid {
    std::vector<float> nodes, inv_len;
    explicit Grid(int64_t G) : nodes(G + 1), inv_len(G) {
        std::vector<double> g(static_cast<size_t>(G + 1));
        for (int64_t k = 1; k < G; ++k) {
            const double u = static_cast<double>(k) / static_cast<double>(G);
            g[k] = u <= 0.5 ? std::log(2.0 * u) : -std::log(2.0 * (1.0 - u));
        }
        g[0] = g[1] - (g[2] - g[1]);
        g[G] = g[G - 1] + (g[G - 1] - g[G - 2]);
        for (int64_t k = 0; k <= G; ++k) nodes[k] = static_cast<float>(g[k]);
        for (int64_t k = 0; k < G; ++k) inv_len[k] = static_cast<float>(1.0 / (g[k + 1] - g[k]));
    }
};

int thread_count(int requested) {
#ifdef _OPENMP
    return requested > 0 ? requested : omp_get_max_threads();
#else
    (void)requested;
    return 1;
#endif
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Waking a sleeping OpenMP thread costs about as much as this many evaluations (~10 us), far more when the other
// core is busy; smaller calls run on the calling thread alone (the results are bitwise equal either way).
constexpr int64_t kSerialEvals = 1 << 17;

int useful_threads(int nt, int64_t evaluations) { return evaluations < kSerialEvals ? 1 : nt; }

// Output tiles: full 64-wide tiles, then one each of 32, 16, 8 and a narrow rest, as the remainder needs.
std::vector<std::pair<int64_t, int64_t>> output_tiles(int64_t N) {
    std::vector<std::pair<int64_t, int64_t>> tiles;
    int64_t o = 0;
    for (; o + kTile <= N; o += kTile) tiles.emplace_back(o, kTile);
    for (int64_t w = kTile / 2; w >= 8; w /= 2)
        if (o + w <= N) {
            tiles.emplace_back(o, w);
            o += w;
        }
    if (o < N) tiles.emplace_back(o, N - o);
    return tiles;
}

// Pairs per chunk so that the chunk's table slice (rows of `row_bytes` each) stays within kSliceBytes.
int64_t pair_chunk(const Dims& d, int64_t row_bytes) {
    return std::max<int64_t>(1, std::min<int64_t>(d.P, kSliceBytes / (d.n2 * row_bytes)));
}

bool valid(int64_t B, int64_t P, int64_t G, int64_t N) {
    return B >= 0 && P >= 0 && N >= 0 && G >= 3 && G <= 256 && P <= INT64_MAX / ((G + 1) * (G + 1)) / (N + 1);
}

// A grow-only scratch array owned by one thread: repeated calls reuse it instead of page-faulting fresh memory.
template <typename T>
T* scratch(std::unique_ptr<T[]>& buf, size_t& capacity, size_t count) {
    if (count > capacity) {
        buf.reset(new (std::nothrow) T[count]);
        capacity = buf ? count : 0;
    }
    return buf.get();
}

// scratch() starting on a 64-byte line (64 bytes more allocated), for the cell-sorted forwards' packed outputs:
// new[] aligns to 16 bytes only (their areas started 0, 16, 32 or 48 bytes into a line by layer, thread and heap
// history in one bench_conv run), and off a line every 64-byte vector of a packed row spans two lines: 1.08-1.17x
// the time of the aligned area on resnet18's 3x3 layers at batch 8 (1 thread, Round 13).
template <typename T>
T* line_scratch(std::unique_ptr<T[]>& buf, size_t& capacity, size_t count) {
    T* p = scratch(buf, capacity, count + 64 / sizeof(T));
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    return p == nullptr ? nullptr : reinterpret_cast<T*>((a + 63) & ~static_cast<uintptr_t>(63));
}

// Per-thread scratch of one sample (see locate_pairs): 3 padded_pairs(P) int32 and 6 padded_pairs(P) floats.
struct SampleScratch {
    int32_t* cell;
    float* t;
};

bool sample_scratch(int64_t P, SampleScratch& out) {
    thread_local std::unique_ptr<int32_t[]> cell_buf;
    thread_local std::unique_ptr<float[]> t_buf;
    thread_local size_t cell_cap = 0, t_cap = 0;
    out.cell = scratch(cell_buf, cell_cap, static_cast<size_t>(3 * padded_pairs(P)));
    out.t = scratch(t_buf, t_cap, static_cast<size_t>(6 * padded_pairs(P)));
    return out.cell != nullptr && out.t != nullptr;
}

// Records of the whole batch (pair-chunk-major with `chunk` pairs per chunk), computed in parallel into the
// calling thread's scratch. R is FwdRec or BwdRec.
template <typename R>
R* batch_records(const float* x, const Dims& d, const Grid& grid, int64_t chunk, int nt,
                 void (*fill)(const float*, R*, int64_t, int64_t, int64_t, int64_t, int64_t, const Dims&,
                              const float*, const float*, int32_t*, float*)) {
    thread_local std::unique_ptr<R[]> buf;
    thread_local size_t cap = 0;
    R* rec = scratch(buf, cap, static_cast<size_t>(d.B * d.P));
    if (rec == nullptr) return nullptr;
    const int64_t rows = std::max<int64_t>(1, ceil_div(d.B, 8 * static_cast<int64_t>(nt)));
    const int64_t tasks = ceil_div(d.B, rows);
    bool failed = false;
#pragma omp parallel num_threads(nt)
    {
        SampleScratch ss;
        const bool ok = sample_scratch(d.P, ss);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < tasks; ++task) {
            const int64_t b0 = task * rows;
            if (ok) fill(x, rec, b0, std::min(d.B, b0 + rows), d.B, 0, chunk, d, grid.nodes.data(),
                         grid.inv_len.data(), ss.cell, ss.t);
        }
        if (!ok) {
#pragma omp atomic write
            failed = true;
        }
    }
    return failed ? nullptr : rec;
}

}  // namespace

#include "lmkan_cpu_runs.inc"
#include "lmkan_cpu_forward.inc"
#include "lmkan_cpu_backward.inc"
#include "lmkan_cpu_conv.inc"
#include "lmkan_cpu_forward_sorted.inc"
#include "lmkan_cpu_conv_backward_fused.inc"
#include "lmkan_cpu_conv_backward.inc"
#include "lmkan_cpu_pointwise.inc"

extern "C" const char* lmkan_cpu_isa(void) { return active_isa().name; }

extern "C" int lmkan_cpu_select_isa(const char* name) {
    if (name == nullptr) return LMKAN_CPU_EINVAL;
    if (std::strcmp(name, "auto") == 0) {
        g_isa.store(best_isa(), std::memory_order_release);
        return LMKAN_CPU_OK;
    }
    for (const Isa* isa : supported_isas())
        if (std::strcmp(name, isa->name) == 0) {
            g_isa.store(isa, std::memory_order_release);
            return LMKAN_CPU_OK;
        }
    return LMKAN_CPU_EINVAL;
}

extern "C" const char* lmkan_cpu_error_string(int code) {
    switch (code) {
        case LMKAN_CPU_OK: return "ok";
        case LMKAN_CPU_EINVAL: return "invalid argument (sizes out of range or a NULL pointer)";
        case LMKAN_CPU_ENOMEM: return "out of memory for the scratch buffer";
        default: return "unknown error";
    }
}
