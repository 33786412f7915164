// Host API of the lmKAN CUDA kernels (raw pointers and a stream: no torch or onnxruntime types, so the torch
// extension and the onnxruntime CUDA custom op share one implementation).
//
// Layout (canonical, batch-first, everything contiguous):
//   x          [batch, 2 * pairs]                 float32
//   table      [pairs, grids + 1, grids + 1, outputs]  float32, or bfloat16 (raw 16-bit patterns) for the forward
//   y          [batch, outputs]                   float32
//   y[b, o] = sum_p f_{o,p}(x[b, 2p], x[b, 2p+1]), f piecewise bilinear on the Laplace-CDF grid of grid.py.
//
// Every function returns cudaSuccess or the first CUDA error met (launch or argument errors); kernels run
// asynchronously on `stream`. `info`, when not null, receives the tiling that was used.
#pragma once

#include <cstdint>

#ifndef LMKAN_HOST_EMULATION  // the CPU emulation test (kernels/cuda/emulate_on_host.cpp) brings stand-ins
#include <cuda_runtime_api.h>
#endif

struct LmkanCudaInfo {
  int out_tile = 0;             // outputs per thread block (32 for float32 tables, 64 for bfloat16 tables)
  int pair_chunk = 0;           // input pairs per thread block
  int batch_splits = 0;         // thread blocks along the batch per (output tile, pair chunk)
  bool table_in_shared = true;  // false: the table slice did not fit in shared memory and the slow path that
                                // reads the table from global memory ran (grids above ~41 on Hopper)
};

// y = lookup(x, table). `table_bf16` selects a bfloat16 table (fp32 arithmetic and accumulation).
cudaError_t lmkan_cuda_forward(const float* x, const void* table, bool table_bf16, float* y, int64_t batch,
                               int64_t pairs, int grids, int64_t outputs, cudaStream_t stream,
                               LmkanCudaInfo* info = nullptr);

// Gradients of sum(grad_out * y) with respect to x (into grad_x, [batch, 2 * pairs]) and to a float32 table (into
// grad_table, [pairs, grids + 1, grids + 1, outputs]). Either output pointer may be null (gradient not needed);
// both are fully overwritten otherwise. grad_out is [batch, outputs] float32.
cudaError_t lmkan_cuda_backward(const float* grad_out, const float* x, const float* table, float* grad_x,
                                float* grad_table, int64_t batch, int64_t pairs, int grids, int64_t outputs,
                                cudaStream_t stream, LmkanCudaInfo* info_x = nullptr,
                                LmkanCudaInfo* info_table = nullptr);
