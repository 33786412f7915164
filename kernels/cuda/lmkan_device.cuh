// Device-side building blocks shared by the lmKAN kernels (included by lmkan_cuda.cu only).
//
// Parallel decomposition (all three kernels):
//   * a thread block owns one (output tile, pair chunk) slice of the table and one contiguous range of the batch;
//     the slice [pair_chunk][(G+1)^2 node rows][out tile] is staged once in shared memory (128 bytes per row)
//     and the block streams its batch range through it;
//   * a warp works on 4 samples at a time, one per quarter warp (8 lanes); a lane owns 16 bytes of every row:
//     4 consecutive outputs of a float32 table or 8 of a bfloat16 table, so a quarter warp reads one full row with
//     conflict-free 128-bit loads whatever cell each sample falls in;
//   * the per-(sample, pair) work (exp, cell, local coordinates) is done once per quarter warp: lane l computes
//     the record of pair p0 + l, and the quarter broadcasts it with three shuffles when pair l is processed.
#pragma once

#include <cstdint>

namespace lmkan_dev {

constexpr int kLanesPerSample = 8;   // a quarter warp shares one sample
constexpr int kSamplesPerWarp = 32 / kLanesPerSample;
constexpr int kMaxPairChunk = kLanesPerSample;  // one record per lane of the quarter
constexpr int kRowBytes = 16 * kLanesPerSample;  // one shared-memory row of the table slice
constexpr int kMaxNodes = 257;                   // grid.py MAX_NUM_GRIDS + 1

// Threads per block (also each kernel's __launch_bounds__): 1024 where the kernel fits in 64 registers without
// spilling (float32 forward, grad_x from a shared slice), so that a block alone on its SM (large slices) still has
// 32 warps to hide shared-memory and shuffle latency; 512 elsewhere.
template <typename T>
constexpr int kForwardThreads = sizeof(T) == 4 ? 1024 : 512;
template <bool kShared>
constexpr int kGradXThreads = kShared ? 1024 : 512;
constexpr int kGradTableThreads = 512;
__host__ __device__ constexpr int samples_per_block(int threads) { return threads / 32 * kSamplesPerWarp; }

// Grid nodes and inverse cell lengths, computed on the host in double like grid.py and rounded to float.
struct GridParams {
  int grids;
  float node[kMaxNodes];
  float inv_len[kMaxNodes - 1];
};

// Everything a kernel needs to know about the problem and its tiling (passed by value).
struct Problem {
  int64_t batch;
  int64_t chunk;       // samples per block along the batch
  int pairs;
  int outputs;
  int pair_chunk;      // pairs per block
  int out_tiles;       // number of output tiles (blockIdx.x = pair_chunk_index * out_tiles + out_tile_index)
  bool accumulate;     // the block adds into a zero-filled output with atomics instead of storing
  bool vec_table;      // table rows may be read with 16-byte loads (aligned, outputs a multiple of the vector)
  bool vec_rows;       // rows of y / grad_out may be accessed with 16-byte float4 operations
  bool vec_pairs;      // grad_x is 8-byte aligned (float2 atomics)
};

// Element types: float for float32 tables, uint16_t for the raw bits of bfloat16 tables.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  static constexpr int n = 4;
};
template <>
struct Vec<uint16_t> {
  static constexpr int n = 8;
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(uint16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }

// The 16 bytes at p (16-byte aligned) as floats.
__device__ __forceinline__ void unpack16(const float* p, float (&v)[4]) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
}
__device__ __forceinline__ void unpack16(const uint16_t* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {  // little endian: the lower half is the even output
    v[2 * k] = __uint_as_float(w[k] << 16);
    v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
  }
}

// The first `valid` of the n values at p (global memory), zeros after; 16-byte loads when `vec` allows.
template <typename T>
__device__ __forceinline__ void load_global(const T* p, int valid, bool vec, float (&v)[Vec<T>::n]) {
  if (vec && valid == Vec<T>::n) {
    unpack16(p, v);
  } else {
#pragma unroll
    for (int k = 0; k < Vec<T>::n; ++k) v[k] = k < valid ? to_float(p[k]) : 0.0f;
  }
}

// Copies table rows [p0 * rows, (p0 + npc) * rows) (rows = (G+1)^2 per pair), outputs [o0, o0 + out_tile), into
// `tile` (one kRowBytes row per node row), zero-padding outputs past the end. Called by the whole block.
template <typename T>
__device__ void stage_table(T* tile, const T* table, int p0, int npc, int rows, int o0, const Problem& pb) {
  constexpr int kPerChunk = 16 / sizeof(T);
  constexpr int kChunks = kRowBytes / 16;
  const int total = npc * rows * kChunks;
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    const int row = i / kChunks, o = o0 + (i % kChunks) * kPerChunk;
    const T* src = table + (static_cast<int64_t>(p0) * rows + row) * pb.outputs + o;
    T* dst = tile + static_cast<int64_t>(i) * kPerChunk;
    if (pb.vec_table && o + kPerChunk <= pb.outputs) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
#pragma unroll
      for (int k = 0; k < kPerChunk; ++k) dst[k] = o + k < pb.outputs ? src[k] : T(0);
    }
  }
}

// Shared memory: grid nodes and inverse lengths first, then the table (or gradient) slice, 16-byte aligned.
__host__ __device__ inline int grid_smem_bytes(int grids) { return ((2 * grids + 1) * 4 + 15) / 16 * 16; }

// Block prologue common to all kernels: copy the grid into shared memory.
__device__ __forceinline__ void stage_grid(float* node, float* inv_len, const GridParams& gp) {
  for (int i = threadIdx.x; i <= gp.grids; i += blockDim.x) node[i] = gp.node[i];
  for (int i = threadIdx.x; i < gp.grids; i += blockDim.x) inv_len[i] = gp.inv_len[i];
}

// One table row's 16 bytes of this lane, from the shared slice or (slow path) straight from global memory.
template <bool kShared, typename T>
__device__ __forceinline__ void load_corner(const T* p, int valid, bool vec, float (&v)[Vec<T>::n]) {
  if (kShared) {
    unpack16(p, v);
  } else {
    load_global(p, valid, vec, v);
  }
}

// Bilinear weights of corners 00, 01 (next node of x2), 10 (next node of x1), 11, as in the reference.
__device__ __forceinline__ void bilinear_weights(float t1, float t2, float (&w)[4]) {
  const float u1 = 1.0f - t1, u2 = 1.0f - t2;
  w[0] = u1 * u2, w[1] = u1 * t2, w[2] = t1 * u2, w[3] = t1 * t2;
}

// Cell and local coordinate of x on the grid, exactly as grid.locate: sigma in float32, cell clamped, t not.
__device__ __forceinline__ int locate(float x, const float* node, const float* inv_len, int grids, float& t,
                                      float& slope) {
  const float half_tail = 0.5f * expf(-fabsf(x));
  const float sig = x <= 0.0f ? half_tail : 1.0f - half_tail;
  const int cell = min(max(static_cast<int>(floorf(sig * static_cast<float>(grids))), 0), grids - 1);
  slope = inv_len[cell];
  t = (x - node[cell]) * slope;
  return cell;
}

// The per-(sample, pair) record: local coordinates and the node-row index of corner (0, 0) within the pair's
// (G+1)^2 rows, stored bit-inverted when a coordinate lies outside [0, 1] (the extrapolation flag).
struct Record {
  float t1, t2, s1, s2;
  int code;
};

__device__ __forceinline__ Record make_record(float2 xv, const float* node, const float* inv_len, int grids) {
  Record r;
  const int c1 = locate(xv.x, node, inv_len, grids, r.t1, r.s1);
  const int c2 = locate(xv.y, node, inv_len, grids, r.t2, r.s2);
  const bool outside = !(r.t1 >= 0.0f && r.t1 <= 1.0f && r.t2 >= 0.0f && r.t2 <= 1.0f);
  const int idx = c1 * (grids + 1) + c2;
  r.code = outside ? ~idx : idx;
  return r;
}

// The input pair whose record this lane makes (x[b, 2 (p0 + l)], x[b, 2 (p0 + l) + 1]); zeros (a valid record that
// is never used) for lanes without a pair or sample. Loaded one batch step ahead to hide the global-load latency.
__device__ __forceinline__ float2 load_pair(const float* x, int64_t b, int64_t b_end, int pairs, int pair, bool has) {
  if (!has || b >= b_end) return make_float2(0.0f, 0.0f);
  const float* p = x + b * 2 * pairs + 2 * pair;
  return make_float2(__ldg(p), __ldg(p + 1));
}

// Broadcast of lane `p` of this quarter warp's record (t1, t2, code).
__device__ __forceinline__ void fetch_record(const Record& mine, int p, float& t1, float& t2, int& idx,
                                             bool& outside) {
  const int src = (threadIdx.x & 31 & ~(kLanesPerSample - 1)) | p;
  t1 = __shfl_sync(0xffffffffu, mine.t1, src);
  t2 = __shfl_sync(0xffffffffu, mine.t2, src);
  const int code = __shfl_sync(0xffffffffu, mine.code, src);
  outside = code < 0;
  idx = outside ? ~code : code;
}

// Sum over the 8 lanes of a quarter warp of v[0..7]; afterwards lane l of the quarter holds the total of v[l] in
// v[0] (a reduce-scatter butterfly: 7 shuffles instead of 8 x 3).
__device__ __forceinline__ float quarter_reduce_scatter(float (&v)[kMaxPairChunk]) {
  const int l = threadIdx.x & (kLanesPerSample - 1);
#pragma unroll
  for (int half = kMaxPairChunk / 2; half >= 1; half /= 2) {
    const bool upper = (l & half) != 0;
#pragma unroll
    for (int k = 0; k < half; ++k) {
      const float send = upper ? v[k] : v[k + half];
      const float keep = upper ? v[k + half] : v[k];
      v[k] = keep + __shfl_xor_sync(0xffffffffu, send, half);
    }
  }
  return v[0];
}

// Writes (store or atomic add) the first `valid` of the N floats of v at p; float4 operations when `vec` allows
// (16-byte aligned; vector atomics need sm_90).
template <int N>
__device__ __forceinline__ void write_row(float* p, const float (&v)[N], int valid, bool vec, bool accumulate) {
  if (vec && valid == N && !accumulate) {
#pragma unroll
    for (int k = 0; k < N; k += 4) *reinterpret_cast<float4*>(p + k) = make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]);
    return;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (vec && valid == N) {
#pragma unroll
    for (int k = 0; k < N; k += 4) {
      atomicAdd(reinterpret_cast<float4*>(p + k), make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]));
    }
    return;
  }
#endif
#pragma unroll
  for (int k = 0; k < N; ++k) {
    if (k < valid) {
      if (accumulate) atomicAdd(p + k, v[k]);
      else p[k] = v[k];
    }
  }
}

// Writes (store or atomic add) the two floats a, b at p; one float2 atomic when `vec` (8-byte aligned) allows.
__device__ __forceinline__ void write_pair(float* p, float a, float b, bool vec, bool accumulate) {
  if (!accumulate) {
    p[0] = a, p[1] = b;
    return;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (vec) {
    atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
    return;
  }
#endif
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
}

}  // namespace lmkan_dev
