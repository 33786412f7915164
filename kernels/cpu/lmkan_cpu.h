/* Native CPU kernels of the lmKAN 2-D lookup, written against raw pointers (no torch / onnxruntime headers).
 *
 * Layouts (C-contiguous; all float32 except a table given to the *_typed functions as float16 or bfloat16):
 *   x          [B, 2P]                  input; pair p uses x[b, 2p] (first table axis) and x[b, 2p + 1] (second)
 *   table      [P, G+1, G+1, N_out]     canonical lmKAN table; 3 <= G <= 256
 *   y          [B, N_out]               y[b, o] = sum_p f_{o,p}(x[b, 2p], x[b, 2p + 1])
 *   grad_out   [B, N_out], grad_x [B, 2P], grad_table [P, G+1, G+1, N_out]
 *
 * Grid: Laplace-CDF nodes computed in double and cast to float, cell = clamp(floor(sigma(x) * G), 0, G - 1),
 * t = (x - node[cell]) * inv_len[cell] unclamped (linear extrapolation outside the grid). Forward evaluations with
 * both t in [-2, 3] (inside the grid or at most 2 cells beyond its edge) use the 4-weight form, others the
 * cancellation-free difference form.
 *
 * Threading: OpenMP inside (when compiled with it); num_threads <= 0 means the OpenMP default. Results are bitwise
 * identical whatever the thread count (no atomics; every output element has a single owner and a fixed order).
 * Every function returns LMKAN_CPU_OK or an error code; lmkan_cpu_error_string() describes it.
 */
#ifndef LMKAN_CPU_H_
#define LMKAN_CPU_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    LMKAN_CPU_OK = 0,
    LMKAN_CPU_EINVAL = 1,  /* bad sizes (G outside [3, 256], negative sizes) or a required pointer is NULL */
    LMKAN_CPU_ENOMEM = 2   /* the scratch buffer could not be allocated */
};

/* Storage dtype of a table passed as void*: float32, IEEE float16 or bfloat16 (read into float32 arithmetic). */
enum { LMKAN_CPU_FLOAT32 = 0, LMKAN_CPU_FLOAT16 = 1, LMKAN_CPU_BFLOAT16 = 2 };

/* y = lookup(x, table). */
int lmkan_cpu_forward(const float* x, const float* table, float* y, int64_t batch, int64_t pairs, int64_t grids,
                      int64_t n_out, int num_threads);

/* Gradients of sum(grad_out * y): grad_x and/or grad_table (pass NULL to skip one). Both are overwritten. */
int lmkan_cpu_backward(const float* grad_out, const float* x, const float* table, float* grad_x, float* grad_table,
                       int64_t batch, int64_t pairs, int64_t grids, int64_t n_out, int num_threads);

/* The same with a table stored as `table_dtype` (LMKAN_CPU_FLOAT32/FLOAT16/BFLOAT16); x, y, grad_out and grad_x
 * stay float32 and grad_table is float32 (accumulated in float32; the caller rounds it to the table's dtype). */
int lmkan_cpu_forward_typed(const float* x, const void* table, int table_dtype, float* y, int64_t batch,
                            int64_t pairs, int64_t grids, int64_t n_out, int num_threads);
int lmkan_cpu_backward_typed(const float* grad_out, const float* x, const void* table, int table_dtype,
                             float* grad_x, float* grad_table, int64_t batch, int64_t pairs, int64_t grids,
                             int64_t n_out, int num_threads);

/* Geometry of a direct convolution: the padded input [batch, channels, height, width] with its element strides
 * (NCHW- or NHWC-contiguous), the kernel, step (stride), dilation, groups and output channels. */
typedef struct {
    int64_t batch, channels, height, width, stride_n, stride_c, stride_h, stride_w;
    int64_t groups, kernel_h, kernel_w, step_h, step_w, dilation_h, dilation_w, out_channels;
} lmkan_conv_geometry;

/* Direct lmKAN convolution (forward): y [batch, out_h, out_w, out_channels] (channels last), out_h = (height -
 * dilation_h (kernel_h - 1) - 1) / step_h + 1 (same for w), with table [groups, P, G+1, G+1, out_channels / groups]
 * stored as table_dtype, P = ceil(K / 2) pairs of adjacent features of the (c, ky, kx)-ordered patch of K =
 * channels / groups * kernel_h * kernel_w features (an odd K pairs its last feature with a constant 0). */
int lmkan_cpu_conv2d_forward(const float* x, const void* table, int table_dtype, float* y,
                             const lmkan_conv_geometry* geometry, int64_t grids, int num_threads);

/* Gradients of sum(grad_y * y) for lmkan_cpu_conv2d_forward: grad_y [batch, out_h, out_w, out_channels]
 * (channels last); grad_x (x's size and strides) and/or grad_table (float32, the table's shape); each overwritten
 * unless NULL. */
int lmkan_cpu_conv2d_backward(const float* grad_y, const float* x, const void* table, int table_dtype, float* grad_x,
                              float* grad_table, const lmkan_conv_geometry* geometry, int64_t grids, int num_threads);

/* A 1x1 convolution's input x [batch, 2 pairs, height, width] and output y [batch, n_out, height, width], each by
 * its element strides (n, c, h, w): NCHW, channels-last or any strided view (e.g. a stride-2 subsample). */
typedef struct {
    int64_t batch, height, width, x_stride[4], y_stride[4];
} lmkan_pointwise_geometry;

/* One-group 1x1 lmKAN convolution with the input's per-channel affine map and the bias folded in:
 * y[i, o, r, q] = bias[o] + lookup(fma(x[i, c, r, q], scale[c], shift[c]) over c) (bias may be NULL): the values
 * of lmkan_cpu_forward_typed over the pixels' normalised rows, without the transposed copies. */
int lmkan_cpu_pointwise_forward(const float* x, const float* scale, const float* shift, const void* table,
                                int table_dtype, const float* bias, float* y, const lmkan_pointwise_geometry* geometry,
                                int64_t pairs, int64_t grids, int64_t n_out, int num_threads);

/* Name of the active instruction-set path: "avx512", "avx2" or "generic". */
const char* lmkan_cpu_isa(void);

/* Force an instruction-set path ("avx512", "avx2", "generic" or "auto"); LMKAN_CPU_EINVAL if unknown/unsupported. */
int lmkan_cpu_select_isa(const char* name);

/* A static description of an error code. */
const char* lmkan_cpu_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* LMKAN_CPU_H_ */
