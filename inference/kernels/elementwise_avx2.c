/*
 * Element-wise steps of a decoder layer, each one pass instead of several PyTorch ops (x86-64, AVX2 + FMA;
 * the per-row math is in elementwise.h):
 *   rotary:   x = x * cos + rotate_half(x) * sin, in place, for every head of every token (cos/sin rows
 *             repeat their halves, as PyTorch's tables do);
 *   silu_mul: out = silu(gate) * up for gate_up = [gate | up] rows;
 *   rms_norm: out = x / sqrt(mean(x^2) + eps) * weight per row (PyTorch's CPU rms_norm is ~8 ops).
 * Requires float32 rows with contiguous heads and half a head (or the intermediate size) a multiple of 8.
 */
#include <omp.h>
#include <stdint.h>

#include "elementwise.h"

void opslab_rotary(float *x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t row_stride,
                   const float *cos, const float *sin) {
    #pragma omp parallel for schedule(static) if (tokens * heads >= 64)
    for (int64_t i = 0; i < tokens * heads; i++) {
        int64_t t = i / heads;
        rotate_head(x + t * row_stride + (i % heads) * head_dim, head_dim / 2, cos + t * head_dim, sin + t * head_dim);
    }
}

void opslab_silu_mul(const float *gate_up, int64_t tokens, int64_t size, float *out) {
    #pragma omp parallel for schedule(static) if (tokens >= 4)
    for (int64_t t = 0; t < tokens; t++) {
        const float *gate = gate_up + t * 2 * size, *up = gate + size;
        for (int64_t i = 0; i < size; i += 8)
            _mm256_storeu_ps(out + t * size + i, silu_mul8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    }
}

void opslab_rms_norm(const float *x, int64_t tokens, int64_t size, const float *weight, float eps, float *out) {
    #pragma omp parallel for schedule(static) if (tokens >= 4)
    for (int64_t t = 0; t < tokens; t++) rms_norm_row(x + t * size, size, weight, eps, out + t * size);
}
