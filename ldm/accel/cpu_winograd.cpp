// 3x3 convolution, stride 1, padding 1, float32, NCHW, for x86-64 CPUs with AVX-512F: Winograd's F(2x2, 3x3)
// (Lavin & Gray 2016, "Fast algorithms for convolutional neural networks"; see kernels.py for why).
//
// Each 2x2 block of outputs (a "tile") is  A^T [ sum_c (G g G^T) * (B^T d B) ] A  with g the 3x3 kernel of one
// input/output channel pair, d the 4x4 input patch around the tile and * elementwise: 16 multiplications per
// tile and channel pair instead of 36. The work is laid out with 64 tiles of one image (four vectors of 16
// consecutive tiles along tile rows) in the vector lanes:
//   weights   U[ab][o][c]     = (G g[o][c] G^T)[a][b], once per call;
//   inputs    V[ab][c][tiles] = (B^T d B)[a][b], read from x directly (even and odd columns split by permutes,
//             the zero padding by masks);
//   products  M[ab][o][tiles] = sum_c U[ab][o][c] V[ab][c][tiles], U broadcast against tile vectors, and each
//             M[ab] added with its sign into the (up to four) outputs of the tile it reaches: the output
//             transform A^T M A, one term at a time;
// then every tile row's outputs are written as two interleaved image rows.
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

namespace {

constexpr int LANES = 16;
constexpr int SLOTS = 4;                   // vectors of 16 tiles per unit of work
constexpr int TILES = SLOTS * LANES;
constexpr int OUT_TILE = 6;                // output channels per register tile of the products
constexpr int AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};  // A^T of F(2x2, 3x3)

struct Problem {
    const float *x, *U, *bias;
    float* out;
    int64_t batch, C, H, W, O;
    int64_t tile_rows, tile_cols, segments;  // segments: 16-tile vectors per tile row
    int64_t u_plane, v_plane;                // floats from one (a, b) component of U, V to the next
};

// The (a, b) components of U and V lie a padded plane apart: at the layers' power-of-two-rich plane sizes, the
// 16 components of one element would otherwise fall into one cache set and evict one another as they are written.
constexpr int64_t PLANE_PAD = 16;

// U[a][b][o][c] = (G g G^T)[a][b], G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
void transform_weights(const float* w, int64_t O, int64_t C, int64_t o, int64_t plane, float* U) {
    for (int64_t c = 0; c < C; ++c) {
        const float* g = w + (o * C + c) * 9;
        float t[4][3];  // G g
        for (int j = 0; j < 3; ++j) {
            t[0][j] = g[j];
            t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
            t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
            t[3][j] = g[6 + j];
        }
        for (int a = 0; a < 4; ++a) {
            float* u = U + 4 * a * plane + o * C + c;
            u[0] = t[a][0];
            u[plane] = 0.5f * (t[a][0] + t[a][1] + t[a][2]);
            u[2 * plane] = 0.5f * (t[a][0] - t[a][1] + t[a][2]);
            u[3 * plane] = t[a][2];
        }
    }
}

struct Slot {
    int64_t tile_row, first_col;  // first tile column of the 16 in the lanes
    __mmask16 valid;              // lanes holding tiles
};

// The four input columns of the 16 tiles of `slot` in image row `row` (nullptr: a padding row of zeros).
// Tile column j reads input columns 2j - 1 .. 2j + 2.
inline void patch_columns(const float* row, int64_t W, const Slot& slot, __m512 q[4]) {
    if (row == nullptr) {
        for (int i = 0; i < 4; ++i) q[i] = _mm512_setzero_ps();
        return;
    }
    const int64_t base = 2 * slot.first_col;  // input column of lane 0's second column
    const int64_t left = W - base;            // columns from base to the row's end
    const __mmask16 lo = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
    const __mmask16 hi = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(lo, row + base);
    const __m512 b = _mm512_maskz_loadu_ps(hi, row + base + 16);
    const __m512 even = _mm512_permutex2var_ps(a, _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0), b);
    const __m512 odd = _mm512_permutex2var_ps(a, _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1), b);
    const __m512 before = _mm512_set1_ps(base > 0 ? row[base - 1] : 0.0f);
    const __m512 after = _mm512_set1_ps(base + 32 < W ? row[base + 32] : 0.0f);
    q[0] = _mm512_permutex2var_ps(odd, _mm512_set_epi32(14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 16), before);
    q[1] = even;
    q[2] = odd;
    q[3] = _mm512_permutex2var_ps(even, _mm512_set_epi32(16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1), after);
}

// V[ab][c][tiles] = (B^T d B)[a][b] for every channel, B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
void transform_inputs(const Problem& p, int64_t image, const Slot* slots, float* V) {
    const int64_t plane = p.v_plane;
    for (int64_t c = 0; c < p.C; ++c) {
        const float* channel = p.x + (image * p.C + c) * p.H * p.W;
        for (int s = 0; s < SLOTS; ++s) {
            float* v = V + c * TILES + s * LANES;
            if (!slots[s].valid) {
                for (int ab = 0; ab < 16; ++ab) _mm512_store_ps(v + ab * plane, _mm512_setzero_ps());
                continue;
            }
            __m512 d[4][4];
            for (int r = 0; r < 4; ++r) {
                const int64_t y = 2 * slots[s].tile_row - 1 + r;
                patch_columns(y >= 0 && y < p.H ? channel + y * p.W : nullptr, p.W, slots[s], d[r]);
            }
            __m512 t[4][4];  // B^T d
            for (int q = 0; q < 4; ++q) {
                t[0][q] = _mm512_sub_ps(d[0][q], d[2][q]);
                t[1][q] = _mm512_add_ps(d[1][q], d[2][q]);
                t[2][q] = _mm512_sub_ps(d[2][q], d[1][q]);
                t[3][q] = _mm512_sub_ps(d[1][q], d[3][q]);
            }
            for (int a = 0; a < 4; ++a) {  // (B^T d) B
                _mm512_store_ps(v + (4 * a + 0) * plane, _mm512_sub_ps(t[a][0], t[a][2]));
                _mm512_store_ps(v + (4 * a + 1) * plane, _mm512_add_ps(t[a][1], t[a][2]));
                _mm512_store_ps(v + (4 * a + 2) * plane, _mm512_sub_ps(t[a][2], t[a][1]));
                _mm512_store_ps(v + (4 * a + 3) * plane, _mm512_sub_ps(t[a][1], t[a][3]));
            }
        }
    }
}

// For R output channels: M = sum_c U[o][c] V[c][tiles], added with its sign into the outputs Y[o][i][j][tiles]
// of component (a, b).
template <int R>
inline void product_tile(const float* U, int64_t C, const float* V, int a, int b, float* Y) {
    __m512 acc[R][SLOTS];
    for (int r = 0; r < R; ++r)
        for (int s = 0; s < SLOTS; ++s) acc[r][s] = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; ++c) {
        __m512 v[SLOTS];
        for (int s = 0; s < SLOTS; ++s) v[s] = _mm512_load_ps(V + c * TILES + s * LANES);
        for (int r = 0; r < R; ++r) {
            const __m512 u = _mm512_set1_ps(U[r * C + c]);
            for (int s = 0; s < SLOTS; ++s) acc[r][s] = _mm512_fmadd_ps(u, v[s], acc[r][s]);
        }
    }
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) {
            const int sign = AT[i][a] * AT[j][b];
            if (sign == 0) continue;
            for (int r = 0; r < R; ++r)
                for (int s = 0; s < SLOTS; ++s) {
                    float* y = Y + (r * 4 + i * 2 + j) * TILES + s * LANES;
                    const __m512 sum = _mm512_load_ps(y);
                    _mm512_store_ps(y, sign > 0 ? _mm512_add_ps(sum, acc[r][s]) : _mm512_sub_ps(sum, acc[r][s]));
                }
        }
}

template <int R>
inline void product_tile_n(int n, const float* U, int64_t C, const float* V, int a, int b, float* Y) {
    if (n == R) product_tile<R>(U, C, V, a, b, Y);
    else if constexpr (R > 1) product_tile_n<R - 1>(n, U, C, V, a, b, Y);
}

void run_unit(const Problem& p, int64_t unit, float* V, float* Y) {
    const int64_t units_per_image = (p.tile_rows * p.segments + SLOTS - 1) / SLOTS;
    const int64_t image = unit / units_per_image, first = unit % units_per_image * SLOTS;
    Slot slots[SLOTS];
    for (int s = 0; s < SLOTS; ++s) {
        const int64_t index = first + s;
        slots[s] = Slot{0, 0, 0};
        if (index < p.tile_rows * p.segments) {
            slots[s].tile_row = index / p.segments;
            slots[s].first_col = index % p.segments * LANES;
            const int64_t n = p.tile_cols - slots[s].first_col;
            slots[s].valid = n >= LANES ? 0xFFFF : (__mmask16)((1u << n) - 1);
        }
    }
    transform_inputs(p, image, slots, V);
    memset(Y, 0, sizeof(float) * p.O * 4 * TILES);
    for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
            const float* U = p.U + (4 * a + b) * p.u_plane;
            const float* Vab = V + (4 * a + b) * p.v_plane;
            int64_t o = 0;
            for (; o + OUT_TILE <= p.O; o += OUT_TILE)
                product_tile<OUT_TILE>(U + o * p.C, p.C, Vab, a, b, Y + o * 4 * TILES);
            if (o < p.O) product_tile_n<OUT_TILE - 1>((int)(p.O - o), U + o * p.C, p.C, Vab, a, b, Y + o * 4 * TILES);
        }
    // tile column j's outputs (i, 0) and (i, 1) are image columns 2j and 2j + 1 of image row 2 * tile_row + i
    const __m512i first_half = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i second_half = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    for (int64_t o = 0; o < p.O; ++o) {
        const __m512 bias = _mm512_set1_ps(p.bias != nullptr ? p.bias[o] : 0.0f);
        for (int s = 0; s < SLOTS; ++s) {
            if (!slots[s].valid) continue;
            const int n = __builtin_popcount(slots[s].valid);  // tiles: 2n output columns
            const __mmask16 lo = n >= 8 ? 0xFFFF : (__mmask16)((1u << (2 * n)) - 1);
            const __mmask16 hi = n <= 8 ? 0 : n >= 16 ? 0xFFFF : (__mmask16)((1u << (2 * (n - 8))) - 1);
            for (int i = 0; i < 2; ++i) {
                const __m512 left = _mm512_add_ps(_mm512_load_ps(Y + (o * 4 + 2 * i) * TILES + s * LANES), bias);
                const __m512 right = _mm512_add_ps(_mm512_load_ps(Y + (o * 4 + 2 * i + 1) * TILES + s * LANES), bias);
                float* row = p.out + ((image * p.O + o) * p.H + 2 * slots[s].tile_row + i) * p.W + 2 * slots[s].first_col;
                _mm512_mask_storeu_ps(row, lo, _mm512_permutex2var_ps(left, first_half, right));
                _mm512_mask_storeu_ps(row + 16, hi, _mm512_permutex2var_ps(left, second_half, right));
            }
        }
    }
}

}  // namespace

// x (batch, C, H, W) and out (batch, O, H, W) contiguous, H and W even; w (O, C, 3, 3) contiguous; bias (O) or
// null. Runs on `threads` OpenMP threads (torch's pool, as in cpu_attention.cpp). Returns 0, or -1 if the
// scratch memory could not be had (nothing is written then).
extern "C" int controlnet_winograd_conv3x3_f32(const float* x, const float* w, const float* bias, float* out,
                                               int64_t batch, int64_t C, int64_t H, int64_t W, int64_t O,
                                               int threads) {
    Problem p{x, nullptr, bias, out, batch, C, H, W, O, H / 2, W / 2, (W / 2 + LANES - 1) / LANES,
              O * C + PLANE_PAD, C * TILES + PLANE_PAD};
    const int64_t units = batch * ((p.tile_rows * p.segments + SLOTS - 1) / SLOTS);
    if (threads > units) threads = (int)units;
    if (threads < 1) threads = 1;
    const int64_t per_thread = 16 * p.v_plane + O * 4 * TILES;  // V, then Y: multiples of 16 floats
    float* U = static_cast<float*>(aligned_alloc(64, sizeof(float) * 16 * p.u_plane + 64));
    float* scratch = static_cast<float*>(aligned_alloc(64, sizeof(float) * per_thread * threads));
    if (U == nullptr || scratch == nullptr) {
        free(U);
        free(scratch);
        return -1;
    }
    p.U = U;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t o = 0; o < O; ++o) transform_weights(w, O, C, o, p.u_plane, U);
        float* V = scratch + per_thread * omp_get_thread_num();
#pragma omp for schedule(static)
        for (int64_t unit = 0; unit < units; ++unit) run_unit(p, unit, V, V + 16 * p.v_plane);
    }
    free(U);
    free(scratch);
    return 0;
}
