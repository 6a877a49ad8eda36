/* Sparse convolution for CPU inference: the weights of a layer are kept compressed (per output channel, the
 * nonzero values and, for each, the offset of the input value it multiplies), and only nonzeros are multiplied.
 *
 * Layout. The input of a k x k convolution with stride s is "prepared" once per layer call: padded and split
 * into s*s phases (phase (a, b) holds padded rows a, a+s, ... and columns b, b+s, ...), each phase a stack of
 * C planes of Hq x Wq values. Output pixel (oh, ow) then reads, for weight (ci, kh, kw),
 *     phase (kh % s, kw % s), plane ci, at (oh + kh / s) * Wq + (ow + kw / s)
 * so over the output grid flattened with the row width Wq (q = oh * Wq + ow), every weight reads the prepared
 * input at q + offset(ci, kh, kw): a convolution becomes a sparse matrix (output channels x offsets) times
 * shifted copies of one dense vector, and each nonzero is a run of vector multiply-adds over a tile of q
 * (the 1x1 SpMM of "Fast Sparse ConvNets", generalised to k x k and strides by the offsets). Grid columns
 * ow >= Wo are computed and dropped; tiles past the end read the buffer's slack and are dropped too.
 *
 * Parallel over (image, tile of q, block of output channels). AVX-512 or AVX2+FMA chosen at run time.
 */
#include "sparse_conv.h"

int spconv_tile(void) { return TILE; }

/* Two nonzeros a step, each into its own accumulators (summed at the end): the next multiply-adds need not wait
 * for the last ones' sums (measured 3% faster than one chain on ResNet-50's layers). */
__attribute__((target("avx512f")))
static void row_tile_avx512(const float *x, const int32_t *off, const float *val, int n, float *acc,
                            float *dst, const float *res, float bias, int act, int stream) {
    enum { V = TILE / 16 };
    __m512 a[V], b2[V];
    UNROLL for (int i = 0; i < V; i++) a[i] = b2[i] = _mm512_setzero_ps();
    int j = 0;
    for (; j + 2 <= n; j += 2) {
        const __m512 w0 = _mm512_set1_ps(val[j]), w1 = _mm512_set1_ps(val[j + 1]);
        const float *p0 = x + off[j], *p1 = x + off[j + 1];
        UNROLL for (int i = 0; i < V; i++) {
            a[i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(p0 + 16 * i), a[i]);
            b2[i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(p1 + 16 * i), b2[i]);
        }
    }
    if (j < n) {
        const __m512 w = _mm512_set1_ps(val[j]);
        const float *p = x + off[j];
        UNROLL for (int i = 0; i < V; i++) a[i] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 16 * i), a[i]);
    }
    UNROLL for (int i = 0; i < V; i++) a[i] = _mm512_add_ps(a[i], b2[i]);
    if (!dst && act < 0) {
        UNROLL for (int i = 0; i < V; i++) _mm512_storeu_ps(acc + 16 * i, a[i]);
        return;
    }
    const __m512 b = _mm512_set1_ps(bias), zero = _mm512_setzero_ps();
    if (!dst) {
        dst = acc;
        stream = 0;
    }
    UNROLL for (int i = 0; i < V; i++) {
        __m512 v = _mm512_add_ps(a[i], b);
        if (res) v = _mm512_add_ps(v, _mm512_loadu_ps(res + 16 * i));
        if (act == ACT_RELU) v = _mm512_max_ps(v, zero);
        else if (act == ACT_SILU) v = silu_avx512(v);
        if (stream) _mm512_stream_ps(dst + 16 * i, v);
        else _mm512_storeu_ps(dst + 16 * i, v);
    }
}

__attribute__((target("avx2,fma")))
static void row_tile_avx2(const float *x, const int32_t *off, const float *val, int n, float *acc,
                          float *dst, const float *res, float bias, int act, int stream) {
    __m256 a[TILE / 8];
    UNROLL for (int i = 0; i < TILE / 8; i++) a[i] = _mm256_setzero_ps();
    for (int j = 0; j < n; j++) {
        const __m256 w = _mm256_set1_ps(val[j]);
        const float *p = x + off[j];
        UNROLL for (int i = 0; i < TILE / 8; i++) a[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 8 * i), a[i]);
    }
    if (!dst && act < 0) {
        UNROLL for (int i = 0; i < TILE / 8; i++) _mm256_storeu_ps(acc + 8 * i, a[i]);
        return;
    }
    const __m256 b = _mm256_set1_ps(bias), zero = _mm256_setzero_ps();
    if (!dst) {
        dst = acc;
        stream = 0;
    }
    UNROLL for (int i = 0; i < TILE / 8; i++) {
        __m256 v = _mm256_add_ps(a[i], b);
        if (res) v = _mm256_add_ps(v, _mm256_loadu_ps(res + 8 * i));
        if (act == ACT_RELU) v = _mm256_max_ps(v, zero);
        else if (act == ACT_SILU) v = silu_avx2(v);
        if (stream) _mm256_stream_ps(dst + 8 * i, v);
        else _mm256_storeu_ps(dst + 8 * i, v);
    }
}

static void row_tile_scalar(const float *x, const int32_t *off, const float *val, int n, float *acc,
                            float *dst, const float *res, float bias, int act, int stream) {
    (void)stream;
    for (int i = 0; i < TILE; i++) acc[i] = 0.0f;
    for (int j = 0; j < n; j++) {
        const float w = val[j];
        const float *p = x + off[j];
        for (int i = 0; i < TILE; i++) acc[i] += w * p[i];
    }
    if (!dst && act < 0) return;
    if (!dst) dst = acc;
    for (int i = 0; i < TILE; i++) {
        const float v = acc[i] + bias + (res ? res[i] : 0.0f);
        dst[i] = act == ACT_RELU ? (v < 0.0f ? 0.0f : v) : act == ACT_SILU ? v / (1.0f + exp_vectorisable(-v)) : v;
    }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
static void silu_run(float *d, int len) {
    for (int i = 0; i < len; i++) d[i] = d[i] / (1.0f + exp_vectorisable(-d[i]));
}

/* Write a tile's valid grid positions (columns < wo) to the output, with bias, residual and activation; each
 * row's run is a contiguous loop the compiler vectorises (one clone per instruction set, chosen at load). */
__attribute__((target_clones("avx512f", "avx2", "default")))
void spconv_store_tile(const float *acc, int64_t q0, int64_t grid, int wq, int wo, float *yc, const float *rc,
                       float bc, int act) {
    const int64_t end = q0 + TILE < grid ? q0 + TILE : grid;
    int64_t q = q0;
    while (q < end) {
        const int64_t row = q / wq, col = q - row * wq;
        if (col >= wo) { q = (row + 1) * wq; continue; }
        const int64_t stop = row * wq + wo < end ? row * wq + wo : end;
        const int len = (int)(stop - q);
        const float *a = acc + (q - q0);
        float *d = yc + row * wo + col;
        const float *r = rc ? rc + row * wo + col : 0;
        if (r) for (int i = 0; i < len; i++) d[i] = a[i] + bc + r[i];
        else for (int i = 0; i < len; i++) d[i] = a[i] + bc;
        if (act == ACT_RELU) for (int i = 0; i < len; i++) d[i] = d[i] > 0.0f ? d[i] : 0.0f;
        else if (act == ACT_SILU) silu_run(d, len);
        q = stop;
    }
}

/* A tile that is not contiguous output (junk grid columns, or past the grid's end), AVX-512: the sums in `acc`
 * plus bias (and the residual), activated, then each vector's valid lanes packed together and stored at once --
 * the valid positions of a tile are consecutive in the output, the junk lanes lying between its rows. masks[i]:
 * the valid lanes of vector i, dest[i]: the output index of its first valid lane. */
__attribute__((target("avx512f")))
void spconv_store_packed_avx512(const float *acc, const __mmask16 *masks, const int64_t *dest, float *yc,
                                const float *rc, float bias, int act) {
    const __m512 b = _mm512_set1_ps(bias), zero = _mm512_setzero_ps();
    for (int i = 0; i < TILE / 16; i++) {
        const __mmask16 m = masks[i];
        if (!m) continue;
        const __mmask16 first = (__mmask16)((1u << __builtin_popcount(m)) - 1u);
        __m512 v = _mm512_add_ps(_mm512_load_ps(acc + 16 * i), b);
        if (rc) v = _mm512_add_ps(v, _mm512_maskz_expand_ps(m, _mm512_maskz_loadu_ps(first, rc + dest[i])));
        if (act == ACT_RELU) v = _mm512_max_ps(v, zero);
        else if (act == ACT_SILU) v = silu_avx512(v);
        _mm512_mask_storeu_ps(yc + dest[i], first, _mm512_maskz_compress_ps(m, v));
    }
}

/* For a tile of grid positions from q0: masks[i], the valid lanes (column < wo, inside the grid) of its vector i, and
 * dest[i], the output index of that vector's first valid lane (for spconv_store_packed_avx512). */
void spconv_tile_masks(int64_t q0, int64_t grid, int wq, int wo, __mmask16 *masks, int64_t *dest) {
    for (int i = 0; i < TILE / 16; i++) {
        masks[i] = 0;
        dest[i] = 0;
        for (int l = 15; l >= 0; l--) {
            const int64_t q = q0 + 16 * i + l, row = q / wq, col = q - row * wq;
            if (q < grid && col < wo) {
                masks[i] |= (__mmask16)(1u << l);
                dest[i] = row * wo + col;          /* ends at the first valid lane */
            }
        }
    }
}

/* Accumulate one output channel over a tile; with `dst`, also add bias (and `res`), apply the activation and store
 * there from the registers (a tile of contiguous valid outputs); without, the same into `acc` for store_tile to
 * copy the valid positions (or, with act < 0, the bare sums for store_tile to finish: a residual comes first). */
typedef void (*row_tile_fn)(const float *, const int32_t *, const float *, int, float *, float *, const float *,
                            float, int, int);

/* Outputs larger than this go around the caches (non-temporal stores): a layer's output that cannot stay in the
 * last-level cache anyway costs half the memory traffic so (no read for ownership; bench/sparse_kernels.py compares).
 * A quarter of the L3 this CPU shares (Linux's sysfs; sysconf's figure can be the whole host's in a VM), or 8 MB. */
static int64_t stream_threshold = 0;

static int64_t l3_bytes(void) {
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    long kb = 0;
    char unit = 'K';
    if (f) {
        if (fscanf(f, "%ld%c", &kb, &unit) < 1) kb = 0;
        fclose(f);
    }
    if (kb > 0) return unit == 'M' ? (int64_t)kb << 20 : (int64_t)kb << 10;
    long l3 = -1;
#ifdef _SC_LEVEL3_CACHE_SIZE
    l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return l3 > 0 ? l3 : 0;
}

static int64_t stream_bytes(void) {
    int64_t bytes = stream_threshold;
    if (!bytes) {
        const int64_t l3 = l3_bytes();
        bytes = stream_threshold = l3 > 0 ? l3 / 4 : (int64_t)8 << 20;
    }
    return bytes;
}

/* Set the output size from which stores stream (bytes; 0: back to the default); the previous one is returned. */
int64_t spconv_stream_bytes(int64_t bytes) {
    const int64_t before = stream_bytes();
    stream_threshold = bytes;
    return before;
}

static row_tile_fn pick(int isa) {
    if (isa >= 2 && __builtin_cpu_supports("avx512f")) return row_tile_avx512;
    if (isa >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return row_tile_avx2;
    return row_tile_scalar;
}

/* The instruction set the kernels use here: 2 AVX-512, 1 AVX2+FMA, 0 scalar (capped by `isa`). */
int spconv_isa(int isa) {
    row_tile_fn f = pick(isa);
    return f == row_tile_avx512 ? 2 : f == row_tile_avx2 ? 1 : 0;
}

int spconv_has_avx512(int isa) { return pick(isa) == row_tile_avx512; }

tile_plan spconv_plan(int images, int ho, int wq, int co, int threads, int64_t y_plane, const float *res,
                      int64_t res_plane) {
    tile_plan p;
    p.grid = (int64_t)ho * wq;
    p.tiles = (int)((p.grid + TILE - 1) / TILE);
    p.blocks = 1;
    while ((int64_t)images * p.tiles * p.blocks < 4 * (int64_t)threads && p.blocks * 8 < co) p.blocks *= 2;
    p.per_block = (co + p.blocks - 1) / p.blocks;
    p.items = (int64_t)images * p.tiles * p.blocks;
    p.big = (int64_t)images * co * y_plane * (int64_t)sizeof(float) >= stream_bytes();
    p.room = res && res_plane < y_plane ? res_plane : y_plane;
    return p;
}

/* y[n, co, oh, ow] = act(bias[co] + sum_j val[j] * x[n, off[j] + oh * wq + ow] (+ res[n, co, oh, ow])).
 * x: prepared inputs (x_stride floats apart, each with TILE + max offset slack past the grid);
 * row_ptr: co + 1 entries into off/val; y and res: per image (y_stride / res_stride floats apart) co planes of
 * ho x wo, y_plane / res_plane floats apart (at least ho * wo: the engine pads its planes to cache lines; a tile
 * that fits in the padded plane is stored whole, its lanes past the plane's end into the padding). */
void spconv_run(const float *x, int64_t x_stride, int images, const int32_t *row_ptr, const int32_t *off,
                const float *val, int co, const float *bias, int ho, int wq, int wo, float *y, int64_t y_stride,
                int64_t y_plane, const float *res, int64_t res_stride, int64_t res_plane, int act, int threads,
                int isa) {
    const row_tile_fn tile_fn = pick(isa);
    const tile_plan plan = spconv_plan(images, ho, wq, co, threads, y_plane, res, res_plane);
    const int64_t grid = plan.grid, room = plan.room;
    const int big = plan.big;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t item = 0; item < plan.items; item++) {
            float acc[TILE] __attribute__((aligned(64)));
            const tile_item it = spconv_item(&plan, item, co);
            const int n = it.n, c_end = it.c1;
            const int64_t q0 = it.q0;
            const float *xt = x + n * x_stride + q0;
            /* the whole tile is contiguous output (valid, or padding): the tile function stores it, activated */
            const int direct = wq == wo && q0 + TILE <= room;
            __mmask16 masks[TILE / 16];
            int64_t dest[TILE / 16];
            const int packed = !direct && tile_fn == row_tile_avx512;
            if (packed) spconv_tile_masks(q0, grid, wq, wo, masks, dest);
            for (int c = it.c0; c < c_end; c++) {
                float *yc = y + n * y_stride + c * y_plane;
                const float *rc = res ? res + n * res_stride + c * res_plane : 0;
                const float bc = bias ? bias[c] : 0.0f;
                /* a stream store needs an address aligned to its width (64 bytes covers both) */
                const int stream = big && direct && ((uintptr_t)(yc + q0) & 63) == 0;
                /* not direct: bias and activation still in registers unless a residual is to be added first */
                tile_fn(xt, off + row_ptr[c], val + row_ptr[c], row_ptr[c + 1] - row_ptr[c], acc,
                        direct ? yc + q0 : 0, direct && rc ? rc + q0 : 0, bc,
                        direct || (!rc && !packed) ? act : -1, stream);
                if (packed) spconv_store_packed_avx512(acc, masks, dest, yc, rc, bc, act);
                else if (!direct) {
                    if (rc) spconv_store_tile(acc, q0, grid, wq, wo, yc, rc, bc, act);
                    else spconv_store_tile(acc, q0, grid, wq, wo, yc, 0, 0.0f, ACT_NONE);
                }
            }
        }
        if (big) _mm_sfence();    /* this thread's stream stores visible before the next layer reads them */
    }
}

/* out[n, (a * s + b) * c + ci, i, j] = xpad[n, ci, a + s * i, b + s * j] for the input zero-padded by (pt, pl)
 * at the top and left (and as needed at the bottom and right), for the first `phases` phases a * s + b only (the
 * ones some weight reads: a 1x1 stride-2 layer reads phase 0 alone); each image's block is out_stride floats, its
 * tail (slack) zeroed. x: c planes of h x w per image, x_plane floats apart, images x_stride floats apart. */
void spconv_prepare_row(const float *src, float *drow, int r, int h, int w, int s, int b, int pl, int wq) {
    if (r < 0 || r >= h) { memset(drow, 0, sizeof(float) * wq); return; }
    const float *srow = src + (int64_t)r * w;
    if (s == 1) {
        int j = 0;
        for (; j < wq && j - pl < 0; j++) drow[j] = 0.0f;
        const int last = (w + pl < wq ? w + pl : wq);
        if (last > j) { memcpy(drow + j, srow + (j - pl), sizeof(float) * (last - j)); j = last; }
        for (; j < wq; j++) drow[j] = 0.0f;
    } else {
        for (int j = 0; j < wq; j++) {
            const int col = b + s * j - pl;
            drow[j] = (col >= 0 && col < w) ? srow[col] : 0.0f;
        }
    }
}

static int prepare_by_rows = 1;

/* Whether spconv_prepare may split by rows (1, the default) or always by channels (0; for the bench); returns the
 * setting before. */
int spconv_prepare_by_rows(int on) {
    const int before = prepare_by_rows;
    prepare_by_rows = on;
    return before;
}

void spconv_prepare(const float *x, int64_t x_stride, int64_t x_plane, int images, int c, int h, int w, int s,
                    int pt, int pl, int hq, int wq, int phases, float *out, int64_t out_stride, int threads) {
    const int64_t plane = (int64_t)hq * wq;
    const int64_t used = (int64_t)phases * c * plane;
    /* Rows of a cache line or more: split by rows (every channel of a row range to one thread), as spconv_run splits
     * its grid by tiles, so the rows a thread prepares are mostly the ones its tiles read next, from its own core's
     * cache (bench/sparse_kernels.py measures it against the split by channels). Narrower rows: by channels (threads
     * splitting rows narrower than a cache line would write the same lines). */
    const int by_rows = wq >= 16 && prepare_by_rows;
    const int64_t jobs = (int64_t)images * (by_rows ? hq : c);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t job = 0; job < jobs; job++) {
        const int n = (int)(by_rows ? job / hq : job / c);
        const int i0 = by_rows ? (int)(job % hq) : 0, i1 = by_rows ? i0 + 1 : hq;
        const int c0 = by_rows ? 0 : (int)(job % c), c1 = by_rows ? c : c0 + 1;
        for (int a = 0; a < s; a++)
            for (int b = 0; b < s; b++) {
                if (a * s + b >= phases) continue;
                float *dst = out + n * out_stride + (int64_t)(a * s + b) * c * plane;
                for (int ci = c0; ci < c1; ci++)
                    for (int i = i0; i < i1; i++)
                        spconv_prepare_row(x + n * x_stride + (int64_t)ci * x_plane, dst + ci * plane + (int64_t)i * wq,
                                    a + s * i - pt, h, w, s, b, pl, wq);
            }
    }
    for (int n = 0; n < images; n++) memset(out + n * out_stride + used, 0, sizeof(float) * (out_stride - used));
}

/* ONNX/torch MaxPool: y[n, c, oh, ow] = max of x[n, c] over the window at (oh * s - pt, ow * s - pl) of kh x kw,
 * positions outside the input skipped (padding is -inf); every window holds one input position at least (the
 * caller's ho, wo guarantee it). Planes x_plane / y_plane floats apart, images x_stride / y_stride. Per output row:
 * the rows' elementwise maximum first, into a row buffer with -inf on both sides (the padding), then each window
 * offset k in turn over all the outputs of the row: fixed-stride loops the compiler vectorises (written per window
 * position, with a branch per edge, it ran at 3 GB/s). NaN wins, as in torch. */
static inline float max_nan(float m, float v) { return (v > m || v != v) ? v : m; }

__attribute__((target_clones("avx512f", "avx2", "default")))
void spconv_maxpool(const float *x, int64_t x_stride, int64_t x_plane, int images, int channels, int h, int w,
                    int kh, int kw, int s, int pt, int pl, int ho, int wo, float *y, int64_t y_stride,
                    int64_t y_plane, int threads) {
    const int64_t planes = (int64_t)images * channels;
    /* the padded row: pl values of -inf, the row, then -inf up to the last window's end */
    const int span = (wo - 1) * s + kw > pl + w ? (wo - 1) * s + kw : pl + w;
#pragma omp parallel num_threads(threads)
    {
        float *row = malloc(sizeof(float) * (span > 0 ? span : 1));
        for (int j = 0; j < span; j++) row[j] = -INFINITY;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < planes; p++) {
            const float *xp = x + (p / channels) * x_stride + (p % channels) * x_plane;
            float *yp = y + (p / channels) * y_stride + (p % channels) * y_plane;
            float *body = row + pl;
            for (int oh = 0; oh < ho; oh++) {
                const int r0 = oh * s - pt;
                const int r_lo = r0 < 0 ? 0 : r0, r_hi = r0 + kh < h ? r0 + kh : h;
                memcpy(body, xp + (int64_t)r_lo * w, sizeof(float) * w);
                for (int r = r_lo + 1; r < r_hi; r++) {
                    const float *xr = xp + (int64_t)r * w;
                    for (int j = 0; j < w; j++) body[j] = max_nan(body[j], xr[j]);
                }
                float *yr = yp + (int64_t)oh * wo;
                if (s == 2) {           /* the common stride, as a constant: contiguous pairs the compiler shuffles */
                    for (int ow = 0; ow < wo; ow++) yr[ow] = row[2 * ow];
                    for (int k = 1; k < kw; k++)
                        for (int ow = 0; ow < wo; ow++) yr[ow] = max_nan(yr[ow], row[2 * ow + k]);
                } else {
                    for (int ow = 0; ow < wo; ow++) yr[ow] = row[ow * s];
                    for (int k = 1; k < kw; k++)
                        for (int ow = 0; ow < wo; ow++) yr[ow] = max_nan(yr[ow], row[ow * s + k]);
                }
            }
        }
        free(row);
    }
}

/* One output feature of a sparse linear layer over 16 transposed rows: acc[r] = sum_j val[j] * xt[col[j] * 16 + r]. */
__attribute__((target("avx512f")))
static void linear_rows_avx512(const float *xt, const int32_t *col, const float *val, int n, float *acc) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int j = 0;
    for (; j + 2 <= n; j += 2) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(val[j]), _mm512_load_ps(xt + (int64_t)col[j] * 16), a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(val[j + 1]), _mm512_load_ps(xt + (int64_t)col[j + 1] * 16), a1);
    }
    if (j < n) a0 = _mm512_fmadd_ps(_mm512_set1_ps(val[j]), _mm512_load_ps(xt + (int64_t)col[j] * 16), a0);
    _mm512_store_ps(acc, _mm512_add_ps(a0, a1));
}

__attribute__((target("avx2,fma")))
static void linear_rows_avx2(const float *xt, const int32_t *col, const float *val, int n, float *acc) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int j = 0; j < n; j++) {
        const __m256 w = _mm256_set1_ps(val[j]);
        const float *p = xt + (int64_t)col[j] * 16;
        a0 = _mm256_fmadd_ps(w, _mm256_load_ps(p), a0);
        a1 = _mm256_fmadd_ps(w, _mm256_load_ps(p + 8), a1);
    }
    _mm256_store_ps(acc, a0);
    _mm256_store_ps(acc + 8, a1);
}

static void linear_rows_scalar(const float *xt, const int32_t *col, const float *val, int n, float *acc) {
    for (int r = 0; r < 16; r++) acc[r] = 0.0f;
    for (int j = 0; j < n; j++)
        for (int r = 0; r < 16; r++) acc[r] += val[j] * xt[(int64_t)col[j] * 16 + r];
}

/* A linear layer with sparse weights (CSR over output features): y[r, c] = bias[c] + sum_j val[j] * x[r, col[j]]
 * for `rows` input rows of k features. The rows are taken 16 at a time and transposed once (k x 16, zero-padded),
 * so each nonzero is one 16-wide multiply-add over the rows. Parallel over output features. */
void splinear_run(const float *x, int rows, int k, const int32_t *row_ptr, const int32_t *col, const float *val,
                  int m, const float *bias, float *y, int threads, int isa) {
    void (*rows_fn)(const float *, const int32_t *, const float *, int, float *) =
        spconv_isa(isa) == 2 ? linear_rows_avx512 : spconv_isa(isa) == 1 ? linear_rows_avx2 : linear_rows_scalar;
    float *xt = aligned_alloc(64, sizeof(float) * 16 * (size_t)(k > 0 ? k : 1));
    for (int r0 = 0; r0 < rows; r0 += 16) {
        const int nr = rows - r0 < 16 ? rows - r0 : 16;
        for (int i = 0; i < k; i++)
            for (int r = 0; r < 16; r++) xt[i * 16 + r] = r < nr ? x[(int64_t)(r0 + r) * k + i] : 0.0f;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int c = 0; c < m; c++) {
            float acc[16] __attribute__((aligned(64)));
            rows_fn(xt, col + row_ptr[c], val + row_ptr[c], row_ptr[c + 1] - row_ptr[c], acc);
            const float b = bias ? bias[c] : 0.0f;
            for (int r = 0; r < nr; r++) y[(int64_t)(r0 + r) * m + c] = acc[r] + b;
        }
    }
    free(xt);
}
