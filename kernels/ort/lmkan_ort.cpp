// onnxruntime custom-op library for lmkan.LMKAN2D (domain "lmkan", version 1): Y = LMKAN2D(X, table) with attribute
// num_grids, X [B, 2P], table [P, G+1, G+1, N_out] (canonical layout), Y [B, N_out], all float32.
//
// The kernels are the project's raw-pointer cores: kernels/cpu/lmkan_cpu.cpp (compiled into this library) and,
// when built with -DLMKAN_ORT_WITH_CUDA, kernels/cuda/lmkan_cuda.cu (run on onnxruntime's compute stream).
// Built against the API-21 headers without linking libonnxruntime; the only exported symbol is RegisterCustomOps.
// The CPU kernel splits the batch into blocks of ~1024 rows run on onnxruntime's intra-op thread pool (ParallelFor),
// so the session's intra_op_num_threads governs it; each block is one single-threaded call of the CPU core.
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "lmkan_cpu.h"
#ifdef LMKAN_ORT_WITH_CUDA
#include "lmkan_cuda.cuh"
#endif

namespace {

constexpr const char* kDomain = "lmkan";
constexpr const char* kOpType = "LMKAN2D";
// Rows per ParallelFor task: each task sweeps the whole table once, as one batch block of the OpenMP kernel does.
constexpr int64_t kRowsPerTask = 1024;

// Shapes of one call, checked against the op's contract; throws Ort::Exception with a precise message.
struct Call {
    int64_t batch, pairs, grids, outputs;
};

Call check_inputs(const Ort::ConstValue& x, const Ort::ConstValue& table, int64_t num_grids) {
    const auto xs = x.GetTensorTypeAndShapeInfo().GetShape();
    const auto ts = table.GetTensorTypeAndShapeInfo().GetShape();
    if (xs.size() != 2 || ts.size() != 4 || ts[1] != ts[2])
        ORT_CXX_API_THROW("lmkan.LMKAN2D expects X [B, 2P] and table [P, G+1, G+1, N_out]", ORT_INVALID_ARGUMENT);
    if (xs[1] != 2 * ts[0])
        ORT_CXX_API_THROW("lmkan.LMKAN2D: X has " + std::to_string(xs[1]) + " features but the table holds " +
                              std::to_string(ts[0]) + " pairs",
                          ORT_INVALID_ARGUMENT);
    if (ts[1] - 1 != num_grids)
        ORT_CXX_API_THROW("lmkan.LMKAN2D: attribute num_grids=" + std::to_string(num_grids) +
                              " does not match the table's " + std::to_string(ts[1] - 1) + " grid intervals",
                          ORT_INVALID_ARGUMENT);
    return Call{xs[0], ts[0], num_grids, ts[3]};
}

// One call's data pointers and shapes: inputs checked, output Y [B, N_out] allocated. Shared by both providers.
struct Bound {
    const float* x;
    const float* table;
    float* y;
    Call call;
};

Bound bind(Ort::KernelContext& ctx, int64_t num_grids) {
    const auto x = ctx.GetInput(0);
    const auto table = ctx.GetInput(1);
    const Call call = check_inputs(x, table, num_grids);
    auto y = ctx.GetOutput(0, std::vector<int64_t>{call.batch, call.outputs});
    return Bound{x.GetTensorData<float>(), table.GetTensorData<float>(), y.GetTensorMutableData<float>(), call};
}

void check_rc(int rc) {
    if (rc != LMKAN_CPU_OK)
        ORT_CXX_API_THROW(std::string("lmkan cpu kernel failed: ") + lmkan_cpu_error_string(rc), ORT_RUNTIME_EXCEPTION);
}

int64_t attribute_num_grids(const OrtKernelInfo* info) {
    return Ort::ConstKernelInfo(info).GetAttribute<int64_t>("num_grids");
}

// One row block of the CPU forward: what ParallelFor runs.
struct CpuBlocks {
    const float* x;
    const float* table;
    float* y;
    Call call;
    int64_t rows_per_task;
    int rc;
};

void run_cpu_block(void* data, size_t task) {
    auto* blocks = static_cast<CpuBlocks*>(data);
    const Call& c = blocks->call;
    const int64_t b0 = static_cast<int64_t>(task) * blocks->rows_per_task;
    const int64_t rows = std::min(c.batch - b0, blocks->rows_per_task);
    const int rc = lmkan_cpu_forward(blocks->x + b0 * 2 * c.pairs, blocks->table, blocks->y + b0 * c.outputs, rows,
                                     c.pairs, c.grids, c.outputs, 1);
    if (rc != LMKAN_CPU_OK) blocks->rc = rc;  // any failing block's code is reported; all fail alike
}

struct CpuKernel {
    explicit CpuKernel(const OrtKernelInfo* info) : num_grids_(attribute_num_grids(info)) {}

    void Compute(OrtKernelContext* context) {
        Ort::KernelContext ctx(context);
        const Bound io = bind(ctx, num_grids_);
        const Call& call = io.call;
        if (call.batch == 0) return;
        const int64_t tasks_wanted = std::max<int64_t>(1, call.batch / kRowsPerTask);
        const int64_t rows = (call.batch + tasks_wanted - 1) / tasks_wanted;
        CpuBlocks blocks{io.x, io.table, io.y, call, rows, LMKAN_CPU_OK};
        const int64_t tasks = (call.batch + rows - 1) / rows;
        if (tasks == 1)
            run_cpu_block(&blocks, 0);
        else
            ctx.ParallelFor(run_cpu_block, static_cast<size_t>(tasks), 0, &blocks);
        check_rc(blocks.rc);
    }

   private:
    int64_t num_grids_;
};

#ifdef LMKAN_ORT_WITH_CUDA
struct CudaKernel {
    explicit CudaKernel(const OrtKernelInfo* info) : num_grids_(attribute_num_grids(info)) {}

    void Compute(OrtKernelContext* context) {
        Ort::KernelContext ctx(context);
        const Bound io = bind(ctx, num_grids_);
        const Call& call = io.call;
        if (call.batch == 0) return;
        auto stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
        const cudaError_t err = lmkan_cuda_forward(io.x, io.table, false, io.y, call.batch, call.pairs,
                                                   static_cast<int>(call.grids), call.outputs, stream);
        if (err != cudaSuccess)
            ORT_CXX_API_THROW(std::string("lmkan cuda kernel failed: ") + cudaGetErrorString(err),
                              ORT_RUNTIME_EXCEPTION);
    }

   private:
    int64_t num_grids_;
};
#endif

// The op description shared by both providers: two float inputs, one float output.
template <typename Kernel>
struct Lmkan2dOp : Ort::CustomOpBase<Lmkan2dOp<Kernel>, Kernel> {
    explicit Lmkan2dOp(const char* provider) : provider_(provider) {}

    void* CreateKernel(const OrtApi& /*api*/, const OrtKernelInfo* info) const { return new Kernel(info); }
    const char* GetName() const { return kOpType; }
    const char* GetExecutionProviderType() const { return provider_; }
    size_t GetInputTypeCount() const { return 2; }
    ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

   private:
    const char* provider_;
};

Lmkan2dOp<CpuKernel> g_cpu_op("CPUExecutionProvider");
#ifdef LMKAN_ORT_WITH_CUDA
Lmkan2dOp<CudaKernel> g_cuda_op("CUDAExecutionProvider");
#endif

// A status made through the oldest API table (always present), for onnxruntime builds older than ours.
OrtStatus* too_old(const OrtApiBase* api_base) {
    const OrtApi* api = api_base->GetApi(1);
    const std::string msg = std::string("the lmkan custom-op library needs onnxruntime >= 1.21 (ORT API ") +
                            std::to_string(ORT_API_VERSION) + "), this is onnxruntime " +
                            api_base->GetVersionString() + ": pip install -U 'onnxruntime>=1.21'";
    return api ? api->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
}

Ort::CustomOpDomain make_domain() {
    Ort::CustomOpDomain domain(kDomain);
    domain.Add(&g_cpu_op);
#ifdef LMKAN_ORT_WITH_CUDA
    domain.Add(&g_cuda_op);
#endif
    return domain;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
    const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
    if (api == nullptr) return too_old(api_base);
    Ort::InitApi(api);
    try {
        static Ort::CustomOpDomain domain = make_domain();  // outlives every session that uses it
        Ort::UnownedSessionOptions(options).Add(domain);
    } catch (const Ort::Exception& e) {
        return api->CreateStatus(e.GetOrtErrorCode(), e.what());
    }
    return nullptr;
}
