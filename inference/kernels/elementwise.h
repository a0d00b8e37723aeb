/*
 * Element-wise steps of a decoder layer on one row / head (x86-64, AVX2 + FMA), shared by the standalone
 * kernels (elementwise_avx2.c) and the fused decoder (decoder_avx2.c):
 *   rotate_head:  x = x * cos + rotate_half(x) * sin, in place (HF layout: the two halves of a head rotate
 *                 together; cos/sin hold the half-size table);
 *   silu_mul8:    silu(gate) * up for 8 lanes;
 *   rms_norm_row: out = x / sqrt(mean(x^2) + eps) * weight.
 * Sizes must be multiples of 8 (half a head included).
 */
#ifndef OPSLAB_ELEMENTWISE_H
#define OPSLAB_ELEMENTWISE_H

#include <math.h>
#include <stdint.h>

#include "simd.h"

static inline void rotate_head(float *head, int64_t half, const float *cos, const float *sin) {
    float *second = head + half;
    for (int64_t d = 0; d < half; d += 8) {
        __m256 x1 = _mm256_loadu_ps(head + d), x2 = _mm256_loadu_ps(second + d);
        __m256 cv = _mm256_loadu_ps(cos + d), sv = _mm256_loadu_ps(sin + d);
        _mm256_storeu_ps(head + d, _mm256_fmsub_ps(x1, cv, _mm256_mul_ps(x2, sv)));
        _mm256_storeu_ps(second + d, _mm256_fmadd_ps(x2, cv, _mm256_mul_ps(x1, sv)));
    }
}

static inline __m256 silu_mul8(__m256 gate, __m256 up) {
    __m256 one = _mm256_set1_ps(1.0f);
    __m256 sigmoid = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), gate))));
    return _mm256_mul_ps(_mm256_mul_ps(gate, sigmoid), up);
}

static inline void rms_norm_row(const float *row, int64_t size, const float *weight, float eps, float *out) {
    __m256 squares = _mm256_setzero_ps();
    for (int64_t i = 0; i < size; i += 8) {
        __m256 v = _mm256_loadu_ps(row + i);
        squares = _mm256_fmadd_ps(v, v, squares);
    }
    __m256 inv_rms = _mm256_set1_ps(1.0f / sqrtf(hsum(squares) / (float)size + eps));
    for (int64_t i = 0; i < size; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(row + i), inv_rms),
                                                _mm256_loadu_ps(weight + i)));
}

#endif
