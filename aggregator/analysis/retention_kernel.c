/* Which (learner, period) cells hold at least one of the learner's rows (module
 * studyin_analytics.aggregator.analysis._retention_kernel; the caller is retention.py).
 *
 * Why compiled: "any activity" retention asks this of every stored row (10M in the bench), and
 * numpy spent ~200 ms on a dozen whole-column passes (gather, cut, time-zone offset, floor
 * division, keys, scatter). Here one walk over each learner's rows computes each row's local
 * period and marks its cell: the time-zone offset comes from the zone's transition table, found
 * once per learner by binary search and then advanced as the learner's rows go forward in time.
 *
 * Periods are those of periods.py exactly: local day = floor(local µs / day), Monday weeks
 * (day + 3) / 7, months since 1970-01 (civil calendar); the tests compare both on random times
 * and zones.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define DAY_US 86400000000LL

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Months since 1970-01 of a day number (days since 1970-01-01), proleptic Gregorian calendar
   (H. Hinnant's civil_from_days). */
static int64_t month_of_day(int64_t z) {
    z += 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t month = mp < 10 ? mp + 3 : mp - 9;
    int64_t year = yoe + era * 400 + (month <= 2);
    return (year - 1970) * 12 + month - 1;
}

/* kind: 0 day, 1 week, 2 month. */
static int64_t period_of(int64_t local_us, int kind) {
    int64_t day = floor_div(local_us, DAY_US);
    if (kind == 0)
        return day;
    if (kind == 1)
        return floor_div(day + 3, 7);
    return month_of_day(day);
}

typedef struct {
    const int64_t *offsets, *time, *starts, *shift; /* shift: the zone's offset in µs from starts[i] on */
    Py_ssize_t learners, ntransitions;
    int kind;
    int64_t first, span;
    uint8_t *cells; /* learners x span */
} Job;

/* Index of the transition in force at t: the last start <= t (starts[0] is -infinity). */
static Py_ssize_t transition_at(const Job *j, int64_t t) {
    Py_ssize_t lo = 0, hi = j->ntransitions;
    while (hi - lo > 1) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (j->starts[mid] <= t) lo = mid;
        else hi = mid;
    }
    return lo;
}

static void mark(const Job *j) {
    for (Py_ssize_t l = 0; l < j->learners; l++) {
        Py_ssize_t row = (Py_ssize_t)j->offsets[l], end = (Py_ssize_t)j->offsets[l + 1];
        if (row == end)
            continue;
        Py_ssize_t z = transition_at(j, j->time[row]);
        uint8_t *cells = j->cells + l * j->span;
        for (; row < end; row++) {
            int64_t t = j->time[row];
            while (z + 1 < j->ntransitions && j->starts[z + 1] <= t)
                z++;
            int64_t p = period_of(t + j->shift[z], j->kind) - j->first;
            if (p >= 0 && p < j->span)
                cells[p] = 1;
        }
    }
}

static int get(PyObject *obj, Py_buffer *b, Py_ssize_t itemsize, int writable, const char *name) {
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (b->itemsize != itemsize || b->ndim != 1) {
        PyErr_Format(PyExc_TypeError, "%s: needs a 1-d array of %zd-byte items", name, itemsize);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(mark_doc,
"mark(offsets, time, starts, shift, kind, first, span, cells) -> None\n\n"
"Set cells[l * span + p - first] for every period p (0 day, 1 week, 2 month) in which learner l\n"
"(rows offsets[l]:offsets[l+1], time-sorted) has a row; ``starts``/``shift``: the zone's offset\n"
"changes (µs, the first at -infinity) and the offset (µs) from each on.");

static PyObject *mark_periods(PyObject *self, PyObject *args) {
    PyObject *o[5];
    int kind;
    long long first, span;
    if (!PyArg_ParseTuple(args, "OOOOiLLO", &o[0], &o[1], &o[2], &o[3], &kind, &first, &span, &o[4]))
        return NULL;
    Py_buffer b[5];
    const char *names[5] = {"offsets", "time", "starts", "shift", "cells"};
    int held = 0;
    for (; held < 5; held++)
        if (get(o[held], &b[held], held == 4 ? 1 : 8, held == 4, names[held]) < 0)
            break;
    PyObject *result = NULL;
    if (held == 5) {
        Job j = {b[0].buf, b[1].buf, b[2].buf, b[3].buf, b[0].shape[0] - 1, b[2].shape[0], kind, first, span,
                 b[4].buf};
        int ok = j.learners >= 0 && j.ntransitions >= 1 && b[3].shape[0] == j.ntransitions && span >= 0 &&
                 kind >= 0 && kind <= 2 && b[4].shape[0] == j.learners * span;
        for (Py_ssize_t l = 0; ok && l < j.learners; l++)
            ok = j.offsets[l] >= 0 && j.offsets[l] <= j.offsets[l + 1] && j.offsets[l + 1] <= b[1].shape[0];
        if (!ok) {
            PyErr_SetString(PyExc_ValueError, "mark: inconsistent arrays (offsets, transitions or cells)");
        } else {
            Py_BEGIN_ALLOW_THREADS
            mark(&j);
            Py_END_ALLOW_THREADS
            result = Py_NewRef(Py_None);
        }
    }
    for (int i = 0; i < held; i++)
        PyBuffer_Release(&b[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"mark", mark_periods, METH_VARARGS, mark_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_retention_kernel",
    "Retention's per-row pass: the (learner, period) cells with activity (source: retention_kernel.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__retention_kernel(void) { return PyModule_Create(&module); }
