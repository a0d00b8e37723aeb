/*
 * Element-wise steps of a decoder layer, each one pass instead of several PyTorch ops (x86-64, AVX2 + FMA):
 *   rotary:   x = x * cos + rotate_half(x) * sin, in place, for every head of every token (HF layout:
 *             the first and second halves of a head rotate together; cos/sin rows repeat their halves);
 *   silu_mul: out = silu(gate) * up for gate_up = [gate | up] rows;
 *   rms_norm: out = x / sqrt(mean(x^2) + eps) * weight per row (PyTorch's CPU rms_norm is ~8 ops).
 * Requires float32 rows with contiguous heads and half a head (or the intermediate size) a multiple of 8.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>

#include "simd.h"

void opslab_rotary(float *x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t row_stride,
                   const float *cos, const float *sin) {
    int64_t half = head_dim / 2;
    #pragma omp parallel for schedule(static) if (tokens * heads >= 64)
    for (int64_t i = 0; i < tokens * heads; i++) {
        int64_t t = i / heads;
        float *first = x + t * row_stride + (i % heads) * head_dim, *second = first + half;
        const float *c = cos + t * head_dim, *s = sin + t * head_dim;
        for (int64_t d = 0; d < half; d += 8) {
            __m256 x1 = _mm256_loadu_ps(first + d), x2 = _mm256_loadu_ps(second + d);
            __m256 cv = _mm256_loadu_ps(c + d), sv = _mm256_loadu_ps(s + d);
            _mm256_storeu_ps(first + d, _mm256_fmsub_ps(x1, cv, _mm256_mul_ps(x2, sv)));
            _mm256_storeu_ps(second + d, _mm256_fmadd_ps(x2, cv, _mm256_mul_ps(x1, sv)));
        }
    }
}

void opslab_silu_mul(const float *gate_up, int64_t tokens, int64_t size, float *out) {
    #pragma omp parallel for schedule(static) if (tokens >= 4)
    for (int64_t t = 0; t < tokens; t++) {
        const float *gate = gate_up + t * 2 * size, *up = gate + size;
        for (int64_t i = 0; i < size; i += 8) {
            __m256 g = _mm256_loadu_ps(gate + i);
            __m256 sigmoid = _mm256_div_ps(_mm256_set1_ps(1.0f),
                                           _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
            _mm256_storeu_ps(out + t * size + i, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid), _mm256_loadu_ps(up + i)));
        }
    }
}

void opslab_rms_norm(const float *x, int64_t tokens, int64_t size, const float *weight, float eps, float *out) {
    #pragma omp parallel for schedule(static) if (tokens >= 4)
    for (int64_t t = 0; t < tokens; t++) {
        const float *row = x + t * size;
        __m256 squares = _mm256_setzero_ps();
        for (int64_t i = 0; i < size; i += 8) {
            __m256 v = _mm256_loadu_ps(row + i);
            squares = _mm256_fmadd_ps(v, v, squares);
        }
        __m256 inv_rms = _mm256_set1_ps(1.0f / sqrtf(hsum(squares) / (float)size + eps));
        for (int64_t i = 0; i < size; i += 8)
            _mm256_storeu_ps(out + t * size + i,
                             _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(row + i), inv_rms), _mm256_loadu_ps(weight + i)));
    }
}
