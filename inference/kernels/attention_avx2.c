/*
 * Decode attention over the paged KV cache (x86-64, AVX2 + FMA, OpenMP): one query token per sequence,
 * reading keys and values in place through the block table instead of gathering them into a dense copy
 * (see attention.h). Work is split over (sequence, kv head) pairs. Caches are float32, or float16 when `half`.
 * Requires head_dim % 8 == 0 and at most MAX_GROUP query heads per kv head; the caller checks.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "attention.h"

/* q row of sequence b: q + rows[b] * q_row_stride (heads contiguous, head_dim each); out likewise.
 * Returns 0, or -1 when the scratch allocation fails. */
int opslab_paged_decode_attention(const float *q, int64_t q_row_stride, const int64_t *rows, int64_t num_seqs,
                                  int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                                  const void *key_cache, const void *value_cache, int half, int64_t block_size,
                                  const int64_t *block_tables, int64_t table_stride, const int64_t *context_lens,
                                  int64_t max_context, float scale, float *out, int64_t out_row_stride) {
    int group = (int)(num_heads / num_kv_heads);
    int64_t scores_stride = (max_context + 7) / 8 * 8;
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
            int64_t b = task / num_kv_heads, g = task % num_kv_heads, first_head = g * group * head_dim;
            attend_kv_head(q + rows[b] * q_row_stride + first_head, group, g, num_kv_heads, head_dim, key_cache,
                           value_cache, half, block_size, block_tables + b * table_stride, context_lens[b], scale,
                           scores, scores_stride, out + rows[b] * out_row_stride + first_head);
        }
        free(scores);
    }
    return failed ? -1 : 0;
}
