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
            int better = val < best; /* branch-free: a mispredicted branch costs more */
            best = better ? val : best;
            bj = better ? j : bj;
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

/* The whole exact k-means of sorted distinct values x (weights w > 0, n >= k >= 1): the
 * weighted mean (sequential sums), prefix sums of weight, weighted centred value and
 * weighted centred square, every DP layer, the backtrack into starts[0..k-1] (first index of
 * each cluster) and stats = centres[k], weights[k], SSE. The same operations in the same
 * order as cluster.py's numpy code. Returns -1 when memory runs out. */
int kmeans_dp(const double *x, const double *w, int64_t n, int64_t k, int64_t *starts, double *stats) {
    double *W = malloc((size_t)(3 * (n + 1)) * sizeof(double));
    double *prev = malloc((size_t)n * sizeof(double));
    double *cur = malloc((size_t)n * sizeof(double));
    double *A = malloc((size_t)n * sizeof(double));
    int64_t *args = malloc((size_t)((k > 2 ? k - 2 : 1) * n) * sizeof(int64_t));
    if (!W || !prev || !cur || !A || !args) {
        free(W); free(prev); free(cur); free(A); free(args);
        return -1;
    }
    double *S = W + (n + 1), *Q = W + 2 * (n + 1);
    double sum_wx = 0.0, sum_w = 0.0;
    for (int64_t i = 0; i < n; i++) {
        sum_wx += w[i] * x[i];
        sum_w += w[i];
    }
    double mean = sum_wx / sum_w;
    W[0] = S[0] = Q[0] = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - mean;
        double wd = w[i] * d;
        W[i + 1] = W[i] + w[i];
        S[i + 1] = S[i] + wd;
        Q[i + 1] = Q[i] + wd * d;
    }
    starts[0] = 0;
    if (k >= 2) {
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
    }
    double sse = 0.0;
    for (int64_t c = 0; c < k; c++) {
        int64_t s = starts[c], e1 = c + 1 < k ? starts[c + 1] : n; /* one past the last */
        double cw = W[e1] - W[s], cs = S[e1] - S[s];
        stats[c] = cs / cw + mean;
        stats[k + c] = cw;
        sse += Q[e1] - Q[s] - cs * cs / cw;
    }
    stats[2 * k] = sse;
    free(W); free(prev); free(cur); free(A); free(args);
    return 0;
}

/* ---- one frame of stored integer pixels, segmented in one call ----
 * The frame is rows x cols, C-contiguous. Pixels of row r in columns [c0[r], c1[r]) lie
 * inside the reconstruction circle (the whole row when there is none). Stored values in
 * [pad_lo, pad_hi] are padding (pad_lo > pad_hi: none). Modality value = slope * stored +
 * intercept (slope > 0). Steps: min and max; a histogram of the stored values inside the
 * circle (outside it only padding is counted, in a vectorised loop, since nothing else
 * about those pixels is needed); padding bins dropped; the present bins, in modality
 * units, clustered by kmeans_dp; the cluster boundaries turned into thresholds in stored
 * units; one label per pixel (-1: padding or outside the circle). Outputs: values/weights
 * (the histogram, `capacity` entries at most), info = n_present, padding pixels, non-padding
 * pixels outside the circle, k used (<= 65), starts[k]; stats as kmeans_dp. Returns 0; 1 when no pixel is valid; 2 when the histogram has more than
 * `capacity` entries (info[0] says how many); -1 without memory. */

#define FRAME_FUNCS(T, NAME)                                                                     \
    static void histogram_run_##NAME(const T *p, int64_t len, uint32_t *a, uint32_t *b,       \
                                     uint32_t *c, uint32_t *d) {                               \
        /* four interleaved partial histograms: runs of equal pixels would otherwise make   \
         * each increment wait for the previous one to the same counter */                  \
        int64_t i = 0;                                                                         \
        for (; i + 4 <= len; i += 4) {                                                         \
            a[p[i]]++;                                                                         \
            b[p[i + 1]]++;                                                                     \
            c[p[i + 2]]++;                                                                     \
            d[p[i + 3]]++;                                                                     \
        }                                                                                      \
        for (; i < len; i++) a[p[i]]++;                                                        \
    }                                                                                          \
    static int64_t count_range_##NAME(const T *p, int64_t len, T lo, T hi) {                  \
        int64_t n = 0;                                                                         \
        for (int64_t i = 0; i < len; i++) n += (p[i] >= lo) & (p[i] <= hi);                    \
        return n;                                                                              \
    }                                                                                          \
    static void label_run_##NAME(const T *p, int64_t len, const T *th, int64_t nt, int32_t inverted, \
                                 T pad_lo, T pad_hi, int8_t *o) {                              \
        if (nt == 2) { /* k = 3, the default: one pass */                                    \
            T t0 = th[0], t1 = th[1];                                                          \
            int8_t base = inverted ? 2 : 0, step = inverted ? -1 : 1;                          \
            for (int64_t c = 0; c < len; c++) {                                                \
                int8_t l = (int8_t)(base + step * ((p[c] > t0) + (p[c] > t1)));                \
                o[c] = (p[c] >= pad_lo) & (p[c] <= pad_hi) ? -1 : l;                           \
            }                                                                                  \
            return;                                                                            \
        }                                                                                      \
        for (int64_t c = 0; c < len; c++) o[c] = 0;                                            \
        for (int64_t t = 0; t < nt; t++) {                                                     \
            T tt = th[t];                                                                      \
            for (int64_t c = 0; c < len; c++) o[c] = (int8_t)(o[c] + (p[c] > tt));             \
        }                                                                                      \
        if (inverted)                                                                          \
            for (int64_t c = 0; c < len; c++) o[c] = (int8_t)(nt - o[c]);                      \
        for (int64_t c = 0; c < len; c++) o[c] = (p[c] >= pad_lo) & (p[c] <= pad_hi) ? -1 : o[c]; \
    }                                                                                          \
    int segment_frame_##NAME(const T *px, int64_t rows, int64_t cols, const int32_t *c0,        \
                             const int32_t *c1, int64_t pad_lo_in, int64_t pad_hi_in,          \
                             int64_t slope, int64_t intercept, int64_t k, int32_t inverted,    \
                             int8_t *labels, double *values, double *weights, int64_t capacity, \
                             int64_t *info, double *stats) {                                   \
        int64_t n_px = rows * cols;                                                            \
        T lo = px[0], hi = px[0];                                                              \
        for (int64_t i = 1; i < n_px; i++) {                                                   \
            lo = px[i] < lo ? px[i] : lo;                                                      \
            hi = px[i] > hi ? px[i] : hi;                                                      \
        }                                                                                      \
        /* padding values that occur, clipped to [lo, hi] so that they fit in T */            \
        int64_t pl = pad_lo_in > lo ? pad_lo_in : lo, ph = pad_hi_in < hi ? pad_hi_in : hi;    \
        int has_pad = pl <= ph;                                                                \
        T pad_lo = has_pad ? (T)pl : (T)1, pad_hi = has_pad ? (T)ph : (T)0;                    \
        int64_t nbins = (int64_t)hi - lo + 1;                                                  \
        uint32_t *part = calloc((size_t)(4 * nbins), sizeof(uint32_t));                        \
        if (part == NULL) return -1;                                                           \
        /* tables indexed by the stored value itself: shifted by lo (no per-pixel subtract) */ \
        uint32_t *tab[4];                                                                      \
        for (int u = 0; u < 4; u++) tab[u] = (uint32_t *)((uintptr_t)(part + u * nbins) - (uintptr_t)((int64_t)lo * (int64_t)sizeof(uint32_t))); \
        int64_t padding_outside = 0, inside_total = 0;                                         \
        for (int64_t r = 0; r < rows; r++) {                                                   \
            const T *row = px + r * cols;                                                      \
            if (has_pad) {                                                                     \
                padding_outside += count_range_##NAME(row, c0[r], pad_lo, pad_hi);             \
                padding_outside += count_range_##NAME(row + c1[r], cols - c1[r], pad_lo, pad_hi); \
            }                                                                                  \
            histogram_run_##NAME(row + c0[r], c1[r] - c0[r], tab[0], tab[1], tab[2], tab[3]);  \
            inside_total += c1[r] - c0[r];                                                     \
        }                                                                                      \
        int64_t padding_inside = 0, n = 0;                                                     \
        for (int64_t b = 0; b < nbins; b++) {                                                  \
            int64_t count = (int64_t)part[b] + part[nbins + b] + part[2 * nbins + b] + part[3 * nbins + b]; \
            if (count == 0) continue;                                                          \
            int64_t v = lo + b;                                                                \
            if (has_pad && v >= pl && v <= ph) {                                               \
                padding_inside += count;                                                       \
                continue;                                                                      \
            }                                                                                  \
            if (n < capacity) {                                                                \
                values[n] = (double)(v * slope + intercept);                                   \
                weights[n] = (double)count;                                                    \
            }                                                                                  \
            n++;                                                                               \
        }                                                                                      \
        free(part);                                                                            \
        info[0] = n;                                                                           \
        info[1] = padding_inside + padding_outside;                                            \
        info[2] = n_px - inside_total - padding_outside; /* outside the circle, not padding */ \
        if (n == 0) return 1;                                                                  \
        if (n > capacity) return 2;                                                            \
        if (k > n) k = n;                                                                      \
        if (k > 65) return -1; /* more classes than the threshold table holds */             \
        info[3] = k;                                                                           \
        int64_t *starts = info + 4;                                                            \
        if (kmeans_dp(values, weights, n, k, starts, stats)) return -1;                        \
        /* v exceeds boundary b (a half-integer between two present values) exactly when    \
         * v > floor((b - intercept) / slope); at least lo, since every boundary lies above \
         * the smallest valid value; at or above hi means no pixel exceeds it */            \
        T th[64];                                                                              \
        for (int64_t b = 0; b + 1 < k; b++) {                                                  \
            double bound = (values[starts[b + 1] - 1] + values[starts[b + 1]]) / 2.0;          \
            double t = floor((bound - (double)intercept) / (double)slope);                     \
            th[b] = t < (double)lo ? lo : (t > (double)hi ? hi : (T)t);                        \
        }                                                                                      \
        for (int64_t r = 0; r < rows; r++) {                                                   \
            int8_t *o = labels + r * cols;                                                     \
            for (int64_t c = 0; c < c0[r]; c++) o[c] = -1;                                     \
            for (int64_t c = c1[r]; c < cols; c++) o[c] = -1;                                  \
            label_run_##NAME(px + r * cols + c0[r], c1[r] - c0[r], th, k - 1, inverted, pad_lo, pad_hi, o + c0[r]); \
        }                                                                                      \
        return 0;                                                                              \
    }

FRAME_FUNCS(int16_t, i16)
FRAME_FUNCS(uint16_t, u16)
FRAME_FUNCS(uint8_t, u8)
