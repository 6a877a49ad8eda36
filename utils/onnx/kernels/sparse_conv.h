/* What the fp32 kernels (sparse_conv.c) and the int8 kernels (sparse_qconv.c) share: the tile, the activations, and
 * the helpers that write a tile's sums to the output. */
#ifndef SPARSE_CONV_H
#define SPARSE_CONV_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <immintrin.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef TILE
#define TILE 64          /* grid positions per tile: 4 AVX-512 or 8 AVX2 accumulators */
#endif

/* Loops over a tile's vectors fully unrolled: the accumulators then live in registers. Left to itself gcc kept the
 * arrays on the stack (a store and reload of every accumulator per output row). bench/sparse_kernels.py builds
 * -DUNROLL= (rolled) as a variant to measure it. */
#ifndef UNROLL
#define UNROLL _Pragma("GCC unroll 16")
#endif

enum { ACT_NONE = 0, ACT_RELU = 1, ACT_SILU = 2 };

/* exp(x) in plain branch-free C that the compiler vectorises (a scalar expf per output cost as much as the
 * multiply-adds of a sparse 1x1 layer): 2^n * p(r) with n = round(x / ln 2), r = x - n ln 2 in two parts, and a
 * degree-6 polynomial for e^r on |r| <= ln2/2; relative error about 2e-7 (tests compare with torch's SiLU). */
static inline float exp_vectorisable(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = floorf(x * 1.44269504089f + 0.5f);
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* SiLU on vectors, the same polynomial as exp_vectorisable: x / (1 + e^-x), 2^n applied by vscalefps (AVX-512)
 * or by building the exponent bits (AVX2; n stays in [-126, 127] after the clamp). */
__attribute__((target("avx512f")))
static inline __m512 silu_avx512(__m512 x) {
    const __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), x), _mm512_set1_ps(-87.0f)),
                                   _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(1.44269504089f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), t);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512 e = _mm512_scalef_ps(p, n);
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

__attribute__((target("avx2,fma")))
static inline __m256 silu_avx2(__m256 x) {
    const __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), x), _mm256_set1_ps(-87.0f)),
                                   _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(1.44269504089f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), t);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

/* How a layer call's work is split between threads (spconv_run and spq_run): items of (image, tile of TILE grid
 * positions, block of output channels); output channels are split into blocks only when there are too few tiles
 * for the threads. `big`: the output goes around the caches (stream stores); `room`: the positions a tile may fill
 * in each output (and residual) plane. */
typedef struct {
    int64_t grid, items, room;
    int tiles, blocks, per_block, big;
} tile_plan;

/* One item of a plan: image n, the tile starting at grid position q0, output channels c0 .. c1 - 1. */
typedef struct {
    int n, c0, c1;
    int64_t q0;
} tile_item;

tile_plan spconv_plan(int images, int ho, int wq, int co, int threads, int64_t y_plane, const float *res,
                      int64_t res_plane);

static inline tile_item spconv_item(const tile_plan *p, int64_t item, int co) {
    tile_item it;
    const int b = (int)(item % p->blocks);
    it.n = (int)(item / ((int64_t)p->tiles * p->blocks));
    it.q0 = (int64_t)((item / p->blocks) % p->tiles) * TILE;
    it.c0 = b * p->per_block;
    it.c1 = (b + 1) * p->per_block < co ? (b + 1) * p->per_block : co;
    return it;
}

/* Helpers of sparse_conv.c the int8 kernels use too (documented there). */
void spconv_prepare_row(const float *src, float *drow, int r, int h, int w, int s, int b, int pl, int wq);
void spconv_store_tile(const float *acc, int64_t q0, int64_t grid, int wq, int wo, float *yc, const float *rc,
                       float bc, int act);
__attribute__((target("avx512f")))
void spconv_store_packed_avx512(const float *acc, const __mmask16 *masks, const int64_t *dest, float *yc,
                                const float *rc, float bias, int act);
void spconv_tile_masks(int64_t q0, int64_t grid, int wq, int wo, __mmask16 *masks, int64_t *dest);
int spconv_has_avx512(int isa);

#endif
