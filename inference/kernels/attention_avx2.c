/*
 * Decode attention over the paged KV cache (x86-64, AVX2 + FMA, OpenMP): one query token per sequence,
 * reading keys and values in place through the block table instead of gathering them into a dense copy.
 *
 *   out[b, h] = softmax(scale * q[b, h] . K[b, :, g]) @ V[b, :, g]    with g = h / (num_heads / num_kv_heads)
 *
 * Caches are [num_blocks, block_size, num_kv_heads, head_dim] float32 (token t of sequence b lives in block
 * block_tables[b, t / block_size] at offset t % block_size). Work is split over (sequence, kv head) pairs;
 * the query heads that share a kv head are done together, so each key and value is read once per pair.
 * Requires head_dim % 8 == 0 and at most MAX_GROUP query heads per kv head; the caller checks.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

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

/* q row of sequence b: q + rows[b] * q_row_stride (heads contiguous, head_dim each); out likewise.
 * Returns 0, or -1 when the scratch allocation fails. */
int opslab_paged_decode_attention(const float *q, int64_t q_row_stride, const int64_t *rows, int64_t num_seqs,
                                  int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                                  const float *key_cache, const float *value_cache, int64_t block_size,
                                  const int64_t *block_tables, int64_t table_stride, const int64_t *context_lens,
                                  int64_t max_context, float scale, float *out, int64_t out_row_stride) {
    int group = (int)(num_heads / num_kv_heads);
    int64_t token_stride = num_kv_heads * head_dim, scores_stride = (max_context + 7) / 8 * 8;
    int failed = 0;
    #pragma omp parallel
    {
        float *scores = malloc((size_t)group * scores_stride * sizeof(float));
        if (!scores) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < num_seqs * num_kv_heads; task++) {
            if (!scores) continue;
            int64_t b = task / num_kv_heads, g = task % num_kv_heads, context = context_lens[b];
            const int64_t *table = block_tables + b * table_stride;
            const float *queries[MAX_GROUP];
            for (int j = 0; j < group; j++) queries[j] = q + rows[b] * q_row_stride + (g * group + j) * head_dim;
            scores_of(queries, group, key_cache + g * head_dim, table, context, block_size, token_stride, head_dim,
                      scale, scores, scores_stride);
            for (int j = 0; j < group; j++) {
                float *weights = scores + j * scores_stride;
                float inv_sum = softmax_numerators(weights, context);
                weighted_values(weights, inv_sum, value_cache + g * head_dim, table, context, block_size,
                                token_stride, head_dim, out + rows[b] * out_row_stride + (g * group + j) * head_dim);
            }
        }
        free(scores);
    }
    return failed ? -1 : 0;
}
