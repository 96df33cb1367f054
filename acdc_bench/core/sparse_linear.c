/* Sparse products of a masked linear layer with a fixed summation order (acdc_bench.core.sparse).
 *
 * Every output element is a sum in one order that the source fixes, each product rounded before
 * it is added (built with -ffp-contract=off: no fused multiply-add), so any compiler, flag set or
 * vector width gives the same bits, and so does the no-compiler path in sparse.py (scipy's CSR
 * product and an ATen sum in the same order). The vector loops run along the batch, which keeps
 * each element's own sum in order.
 *
 * Layouts: a batch is stored transposed, one row of `batch` floats per feature (x_t: in x batch).
 */
#include <stdint.h>
#include <string.h>

/* y_t[r, :] = sum over k in row r, in order, of values[k] * x_t[columns[k], :] (starting from 0).
 * Four non-zeros per pass over the row: the same additions in the same order, fewer loads of y. */
void csr_rows(int64_t rows, const int64_t *indptr, const int64_t *columns, const float *values,
              const float *restrict x_t, int64_t batch, float *restrict y_t) {
    for (int64_t r = 0; r < rows; r++) {
        float *restrict y = y_t + r * batch;
        memset(y, 0, (size_t)batch * sizeof(float));
        int64_t k = indptr[r];
        for (; k + 4 <= indptr[r + 1]; k += 4) {
            const float a0 = values[k], a1 = values[k + 1], a2 = values[k + 2], a3 = values[k + 3];
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
            const float a = values[k];
            const float *restrict x = x_t + columns[k] * batch;
            for (int64_t b = 0; b < batch; b++) {
                const float product = a * x[b];
                y[b] = y[b] + product;
            }
        }
    }
}

/* out[k] = sum over b of g_t[rows[k], b] * x_t[columns[k], b]: lane b % 8 adds its products in
 * order of b, then the lanes add as ((0+1)+(2+3))+((4+5)+(6+7)). */
void sampled_dots(int64_t count, const int64_t *rows, const int64_t *columns, const float *restrict g_t,
                  const float *restrict x_t, int64_t batch, float *restrict out) {
    const int64_t full = batch / 8 * 8;
    for (int64_t k = 0; k < count; k++) {
        const float *restrict g = g_t + rows[k] * batch;
        const float *restrict x = x_t + columns[k] * batch;
        float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t b = 0; b < full; b += 8) {
            for (int l = 0; l < 8; l++) {
                const float product = g[b + l] * x[b + l];
                lane[l] = lane[l] + product;
            }
        }
        for (int64_t b = full; b < batch; b++) {
            const float product = g[b] * x[b];
            lane[b - full] = lane[b - full] + product;
        }
        out[k] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    }
}
