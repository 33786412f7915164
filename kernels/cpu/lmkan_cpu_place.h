// Quantile input placement (lmkan_surgery/nn/placement.py) as one pass over the input, the same sum as the
// standard-op form: u = v0 + sum_m s_m * min(relu(x - k_m), L_m) over the knot intervals m, and du/dx (the slope
// of the interval strictly holding x, 0 outside the knots' range) for the backward. NaN stays NaN.
// Knot tables are interval-major ([K - 1, features]: start k, length L, slope s) so the inner loop runs over
// contiguous features (or, for per-channel planes, over contiguous positions with one feature's scalars).
#pragma once

#include <cmath>
#include <cstdint>

namespace lmkan_place {

inline float rise(float x, float k, float length) {
    float d = x - k;
    d = d > 0.0f ? d : 0.0f;
    return d < length ? d : length;
}

// x, u, dudx (dudx may be null) are [outer, features, inner]; start/length/slope [intervals, features];
// rows [begin, end) of the outer dimension.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
// "arch=haswell", not "avx2": an AVX2 clone without FMA made each std::fma below a libm call per element
#define LMKAN_PLACE_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define LMKAN_PLACE_CLONES
#endif

// One clone per ISA (chosen when the library loads): the per-interval passes are plain loops the compiler vectorises.
// Each step is one explicit fused multiply-add, so the rows and the planes loops (and the clones with FMA units)
// give the same bits whatever the compiler contracts: a channels-last input placed as rows by the one-call layer
// equals its NCHW copy placed as planes by the steps.
LMKAN_PLACE_CLONES static void place_rows(const float* x, const float* start, const float* length, const float* slope, float v0,
                       float* u, float* dudx, int64_t begin, int64_t end, int64_t features, int64_t inner,
                       int64_t intervals) {
    for (int64_t o = begin; o < end; ++o) {
        if (inner == 1) {  // features last: vectorise over features
            const float* xr = x + o * features;
            float* ur = u + o * features;
            float* dr = dudx ? dudx + o * features : nullptr;
            for (int64_t f = 0; f < features; ++f) ur[f] = v0;
            if (dr) for (int64_t f = 0; f < features; ++f) dr[f] = 0.0f;
            for (int64_t m = 0; m < intervals; ++m) {
                const float *k = start + m * features, *len = length + m * features, *s = slope + m * features;
                for (int64_t f = 0; f < features; ++f) ur[f] = std::fma(s[f], rise(xr[f], k[f], len[f]), ur[f]);
                if (dr)
                    for (int64_t f = 0; f < features; ++f) {
                        const float d = xr[f] - k[f];
                        dr[f] += (d > 0.0f && d < len[f]) ? s[f] : 0.0f;
                    }
            }
            for (int64_t f = 0; f < features; ++f) ur[f] = xr[f] != xr[f] ? xr[f] : ur[f];
            continue;
        }
        for (int64_t f = 0; f < features; ++f) {  // per-channel planes: vectorise over positions
            const int64_t base = (o * features + f) * inner;
            const float* xp = x + base;
            float* up = u + base;
            float* dp = dudx ? dudx + base : nullptr;
            for (int64_t i = 0; i < inner; ++i) up[i] = v0;
            if (dp) for (int64_t i = 0; i < inner; ++i) dp[i] = 0.0f;
            for (int64_t m = 0; m < intervals; ++m) {
                const float k = start[m * features + f], len = length[m * features + f], s = slope[m * features + f];
                for (int64_t i = 0; i < inner; ++i) up[i] = std::fma(s, rise(xp[i], k, len), up[i]);
                if (dp)
                    for (int64_t i = 0; i < inner; ++i) {
                        const float d = xp[i] - k;
                        dp[i] += (d > 0.0f && d < len) ? s : 0.0f;
                    }
            }
            for (int64_t i = 0; i < inner; ++i) up[i] = xp[i] != xp[i] ? xp[i] : up[i];
        }
    }
}

}  // namespace lmkan_place
