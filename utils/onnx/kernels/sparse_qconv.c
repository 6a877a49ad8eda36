/* Sparse INT8 convolution for QDQ models (QuantizeLinear -> DequantizeLinear around every convolution): the int8
 * weights kept as blocks of 4 input channels (one int32 word of 4 signed bytes per output channel, input-channel
 * group and kernel position), only blocks with a nonzero byte stored, each multiplied with VNNI's 4-byte dot product.
 *
 * Layout. As the fp32 kernels' (sparse_conv.c), with the input quantized while it is prepared: uint8 values
 * clamp(round(x / scale) + zero_point, 0, 255) (ONNX QuantizeLinear; an int8 activation type is the same shifted by
 * 128), and the 4 channels 4g..4g+3 of one position packed into one uint32 word, so phase p, group g holds planes of
 * Hq x Wq words. A block (co, g, kh, kw) then reads the words at q + offset(g, kh, kw) for a tile of grid positions
 * q, and one vpdpbusd adds, for 16 positions at once, the 4 channels' products to their int32 sums. Padding and the
 * channels past C are the zero point (zero once dequantized), so every sum is off by zero_point x (the channel's
 * weight sum) alone, subtracted per output channel (`comp`). Then, per output: dequantized (x scale x weight scale,
 * + bias), the output's own QuantizeLinear -> DequantizeLinear when the graph has one (round, clamp, back to fp32),
 * the residual and the activation, stored fp32 -- the next layer's preparation quantizes with its own scale, so the
 * results are the QDQ graph's, up to fp32 rounding.
 *
 * Why blocks of 4 input channels: VNNI's dot product sums 4 adjacent bytes of one lane, so the 4 weights of a lane
 * must share an output channel and position. A block-4 mask (the recipes' `block4`, DeepSparse's VNNI layout) fills
 * every block; an unstructured one at 90% leaves about a third of the blocks with a nonzero (1 - 0.9^4), each doing
 * the work of 4 weights: about the fp32 kernels' count of vector operations, on inputs 4x smaller.
 */
#include "sparse_conv.h"

/* dst[j] = q(r[0][j]) | q(r[1][j]) << 8 | q(r[2][j]) << 16 | q(r[3][j]) << 24, q(v) = clamp(rne(v / scale) + zp).
 * Here and in the output's quantizer v / scale is v x (1 / scale): a vector division cost 40% of a 1x1 layer's
 * outputs, and the two differ only where v / scale lies within a rounding error of a half step -- where the graph's
 * own fp32 sums already fall either way (a value then moves by one step; tests bound it). */
__attribute__((target("avx512f")))
static void pack_avx512(float *const r[4], int len, float scale, float zp, uint32_t *dst) {
    const __m512 s = _mm512_set1_ps(1.0f / scale), z = _mm512_set1_ps(zp);
    const __m512 lo = _mm512_setzero_ps(), hi = _mm512_set1_ps(255.0f);
    for (int j = 0; j < len; j += 16) {
        const __mmask16 m = len - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - j)) - 1u);
        __m512i word = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, r[k] + j), s);
            v = _mm512_add_ps(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), z);
            v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
            word = _mm512_or_si512(word, _mm512_slli_epi32(_mm512_cvttps_epi32(v), 8 * k));
        }
        _mm512_mask_storeu_epi32(dst + j, m, word);
    }
}

static inline uint32_t quantize(float v, float inverse, float zp) {
    float q = nearbyintf(v * inverse) + zp;
    q = q > 0.0f ? q : 0.0f;
    return (uint32_t)(q < 255.0f ? q : 255.0f);
}

__attribute__((target_clones("avx2", "default")))
static void pack_generic(float *const r[4], int len, float scale, float zp, uint32_t *dst) {
    scale = 1.0f / scale;
    for (int j = 0; j < len; j++)
        dst[j] = quantize(r[0][j], scale, zp) | quantize(r[1][j], scale, zp) << 8 |
                 quantize(r[2][j], scale, zp) << 16 | quantize(r[3][j], scale, zp) << 24;
}

/* The int8 kernels' instruction set here: 2 AVX-512 with VNNI, 0 portable C (capped by `isa` as spconv_isa). */
int spq_isa(int isa) { return spconv_has_avx512(isa) && __builtin_cpu_supports("avx512vnni") ? 2 : 0; }

/* spconv_prepare's zero-padding and phase split, quantized and packed: out[n, (p * groups + g) * hq * wq + i * wq +
 * j] holds channels 4g..4g+3 of phase p's position (i, j) (x's padding and channels past c: 0.0, i.e. the zero point);
 * each image's block is out_stride words, its tail zeroed. Split by rows as spconv_prepare. */
void spq_prepare(const float *x, int64_t x_stride, int64_t x_plane, int images, int c, int h, int w, int s, int pt,
                 int pl, int hq, int wq, int phases, float scale, int zp, uint32_t *out, int64_t out_stride,
                 int threads, int isa) {
    const int groups = (c + 3) / 4, row_floats = (wq + 15) / 16 * 16;
    const int64_t plane = (int64_t)hq * wq, used = (int64_t)phases * groups * plane;
    const int by_rows = wq >= 16;
    const int64_t jobs = (int64_t)images * (by_rows ? hq : groups);
    void (*pack)(float *const[4], int, float, float, uint32_t *) = spq_isa(isa) ? pack_avx512 : pack_generic;
    if (s == 1 && pt == 0 && pl == 0 && hq == h && wq == w) {
        /* the grid is the input's planes (an unpadded stride-1 layer): each group's 4 planes packed in one pass, in
         * chunks of a few thousand positions so both threads have work */
        const int64_t chunk = 4096, chunks = (plane + chunk - 1) / chunk;
        float *zeros = calloc((size_t)(chunk < plane ? chunk : plane), sizeof(float));
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t job = 0; job < (int64_t)images * groups * chunks; job++) {
            const int n = (int)(job / ((int64_t)groups * chunks)), g = (int)(job / chunks % groups);
            const int64_t j0 = job % chunks * chunk, len = plane - j0 < chunk ? plane - j0 : chunk;
            float *r[4];
            for (int k = 0; k < 4; k++)
                r[k] = 4 * g + k < c ? (float *)x + n * x_stride + (int64_t)(4 * g + k) * x_plane + j0 : zeros;
            pack(r, (int)len, scale, (float)zp, out + n * out_stride + g * plane + j0);
        }
        free(zeros);
        for (int n = 0; n < images; n++) memset(out + n * out_stride + used, 0, sizeof(uint32_t) * (out_stride - used));
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        float *rows = aligned_alloc(64, sizeof(float) * 4 * (size_t)row_floats);
        float *const r[4] = {rows, rows + row_floats, rows + 2 * row_floats, rows + 3 * row_floats};
#pragma omp for schedule(static)
        for (int64_t job = 0; job < jobs; job++) {
            const int n = (int)(by_rows ? job / hq : job / groups);
            const int i0 = by_rows ? (int)(job % hq) : 0, i1 = by_rows ? i0 + 1 : hq;
            const int g0 = by_rows ? 0 : (int)(job % groups), g1 = by_rows ? groups : g0 + 1;
            for (int p = 0; p < phases; p++) {
                const int a = p / s, b = p % s;
                uint32_t *dst = out + n * out_stride + (int64_t)p * groups * plane;
                for (int g = g0; g < g1; g++)
                    for (int i = i0; i < i1; i++) {
                        for (int k = 0; k < 4; k++) {
                            const int ci = 4 * g + k;
                            if (ci < c)
                                spconv_prepare_row(x + n * x_stride + (int64_t)ci * x_plane, r[k], a + s * i - pt, h,
                                                   w, s, b, pl, wq);
                            else
                                memset(r[k], 0, sizeof(float) * wq);
                        }
                        pack(r, wq, scale, (float)zp, dst + g * plane + (int64_t)i * wq);
                    }
            }
        }
        free(rows);
    }
    for (int n = 0; n < images; n++) memset(out + n * out_stride + used, 0, sizeof(uint32_t) * (out_stride - used));
}

/* What turns a tile's int32 sums into outputs for one output channel: v = (sum - comp) x mult + add, then with the
 * output's quantizer v = clamp(round(v), lo, hi) x out_scale -- QuantizeLinear -> DequantizeLinear with the output
 * scale folded into mult and add and the zero point into the bounds (-zp, 255 - zp), and a ReLU with nothing to add
 * before it folded into lo (0): seven vector operations an output, where the written-out form took twelve (a 1x1
 * layer with 64 input channels spends more on them than on its dot products). */
typedef struct {
    float mult;           /* input scale x weight scale (/ output scale) */
    float add;            /* bias (/ output scale) */
    int32_t comp;         /* zero point x the weights' sum */
    float lo, hi;
    float out_scale;      /* > 0: the output's QuantizeLinear -> DequantizeLinear */
} qepilogue;

/* One output channel over a tile, AVX-512 VNNI: two blocks a step into separate sums (as row_tile_avx512). With
 * `dst`: dequantized, fake-quantized, + `res`, activated and stored there; without: dequantized and fake-quantized
 * into `acc` for the caller's store (residual and activation after). */
__attribute__((target("avx512f,avx512vnni")))
static void qtile_avx512(const uint32_t *x, const int32_t *off, const int32_t *wts, int n, qepilogue e, float *acc,
                         float *dst, const float *res, int act, int stream) {
    enum { V = TILE / 16 };
    __m512i a[V], b2[V];
    UNROLL for (int i = 0; i < V; i++) a[i] = b2[i] = _mm512_setzero_si512();
    int j = 0;
    for (; j + 2 <= n; j += 2) {
        const __m512i w0 = _mm512_set1_epi32(wts[j]), w1 = _mm512_set1_epi32(wts[j + 1]);
        const uint32_t *p0 = x + off[j], *p1 = x + off[j + 1];
        UNROLL for (int i = 0; i < V; i++) {
            a[i] = _mm512_dpbusd_epi32(a[i], _mm512_loadu_si512(p0 + 16 * i), w0);
            b2[i] = _mm512_dpbusd_epi32(b2[i], _mm512_loadu_si512(p1 + 16 * i), w1);
        }
    }
    if (j < n) {
        const __m512i w = _mm512_set1_epi32(wts[j]);
        const uint32_t *p = x + off[j];
        UNROLL for (int i = 0; i < V; i++) a[i] = _mm512_dpbusd_epi32(a[i], _mm512_loadu_si512(p + 16 * i), w);
    }
    const __m512 mult = _mm512_set1_ps(e.mult), add = _mm512_set1_ps(e.add), zero = _mm512_setzero_ps();
    const __m512 lo = _mm512_set1_ps(e.lo), hi = _mm512_set1_ps(e.hi), so = _mm512_set1_ps(e.out_scale);
    const __m512i comp = _mm512_set1_epi32(e.comp);
    UNROLL for (int i = 0; i < V; i++) {
        const __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(a[i], b2[i]), comp);
        __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), mult, add);
        if (e.out_scale > 0.0f) {
            v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm512_mul_ps(_mm512_min_ps(_mm512_max_ps(v, lo), hi), so);
        }
        if (!dst) {
            _mm512_store_ps(acc + 16 * i, v);
            continue;
        }
        if (res) v = _mm512_add_ps(v, _mm512_loadu_ps(res + 16 * i));
        if (act == ACT_RELU) v = _mm512_max_ps(v, zero);
        else if (act == ACT_SILU) v = silu_avx512(v);
        if (stream) _mm512_stream_ps(dst + 16 * i, v);
        else _mm512_storeu_ps(dst + 16 * i, v);
    }
}

/* The same in portable C (vectorised by the compiler where it can): machines without AVX-512 VNNI. */
__attribute__((target_clones("avx2", "default")))
static void qtile_generic(const uint32_t *x, const int32_t *off, const int32_t *wts, int n, qepilogue e, float *acc,
                          float *dst, const float *res, int act, int stream) {
    (void)stream;
    int32_t sum[TILE];
    for (int i = 0; i < TILE; i++) sum[i] = 0;
    for (int j = 0; j < n; j++) {
        const uint32_t w = (uint32_t)wts[j];
        const int32_t w0 = (int8_t)(w & 255u), w1 = (int8_t)((w >> 8) & 255u);
        const int32_t w2 = (int8_t)((w >> 16) & 255u), w3 = (int8_t)(w >> 24);
        const uint32_t *p = x + off[j];
        for (int i = 0; i < TILE; i++) {
            const uint32_t v = p[i];
            sum[i] += (int32_t)(v & 255u) * w0 + (int32_t)((v >> 8) & 255u) * w1 +
                      (int32_t)((v >> 16) & 255u) * w2 + (int32_t)(v >> 24) * w3;
        }
    }
    float *out = dst ? dst : acc;
    for (int i = 0; i < TILE; i++) {
        float v = (float)(sum[i] - e.comp) * e.mult + e.add;
        if (e.out_scale > 0.0f) {
            v = nearbyintf(v);
            v = (v > e.lo ? (v < e.hi ? v : e.hi) : e.lo) * e.out_scale;
        }
        if (dst) {
            if (res) v += res[i];
            if (act == ACT_RELU) v = v > 0.0f ? v : 0.0f;
            else if (act == ACT_SILU) v = v / (1.0f + exp_vectorisable(-v));
        }
        out[i] = v;
    }
}

typedef void (*qtile_fn)(const uint32_t *, const int32_t *, const int32_t *, int, qepilogue, float *, float *,
                         const float *, int, int);

/* y[n, co] = act(fq(scale[co] * (sum of the blocks' dot products - comp[co]) + bias[co]) (+ res[n, co])), fq the
 * output's QuantizeLinear -> DequantizeLinear (out_scale > 0) or nothing; x: prepared words (spq_prepare), x_stride
 * apart, with a tile + the largest offset of slack; the rest as spconv_run (row_ptr over output channels into off
 * and wts, output and residual planes, threads). */
void spq_run(const uint32_t *x, int64_t x_stride, int images, const int32_t *row_ptr, const int32_t *off,
             const int32_t *wts, int co, const float *scale, const int32_t *comp, const float *bias, float out_scale,
             float out_zp, int ho, int wq, int wo, float *y, int64_t y_stride, int64_t y_plane, const float *res,
             int64_t res_stride, int64_t res_plane, int act, int threads, int isa) {
    const int wide = spq_isa(isa) == 2;
    const float inverse = out_scale > 0.0f ? 1.0f / out_scale : 0.0f;
    const int fold_relu = out_scale > 0.0f && act == ACT_RELU && !res;     /* max(v, 0) is then lo = 0 */
    const int tile_act = fold_relu ? ACT_NONE : act;
    const qtile_fn tile_fn = wide ? qtile_avx512 : qtile_generic;
    const tile_plan plan = spconv_plan(images, ho, wq, co, threads, y_plane, res, res_plane);
    const int64_t grid = plan.grid, room = plan.room;
    const int big = plan.big;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t item = 0; item < plan.items; item++) {
            float acc[TILE] __attribute__((aligned(64)));
            const tile_item it = spconv_item(&plan, item, co);
            const int n = it.n;
            const int64_t q0 = it.q0;
            const uint32_t *xt = x + n * x_stride + q0;
            const int direct = wq == wo && q0 + TILE <= room;
            const int packed = !direct && wide;
            __mmask16 masks[TILE / 16];
            int64_t dest[TILE / 16];
            if (packed) spconv_tile_masks(q0, grid, wq, wo, masks, dest);
            for (int c = it.c0; c < it.c1; c++) {
                float *yc = y + n * y_stride + c * y_plane;
                const float *rc = res ? res + n * res_stride + c * res_plane : 0;
                const float bc = bias ? bias[c] : 0.0f, fold = out_scale > 0.0f ? inverse : 1.0f;
                const qepilogue e = {scale[c] * fold, bc * fold, comp[c], fold_relu ? 0.0f : -out_zp,
                                     255.0f - out_zp, out_scale};
                const int stream = big && direct && ((uintptr_t)(yc + q0) & 63) == 0;
                tile_fn(xt, off + row_ptr[c], wts + row_ptr[c], row_ptr[c + 1] - row_ptr[c], e, acc,
                        direct ? yc + q0 : 0, direct && rc ? rc + q0 : 0, tile_act, stream);
                if (packed) spconv_store_packed_avx512(acc, masks, dest, yc, rc, 0.0f, tile_act);
                else if (!direct) spconv_store_tile(acc, q0, grid, wq, wo, yc, rc, 0.0f, tile_act);
            }
        }
        if (big) _mm_sfence();
    }
}
