/* Sparse products of a masked linear layer with a fixed summation order (acdc_bench.core.sparse).
 *
 * Every output element is a sum in one order that the source fixes, each product rounded before
 * it is added (built with -ffp-contract=off: no fused multiply-add), so any compiler, flag set or
 * vector width gives the same bits, and so does the no-compiler path in sparse.py (scipy's CSR
 * product and an ATen sum in the same order). The vector loops run along the batch, which keeps
 * each element's own sum in order.
 *
 * Layouts: a batch is stored transposed, one row of `batch` floats per feature (x_t: in x batch);
 * `transpose` moves a batch between the two layouts (an exact copy). A weight is the layer's dense
 * row-major weight, read at the non-zeros' flat indices (`flat`, in the structure's order).
 */
#include <stdint.h>
#include <string.h>

/* y_t[r, :] = sum over k in row r, in order, of weight[flat[k]] * x_t[columns[k], :] (starting
 * from 0). Four non-zeros per pass over the row: the same additions in the same order, fewer loads
 * of y. */
void csr_rows(int64_t rows, const int64_t *indptr, const int64_t *columns, const int64_t *flat,
              const float *weight, const float *restrict x_t, int64_t batch, float *restrict y_t) {
    for (int64_t r = 0; r < rows; r++) {
        float *restrict y = y_t + r * batch;
        memset(y, 0, (size_t)batch * sizeof(float));
        int64_t k = indptr[r];
        for (; k + 4 <= indptr[r + 1]; k += 4) {
            const float a0 = weight[flat[k]], a1 = weight[flat[k + 1]];
            const float a2 = weight[flat[k + 2]], a3 = weight[flat[k + 3]];
            const float *restrict x0 = x_t + columns[k] * batch;
            const float *restrict x1 = x_t + columns[k + 1] * batch;
            const float *restrict x2 = x_t + columns[k + 2] * batch;
            const float *restrict x3 = x_t + columns[k + 3] * batch;
            for (int64_t b = 0; b < batch; b++) {
                const float p0 = a0 * x0[b], p1 = a1 * x1[b], p2 = a2 * x2[b], p3 = a3 * x3[b];
                y[b] = (((y[b] + p0) + p1) + p2) + p3;
            }
        }
        for (; k < indptr[r + 1]; k++) {
            const float a = weight[flat[k]];
            const float *restrict x = x_t + columns[k] * batch;
            for (int64_t b = 0; b < batch; b++) {
                const float product = a * x[b];
                y[b] = y[b] + product;
            }
        }
    }
}

/* grad[flat[k]] = sum over b of g_t[rows[k], b] * x_t[columns[k], b] for every k (grad holds
 * zeros elsewhere, as the caller gives it): lane b % 8 adds its products in order of b, then the
 * lanes add as ((0+1)+(2+3))+((4+5)+(6+7)). With AVX2 the eight lanes are one vector and four
 * non-zeros run side by side (each sum's additions depend on each other; four independent ones
 * keep the adder busy): every lane's sum is the same, in the same order. */
static float lanes_sum(const float lane[8]) {
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/* The last batch % 8 products into their lanes, then the lanes summed. */
static float finish_lanes(const float *restrict g, const float *restrict x, int64_t batch, float lane[8]) {
    const int64_t full = batch / 8 * 8;
    for (int64_t b = full; b < batch; b++) {
        const float product = g[b] * x[b];
        lane[b - full] = lane[b - full] + product;
    }
    return lanes_sum(lane);
}

/* One non-zero's sum, lane by lane in plain C. */
static float sampled_dot(const float *restrict g, const float *restrict x, int64_t batch) {
    const int64_t full = batch / 8 * 8;
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t b = 0; b < full; b += 8) {
        for (int l = 0; l < 8; l++) {
            const float product = g[b + l] * x[b + l];
            lane[l] = lane[l] + product;
        }
    }
    return finish_lanes(g, x, batch, lane);
}

#ifdef __AVX2__
#include <immintrin.h>
#endif

void sampled_dots(int64_t count, const int64_t *rows, const int64_t *columns, const int64_t *flat,
                  const float *restrict g_t, const float *restrict x_t, int64_t batch, float *restrict grad) {
    int64_t k = 0;
#ifdef __AVX2__
    const int64_t full = batch / 8 * 8;
    for (; k + 4 <= count; k += 4) {
        const float *g[4], *x[4];
        for (int j = 0; j < 4; j++) {
            g[j] = g_t + rows[k + j] * batch;
            x[j] = x_t + columns[k + j] * batch;
        }
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int64_t b = 0; b < full; b += 8) {
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_loadu_ps(g[0] + b), _mm256_loadu_ps(x[0] + b)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_loadu_ps(g[1] + b), _mm256_loadu_ps(x[1] + b)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(_mm256_loadu_ps(g[2] + b), _mm256_loadu_ps(x[2] + b)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(_mm256_loadu_ps(g[3] + b), _mm256_loadu_ps(x[3] + b)));
        }
        float lane[4][8];
        _mm256_storeu_ps(lane[0], a0);
        _mm256_storeu_ps(lane[1], a1);
        _mm256_storeu_ps(lane[2], a2);
        _mm256_storeu_ps(lane[3], a3);
        for (int j = 0; j < 4; j++) {
            grad[flat[k + j]] = finish_lanes(g[j], x[j], batch, lane[j]);
        }
    }
#endif
    for (; k < count; k++) {  /* without AVX2 every non-zero, with it the last count % 4 */
        grad[flat[k]] = sampled_dot(g_t + rows[k] * batch, x_t + columns[k] * batch, batch);
    }
}

/* out (cols x rows) = in (rows x cols) transposed: an exact copy, in 8 x 8 blocks (with AVX2,
 * eight loads, three rounds of shuffles, eight stores), the edges one element at a time. */
#ifdef __AVX2__
static void block8(const float *in, int64_t in_stride, float *out, int64_t out_stride) {
    __m256 r0 = _mm256_loadu_ps(in), r1 = _mm256_loadu_ps(in + in_stride);
    __m256 r2 = _mm256_loadu_ps(in + 2 * in_stride), r3 = _mm256_loadu_ps(in + 3 * in_stride);
    __m256 r4 = _mm256_loadu_ps(in + 4 * in_stride), r5 = _mm256_loadu_ps(in + 5 * in_stride);
    __m256 r6 = _mm256_loadu_ps(in + 6 * in_stride), r7 = _mm256_loadu_ps(in + 7 * in_stride);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(out + out_stride, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(out + 2 * out_stride, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(out + 3 * out_stride, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(out + 4 * out_stride, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(out + 5 * out_stride, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(out + 6 * out_stride, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(out + 7 * out_stride, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#else
static void block8(const float *in, int64_t in_stride, float *out, int64_t out_stride) {
    for (int c = 0; c < 8; c++) {
        for (int r = 0; r < 8; r++) {
            out[c * out_stride + r] = in[r * in_stride + c];
        }
    }
}
#endif

void transpose(int64_t rows, int64_t cols, const float *restrict in, float *restrict out) {
    const int64_t rows8 = rows / 8 * 8, cols8 = cols / 8 * 8;
    for (int64_t c = 0; c < cols8; c += 8) {
        for (int64_t r = 0; r < rows8; r += 8) {
            block8(in + r * cols + c, cols, out + c * rows + r, rows);
        }
    }
    for (int64_t r = 0; r < rows; r++) {  /* the edges: columns past cols8, rows past rows8 */
        for (int64_t c = r < rows8 ? cols8 : 0; c < cols; c++) {
            out[c * rows + r] = in[r * cols + c];
        }
    }
}
