// Half-precision table storage of the CPU kernels: the element types and their exact scalar conversions to float.
// Internal to lmkan_cpu.cpp (the C API passes tables as void* plus an LMKAN_CPU_* dtype code).
#ifndef LMKAN_CPU_HALF_H_
#define LMKAN_CPU_HALF_H_

#include <cstdint>
#include <cstring>

namespace lmkan_half {

// IEEE binary16 and bfloat16 values, kept as their bit patterns (distinct types select the conversion).
struct F16 {
    uint16_t bits;
};
struct Bf16 {
    uint16_t bits;
};

inline float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline float to_float(float v) { return v; }

// bfloat16 is the top half of a float32: a shift, exact for every value (NaN and inf included).
inline float to_float(Bf16 v) { return from_bits(static_cast<uint32_t>(v.bits) << 16); }

// binary16 -> binary32, exact: rebias the exponent (15 -> 127); subnormals are man * 2^-24; inf/NaN keep their payload.
inline float to_float(F16 v) {
    const uint32_t sign = static_cast<uint32_t>(v.bits & 0x8000u) << 16;
    const uint32_t exp = (v.bits >> 10) & 0x1fu, man = v.bits & 0x3ffu;
    if (exp == 0x1f) return from_bits(sign | 0x7f800000u | (man << 13));
    if (exp != 0) return from_bits(sign | ((exp + 112u) << 23) | (man << 13));
    const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;  // 2^-24: exact, man < 2^10
    return v.bits & 0x8000u ? -mag : mag;
}

// Bytes per table element for each LMKAN_CPU_FLOAT32 / FLOAT16 / BFLOAT16 code.
constexpr int64_t kElemBytes[3] = {4, 2, 2};

}  // namespace lmkan_half

#endif  // LMKAN_CPU_HALF_H_
