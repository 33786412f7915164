// Normal matrix D^T D of the bilinear design rows of an lmKAN layer (passes/fit.py, closed-form table fitting),
// accumulated from the 4 non-zeros per (row, pair) instead of dense rows: rows x P^2 / 2 x 16 multiply-adds
// instead of rows x (P (G+1)^2)^2, each (p, q) block of 81 x 81 doubles at G = 8 staying in L2.
#pragma once

#include <cstdint>

namespace lmkan_gram {

// Adds, for pairs p in [p_begin, p_end) and q >= p, block (p, q) of D^T D to gram ([P n^2, P n^2], row-major).
// corner[p * rows + r]: node index i * n + j of pair p's lower corner in row r; weight[(p * rows + r) * 4 + a]: its
// weights for the corners (i, j), (i + 1, j), (i, j + 1), (i + 1, j + 1). Blocks of different p are disjoint rows.
inline void add_upper_blocks(const int64_t* corner, const double* weight, double* gram, int64_t rows, int64_t pairs,
                             int64_t n, int64_t p_begin, int64_t p_end) {
    const int64_t nn = n * n, width = pairs * nn;
    const int64_t offset[4] = {0, n, 1, n + 1};
    for (int64_t p = p_begin; p < p_end; ++p)
        for (int64_t q = p; q < pairs; ++q) {
            double* block = gram + p * nn * width + q * nn;
            const int64_t *cp = corner + p * rows, *cq = corner + q * rows;
            const double *wp = weight + p * rows * 4, *wq = weight + q * rows * 4;
            for (int64_t r = 0; r < rows; ++r) {
                const double* a = wp + r * 4;
                const double* b = wq + r * 4;
                for (int k = 0; k < 4; ++k) {
                    double* line = block + (cp[r] + offset[k]) * width + cq[r];
                    const double s = a[k];
                    line[0] += s * b[0];
                    line[n] += s * b[1];
                    line[1] += s * b[2];
                    line[n + 1] += s * b[3];
                }
            }
        }
}

// Copies the transpose of every block (p, q), q > p, into block (q, p).
inline void mirror_blocks(double* gram, int64_t pairs, int64_t n, int64_t p_begin, int64_t p_end) {
    const int64_t nn = n * n, width = pairs * nn;
    for (int64_t p = p_begin; p < p_end; ++p)
        for (int64_t q = p + 1; q < pairs; ++q)
            for (int64_t i = 0; i < nn; ++i)
                for (int64_t j = 0; j < nn; ++j)
                    gram[(q * nn + j) * width + p * nn + i] = gram[(p * nn + i) * width + q * nn + j];
}

}  // namespace lmkan_gram
