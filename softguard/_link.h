/* softguard/_link.c: LinkBase, added to the softguard._hotpath module. */
#ifndef SOFTGUARD_LINK_H
#define SOFTGUARD_LINK_H
#include <Python.h>
int link_add_type(PyObject *module);
PyObject *link_call_write(PyObject *sink, PyObject *data, int *handled);
#endif
