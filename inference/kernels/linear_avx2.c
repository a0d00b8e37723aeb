/*
 * y[M, N] = x[M, K] @ W[N, K]^T (+ bias) for small M, with W stored as float32, int8 or int4 and decoded
 * inside the matmul (x86-64, AVX2 + FMA + F16C, OpenMP). Built and loaded by inference/kernels/__init__.py.
 *
 * Weight formats (row-major, one row per output feature):
 *   F32   float32 [N, K]
 *   INT8  int8 [N, K] with a float32 scale per row (groups == 0; applied to the dot product) or per
 *         (row, group) of group_size values: W = q * scale
 *   INT4  two 4-bit values per byte, K padded to the group size; in each block of 32 values, byte i holds
 *         value i in its low nibble and value i + 16 in its high nibble; per (row, group) float32 scale and
 *         min: W = q * scale + min
 *
 * Work split: the rows of W in blocks of ROWS, spread over the OpenMP threads (one pass over W in total).
 *   M <= 2: each block's weights are decoded in registers and multiplied with the one or two rows of x.
 *   M >= 3: each block is decoded once into a per-thread float32 scratch (L1/L2 resident), then multiplied
 *           with x in tiles of MTILE rows: 12 accumulators, FMA-bound.
 * x is processed in panels of at most MPANEL rows, so a panel of x stays in L2 while W streams past it.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#define INLINE static inline __attribute__((always_inline))

#define ROWS 4
#define MTILE 3
#define MPANEL 48

enum format { F32 = 0, INT8 = 1, INT4 = 2 };

typedef struct {
    int format;
    const void *weight;
    int64_t row_bytes; /* bytes from one row of W to the next */
    const float *scales; /* INT8: [N] or [N, groups]; INT4: [N, groups] */
    const float *mins;   /* INT4: [N, groups] */
    int64_t groups;      /* groups per row; 0 = one INT8 scale per row */
    int group_shift;     /* log2(group size) */
} weights_t;

/* ---- decoding 8 weights of one row, starting at column k (k % 8 == 0) ---------------------------------- */

INLINE __m256 decode8(const weights_t *w, int format, int64_t row, int64_t k) {
    const uint8_t *base = (const uint8_t *)w->weight + row * w->row_bytes;
    if (format == F32) return _mm256_loadu_ps((const float *)base + k);
    if (format == INT8) {
        __m128i q = _mm_loadl_epi64((const __m128i *)(base + k));
        __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
        if (!w->groups) return v;
        return _mm256_mul_ps(v, _mm256_broadcast_ss(w->scales + row * w->groups + (k >> w->group_shift)));
    }
    /* INT4: block of 32 values = 16 bytes; part 0..3 of the block = 8 values each */
    int64_t block = k >> 5, part = (k >> 3) & 3;
    const uint8_t *bytes = base + block * 16 + (part & 1) * 8;
    __m128i q = _mm_loadl_epi64((const __m128i *)bytes);
    if (part >= 2) q = _mm_srli_epi16(q, 4);
    q = _mm_and_si128(q, _mm_set1_epi8(0x0F));
    int64_t group = k >> w->group_shift;
    __m256 scale = _mm256_broadcast_ss(w->scales + row * w->groups + group);
    __m256 min = _mm256_broadcast_ss(w->mins + row * w->groups + group);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)), scale, min);
}

/* Four horizontal sums at once: (sum a, sum b, sum c, sum d). */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* Row scale (INT8) and bias for ROWS outputs starting at n, applied to their four dot products. */
static inline void store4(float *y, __m128 dots, const weights_t *w, const float *bias, int64_t n) {
    if (w->format == INT8 && !w->groups) dots = _mm_mul_ps(dots, _mm_loadu_ps(w->scales + n));
    if (bias) dots = _mm_add_ps(dots, _mm_loadu_ps(bias + n));
    _mm_storeu_ps(y, dots);
}

/* ---- M <= 2: decode in registers --------------------------------------------------------------------- */

INLINE void block_direct(const float *x, int mrows, int64_t K, const weights_t *w, int format,
        const float *bias, int64_t n, float *y, int64_t ldy) {
    __m256 acc[2][ROWS];
    for (int m = 0; m < 2; m++)
        for (int r = 0; r < ROWS; r++) acc[m][r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
        __m256 x0 = _mm256_loadu_ps(x + k);
        __m256 x1 = mrows == 2 ? _mm256_loadu_ps(x + K + k) : x0;
        for (int r = 0; r < ROWS; r++) {
            __m256 wv = decode8(w, format, n + r, k);
            acc[0][r] = _mm256_fmadd_ps(x0, wv, acc[0][r]);
            if (mrows == 2) acc[1][r] = _mm256_fmadd_ps(x1, wv, acc[1][r]);
        }
    }
    for (int m = 0; m < mrows; m++)
        store4(y + m * ldy + n, hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]), w, bias, n);
}

/* ---- M >= 3: decode once into scratch, then an fp32 micro-kernel ------------------------------------- */

INLINE void decode_block(const weights_t *w, int format, int64_t n, int64_t K, float *scratch) {
    for (int r = 0; r < ROWS; r++)
        for (int64_t k = 0; k < K; k += 8) _mm256_storeu_ps(scratch + r * K + k, decode8(w, format, n + r, k));
}

INLINE void tile(const float *x, int mrows, int64_t K,
        const float *block, const weights_t *w, const float *bias, int64_t n, float *y, int64_t ldy) {
    __m256 acc[MTILE][ROWS];
    for (int m = 0; m < MTILE; m++)
        for (int r = 0; r < ROWS; r++) acc[m][r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
        __m256 xv[MTILE];
        for (int m = 0; m < MTILE; m++) xv[m] = m < mrows ? _mm256_loadu_ps(x + m * K + k) : xv[0];
        for (int r = 0; r < ROWS; r++) {
            __m256 wv = _mm256_loadu_ps(block + r * K + k);
            for (int m = 0; m < MTILE; m++)
                if (m < mrows) acc[m][r] = _mm256_fmadd_ps(xv[m], wv, acc[m][r]);
        }
    }
    for (int m = 0; m < mrows; m++)
        store4(y + m * ldy + n, hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]), w, bias, n);
}

static void block_tiled(const float *x, int64_t M, int64_t K, const float *block, const weights_t *w,
                        const float *bias, int64_t n, float *y, int64_t ldy) {
    int64_t m = 0;
    for (; m + MTILE <= M; m += MTILE) tile(x + m * K, MTILE, K, block, w, bias, n, y + m * ldy, ldy);
    if (M - m == 2) tile(x + m * K, 2, K, block, w, bias, n, y + m * ldy, ldy);
    if (M - m == 1) tile(x + m * K, 1, K, block, w, bias, n, y + m * ldy, ldy);
}

/* ---- one pass over W, specialised per format --------------------------------------------------------- */

/* The rows of W this thread owns, for every panel of x. Called inside a parallel region with a literal
 * format, so each format gets its own fully specialised loop. */
INLINE void run(const float *x, int64_t M, int64_t K, int64_t N, const weights_t *w, int format,
                const float *bias, float *y, float *scratch) {
    for (int64_t m0 = 0; m0 < M; m0 += MPANEL) {
        int64_t rows = M - m0 < MPANEL ? M - m0 : MPANEL;
        const float *xp = x + m0 * K;
        float *yp = y + m0 * N;
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n += ROWS) {
            if (rows == 1) block_direct(xp, 1, K, w, format, bias, n, yp, N);
            else if (rows == 2) block_direct(xp, 2, K, w, format, bias, n, yp, N);
            else {
                decode_block(w, format, n, K, scratch);
                block_tiled(xp, rows, K, scratch, w, bias, n, yp, N);
            }
        }
    }
}

#define DEFINE_RUN(name, FORMAT)                                                                          \
    static void name(const float *x, int64_t M, int64_t K, int64_t N, const weights_t *w,                \
                     const float *bias, float *y, float *scratch) {                                       \
        _Pragma("omp parallel")                                                                           \
        run(x, M, K, N, w, FORMAT, bias, y, scratch ? scratch + (int64_t)omp_get_thread_num() * ROWS * K \
                                                    : NULL);                                              \
    }
DEFINE_RUN(run_f32, F32)
DEFINE_RUN(run_int8, INT8)
DEFINE_RUN(run_int4, INT4)

/* ---- entry point ------------------------------------------------------------------------------------ */

/* Requires N % ROWS == 0, K % 8 == 0 (K % 32 == 0 for INT4) and a power-of-two group size; the caller
 * checks. Returns 0, or -1 when the scratch allocation fails. */
int opslab_linear(const float *x, int64_t M, int64_t K, int64_t N, int format, const void *weight,
                  int64_t row_bytes, const float *scales, const float *mins, int64_t groups, int64_t group_size,
                  const float *bias, float *y) {
    weights_t w = {format, weight, row_bytes, scales, mins, groups, group_size ? __builtin_ctzll((uint64_t)group_size) : 0};
    float *scratch = NULL;
    if (M >= 3) {
        size_t bytes = ((size_t)omp_get_max_threads() * ROWS * K * sizeof(float) + 63) / 64 * 64;
        if (!(scratch = aligned_alloc(64, bytes))) return -1;
    }
    if (format == F32) run_f32(x, M, K, N, &w, bias, y, scratch);
    else if (format == INT8) run_int8(x, M, K, N, &w, bias, y, scratch);
    else run_int4(x, M, K, N, &w, bias, y, scratch);
    free(scratch);
    return 0;
}
