/*
 * The relay's two commonest chunks, compiled (decision 0034).
 *
 * Once a session is up, almost every chunk a client sends is either one whole Query whose
 * text the fast path has already proven harmless (pgbench -S, an ORM's SELECTs), or a
 * prepared statement's Bind/Execute/Sync; almost every chunk the server sends is an answer
 * ending in ReadyForQuery with nothing in it softguard reads. For those, the pure-Python
 * core (`SessionCore.client_data` / `server_data`, softguard/proxy/core.py) does a few
 * checks, bumps two counters and writes the very bytes object that arrived. Run by the
 * interpreter that costs ~20,000 instructions per statement (bench/serve_cpu.py), several
 * times what PgBouncer spends on the whole statement.
 *
 * Two base classes hold the fields those checks read, as C struct members: `CoreBase`
 * (SessionCore's) and `FramerBase` (Framer's). Python reads and writes them as ordinary
 * attributes; the fast paths here read them without a dictionary lookup. `Relay`, a
 * protocol's data_received, does exactly the Python fast paths on those fields and hands
 * every other chunk, untouched, to the Python data_received. So the Python code stays the
 * one definition of behaviour: each test here is the Python fast path's test, in the same
 * order, and tests/proxy/test_hotpath.py checks both give the same state and bytes over a
 * corpus of chunks and core states. Without a C compiler the package installs without this
 * module: softguard/speedups.py then gives plain Python base classes and the Python fast
 * paths run alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>

#include "_link.h"

/* Set once by configure(): the core's READY state and the fast path's memo. */
static PyObject *g_ready = NULL;
static PyObject *g_harmless_shape = NULL;
static Py_ssize_t g_memo_bytes = 0;

/* Interned attribute names of objects that are not ours. */
static PyObject *s_prepared, *s_policy, *s_generation, *s_full_mode, *s_safe_statements,
    *s_controls, *s_count_statement;

#define MSG_QUERY 'Q'
#define MSG_PARSE 'P'
#define MSG_SYNC 'S'
#define MSG_READY 'Z'

/* ------------------------------------------------------------------ FramerBase */

typedef struct {
    PyObject_HEAD
    PyObject *acc;      /* bytearray | None: an incomplete wanted message */
    PyObject *head;     /* bytes: an incomplete header held from the last chunk */
    PyObject *readable; /* frozenset[int] */
    PyObject *stop;     /* frozenset[int] */
    Py_ssize_t skip;
    Py_ssize_t lone_limit;
    Py_ssize_t max_length;
    Py_ssize_t max_want;
} FramerBase;

static PyMemberDef framer_members[] = {
    {"_acc", T_OBJECT_EX, offsetof(FramerBase, acc), 0, NULL},
    {"_head", T_OBJECT_EX, offsetof(FramerBase, head), 0, NULL},
    {"_readable", T_OBJECT_EX, offsetof(FramerBase, readable), 0, NULL},
    {"_stop", T_OBJECT_EX, offsetof(FramerBase, stop), 0, NULL},
    {"_skip", T_PYSSIZET, offsetof(FramerBase, skip), 0, NULL},
    {"_lone_limit", T_PYSSIZET, offsetof(FramerBase, lone_limit), 0, NULL},
    {"_max_length", T_PYSSIZET, offsetof(FramerBase, max_length), 0, NULL},
    {"_max_want", T_PYSSIZET, offsetof(FramerBase, max_want), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static int framer_traverse(FramerBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->acc);
    Py_VISIT(self->head);
    Py_VISIT(self->readable);
    Py_VISIT(self->stop);
    return 0;
}

static int framer_clear(FramerBase *self)
{
    Py_CLEAR(self->acc);
    Py_CLEAR(self->head);
    Py_CLEAR(self->readable);
    Py_CLEAR(self->stop);
    return 0;
}

static void framer_dealloc(FramerBase *self)
{
    PyObject_GC_UnTrack(self);
    framer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject FramerBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "softguard._hotpath.FramerBase",
    .tp_doc = "softguard.wire.framing.Framer's fields the compiled fast path reads",
    .tp_basicsize = sizeof(FramerBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)framer_dealloc,
    .tp_traverse = (traverseproc)framer_traverse,
    .tp_clear = (inquiry)framer_clear,
    .tp_free = PyObject_GC_Del,
    .tp_members = framer_members,
};

/* ------------------------------------------------------------------ CounterBase */

/* Metrics's statement counts: `safe_statements` (statements passed unread) and
 * `_statements` ({(classification, action): count} of the others), with the one method
 * that writes the latter, `count_statement`, defined here so that the fast path counts
 * an allowed statement without a Python call (an allowed UPDATE of TPC-B paid ~3,000
 * instructions for it). softguard/speedups.py's stand-in defines the same method. */
typedef struct {
    PyObject_HEAD
    PyObject *statements; /* dict, set by Metrics.__init__ */
    Py_ssize_t safe_statements;
} CounterBase;

static PyMemberDef counter_members[] = {
    {"safe_statements", T_PYSSIZET, offsetof(CounterBase, safe_statements), 0, NULL},
    {"_statements", T_OBJECT_EX, offsetof(CounterBase, statements), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* `self._statements[key] = self._statements.get(key, 0) + 1` for key, a tuple: 0 / -1. */
static int counter_add(CounterBase *self, PyObject *key)
{
    PyObject *counts = self->statements;
    if (counts == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_statements");
        return -1;
    }
    Py_INCREF(counts); /* the key's __eq__ or __hash__ may replace the field */
    int r = -1;
    PyObject *now;
    if (PyDict_CheckExact(counts)) {
        now = PyDict_GetItemWithError(counts, key);
        Py_XINCREF(now);
    } else {
        now = PyObject_CallMethod(counts, "get", "O", key);
        if (now == Py_None)
            Py_CLEAR(now);
    }
    if (now == NULL && PyErr_Occurred())
        goto done;
    PyObject *one = PyLong_FromLong(1);
    PyObject *next = one == NULL ? NULL : now == NULL ? Py_NewRef(one) : PyNumber_Add(now, one);
    Py_XDECREF(one);
    if (next != NULL) {
        r = PyObject_SetItem(counts, key, next);
        Py_DECREF(next);
    }
done:
    Py_XDECREF(now);
    Py_DECREF(counts);
    return r;
}

static PyObject *counter_count_statement(CounterBase *self, PyObject *const *args,
                                         Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "count_statement(classification, action)");
        return NULL;
    }
    PyObject *key = PyTuple_Pack(2, args[0], args[1]);
    if (key == NULL)
        return NULL;
    int r = counter_add(self, key);
    Py_DECREF(key);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef counter_methods[] = {
    {"count_statement", (PyCFunction)(void (*)(void))counter_count_statement, METH_FASTCALL,
     "count_statement(classification, action): one more statement of that kind"},
    {NULL, NULL, 0, NULL},
};

static int counter_traverse(CounterBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->statements);
    return 0;
}

static int counter_clear(CounterBase *self)
{
    Py_CLEAR(self->statements);
    return 0;
}

static void counter_dealloc(CounterBase *self)
{
    PyObject_GC_UnTrack(self);
    counter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CounterBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "softguard._hotpath.CounterBase",
    .tp_doc = "softguard.proxy.metrics.Metrics's statement counts",
    .tp_basicsize = sizeof(CounterBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)counter_dealloc,
    .tp_traverse = (traverseproc)counter_traverse,
    .tp_clear = (inquiry)counter_clear,
    .tp_free = PyObject_GC_Del,
    .tp_members = counter_members,
    .tp_methods = counter_methods,
};

/* CounterBase.count_statement as found on CounterBase (set at import): a counter whose
 * type resolves count_statement to it is counted without a call. */
static PyObject *g_count_descr = NULL;

/* ------------------------------------------------------------------ CoreBase */

typedef struct {
    PyObject_HEAD
    PyObject *state;
    PyObject *cframer;
    PyObject *sframer;
    PyObject *known;
    PyObject *filter;
    PyObject *soft;
    PyObject *inputs;
    PyObject *counter;
    PyObject *to_server;
    PyObject *to_client;
    PyObject *controls;
    PyObject *timings;
    PyObject *protected_;
    PyObject *allowed; /* dict: Query shape -> (kind, action), statements.remember_allowed */
    Py_ssize_t pending;
    Py_ssize_t client_bytes;
    Py_ssize_t mode_generation;
    int tx_status;
    char answers_plain;
    char read_only_lost;
    char closing_for_shutdown;
    char mode_is_full;
} CoreBase;

static PyMemberDef core_members[] = {
    {"state", T_OBJECT_EX, offsetof(CoreBase, state), 0, NULL},
    {"_cframer", T_OBJECT_EX, offsetof(CoreBase, cframer), 0, NULL},
    {"_sframer", T_OBJECT_EX, offsetof(CoreBase, sframer), 0, NULL},
    {"_known", T_OBJECT_EX, offsetof(CoreBase, known), 0, NULL},
    {"_filter", T_OBJECT_EX, offsetof(CoreBase, filter), 0, NULL},
    {"_soft", T_OBJECT_EX, offsetof(CoreBase, soft), 0, NULL},
    {"inputs", T_OBJECT_EX, offsetof(CoreBase, inputs), 0, NULL},
    {"counter", T_OBJECT_EX, offsetof(CoreBase, counter), 0, NULL},
    {"to_server", T_OBJECT_EX, offsetof(CoreBase, to_server), 0, NULL},
    {"to_client", T_OBJECT_EX, offsetof(CoreBase, to_client), 0, NULL},
    {"controls", T_OBJECT_EX, offsetof(CoreBase, controls), 0, NULL},
    {"_timings", T_OBJECT_EX, offsetof(CoreBase, timings), 0, NULL},
    {"_protected", T_OBJECT_EX, offsetof(CoreBase, protected_), 0, NULL},
    {"_allowed", T_OBJECT_EX, offsetof(CoreBase, allowed), 0, NULL},
    {"pending", T_PYSSIZET, offsetof(CoreBase, pending), 0, NULL},
    {"_client_bytes", T_PYSSIZET, offsetof(CoreBase, client_bytes), 0, NULL},
    {"_mode_generation", T_PYSSIZET, offsetof(CoreBase, mode_generation), 0, NULL},
    {"tx_status", T_INT, offsetof(CoreBase, tx_status), 0, NULL},
    {"_answers_plain", T_BOOL, offsetof(CoreBase, answers_plain), 0, NULL},
    {"_read_only_lost", T_BOOL, offsetof(CoreBase, read_only_lost), 0, NULL},
    {"_closing_for_shutdown", T_BOOL, offsetof(CoreBase, closing_for_shutdown), 0, NULL},
    {"_mode_is_full", T_BOOL, offsetof(CoreBase, mode_is_full), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static int core_traverse(CoreBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->state);
    Py_VISIT(self->cframer);
    Py_VISIT(self->sframer);
    Py_VISIT(self->known);
    Py_VISIT(self->filter);
    Py_VISIT(self->soft);
    Py_VISIT(self->inputs);
    Py_VISIT(self->counter);
    Py_VISIT(self->to_server);
    Py_VISIT(self->to_client);
    Py_VISIT(self->controls);
    Py_VISIT(self->timings);
    Py_VISIT(self->protected_);
    Py_VISIT(self->allowed);
    return 0;
}

static int core_clear(CoreBase *self)
{
    Py_CLEAR(self->state);
    Py_CLEAR(self->cframer);
    Py_CLEAR(self->sframer);
    Py_CLEAR(self->known);
    Py_CLEAR(self->filter);
    Py_CLEAR(self->soft);
    Py_CLEAR(self->inputs);
    Py_CLEAR(self->counter);
    Py_CLEAR(self->to_server);
    Py_CLEAR(self->to_client);
    Py_CLEAR(self->controls);
    Py_CLEAR(self->timings);
    Py_CLEAR(self->protected_);
    Py_CLEAR(self->allowed);
    return 0;
}

static void core_dealloc(CoreBase *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CoreBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "softguard._hotpath.CoreBase",
    .tp_doc = "softguard.proxy.core.SessionCore's fields the compiled fast path reads",
    .tp_basicsize = sizeof(CoreBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_free = PyObject_GC_Del,
    .tp_members = core_members,
};

/* ------------------------------------------------------------------ small helpers */

static inline uint32_t read_int32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/*
 * A framer's `_stop` / `_readable` sets as 256-entry tables. The framer module builds a few
 * of those frozensets once and shares them (framing._lone_sets is cached), so a table is
 * kept per set object, holding a reference so that the identity stays valid.
 */
#define TABLES 8
static struct {
    PyObject *set;
    unsigned char member[256];
} g_tables[TABLES];
static int g_next_table = 0;

/*
 * NULL when the set is not one a table can stand for: only a frozenset (a mutable set could
 * change under a cached table) whose members are all exact ints. Those are read directly,
 * running no code: a member of another type could answer `t in set` with a comparison
 * method that runs Python code (which may free the framer being read, or answer
 * differently each time), and such sets are left to the Python path.
 */
static const unsigned char *table_of(PyObject *set)
{
    for (int i = 0; i < TABLES; i++) {
        if (g_tables[i].set == set)
            return g_tables[i].member;
    }
    if (set == NULL || !PyFrozenSet_CheckExact(set))
        return NULL;
    unsigned char member[256] = {0};
    /* A frozenset's iterator is C and its members here exact ints: no code runs. */
    PyObject *it = PyObject_GetIter(set);
    if (it == NULL)
        return NULL;
    PyObject *key;
    int foreign = 0;
    while (!foreign && (key = PyIter_Next(it)) != NULL) {
        int overflow = 0;
        long t = PyLong_CheckExact(key) ? PyLong_AsLongAndOverflow(key, &overflow) : -1;
        foreign = !PyLong_CheckExact(key);
        if (!foreign && overflow == 0 && t >= 0 && t < 256)
            member[t] = 1; /* other ints are no byte's type */
        Py_DECREF(key);
    }
    Py_DECREF(it);
    if (foreign || PyErr_Occurred())
        return NULL;
    int slot = g_next_table;
    g_next_table = (g_next_table + 1) % TABLES;
    Py_XSETREF(g_tables[slot].set, Py_NewRef(set));
    memcpy(g_tables[slot].member, member, sizeof member);
    return g_tables[slot].member;
}

/* Truthiness the Python code tests with `not x` / `if x`: 1, 0, -1 on error; an unset
 * field (NULL) reads as -1 without an exception: callers step aside for it (the Python
 * path then raises its AttributeError), never return it as an error. The object is held
 * while its __bool__ / __len__ runs: that code may drop the field's reference. */
static inline int truthy(PyObject *v)
{
    if (v == NULL)
        return -1;
    if (v == Py_None || v == Py_False)
        return 0;
    if (v == Py_True)
        return 1;
    Py_INCREF(v);
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* truthy() for a check made before anything changed: 1, 0 (also: unset, step aside), -1. */
static inline int truthy_or_aside(PyObject *v, int *aside)
{
    int r = truthy(v);
    if (r < 0 && !PyErr_Occurred()) {
        *aside = 1;
        return 0;
    }
    return r;
}

/* Framer.at_boundary: no accumulated message, no held header, nothing to skip; 1 / 0 / -1.
 * An unset `_head` is 0 (not ours: the Python path raises for it). */
static int framer_at_boundary(FramerBase *f)
{
    if (f->acc != Py_None || f->skip != 0)
        return 0;
    int aside = 0;
    int r = truthy_or_aside(f->head, &aside);
    return r < 0 ? -1 : (aside ? 0 : !r);
}

/* Framer.lone(data, mtype), checks in the same order: 1 / 0 / -1. */
static int framer_lone(FramerBase *f, const unsigned char *p, Py_ssize_t n, int mtype)
{
    if (n <= 5 || n > f->lone_limit || p[0] != mtype)
        return 0;
    const unsigned char *readable = table_of(f->readable);
    if (readable == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!readable[mtype] || read_int32(p + 1) != (uint32_t)(n - 1))
        return 0;
    return framer_at_boundary(f);
}

/* Framer.lone_last(data, mtype, length), checks in the same order: 1 / 0 / -1. */
static int framer_lone_last(FramerBase *f, const unsigned char *p, Py_ssize_t n, int mtype,
                            uint32_t length, Py_ssize_t start)
{
    Py_ssize_t last = n - 1 - (Py_ssize_t)length;
    if (last < 0 || p[last] != mtype || read_int32(p + last + 1) != length)
        return 0;
    const unsigned char *readable = table_of(f->readable);
    if (readable == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!readable[mtype] || (Py_ssize_t)length > f->max_want || n > f->max_length)
        return 0;
    int r = framer_at_boundary(f);
    if (r != 1)
        return r;
    const unsigned char *stop = table_of(f->stop);
    if (stop == NULL)
        return PyErr_Occurred() ? -1 : 0;
    /* Bounded: each step passes a whole message of 5 bytes or more, and n <= max_length. */
    Py_ssize_t pos = start;
    while (pos < last) {
        if (stop[p[pos]])
            return 0;
        uint32_t size = read_int32(p + pos + 1);
        if (size < 4)
            return 0;
        pos += 1 + (Py_ssize_t)size;
    }
    return pos == last;
}

/* Framer.parse_then_sync: 1 with the Parse's query text in *text / *size, 0, -1. */
static int framer_parse_then_sync(FramerBase *f, const unsigned char *p, Py_ssize_t n,
                                  const unsigned char **text, Py_ssize_t *size)
{
    if (n < 5 || p[0] != MSG_PARSE)
        return 0;
    const unsigned char *readable = table_of(f->readable);
    if (readable == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!readable[MSG_PARSE])
        return 0;
    uint32_t length = read_int32(p + 1);
    if (length < 4 || (Py_ssize_t)length > f->max_want || (Py_ssize_t)length > n - 1)
        return 0;
    Py_ssize_t end = 1 + (Py_ssize_t)length;
    int r = framer_lone_last(f, p, n, MSG_SYNC, 4, end);
    if (r != 1)
        return r;
    const unsigned char *name_end = memchr(p + 5, 0, (size_t)(end - 5));
    if (name_end == NULL)
        return 0;
    const unsigned char *text_end = memchr(name_end + 1, 0, (size_t)(p + end - name_end - 1));
    if (text_end == NULL)
        return 0;
    *text = name_end + 1;
    *size = text_end - *text;
    return 1;
}

static FramerBase *as_framer(PyObject *obj)
{
    return obj != NULL && PyObject_TypeCheck(obj, &FramerBaseType) ? (FramerBase *)obj : NULL;
}

/*
 * An attribute that is a plain `__slots__` member of its object's exact type, read at its
 * offset (a statement paid ~130 instructions per generic lookup, three per statement). The
 * offset is found once per type and again whenever the type changes (its version tag):
 * a member descriptor is a data descriptor, so nothing in an instance can shadow it, and
 * a type with its own __getattribute__ (or no slot of that name) takes the generic path.
 */
typedef struct {
    PyObject **name;    /* the interned name */
    PyTypeObject *type; /* a strong reference, NULL before the first read */
    unsigned int version;
    Py_ssize_t offset; /* -1: not a plain slot of this type */
} SlotCache;

static SlotCache c_prepared = {&s_prepared, NULL, 0, -1};
static SlotCache c_policy = {&s_policy, NULL, 0, -1};
static SlotCache c_generation = {&s_generation, NULL, 0, -1};

static void slot_resolve(SlotCache *c, PyTypeObject *t)
{
    Py_INCREF(t);
    Py_XSETREF(c->type, t);
    c->offset = -1;
    PyObject *d = _PyType_Lookup(t, *c->name); /* also gives the type a version tag */
    c->version = t->tp_version_tag;
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type) ||
        t->tp_getattro != PyObject_GenericGetAttr)
        return;
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type == T_OBJECT_EX && ((PyMemberDescrObject *)d)->d_common.d_type == t)
        c->offset = m->offset;
}

/* getattr(obj, name), a new reference (NULL with the generic path's error). */
static PyObject *slot_get(SlotCache *c, PyObject *obj)
{
    PyTypeObject *t = Py_TYPE(obj);
    if (t != c->type || !(t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) ||
        t->tp_version_tag != c->version)
        slot_resolve(c, t);
    if (c->offset >= 0) {
        PyObject *v = *(PyObject **)((char *)obj + c->offset);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, *c->name); /* unset: its AttributeError */
}

/* SessionCore._full_mode(), without its call while the policy's generation is unchanged.
 * Runs before anything changed: every failure is the caller's "step aside". */
static int full_mode(CoreBase *core)
{
    if (core->inputs == NULL)
        return -1;
    PyObject *inputs = Py_NewRef(core->inputs); /* its __getattr__ may drop the field */
    PyObject *policy = slot_get(&c_policy, inputs);
    Py_DECREF(inputs);
    if (policy == NULL)
        return -1;
    PyObject *generation = slot_get(&c_generation, policy);
    Py_DECREF(policy);
    if (generation == NULL)
        return -1;
    Py_ssize_t now = PyLong_AsSsize_t(generation);
    Py_DECREF(generation);
    if (now == -1 && PyErr_Occurred())
        return -1;
    if (now == core->mode_generation)
        return core->mode_is_full;
    PyObject *answer = PyObject_CallMethodNoArgs((PyObject *)core, s_full_mode);
    if (answer == NULL)
        return -1;
    int r = PyObject_IsTrue(answer);
    Py_DECREF(answer);
    return r;
}

/*
 * statements.harmless_shape's answers by text (digits read as 0), so that a repeated
 * statement costs a hash and a compare instead of a bytes object and a call. Exact:
 * harmless_shape is a pure function of the folded text; its True and False answers are
 * kept (None, "only the exact text can tell", is not). Open addressing; bounded, emptied
 * when full (the next misses refill it).
 */
#define MEMO_SLOTS 8192 /* a power of two */
#define MEMO_MAX 4096   /* entries before it is emptied: the load stays under one half */
static struct {
    uint64_t hash;
    PyObject *folded; /* bytes, NULL when the slot is empty */
    /* allowed_entry's keys for the texts of this fold (a Query's, a Parse's), made on first
     * use; NULL until then, and always when the shape keeps a digit of the text. */
    PyObject *shapes[2];
    int harmless; /* harmless_shape's answer: 1 True, 0 False */
} g_memo[MEMO_SLOTS];
static Py_ssize_t g_memo_used = 0;

#define NO_SLOT ((size_t)-1)

static inline unsigned char fold(unsigned char c) { return c >= '1' && c <= '9' ? '0' : c; }

/* A repeated statement's whole cost is a few thousand instructions: its text is hashed
 * and compared eight bytes at a time (byte at a time, ~1,000 for an 80-byte UPDATE). */
static inline uint64_t load8(const unsigned char *p, Py_ssize_t n)
{
    uint64_t w = 0;
    if (n >= 8) {
        memcpy(&w, p, 8); /* one load, not a call */
        return w;
    }
    for (Py_ssize_t i = 0; i < n; i++) /* the bytes past n stay 0: fold keeps 0 */
        w |= (uint64_t)p[i] << (8 * i);
    return w;
}

/* fold() of each byte of w: '1'..'9' (0x31..0x39) lose their low nibble. With the high
 * bits cleared first, the sums cannot carry into the next byte. */
static inline uint64_t fold8(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t low7 = w & ~high;
    uint64_t from_1 = low7 + ones * (0x80 - '1'); /* high bit: byte >= '1' */
    uint64_t past_9 = low7 + ones * (0x80 - '9' - 1); /* high bit: byte > '9' */
    uint64_t digit = from_1 & ~past_9 & ~w & high;
    return w & ~((digit >> 7) * 0x0f);
}

static uint64_t fold_hash(const unsigned char *text, Py_ssize_t size)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)size;
    for (Py_ssize_t i = 0; i < size; i += 8) {
        h ^= fold8(load8(text + i, size - i));
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    h *= 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 29);
}

static int folds_to(const unsigned char *text, Py_ssize_t size, PyObject *folded)
{
    if (PyBytes_GET_SIZE(folded) != size)
        return 0;
    const unsigned char *f = (const unsigned char *)PyBytes_AS_STRING(folded);
    for (Py_ssize_t i = 0; i < size; i += 8) {
        if (fold8(load8(text + i, size - i)) != load8(f + i, size - i))
            return 0;
    }
    return 1;
}

static void memo_clear(void)
{
    for (Py_ssize_t i = 0; i < MEMO_SLOTS; i++) {
        Py_CLEAR(g_memo[i].folded);
        Py_CLEAR(g_memo[i].shapes[0]);
        Py_CLEAR(g_memo[i].shapes[1]);
    }
    g_memo_used = 0;
}

/* 1 when the memo holds the text's fold, in *slot; else 0 and *slot is where it would go. */
static int memo_find(const unsigned char *text, Py_ssize_t size, uint64_t hash, size_t *slot)
{
    size_t i = (size_t)hash & (MEMO_SLOTS - 1);
    for (;;) { /* bounded: the table is never more than half full */
        PyObject *f = g_memo[i].folded;
        *slot = i;
        if (f == NULL)
            return 0;
        if (g_memo[i].hash == hash && folds_to(text, size, f))
            return 1;
        i = (i + 1) & (MEMO_SLOTS - 1);
    }
}

/* `soft.prepared`'s truth (a prepared soft delete in play): 1, 0; -1 also when unset. */
static int soft_prepared(CoreBase *core)
{
    if (core->soft == NULL)
        return -1;
    PyObject *soft = Py_NewRef(core->soft);
    PyObject *prepared = slot_get(&c_prepared, soft);
    Py_DECREF(soft);
    if (prepared == NULL)
        return -1;
    int r = truthy(prepared);
    Py_DECREF(prepared);
    return r;
}

#define UNDECIDED 2

/* statements.passes_unread(text, soft) with no prepared soft delete (the caller checked):
 * 1 True and 0 False where harmless_shape answers, UNDECIDED where only the Python path
 * can tell (a text too long for the memo, or one that may name softguard), -1. On 1 and 0,
 * *found is the text's memo slot (valid until Python code runs). */
static int passes_unread(const unsigned char *text, Py_ssize_t size, size_t *found)
{
    if (size > g_memo_bytes)
        return UNDECIDED;
    uint64_t hash = fold_hash(text, size);
    size_t slot;
    if (memo_find(text, size, hash, &slot)) {
        *found = slot;
        return g_memo[slot].harmless;
    }
    /* The text with every digit read as 0 (statements._FOLD_DIGITS), asked of Python. */
    PyObject *folded = PyBytes_FromStringAndSize(NULL, size);
    if (folded == NULL)
        return -1;
    char *out = PyBytes_AS_STRING(folded);
    for (Py_ssize_t i = 0; i < size; i++)
        out[i] = (char)fold(text[i]);
    /* Held for the call: configure() may replace it meanwhile. */
    PyObject *shape = Py_NewRef(g_harmless_shape);
    PyObject *known = PyObject_CallOneArg(shape, folded);
    Py_DECREF(shape);
    if (known == NULL) {
        Py_DECREF(folded);
        return -1;
    }
    int r = known == Py_True ? 1 : known == Py_False ? 0 : UNDECIDED;
    Py_DECREF(known);
    if (r == UNDECIDED) {
        Py_DECREF(folded);
        return r;
    }
    /* The call ran Python code, which may have re-entered this function (or let another
     * thread run it): the slot found before may be taken, the text already kept. */
    if (memo_find(text, size, hash, &slot)) {
        Py_DECREF(folded);
        *found = slot;
        return g_memo[slot].harmless;
    }
    if (g_memo_used >= MEMO_MAX) {
        memo_clear();
        memo_find(text, size, hash, &slot);
    }
    g_memo[slot].hash = hash;
    g_memo[slot].folded = folded; /* the reference moves into the memo */
    g_memo[slot].harmless = r;
    g_memo_used++;
    *found = slot;
    return r;
}

/*
 * The session's memo of Query and Parse shapes its policy lets pass as sent (statements.
 * remember_allowed, statements.allowed_passes). The key is softguard.sql.cache.shape_of
 * of the text: its candidate numbers (the regex _NUMBERS there) read as 0, or 0.0 for a
 * decimal. Written out: a digit not preceded by a token byte [A-Za-z0-9_$.\x80-\xff]
 * starts a candidate; digits '.' digits not followed by a token byte are a decimal, else
 * a run of at most 9 digits not followed by one is an integer; anything else is kept.
 */
#define SHAPE_MAX 1024 /* configure() refuses a larger memo_bytes */

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static inline int token_byte(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           c == '$' || c == '.' || c >= 0x80;
}

/* shape_of(text) into out (at most size bytes: a replacement is never longer than what
 * it replaces); its length. *kept: whether a digit of the text was copied into the shape.
 * Every choice here reads only whether a byte is a digit or a token byte, which fold()
 * keeps, so texts of one fold have one shape when no digit is copied (the memo keeps it). */
static Py_ssize_t shape_into(const unsigned char *t, Py_ssize_t n, unsigned char *out, int *kept)
{
    Py_ssize_t i = 0, m = 0;
    *kept = 0;
    while (i < n) {
        unsigned char c = t[i];
        if (!is_digit(c) || (i > 0 && token_byte(t[i - 1]))) {
            *kept |= is_digit(c);
            out[m++] = c;
            i++;
            continue;
        }
        Py_ssize_t e = i + 1;
        while (e < n && is_digit(t[e]))
            e++;
        if (e + 1 < n && t[e] == '.' && is_digit(t[e + 1])) {
            Py_ssize_t f = e + 2;
            while (f < n && is_digit(t[f]))
                f++;
            if (f == n || !token_byte(t[f])) {
                memcpy(out + m, "0.0", 3);
                m += 3;
                i = f;
                continue;
            }
        }
        if (e - i <= 9 && (e == n || !token_byte(t[e]))) {
            out[m++] = '0';
            i = e;
            continue;
        }
        *kept = 1;
        out[m++] = c;
        i++;
    }
    return m;
}

/* The key allowed_passes looks up for text: the shape (after a NUL for a Parse), from
 * the text's memo slot when it holds one (passes_unread's, no Python run since). */
static PyObject *shape_key(const unsigned char *text, Py_ssize_t size, int parse, size_t slot)
{
    parse = !!parse;
    if (slot != NO_SLOT && g_memo[slot].shapes[parse] != NULL)
        return Py_NewRef(g_memo[slot].shapes[parse]);
    unsigned char shape[SHAPE_MAX + 1]; /* a Parse's key: a NUL, then the shape */
    shape[0] = 0;
    int kept;
    Py_ssize_t m = shape_into(text, size, shape + 1, &kept);
    PyObject *key = PyBytes_FromStringAndSize((const char *)shape + !parse, m + parse);
    if (key != NULL && slot != NO_SLOT && !kept)
        g_memo[slot].shapes[parse] = Py_NewRef(key);
    return key;
}

/* allowed_passes(text, core._allowed, parse=parse): 1 with *entry (a new reference to the
 * memo's (kind, action)), 0 not found (or not ours: step aside), -1. */
static int allowed_entry(CoreBase *core, const unsigned char *text, Py_ssize_t size,
                         int parse, size_t slot, PyObject **entry)
{
    PyObject *allowed = core->allowed;
    if (size > g_memo_bytes || allowed == NULL || !PyDict_CheckExact(allowed) ||
        PyDict_GET_SIZE(allowed) == 0)
        return 0;
    PyObject *key = shape_key(text, size, parse, slot);
    if (key == NULL)
        return -1;
    Py_INCREF(allowed); /* a key's __eq__ (not bytes: someone else's) may drop the field */
    PyObject *found = PyDict_GetItemWithError(allowed, key);
    Py_XINCREF(found);
    Py_DECREF(allowed);
    Py_DECREF(key);
    if (found == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_CheckExact(found) || PyTuple_GET_SIZE(found) != 2) {
        Py_DECREF(found); /* the Python path unpacks it and raises */
        return 0;
    }
    *entry = found;
    return 1;
}

static int count_safe(CoreBase *core)
{
    PyObject *counter = core->counter;
    if (counter != NULL && PyObject_TypeCheck(counter, &CounterBaseType)) {
        ((CounterBase *)counter)->safe_statements += 1;
        return 0;
    }
    if (counter == NULL) {
        PyErr_SetString(PyExc_AttributeError, "the core has no counter");
        return -1;
    }
    Py_INCREF(counter); /* its attribute code may drop the core's reference */
    PyObject *v = PyObject_GetAttr(counter, s_safe_statements);
    PyObject *nv = NULL;
    if (v != NULL) {
        PyObject *one = PyLong_FromLong(1);
        nv = one == NULL ? NULL : PyNumber_Add(v, one);
        Py_XDECREF(one);
        Py_DECREF(v);
    }
    int r = nv == NULL ? -1 : PyObject_SetAttr(counter, s_safe_statements, nv);
    Py_XDECREF(nv);
    Py_DECREF(counter);
    return r;
}

static int send(PyObject *sink, PyObject *data)
{
    if (sink == NULL) {
        PyErr_SetString(PyExc_AttributeError, "the core has no sink for these bytes");
        return -1;
    }
    /* The sink may replace itself (a TLS upgrade): hold it for the call. */
    Py_INCREF(sink);
    int handled;
    PyObject *r = link_call_write(sink, data, &handled);
    if (!handled)
        r = PyObject_CallOneArg(sink, data);
    Py_DECREF(sink);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* ------------------------------------------------------------------ the fast paths */

/*
 * The checks before a fast path changes anything are the Python fast path's, in its order,
 * and side-effect free (but for `_full_mode`'s cache, which the Python path fills alike).
 * Any failure among them (an unset field, a policy object that raises, an int out of
 * range) is "not mine": the error is dropped and the Python path runs the chunk from the
 * start, raising its own exception after its own changes. From the first change on, the
 * Python path's order: an error there is raised after the same changes.
 */
static int aside(int r)
{
    if (r < 0) {
        PyErr_Clear();
        return 0;
    }
    return r;
}

/* Would `x += by` overflow a Py_ssize_t field (Python raises OverflowError at the
 * assignment)? Then the Python path runs the chunk and raises it. */
static inline int overflows(Py_ssize_t x, Py_ssize_t by) { return x > PY_SSIZE_T_MAX - by; }

#define HARMLESS_QUERY 1
#define PREPARED 2
#define ALLOWED 3 /* a Query, or a Parse ... Sync */
#define HARMLESS_PARSE 4

/* A statement text's verdict, in passes_unread's order and then the session memo's:
 * HARMLESS_QUERY harmless, ALLOWED a shape the memo lets pass (*entry: what to count), 0
 * neither (or not ours), -1. The memo is read only with no result filter in play. */
static int text_verdict(CoreBase *core, const unsigned char *text, Py_ssize_t size, int parse,
                        PyObject **entry)
{
    /* passes_unread's first test: a prepared soft delete in play answers False, and the
     * session memo is not read either. */
    int r = soft_prepared(core);
    if (r != 0)
        return r < 0 ? -1 : 0;
    size_t slot = NO_SLOT;
    r = passes_unread(text, size, &slot);
    if (r == 1)
        return HARMLESS_QUERY;
    if (r != 0 || core->filter != Py_None)
        return r < 0 ? -1 : 0;
    r = allowed_entry(core, text, size, parse, slot, entry);
    return r == 1 ? ALLOWED : r;
}

/* The client checks, the framer held (a callback may drop the core's reference to it):
 * HARMLESS_QUERY a lone harmless Query, PREPARED a Bind/Execute/Sync, HARMLESS_PARSE a
 * Parse ... Sync of a harmless text, ALLOWED a lone Query or a Parse ... Sync whose shape
 * the session's memo lets pass (*entry: what to count), 0 none, -1. */
static int client_checks(CoreBase *core, FramerBase *cframer, const unsigned char *p,
                         Py_ssize_t n, PyObject **entry)
{
    int r = framer_lone(cframer, p, n, MSG_QUERY);
    if (r < 0)
        return -1;
    if (r) {
        if (core->known != Py_None || memchr(p + 5, 0, (size_t)(n - 5)) != p + n - 1)
            return 0;
        if ((r = full_mode(core)) != 1)
            return r;
        r = text_verdict(core, p + 5, n - 6, 0, entry);
        /* `_query_sent` with a result filter in play: the Python path's */
        return r == HARMLESS_QUERY && core->filter != Py_None ? 0 : r;
    }
    /* `elif self._filter is None and cframer.lone_last(data, _S, 4)` */
    if (core->filter != Py_None)
        return 0;
    r = framer_lone_last(cframer, p, n, MSG_SYNC, 4, 0);
    if (r != 0)
        return r == 1 ? PREPARED : r;
    /* `elif self._filter is None and self._known is None:` a Parse ... Sync */
    if (core->known != Py_None)
        return 0;
    const unsigned char *text;
    Py_ssize_t size;
    if ((r = framer_parse_then_sync(cframer, p, n, &text, &size)) != 1)
        return r;
    if ((r = full_mode(core)) != 1)
        return r;
    r = text_verdict(core, text, size, 1, entry); /* no result filter here (above) */
    return r == HARMLESS_QUERY ? HARMLESS_PARSE : r;
}

/* counter.count_statement(kind, action), as the Python path calls it; CounterBase's own
 * method (not overridden) without the call. */
static int count_statement(CoreBase *core, PyObject *entry)
{
    PyObject *counter = core->counter;
    if (counter == NULL) {
        PyErr_SetString(PyExc_AttributeError, "the core has no counter");
        return -1;
    }
    if (PyObject_TypeCheck(counter, &CounterBaseType) && PyTuple_CheckExact(entry) &&
        PyTuple_GET_SIZE(entry) == 2 &&
        _PyType_Lookup(Py_TYPE(counter), s_count_statement) == g_count_descr) {
        /* The entry is (kind, action): the very key the method would build. */
        Py_INCREF(counter);
        int r = counter_add((CounterBase *)counter, entry);
        Py_DECREF(counter);
        return r;
    }
    Py_INCREF(counter); /* the method may drop the core's reference */
    PyObject *r = PyObject_CallMethodObjArgs(counter, s_count_statement,
                                             PyTuple_GET_ITEM(entry, 0),
                                             PyTuple_GET_ITEM(entry, 1), NULL);
    Py_DECREF(counter);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* SessionCore.client_data's two fast paths: 1 done, 0 not taken (nothing changed), -1. */
static int client_fast(PyObject *obj, PyObject *data)
{
    if (!PyBytes_CheckExact(data) || !PyObject_TypeCheck(obj, &CoreBaseType))
        return 0;
    CoreBase *core = (CoreBase *)obj;
    FramerBase *cframer = as_framer(core->cframer);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    /* `self._client_bytes += n` is the Python path's first change: it raises there. */
    if (core->state != g_ready || cframer == NULL || overflows(core->client_bytes, n))
        return 0;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    PyObject *entry = NULL;
    Py_INCREF(cframer);
    int which = aside(client_checks(core, cframer, p, n, &entry));
    Py_DECREF(cframer);
    if (which == 0)
        return 0;
    PyObject *counter = core->counter;
    int counted_here = counter != NULL && PyObject_TypeCheck(counter, &CounterBaseType);
    int safe = which == HARMLESS_QUERY || which == HARMLESS_PARSE;
    if (overflows(core->pending, 1) ||
        (safe && counted_here && overflows(((CounterBase *)counter)->safe_statements, 1))) {
        Py_XDECREF(entry);
        return 0;
    }
    /* The Python path's order: `_client_bytes`, the count, `pending`, the write. */
    core->client_bytes += n;
    if (safe && count_safe(core) < 0)
        return -1;
    if (which == ALLOWED) {
        int r = count_statement(core, entry);
        Py_DECREF(entry);
        if (r < 0)
            return -1;
    }
    core->pending += 1;
    return send(core->to_server, data) < 0 ? -1 : 1;
}

/* The server checks, the framer held: 1 ours, 0 not, -1. */
static int server_checks(CoreBase *core, FramerBase *sframer, const unsigned char *p,
                         Py_ssize_t n)
{
    int r = framer_lone_last(sframer, p, n, MSG_READY, 5, 0);
    if (r != 1)
        return r;
    /* What would make the Python path do more than count and write: timings or
     * protected statements to pair, a read-only session ending, a shutdown. */
    if (core->read_only_lost || core->closing_for_shutdown)
        return 0;
    int unset = 0;
    if ((r = truthy_or_aside(core->timings, &unset)) != 0 || unset)
        return r < 0 ? -1 : 0;
    if ((r = truthy_or_aside(core->protected_, &unset)) != 0 || unset)
        return r < 0 ? -1 : 0;
    return 1;
}

/* SessionCore.server_data's fast path, when it would do nothing else: 1 / 0 / -1. */
static int server_fast(PyObject *obj, PyObject *data)
{
    if (!PyBytes_CheckExact(data) || !PyObject_TypeCheck(obj, &CoreBaseType))
        return 0;
    CoreBase *core = (CoreBase *)obj;
    FramerBase *sframer = as_framer(core->sframer);
    if (core->state != g_ready || sframer == NULL || !core->answers_plain)
        return 0;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    Py_INCREF(sframer);
    int r = aside(server_checks(core, sframer, p, n));
    Py_DECREF(sframer);
    if (r != 1)
        return 0;
    core->tx_status = p[n - 1];
    if (core->pending > 0)
        core->pending -= 1;
    return send(core->to_client, data) < 0 ? -1 : 1;
}

/* ------------------------------------------------------------------ Relay */

/*
 * A protocol's data_received: the fast path, else the Python one. `run` executes the core's
 * controls (a write may have paused the peer: `upstream_paused`), as the Python
 * data_received does after the core returns.
 */
typedef struct {
    PyObject_HEAD
    PyObject *core;
    PyObject *slow;
    PyObject *run;
    int server;
    vectorcallfunc vectorcall;
} Relay;

static PyObject *relay_chunk(Relay *self, PyObject *data)
{
    if (self->core == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this Relay was cleared by the garbage collector");
        return NULL;
    }
    int r = self->server ? server_fast(self->core, data) : client_fast(self->core, data);
    if (r < 0)
        return NULL;
    if (r == 0)
        return PyObject_CallOneArg(self->slow, data);
    /* `if core.controls: run()`, as the Python data_received ends; an unset field raises
     * its AttributeError there, so it does here. */
    PyObject *controls = ((CoreBase *)self->core)->controls;
    if (controls == NULL)
        controls = PyObject_GetAttr(self->core, s_controls);
    else
        Py_INCREF(controls);
    if (controls == NULL)
        return NULL;
    int pending_controls = truthy(controls);
    Py_DECREF(controls);
    if (pending_controls < 0)
        return NULL;
    if (pending_controls)
        return PyObject_CallNoArgs(self->run);
    Py_RETURN_NONE;
}

static PyObject *relay_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Relay takes one positional argument (the bytes)");
        return NULL;
    }
    return relay_chunk((Relay *)callable, args[0]);
}

static PyObject *relay_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"core", "slow", "run", "server", NULL};
    PyObject *core, *slow, *run;
    int server;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOp", kwlist, &CoreBaseType, &core, &slow,
                                     &run, &server))
        return NULL;
    if (g_ready == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "softguard._hotpath.configure() was not called");
        return NULL;
    }
    Relay *self = (Relay *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->core = Py_NewRef(core);
    self->slow = Py_NewRef(slow);
    self->run = Py_NewRef(run);
    self->server = server;
    self->vectorcall = relay_vectorcall;
    return (PyObject *)self;
}

/* A Relay sits in a cycle (protocol -> relay -> bound method -> protocol): GC-tracked. */
static int relay_traverse(Relay *self, visitproc visit, void *arg)
{
    Py_VISIT(self->core);
    Py_VISIT(self->slow);
    Py_VISIT(self->run);
    return 0;
}

static int relay_clear(Relay *self)
{
    Py_CLEAR(self->core);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->run);
    return 0;
}

static void relay_dealloc(Relay *self)
{
    PyObject_GC_UnTrack(self);
    relay_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "softguard._hotpath.Relay",
    .tp_doc = "Relay(core, slow, run, server): a protocol's data_received, fast path first",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = relay_new,
    .tp_dealloc = (destructor)relay_dealloc,
    .tp_traverse = (traverseproc)relay_traverse,
    .tp_clear = (inquiry)relay_clear,
    .tp_free = PyObject_GC_Del,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Relay, vectorcall),
};

/* ------------------------------------------------------------------ module */

static PyObject *configure(PyObject *module, PyObject *args)
{
    PyObject *ready, *harmless_shape;
    Py_ssize_t memo_bytes;
    if (!PyArg_ParseTuple(args, "OOn", &ready, &harmless_shape, &memo_bytes))
        return NULL;
    if (memo_bytes < 0 || memo_bytes > SHAPE_MAX) {
        PyErr_Format(PyExc_ValueError, "memo_bytes must be within 0..%d", SHAPE_MAX);
        return NULL;
    }
    Py_XSETREF(g_ready, Py_NewRef(ready));
    Py_XSETREF(g_harmless_shape, Py_NewRef(harmless_shape));
    g_memo_bytes = memo_bytes;
    memo_clear(); /* answers of the function replaced, maybe for longer texts */
    Py_RETURN_NONE;
}

static PyObject *py_client_chunk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "client_chunk(core, data)");
        return NULL;
    }
    int r = client_fast(args[0], args[1]);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *py_server_chunk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "server_chunk(core, data)");
        return NULL;
    }
    int r = server_fast(args[0], args[1]);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *py_shape_of(PyObject *module, PyObject *arg)
{
    if (!PyBytes_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "shape_of(bytes)");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL)
        return NULL;
    int kept;
    Py_ssize_t m = shape_into((const unsigned char *)PyBytes_AS_STRING(arg), n,
                              (unsigned char *)PyBytes_AS_STRING(out), &kept);
    PyObject *shape = PyBytes_FromStringAndSize(PyBytes_AS_STRING(out), m);
    Py_DECREF(out);
    return shape;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(ready_state, harmless_shape, memo_bytes): what the fast paths compare with"},
    {"client_chunk", (PyCFunction)(void (*)(void))py_client_chunk, METH_FASTCALL,
     "client_chunk(core, data) -> bool: the client fast path taken (True) or not (nothing done)"},
    {"server_chunk", (PyCFunction)(void (*)(void))py_server_chunk, METH_FASTCALL,
     "server_chunk(core, data) -> bool: the server fast path taken (True) or not"},
    {"shape_of", py_shape_of, METH_O,
     "shape_of(text) -> bytes: softguard.sql.cache.shape_of as the session memo computes it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "softguard._hotpath", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

#define INTERN(var, text)                                                                      \
    do {                                                                                       \
        if ((var = PyUnicode_InternFromString(text)) == NULL)                                  \
            return NULL;                                                                       \
    } while (0)

PyMODINIT_FUNC PyInit__hotpath(void)
{
    INTERN(s_prepared, "prepared");
    INTERN(s_policy, "policy");
    INTERN(s_generation, "generation");
    INTERN(s_full_mode, "_full_mode");
    INTERN(s_safe_statements, "safe_statements");
    INTERN(s_controls, "controls");
    INTERN(s_count_statement, "count_statement");
    if (PyType_Ready(&FramerBaseType) < 0 || PyType_Ready(&CounterBaseType) < 0 ||
        PyType_Ready(&CoreBaseType) < 0 || PyType_Ready(&RelayType) < 0)
        return NULL;
    g_count_descr = _PyType_Lookup(&CounterBaseType, s_count_statement); /* borrowed: the
                                                                          * type is static */
    if (g_count_descr == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "CounterBase.count_statement is missing");
        return NULL;
    }
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "FramerBase", (PyObject *)&FramerBaseType) < 0 ||
        PyModule_AddObjectRef(m, "CounterBase", (PyObject *)&CounterBaseType) < 0 ||
        PyModule_AddObjectRef(m, "CoreBase", (PyObject *)&CoreBaseType) < 0 ||
        PyModule_AddObjectRef(m, "Relay", (PyObject *)&RelayType) < 0 ||
        link_add_type(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
