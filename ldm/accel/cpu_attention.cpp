// Multi-head softmax attention in float32 for x86-64 CPUs with AVX-512F (see kernels.py for why).
//
// out[b, i, h, :] = sum_j softmax_j(scale * q[b, i, h, :] . k[b, j, h, :]) v[b, j, h, :]
//
// Layout of the computation: each unit of work is one (batch, head) and a block of 64 queries, which sit in
// the 16 lanes of four vectors. Keys go by in blocks of KEY_BLOCK with an online softmax (running maximum and
// sum per query, as in flash attention), so no score matrix larger than KEY_BLOCK x 64 ever exists:
//   scores  S[j][i]  = sum_d K[j][d] * Qt[d][i]    (K broadcast from its rows, Qt the transposed query block)
//   weights P[j][i]  = 2^(S[j][i] - max)           (in place; log2(e) is folded into Qt with the scale)
//   output  Ot[d][i] = alpha Ot[d][i] + sum_j V[j][d] * P[j][i]
// Both products broadcast one k or v element against whole query vectors, so any head width runs without
// padding. q is read where it lies (a strided (batch, token, head) view of its projection); each head's keys
// and values are first copied into contiguous rows (K, V), once per head and thread: read in place, the rows of
// a 4096-token sequence lie 1280 bytes apart and fall into so few cache sets that they evict one another (the
// 64x64 level of SD1.5 at 512 px ran 1.5x slower so on an Intel Xeon).
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

namespace {

constexpr int QUERY_VECTORS = 4;
constexpr int QUERY_BLOCK = 16 * QUERY_VECTORS;
constexpr int KEY_BLOCK = 128;  // 128 x 64 scores: 32 KB, an L1 data cache
constexpr int SCORE_KEYS = 6;   // register tile of the score product: 6 keys x 4 query vectors
constexpr int OUTPUT_DIMS = 5;  // register tile of the output product: 5 head dims x 4 query vectors

// 2^x to ~2 ulp, for x <= 0 (softmax weights in base 2; -inf gives 0): x = n + f with n an integer and
// |f| <= 1/2, 2^f by a degree-6 polynomial (coefficients fitted to its relative error on [-1/2, 1/2]), times 2^n.
inline __m512 exp2_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));  // 2^-150 is below float's smallest subnormal
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.534579787403345e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399930903688073e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618489071726799e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550328642129898e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022646248340607f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931471824645996f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// S[r][:] = sum_d k[r][d] * Qt[d][:] for R consecutive packed keys (rows of D); their maximum joins `maximum`,
// lane by lane.
template <int R>
inline void score_tile(const float* k, const float* Qt, int D, float* S, __m512* maximum) {
    __m512 acc[R][QUERY_VECTORS];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < QUERY_VECTORS; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int d = 0; d < D; ++d) {
        __m512 qd[QUERY_VECTORS];
        for (int c = 0; c < QUERY_VECTORS; ++c) qd[c] = _mm512_load_ps(Qt + d * QUERY_BLOCK + 16 * c);
        for (int r = 0; r < R; ++r) {
            const __m512 kr = _mm512_set1_ps(k[r * D + d]);
            for (int c = 0; c < QUERY_VECTORS; ++c) acc[r][c] = _mm512_fmadd_ps(kr, qd[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < QUERY_VECTORS; ++c) {
            _mm512_store_ps(S + r * QUERY_BLOCK + 16 * c, acc[r][c]);
            maximum[c] = _mm512_max_ps(maximum[c], acc[r][c]);
        }
}

// Ot[r][:] = alpha * Ot[r][:] + sum_j v[j][r] * P[j][:] for R consecutive head dims. Each key block's sum
// starts from zero and joins the output once, which keeps the rounding error as low as a blocked GEMM's.
template <int R>
inline void output_tile(const float* v, int64_t v_row, const float* P, int keys, const __m512* alpha, float* Ot) {
    __m512 acc[R][QUERY_VECTORS];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < QUERY_VECTORS; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int j = 0; j < keys; ++j) {
        __m512 pj[QUERY_VECTORS];
        for (int c = 0; c < QUERY_VECTORS; ++c) pj[c] = _mm512_load_ps(P + j * QUERY_BLOCK + 16 * c);
        for (int r = 0; r < R; ++r) {
            const __m512 vr = _mm512_set1_ps(v[j * v_row + r]);
            for (int c = 0; c < QUERY_VECTORS; ++c) acc[r][c] = _mm512_fmadd_ps(vr, pj[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < QUERY_VECTORS; ++c) {
            float* o = Ot + r * QUERY_BLOCK + 16 * c;
            _mm512_store_ps(o, _mm512_fmadd_ps(_mm512_load_ps(o), alpha[c], acc[r][c]));
        }
}

// The last, narrower tiles: dispatch a run-time count below the full tile to its compiled size.
template <int R>
inline void score_tile_n(int n, const float* k, const float* Qt, int D, float* S, __m512* maximum) {
    if (n == R) score_tile<R>(k, Qt, D, S, maximum);
    else if constexpr (R > 1) score_tile_n<R - 1>(n, k, Qt, D, S, maximum);
}

template <int R>
inline void output_tile_n(int n, const float* v, int64_t v_row, const float* P, int keys, const __m512* alpha,
                          float* Ot) {
    if (n == R) output_tile<R>(v, v_row, P, keys, alpha, Ot);
    else if constexpr (R > 1) output_tile_n<R - 1>(n, v, v_row, P, keys, alpha, Ot);
}

struct Problem {
    const float *q, *k, *v;
    float* out;
    int64_t batch, heads, queries, keys, dim;
    int64_t q_stride[3], k_stride[3], v_stride[3], out_stride[3];  // batch, token, head (elements)
    float scale;
};

struct Work {
    const Problem* problem;
    int64_t first_unit, end_unit;
    float* scratch;  // 64-byte aligned, scratch_floats(dim, keys) floats
};

// Qt, Ot and S, then one head's keys and values packed (their rows contiguous), rounded to 16 floats.
inline int64_t scratch_floats(int64_t dim, int64_t keys) {
    return (2 * dim + KEY_BLOCK) * QUERY_BLOCK + (2 * keys * dim + 15) / 16 * 16;
}

void run_units(const Work* arg) {
    const Work& work = *arg;
    const Problem& p = *work.problem;
    const int D = (int)p.dim;
    const int64_t query_blocks = (p.queries + QUERY_BLOCK - 1) / QUERY_BLOCK;
    float* Qt = work.scratch;                // D x 64 queries, transposed and scaled
    float* Ot = Qt + D * QUERY_BLOCK;         // D x 64 outputs, transposed, not yet divided by the sum
    float* S = Ot + D * QUERY_BLOCK;          // KEY_BLOCK x 64 scores, then weights
    float* K = S + KEY_BLOCK * QUERY_BLOCK;   // keys x D, then the values
    float* V = K + p.keys * D;
    int64_t packed_head = -1;
    alignas(64) float inv_sum[QUERY_BLOCK];
    const float scale2 = p.scale * 1.4426950408889634f;
    for (int64_t unit = work.first_unit; unit < work.end_unit; ++unit) {
        const int64_t bh = unit / query_blocks, b = bh / p.heads, h = bh % p.heads;
        const int64_t q0 = unit % query_blocks * QUERY_BLOCK;
        const int nq = (int)(p.queries - q0 < QUERY_BLOCK ? p.queries - q0 : QUERY_BLOCK);
        const float* q = p.q + b * p.q_stride[0] + q0 * p.q_stride[1] + h * p.q_stride[2];
        if (bh != packed_head) {  // a new head: copy its keys and values into K and V
            packed_head = bh;
            const float* k_src = p.k + b * p.k_stride[0] + h * p.k_stride[2];
            const float* v_src = p.v + b * p.v_stride[0] + h * p.v_stride[2];
            for (int64_t j = 0; j < p.keys; ++j) {
                memcpy(K + j * D, k_src + j * p.k_stride[1], sizeof(float) * D);
                memcpy(V + j * D, v_src + j * p.v_stride[1], sizeof(float) * D);
            }
        }
        float* out = p.out + b * p.out_stride[0] + q0 * p.out_stride[1] + h * p.out_stride[2];

        // the scale and log2(e) are folded into the queries (scores in base 2); missing queries are zeros
        for (int d = 0; d < D; ++d)
            for (int i = 0; i < QUERY_BLOCK; ++i)
                Qt[d * QUERY_BLOCK + i] = i < nq ? q[i * p.q_stride[1] + d] * scale2 : 0.0f;
        memset(Ot, 0, sizeof(float) * D * QUERY_BLOCK);
        __m512 running_max[QUERY_VECTORS], running_sum[QUERY_VECTORS];
        for (int c = 0; c < QUERY_VECTORS; ++c) {
            running_max[c] = _mm512_set1_ps(-INFINITY);
            running_sum[c] = _mm512_setzero_ps();
        }

        for (int64_t j0 = 0; j0 < p.keys; j0 += KEY_BLOCK) {
            const int nk = (int)(p.keys - j0 < KEY_BLOCK ? p.keys - j0 : KEY_BLOCK);
            const float* kb = K + j0 * D;
            __m512 block_max[QUERY_VECTORS], alpha[QUERY_VECTORS], block_sum[QUERY_VECTORS];
            for (int c = 0; c < QUERY_VECTORS; ++c) block_max[c] = running_max[c];
            int j = 0;
            for (; j + SCORE_KEYS <= nk; j += SCORE_KEYS)
                score_tile<SCORE_KEYS>(kb + j * D, Qt, D, S + j * QUERY_BLOCK, block_max);
            if (j < nk) score_tile_n<SCORE_KEYS - 1>(nk - j, kb + j * D, Qt, D, S + j * QUERY_BLOCK, block_max);

            for (int c = 0; c < QUERY_VECTORS; ++c) {
                alpha[c] = exp2_ps(_mm512_sub_ps(running_max[c], block_max[c]));  // rescales what came before
                running_max[c] = block_max[c];
                block_sum[c] = _mm512_setzero_ps();
            }
            for (j = 0; j < nk; ++j)
                for (int c = 0; c < QUERY_VECTORS; ++c) {
                    float* s = S + j * QUERY_BLOCK + 16 * c;
                    const __m512 e = exp2_ps(_mm512_sub_ps(_mm512_load_ps(s), block_max[c]));
                    _mm512_store_ps(s, e);
                    block_sum[c] = _mm512_add_ps(block_sum[c], e);
                }
            for (int c = 0; c < QUERY_VECTORS; ++c)
                running_sum[c] = _mm512_fmadd_ps(running_sum[c], alpha[c], block_sum[c]);

            const float* vb = V + j0 * D;
            int d = 0;
            for (; d + OUTPUT_DIMS <= D; d += OUTPUT_DIMS)
                output_tile<OUTPUT_DIMS>(vb + d, D, S, nk, alpha, Ot + d * QUERY_BLOCK);
            if (d < D) output_tile_n<OUTPUT_DIMS - 1>(D - d, vb + d, D, S, nk, alpha, Ot + d * QUERY_BLOCK);
        }

        for (int c = 0; c < QUERY_VECTORS; ++c)
            _mm512_store_ps(inv_sum + 16 * c, _mm512_div_ps(_mm512_set1_ps(1.0f), running_sum[c]));
        for (int i = 0; i < nq; ++i)
            for (int d = 0; d < D; ++d) out[i * p.out_stride[1] + d] = Ot[d * QUERY_BLOCK + i] * inv_sum[i];
    }
}

}  // namespace

// Strides are in elements, for (batch, token, head); each head's dim elements are contiguous. The units are
// shared out evenly over `threads` OpenMP threads: torch's own pool when this library resolves to the libgomp
// torch has loaded, so the threads are the ones torch's operators just used, not a second set competing with
// them for the cores while they spin-wait. Returns 0, or -1 if the scratch memory could not be had (nothing is
// written then).
extern "C" int controlnet_attention_f32(const float* q, const float* k, const float* v, float* out, int64_t batch,
                                        int64_t heads, int64_t queries, int64_t keys, int64_t dim,
                                        const int64_t* q_stride, const int64_t* k_stride, const int64_t* v_stride,
                                        const int64_t* out_stride, float scale, int threads) {
    const Problem problem{q, k, v, out, batch, heads, queries, keys, dim,
                          {q_stride[0], q_stride[1], q_stride[2]}, {k_stride[0], k_stride[1], k_stride[2]},
                          {v_stride[0], v_stride[1], v_stride[2]}, {out_stride[0], out_stride[1], out_stride[2]},
                          scale};
    const int64_t units = batch * heads * ((queries + QUERY_BLOCK - 1) / QUERY_BLOCK);
    if (threads > units) threads = (int)units;
    if (threads < 1) threads = 1;
    const int64_t per_thread = scratch_floats(dim, keys);  // a multiple of 16 floats: every thread's part stays aligned
    float* scratch = static_cast<float*>(aligned_alloc(64, sizeof(float) * per_thread * threads));
    if (scratch == nullptr) return -1;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        Work work{&problem, units * t / n, units * (t + 1) / n, scratch + per_thread * t};
        run_units(&work);
    }
    free(scratch);
    return 0;
}
