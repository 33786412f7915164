// lmKAN CUDA kernels (forward, grad x, grad table; decomposition in lmkan_device.cuh, tiling in the host half).
// Extrapolating pairs use the cancellation-free form of ops/reference.py; the in/out flag is per quarter warp.
// LMKAN_HOST_EMULATION (tests only): compiled as C++ over kernels/cuda/emulate_on_host.cpp (LMKAN_LAUNCH).
#include <algorithm>
#include <climits>
#include <cmath>

#include "lmkan_cuda.cuh"
#include "lmkan_device.cuh"

using namespace lmkan_dev;

namespace {

// One pair's cell for this lane: fractional positions, whether x lies outside the grid, and the four corner rows
// (00, 01, 10, 11) of the lane's output columns.
template <typename T>
struct Cell {
  float t1, t2;
  bool outside;
  float c[4][Vec<T>::n];
};

// Where a block and its lane sit, as every kernel derives it: the shared-memory carve-up (grid nodes, inverse cell
// lengths, then the table or gradient slice), the block's (output tile of kRowBytes, pair chunk), the lane's output
// columns in that tile and the batch range the block walks (from this lane's quarter warp's first sample).
template <typename T>
struct BlockPlan {
  static constexpr int V = Vec<T>::n;
  float* node;
  float* inv_len;
  T* tile;
  int nodes, rows, o0, p0, npc, l, q, o, valid;
  int64_t b_begin, b_end, b_first;

  __device__ BlockPlan(unsigned char* smem, const Problem& pb, const GridParams& gp) {
    nodes = gp.grids + 1;
    rows = nodes * nodes;  // (i, j) node rows per pair
    node = reinterpret_cast<float*>(smem);
    inv_len = node + nodes;
    tile = reinterpret_cast<T*>(smem + grid_smem_bytes(gp.grids));
    o0 = (blockIdx.x % pb.out_tiles) * (kRowBytes / static_cast<int>(sizeof(T)));
    p0 = (blockIdx.x / pb.out_tiles) * pb.pair_chunk;
    npc = min(pb.pair_chunk, pb.pairs - p0);
    const int lane = threadIdx.x & 31;
    l = lane & (kLanesPerSample - 1);
    q = lane / kLanesPerSample;
    o = o0 + l * V;
    valid = min(max(pb.outputs - o, 0), V);
    b_begin = blockIdx.y * pb.chunk;
    b_end = min(pb.batch, b_begin + pb.chunk);
    b_first = b_begin + (threadIdx.x >> 5) * kSamplesPerWarp;
  }

  // Elements between consecutive node rows, and this lane's first column of the pair chunk's slice: in the shared
  // tile, or (slow path) in the global table / gradient itself.
  template <bool kShared>
  __device__ int64_t row_stride(const Problem& pb) const {
    return kShared ? kRowBytes / static_cast<int>(sizeof(T)) : pb.outputs;
  }
  template <bool kShared, typename P>
  __device__ P* slice(P* global, const Problem& pb) const {
    return kShared ? tile + l * V : global + static_cast<int64_t>(p0) * rows * pb.outputs + o;
  }

  // Pair p's cell of a sample (its record rec) from the slice at base, `row` elements per node row.
  template <bool kShared>
  __device__ __forceinline__ void load_cell(const Record& rec, int p, const T* base, int64_t row, bool vec,
                                            Cell<T>& cell) const {
    int idx;
    fetch_record(rec, p, cell.t1, cell.t2, idx, cell.outside);
    const T* r00 = base + (p * rows + idx) * row;
    load_corner<kShared>(r00, valid, vec, cell.c[0]);
    load_corner<kShared>(r00 + row, valid, vec, cell.c[1]);
    load_corner<kShared>(r00 + nodes * row, valid, vec, cell.c[2]);
    load_corner<kShared>(r00 + (nodes + 1) * row, valid, vec, cell.c[3]);
  }

  // This lane's x pair of sample b (prefetched one step ahead by for_each_sample).
  __device__ float2 pair_of(const float* x, int64_t b, const Problem& pb) const {
    return load_pair(x, b, b_end, pb.pairs, p0 + l, l < npc);
  }

  // Walk this lane's samples kStep apart, prefetching the next x pair, and call body(b, active, record); inactive
  // lanes (b past the range) still take part in the warp's shuffles.
  template <int kStep, typename Body>
  __device__ __forceinline__ void for_each_sample(const float* x, const Problem& pb, const GridParams& gp,
                                                  Body&& body) const {
    float2 x_next = pair_of(x, b_first + q, pb);
    for (int64_t b0 = b_first; b0 < b_end; b0 += kStep) {
      const int64_t b = b0 + q;
      const Record rec = make_record(x_next, node, inv_len, gp.grids);
      x_next = pair_of(x, b + kStep, pb);
      body(b, b < b_end, rec);
    }
  }
};


// y[b, o0 : o0 + tile] (+)= sum over the block's pairs. Block = (out tile, pair chunk) x batch range.
template <typename T, bool kShared>
__global__ void __launch_bounds__(kForwardThreads<T>)
    forward_kernel(const float* __restrict__ x, const T* __restrict__ table, float* __restrict__ y, Problem pb,
                   GridParams gp) {
  constexpr int V = Vec<T>::n;
  extern __shared__ __align__(16) unsigned char smem[];
  const BlockPlan<T> bp(smem, pb, gp);
  stage_grid(bp.node, bp.inv_len, gp);
  if (kShared) stage_table(bp.tile, table, bp.p0, bp.npc, bp.rows, bp.o0, pb);
  __syncthreads();

  const int64_t row = bp.template row_stride<kShared>(pb);
  const T* base = bp.template slice<kShared>(table, pb);
  constexpr int kStep = samples_per_block(kForwardThreads<T>);
  bp.template for_each_sample<kStep>(x, pb, gp, [&](int64_t b, bool active, const Record& rec) {
    float acc[V] = {};
#pragma unroll
    for (int p = 0; p < kMaxPairChunk; ++p) {
      if (p >= bp.npc) break;
      Cell<T> cell;
      bp.template load_cell<kShared>(rec, p, base, row, pb.vec_table, cell);
      const float t1 = cell.t1, t2 = cell.t2;
      const auto &c00 = cell.c[0], &c01 = cell.c[1], &c10 = cell.c[2], &c11 = cell.c[3];
      if (cell.outside) {
        const float t12 = t1 * t2;
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const float d1 = c10[v] - c00[v], d2 = c01[v] - c00[v];
          const float cross = c11[v] - c00[v] - d1 - d2;
          acc[v] += c00[v];
          acc[v] = fmaf(t1, d1, acc[v]);
          acc[v] = fmaf(t2, d2, acc[v]);
          acc[v] = fmaf(cross != 0.0f ? t12 : 0.0f, cross, acc[v]);  // exact tables: no inf * 0 = NaN
        }
      } else {
        float w[4];
        bilinear_weights(t1, t2, w);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          acc[v] = fmaf(w[0], c00[v], acc[v]);
          acc[v] = fmaf(w[1], c01[v], acc[v]);
          acc[v] = fmaf(w[2], c10[v], acc[v]);
          acc[v] = fmaf(w[3], c11[v], acc[v]);
        }
      }
    }
    if (active) write_row<V>(y + b * pb.outputs + bp.o, acc, bp.valid, pb.vec_rows, pb.accumulate);
  });
}

// grad_x[b, 2p], grad_x[b, 2p+1] (+)= contributions of the block's 32 outputs (float32 table).
// Per (sample, pair) each lane sums over its 4 outputs, the quarter warp reduce-scatters the 8 pairs' sums so that
// lane l ends with pair p0 + l, whose record (and inverse cell lengths) it computed itself.
template <bool kShared>
__global__ void __launch_bounds__(kGradXThreads<kShared>) grad_x_kernel(const float* __restrict__ grad_out,
                                                          const float* __restrict__ x,
                                                          const float* __restrict__ table,
                                                          float* __restrict__ grad_x, Problem pb, GridParams gp) {
  constexpr int V = Vec<float>::n;
  extern __shared__ __align__(16) unsigned char smem[];
  const BlockPlan<float> bp(smem, pb, gp);
  stage_grid(bp.node, bp.inv_len, gp);
  if (kShared) stage_table(bp.tile, table, bp.p0, bp.npc, bp.rows, bp.o0, pb);
  __syncthreads();

  const int64_t row = bp.row_stride<kShared>(pb);
  const float* base = bp.slice<kShared>(table, pb);
  constexpr int kStep = samples_per_block(kGradXThreads<kShared>);
  bp.for_each_sample<kStep>(x, pb, gp, [&](int64_t b, bool active, const Record& rec) {
    float gy[V] = {};
    if (active) load_global(grad_out + b * pb.outputs + bp.o, bp.valid, pb.vec_rows, gy);
    float g1[kMaxPairChunk], g2[kMaxPairChunk];
#pragma unroll
    for (int p = 0; p < kMaxPairChunk; ++p) {
      g1[p] = g2[p] = 0.0f;
      if (p >= bp.npc) continue;
      Cell<float> cell;
      bp.load_cell<kShared>(rec, p, base, row, pb.vec_table, cell);
      const float t1 = cell.t1, t2 = cell.t2;
      const auto &c00 = cell.c[0], &c01 = cell.c[1], &c10 = cell.c[2], &c11 = cell.c[3];
      float s1 = 0.0f, s2 = 0.0f, sc = 0.0f;  // sum_o gy * (d1, d2, cross)
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const float d1 = c10[v] - c00[v], d2 = c01[v] - c00[v];
        const float cross = c11[v] - c00[v] - d1 - d2;
        s1 = fmaf(gy[v], d1, s1);
        s2 = fmaf(gy[v], d2, s2);
        sc = fmaf(gy[v], cross, sc);
      }
      g1[p] = fmaf(t2, sc, s1);
      g2[p] = fmaf(t1, sc, s2);
    }
    const float total1 = quarter_reduce_scatter(g1);
    const float total2 = quarter_reduce_scatter(g2);
    if (active && bp.l < bp.npc) {
      write_pair(grad_x + b * 2 * pb.pairs + 2 * (bp.p0 + bp.l), rec.s1 * total1, rec.s2 * total2, pb.vec_pairs,
                 pb.accumulate);
    }
  });
}

// grad_table[p, i, j, o0 : o0 + 32] (+)= sum over the block's batch range of gy * bilinear weight.
// The gradient slice accumulates in shared memory with atomics; lane (q, l) updates column 4 l + (v + q) % 4 at
// step v, so the 32 lanes of a warp always hit 32 different banks, whichever rows their samples fall in.
template <bool kShared>
__global__ void __launch_bounds__(kGradTableThreads) grad_table_kernel(const float* __restrict__ grad_out,
                                                              const float* __restrict__ x,
                                                              float* __restrict__ grad_table, Problem pb,
                                                              GridParams gp) {
  constexpr int V = Vec<float>::n;
  constexpr int kRow = kRowBytes / sizeof(float);
  extern __shared__ __align__(16) unsigned char smem[];
  const BlockPlan<float> bp(smem, pb, gp);
  const int rows = bp.rows, p0 = bp.p0, npc = bp.npc, o0 = bp.o0, q = bp.q;
  float* tile = bp.tile;
  stage_grid(bp.node, bp.inv_len, gp);
  if (kShared) {
    for (int i = threadIdx.x; i < npc * rows * kRow; i += blockDim.x) tile[i] = 0.0f;
  }
  __syncthreads();

  const int64_t row = bp.row_stride<kShared>(pb);
  float* base = bp.slice<kShared>(grad_table, pb);
  constexpr int kStep = samples_per_block(kGradTableThreads);
  bp.for_each_sample<kStep>(x, pb, gp, [&](int64_t b, bool active, const Record& rec) {
    float gy[V] = {};
    if (active) load_global(grad_out + b * pb.outputs + bp.o, bp.valid, pb.vec_rows, gy);
    float gyr[V];  // gy rotated by q: gyr[v] = gy[(v + q) % 4] (compile-time register indices only)
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int k = (v + q) & (V - 1);
      gyr[v] = k == 0 ? gy[0] : k == 1 ? gy[1] : k == 2 ? gy[2] : gy[3];
    }
#pragma unroll
    for (int p = 0; p < kMaxPairChunk; ++p) {
      if (p >= npc) break;
      float t1, t2;
      int idx;
      bool outside;
      fetch_record(rec, p, t1, t2, idx, outside);
      if (!active || bp.valid == 0) continue;
      float w[4];
      bilinear_weights(t1, t2, w);
      float* r00 = base + (p * rows + idx) * row;
      float* corner[4] = {r00, r00 + row, r00 + bp.nodes * row, r00 + (bp.nodes + 1) * row};
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const int col = (v + q) & (V - 1);
        if (!kShared && col >= bp.valid) continue;
#pragma unroll
        for (int c = 0; c < 4; ++c) atomicAdd(corner[c] + col, w[c] * gyr[v]);
      }
    }
  });
  if (!kShared) return;
  __syncthreads();
  for (int i = threadIdx.x; i < npc * rows * kRow; i += blockDim.x) {
    const int r = i / kRow, oc = o0 + i % kRow;
    if (oc >= pb.outputs) continue;
    float* dst = grad_table + (static_cast<int64_t>(p0) * rows + r) * pb.outputs + oc;
    if (pb.accumulate) atomicAdd(dst, tile[i]);
    else *dst = tile[i];
  }
}

// ------------------------------------------------------------------------------------------------ host side

GridParams make_grid(int grids) {
  // grid.py: inner nodes sigma^-1(k / G), k = 1..G-1, plus two ghosts extrapolated linearly, in double.
  double n64[kMaxNodes] = {};
  for (int k = 1; k < grids; ++k) {
    const double u = static_cast<double>(k) / grids;
    n64[k] = u <= 0.5 ? std::log(2.0 * u) : -std::log(2.0 * (1.0 - u));
  }
  n64[0] = n64[1] - (n64[2] - n64[1]);
  n64[grids] = n64[grids - 1] + (n64[grids - 1] - n64[grids - 2]);
  GridParams gp{};
  gp.grids = grids;
  for (int i = 0; i <= grids; ++i) gp.node[i] = static_cast<float>(n64[i]);
  for (int i = 0; i < grids; ++i) gp.inv_len[i] = static_cast<float>(1.0 / (n64[i + 1] - n64[i]));
  return gp;
}

#ifndef LMKAN_HOST_EMULATION  // the emulation test supplies its own launcher
#define LMKAN_LAUNCH(kernel, plan, stream, ...) \
  kernel<<<(plan).grid, (plan).threads, (plan).smem, stream>>>(__VA_ARGS__)
#endif

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T>
T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

struct Plan {
  Problem pb{};
  dim3 grid;
  int smem = 0;
  int threads = 0;
  bool shared = true;
};

using KernelPtr = const void*;

// Chooses the pair chunk (as many pairs as fit in shared memory, at most 8), the kernel variant (shared slice or
// the global-memory slow path) and the batch split (enough blocks for two waves, each block streaming at least
// 16 samples per node row of the slice so that staging the slice stays a small part of its work).
cudaError_t make_plan(KernelPtr shared_kernel, KernelPtr global_kernel, int threads_shared, int threads_global,
                      int64_t batch, int pairs, int grids, int outputs, int out_tile, Plan& plan) {
  int device = 0, sms = 0, optin = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  const int rows = (grids + 1) * (grids + 1), slice = rows * kRowBytes, gbytes = grid_smem_bytes(grids);
  int chunk_pairs = std::min({kMaxPairChunk, pairs, std::max(0, optin - gbytes) / slice});
  plan.shared = chunk_pairs >= 1;
  if (!plan.shared) chunk_pairs = std::min(kMaxPairChunk, pairs);
  plan.smem = gbytes + (plan.shared ? chunk_pairs * slice : 0);
  const KernelPtr kernel = plan.shared ? shared_kernel : global_kernel;
  plan.threads = plan.shared ? threads_shared : threads_global;
  const int64_t per_block = samples_per_block(plan.threads);
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, plan.threads, plan.smem);
  if (err != cudaSuccess) return err;
  const int64_t out_tiles = ceil_div<int64_t>(outputs, out_tile), pair_chunks = ceil_div(pairs, chunk_pairs);
  const int64_t tiles = out_tiles * pair_chunks;
  if (tiles > INT_MAX) return cudaErrorInvalidValue;
  const int64_t want = 2LL * sms * std::max(per_sm, 1);
  const int64_t min_chunk = plan.shared ? std::max<int64_t>(per_block, 16 * rows) : per_block;
  int64_t splits = 1;
  if (tiles < want) splits = std::max<int64_t>(1, std::min({ceil_div(want, tiles), ceil_div(batch, min_chunk),
                                                            int64_t{65535}}));
  const int64_t chunk = ceil_div(ceil_div(batch, splits), per_block) * per_block;
  splits = ceil_div(batch, chunk);
  plan.pb.batch = batch;
  plan.pb.chunk = chunk;
  plan.pb.pairs = pairs;
  plan.pb.outputs = outputs;
  plan.pb.pair_chunk = chunk_pairs;
  plan.pb.out_tiles = static_cast<int>(out_tiles);
  plan.grid = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
  return cudaSuccess;
}

void report(const Plan& plan, int out_tile, LmkanCudaInfo* info) {
  if (info == nullptr) return;
  info->out_tile = out_tile;
  info->pair_chunk = plan.pb.pair_chunk;
  info->batch_splits = static_cast<int>(plan.grid.y);
  info->table_in_shared = plan.shared;
}

bool valid_sizes(int64_t batch, int64_t pairs, int grids, int64_t outputs) {
  return batch >= 0 && pairs >= 0 && outputs >= 0 && pairs <= INT_MAX / 2 && outputs <= INT_MAX && grids >= 3 &&
         grids <= kMaxNodes - 1;
}

template <typename T>
cudaError_t launch_forward(const float* x, const T* table, float* y, int64_t batch, int pairs, int grids,
                           int outputs, cudaStream_t stream, LmkanCudaInfo* info) {
  constexpr int out_tile = Vec<T>::n * kLanesPerSample;
  Plan plan;
  cudaError_t err = make_plan(reinterpret_cast<KernelPtr>(&forward_kernel<T, true>),
                              reinterpret_cast<KernelPtr>(&forward_kernel<T, false>), kForwardThreads<T>,
                              kForwardThreads<T>, batch, pairs, grids, outputs, out_tile, plan);
  if (err != cudaSuccess) return err;
  plan.pb.accumulate = ceil_div(pairs, plan.pb.pair_chunk) > 1;
  plan.pb.vec_table = aligned(table, 16) && outputs % Vec<T>::n == 0;
  plan.pb.vec_rows = aligned(y, 16) && outputs % 4 == 0;
  if (plan.pb.accumulate) err = cudaMemsetAsync(y, 0, sizeof(float) * batch * outputs, stream);
  if (err != cudaSuccess) return err;
  const GridParams gp = make_grid(grids);
  const auto kernel = plan.shared ? &forward_kernel<T, true> : &forward_kernel<T, false>;
  LMKAN_LAUNCH(kernel, plan, stream, x, table, y, plan.pb, gp);
  report(plan, out_tile, info);
  return cudaGetLastError();
}

cudaError_t launch_grad_x(const float* grad_out, const float* x, const float* table, float* grad_x, int64_t batch,
                          int pairs, int outputs, const GridParams& gp, cudaStream_t stream, LmkanCudaInfo* info) {
  constexpr int out_tile = kRowBytes / sizeof(float);
  const size_t bytes = sizeof(float) * batch * 2 * pairs;
  if (bytes == 0) return cudaSuccess;
  if (outputs == 0) return cudaMemsetAsync(grad_x, 0, bytes, stream);
  Plan plan;
  cudaError_t err = make_plan(reinterpret_cast<KernelPtr>(&grad_x_kernel<true>),
                              reinterpret_cast<KernelPtr>(&grad_x_kernel<false>), kGradXThreads<true>,
                              kGradXThreads<false>, batch, pairs, gp.grids, outputs, out_tile, plan);
  if (err != cudaSuccess) return err;
  plan.pb.accumulate = plan.pb.out_tiles > 1;
  plan.pb.vec_table = aligned(table, 16) && outputs % 4 == 0;
  plan.pb.vec_rows = aligned(grad_out, 16) && outputs % 4 == 0;
  plan.pb.vec_pairs = aligned(grad_x, 8);
  if (plan.pb.accumulate && (err = cudaMemsetAsync(grad_x, 0, bytes, stream)) != cudaSuccess) return err;
  const auto kernel = plan.shared ? &grad_x_kernel<true> : &grad_x_kernel<false>;
  LMKAN_LAUNCH(kernel, plan, stream, grad_out, x, table, grad_x, plan.pb, gp);
  report(plan, out_tile, info);
  return cudaGetLastError();
}

cudaError_t launch_grad_table(const float* grad_out, const float* x, float* grad_table, int64_t batch, int pairs,
                              int outputs, const GridParams& gp, cudaStream_t stream, LmkanCudaInfo* info) {
  constexpr int out_tile = kRowBytes / sizeof(float);
  const size_t bytes = sizeof(float) * pairs * (gp.grids + 1) * (gp.grids + 1) * outputs;
  if (bytes == 0) return cudaSuccess;
  if (batch == 0) return cudaMemsetAsync(grad_table, 0, bytes, stream);
  Plan plan;
  cudaError_t err = make_plan(reinterpret_cast<KernelPtr>(&grad_table_kernel<true>),
                              reinterpret_cast<KernelPtr>(&grad_table_kernel<false>), kGradTableThreads,
                              kGradTableThreads, batch, pairs, gp.grids, outputs, out_tile, plan);
  if (err != cudaSuccess) return err;
  plan.pb.accumulate = plan.grid.y > 1 || !plan.shared;
  plan.pb.vec_rows = aligned(grad_out, 16) && outputs % 4 == 0;
  if (plan.pb.accumulate && (err = cudaMemsetAsync(grad_table, 0, bytes, stream)) != cudaSuccess) return err;
  const auto kernel = plan.shared ? &grad_table_kernel<true> : &grad_table_kernel<false>;
  LMKAN_LAUNCH(kernel, plan, stream, grad_out, x, grad_table, plan.pb, gp);
  report(plan, out_tile, info);
  return cudaGetLastError();
}

}  // namespace

cudaError_t lmkan_cuda_forward(const float* x, const void* table, bool table_bf16, float* y, int64_t batch,
                               int64_t pairs, int grids, int64_t outputs, cudaStream_t stream, LmkanCudaInfo* info) {
  if (!valid_sizes(batch, pairs, grids, outputs)) return cudaErrorInvalidValue;
  if (batch == 0 || outputs == 0) return cudaSuccess;
  if (pairs == 0) return cudaMemsetAsync(y, 0, sizeof(float) * batch * outputs, stream);
  if (table_bf16) {
    return launch_forward(x, static_cast<const uint16_t*>(table), y, batch, static_cast<int>(pairs), grids,
                          static_cast<int>(outputs), stream, info);
  }
  return launch_forward(x, static_cast<const float*>(table), y, batch, static_cast<int>(pairs), grids,
                        static_cast<int>(outputs), stream, info);
}

cudaError_t lmkan_cuda_backward(const float* grad_out, const float* x, const float* table, float* grad_x,
                                float* grad_table, int64_t batch, int64_t pairs, int grids, int64_t outputs,
                                cudaStream_t stream, LmkanCudaInfo* info_x, LmkanCudaInfo* info_table) {
  if (!valid_sizes(batch, pairs, grids, outputs)) return cudaErrorInvalidValue;
  const GridParams gp = make_grid(grids);
  const int np = static_cast<int>(pairs), no = static_cast<int>(outputs);
  cudaError_t err = cudaSuccess;
  if (grad_x != nullptr) err = launch_grad_x(grad_out, x, table, grad_x, batch, np, no, gp, stream, info_x);
  if (grad_table != nullptr && err == cudaSuccess) {
    err = launch_grad_table(grad_out, x, grad_table, batch, np, no, gp, stream, info_table);
  }
  return err;
}
