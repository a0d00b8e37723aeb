/*
 * The matmul machinery behind opslab_linear (linear_avx2.c) and the fused decoder (decoder_avx2.c):
 * y[M, N] = x[M, K] @ W[N, K]^T (+ bias) (or y += ..., for a residual), W stored as float32, int8 or int4
 * and decoded inside the matmul, or int8 W times x quantized to int8 on the fly (W8A8) (x86-64, AVX2 + FMA,
 * OpenMP work-sharing inside the caller's parallel region).
 *
 * Weight formats (row-major, one row per output feature):
 *   F32   float32 [N, K]
 *   INT8  int8 [N, K] with a float32 scale per row (groups == 0; applied to the dot product) or per
 *         (row, group) of group_size values: W = q * scale
 *   INT4  two 4-bit values per byte, K padded to the group size; in each block of 32 values, byte i holds
 *         value i in its low nibble and value i + 16 in its high nibble; per (row, group) float32 scale and
 *         min: W = q * scale + min
 *   W8A8  INT8's weights (a scale per row) times x quantized to int8 on the fly, symmetric per block of 32
 *         values (like GGUF's Q8_0), each block's scale an integer multiple of its row's (see act8_t); the
 *         products are summed in int16/int32 (vpmaddubsw + vpmaddwd, the multiplier riding in vpmaddwd):
 *         ~1.5x the multiply-adds per cycle of float32 FMA here, and no weight decoding
 *
 * Work split: the rows of W in blocks of ROWS, spread over the OpenMP threads (one pass over W in total).
 *   M == 1: each row is decoded in registers, front to back. Grouped INT8 scales the decoded weights as
 *           it goes (four independent FMA chains: a per-group reduction chain was slower); INT4 accumulates
 *           x . q per group and applies the group's scale once, plus min * sum(x over the group) from a
 *           per-call table.
 *   M >= 2: each block is decoded once into a per-thread float32 scratch (L1/L2 resident), then multiplied
 *           with x in tiles of MTILE rows: MTILE x ROWS accumulators, FMA-bound. Except INT8 (a scale per row, or
 *           grouped: each group's scale multiplies its decoded weights once for all the rows of x) with
 *           M <= SMALL_M_MAX: there a weight row is decoded in registers once per MSMALL rows of x,
 *           cheaper than the scratch round trip (for F32 nothing needs decoding; INT4's min term makes
 *           its per-group work heavier).
 *   W8A8:   x is quantized once per call (all threads share it); M == 1 walks each row front to back, M >= 2
 *           multiplies int8 rows of W with tiles of MTILE rows of x straight from memory; sums stay int32
 *           to the end of a row.
 *   bf16:   on the avx512bf16 path, grouped INT8 (the output head) at every M: x rounded to bf16 once per
 *           call, each block decoded into bf16 scratch, tiles of vdpbf16ps (see bf16_tiles).
 * x is processed in panels of at most MPANEL rows, so a panel of x stays in L2 while W streams past it. The
 * tiled paths ask for the weights PREFETCH_BLOCKS blocks ahead (see prefetch_row; M == 1 and the in-register
 * INT8 path read a row front to back, which the hardware prefetcher follows on its own).
 * Loops walk row pointers and whole groups: no per-element index arithmetic in the inner loops.
 */
#ifndef OPSLAB_LINEAR_H
#define OPSLAB_LINEAR_H

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "simd.h"

#define ROWS 4
#if defined(__AVX512F__)
#define MTILE 4        /* rows of x per tile: 4 x ROWS accumulators fit AVX-512's 32 registers */
#else
#define MTILE 3        /* 3 x ROWS accumulators, the most AVX2's 16 registers hold with the operands */
#endif
#define MPANEL 48
#define MSMALL 4       /* rows of x that share one in-register decode of a weight row */
#define SMALL_M_MAX 8  /* INT8: up to this many rows of x, decode in registers (MSMALL rows at a time) */
#define PREFETCH_BLOCKS 2  /* tiled paths: blocks of W requested this far ahead (1 to 4 measured the same) */

enum format { F32 = 0, INT8 = 1, INT4 = 2, W8A8 = 3 };
#define QBLOCK 32  /* W8A8: values of x per activation scale */

typedef struct {
    const uint8_t *weight;
    int64_t row_bytes;   /* bytes from one row of W to the next */
    const float *scales; /* INT8: [N] or [N, groups]; INT4: [N, groups] */
    const float *mins;   /* INT4: [N, groups] */
    int64_t groups;      /* groups per row; 0 = one INT8 scale per row */
    int64_t group_size;
    const float *xsum;   /* INT4, M == 1: sum of x over each group */
} weights_t;

/* x [M, K] quantized for W8A8: x ~= values * multipliers * row_scales, one integer multiplier per QBLOCK
 * values (the block's scale relative to its row's: vpmaddwd applies it, so the sums stay int32 across a
 * whole row); `magnitudes` holds |values| (vpmaddubsw multiplies unsigned by signed bytes). */
typedef struct {
    int8_t *values, *magnitudes;  /* [M, K] */
    int16_t *multipliers;         /* [M, K / QBLOCK] */
    float *row_scales;            /* [M] */
} act8_t;

/* Grouped INT8 weights (the output head) times x in bf16 products where the CPU has AVX512_BF16 (the
 * avx512bf16 path), at every M, so a row's logits do not depend on how many rows share the call: x rounded
 * to bf16 once per call into the room of xq's values and magnitudes (2 bytes per value), each block of W
 * decoded with its group scales into bf16, then vdpbf16ps (32 products per instruction, sums in float32):
 * twice the products per instruction of float32 FMA. */
#if defined(__AVX512BF16__)
#define BF16_TILES 1
#else
#define BF16_TILES 0
#endif
INLINE int bf16_tiles(int format, const weights_t *w) { return BF16_TILES && format == INT8 && w->groups; }

/* ---- decoding ---------------------------------------------------------------------------------------- */

INLINE __m256 load_int8(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* The 32 values of one INT4 block (16 bytes) as four vectors: values 0-7, 8-15, 16-23, 24-31. */
INLINE void load_int4_block(const uint8_t *p, __m256 q[4]) {
    __m128i bytes = _mm_loadu_si128((const __m128i *)p), mask = _mm_set1_epi8(0x0F);
    __m128i low = _mm_and_si128(bytes, mask), high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(low));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(low, 8)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(high));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(high, 8)));
}

/* Row `row` of W as float32 into out[K] (scales and mins applied, except a per-row INT8 scale). */
INLINE void decode_row(const weights_t *w, int format, int64_t row, int64_t K, float *out) {
    const uint8_t *p = w->weight + row * w->row_bytes;
    if (format == F32) {
        for (int64_t k = 0; k < K; k += 8) _mm256_storeu_ps(out + k, _mm256_loadu_ps((const float *)p + k));
    } else if (format == INT8 && !w->groups) {
        int64_t k = 0;
#if defined(__AVX512F__)
        for (; k + 16 <= K; k += 16) _mm512_storeu_ps(out + k, load_int8x16(p + k));
#endif
        for (; k < K; k += 8) _mm256_storeu_ps(out + k, load_int8(p + k));
    } else {
        const float *scales = w->scales + row * w->groups, *mins = format == INT4 ? w->mins + row * w->groups : 0;
        for (int64_t g = 0, k0 = 0; k0 < K; g++, k0 += w->group_size) {
            int64_t end = k0 + w->group_size < K ? k0 + w->group_size : K;
            __m256 scale = _mm256_set1_ps(scales[g]);
            if (format == INT8) {
                int64_t k = k0;
#if defined(__AVX512F__)
                for (; k + 16 <= end; k += 16)
                    _mm512_storeu_ps(out + k, _mm512_mul_ps(load_int8x16(p + k), _mm512_set1_ps(scales[g])));
#endif
                for (; k < end; k += 8) _mm256_storeu_ps(out + k, _mm256_mul_ps(load_int8(p + k), scale));
            } else {
                __m256 min = _mm256_set1_ps(mins[g]), q[4];
                for (int64_t k = k0; k < end; k += 32) {
                    load_int4_block(p + k / 2, q);
                    for (int i = 0; i < 4; i++) _mm256_storeu_ps(out + k + 8 * i, _mm256_fmadd_ps(q[i], scale, min));
                }
            }
        }
    }
}

/* Per-row INT8 scale and bias for the ROWS outputs starting at n, applied to their four dot products
 * (added to what y holds when `accumulate`). */
INLINE void store4(float *y, __m128 dots, const weights_t *w, int format, const float *bias, int64_t n,
                   int accumulate) {
    if ((format == INT8 || format == W8A8) && !w->groups) dots = _mm_mul_ps(dots, _mm_loadu_ps(w->scales + n));
    if (bias) dots = _mm_add_ps(dots, _mm_loadu_ps(bias + n));
    if (accumulate) dots = _mm_add_ps(dots, _mm_loadu_ps(y));
    _mm_storeu_ps(y, dots);
}

/* ---- M == 1: decode in registers ---------------------------------------------------------------------- */

/* x . row `row` of W, reading the row front to back (one sequential stream per thread keeps the hardware
 * prefetcher ahead; interleaving several rows halves the bandwidth here). Independent accumulators hide
 * the FMA latency; grouped INT8 scales each group's decoded weights, INT4 sums x . q over a group, then
 * applies its scale and min * sum(x) once. */
INLINE float row_dot(const float *x, int64_t K, const weights_t *w, int format, int64_t row) {
    const uint8_t *p = w->weight + row * w->row_bytes;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    if (format == F32 || (format == INT8 && !w->groups)) {
        int64_t k = 0;
#if defined(__AVX512F__)
        /* the avx512 path: 64 values per step in four 512-bit FMA chains, folded into the 256-bit ones */
        __m512 wide[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (; k + 64 <= K; k += 64)
            for (int i = 0; i < 4; i++) {
                __m512 wv = format == F32 ? _mm512_loadu_ps((const float *)p + k + 16 * i) : load_int8x16(p + k + 16 * i);
                wide[i] = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16 * i), wv, wide[i]);
            }
        for (int i = 0; i < 4; i++) acc[i] = fold8(wide[i]);
#endif
        for (; k + 32 <= K; k += 32)
            for (int i = 0; i < 4; i++) {
                const uint8_t *at = format == F32 ? p + 4 * (k + 8 * i) : p + k + 8 * i;
                __m256 wv = format == F32 ? _mm256_loadu_ps((const float *)at) : load_int8(at);
                acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8 * i), wv, acc[i]);
            }
        for (; k < K; k += 8)
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + k),
                                     format == F32 ? _mm256_loadu_ps((const float *)p + k) : load_int8(p + k), acc[0]);
        float dot = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        return format == INT8 ? dot * w->scales[row] : dot;
    }
    const float *scales = w->scales + row * w->groups;
    if (format == INT8) {  /* scale the decoded weights group by group: four independent FMA chains */
        for (int64_t g = 0, k0 = 0; k0 < K; g++, k0 += w->group_size) {
            int64_t end = k0 + w->group_size < K ? k0 + w->group_size : K;
            __m256 scale = _mm256_broadcast_ss(scales + g);
            for (int64_t k = k0; k < end; k += 32)
                for (int i = 0; i < 4; i++)
                    acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8 * i),
                                             _mm256_mul_ps(load_int8(p + k + 8 * i), scale), acc[i]);
        }
        return hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    }
    float extra = 0.0f;
    for (int64_t g = 0, k0 = 0; k0 < K; g++, k0 += w->group_size) {
        int64_t end = k0 + w->group_size < K ? k0 + w->group_size : K;
        __m256 part[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, q[4];
        for (int64_t k = k0; k < end; k += 32) {
            if (format == INT4) load_int4_block(p + k / 2, q);
            else for (int i = 0; i < 4; i++) q[i] = load_int8(p + k + 8 * i);
            for (int i = 0; i < 4; i++) part[i & 1] = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8 * i), q[i], part[i & 1]);
        }
        acc[g & 1] = _mm256_fmadd_ps(_mm256_add_ps(part[0], part[1]), _mm256_set1_ps(scales[g]), acc[g & 1]);
        if (format == INT4) extra += w->mins[row * w->groups + g] * w->xsum[g];
    }
    return hsum(_mm256_add_ps(acc[0], acc[1])) + extra;
}

INLINE void block_gemv(const float *x, int64_t K, const weights_t *w, int format, const float *bias, int64_t n,
                       float *y, int accumulate) {
    for (int r = 0; r < ROWS; r++)
        y[n + r] = row_dot(x, K, w, format, n + r) + (bias ? bias[n + r] : 0.0f) + (accumulate ? y[n + r] : 0.0f);
}

/* ---- 2 <= M <= SMALL_M_MAX, INT8: one decode in registers for MSMALL rows of x ---------------------------- */

/* dots[m] = x[m] . row `row` of W for the mrows <= MSMALL rows of x (row stride K). Called with a literal
 * mrows, so the 2 * mrows accumulators stay in registers, and a literal `grouped`, so per-row weights pay
 * nothing for the groups: a scale per row is applied to the dot products, grouped scales (whole groups of
 * 32) to the decoded weights, once for all the rows of x. */
INLINE void int8_rows_dot(const float *x, int mrows, int64_t K, const weights_t *w, int64_t row, float *dots,
                          int grouped) {
    const uint8_t *p = w->weight + row * w->row_bytes;
    const float *group_scales = w->scales + row * w->groups;
    int64_t group = 0, group_end = grouped ? w->group_size : K;  /* the group k is in, and where it ends */
    __m256 acc[MSMALL][2];
    for (int m = 0; m < mrows; m++) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    int64_t k = 0;
#if defined(__AVX512F__)
    __m512 wide[MSMALL][2];
    for (int m = 0; m < mrows; m++) wide[m][0] = wide[m][1] = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        if (grouped && k == group_end) group++, group_end += w->group_size;
        for (int h = 0; h < 2; h++) {
            __m512 wv = load_int8x16(p + k + 16 * h);
            if (grouped) wv = _mm512_mul_ps(wv, _mm512_set1_ps(group_scales[group]));
            for (int m = 0; m < mrows; m++)
                wide[m][h] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k + 16 * h), wv, wide[m][h]);
        }
    }
    for (int m = 0; m < mrows; m++) acc[m][0] = fold8(wide[m][0]), acc[m][1] = fold8(wide[m][1]);
#endif
    for (; k + 16 <= K; k += 16) {  /* grouped rows are whole groups of 32: a step never straddles two */
        if (grouped && k == group_end) group++, group_end += w->group_size;
        for (int h = 0; h < 2; h++) {
            __m256 wv = load_int8(p + k + 8 * h);
            if (grouped) wv = _mm256_mul_ps(wv, _mm256_set1_ps(group_scales[group]));
            for (int m = 0; m < mrows; m++)
                acc[m][h] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k + 8 * h), wv, acc[m][h]);
        }
    }
    if (k < K) {  /* per-row scales only: K % 16 == 8 */
        __m256 wv = load_int8(p + k);
        for (int m = 0; m < mrows; m++) acc[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k), wv, acc[m][0]);
    }
    for (int m = 0; m < mrows; m++)
        dots[m] = hsum(_mm256_add_ps(acc[m][0], acc[m][1])) * (grouped ? 1.0f : w->scales[row]);
}

INLINE void block_int8_small(const float *x, int64_t M, int64_t K, const weights_t *w, const float *bias, int64_t n,
                             float *y, int64_t ldy, int accumulate, int grouped) {
    for (int64_t m0 = 0; m0 < M; m0 += MSMALL) {
        int mrows = M - m0 < MSMALL ? (int)(M - m0) : MSMALL;
        const float *xs = x + m0 * K;
        for (int r = 0; r < ROWS; r++) {
            float dots[MSMALL];
            switch (mrows) {
            case 1: int8_rows_dot(xs, 1, K, w, n + r, dots, grouped); break;
            case 2: int8_rows_dot(xs, 2, K, w, n + r, dots, grouped); break;
            case 3: int8_rows_dot(xs, 3, K, w, n + r, dots, grouped); break;
            default: int8_rows_dot(xs, MSMALL, K, w, n + r, dots, grouped);
            }
            for (int m = 0; m < mrows; m++) {
                float *out = y + (m0 + m) * ldy + n + r;
                *out = dots[m] + (bias ? bias[n + r] : 0.0f) + (accumulate ? *out : 0.0f);
            }
        }
    }
}

/* Row `row` of W asked for ahead of use (nothing past the last row N - 1). A block's rows are read side by side
 * (the tiles walk ROWS rows at once), and a row of a few hundred bytes ends before the hardware prefetcher has
 * picked its stream up, so without this every block waits on memory. Blocks ask for the block PREFETCH_BLOCKS
 * on, a row at a time between their own rows' work: a whole block's lines at once fill the line buffers and
 * stall. */
INLINE void prefetch_row(const weights_t *w, int64_t row, int64_t N) {
    if (row >= N) return;
    const char *start = (const char *)(w->weight + row * w->row_bytes);
    for (int64_t offset = 0; offset < w->row_bytes; offset += 64) _mm_prefetch(start + offset, _MM_HINT_T0);
}

/* ---- M > SMALL_M_MAX: decode once into scratch, then an fp32 micro-kernel -------------------------------------- */

/* One k step of the tile at one vector width (VEC, LOAD and FMA name its type and intrinsics): the mrows rows
 * of x times the ROWS rows of the block into accumulators `acc`. */
#define TILE_STEP(VEC, LOAD, FMA, acc)                                                                     \
    do {                                                                                                  \
        VEC xv[MTILE];                                                                                    \
        for (int m = 0; m < MTILE; m++) xv[m] = m < mrows ? LOAD(x + m * K + k) : xv[0];                  \
        for (int r = 0; r < ROWS; r++) {                                                                  \
            VEC wv = LOAD(block + r * K + k);                                                             \
            for (int m = 0; m < MTILE; m++)                                                               \
                if (m < mrows) acc[m][r] = FMA(xv[m], wv, acc[m][r]);                                     \
        }                                                                                                 \
    } while (0)

INLINE void tile(const float *x, int mrows, int64_t K, const float *block, const weights_t *w, int format,
                 const float *bias, int64_t n, float *y, int64_t ldy, int accumulate) {
    __m256 acc[MTILE][ROWS];
    for (int m = 0; m < MTILE; m++)
        for (int r = 0; r < ROWS; r++) acc[m][r] = _mm256_setzero_ps();
    int64_t k = 0;
#if defined(__AVX512F__)
    __m512 wide[MTILE][ROWS];
    for (int m = 0; m < MTILE; m++)
        for (int r = 0; r < ROWS; r++) wide[m][r] = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) TILE_STEP(__m512, _mm512_loadu_ps, _mm512_fmadd_ps, wide);
    for (int m = 0; m < mrows; m++)
        for (int r = 0; r < ROWS; r++) acc[m][r] = fold8(wide[m][r]);
#endif
    /* every step on the avx2 path; a last 8 values on the avx512 one */
    for (; k < K; k += 8) TILE_STEP(__m256, _mm256_loadu_ps, _mm256_fmadd_ps, acc);
    for (int m = 0; m < mrows; m++)
        store4(y + m * ldy + n, hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]), w, format, bias, n,
               accumulate);
}

#if BF16_TILES
/* Rows of x rounded to bf16 (round to nearest even), a row per iteration of a work-shared loop (ends with the
 * threads' barrier). */
INLINE void bf16_rows(const float *x, int64_t M, int64_t K, uint16_t *out) {
    #pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k += 32) {
            __m512bh pair = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + m * K + k + 16), _mm512_loadu_ps(x + m * K + k));
            _mm512_storeu_si512(out + m * K + k, (__m512i)pair);
        }
}

/* Row `row` of grouped INT8 W, scales applied, as bf16 into out[K] (K % 32 == 0). */
INLINE void decode_row_bf16(const weights_t *w, int64_t row, int64_t K, uint16_t *out) {
    const uint8_t *p = w->weight + row * w->row_bytes;
    const float *scales = w->scales + row * w->groups;
    for (int64_t g = 0, k0 = 0; k0 < K; g++, k0 += w->group_size) {
        int64_t end = k0 + w->group_size < K ? k0 + w->group_size : K;
        __m512 scale = _mm512_set1_ps(scales[g]);
        for (int64_t k = k0; k < end; k += 32) {
            __m512bh pair = _mm512_cvtne2ps_pbh(_mm512_mul_ps(load_int8x16(p + k + 16), scale),
                                                _mm512_mul_ps(load_int8x16(p + k), scale));
            _mm512_storeu_si512(out + k, (__m512i)pair);
        }
    }
}

INLINE void tile_bf16(const uint16_t *x, int mrows, int64_t K, const uint16_t *block, const weights_t *w,
                      const float *bias, int64_t n, float *y, int64_t ldy, int accumulate) {
    __m512 acc[MTILE][ROWS];
    for (int m = 0; m < MTILE; m++)
        for (int r = 0; r < ROWS; r++) acc[m][r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 32) {
        __m512bh xv[MTILE];
        for (int m = 0; m < mrows; m++) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * K + k);
        for (int r = 0; r < ROWS; r++) {
            __m512bh wv = (__m512bh)_mm512_loadu_si512(block + r * K + k);
            for (int m = 0; m < mrows; m++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv[m], wv);
        }
    }
    for (int m = 0; m < mrows; m++)
        store4(y + m * ldy + n, hsum4(fold8(acc[m][0]), fold8(acc[m][1]), fold8(acc[m][2]), fold8(acc[m][3])), w,
               INT8, bias, n, accumulate);
}

INLINE void block_tiled_bf16(const uint16_t *x, int64_t M, int64_t K, const weights_t *w, const float *bias,
                             int64_t n, int64_t N, float *y, int64_t ldy, uint16_t *scratch, int accumulate) {
    for (int r = 0; r < ROWS; r++) {
        prefetch_row(w, n + PREFETCH_BLOCKS * ROWS + r, N);
        decode_row_bf16(w, n + r, K, scratch + r * K);
    }
    int64_t m = 0;
    for (; m + MTILE <= M; m += MTILE)
        tile_bf16(x + m * K, MTILE, K, scratch, w, bias, n, y + m * ldy, ldy, accumulate);
    if (M - m == 3) tile_bf16(x + m * K, 3, K, scratch, w, bias, n, y + m * ldy, ldy, accumulate);
    if (M - m == 2) tile_bf16(x + m * K, 2, K, scratch, w, bias, n, y + m * ldy, ldy, accumulate);
    if (M - m == 1) tile_bf16(x + m * K, 1, K, scratch, w, bias, n, y + m * ldy, ldy, accumulate);
}
#endif

INLINE void block_tiled(const float *x, int64_t M, int64_t K, const weights_t *w, int format, const float *bias,
                        int64_t n, int64_t N, float *y, int64_t ldy, float *scratch, int accumulate) {
    const float *block = format == F32 ? (const float *)(w->weight + n * w->row_bytes) : scratch;  /* F32: as is */
    for (int r = 0; r < ROWS; r++) {
        prefetch_row(w, n + PREFETCH_BLOCKS * ROWS + r, N);
        if (format != F32) decode_row(w, format, n + r, K, scratch + r * K);
    }
    int64_t m = 0;
    for (; m + MTILE <= M; m += MTILE)
        tile(x + m * K, MTILE, K, block, w, format, bias, n, y + m * ldy, ldy, accumulate);
    if (M - m == 3) tile(x + m * K, 3, K, block, w, format, bias, n, y + m * ldy, ldy, accumulate);
    if (M - m == 2) tile(x + m * K, 2, K, block, w, format, bias, n, y + m * ldy, ldy, accumulate);
    if (M - m == 1) tile(x + m * K, 1, K, block, w, format, bias, n, y + m * ldy, ldy, accumulate);
}

/* xsum[g] = sum of x over group g (the INT4 min term at M == 1). */
INLINE void group_sums(const float *x, int64_t K, int64_t groups, int64_t group_size, float *xsum) {
    for (int64_t g = 0, k0 = 0; g < groups; g++, k0 += group_size) {
        __m256 s = _mm256_setzero_ps();
        for (int64_t k = k0; k < k0 + group_size && k < K; k += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(x + k));
        xsum[g] = hsum(s);
    }
}

/* ---- W8A8: int8 x int8 dot products ------------------------------------------------------------------- */

/* Bits of the per-block multipliers for rows of K values: as many as keep every int32 lane of the
 * accumulators (K / 8 products of at most 127 * 127, times a multiplier) from overflowing, at most 14. */
INLINE int multiplier_bits(int64_t K) {
    int bits = 0;
    while (bits < 14 && (double)(K / 8) * 127.0 * 127.0 * (double)(1 << (bits + 1)) < 2147483647.0) bits++;
    return bits;
}

/* Rows of x quantized into xq, a row per iteration of a work-shared loop (ends with the threads' barrier).
 * Per row: scale = max |x| / (127 * 2^bits); per block of 32: multiplier = ceil(2^bits * block max / row max),
 * values = round(x / (scale * multiplier)), so |values| <= 127 and x ~= values * multiplier * scale. */
INLINE void quantize_rows(const float *x, int64_t M, int64_t K, const act8_t *xq) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  /* undoes the packs' lane interleave */
    const float steps = (float)(1 << multiplier_bits(K));
    #pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        __m256 row_most = _mm256_setzero_ps();
        for (int64_t k = 0; k < K; k += 8)
            row_most = _mm256_max_ps(row_most, _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(row + k)));
        float row_max = hmax(row_most);
        xq->row_scales[m] = row_max / (127.0f * steps);
        for (int64_t k = 0, b = m * (K / QBLOCK); k < K; k += QBLOCK, b++) {
            __m256 v[4], most = _mm256_setzero_ps();
            for (int i = 0; i < 4; i++) {
                v[i] = _mm256_loadu_ps(row + k + 8 * i);
                most = _mm256_max_ps(most, _mm256_andnot_ps(sign_bit, v[i]));
            }
            float multiplier = row_max > 0.0f ? ceilf(steps * hmax(most) / row_max) : 1.0f;
            multiplier = multiplier < 1.0f ? 1.0f : multiplier;
            xq->multipliers[b] = (int16_t)multiplier;
            __m256 inverse = _mm256_set1_ps(row_max > 0.0f ? 127.0f * steps / (row_max * multiplier) : 0.0f);
            __m256i q[4];
            for (int i = 0; i < 4; i++) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inverse));  /* round to even */
            __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            packed = _mm256_permutevar8x32_epi32(packed, order);
            _mm256_storeu_si256((__m256i *)(xq->values + m * K + k), packed);
            _mm256_storeu_si256((__m256i *)(xq->magnitudes + m * K + k), _mm256_abs_epi8(packed));
        }
    }
}

/* 8 int32 lanes that sum to multiplier * (x . w) over one block of 32: |x| times w carrying x's sign
 * (vpmaddubsw: |x|, |w| <= 127, so its pair sums stay inside int16), then vpmaddwd adds pairs of those
 * times the block's multiplier. */
INLINE __m256i block_dot(const int8_t *magnitudes, const int8_t *values, __m256i wv, __m256i multiplier) {
    __m256i signed_w = _mm256_sign_epi8(wv, _mm256_loadu_si256((const __m256i *)values));
    __m256i pairs = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)magnitudes), signed_w);
    return _mm256_madd_epi16(pairs, multiplier);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define W8A8_AVX512 1
/* The avx512 path: two blocks (64 values) per instruction. AVX-512BW has no vpsignb, so w is negated under
 * a mask where x is negative (where x is 0 its magnitude zeroes the product anyway); vpmaddubsw multiplies
 * |x| by it, then VNNI's vpdpwssd adds pairs times the blocks' multipliers (one block's per 256-bit half)
 * into the int32 accumulator in one instruction. Per int32 lane that is K / 16 products over a row, within
 * the K / 8 that multiplier_bits allows. */
INLINE __m512i block_dot2(__m512i acc, __m512i magnitudes, __mmask64 negative, __m512i wv, __m512i multipliers) {
    __m512i signed_w = _mm512_mask_sub_epi8(wv, negative, _mm512_setzero_si512(), wv);
    return _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(magnitudes, signed_w), multipliers);
}

INLINE __m512i multipliers2(const int16_t *multipliers) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(multipliers[0])),
                              _mm256_set1_epi16(multipliers[1]), 1);
}

INLINE __m256i halves_sum(__m512i v) {
    return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}
#else
#define W8A8_AVX512 0
#endif

/* M == 1: x . row `row` of W, front to back, in int32 (four accumulators taking turns by block; on the
 * avx512 path two wide ones for pairs of blocks, an odd last block finishing in the narrow ones). */
INLINE float w8a8_row_dot(const act8_t *xq, int64_t K, const weights_t *w, int64_t row) {
    const int8_t *p = (const int8_t *)(w->weight + row * w->row_bytes);
    __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    int64_t k = 0, b = 0;
#if W8A8_AVX512
    __m512i wide[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    for (; k + 2 * QBLOCK <= K; k += 2 * QBLOCK, b += 2)
        wide[(b >> 1) & 1] = block_dot2(wide[(b >> 1) & 1], _mm512_loadu_si512(xq->magnitudes + k),
                                        _mm512_movepi8_mask(_mm512_loadu_si512(xq->values + k)),
                                        _mm512_loadu_si512(p + k), multipliers2(xq->multipliers + b));
    acc[0] = halves_sum(wide[0]);
    acc[1] = halves_sum(wide[1]);
#endif
    for (; k < K; k += QBLOCK, b++)
        acc[b & 3] = _mm256_add_epi32(acc[b & 3], block_dot(xq->magnitudes + k, xq->values + k,
            _mm256_loadu_si256((const __m256i *)(p + k)), _mm256_set1_epi16(xq->multipliers[b])));
    __m256i sum = _mm256_add_epi32(_mm256_add_epi32(acc[0], acc[1]), _mm256_add_epi32(acc[2], acc[3]));
    return hsum(_mm256_cvtepi32_ps(sum)) * xq->row_scales[0] * w->scales[row];
}

INLINE void w8a8_block_gemv(const act8_t *xq, int64_t K, const weights_t *w, const float *bias, int64_t n,
                            float *y, int accumulate) {
    for (int r = 0; r < ROWS; r++)
        y[n + r] = w8a8_row_dot(xq, K, w, n + r) + (bias ? bias[n + r] : 0.0f) + (accumulate ? y[n + r] : 0.0f);
}

/* mrows <= MTILE rows of quantized x (starting at row m) times ROWS rows of W, read in place: MTILE x ROWS
 * int32 accumulators, then x's row scales and W's. Called with a literal mrows, so the accumulators stay in
 * registers. */
INLINE void w8a8_tile(const act8_t *xq, int64_t m, int mrows, int64_t K, const weights_t *w, const float *bias,
                      int64_t n, float *y, int64_t ldy, int accumulate, const int8_t *ahead) {
    const int8_t *p = (const int8_t *)(w->weight + n * w->row_bytes);
    const int8_t *values = xq->values + m * K, *magnitudes = xq->magnitudes + m * K;
    const int64_t blocks = K / QBLOCK;
    const int16_t *multipliers = xq->multipliers + m * blocks;
    __m256i acc[MTILE][ROWS];
    for (int i = 0; i < MTILE; i++)
        for (int r = 0; r < ROWS; r++) acc[i][r] = _mm256_setzero_si256();
    int64_t k = 0, b = 0;
#if W8A8_AVX512
    __m512i wide[MTILE][ROWS];
    for (int i = 0; i < MTILE; i++)
        for (int r = 0; r < ROWS; r++) wide[i][r] = _mm512_setzero_si512();
    for (; k + 2 * QBLOCK <= K; k += 2 * QBLOCK, b += 2) {
        __m512i multiplier[MTILE], magnitude[MTILE];
        __mmask64 negative[MTILE];
        for (int i = 0; i < mrows; i++) {
            multiplier[i] = multipliers2(multipliers + i * blocks + b);
            magnitude[i] = _mm512_loadu_si512(magnitudes + i * K + k);
            negative[i] = _mm512_movepi8_mask(_mm512_loadu_si512(values + i * K + k));
        }
        for (int r = 0; r < ROWS; r++) {
            __m512i wv = _mm512_loadu_si512(p + r * w->row_bytes + k);
            if (ahead) _mm_prefetch((const char *)(ahead + r * w->row_bytes + k), _MM_HINT_T0);
            for (int i = 0; i < mrows; i++)
                wide[i][r] = block_dot2(wide[i][r], magnitude[i], negative[i], wv, multiplier[i]);
        }
    }
    for (int i = 0; i < mrows; i++)
        for (int r = 0; r < ROWS; r++) acc[i][r] = halves_sum(wide[i][r]);
#endif
    for (; k < K; k += QBLOCK, b++) {  /* every block on the avx2 path; an odd last block on the avx512 one */
        __m256i multiplier[MTILE];
        for (int i = 0; i < mrows; i++) multiplier[i] = _mm256_set1_epi16(multipliers[i * blocks + b]);
        for (int r = 0; r < ROWS; r++) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)(p + r * w->row_bytes + k));
            if (ahead && (k & 63) == 0) _mm_prefetch((const char *)(ahead + r * w->row_bytes + k), _MM_HINT_T0);
            for (int i = 0; i < mrows; i++)
                acc[i][r] = _mm256_add_epi32(acc[i][r], block_dot(magnitudes + i * K + k, values + i * K + k, wv,
                                                                  multiplier[i]));
        }
    }
    for (int i = 0; i < mrows; i++) {
        __m128 dots = hsum4(_mm256_cvtepi32_ps(acc[i][0]), _mm256_cvtepi32_ps(acc[i][1]),
                            _mm256_cvtepi32_ps(acc[i][2]), _mm256_cvtepi32_ps(acc[i][3]));
        store4(y + i * ldy + n, _mm_mul_ps(dots, _mm_set1_ps(xq->row_scales[m + i])), w, W8A8, bias, n, accumulate);
    }
}

INLINE void w8a8_block_tiled(const act8_t *xq, int64_t m0, int64_t M, int64_t K, const weights_t *w,
                             const float *bias, int64_t n, int64_t N, float *y, int64_t ldy, int accumulate) {
    int64_t m = 0;
    /* the first tile asks for the block PREFETCH_BLOCKS on, a line per row per step (see prefetch_row) */
    int64_t next = n + PREFETCH_BLOCKS * ROWS;
    const int8_t *ahead = next < N ? (const int8_t *)(w->weight + next * w->row_bytes) : NULL;
    for (; m + MTILE <= M; m += MTILE, ahead = NULL)
        w8a8_tile(xq, m0 + m, MTILE, K, w, bias, n, y + m * ldy, ldy, accumulate, ahead);
    if (M - m == 3) w8a8_tile(xq, m0 + m, 3, K, w, bias, n, y + m * ldy, ldy, accumulate, ahead);
    if (M - m == 2) w8a8_tile(xq, m0 + m, 2, K, w, bias, n, y + m * ldy, ldy, accumulate, ahead);
    if (M - m == 1) w8a8_tile(xq, m0 + m, 1, K, w, bias, n, y + m * ldy, ldy, accumulate, ahead);
}

/* ---- one pass over W, specialised per format --------------------------------------------------------- */

/* The rows of W this thread owns, for every panel of x. Called inside a parallel region with a literal
 * format, so each format gets its own fully specialised loop; returns after the threads' closing barrier.
 * `scratch`: this thread's ROWS * K floats (M >= 2, INT8/INT4; grouped INT8 on the bf16 path at every M);
 * INT4 with M == 1 needs w->xsum; W8A8 needs `xq`, room for x quantized (shared by the threads), and so does
 * grouped INT8 on the bf16 path (x in bf16). */
INLINE void run(const float *x, int64_t M, int64_t K, int64_t N, const weights_t *w, int format,
                const float *bias, float *y, float *scratch, const act8_t *xq, int accumulate) {
    uint16_t *x_bf16 = bf16_tiles(format, w) ? (uint16_t *)xq->values : NULL;  /* NULL off the bf16 path */
    if (format == W8A8) quantize_rows(x, M, K, xq);
#if BF16_TILES
    if (x_bf16) bf16_rows(x, M, K, x_bf16);
#endif
    for (int64_t m0 = 0; m0 < M; m0 += MPANEL) {
        int64_t rows = M - m0 < MPANEL ? M - m0 : MPANEL;
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n += ROWS) {
#if BF16_TILES
            if (x_bf16) {
                block_tiled_bf16(x_bf16 + m0 * K, rows, K, w, bias, n, N, y + m0 * N, N, (uint16_t *)scratch,
                                 accumulate);
                continue;
            }
#endif
            if (format == W8A8) {
                if (M == 1) w8a8_block_gemv(xq, K, w, bias, n, y, accumulate);
                else w8a8_block_tiled(xq, m0, rows, K, w, bias, n, N, y + m0 * N, N, accumulate);
            } else if (M == 1) block_gemv(x, K, w, format, bias, n, y, accumulate);
            else if (format == INT8 && M <= SMALL_M_MAX && w->groups)
                block_int8_small(x, M, K, w, bias, n, y, N, accumulate, 1);
            else if (format == INT8 && M <= SMALL_M_MAX)
                block_int8_small(x, M, K, w, bias, n, y, N, accumulate, 0);
            else block_tiled(x + m0 * K, rows, K, w, format, bias, n, N, y + m0 * N, N, scratch, accumulate);
        }
    }
}

#endif
