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

void dp_layer(const double *A, const double *W, const double *S, const double *Q, int64_t first,
              int64_t n, double *cur, int64_t *arg) {
    layer_t L = {A, W, S, Q, cur, arg};
    solve(&L, first, n - 1, first, n - 1);
}
