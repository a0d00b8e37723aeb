/*
 * Decode attention for one (sequence, kv head) pair over the paged KV cache, used by
 * opslab_paged_decode_attention (attention_avx2.c) and the fused decoder (decoder_avx2.c).
 *
 *   out[h] = softmax(scale * q[h] . K[:, g]) @ V[:, g]    for the query heads h that share kv head g
 *
 * Caches are [num_blocks, block_size, num_kv_heads, head_dim], float32 or float16 (`half`: converted with F16C as
 * they are read; half the bytes, and decode attention is bound by reading them), token t of the sequence in
 * block table[t / block_size] at offset t % block_size; keys and values are read in place, block by block (the
 * next block prefetched: blocks sit anywhere, so the hardware prefetcher cannot follow), and each key and
 * value vector is loaded once for up to HEADS_AT_ONCE query heads of its group, whose FMA chains run side by
 * side. Requires head_dim % 8 == 0 (values go 32 lanes at a time when head_dim % 32 == 0). Cache pointers are
 * `const void *` and positions in them counted in values; callers pass a literal `half`, so each cache type
 * gets its own code.
 */
#ifndef OPSLAB_ATTENTION_H
#define OPSLAB_ATTENTION_H

#include <math.h>
#include <stdint.h>

#include "simd.h"

#define MAX_GROUP 8

/* The cache value at `index` (counted in values) as an address. */
INLINE const void *kv_at(const void *cache, int64_t index, int half) {
    return half ? (const void *)((const uint16_t *)cache + index) : (const void *)((const float *)cache + index);
}

/* 8 cache values from `index` on, as floats. */
INLINE __m256 load_kv8(const void *cache, int64_t index, int half) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)cache + index)))
                : _mm256_loadu_ps((const float *)cache + index);
}

/* Ask for `values` values of each of the `count` token rows (token_stride apart) of the next block before they
 * are needed: blocks sit anywhere in the cache, so the hardware prefetcher cannot run ahead across them. */
INLINE void prefetch_block(const void *rows, int64_t count, int64_t token_stride, int64_t values, int half) {
    int64_t row_bytes = values << (half ? 1 : 2), stride_bytes = token_stride << (half ? 1 : 2);
    for (int64_t i = 0; i < count; i++, rows = (const char *)rows + stride_bytes)
        for (int64_t b = 0; b < row_bytes; b += 64) _mm_prefetch((const char *)rows + b, _MM_HINT_T0);
}

#define HEADS_AT_ONCE 3  /* query heads scored together: 3 heads x 4 keys = 12 accumulators */

/* scores[j, i] = scale * q_j . k_i for `heads` (<= HEADS_AT_ONCE) query heads and the four keys at key,
 * key + token_stride, ...: each key vector is loaded once for all the heads, and the 4 * heads FMA chains
 * are independent. Called with a literal `heads`, so the accumulators stay in registers. */
INLINE void scores4(const float *const *queries, int heads, const void *key, int64_t token_stride, int64_t head_dim,
                       __m128 scale, float *scores, int64_t scores_stride, int half) {
    __m256 acc[HEADS_AT_ONCE][4];
    for (int j = 0; j < heads; j++)
        for (int i = 0; i < 4; i++) acc[j][i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < head_dim; d += 8) {
        __m256 k[4];
        for (int i = 0; i < 4; i++) k[i] = load_kv8(key, i * token_stride + d, half);
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
INLINE void scores_of(const float *const *queries, int group, const void *key_cache, const int64_t *table,
                         int64_t context, int64_t block_size, int64_t token_stride, int64_t head_dim, float scale,
                         float *scores, int64_t scores_stride, int half) {
    __m128 vscale = _mm_set1_ps(scale);
    for (int64_t t0 = 0; t0 < context; t0 += block_size) {
        const void *key = kv_at(key_cache, table[t0 / block_size] * block_size * token_stride, half);
        int64_t count = context - t0 < block_size ? context - t0 : block_size, next = t0 + block_size;
        if (next < context)
            prefetch_block(kv_at(key_cache, table[next / block_size] * block_size * token_stride, half),
                           context - next < block_size ? context - next : block_size, token_stride, head_dim, half);
        int64_t i = 0;
        for (; i + 4 <= count; i += 4, key = kv_at(key, 4 * token_stride, half))
            for (int j = 0; j < group; j += HEADS_AT_ONCE) {
                float *out = scores + j * scores_stride + t0 + i;
                switch (group - j) {
                case 1: scores4(queries + j, 1, key, token_stride, head_dim, vscale, out, scores_stride, half); break;
                case 2: scores4(queries + j, 2, key, token_stride, head_dim, vscale, out, scores_stride, half); break;
                default: scores4(queries + j, 3, key, token_stride, head_dim, vscale, out, scores_stride, half);
                }
            }
        for (; i < count; i++, key = kv_at(key, token_stride, half))
            for (int j = 0; j < group; j++) {
                __m256 acc = _mm256_setzero_ps();
                for (int64_t d = 0; d < head_dim; d += 8)
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(queries[j] + d), load_kv8(key, d, half), acc);
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
INLINE void weighted_values(const float *weights, float inv_sum, const void *value_cache, const int64_t *table,
                               int64_t context, int64_t block_size, int64_t token_stride, int64_t head_dim,
                               float *out, int half) {
    for (int64_t d0 = 0; d0 < head_dim; d0 += 64) {  /* 8 accumulators of 8 lanes at a time */
        int64_t width = head_dim - d0 < 64 ? head_dim - d0 : 64;
        __m256 acc[8];
        for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t t0 = 0; t0 < context; t0 += block_size) {
            const void *value = kv_at(value_cache, table[t0 / block_size] * block_size * token_stride, half);
            int64_t count = context - t0 < block_size ? context - t0 : block_size, next = t0 + block_size;
            if (next < context)
                prefetch_block(kv_at(value_cache, table[next / block_size] * block_size * token_stride + d0, half),
                               context - next < block_size ? context - next : block_size, token_stride, width, half);
            for (int64_t i = 0; i < count; i++, value = kv_at(value, token_stride, half)) {
                __m256 w = _mm256_set1_ps(weights[t0 + i]);
                for (int v = 0; v < width / 8; v++)
                    acc[v] = _mm256_fmadd_ps(w, load_kv8(value, d0 + 8 * v, half), acc[v]);
            }
        }
        __m256 scale = _mm256_set1_ps(inv_sum);
        for (int i = 0; i < width / 8; i++) _mm256_storeu_ps(out + d0 + 8 * i, _mm256_mul_ps(acc[i], scale));
    }
}

/* The same for `heads` (<= HEADS_AT_ONCE) query heads at once and the 32 values from d0 (head_dim % 32 == 0):
 * each value vector is loaded once for all the heads (3 heads x 4 vectors = 12 accumulators). Called with a
 * literal `heads`. */
INLINE void weighted_values32(const float *weights, int64_t weights_stride, const float *inv_sums, int heads,
                                 const void *value_cache, const int64_t *table, int64_t context, int64_t block_size,
                                 int64_t token_stride, int64_t head_dim, int64_t d0, float *out, int half) {
    __m256 acc[HEADS_AT_ONCE][4];
    for (int j = 0; j < heads; j++)
        for (int v = 0; v < 4; v++) acc[j][v] = _mm256_setzero_ps();
    for (int64_t t0 = 0; t0 < context; t0 += block_size) {
        const void *value = kv_at(value_cache, table[t0 / block_size] * block_size * token_stride + d0, half);
        int64_t count = context - t0 < block_size ? context - t0 : block_size, next = t0 + block_size;
        if (next < context)
            prefetch_block(kv_at(value_cache, table[next / block_size] * block_size * token_stride + d0, half),
                           context - next < block_size ? context - next : block_size, token_stride, 32, half);
        for (int64_t i = 0; i < count; i++, value = kv_at(value, token_stride, half)) {
            __m256 v[4];
            for (int k = 0; k < 4; k++) v[k] = load_kv8(value, 8 * k, half);
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
INLINE void attend_kv_head_typed(const float *q, int group, int64_t g, int64_t num_kv_heads, int64_t head_dim,
                                const void *key_cache, const void *value_cache, int64_t block_size,
                                const int64_t *table, int64_t context, float scale, float *scores,
                                int64_t scores_stride, float *out, int half) {
    int64_t token_stride = num_kv_heads * head_dim;
    const float *queries[MAX_GROUP] = {0};
    for (int j = 0; j < group; j++) queries[j] = q + j * head_dim;
    scores_of(queries, group, kv_at(key_cache, g * head_dim, half), table, context, block_size, token_stride, head_dim,
              scale, scores, scores_stride, half);
    float inv_sums[MAX_GROUP];
    for (int j = 0; j < group; j++) inv_sums[j] = softmax_numerators(scores + j * scores_stride, context);
    value_cache = kv_at(value_cache, g * head_dim, half);
    if (head_dim % 32) {
        for (int j = 0; j < group; j++)
            weighted_values(scores + j * scores_stride, inv_sums[j], value_cache, table, context, block_size,
                            token_stride, head_dim, out + j * head_dim, half);
        return;
    }
    for (int j = 0; j < group; j += HEADS_AT_ONCE)
        for (int64_t d0 = 0; d0 < head_dim; d0 += 32) {
            const float *weights = scores + j * scores_stride;
            float *outs = out + j * head_dim;
            switch (group - j) {
            case 1: weighted_values32(weights, scores_stride, inv_sums + j, 1, value_cache, table, context, block_size,
                                      token_stride, head_dim, d0, outs, half); break;
            case 2: weighted_values32(weights, scores_stride, inv_sums + j, 2, value_cache, table, context, block_size,
                                      token_stride, head_dim, d0, outs, half); break;
            default: weighted_values32(weights, scores_stride, inv_sums + j, 3, value_cache, table, context,
                                       block_size, token_stride, head_dim, d0, outs, half);
            }
        }
}


/* attend_kv_head_typed for a float32 (half == 0) or float16 cache, each with its own specialised code. */
static inline void attend_kv_head(const float *q, int group, int64_t g, int64_t num_kv_heads, int64_t head_dim,
                                  const void *key_cache, const void *value_cache, int half, int64_t block_size,
                                  const int64_t *table, int64_t context, float scale, float *scores,
                                  int64_t scores_stride, float *out) {
    if (half)
        attend_kv_head_typed(q, group, g, num_kv_heads, head_dim, key_cache, value_cache, block_size, table, context,
                             scale, scores, scores_stride, out, 1);
    else
        attend_kv_head_typed(q, group, g, num_kv_heads, head_dim, key_cache, value_cache, block_size, table, context,
                             scale, scores, scores_stride, out, 0);
}

#endif
