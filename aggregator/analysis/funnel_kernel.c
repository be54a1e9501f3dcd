/* Funnels in one pass over each learner's rows (module
 * studyin_analytics.aggregator.analysis._funnel_kernel; the caller is funnels.py).
 *
 * Why compiled: the pass is a recurrence from row to row, which numpy cannot express without a
 * Python loop. Here a learner's rows inside the funnel's time span (found by two binary
 * searches) are walked in order, each row's matches looked up from its event type, so a query
 * costs about the same for 5 or 20 steps: the rows read set the price, not the steps.
 *
 * Ordered and strict: the pass keeps, per step k >= 1, one *slot*: the newest row that ends a
 * valid chain able to continue into step k (a chain through step k-1, or through an earlier step
 * when the steps in between are optional), with that chain's latest start. The newest row
 * dominates every older one: its time is the latest (per-step windows), no exclusion lies after it
 * that does not lie after the older ones, it is the only one that can be the previous row
 * (strict), and its start is the latest (starts never decrease along one slot's rows: a row takes
 * the start of the newest row in the slot before it; two chains ending on one row keep the later
 * start). So one slot per step is exact. Within one row, every match is decided on the slots as
 * they were before the row (a row is one step of a chain, never two); exclusions then clear their
 * slots (an excluded row lies strictly between a predecessor and the next step, so it may still be
 * a predecessor itself); the row's new chains are stored last.
 *
 * Any order: a two-pointer sweep over the learner's step rows keeps, per step, how many rows of
 * the window [start row, start time + window] match it.
 *
 * Semantics: docs/analytics.md. The numpy engine in funnels.py gives the same answers; the tests
 * compare both with a brute-force reference. Bits of a matcher: 1 << k, the row matches step k;
 * 1 << (32 + k), it is an exclusion before step k.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_STEPS 32
#define MAX_MATCHERS 32
#define MAX_FILTERS 4
#define UNSET INT64_MIN
#define STEP_BITS 0xffffffffu

typedef struct {
    const int32_t *column; /* the row's property code (-1: none) */
    const int32_t *allowed; /* sorted codes accepted */
    Py_ssize_t nallowed;
} Filter;

typedef struct {
    int64_t type;
    uint64_t bits;
    int nfilters;
    Filter filters[MAX_FILTERS];
} Matcher;

typedef struct {
    const int64_t *offsets, *time;
    const int16_t *etype;
    Py_ssize_t learners, rows;
    Matcher matchers[MAX_MATCHERS];
    int nmatchers;
    /* By event type code (0 .. ntypes-1): the bits of its matchers without filters, and whether
       it has matchers with filters (checked one by one). One look-up a row instead of a loop. */
    uint64_t *plain;
    uint8_t *filtered;
    int64_t ntypes;
} Store;

typedef struct {
    int n, strict;
    uint32_t optional; /* bit k: step k may be skipped */
    int64_t window, t0, t1;
    const int64_t *within; /* per step, < 0: none */
} Params;

typedef struct {
    int64_t *learner, *entry, *value; /* value: n rows of `cap` columns (ordered), or one (any order) */
    Py_ssize_t cap, count;
} Out;

typedef struct {
    int64_t row, time, start; /* meaningful while the slot's bit is set in `live` */
} Slot;

static int in_sorted(const int32_t *a, Py_ssize_t n, int32_t x) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (a[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && a[lo] == x;
}

/* The bits of the filtered matchers of `type` that row `row` passes (the slow path of row_bits). */
static __attribute__((noinline)) uint64_t filtered_bits(const Store *s, Py_ssize_t row, int64_t type) {
    uint64_t bits = 0;
    for (int m = 0; m < s->nmatchers; m++) {
        const Matcher *mt = &s->matchers[m];
        if (mt->type != type || mt->nfilters == 0)
            continue;
        int ok = 1;
        for (int f = 0; f < mt->nfilters && ok; f++)
            ok = in_sorted(mt->filters[f].allowed, mt->filters[f].nallowed, mt->filters[f].column[row]);
        if (ok)
            bits |= mt->bits;
    }
    return bits;
}

/* Which steps and exclusions row `row` matches. */
static inline uint64_t row_bits(const Store *s, Py_ssize_t row) {
    int64_t type = s->etype[row];
    if (type < 0 || type >= s->ntypes)
        return 0;
    return s->filtered[type] ? s->plain[type] | filtered_bits(s, row, type) : s->plain[type];
}

/* The by-type tables of `s` (its matchers parsed); -1 and MemoryError when out of memory. */
static int index_types(Store *s) {
    s->ntypes = 0;
    for (int m = 0; m < s->nmatchers; m++)
        if (s->matchers[m].type >= s->ntypes && s->matchers[m].type <= INT16_MAX)
            s->ntypes = s->matchers[m].type + 1;
    s->plain = PyMem_RawCalloc((size_t)s->ntypes + 1, sizeof(uint64_t));
    s->filtered = PyMem_RawCalloc((size_t)s->ntypes + 1, 1);
    if (!s->plain || !s->filtered) {
        PyErr_NoMemory();
        return -1;
    }
    for (int m = 0; m < s->nmatchers; m++) {
        const Matcher *mt = &s->matchers[m];
        if (mt->type < 0 || mt->type >= s->ntypes)
            continue; /* a code no row has (etype is 16-bit): never matches */
        if (mt->nfilters)
            s->filtered[mt->type] = 1;
        else
            s->plain[mt->type] |= mt->bits;
    }
    return 0;
}

static void free_store(Store *s) {
    PyMem_RawFree(s->plain);
    PyMem_RawFree(s->filtered);
    s->plain = NULL;
    s->filtered = NULL;
}

/* First row in [lo, hi) with time >= x. */
static Py_ssize_t first_at(const int64_t *time, Py_ssize_t lo, Py_ssize_t hi, int64_t x) {
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (time[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* The learner's rows a chain can use: from the range's start to its end plus the window. */
static void span(const Store *s, const Params *p, Py_ssize_t l, Py_ssize_t *lo, Py_ssize_t *hi) {
    Py_ssize_t a = (Py_ssize_t)s->offsets[l], b = (Py_ssize_t)s->offsets[l + 1];
    *lo = first_at(s->time, a, b, p->t0);
    /* a chain starts before t1 and ends at most `window` after its start */
    *hi = p->t1 > INT64_MAX - p->window ? b : first_at(s->time, *lo, b, p->t1 + p->window);
}

static int emit(Out *out, int64_t learner, int64_t entry, const int64_t *value, int n) {
    if (out->count >= out->cap)
        return -1;
    Py_ssize_t i = out->count++;
    out->learner[i] = learner;
    out->entry[i] = entry;
    for (int k = 0; k < n; k++)
        out->value[k * out->cap + i] = value[k];
    return 0;
}

/* Store a new chain end in slot k, and in the slots after every optional step that follows. */
static void store_slot(Slot *slots, uint32_t *live, const Params *p, int k, int64_t row, int64_t time,
                       int64_t start) {
    for (; k < p->n; k++) {
        Slot *s = &slots[k];
        /* an empty slot takes it; one row ending two chains keeps the later start */
        if (!(*live >> k & 1u) || s->row != row || s->start < start) {
            s->row = row;
            s->time = time;
            s->start = start;
            *live |= 1u << k;
        }
        if (!(p->optional >> k & 1u))
            break;
    }
}

/* A chain ends on step k at time t: the learner's first reach of k, when it is the first. */
static inline void reach(int64_t *first, uint32_t *unreached, int k, int64_t t) {
    if (first[k] == UNSET) {
        first[k] = t;
        *unreached &= ~(1u << k);
    }
}

/* Whether the row starts a chain (step 1 inside [t0, t1)); the learner's first entering row. */
static inline uint32_t enters(const Params *p, int64_t row, int64_t t, uint64_t bits, int64_t *entry,
                              int64_t *first, uint32_t *unreached) {
    if (!(bits & 1u) || t >= p->t1)
        return 0;
    if (*entry < 0) {
        *entry = row;
        reach(first, unreached, 0, t);
    }
    return 1u;
}

/* One row of the ordered pass: match on the slots as they were, clear excluded slots, store. */
static void visit(Slot *slots, uint32_t *live, const Params *p, int64_t row, int64_t t, uint64_t bits,
                  int64_t *entry, int64_t *first, uint32_t *unreached) {
    int64_t start[MAX_STEPS];
    uint32_t ended = 0;
    for (uint32_t todo = (uint32_t)(bits & STEP_BITS) & *live; todo; todo &= todo - 1) {
        int k = __builtin_ctz(todo);
        const Slot *s = &slots[k];
        if ((p->strict && s->row != row - 1) || t - s->start > p->window ||
            (p->within[k] >= 0 && t - s->time > p->within[k]))
            continue;
        ended |= 1u << k;
        start[k] = s->start;
        reach(first, unreached, k, t);
    }
    ended |= enters(p, row, t, bits, entry, first, unreached);
    start[0] = t;
    *live &= ~(uint32_t)(bits >> 32); /* exclusions: their slots are emptied */
    for (; ended; ended &= ended - 1) {
        int k = __builtin_ctz(ended);
        if (k + 1 < p->n)
            store_slot(slots, live, p, k + 1, row, t, start[k]);
    }
}

static Py_ssize_t run_ordered(const Store *s, const Params *p, Out *out) {
    Slot slots[MAX_STEPS];
    int64_t first[MAX_STEPS];
    uint32_t all = p->n == 32 ? 0xffffffffu : (1u << p->n) - 1;
    /* a chain starts before t1 and ends at most `window` after its start */
    int64_t end = p->t1 > INT64_MAX - p->window ? INT64_MAX : p->t1 + p->window;
    for (Py_ssize_t l = 0; l < s->learners; l++) {
        Py_ssize_t hi = (Py_ssize_t)s->offsets[l + 1];
        int64_t entry = -1;
        uint32_t live = 0, unreached = all;
        for (int k = 0; k < p->n; k++)
            first[k] = UNSET;
        /* The span's end is checked row by row, not searched: most learners stop long before it,
           once every step is reached (later rows change no first reach). */
        for (Py_ssize_t row = first_at(s->time, s->offsets[l], hi, p->t0); row < hi && unreached; row++) {
            uint64_t bits = row_bits(s, row);
            if (!bits)
                continue;
            int64_t t = s->time[row];
            if (t >= end)
                break;
            visit(slots, &live, p, row, t, bits, &entry, first, &unreached);
        }
        if (entry >= 0 && emit(out, l, entry, first, p->n) < 0)
            return -1;
    }
    return out->count;
}

/* Append the learner's next row that matches a step (from *next, before hi) to rows/steps. */
static int collect(const Store *s, Py_ssize_t *next, Py_ssize_t hi, int64_t *rows, int *steps, Py_ssize_t *m) {
    for (; *next < hi; (*next)++) {
        uint64_t bits = row_bits(s, *next) & STEP_BITS;
        if (bits) {
            rows[*m] = *next;
            steps[(*m)++] = __builtin_ctzll(bits); /* each step has its own event type: one bit */
            (*next)++;
            return 1;
        }
    }
    return 0;
}

/* Any order: the most distinct steps in one window [start, start time + window] of the learner,
 * rows[i..j) being the window of start row i; stops once a window holds every step. */
static int best_window(const Store *s, const Params *p, Py_ssize_t lo, Py_ssize_t hi, int64_t *rows,
                       int *steps, int64_t *entry) {
    int count[MAX_STEPS] = {0}, distinct = 0, best = 0;
    Py_ssize_t m = 0, j = 0, next = lo;
    for (Py_ssize_t i = 0; best < p->n; i++) {
        if (i == m && !collect(s, &next, hi, rows, steps, &m))
            break;
        int64_t t = s->time[rows[i]];
        if (t >= p->t1)
            break;
        if (*entry < 0)
            *entry = rows[i];
        while ((j < m || collect(s, &next, hi, rows, steps, &m)) && s->time[rows[j]] - t <= p->window)
            distinct += count[steps[j++]]++ == 0;
        if (distinct > best)
            best = distinct;
        distinct -= --count[steps[i]] == 0; /* row i leaves the window */
    }
    return best;
}

static Py_ssize_t run_any(const Store *s, const Params *p, Out *out, int64_t *rows, int *steps) {
    for (Py_ssize_t l = 0; l < s->learners; l++) {
        Py_ssize_t lo, hi;
        span(s, p, l, &lo, &hi);
        int64_t entry = -1;
        int64_t best = best_window(s, p, lo, hi, rows, steps, &entry);
        if (entry >= 0 && emit(out, l, entry, &best, 1) < 0)
            return -1;
    }
    return out->count;
}

/* --- Python binding ------------------------------------------------------------------------- */

#define MAX_VIEWS (8 + MAX_MATCHERS * MAX_FILTERS * 2)

typedef struct {
    Py_buffer views[MAX_VIEWS];
    int held;
} Views;

static void release(Views *v) {
    for (int i = 0; i < v->held; i++)
        PyBuffer_Release(&v->views[i]);
    v->held = 0;
}

/* A 1-d C-contiguous buffer of `itemsize`-byte items and, when `length` >= 0, that length. */
static void *view(Views *v, PyObject *obj, Py_ssize_t itemsize, Py_ssize_t length, int writable,
                        const char *name, Py_ssize_t *len) {
    Py_buffer *b = &v->views[v->held];
    if (v->held >= MAX_VIEWS) {
        PyErr_SetString(PyExc_ValueError, "funnel kernel: too many arrays");
        return NULL;
    }
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return NULL;
    v->held++;
    if (b->itemsize != itemsize || b->ndim != 1) {
        PyErr_Format(PyExc_TypeError, "%s: needs a 1-d array of %zd-byte integers", name, itemsize);
        return NULL;
    }
    if (length >= 0 && b->shape[0] != length) {
        PyErr_Format(PyExc_ValueError, "%s: needs %zd items, has %zd", name, length, b->shape[0]);
        return NULL;
    }
    if (len)
        *len = b->shape[0];
    return b->buf;
}

/* matchers: a sequence of (event type code, bits, ((column, sorted allowed codes), ...)). */
static int parse_matchers(Views *v, PyObject *obj, Store *s) {
    PyObject *seq = PySequence_Fast(obj, "matchers: needs a sequence of (type, bits, filters)");
    if (!seq)
        return -1;
    int ok = -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_MATCHERS) {
        PyErr_SetString(PyExc_ValueError, "matchers: too many");
        goto done;
    }
    s->nmatchers = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Matcher *m = &s->matchers[i];
        PyObject *filters;
        long long type;
        unsigned long long bits;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "LKO", &type, &bits, &filters))
            goto done;
        PyObject *fs = PySequence_Fast(filters, "matchers: filters must be a sequence");
        if (!fs)
            goto done;
        Py_ssize_t nf = PySequence_Fast_GET_SIZE(fs);
        m->type = type;
        m->bits = bits;
        m->nfilters = (int)nf;
        int good = nf <= MAX_FILTERS;
        if (!good)
            PyErr_SetString(PyExc_ValueError, "matchers: too many filters");
        for (Py_ssize_t f = 0; good && f < nf; f++) {
            PyObject *column, *allowed;
            Filter *flt = &m->filters[f];
            good = PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fs, f), "OO", &column, &allowed) &&
                   (flt->column = view(v, column, 4, s->rows, 0, "filter column", NULL)) &&
                   (flt->allowed = view(v, allowed, 4, -1, 0, "filter codes", &flt->nallowed));
        }
        Py_DECREF(fs);
        if (!good)
            goto done;
    }
    ok = 0;
done:
    Py_DECREF(seq);
    return ok;
}

static int parse_store(Views *v, PyObject *matchers, PyObject *offsets, PyObject *time, PyObject *etype,
                       Store *s) {
    Py_ssize_t noffsets;
    s->plain = NULL;
    s->filtered = NULL;
    if (!(s->offsets = view(v, offsets, 8, -1, 0, "offsets", &noffsets)) ||
        !(s->time = view(v, time, 8, -1, 0, "time", &s->rows)) ||
        !(s->etype = view(v, etype, 2, s->rows, 0, "etype", NULL)))
        return -1;
    s->learners = noffsets - 1;
    for (Py_ssize_t l = 0; l < s->learners; l++)
        if (s->offsets[l] < 0 || s->offsets[l] > s->offsets[l + 1] || s->offsets[l + 1] > s->rows) {
            PyErr_SetString(PyExc_ValueError, "offsets: not a partition of the rows");
            return -1;
        }
    if (s->learners < 0) {
        PyErr_SetString(PyExc_ValueError, "offsets: needs at least one item");
        return -1;
    }
    return parse_matchers(v, matchers, s) < 0 ? -1 : index_types(s);
}

static int parse_out(Views *v, PyObject *learner, PyObject *entry, PyObject *value, int n, Out *out) {
    out->count = 0;
    return (out->learner = view(v, learner, 8, -1, 1, "out_learner", &out->cap)) &&
                   (out->entry = view(v, entry, 8, out->cap, 1, "out_entry", NULL)) &&
                   (out->value = view(v, value, 8, out->cap * n, 1, "out_value", NULL))
               ? 0
               : -1;
}

static PyObject *finish(Views *v, Store *s, Py_ssize_t count) {
    free_store(s);
    release(v);
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "out_learner: fewer places than entering learners");
        return NULL;
    }
    return PyLong_FromSsize_t(count);
}

PyDoc_STRVAR(ordered_doc,
"ordered(matchers, offsets, time, etype, within, optional, window, t0, t1, strict,\n"
"        out_learner, out_entry, out_first) -> int\n\n"
"The ordered (or strict) funnel over the store's columns. ``matchers``: (event type code, bits,\n"
"((property codes column, sorted accepted codes), ...)). Writes each entering learner's code, first\n"
"entering row and first reach of each step (n x cap, INT64_MIN: never); returns how many entered.");

static PyObject *ordered(PyObject *self, PyObject *args) {
    PyObject *matchers, *offsets, *time, *etype, *within_obj, *ol, *oe, *of;
    unsigned long long optional;
    long long window, t0, t1;
    int strict;
    if (!PyArg_ParseTuple(args, "OOOOOKLLLpOOO", &matchers, &offsets, &time, &etype, &within_obj, &optional,
                          &window, &t0, &t1, &strict, &ol, &oe, &of))
        return NULL;
    Views v = {.held = 0};
    Store s;
    Out out;
    Py_ssize_t n;
    const int64_t *within;
    if (parse_store(&v, matchers, offsets, time, etype, &s) < 0 ||
        !(within = view(&v, within_obj, 8, -1, 0, "within", &n)))
        goto error;
    if (n < 1 || n > MAX_STEPS || window < 0) {
        PyErr_SetString(PyExc_ValueError, "within: 1 to 32 steps, and a window >= 0");
        goto error;
    }
    if (parse_out(&v, ol, oe, of, (int)n, &out) < 0)
        goto error;
    Params p = {(int)n, strict, (uint32_t)optional, window, t0, t1, within};
    Py_ssize_t count;
    Py_BEGIN_ALLOW_THREADS
    count = run_ordered(&s, &p, &out);
    Py_END_ALLOW_THREADS
    return finish(&v, &s, count);
error:
    free_store(&s);
    release(&v);
    return NULL;
}

PyDoc_STRVAR(any_order_doc,
"any_order(matchers, offsets, time, etype, steps, window, t0, t1, out_learner, out_entry, out_best) -> int\n\n"
"The any-order funnel: per entering learner, its code, first entering row and the most distinct steps\n"
"(of ``steps``, each its own event type) in one window; returns how many entered.");

static PyObject *any_order(PyObject *self, PyObject *args) {
    PyObject *matchers, *offsets, *time, *etype, *ol, *oe, *ob;
    int n;
    long long window, t0, t1;
    if (!PyArg_ParseTuple(args, "OOOOiLLLOOO", &matchers, &offsets, &time, &etype, &n, &window, &t0, &t1,
                          &ol, &oe, &ob))
        return NULL;
    Views v = {.held = 0};
    Store s;
    Out out;
    if (parse_store(&v, matchers, offsets, time, etype, &s) < 0 || parse_out(&v, ol, oe, ob, 1, &out) < 0)
        goto error;
    if (n < 1 || n > MAX_STEPS || window < 0) {
        PyErr_SetString(PyExc_ValueError, "steps: 1 to 32, and a window >= 0");
        goto error;
    }
    Py_ssize_t longest = 0;
    for (Py_ssize_t l = 0; l < s.learners; l++)
        if (s.offsets[l + 1] - s.offsets[l] > longest)
            longest = (Py_ssize_t)(s.offsets[l + 1] - s.offsets[l]);
    int64_t *rows = PyMem_RawMalloc(sizeof(int64_t) * (size_t)(longest + 1));
    int *steps = PyMem_RawMalloc(sizeof(int) * (size_t)(longest + 1));
    if (!rows || !steps) {
        PyMem_RawFree(rows);
        PyMem_RawFree(steps);
        PyErr_NoMemory();
        goto error;
    }
    Params p = {n, 0, 0, window, t0, t1, NULL};
    Py_ssize_t count;
    Py_BEGIN_ALLOW_THREADS
    count = run_any(&s, &p, &out, rows, steps);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(rows);
    PyMem_RawFree(steps);
    return finish(&v, &s, count);
error:
    free_store(&s);
    release(&v);
    return NULL;
}

static PyMethodDef methods[] = {
    {"ordered", ordered, METH_VARARGS, ordered_doc},
    {"any_order", any_order, METH_VARARGS, any_order_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_funnel_kernel",
    "Funnels in one compiled pass per learner (source: funnel_kernel.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__funnel_kernel(void) { return PyModule_Create(&module); }
