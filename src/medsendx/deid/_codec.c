/* The element walk of codec.parse_dataset, compiled (see deid/_native.py).
 *
 * Same rules, same order, same errors as the Python code in codec.py, which stays the
 * reference (used without a compiler; a test compares both on real files and on damaged
 * copies of them). Only the structure is read: tag, VR, where the value is, where the
 * element ends. Values are never interpreted here.
 *
 * parse_dataset() fills `out` with 6 int64 per element (tag, vr code, start, value, end,
 * length) and returns how many, or a negative error code (the messages are in
 * _native.py). The dictionary check that Python makes on an implicit-VR element of
 * undefined length ("is this tag a sequence?") needs the data dictionary: such tags are
 * listed in `checks`, in walk order at any depth, and Python checks them.
 *
 * Nesting is bounded by `max_depth` (codec.MAX_DEPTH, passed in, so both walks share one
 * number): the recursion below is one C frame pair per level, and a crafted file of tens
 * of thousands of nested sequences would otherwise exhaust the stack (SIGSEGV).
 */
#include <stddef.h>
#include <stdint.h>

#define UNDEFINED 0xFFFFFFFFu
#define ITEM 0xFFFEE000u
#define ITEM_END 0xFFFEE00Du
#define SEQUENCE_END 0xFFFEE0DDu
#define PIXEL_DATA 0x7FE00010u

enum {
    E_HEADER_TRUNCATED = -1, E_MISPLACED_DELIMITER = -2, E_BAD_VR = -3, E_UNDEFINED_NOT_SEQUENCE = -4,
    E_PAST_END = -5, E_ITEM_TRUNCATED = -6, E_BAD_FRAGMENTS = -7, E_EXPECTED_ITEM = -8,
    E_ITEM_PAST_END = -9, E_SEQUENCE_TRUNCATED = -10, E_PIXELS_TRUNCATED = -11, E_TOO_DEEP = -12, E_FULL = -100
};

/* codec.VR_CODES in this order (code = index + 1; 0 = implicit, no VR), and whether the
 * VR has the long (4-byte) length form: codec.LONG_VRS. A test checks both. */
static const struct {
    char name[3];
    char is_long;
} VRS[] = {
    {"AE", 0}, {"AS", 0}, {"AT", 0}, {"CS", 0}, {"DA", 0}, {"DS", 0}, {"DT", 0}, {"FD", 0}, {"FL", 0},
    {"IS", 0}, {"LO", 0}, {"LT", 0}, {"OB", 1}, {"OD", 1}, {"OF", 1}, {"OL", 1}, {"OV", 1}, {"OW", 1},
    {"PN", 0}, {"SH", 0}, {"SL", 0}, {"SQ", 1}, {"SS", 0}, {"ST", 0}, {"SV", 1}, {"TM", 0}, {"UC", 1},
    {"UI", 0}, {"UL", 0}, {"UN", 1}, {"UR", 1}, {"US", 0}, {"UT", 1}, {"UV", 1}
};
#define N_VRS ((int)(sizeof VRS / sizeof VRS[0]))
#define CODE_SQ 22
#define CODE_UN 30
static int vr_code(const uint8_t *p) {
    for (int i = 0; i < N_VRS; i++)
        if (p[0] == (uint8_t)VRS[i].name[0] && p[1] == (uint8_t)VRS[i].name[1]) return i + 1;
    return 0;
}

typedef struct {
    const uint8_t *buf;
    uint32_t *checks;
    int64_t checks_cap, n_checks;
    int64_t max_depth;
} Walk;

static uint16_t u16(const uint8_t *p, int little) { return little ? (uint16_t)(p[0] | p[1] << 8) : (uint16_t)(p[1] | p[0] << 8); }
static uint32_t u32(const uint8_t *p, int little) {
    return little ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
                  : (uint32_t)p[3] | (uint32_t)p[2] << 8 | (uint32_t)p[1] << 16 | (uint32_t)p[0] << 24;
}

static int64_t walk(Walk *w, int64_t pos, int64_t end, int implicit, int little, int until_item_end, int64_t *out,
                    int64_t cap, int64_t *stop_out, int64_t depth);

/* codec._items: the position after the sequence (or fragments) delimiter, or an error.
 * `depth` is the level of the dataset holding the sequence. */
static int64_t items(Walk *w, int64_t pos, int64_t end, int implicit, int little, int fragments, int64_t depth) {
    while (pos + 8 <= end) {
        uint32_t tag = (uint32_t)u16(w->buf + pos, little) << 16 | u16(w->buf + pos + 2, little);
        uint32_t length = u32(w->buf + pos + 4, little);
        if (tag == SEQUENCE_END) return pos + 8;
        if (tag != ITEM || (fragments && length == UNDEFINED)) return fragments ? E_BAD_FRAGMENTS : E_EXPECTED_ITEM;
        if (!fragments && depth >= w->max_depth) return E_TOO_DEEP;
        if (length == UNDEFINED) {
            int64_t stop, got = walk(w, pos + 8, end, implicit, little, 1, NULL, 0, &stop, depth + 1);
            if (got < 0) return got;
            pos = stop;
        } else {
            if (pos + 8 + (int64_t)length > end) return E_ITEM_PAST_END;
            pos += 8 + (int64_t)length;
        }
    }
    return fragments ? E_PIXELS_TRUNCATED : E_SEQUENCE_TRUNCATED;
}

/* codec.parse_dataset. With out == NULL the elements are only counted (a nested item). */
static int64_t walk(Walk *w, int64_t pos, int64_t end, int implicit, int little, int until_item_end, int64_t *out,
                    int64_t cap, int64_t *stop_out, int64_t depth) {
    const uint8_t *buf = w->buf;
    int64_t n = 0;
    while (pos < end) {
        if (pos + 8 > end) return E_HEADER_TRUNCATED;
        uint32_t group = u16(buf + pos, little), tag = group << 16 | u16(buf + pos + 2, little);
        if (group == 0xFFFE) {
            if (tag == ITEM_END && until_item_end) {
                *stop_out = pos + 8;
                return n;
            }
            return E_MISPLACED_DELIMITER;
        }
        int code = 0;
        uint32_t length;
        int64_t value;
        if (implicit) {
            length = u32(buf + pos + 4, little);
            value = pos + 8;
        } else {
            code = vr_code(buf + pos + 4);
            if (!code) return E_BAD_VR;
            if (VRS[code - 1].is_long) {
                if (pos + 12 > end) return E_HEADER_TRUNCATED;
                length = u32(buf + pos + 8, little);
                value = pos + 12;
            } else {
                length = u16(buf + pos + 6, little);
                value = pos + 8;
            }
        }
        int64_t stop;
        if (length == UNDEFINED) {
            if (tag == PIXEL_DATA) {
                stop = items(w, value, end, implicit, little, 1, depth);
            } else if (code == 0 || code == CODE_SQ || code == CODE_UN) {
                if (code == 0) {
                    if (w->n_checks >= w->checks_cap) return E_FULL;
                    w->checks[w->n_checks++] = tag;
                }
                stop = code == CODE_UN ? items(w, value, end, 1, 1, 0, depth) : items(w, value, end, implicit, little, 0, depth);
            } else {
                return E_UNDEFINED_NOT_SEQUENCE;
            }
            if (stop < 0) return stop;
        } else {
            stop = value + (int64_t)length;
            if (stop > end) return E_PAST_END;
        }
        if (out) {
            if (n >= cap) return E_FULL;
            int64_t *row = out + 6 * n;
            row[0] = tag, row[1] = code, row[2] = pos, row[3] = value, row[4] = stop, row[5] = length;
        }
        n++;
        pos = stop;
    }
    if (until_item_end) return E_ITEM_TRUNCATED;
    *stop_out = pos;
    return n;
}

int64_t parse_dataset(const uint8_t *buf, int64_t pos, int64_t end, int implicit, int little, int until_item_end,
                      int64_t *out, int64_t cap, uint32_t *checks, int64_t checks_cap, int64_t *n_checks,
                      int64_t *stop_out, int64_t depth, int64_t max_depth) {
    Walk w = {buf, checks, checks_cap, 0, max_depth};
    int64_t got = walk(&w, pos, end, implicit, little, until_item_end, out, cap, stop_out, depth);
    *n_checks = w.n_checks;
    return got;
}
