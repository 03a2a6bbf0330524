/*
 * A plain TCP (or Unix) connection's reads and writes, on the socket itself (decision 0040).
 *
 * uvloop's transports cost ~4,700 instructions per statement of a relay that reads nothing
 * (bench/serve_cpu.py: 7,172 for one data_received and one transport.write per chunk each
 * way), more than PgBouncer spends on the whole statement (3,105). The same relay reading
 * and writing the sockets from a reader callback (loop.add_reader) costs 2,409. So once a
 * session is up and neither side is TLS, softguard.proxy.link moves its two connections
 * off uvloop's transports onto `LinkBase`: the event loop only says "readable", and the two
 * operations every chunk takes are here, and the links' own epoll set (`Poller`, below):
 *
 *   read_ready()  one recv() into a buffer, the bytes handed to the protocol's
 *                 data_received (the compiled Relay, or the Python method);
 *   write(data)   one send() when nothing is queued before it.
 *
 * Everything else a transport does (a partial send queued and flushed when the socket is
 * writable, flow control, pausing, closing, errors, end of file) stays in Python
 * (softguard/proxy/link.py), reached through the methods named below.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <structmember.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "_link.h"

typedef struct {
    PyObject_HEAD
    PyObject *receive;  /* the protocol's data_received */
    Py_ssize_t backlog; /* bytes queued in Python, unsent: a write goes after them */
    int fd;             /* -1 once closed */
    int events;         /* what its Poller watches for: WANT_READ | WANT_WRITE, 0 none */
    char closing;       /* close() was called: reads stop, writes are the Python side's */
} LinkBase;

#define WANT_READ 1
#define WANT_WRITE 2

static PyMemberDef link_members[] = {
    {"receive", T_OBJECT_EX, offsetof(LinkBase, receive), 0, NULL},
    {"backlog", T_PYSSIZET, offsetof(LinkBase, backlog), 0, NULL},
    {"fd", T_INT, offsetof(LinkBase, fd), 0, NULL},
    {"closing", T_BOOL, offsetof(LinkBase, closing), 0, NULL},
    {"events", T_INT, offsetof(LinkBase, events), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* The Python side's methods for what is not the common case. */
static PyObject *s_eof, *s_os_error, *s_write_slow, *s_enqueue, *s_receive_failed,
    *s_write_ready;

/* One recv per readable event: a level-triggered loop calls again while more is there, and
 * other sessions get their turn in between. 64 KiB is what the relay's buffers hold
 * (session.RELAY_BUFFER). One buffer for the process: it is copied into a bytes object
 * before anything else runs. */
#define READ_SIZE 65536
static char g_read_buffer[READ_SIZE];

static PyObject *call_errno(PyObject *self, PyObject *method, int err)
{
    PyObject *code = PyLong_FromLong(err);
    if (code == NULL)
        return NULL;
    PyObject *r = PyObject_CallMethodOneArg(self, method, code);
    Py_DECREF(code);
    return r;
}

/* data_received raised: hand the exception to the Python side, which reports it and
 * closes the connection, as a transport does. */
static PyObject *receive_failed(PyObject *self)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(tb);
        PyErr_SetString(PyExc_SystemError, "data_received failed without an exception");
        return NULL;
    }
    if (tb != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *r = PyObject_CallMethodOneArg(self, s_receive_failed, value);
    Py_XDECREF(type);
    Py_DECREF(value);
    Py_XDECREF(tb);
    return r;
}

static PyObject *link_read_ready(LinkBase *self, PyObject *unused)
{
    /* Once closing (or closed) nothing more is read. */
    if (self->closing || self->fd < 0)
        Py_RETURN_NONE;
    ssize_t r;
    do
        r = recv(self->fd, g_read_buffer, READ_SIZE, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            Py_RETURN_NONE;
        return call_errno((PyObject *)self, s_os_error, errno);
    }
    if (r == 0)
        return PyObject_CallMethodNoArgs((PyObject *)self, s_eof);
    PyObject *data = PyBytes_FromStringAndSize(g_read_buffer, r);
    if (data == NULL)
        return NULL;
    PyObject *receive = self->receive;
    if (receive == NULL) {
        Py_DECREF(data);
        PyErr_SetString(PyExc_AttributeError, "this link has no receive callable");
        return NULL;
    }
    Py_INCREF(receive); /* the call may replace it */
    PyObject *res = PyObject_CallOneArg(receive, data);
    Py_DECREF(receive);
    Py_DECREF(data);
    if (res == NULL)
        return receive_failed((PyObject *)self);
    Py_DECREF(res);
    Py_RETURN_NONE;
}

static PyObject *link_write(LinkBase *self, PyObject *data)
{
    /* Queued bytes go first, and only the Python side knows what to do once closing. */
    if (self->backlog > 0 || self->closing || self->fd < 0 || !PyBytes_CheckExact(data))
        return PyObject_CallMethodOneArg((PyObject *)self, s_write_slow, data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (n == 0)
        Py_RETURN_NONE;
    const char *p = PyBytes_AS_STRING(data);
    ssize_t w;
    do
        w = send(self->fd, p, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
    if (w == n)
        Py_RETURN_NONE;
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return call_errno((PyObject *)self, s_os_error, errno);
        w = 0;
    }
    /* The rest waits for the socket to be writable: no second send now. */
    PyObject *rest = PyBytes_FromStringAndSize(p + w, n - w);
    if (rest == NULL)
        return NULL;
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, s_enqueue, rest);
    Py_DECREF(rest);
    return r;
}

static PyTypeObject LinkBaseType;

/* sink(data) where sink is a link's own bound write, as the relay's sinks are once the
 * session moved: straight to link_write, without a call through the method object. The
 * result; NULL with *handled 0 for any other sink (and a Python override of write). */
PyObject *link_call_write(PyObject *sink, PyObject *data, int *handled)
{
    *handled = 0;
    if (!PyCFunction_Check(sink) || PyCFunction_GET_FUNCTION(sink) != (PyCFunction)link_write)
        return NULL;
    PyObject *self = PyCFunction_GET_SELF(sink);
    if (self == NULL || !PyObject_TypeCheck(self, &LinkBaseType))
        return NULL;
    *handled = 1;
    return link_write((LinkBase *)self, data);
}

static PyMethodDef link_methods[] = {
    {"read_ready", (PyCFunction)link_read_ready, METH_NOARGS,
     "read_ready(): the socket is readable: one recv, handed to receive (or _eof, "
     "_os_error(errno), _receive_failed(exc))"},
    {"write", (PyCFunction)link_write, METH_O,
     "write(data): send now when nothing is queued, else _write_slow(data); the rest of a "
     "partial send to _enqueue(rest)"},
    {NULL, NULL, 0, NULL},
};

static int link_traverse(LinkBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->receive);
    return 0;
}

static int link_clear(LinkBase *self)
{
    Py_CLEAR(self->receive);
    return 0;
}

static void link_dealloc(LinkBase *self)
{
    PyObject_GC_UnTrack(self);
    link_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *link_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    LinkBase *self = (LinkBase *)PyType_GenericNew(type, args, kwds);
    if (self != NULL)
        self->fd = -1;
    return (PyObject *)self;
}

static PyTypeObject LinkBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "softguard._hotpath.LinkBase",
    .tp_doc = "softguard.proxy.link.Link's socket reads and writes",
    .tp_basicsize = sizeof(LinkBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = link_new,
    .tp_dealloc = (destructor)link_dealloc,
    .tp_traverse = (traverseproc)link_traverse,
    .tp_clear = (inquiry)link_clear,
    .tp_free = PyObject_GC_Del,
    .tp_members = link_members,
    .tp_methods = link_methods,
};


/* ------------------------------------------------------------------ Poller */

/*
 * The links' own epoll set, one per event loop, itself watched by the loop (add_reader on
 * its descriptor): one loop callback runs every link that is ready. Not the loop's
 * add_reader per link: uvloop keys those by descriptor number, so a library that closes a
 * socket before removing its reader (psycopg's wait after libpq dropped the connection)
 * later removes the reader of whatever socket got that number next, and a link would
 * stop reading. Here a registration is the link object's, made and removed by it alone.
 */
typedef struct {
    PyObject_HEAD
    int epfd; /* open for the poller's life */
} Poller;

#define BATCH 64

static PyObject *poller_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Poller() takes no arguments");
        return NULL;
    }
    Poller *self = (Poller *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void poller_dealloc(Poller *self)
{
    /* Each link holds its poller (softguard.proxy.link.Link._poller), so a poller is
     * freed only after every link that used it. */
    close(self->epfd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *poller_fileno(Poller *self, PyObject *unused)
{
    return PyLong_FromLong(self->epfd);
}

/* watch(link, read, write): what the set reports for the link; (False, False) removes it.
 * The set holds a reference to each link in it. */
static PyObject *poller_watch(Poller *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyObject_TypeCheck(args[0], &LinkBaseType)) {
        PyErr_SetString(PyExc_TypeError, "watch(link, read, write)");
        return NULL;
    }
    LinkBase *link = (LinkBase *)args[0];
    int read = PyObject_IsTrue(args[1]), write = PyObject_IsTrue(args[2]);
    if (read < 0 || write < 0)
        return NULL;
    int want = (read ? WANT_READ : 0) | (write ? WANT_WRITE : 0);
    if (want == link->events)
        Py_RETURN_NONE;
    if (want != 0 && link->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "watch: the link is closed");
        return NULL;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = (want & WANT_READ ? EPOLLIN : 0) | (want & WANT_WRITE ? EPOLLOUT : 0);
    ev.data.ptr = link;
    int op = link->events == 0 ? EPOLL_CTL_ADD : want == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(self->epfd, op, link->fd, &ev) < 0) {
        /* A link whose descriptor is already gone has left the set with it. */
        if (!(op == EPOLL_CTL_DEL && (errno == EBADF || errno == ENOENT)))
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (op == EPOLL_CTL_ADD)
        Py_INCREF(link);
    link->events = want;
    if (op == EPOLL_CTL_DEL)
        Py_DECREF(link);
    Py_RETURN_NONE;
}

/* The loop's reader callback: run each ready link once (a level-triggered set reports
 * again what is left). The first error is raised after the whole batch ran. */
static PyObject *poller_dispatch(Poller *self, PyObject *unused)
{
    struct epoll_event evs[BATCH];
    int n;
    do
        n = epoll_wait(self->epfd, evs, BATCH, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    /* A callback may remove (and free) another link of the batch: hold them all. */
    for (int i = 0; i < n; i++)
        Py_INCREF((PyObject *)evs[i].data.ptr);
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    for (int i = 0; i < n; i++) {
        LinkBase *link = (LinkBase *)evs[i].data.ptr;
        uint32_t got = evs[i].events;
        int broken = (got & (EPOLLERR | EPOLLHUP)) != 0;
        PyObject *r;
        if ((link->events & WANT_READ) && (broken || (got & EPOLLIN))) {
            r = link_read_ready(link, NULL);
            if (r == NULL)
                goto failed;
            Py_DECREF(r);
        }
        /* Re-read: the read may have closed it or queued nothing to write. */
        if ((link->events & WANT_WRITE) && link->fd >= 0 && (broken || (got & EPOLLOUT))) {
            r = PyObject_CallMethodNoArgs((PyObject *)link, s_write_ready);
            if (r == NULL)
                goto failed;
            Py_DECREF(r);
        }
        continue;
    failed:
        if (type == NULL)
            PyErr_Fetch(&type, &value, &tb);
        else
            PyErr_WriteUnraisable((PyObject *)link);
    }
    for (int i = 0; i < n; i++)
        Py_DECREF((PyObject *)evs[i].data.ptr);
    if (type != NULL) {
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef poller_methods[] = {
    {"fileno", (PyCFunction)poller_fileno, METH_NOARGS, "the epoll set's descriptor"},
    {"watch", (PyCFunction)(void (*)(void))poller_watch, METH_FASTCALL,
     "watch(link, read, write): what to report for link; (False, False) removes it"},
    {"dispatch", (PyCFunction)poller_dispatch, METH_NOARGS,
     "run every ready link once (the loop's reader callback for fileno())"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "softguard._hotpath.Poller",
    .tp_doc = "Poller(): the links' epoll set, run from one event loop reader callback",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = poller_new,
    .tp_dealloc = (destructor)poller_dealloc,
    .tp_methods = poller_methods,
};

#define INTERN(var, text)                                                                      \
    do {                                                                                       \
        if ((var = PyUnicode_InternFromString(text)) == NULL)                                  \
            return -1;                                                                         \
    } while (0)

int link_add_type(PyObject *module)
{
    INTERN(s_eof, "_eof");
    INTERN(s_os_error, "_os_error");
    INTERN(s_write_slow, "_write_slow");
    INTERN(s_enqueue, "_enqueue");
    INTERN(s_receive_failed, "_receive_failed");
    INTERN(s_write_ready, "_write_ready");
    if (PyType_Ready(&LinkBaseType) < 0 || PyType_Ready(&PollerType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "LinkBase", (PyObject *)&LinkBaseType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Poller", (PyObject *)&PollerType);
}
