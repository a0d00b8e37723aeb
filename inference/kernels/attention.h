/*
 * Decode attention for one (sequence, kv head) pair over the paged KV cache, used by
 * opslab_paged_decode_attention (attention_avx2.c) and the fused decoder (decoder_avx2.c).
 *
 *   out[h] = softmax(scale * q[h] . K[:, g]) @ V[:, g]    for the query heads h that share kv head g
 *
 * Caches are [num_blocks, block_size, num_kv_heads, head_dim] float32 (token t of the sequence lives in block
 * table[t / block_size] at offset t % block_size); keys and values are read in place, block by block (the
 * next block prefetched: blocks sit anywhere, so the hardware prefetcher cannot follow), and each key and
 * value vector is loaded once for up to HEADS_AT_ONCE query heads of its group, whose FMA chains run side by
 * side. Requires head_dim % 8 == 0 (values go 32 lanes at a time when head_dim % 32 == 0).
 */
#ifndef OPSLAB_ATTENTION_H
#define OPSLAB_ATTENTION_H

#include <math.h>
#include <stdint.h>

#include "simd.h"

#define MAX_GROUP 8

/* Ask for `floats` floats of each of the `count` token rows (token_stride apart) of the next block before they
 * are needed: blocks sit anywhere in the cache, so the hardware prefetcher cannot run ahead across them. */
static inline void prefetch_block(const float *rows, int64_t count, int64_t token_stride, int64_t floats) {
    for (int64_t i = 0; i < count; i++, rows += token_stride)
        for (int64_t d = 0; d < floats; d += 16) _mm_prefetch((const char *)(rows + d), _MM_HINT_T0);
}

#define HEADS_AT_ONCE 3  /* query heads scored together: 3 heads x 4 keys = 12 accumulators */

/* scores[j, i] = scale * q_j . k_i for `heads` (<= HEADS_AT_ONCE) query heads and the four keys at key,
 * key + token_stride, ...: each key vector is loaded once for all the heads, and the 4 * heads FMA chains
 * are independent. Called with a literal `heads`, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void scores4(const float *const *queries, int heads, const float *key,
                                                         int64_t token_stride, int64_t head_dim, __m128 scale,
                                                         float *scores, int64_t scores_stride) {
    __m256 acc[HEADS_AT_ONCE][4];
    for (int j = 0; j < heads; j++)
        for (int i = 0; i < 4; i++) acc[j][i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < head_dim; d += 8) {
        __m256 k[4];
        for (int i = 0; i < 4; i++) k[i] = _mm256_loadu_ps(key + i * token_stride + d);
        for (int j = 0; j < heads; j++) {
            __m256 qv = _mm256_loadu_ps(queries[j] + d);
            for (int i = 0; i < 4; i++) acc[j][i] = _mm256_fmadd_ps(qv, k[i], acc[j][i]);
        }
    }
    for (int j = 0; j < heads; j++)
        _mm_storeu_ps(scores + j * scores_stride, _mm_mul_ps(scale, hsum4(acc[j][0], acc[j][1], acc[j][2], acc[j][3])));
}

/* scores[j, t] = scale * q_j . k_t for the `group` query heads of one (sequence, kv head) pair; the keys
 * are walked block by block (no division per token), four at a time, the next block prefetched. */
static void scores_of(const float *const *queries, int group, const float *key_cache, const int64_t *table,
                      int64_t context, int64_t block_size, int64_t token_stride, int64_t head_dim, float scale,
                      float *scores, int64_t scores_stride) {
    __m128 vscale = _mm_set1_ps(scale);
    for (int64_t t0 = 0; t0 < context; t0 += block_size) {
        const float *key = key_cache + table[t0 / block_size] * block_size * token_stride;
        int64_t count = context - t0 < block_size ? context - t0 : block_size, next = t0 + block_size;
        if (next < context)
            prefetch_block(key_cache + table[next / block_size] * block_size * token_stride,
                           context - next < block_size ? context - next : block_size, token_stride, head_dim);
        int64_t i = 0;
        for (; i + 4 <= count; i += 4, key += 4 * token_stride)
            for (int j = 0; j < group; j += HEADS_AT_ONCE) {
                float *out = scores + j * scores_stride + t0 + i;
                switch (group - j) {
                case 1: scores4(queries + j, 1, key, token_stride, head_dim, vscale, out, scores_stride); break;
                case 2: scores4(queries + j, 2, key, token_stride, head_dim, vscale, out, scores_stride); break;
                default: scores4(queries + j, 3, key, token_stride, head_dim, vscale, out, scores_stride);
                }
            }
        for (; i < count; i++, key += token_stride)
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
            int64_t count = context - t0 < block_size ? context - t0 : block_size, next = t0 + block_size;
            if (next < context)
                prefetch_block(value_cache + table[next / block_size] * block_size * token_stride + d0,
                               context - next < block_size ? context - next : block_size, token_stride, width);
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

/* The same for `heads` (<= HEADS_AT_ONCE) query heads at once and the 32 values from d0 (head_dim % 32 == 0):
 * each value vector is loaded once for all the heads (3 heads x 4 vectors = 12 accumulators). Called with a
 * literal `heads`. */
static inline __attribute__((always_inline)) void weighted_values32(const float *weights, int64_t weights_stride,
                                                                   const float *inv_sums, int heads,
                                                                   const float *value_cache, const int64_t *table,
                                                                   int64_t context, int64_t block_size,
                                                                   int64_t token_stride, int64_t head_dim,
                                                                   int64_t d0, float *out) {
    __m256 acc[HEADS_AT_ONCE][4];
    for (int j = 0; j < heads; j++)
        for (int v = 0; v < 4; v++) acc[j][v] = _mm256_setzero_ps();
    for (int64_t t0 = 0; t0 < context; t0 += block_size) {
        const float *value = value_cache + table[t0 / block_size] * block_size * token_stride + d0;
        int64_t count = context - t0 < block_size ? context - t0 : block_size, next = t0 + block_size;
        if (next < context)
            prefetch_block(value_cache + table[next / block_size] * block_size * token_stride + d0,
                           context - next < block_size ? context - next : block_size, token_stride, 32);
        for (int64_t i = 0; i < count; i++, value += token_stride) {
            __m256 v[4];
            for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(value + 8 * k);
            for (int j = 0; j < heads; j++) {
                __m256 w = _mm256_broadcast_ss(weights + j * weights_stride + t0 + i);
                for (int k = 0; k < 4; k++) acc[j][k] = _mm256_fmadd_ps(w, v[k], acc[j][k]);
            }
        }
    }
    for (int j = 0; j < heads; j++) {
        __m256 scale = _mm256_set1_ps(inv_sums[j]);
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(out + j * head_dim + d0 + 8 * k, _mm256_mul_ps(acc[j][k], scale));
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
    const float *queries[MAX_GROUP] = {0};
    for (int j = 0; j < group; j++) queries[j] = q + j * head_dim;
    scores_of(queries, group, key_cache + g * head_dim, table, context, block_size, token_stride, head_dim, scale,
              scores, scores_stride);
    float inv_sums[MAX_GROUP];
    for (int j = 0; j < group; j++) inv_sums[j] = softmax_numerators(scores + j * scores_stride, context);
    value_cache += g * head_dim;
    if (head_dim % 32) {
        for (int j = 0; j < group; j++)
            weighted_values(scores + j * scores_stride, inv_sums[j], value_cache, table, context, block_size,
                            token_stride, head_dim, out + j * head_dim);
        return;
    }
    for (int j = 0; j < group; j += HEADS_AT_ONCE)
        for (int64_t d0 = 0; d0 < head_dim; d0 += 32) {
            const float *weights = scores + j * scores_stride;
            float *outs = out + j * head_dim;
            switch (group - j) {
            case 1: weighted_values32(weights, scores_stride, inv_sums + j, 1, value_cache, table, context, block_size,
                                      token_stride, head_dim, d0, outs); break;
            case 2: weighted_values32(weights, scores_stride, inv_sums + j, 2, value_cache, table, context, block_size,
                                      token_stride, head_dim, d0, outs); break;
            default: weighted_values32(weights, scores_stride, inv_sums + j, 3, value_cache, table, context,
                                       block_size, token_stride, head_dim, d0, outs);
            }
        }
}

#endif
