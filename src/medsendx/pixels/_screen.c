/* The pixel screen's per-pixel passes (screen.py), compiled on first use (medsendx.native).

   screen.py's numpy code is the reference: these functions give identical counts, and a
   test compares both on real slices and on planted and random planes. Values are read as
   int32, so a threshold or the filler of a partial tile (one beyond the type's range) need
   no clamping to the pixel type: the comparisons come out as numpy's on the clamped type. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TILE 32

/* The lowest and highest stored values of every `rowstep`-th row (rows `stride` elements
   apart), then the counts per value of those rows: counts[v - lo] for lo <= v <= hi. Counted
   in four lanes (a run of one value, such as the air around a head, would otherwise make
   each increment wait for the one before it). Returns -1 when the scratch cannot be had. */
#define HISTOGRAM(K, T)                                                                             \
    void screen_range_##K(const T *p, int64_t rows, int64_t cols, int64_t stride,                   \
                          int64_t rowstep, int32_t *lo, int32_t *hi)                                \
    {                                                                                               \
        T low = p[0], high = p[0];                                                                  \
        for (int64_t y = 0; y < rows; y += rowstep) {                                               \
            const T *row = p + y * stride;                                                          \
            for (int64_t x = 0; x < cols; x++) {                                                    \
                T v = row[x];                                                                       \
                low = v < low ? v : low;                                                            \
                high = v > high ? v : high;                                                         \
            }                                                                                       \
        }                                                                                           \
        *lo = low;                                                                                  \
        *hi = high;                                                                                 \
    }                                                                                               \
    int screen_histogram_##K(const T *p, int64_t rows, int64_t cols, int64_t stride,                \
                             int64_t rowstep, int32_t lo, int64_t n, int64_t *counts)               \
    {                                                                                               \
        uint32_t *lanes = calloc((size_t)(4 * n), sizeof(uint32_t));                                \
        if (lanes == NULL) return -1;                                                               \
        uint32_t *l0 = lanes, *l1 = lanes + n, *l2 = lanes + 2 * n, *l3 = lanes + 3 * n;            \
        for (int64_t y = 0; y < rows; y += rowstep) {                                               \
            const T *row = p + y * stride;                                                          \
            int64_t x = 0;                                                                          \
            for (; x + 4 <= cols; x += 4) {                                                         \
                l0[(int32_t)row[x] - lo]++;                                                         \
                l1[(int32_t)row[x + 1] - lo]++;                                                     \
                l2[(int32_t)row[x + 2] - lo]++;                                                     \
                l3[(int32_t)row[x + 3] - lo]++;                                                     \
            }                                                                                       \
            for (; x < cols; x++) l0[(int32_t)row[x] - lo]++;                                       \
        }                                                                                           \
        for (int64_t i = 0; i < n; i++) counts[i] = (int64_t)l0[i] + l1[i] + l2[i] + l3[i];         \
        free(lanes);                                                                                \
        return 0;                                                                                   \
    }

/* Per 32 x 32 tile: the pixels holding `value` (a C-contiguous rows x cols plane; the
   tiles of a partial last row or column count their pixels beyond the plane as holding
   `filler`, as the numpy code's grown plane does). */
#define TILE_COUNTS(K, T)                                                                           \
    void screen_tile_counts_##K(const T *p, int64_t rows, int64_t cols, int32_t value,              \
                                int32_t filler, int64_t th, int64_t tw, int32_t *out)               \
    {                                                                                               \
        memset(out, 0, (size_t)(th * tw) * sizeof(int32_t));                                        \
        const T v = (T)value;                                                                       \
        int in_type = (int32_t)v == value;                                                          \
        if (in_type) {                                                                              \
            for (int64_t y = 0; y < rows; y++) {                                                    \
                const T *row = p + y * cols;                                                        \
                int32_t *band = out + (y / TILE) * tw;                                              \
                int64_t x = 0;                                                                      \
                for (int64_t t = 0; t < tw; t++) {                                                  \
                    int64_t end = x + TILE < cols ? x + TILE : cols;                                \
                    int32_t c = 0;                                                                  \
                    for (; x < end; x++) c += row[x] == v;                                          \
                    band[t] += c;                                                                   \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        if (value == filler) {                                                                      \
            for (int64_t ti = 0; ti < th; ti++)                                                     \
                for (int64_t tj = 0; tj < tw; tj++) {                                               \
                    int64_t h = rows - ti * TILE, w = cols - tj * TILE;                             \
                    h = h < TILE ? h : TILE;                                                        \
                    w = w < TILE ? w : TILE;                                                        \
                    out[ti * tw + tj] += TILE * TILE - (int32_t)(h * w);                            \
                }                                                                                   \
        }                                                                                           \
    }

/* The stroke test of a pixel from its neighbours 2 and 3 pixels away, n[] = {left 2, right
   2, up 2, down 2, left 3, right 3, up 3, down 3}: both sides of a pair beyond a threshold
   the same way (above `above` or below `below`: a ridge or a valley, not an edge). Bit 1:
   some pair, at the first threshold; bit 2: a left/right pair, bit 4: an up/down pair, at
   the second (fainter or equal) threshold. */
static inline int stroke_bits(const int32_t *n, int32_t above, int32_t below, int32_t above2,
                              int32_t below2)
{
    int bits = 0;
    for (int i = 0; i < 8; i += 2) {
        int32_t b = n[i], a = n[i + 1];
        /* (beyond the first threshold is beyond the second: above2 <= above, below2 >= below) */
        if ((b > above2 && a > above2) || (b < below2 && a < below2)) {
            bits |= (i & 2) ? 4 : 2;
            if ((b > above && a > above) || (b < below && a < below)) bits |= 1;
        }
    }
    return bits;
}

/* The stroke test of screen._Plane.thin_tiles, in one pass: in the candidate tiles
   (row-major), every `step`-th pixel holding `value` (counted over the candidates in
   order: tile, row, column) that has a 4-neighbour of the same value and a ridge (see
   stroke_bits) counts for its tile: in `out` at the first threshold (either direction),
   in `across` and `along` at the second (left/right pairs, up/down pairs). Neighbours
   beyond the grown plane are its border pixels; pixels beyond the plane hold `filler`. */
#define STROKES(K, T)                                                                               \
    static inline int32_t at_##K(const T *p, int64_t rows, int64_t cols, int64_t gh,                \
                                 int64_t gw, int64_t y, int64_t x, int32_t filler)                  \
    {                                                                                               \
        y = y < 0 ? 0 : (y >= gh ? gh - 1 : y);                                                     \
        x = x < 0 ? 0 : (x >= gw ? gw - 1 : x);                                                     \
        return (y < rows && x < cols) ? (int32_t)p[y * cols + x] : filler;                          \
    }                                                                                               \
    void screen_strokes_##K(const T *p, int64_t rows, int64_t cols, int32_t value,                  \
                            int32_t above, int32_t below, int32_t above2, int32_t below2,           \
                            int32_t filler, const uint8_t *candidates, int64_t th, int64_t tw,      \
                            int64_t step, int32_t *out, int32_t *across, int32_t *along)            \
    {                                                                                               \
        const int64_t gh = th * TILE, gw = tw * TILE;                                               \
        int64_t seen = 0;                                                                           \
        size_t bytes = (size_t)(th * tw) * sizeof(int32_t);                                         \
        memset(out, 0, bytes);                                                                      \
        memset(across, 0, bytes);                                                                   \
        memset(along, 0, bytes);                                                                    \
        for (int64_t ti = 0; ti < th; ti++)                                                         \
            for (int64_t tj = 0; tj < tw; tj++) {                                                   \
                if (!candidates[ti * tw + tj]) continue;                                            \
                int32_t hits[3] = {0, 0, 0};                                                        \
                int32_t n[8];                                                                       \
                const int64_t y0 = ti * TILE, x0 = tj * TILE;                                       \
                const int inside =                                                                  \
                    y0 >= 3 && y0 + TILE + 3 <= rows && x0 >= 3 && x0 + TILE + 3 <= cols;           \
                for (int64_t y = y0; y < y0 + TILE; y++)                                            \
                    for (int64_t x = x0; x < x0 + TILE; x++) {                                      \
                        int bits;                                                                   \
                        if (inside) { /* the tile and its neighbours in the plane: no clamping */   \
                            const T *c = p + y * cols + x;                                          \
                            if ((int32_t)c[0] != value || seen++ % step) continue;                  \
                            for (int k = 2, i = 0; k <= 3; k++, i += 4) {                           \
                                n[i] = c[-k], n[i + 1] = c[k];                                      \
                                n[i + 2] = c[-k * cols], n[i + 3] = c[k * cols];                    \
                            }                                                                       \
                            bits = stroke_bits(n, above, below, above2, below2);                    \
                            if (!bits || !((int32_t)c[1] == value || (int32_t)c[-1] == value ||     \
                                           (int32_t)c[cols] == value || (int32_t)c[-cols] == value)) \
                                continue;                                                           \
                        } else {                                                                    \
                            if (at_##K(p, rows, cols, gh, gw, y, x, filler) != value) continue;     \
                            if (seen++ % step) continue;                                            \
                            for (int k = 2, i = 0; k <= 3; k++, i += 4) {                           \
                                n[i] = at_##K(p, rows, cols, gh, gw, y, x - k, filler);             \
                                n[i + 1] = at_##K(p, rows, cols, gh, gw, y, x + k, filler);         \
                                n[i + 2] = at_##K(p, rows, cols, gh, gw, y - k, x, filler);         \
                                n[i + 3] = at_##K(p, rows, cols, gh, gw, y + k, x, filler);         \
                            }                                                                       \
                            bits = stroke_bits(n, above, below, above2, below2);                    \
                            if (!bits) continue;                                                    \
                            if (!(at_##K(p, rows, cols, gh, gw, y, x + 1, filler) == value ||       \
                                  at_##K(p, rows, cols, gh, gw, y, x - 1, filler) == value ||       \
                                  at_##K(p, rows, cols, gh, gw, y + 1, x, filler) == value ||       \
                                  at_##K(p, rows, cols, gh, gw, y - 1, x, filler) == value))        \
                                continue;                                                           \
                        }                                                                           \
                        hits[0] += bits & 1;                                                        \
                        hits[1] += (bits >> 1) & 1;                                                 \
                        hits[2] += (bits >> 2) & 1;                                                 \
                    }                                                                               \
                out[ti * tw + tj] = hits[0];                                                        \
                across[ti * tw + tj] = hits[1];                                                     \
                along[ti * tw + tj] = hits[2];                                                      \
            }                                                                                       \
    }

#define KIND(K, T) HISTOGRAM(K, T) TILE_COUNTS(K, T) STROKES(K, T)
KIND(i16, int16_t)
KIND(u16, uint16_t)
KIND(u8, uint8_t)
