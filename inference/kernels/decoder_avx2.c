/*
 * A whole decode step of a Llama decoder in one call (x86-64, AVX2 + FMA, OpenMP): M sequences bring one new
 * token each; out come the logits of those M tokens.
 *
 *   x = embedding[token]
 *   for each layer:  x += o_proj(attention(rotary(qkv_proj(norm(x)))))      (new K/V stored in the cache)
 *                    x += down_proj(silu(gate) * up), [gate | up] = gate_up_proj(norm(x))
 *   logits = head(norm(x))
 *
 * The PyTorch module path runs the same math as ~15 operator calls per layer, each paying Python and
 * dispatcher overhead and an OpenMP fork/join; here one parallel region spans the step and its phases are
 * separated by barriers. The phases reuse the standalone kernels' code: linear.h (weights decoded inside the
 * matmul, the residual add fused into the store), attention.h (paged attention in place) and
 * elementwise.h. Shapes and formats are checked by the caller (inference/kernels/decoder.py).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "elementwise.h"
#include "linear.h"

/* One linear layer; mirrors inference/kernels/decoder.py's LinearDesc. */
typedef struct {
    int64_t format, in_features, out_features;
    const void *weight;
    int64_t row_bytes;
    const float *scales, *mins;
    int64_t groups, group_size;
    const float *bias;
} linear_desc;

typedef struct {
    const float *input_norm, *post_attention_norm;
    linear_desc qkv, o, gate_up, down;
    void *key_cache, *value_cache;  /* [num_blocks, block_size, kv_heads, head_dim], float32 or float16 */
} layer_desc;

typedef struct {
    int64_t num_layers, hidden, heads, kv_heads, head_dim, intermediate, block_size;
    int64_t kv_half;         /* the caches hold float16 (else float32) */
    float eps;
    const float *embedding;  /* [vocab, hidden] */
    const float *final_norm;
    const float *inv_freq;   /* [head_dim / 2] rotary inverse frequencies */
    linear_desc head;
    const layer_desc *layers;
} decoder_desc;

/* y (+)= x @ W^T inside the parallel region; `xsum`: this thread's table for the INT4 min term; `xq`: the
 * shared room for x quantized (W8A8). */
static inline void linear(const float *x, int64_t M, const linear_desc *L, float *y, float *scratch, float *xsum,
                          const act8_t *xq, int accumulate) {
    weights_t w = {L->weight, L->row_bytes, L->scales, L->mins, L->groups, L->group_size, NULL};
    int64_t K = L->in_features, N = L->out_features;
    switch (L->format) {
    case F32: run(x, M, K, N, &w, F32, L->bias, y, scratch, NULL, accumulate); break;
    case INT8: run(x, M, K, N, &w, INT8, L->bias, y, scratch, xq, accumulate); break;
    case W8A8: run(x, M, K, N, &w, W8A8, L->bias, y, NULL, xq, accumulate); break;
    default:
        if (M == 1) {
            group_sums(x, K, L->groups, L->group_size, xsum);
            w.xsum = xsum;
        }
        run(x, M, K, N, &w, INT4, L->bias, y, scratch, NULL, accumulate);
    }
}

static inline void norm_rows(const float *x, int64_t M, int64_t size, const float *weight, float eps, float *out) {
    #pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) rms_norm_row(x + m * size, size, weight, eps, out + m * size);
}

static int64_t max_in_features(const decoder_desc *model) {
    int64_t most = model->head.in_features;
    for (int64_t l = 0; l < model->num_layers; l++) {
        const layer_desc *layer = model->layers + l;
        const linear_desc *all[4] = {&layer->qkv, &layer->o, &layer->gate_up, &layer->down};
        for (int i = 0; i < 4; i++) most = all[i]->in_features > most ? all[i]->in_features : most;
    }
    return most;
}

/* token_ids, positions, slots (cache slot of each new token), context_lens [M]; block_tables [M, table_stride].
 * Writes logits [M, head.out_features]. Returns 0, or -1 when an allocation fails. */
int opslab_decode_step(const decoder_desc *model, int64_t M, const int64_t *token_ids, const int64_t *positions,
                       const int64_t *slots, const int64_t *block_tables, int64_t table_stride,
                       const int64_t *context_lens, int64_t max_context, float *logits) {
    int64_t H = model->hidden, d = model->head_dim, half = d / 2, heads = model->heads, kvh = model->kv_heads;
    int64_t qkv_size = (heads + 2 * kvh) * d, I = model->intermediate, group = heads / kvh;
    int64_t token_stride = kvh * d, max_k = max_in_features(model), scores_stride = (max_context + 7) / 8 * 8;
    float scale = 1.0f / sqrtf((float)d);
    /* shared activations and quantized x (W8A8: a float per row, 2 bytes per value and an int16 per block of
     * them, counted in floats), then per-thread scratch: decoded weight rows, INT4 group sums, attention scores */
    int64_t activations = M * (2 * H + qkv_size + heads * d + 3 * I + 2 * half);
    int64_t quantized = M + M * max_k / 2 + (M * (max_k / QBLOCK) + 1) / 2;
    int64_t shared = activations + quantized;
    int64_t per_thread = (ROWS * max_k + max_k + group * scores_stride + 15) / 16 * 16;
    int threads = omp_get_max_threads();
    float *memory = aligned_alloc(64, ((size_t)(shared + threads * per_thread) * sizeof(float) + 63) / 64 * 64);
    if (!memory) return -1;
    float *x = memory, *xn = x + M * H, *qkv = xn + M * H, *attn = qkv + M * qkv_size, *gate_up = attn + M * heads * d;
    float *act = gate_up + 2 * M * I, *cos = act + M * I, *sin = cos + M * half;
    float *row_scales = memory + activations;
    int16_t *multipliers = (int16_t *)(row_scales + M);
    int8_t *values = (int8_t *)(multipliers + M * (max_k / QBLOCK));
    act8_t xq = {values, values + M * max_k, multipliers, row_scales};
    float *thread_memory = memory + (shared + 15) / 16 * 16;

    #pragma omp parallel num_threads(threads)
    {
        float *scratch = thread_memory + omp_get_thread_num() * per_thread;
        float *xsum = scratch + ROWS * max_k, *scores = xsum + max_k;

        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) {
            memcpy(x + m * H, model->embedding + token_ids[m] * H, (size_t)H * sizeof(float));
            for (int64_t i = 0; i < half; i++) {
                float angle = (float)positions[m] * model->inv_freq[i];
                cos[m * half + i] = cosf(angle);
                sin[m * half + i] = sinf(angle);
            }
        }
        for (int64_t l = 0; l < model->num_layers; l++) {
            const layer_desc *layer = model->layers + l;
            norm_rows(x, M, H, layer->input_norm, model->eps, xn);
            linear(xn, M, &layer->qkv, qkv, scratch, xsum, &xq, 0);

            /* rotate the query and key heads; store the token's keys and values at its cache slot */
            #pragma omp for schedule(static)
            for (int64_t task = 0; task < M * (heads + 2 * kvh); task++) {
                int64_t m = task / (heads + 2 * kvh), h = task % (heads + 2 * kvh);
                float *head = qkv + m * qkv_size + h * d;
                if (h < heads + kvh) rotate_head(head, half, cos + m * half, sin + m * half);
                if (h >= heads) {
                    void *cache = h < heads + kvh ? layer->key_cache : layer->value_cache;
                    int64_t g = h < heads + kvh ? h - heads : h - heads - kvh, at = slots[m] * token_stride + g * d;
                    if (model->kv_half)  /* round to nearest even, as PyTorch's .to(float16) */
                        for (int64_t i = 0; i < d; i += 8)
                            _mm_storeu_si128((__m128i *)((uint16_t *)cache + at + i),
                                             _mm256_cvtps_ph(_mm256_loadu_ps(head + i), _MM_FROUND_TO_NEAREST_INT));
                    else
                        memcpy((float *)cache + at, head, (size_t)d * sizeof(float));
                }
            }
            #pragma omp for schedule(static)
            for (int64_t task = 0; task < M * kvh; task++) {
                int64_t m = task / kvh, g = task % kvh, first_head = g * group * d;
                attend_kv_head(qkv + m * qkv_size + first_head, (int)group, g, kvh, d, layer->key_cache,
                               layer->value_cache, (int)model->kv_half, model->block_size,
                               block_tables + m * table_stride, context_lens[m], scale, scores, scores_stride,
                               attn + m * heads * d + first_head);
            }
            linear(attn, M, &layer->o, x, scratch, xsum, &xq, 1);

            norm_rows(x, M, H, layer->post_attention_norm, model->eps, xn);
            linear(xn, M, &layer->gate_up, gate_up, scratch, xsum, &xq, 0);
            #pragma omp for schedule(static)
            for (int64_t task = 0; task < M * (I / 8); task++) {
                int64_t m = task / (I / 8), i = task % (I / 8) * 8;
                const float *gate = gate_up + m * 2 * I + i;
                _mm256_storeu_ps(act + m * I + i, silu_mul8(_mm256_loadu_ps(gate), _mm256_loadu_ps(gate + I)));
            }
            linear(act, M, &layer->down, x, scratch, xsum, &xq, 1);
        }
        norm_rows(x, M, H, model->final_norm, model->eps, xn);
        linear(xn, M, &model->head, logits, scratch, xsum, &xq, 0);
    }
    free(memory);
    return 0;
}
