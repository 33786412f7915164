// Test-only driver (tests/test_cuda_kernels.py): compiles lmkan_cuda.cu as plain C++ over stand-ins of the CUDA
// runtime and device intrinsics, one std::thread per CUDA thread (the blocks of a launch one after another), and
// calls its public API, so that the planner, the kernels' indexing, shuffles, reductions and atomics are checked on
// machines without a GPU. Not part of the extension.
//
//   emulate_on_host KIND B P G N_OUT SMS SMEM_PER_BLOCK DIR
//     KIND: fwd | fwd_bf16 | backward | grad_x | grad_table; SMS and SMEM_PER_BLOCK describe the emulated GPU (they
//     steer the planner: pair chunk, batch splits, global-memory path). DIR holds x.bin, table.bin (float32; uint16
//     bfloat16 bits for fwd_bf16) and gy.bin; results go to DIR/y.bin, gx.bin, gt.bin (float32, NaN where not
//     written) and one line per launch, "pair_chunk batch_splits table_in_shared", to stdout.
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// ---- the CUDA surface the kernels use
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct float2 {
  float x, y;
};
struct float4 {
  float x, y, z, w;
};
struct uint4 {
  uint32_t x, y, z, w;
};
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline float2 atomicAdd(float2* p, float2 v) { return {atomicAdd(&p->x, v.x), atomicAdd(&p->y, v.y)}; }
inline float4 atomicAdd(float4* p, float4 v) {
  return {atomicAdd(&p->x, v.x), atomicAdd(&p->y, v.y), atomicAdd(&p->z, v.z), atomicAdd(&p->w, v.w)};
}
using std::max;
using std::min;

thread_local dim3 threadIdx, blockIdx;
dim3 blockDim;

struct Warp {
  std::barrier<> bar{32};
  uint32_t slot[32];
};
thread_local Warp* tl_warp;
thread_local std::barrier<>* tl_block;

inline void __syncthreads() { tl_block->arrive_and_wait(); }

template <typename T>
T shuffle(T v, int src) {
  static_assert(sizeof(T) == 4);
  uint32_t u;
  std::memcpy(&u, &v, 4);
  tl_warp->slot[threadIdx.x & 31] = u;
  tl_warp->bar.arrive_and_wait();
  u = tl_warp->slot[src & 31];
  tl_warp->bar.arrive_and_wait();
  std::memcpy(&v, &u, 4);
  return v;
}
#define __shfl_sync(mask, v, src) shuffle(v, src)
#define __shfl_xor_sync(mask, v, m) shuffle(v, static_cast<int>(threadIdx.x & 31) ^ (m))

// ---- the CUDA runtime the host code uses, for a GPU with g_sms multiprocessors and g_smem bytes per block
using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0, cudaErrorInvalidValue = 1;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount, cudaDevAttrMaxSharedMemoryPerBlockOptin };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
int g_sms = 0, g_smem = 0;
cudaError_t g_error = cudaSuccess;
inline cudaError_t cudaGetDevice(int* device) { return *device = 0, cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? g_sms : g_smem;
  return cudaSuccess;
}
inline cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int bytes) {
  return bytes <= g_smem ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int threads, size_t smem) {
  *blocks = std::max(1, std::min(2048 / threads, smem > 0 ? 233472 / static_cast<int>(smem) : 32));
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return std::exchange(g_error, cudaSuccess); }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__
#define __align__(n)
#define __CUDA_ARCH__ 900
#define LMKAN_HOST_EMULATION

namespace {
alignas(16) unsigned char smem[232448];  // the kernels' `extern __shared__` array (at most 227 KB, as on Hopper)

template <typename... Params, typename... Args>
void emulate_launch(void (*kernel)(Params...), dim3 grid, unsigned threads, int smem_bytes, Args... args) {
  if (smem_bytes > g_smem || smem_bytes > static_cast<int>(sizeof(smem)) || threads % 32 != 0) {
    g_error = cudaErrorInvalidValue;
    return;
  }
  blockDim = {threads, 1, 1};
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::memset(smem, 0xff, sizeof(smem));  // NaN: a read of shared memory nobody wrote shows up
      std::barrier<> block(threads);
      std::vector<std::unique_ptr<Warp>> warps;
      for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Warp>());
      std::vector<std::thread> pool;
      for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          threadIdx = {t, 0, 0};
          blockIdx = {bx, by, 0};
          tl_warp = warps[t / 32].get();
          tl_block = &block;
          kernel(args...);
        });
      }
      for (auto& th : pool) th.join();
    }
  }
}
}  // namespace
#define LMKAN_LAUNCH(kernel, plan, stream, ...) \
  emulate_launch(kernel, (plan).grid, (plan).threads, (plan).smem, __VA_ARGS__)

#include "lmkan_cuda.cu"

namespace {

template <typename T>
std::vector<T> read_file(const std::string& path, size_t count) {
  std::vector<T> data(count);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr || std::fread(data.data(), sizeof(T), count, f) != count) {
    std::fprintf(stderr, "cannot read %zu values from %s\n", count, path.c_str());
    std::exit(2);
  }
  std::fclose(f);
  return data;
}

void write_file(const std::string& path, const std::vector<float>& data) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(data.data(), sizeof(float), data.size(), f) != data.size()) std::exit(3);
  std::fclose(f);
}

void print_info(const LmkanCudaInfo& info) {
  std::printf("%d %d %d\n", info.pair_chunk, info.batch_splits, info.table_in_shared ? 1 : 0);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 9) {
    std::fprintf(stderr, "usage: %s KIND B P G N_OUT SMS SMEM_PER_BLOCK DIR\n", argv[0]);
    return 2;
  }
  const std::string kind = argv[1], dir = argv[8];
  const int64_t batch = std::atoll(argv[2]), pairs = std::atoll(argv[3]), outputs = std::atoll(argv[5]);
  const int grids = std::atoi(argv[4]);
  g_sms = std::atoi(argv[6]);
  g_smem = std::atoi(argv[7]);
  const size_t n_x = batch * 2 * pairs, n_y = batch * outputs;
  const size_t n_table = static_cast<size_t>(pairs) * (grids + 1) * (grids + 1) * outputs;
  const auto x = read_file<float>(dir + "/x.bin", n_x);
  LmkanCudaInfo info, info_table;
  cudaError_t err;
  if (kind == "fwd" || kind == "fwd_bf16") {
    std::vector<float> y(n_y, NAN);
    if (kind == "fwd") {
      const auto table = read_file<float>(dir + "/table.bin", n_table);
      err = lmkan_cuda_forward(x.data(), table.data(), false, y.data(), batch, pairs, grids, outputs, nullptr, &info);
    } else {
      const auto table = read_file<uint16_t>(dir + "/table.bin", n_table);
      err = lmkan_cuda_forward(x.data(), table.data(), true, y.data(), batch, pairs, grids, outputs, nullptr, &info);
    }
    write_file(dir + "/y.bin", y);
    print_info(info);
  } else {
    const auto table = read_file<float>(dir + "/table.bin", n_table);
    const auto gy = read_file<float>(dir + "/gy.bin", n_y);
    std::vector<float> gx(kind == "grad_table" ? 0 : n_x, NAN), gt(kind == "grad_x" ? 0 : n_table, NAN);
    err = lmkan_cuda_backward(gy.data(), x.data(), table.data(), gx.empty() ? nullptr : gx.data(),
                              gt.empty() ? nullptr : gt.data(), batch, pairs, grids, outputs, nullptr, &info,
                              &info_table);
    write_file(dir + "/gx.bin", gx);
    write_file(dir + "/gt.bin", gt);
    print_info(info);
    print_info(info_table);
  }
  if (err != cudaSuccess) std::fprintf(stderr, "error %d\n", err);
  return err == cudaSuccess ? 0 : 1;
}
