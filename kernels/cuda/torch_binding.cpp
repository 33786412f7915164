// Torch extension over the raw-pointer lmKAN CUDA kernels (lmkan_cuda.cuh): forward(x, table) and
// backward(grad_out, x, table, need_x, need_table) -> (grad_x, grad_table), as ops/dispatch.py expects.
// Kernels run on the current CUDA stream of x's device. A gradient that is not needed comes back empty.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <tuple>

#include "lmkan_cuda.cuh"

namespace {

void check_inputs(const at::Tensor& x, const at::Tensor& table) {
  TORCH_CHECK(x.is_cuda() && table.is_cuda() && x.device() == table.device(),
              "lmkan cuda: x and table must be CUDA tensors on one device");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "lmkan cuda: x must be a contiguous float32 [B, 2P] tensor, got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(table.dim() == 4 && table.size(1) == table.size(2) && table.is_contiguous(),
              "lmkan cuda: table must be a contiguous [P, G+1, G+1, N_out] tensor, got ", table.sizes());
  TORCH_CHECK(table.scalar_type() == at::kFloat || table.scalar_type() == at::kBFloat16,
              "lmkan cuda: table must be float32 or bfloat16, got ", table.scalar_type());
  TORCH_CHECK(x.size(1) == 2 * table.size(0), "lmkan cuda: x has ", x.size(1), " features but the table holds ",
              table.size(0), " pairs");
}

void check_status(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "lmkan cuda ", what, " failed: ", cudaGetErrorString(err));
}

void warn_if_slow(const LmkanCudaInfo& info, int64_t grids) {
  if (info.pair_chunk > 0 && !info.table_in_shared) {
    TORCH_WARN_ONCE("lmkan cuda: with G=", grids, " a table slice does not fit in this GPU's shared memory; ",
                    "using the slower kernels that read the table from global memory");
  }
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& table) {
  check_inputs(x, table);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({x.size(0), table.size(3)}, x.options());
  LmkanCudaInfo info;
  const int64_t grids = table.size(1) - 1;
  check_status(lmkan_cuda_forward(x.data_ptr<float>(), table.data_ptr(), table.scalar_type() == at::kBFloat16,
                                  y.data_ptr<float>(), x.size(0), table.size(0), static_cast<int>(grids),
                                  table.size(3), c10::cuda::getCurrentCUDAStream(), &info),
               "forward");
  warn_if_slow(info, grids);
  return y;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table,
                                            bool need_x, bool need_table) {
  check_inputs(x, table);
  TORCH_CHECK(grad_out.device() == x.device() && grad_out.scalar_type() == at::kFloat && grad_out.is_contiguous() &&
                  grad_out.dim() == 2 && grad_out.size(0) == x.size(0) && grad_out.size(1) == table.size(3),
              "lmkan cuda: grad_out must be a contiguous float32 [B, N_out] tensor on x's device");
  const c10::cuda::CUDAGuard guard(x.device());
  const bool bf16 = table.scalar_type() == at::kBFloat16;
  // The backward kernels read a float32 table: a bfloat16 table is upcast (only needed for grad_x).
  const at::Tensor table32 = need_x && bf16 ? table.to(at::kFloat) : table;
  at::Tensor grad_x = need_x ? at::empty_like(x) : x.new_empty({0});
  at::Tensor grad_table = need_table ? at::empty(table.sizes(), x.options()) : table.new_empty({0});
  LmkanCudaInfo info_x, info_table;
  const int64_t grids = table.size(1) - 1;
  check_status(lmkan_cuda_backward(grad_out.data_ptr<float>(), x.data_ptr<float>(),
                                   need_x ? table32.data_ptr<float>() : nullptr,
                                   need_x ? grad_x.data_ptr<float>() : nullptr,
                                   need_table ? grad_table.data_ptr<float>() : nullptr, x.size(0), table.size(0),
                                   static_cast<int>(grids), table.size(3), c10::cuda::getCurrentCUDAStream(), &info_x,
                                   &info_table),
               "backward");
  warn_if_slow(info_x, grids);
  warn_if_slow(info_table, grids);
  if (need_table && bf16) grad_table = grad_table.to(at::kBFloat16);
  return {grad_x, grad_table};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lmKAN CUDA kernels (batch-first; float32 tables, bfloat16 tables for the forward)";
  m.def("forward", &forward, "y[B, N_out] from x[B, 2P] float32 and table[P, G+1, G+1, N_out]");
  m.def("backward", &backward, "(grad_x, grad_table) for grad_out[B, N_out]; unneeded gradients are empty");
}
