/*
 * opslab_linear: y[M, N] = x[M, K] @ W[N, K]^T (+ bias) for small M, W float32, int8 or int4, or W8A8
 * (see linear.h for the formats and the work split). Built and loaded by inference/kernels/__init__.py.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "linear.h"

#define DEFINE_RUN(name, FORMAT)                                                                          \
    static void name(const float *x, int64_t M, int64_t K, int64_t N, const weights_t *w,                \
                     const float *bias, float *y, float *scratch, const act8_t *xq) {                     \
        _Pragma("omp parallel")                                                                           \
        run(x, M, K, N, w, FORMAT, bias, y,                                                               \
            scratch ? scratch + (int64_t)omp_get_thread_num() * ROWS * K : NULL, xq, 0);                  \
    }
DEFINE_RUN(run_f32, F32)
DEFINE_RUN(run_int8, INT8)
DEFINE_RUN(run_int4, INT4)
DEFINE_RUN(run_w8a8, W8A8)

/* ---- entry point ------------------------------------------------------------------------------------ */

/* Requires N % ROWS == 0, K % 8 == 0 (K % 32 == 0 for INT4, grouped INT8 and W8A8), a group size that is a
 * multiple of 32 and W8A8 weights with a scale per row; the caller checks. Returns 0, or -1 when an
 * allocation fails. */
int opslab_linear(const float *x, int64_t M, int64_t K, int64_t N, int format, const void *weight,
                  int64_t row_bytes, const float *scales, const float *mins, int64_t groups, int64_t group_size,
                  const float *bias, float *y) {
    weights_t w = {weight, row_bytes, scales, mins, groups, group_size, NULL};
    float *scratch = NULL, *xsum = NULL;
    act8_t xq = {NULL, NULL, NULL, NULL};
    if (format == W8A8 || bf16_tiles(format, &w)) {  /* one allocation: row scales, multipliers, values, magnitudes */
        if (!(xq.row_scales = malloc((size_t)M * (sizeof(float) + K / QBLOCK * sizeof(int16_t) + 2 * K)))) return -1;
        xq.multipliers = (int16_t *)(xq.row_scales + M);
        xq.values = (int8_t *)(xq.multipliers + M * (K / QBLOCK));
        xq.magnitudes = xq.values + M * K;
    }
    if ((M >= 2 && format != F32 && format != W8A8) || bf16_tiles(format, &w)) {
        size_t bytes = ((size_t)omp_get_max_threads() * ROWS * K * sizeof(float) + 63) / 64 * 64;
        if (!(scratch = aligned_alloc(64, bytes))) return -1;
    }
    if (M == 1 && format == INT4) {  /* the min term: sum of x over each group */
        if (!(xsum = malloc((size_t)groups * sizeof(float)))) return -1;
        group_sums(x, K, groups, group_size, xsum);
        w.xsum = xsum;
    }
    if (format == F32) run_f32(x, M, K, N, &w, bias, y, scratch, NULL);
    else if (format == INT8) run_int8(x, M, K, N, &w, bias, y, scratch, &xq);
    else if (format == INT4) run_int4(x, M, K, N, &w, bias, y, scratch, NULL);
    else run_w8a8(x, M, K, N, &w, bias, y, NULL, &xq);
    free(xq.row_scales);
    free(scratch);
    free(xsum);
    return 0;
}
