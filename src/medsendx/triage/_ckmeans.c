/*
 * Native inner loops of medsendx.triage.cluster (exact 1-D k-means), loaded with ctypes.
 *
 * Each function does exactly what its numpy twin in cluster.py does, with the same
 * floating-point operations in the same order, so both give identical results; the numpy
 * code is used wherever this file cannot be compiled. Build flags: -O3, no fast-math, no
 * FMA contraction (it would change the rounding).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Counts of each integer value in [lo, lo + nbins); values are known to be in range.
 * Four interleaved partial histograms: runs of equal pixels (air, padding) would otherwise
 * make every increment wait for the previous one to the same counter. */
int histogram_i32(const int32_t *values, int64_t n, int32_t lo, int64_t nbins, int64_t *counts) {
    int64_t *part = calloc((size_t)(4 * nbins), sizeof(int64_t));
    if (part == NULL) return -1;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        part[values[i] - lo]++;
        part[nbins + values[i + 1] - lo]++;
        part[2 * nbins + values[i + 2] - lo]++;
        part[3 * nbins + values[i + 3] - lo]++;
    }
    for (; i < n; i++) part[values[i] - lo]++;
    for (int64_t b = 0; b < nbins; b++) counts[b] = part[b] + part[nbins + b] + part[2 * nbins + b] + part[3 * nbins + b];
    free(part);
    return 0;
}

/* Class of each value: how many boundaries lie strictly below it. For integers,
 * v > b exactly when v > floor(b), so the comparison stays in integers and vectorises. */
void assign_i32(const int32_t *values, int64_t n, const double *bounds, int32_t nb, int8_t *out) {
    for (int64_t i = 0; i < n; i++) out[i] = 0;
    for (int32_t b = 0; b < nb; b++) {
        double f = floor(bounds[b]);
        if (f >= 2147483647.0) continue; /* no int32 lies above it */
        if (f < -2147483648.0) {         /* every int32 lies above it */
            for (int64_t i = 0; i < n; i++) out[i] += 1;
            continue;
        }
        int32_t t = (int32_t)f;
        for (int64_t i = 0; i < n; i++) out[i] += (int8_t)(values[i] > t);
    }
}

typedef struct {
    const double *A, *W, *S, *Q;
    double *cur;
    int64_t *arg;
} layer_t;

/* cur[i] = min_{jlo <= j <= min(jhi, i)} A[j] - (S[i+1]-S[j])^2 / (W[i+1]-W[j]) + Q[i+1]
 * for imin <= i <= imax, by divide and conquer over the monotone argmin. Ties go to the
 * smallest j. */
static void solve(const layer_t *L, int64_t imin, int64_t imax, int64_t jlo, int64_t jhi) {
    while (imin <= imax) {
        int64_t mid = (imin + imax) >> 1;
        int64_t hi = jhi < mid ? jhi : mid;
        double best = INFINITY;
        int64_t bj = jlo;
        double s1 = L->S[mid + 1], w1 = L->W[mid + 1];
        for (int64_t j = jlo; j <= hi; j++) {
            double ds = s1 - L->S[j];
            double val = L->A[j] - ds * ds / (w1 - L->W[j]);
            if (val < best) {
                best = val;
                bj = j;
            }
        }
        L->cur[mid] = best + L->Q[mid + 1];
        L->arg[mid] = bj;
        /* recurse on the smaller half, loop on the other: bounded stack depth */
        if (mid - imin < imax - mid) {
            solve(L, imin, mid - 1, jlo, bj);
            imin = mid + 1;
            jlo = bj;
        } else {
            solve(L, mid + 1, imax, bj, jhi);
            imax = mid - 1;
            jhi = bj;
        }
    }
}

/* The whole exact k-means of sorted distinct values x (weights w > 0, n >= k >= 1):
 * prefix sums W, S, Q (n + 1 each, of weight, weighted centred value and weighted centred
 * square, centred at `mean`), every DP layer, and the backtrack into starts[0..k-1] (first
 * index of each cluster). Same operations in the same order as kmeans_1d's numpy code.
 * Returns -1 when memory runs out. */
int kmeans_dp(const double *x, const double *w, int64_t n, int64_t k, double mean, double *W,
              double *S, double *Q, int64_t *starts) {
    W[0] = S[0] = Q[0] = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - mean;
        double wd = w[i] * d;
        W[i + 1] = W[i] + w[i];
        S[i + 1] = S[i] + wd;
        Q[i + 1] = Q[i] + wd * d;
    }
    starts[0] = 0;
    if (k < 2) return 0;
    double *prev = malloc((size_t)n * sizeof(double));
    double *cur = malloc((size_t)n * sizeof(double));
    double *A = malloc((size_t)n * sizeof(double));
    int64_t *args = malloc((size_t)((k > 2 ? k - 2 : 1) * n) * sizeof(int64_t));
    if (!prev || !cur || !A || !args) {
        free(prev); free(cur); free(A); free(args);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) prev[i] = Q[i + 1] - S[i + 1] * S[i + 1] / W[i + 1];
    for (int64_t q = 2; q < k; q++) { /* layers that need every i */
        int64_t first = q - 1;
        for (int64_t i = 0; i < first; i++) cur[i] = INFINITY;
        for (int64_t j = first; j < n; j++) A[j] = prev[j - 1] - Q[j];
        layer_t L = {A, W, S, Q, cur, args + (q - 2) * n};
        solve(&L, first, n - 1, first, n - 1);
        double *t = prev; prev = cur; cur = t;
    }
    /* last layer: only i = n - 1 */
    int64_t best_j = k - 1;
    double best = INFINITY;
    for (int64_t j = k - 1; j < n; j++) {
        double ds = S[n] - S[j];
        double cost = prev[j - 1] + (Q[n] - Q[j]) - ds * ds / (W[n] - W[j]);
        if (cost < best) {
            best = cost;
            best_j = j;
        }
    }
    starts[k - 1] = best_j;
    int64_t end = best_j - 1;
    for (int64_t q = k - 1; q >= 2; q--) {
        int64_t start = args[(q - 2) * n + end];
        starts[q - 1] = start;
        end = start - 1;
    }
    free(prev); free(cur); free(A); free(args);
    return 0;
}

/* ---- stored integer pixels of one frame straight to a histogram and a label image ----
 * The frame is rows x cols, C-contiguous. Pixels of row r in columns [c0[r], c1[r]) lie
 * inside the reconstruction circle (the whole row when there is none). The histogram
 * counts stored values v inside the circle at bin v - lo (the caller found lo and the bin
 * count with minmax_*); outside it only the padding values [pad_lo, pad_hi] are counted,
 * in a loop the compiler vectorises, since nothing else about those pixels is needed. */

#define FRAME_FUNCS(T, NAME)                                                                      \
    void minmax_##NAME(const T *px, int64_t n, int64_t *out) {                                \
        T lo = px[0], hi = px[0];                                                             \
        for (int64_t i = 1; i < n; i++) {                                                     \
            T v = px[i];                                                                      \
            lo = v < lo ? v : lo;                                                             \
            hi = v > hi ? v : hi;                                                             \
        }                                                                                     \
        out[0] = lo;                                                                          \
        out[1] = hi;                                                                          \
    }                                                                                         \
    static int64_t count_range_##NAME(const T *p, int64_t len, T pad_lo, T pad_hi) {          \
        int64_t n = 0;                                                                        \
        for (int64_t i = 0; i < len; i++) n += (p[i] >= pad_lo) & (p[i] <= pad_hi);           \
        return n;                                                                             \
    }                                                                                         \
    /* Four interleaved partial histograms: runs of equal pixels would otherwise make each \
     * increment wait for the previous one to the same counter. Returns -1 without memory,  \
     * else the number of padding pixels outside the circle. */                            \
    int64_t frame_histogram_##NAME(const T *px, int64_t rows, int64_t cols, const int32_t *c0,  \
                                   const int32_t *c1, int64_t lo, int64_t nbins, int64_t pad_lo, \
                                   int64_t pad_hi, int64_t *counts) {                          \
        uint32_t *part = calloc((size_t)(4 * nbins), sizeof(uint32_t));                       \
        if (part == NULL) return -1;                                                          \
        int64_t outside_padding = 0;                                                          \
        for (int64_t r = 0; r < rows; r++) {                                                  \
            const T *row = px + r * cols;                                                     \
            if (pad_lo <= pad_hi) {                                                           \
                outside_padding += count_range_##NAME(row, c0[r], (T)pad_lo, (T)pad_hi);      \
                outside_padding += count_range_##NAME(row + c1[r], cols - c1[r], (T)pad_lo, (T)pad_hi); \
            }                                                                                 \
            const T *p = row + c0[r];                                                         \
            int64_t len = c1[r] - c0[r], i = 0;                                               \
            for (; i + 4 <= len; i += 4) {                                                    \
                part[p[i] - lo]++;                                                            \
                part[nbins + p[i + 1] - lo]++;                                                \
                part[2 * nbins + p[i + 2] - lo]++;                                            \
                part[3 * nbins + p[i + 3] - lo]++;                                            \
            }                                                                                 \
            for (; i < len; i++) part[p[i] - lo]++;                                           \
        }                                                                                     \
        for (int64_t b = 0; b < nbins; b++)                                                   \
            counts[b] = (int64_t)part[b] + part[nbins + b] + part[2 * nbins + b] + part[3 * nbins + b]; \
        free(part);                                                                           \
        return outside_padding;                                                               \
    }                                                                                         \
    /* Label of each pixel: -1 outside the circle or for padding [pad_lo, pad_hi], else the \
     * number of thresholds the stored value exceeds (reversed when inverted). One pass for \
     * two thresholds (k = 3), else one pass per threshold; the loops vectorise. Thresholds \
     * and padding bounds fit in T; an empty padding range has pad_lo > pad_hi. */         \
    static void label_run_##NAME(const T *p, int64_t len, const int64_t *thresholds, int32_t nt, \
                                 int32_t inverted, T pad_lo, T pad_hi, int8_t *o) {          \
        int8_t base = inverted ? (int8_t)nt : 0, step = inverted ? -1 : 1;                    \
        if (nt == 2) {                                                                        \
            T t0 = (T)thresholds[0], t1 = (T)thresholds[1];                                   \
            for (int64_t c = 0; c < len; c++) {                                               \
                int8_t l = (int8_t)(base + step * ((p[c] > t0) + (p[c] > t1)));               \
                o[c] = (p[c] >= pad_lo) & (p[c] <= pad_hi) ? -1 : l;                          \
            }                                                                                 \
            return;                                                                           \
        }                                                                                     \
        for (int64_t c = 0; c < len; c++) o[c] = base;                                        \
        for (int32_t t = 0; t < nt; t++) {                                                    \
            T th = (T)thresholds[t];                                                          \
            for (int64_t c = 0; c < len; c++) o[c] = (int8_t)(o[c] + step * (p[c] > th));     \
        }                                                                                     \
        for (int64_t c = 0; c < len; c++) o[c] = (p[c] >= pad_lo) & (p[c] <= pad_hi) ? -1 : o[c]; \
    }                                                                                         \
    void frame_labels_##NAME(const T *px, int64_t rows, int64_t cols, const int32_t *c0,        \
                             const int32_t *c1, const int64_t *thresholds, int32_t nt,         \
                             int32_t inverted, int64_t pad_lo, int64_t pad_hi, int8_t *out) {  \
        int empty = pad_lo > pad_hi; /* then a range no value falls in: lo > hi in T */      \
        T pl = empty ? (T)1 : (T)pad_lo, ph = empty ? (T)0 : (T)pad_hi;                       \
        for (int64_t r = 0; r < rows; r++) {                                                  \
            int8_t *o = out + r * cols;                                                       \
            for (int64_t c = 0; c < c0[r]; c++) o[c] = -1;                                    \
            for (int64_t c = c1[r]; c < cols; c++) o[c] = -1;                                 \
            label_run_##NAME(px + r * cols + c0[r], c1[r] - c0[r], thresholds, nt, inverted, pl, ph, o + c0[r]); \
        }                                                                                     \
    }

FRAME_FUNCS(int16_t, i16)
FRAME_FUNCS(uint16_t, u16)
FRAME_FUNCS(uint8_t, u8)
