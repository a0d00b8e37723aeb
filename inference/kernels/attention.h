/*
 * Decode attention for one (sequence, kv head) pair over the paged KV cache, used by
 * opslab_paged_decode_attention (attention_avx2.c) and the fused decoder (decoder_avx2.c).
 *
 *   out[h] = softmax(scale * q[h] . K[:, g]) @ V[:, g]    for the query heads h that share kv head g
 *
 * Caches are [num_blocks, block_size, num_kv_heads, head_dim] float32 (token t of the sequence lives in block
 * table[t / block_size] at offset t % block_size); keys and values are read in place, block by block, and
 * each is read once for all the query heads of its group. Requires head_dim % 8 == 0.
 */
#ifndef OPSLAB_ATTENTION_H
#define OPSLAB_ATTENTION_H

#include <math.h>
#include <stdint.h>

#include "simd.h"

#define MAX_GROUP 8

/* scores[j, t] = scale * q_j . k_t for the `group` query heads of one (sequence, kv head) pair; the keys
 * are walked block by block (no division per token). */
static void scores_of(const float *const *queries, int group, const float *key_cache, const int64_t *table,
                      int64_t context, int64_t block_size, int64_t token_stride, int64_t head_dim, float scale,
                      float *scores, int64_t scores_stride) {
    for (int64_t t0 = 0; t0 < context; t0 += block_size) {
        const float *key = key_cache + table[t0 / block_size] * block_size * token_stride;
        int64_t count = context - t0 < block_size ? context - t0 : block_size;
        for (int64_t i = 0; i < count; i++, key += token_stride)
            for (int j = 0; j < group; j++) {
                __m256 acc = _mm256_setzero_ps();
                for (int64_t d = 0; d < head_dim; d += 8)
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(queries[j] + d), _mm256_loadu_ps(key + d), acc);
                scores[j * scores_stride + t0 + i] = scale * hsum(acc);
            }
    }
}

/* In place: scores -> exp(scores - max); returns 1 / sum. */
static float softmax_numerators(float *scores, int64_t context) {
    float max = -INFINITY;
    for (int64_t t = 0; t < context; t++) max = scores[t] > max ? scores[t] : max;
    __m256 vmax = _mm256_set1_ps(max), vsum = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= context; t += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + t), vmax));
        _mm256_storeu_ps(scores + t, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum(vsum);
    for (; t < context; t++) sum += (scores[t] = expf(scores[t] - max));
    return 1.0f / sum;
}

/* out = (sum_t weights[t] * v_t) * inv_sum, for one query head. */
static void weighted_values(const float *weights, float inv_sum, const float *value_cache, const int64_t *table,
                            int64_t context, int64_t block_size, int64_t token_stride, int64_t head_dim,
                            float *out) {
    for (int64_t d0 = 0; d0 < head_dim; d0 += 64) {  /* 8 accumulators of 8 lanes at a time */
        int64_t width = head_dim - d0 < 64 ? head_dim - d0 : 64;
        __m256 acc[8];
        for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t t0 = 0; t0 < context; t0 += block_size) {
            const float *value = value_cache + table[t0 / block_size] * block_size * token_stride;
            int64_t count = context - t0 < block_size ? context - t0 : block_size;
            for (int64_t i = 0; i < count; i++, value += token_stride) {
                __m256 w = _mm256_set1_ps(weights[t0 + i]);
                for (int v = 0; v < width / 8; v++)
                    acc[v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(value + d0 + 8 * v), acc[v]);
            }
        }
        __m256 scale = _mm256_set1_ps(inv_sum);
        for (int i = 0; i < width / 8; i++) _mm256_storeu_ps(out + d0 + 8 * i, _mm256_mul_ps(acc[i], scale));
    }
}

/* Attention of the `group` query heads at q (contiguous, head_dim each) that share kv head g, over the first
 * `context` tokens of one sequence; writes the heads' outputs contiguously at out. `scores`: group *
 * scores_stride floats of scratch (scores_stride >= context). */
static inline void attend_kv_head(const float *q, int group, int64_t g, int64_t num_kv_heads, int64_t head_dim,
                                  const float *key_cache, const float *value_cache, int64_t block_size,
                                  const int64_t *table, int64_t context, float scale, float *scores,
                                  int64_t scores_stride, float *out) {
    int64_t token_stride = num_kv_heads * head_dim;
    const float *queries[MAX_GROUP];
    for (int j = 0; j < group; j++) queries[j] = q + j * head_dim;
    scores_of(queries, group, key_cache + g * head_dim, table, context, block_size, token_stride, head_dim, scale,
              scores, scores_stride);
    for (int j = 0; j < group; j++) {
        float *weights = scores + j * scores_stride;
        float inv_sum = softmax_numerators(weights, context);
        weighted_values(weights, inv_sum, value_cache + g * head_dim, table, context, block_size, token_stride,
                        head_dim, out + j * head_dim);
    }
}

#endif
