// Thin torch binding of the CPU kernels: the module that lmkan_surgery/ops/dispatch.py calls (forward, backward).
// Inputs are already validated by the Python op; this only checks what the raw-pointer API relies on.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "lmkan_cpu.h"
#include "lmkan_cpu_gram.h"
#include "lmkan_cpu_place.h"
#include "torch_output_pool.h"

namespace {

void check_float_cpu(const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32, name, " must be a float32 CPU tensor");
}

// The kernels' storage code of a float32, float16 or bfloat16 CPU table.
int table_dtype(const torch::Tensor& table) {
    TORCH_CHECK(table.device().is_cpu(), "table must be a CPU tensor");
    switch (table.scalar_type()) {
        case torch::kFloat32: return LMKAN_CPU_FLOAT32;
        case torch::kFloat16: return LMKAN_CPU_FLOAT16;
        case torch::kBFloat16: return LMKAN_CPU_BFLOAT16;
        default: TORCH_CHECK(false, "table must be float32, float16 or bfloat16, got ", table.scalar_type());
    }
}

void check_table(const torch::Tensor& x, const torch::Tensor& table) {
    check_float_cpu(x, "x");
    table_dtype(table);
    TORCH_CHECK(x.dim() == 2 && table.dim() == 4 && table.size(1) == table.size(2) && x.size(1) == 2 * table.size(0),
                "expected x [B, 2P] and table [P, G+1, G+1, N_out]");
}

std::vector<int64_t> row_major_strides(at::IntArrayRef sizes) {
    const auto strides = c10::contiguous_strides(sizes);
    return {strides.begin(), strides.end()};
}

// An uninitialised float32 CPU tensor that a kernel writes whole, contiguous (or with the given strides); large ones
// reuse the blocks of freed outputs (torch_output_pool.h).
torch::Tensor fresh_output(at::IntArrayRef sizes) { return lmkan_pool::pooled_empty(sizes, row_major_strides(sizes)); }

torch::Tensor fresh_output(at::IntArrayRef sizes, at::IntArrayRef strides) {
    return lmkan_pool::pooled_empty(sizes, strides);
}

void check_rc(int rc) { TORCH_CHECK(rc == LMKAN_CPU_OK, "lmkan cpu kernel failed: ", lmkan_cpu_error_string(rc)); }

torch::Tensor forward(torch::Tensor x, torch::Tensor table) {
    check_table(x, table);
    x = x.contiguous();
    table = table.contiguous();
    auto y = fresh_output({x.size(0), table.size(3)});
    const int threads = at::get_num_threads();
    {
        pybind11::gil_scoped_release no_gil;
        check_rc(lmkan_cpu_forward_typed(x.data_ptr<float>(), table.data_ptr(), table_dtype(table),
                                         y.data_ptr<float>(), x.size(0), table.size(0), table.size(1) - 1,
                                         table.size(3), threads));
    }
    return y;
}

std::tuple<torch::Tensor, torch::Tensor> backward(torch::Tensor grad_out, torch::Tensor x, torch::Tensor table,
                                                  bool need_x, bool need_table) {
    check_table(x, table);
    check_float_cpu(grad_out, "grad_out");
    TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == x.size(0) && grad_out.size(1) == table.size(3),
                "grad_out must have shape [B, N_out]");
    x = x.contiguous();
    table = table.contiguous();
    grad_out = grad_out.contiguous();
    auto grad_x = need_x ? fresh_output(x.sizes()) : x.new_empty({0});
    // float32 accumulation whatever the table's storage dtype; rounded to it once at the end
    auto grad_table = need_table ? fresh_output(table.sizes()) : x.new_empty({0});
    const int threads = at::get_num_threads();
    {
        pybind11::gil_scoped_release no_gil;
        check_rc(lmkan_cpu_backward_typed(grad_out.data_ptr<float>(), x.data_ptr<float>(), table.data_ptr(),
                                          table_dtype(table), need_x ? grad_x.data_ptr<float>() : nullptr,
                                          need_table ? grad_table.data_ptr<float>() : nullptr, x.size(0),
                                          table.size(0), table.size(1) - 1, table.size(3), threads));
    }
    return {grad_x, grad_table.to(table.scalar_type())};
}

// Geometry of the direct convolution of a padded NCHW tensor x (made NCHW- or channels_last-contiguous in place)
// with a table [groups, P, G+1, G+1, out / groups] (made contiguous in place).
lmkan_conv_geometry conv_geometry(torch::Tensor& x, torch::Tensor& table, const std::vector<int64_t>& kernel,
                                  const std::vector<int64_t>& step, const std::vector<int64_t>& dilation) {
    check_float_cpu(x, "x");
    table_dtype(table);
    TORCH_CHECK(x.dim() == 4 && table.dim() == 5 && table.size(2) == table.size(3) && kernel.size() == 2 &&
                    step.size() == 2 && dilation.size() == 2,
                "expected x [N, C, H, W], table [groups, P, G+1, G+1, out / groups] and 2-element geometry");
    if (!x.is_contiguous() && !x.is_contiguous(at::MemoryFormat::ChannelsLast)) x = x.contiguous();
    table = table.contiguous();
    TORCH_CHECK(x.size(2) >= dilation[0] * (kernel[0] - 1) + 1 && x.size(3) >= dilation[1] * (kernel[1] - 1) + 1 &&
                    step[0] > 0 && step[1] > 0,
                "input ", x.sizes(), " is smaller than the dilated kernel or a step is not positive");
    return lmkan_conv_geometry{x.size(0), x.size(1), x.size(2), x.size(3), x.stride(0), x.stride(1), x.stride(2),
                               x.stride(3), table.size(0), kernel[0], kernel[1], step[0], step[1], dilation[0],
                               dilation[1], table.size(0) * table.size(4)};
}

// The direct convolution (no patches); returns [N, out, OH, OW] as a view of the channels-last result.
torch::Tensor conv2d_forward(torch::Tensor x, torch::Tensor table, std::vector<int64_t> kernel,
                             std::vector<int64_t> step, std::vector<int64_t> dilation) {
    const lmkan_conv_geometry g = conv_geometry(x, table, kernel, step, dilation);
    const int64_t out_h = (g.height - g.dilation_h * (g.kernel_h - 1) - 1) / g.step_h + 1;
    const int64_t out_w = (g.width - g.dilation_w * (g.kernel_w - 1) - 1) / g.step_w + 1;
    auto y = fresh_output({g.batch, out_h, out_w, g.out_channels});
    const int threads = at::get_num_threads();
    {
        pybind11::gil_scoped_release no_gil;
        check_rc(lmkan_cpu_conv2d_forward(x.data_ptr<float>(), table.data_ptr(), table_dtype(table),
                                          y.data_ptr<float>(), &g, table.size(2) - 1, threads));
    }
    return y.permute({0, 3, 1, 2});
}

// (grad_x, grad_table) of the direct convolution for grad_y [N, out, OH, OW]; empty tensors for those not needed.
std::tuple<torch::Tensor, torch::Tensor> conv2d_backward(torch::Tensor grad_y, torch::Tensor x, torch::Tensor table,
                                                         std::vector<int64_t> kernel, std::vector<int64_t> step,
                                                         std::vector<int64_t> dilation, bool need_x,
                                                         bool need_table) {
    const lmkan_conv_geometry g = conv_geometry(x, table, kernel, step, dilation);
    check_float_cpu(grad_y, "grad_y");
    TORCH_CHECK(grad_y.dim() == 4 && grad_y.size(0) == g.batch && grad_y.size(1) == g.out_channels,
                "grad_y must be [N, out, OH, OW]");
    grad_y = grad_y.permute({0, 2, 3, 1}).contiguous();
    auto grad_x = need_x ? fresh_output(x.sizes(), x.strides()) : x.new_empty({0});
    auto grad_table = need_table ? fresh_output(table.sizes()) : x.new_empty({0});
    const int threads = at::get_num_threads();
    {
        pybind11::gil_scoped_release no_gil;
        check_rc(lmkan_cpu_conv2d_backward(grad_y.data_ptr<float>(), x.data_ptr<float>(), table.data_ptr(),
                                           table_dtype(table), need_x ? grad_x.data_ptr<float>() : nullptr,
                                           need_table ? grad_table.data_ptr<float>() : nullptr, &g,
                                           table.size(2) - 1, threads));
    }
    return {grad_x, grad_table.to(table.scalar_type())};
}

// The quantile placement's interval tables [3, K - 1, F] (start, length and slope of interval m of feature f at
// [., m, f]; lmkan_surgery/nn/placement.py makes and caches them per knots tensor), checked for F features.
const float* interval_tables(const torch::Tensor& intervals, int64_t features) {
    check_float_cpu(intervals, "intervals");
    TORCH_CHECK(intervals.dim() == 3 && intervals.size(0) == 3 && intervals.size(1) >= 1 &&
                    intervals.size(2) == features && intervals.is_contiguous(),
                "expected contiguous interval tables [3, K - 1, ", features, "], got ", intervals.sizes());
    return intervals.data_ptr<float>();
}

// (u, du/dx) of the placement of a dense x read as [outer, F, inner] (memory order), u in x's memory format.
std::tuple<torch::Tensor, torch::Tensor> place_dense(const torch::Tensor& x, const torch::Tensor& intervals, double v0,
                                                     int64_t features, int64_t inner, bool need_slope) {
    const float* tab = interval_tables(intervals, features);
    const int64_t count = intervals.size(1);
    auto u = torch::empty_like(x);
    auto dudx = need_slope ? torch::empty_like(x) : x.new_empty({0});
    if (x.numel() == 0) return {u, dudx};
    const int64_t outer = x.numel() / (features * inner);
    const int64_t grain = std::max<int64_t>(1, 32768 / (features * inner));  // small calls stay on this thread
    const float* px = x.data_ptr<float>();
    float *pu = u.data_ptr<float>(), *pd = need_slope ? dudx.data_ptr<float>() : nullptr;
    {
        pybind11::gil_scoped_release no_gil;
        at::parallel_for(0, outer, grain, [&](int64_t begin, int64_t end) {
            lmkan_place::place_rows(px, tab, tab + count * features, tab + 2 * count * features,
                                    static_cast<float>(v0), pu, pd, begin, end, features, inner, count);
        });
    }
    return {u, dudx};
}

// (u, du/dx) of the quantile placement of x viewed as [outer, F, inner]: intervals [3, K - 1, F] (interval_tables),
// v0 the map's value at the first knot; du/dx empty unless need_slope.
std::tuple<torch::Tensor, torch::Tensor> place(torch::Tensor x, torch::Tensor intervals, double v0, int64_t inner,
                                               bool need_slope) {
    check_float_cpu(x, "x");
    const int64_t features = intervals.dim() == 3 ? intervals.size(2) : 0;
    TORCH_CHECK(features > 0 && inner > 0 && x.numel() % (features * inner) == 0,
                "expected intervals [3, K - 1, F] and x holding [outer, F, inner]");
    return place_dense(x.contiguous(), intervals, v0, features, inner, need_slope);
}

// Adds D^T D of bilinear design rows (lmkan_cpu_gram.h) to gram [P n^2, P n^2] float64, blocks (p, q >= p) only;
// with mirror, then copies every block (p, q > p) transposed into (q, p). corner [P, rows] int64 lower-corner node
// indices, weight [P, rows, 4] float64 corner weights, n = G + 1 nodes per axis. Streams chunk by chunk.
void bilinear_gram_add(torch::Tensor gram, torch::Tensor corner, torch::Tensor weight, int64_t n, bool mirror) {
    TORCH_CHECK(corner.device().is_cpu() && corner.scalar_type() == torch::kInt64 && corner.dim() == 2,
                "corner must be an int64 CPU tensor [P, rows]");
    TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == torch::kFloat64 && weight.dim() == 3 &&
                    weight.size(0) == corner.size(0) && weight.size(1) == corner.size(1) && weight.size(2) == 4,
                "weight must be a float64 CPU tensor [P, rows, 4] matching corner");
    const int64_t pairs = corner.size(0), rows = corner.size(1);
    TORCH_CHECK(n >= 2, "n (nodes per axis) must be >= 2");
    TORCH_CHECK(gram.device().is_cpu() && gram.scalar_type() == torch::kFloat64 && gram.is_contiguous() &&
                    gram.dim() == 2 && gram.size(0) == pairs * n * n && gram.size(1) == pairs * n * n,
                "gram must be a contiguous float64 CPU tensor [P n^2, P n^2]");
    corner = corner.contiguous();
    weight = weight.contiguous();
    TORCH_CHECK(rows == 0 || (corner.min().item<int64_t>() >= 0 && corner.max().item<int64_t>() <= n * n - n - 2),
                "corner node indices must lie in [0, n^2 - n - 2]");
    const int64_t* pc = corner.data_ptr<int64_t>();
    const double* pw = weight.data_ptr<double>();
    double* pg = gram.data_ptr<double>();
    pybind11::gil_scoped_release no_gil;
    at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
        lmkan_gram::add_upper_blocks(pc, pw, pg, rows, pairs, n, begin, end);
    });
    if (mirror)
        at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
            lmkan_gram::mirror_blocks(pg, pairs, n, begin, end);
        });
}

void select_isa(const std::string& name) {
    TORCH_CHECK(lmkan_cpu_select_isa(name.c_str()) == LMKAN_CPU_OK, "unknown or unsupported ISA path: ", name);
}

}  // namespace

// A float32 CPU vector of n elements, contiguous (or an undefined tensor where `optional` allows).
torch::Tensor channel_vector(const c10::optional<torch::Tensor>& t, int64_t n, const char* name, bool optional) {
    if (!t.has_value() || !t->defined()) {
        TORCH_CHECK(optional, name, " is required");
        return torch::Tensor();
    }
    check_float_cpu(*t, name);
    TORCH_CHECK(t->numel() == n, name, " must have ", n, " elements");
    return t->contiguous();
}

// x placed by the quantile map (intervals: interval_tables) before a pointwise lookup: dense, channels-last images
// and [N, C] rows read with the channels innermost, other images as contiguous planes.
torch::Tensor placed_input(const torch::Tensor& x, bool channels_last, const torch::Tensor& intervals, double v0) {
    const torch::Tensor dense =
        x.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    const int64_t inner = x.dim() == 2 || channels_last ? 1 : x.size(2) * x.size(3);
    return std::get<0>(place_dense(dense, intervals, v0, x.size(1), inner, false));
}

// Whether the one-call kernel takes these inputs: a float32 CPU x [N, 2P] or [N, 2P, H, W] against a CPU table
// [P, ...] of a kernel dtype, float32 CPU maps and bias, and no gradient to record. Checked here rather than in
// Python, where each tensor property read costs 0.2-0.5 us at batch 1.
bool one_call_applies(const torch::Tensor& x, const torch::Tensor& table,
                      std::initializer_list<const c10::optional<torch::Tensor>*> others) {
    const auto float_cpu = [](const torch::Tensor& t) {
        return t.device().is_cpu() && t.scalar_type() == torch::kFloat32;
    };
    const bool grad = at::GradMode::is_enabled();
    const auto kernel_dtype = table.scalar_type() == torch::kFloat32 || table.scalar_type() == torch::kFloat16 ||
                              table.scalar_type() == torch::kBFloat16;
    if (!float_cpu(x) || (x.dim() != 2 && x.dim() != 4) || !table.device().is_cpu() || !kernel_dtype ||
        table.dim() != 4 || x.size(1) != 2 * table.size(0) || (grad && (x.requires_grad() || table.requires_grad())))
        return false;
    return std::all_of(others.begin(), others.end(), [&](const c10::optional<torch::Tensor>* t) {
        return !t->has_value() || !(*t)->defined() || (float_cpu(**t) && !(grad && (*t)->requires_grad()));
    });
}

// The one-group 1x1 convolution of x [N, C, H, W] (any strides) at stride `step`, with the input map before the
// lookup (table [P, G+1, G+1, out], C = 2P) and the bias after it; the output in nn.Conv2d's layout for x
// (channels-last memory for a channels-last input, else contiguous). A Linear's x [N, C] (step 1) is read as N pixels
// of 1 x 1 and gives y [N, out]: no views made (each costs a microsecond at batch 1). The input map is x * scale +
// shift per channel (affine), the quantile placement of `intervals` (placed_input), or the identity (neither).
// None where one_call_applies does not hold: the caller then takes the steps.
c10::optional<torch::Tensor> pointwise_forward(torch::Tensor x, c10::optional<torch::Tensor> scale,
                                               c10::optional<torch::Tensor> shift, torch::Tensor table,
                                               c10::optional<torch::Tensor> bias, std::vector<int64_t> step,
                                               c10::optional<torch::Tensor> intervals, double v0) {
    if (!one_call_applies(x, table, {&scale, &shift, &bias, &intervals})) return c10::nullopt;
    const bool rows = x.dim() == 2;
    TORCH_CHECK(table.size(1) == table.size(2) && step.size() == 2 && step[0] > 0 && step[1] > 0 &&
                    (!rows || (step[0] == 1 && step[1] == 1)),
                "expected x [N, 2P, H, W] (or [N, 2P] at step 1), table [P, G+1, G+1, out] and a positive 2-element "
                "step");
    const bool placed = intervals.has_value() && intervals->defined();
    const bool affine = scale.has_value() && scale->defined();
    TORCH_CHECK(!(placed && affine), "give the affine map (scale, shift) or the placement (intervals), not both");
    const int dt = table_dtype(table);
    table = table.contiguous();
    const int64_t n_out = table.size(3), channels = x.size(1);
    const bool channels_last = !rows && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
    if (!rows && (step[0] != 1 || step[1] != 1)) x = x.slice(2, 0, x.size(2), step[0]).slice(3, 0, x.size(3), step[1]);
    if (placed) x = placed_input(x, channels_last, *intervals, v0);
    std::vector<float> identity;  // scale 1 and shift 0 per channel: fma(u, 1, 0) is u
    if (!affine) {
        identity.assign(2 * channels, 0.0f);
        std::fill_n(identity.begin(), channels, 1.0f);
    }
    const torch::Tensor scales = affine ? channel_vector(scale, channels, "scale", false) : torch::Tensor();
    const torch::Tensor shifts = affine ? channel_vector(shift, channels, "shift", false) : torch::Tensor();
    const float* scale_of = affine ? scales.data_ptr<float>() : identity.data();
    const float* shift_of = affine ? shifts.data_ptr<float>() : identity.data() + channels;
    const torch::Tensor b = channel_vector(bias, n_out, "bias", true);
    torch::Tensor y;
    lmkan_pointwise_geometry g{};
    if (rows) {
        y = fresh_output({x.size(0), n_out});
        g = {x.size(0), 1, 1, {x.stride(0), x.stride(1), 0, 0}, {n_out, 1, 0, 0}};
    } else {
        const std::vector<int64_t> sizes{x.size(0), n_out, x.size(2), x.size(3)};
        y = fresh_output(sizes, channels_last ? c10::get_channels_last_strides_2d(sizes) : row_major_strides(sizes));
        g = {x.size(0), x.size(2), x.size(3), {x.stride(0), x.stride(1), x.stride(2), x.stride(3)},
             {y.stride(0), y.stride(1), y.stride(2), y.stride(3)}};
    }
    const int threads = at::get_num_threads();
    {
        pybind11::gil_scoped_release no_gil;
        check_rc(lmkan_cpu_pointwise_forward(x.data_ptr<float>(), scale_of, shift_of,
                                             table.data_ptr(), dt, b.defined() ? b.data_ptr<float>() : nullptr,
                                             y.data_ptr<float>(), &g, table.size(0), table.size(1) - 1, n_out,
                                             threads));
    }
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "lmKAN native CPU kernels (C++/OpenMP)";
    m.def("forward", &forward, "y = lookup(x [B, 2P], table [P, G+1, G+1, N_out]); table float32, float16 or bfloat16");
    m.def("backward", &backward, "(grad_x, grad_table); empty tensors for the gradients not needed");
    m.def("conv2d_forward", &conv2d_forward, "direct lmKAN convolution of a padded NCHW input (no patches)");
    m.def("pointwise_forward", &pointwise_forward, pybind11::arg("x"), pybind11::arg("scale"), pybind11::arg("shift"),
          pybind11::arg("table"), pybind11::arg("bias"), pybind11::arg("step"),
          pybind11::arg("intervals") = pybind11::none(), pybind11::arg("v0") = 0.0,
          "1x1 one-group convolution with the input map (affine, quantile placement or none) and the bias folded in "
          "(inference); None where these inputs do not suit it (device, dtype, shape, a gradient to record)");
    m.def("conv2d_backward", &conv2d_backward, "(grad_x, grad_table) of conv2d_forward; empty when not needed");
    m.def("bilinear_gram_add", &bilinear_gram_add, "gram += D^T D of bilinear design rows (upper blocks; mirror)");
    m.def("place", &place, "(u, du/dx) of the quantile input placement of x [outer, F, inner]");
    m.def("output_pool_bytes", []() { return lmkan_pool::pool().held(); }, "bytes of freed outputs kept for reuse");
    m.def("huge_page_copy", &lmkan_pool::huge_page_copy, "contiguous copy of a CPU tensor, from 4 MB on 2 MB pages");
    m.def("release_output_pool", []() { lmkan_pool::pool().release(); }, "free the kept blocks of freed outputs");
    m.def("isa", []() { return std::string(lmkan_cpu_isa()); }, "the active instruction-set path");
    m.def("select_isa", &select_isa, "force 'avx512', 'avx2', 'generic' or 'auto'");
}
