/* hachain/_record.h: a heartbeat record written from compiled code, for the two writers
 * that have one (the restarter's compiled beat, hachain/restarter/_clone3.c; the
 * tickler's compiled tick, hachain/watchdog/_tick.c). The record is what
 * channels.HeartbeatWriter writes: its CRC and head first, then the text, a newline,
 * spaces up to the file's size, all in one pwrite at offset 0. Included by each module's
 * C file: a header of static functions, no library of its own. */
#ifndef HACHAIN_RECORD_H
#define HACHAIN_RECORD_H

#include <Python.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define RECORD_NUM 40  /* room for the text of one value */

/* The record whose text is the n + 1 bytes of `pieces` with the n values of `nums`
 * (their lengths in `nlen`) between them, padded to `size`, written to `fd`; its CRC
 * through `crc32` (zlib.crc32, called with the GIL, which the caller holds; the pwrite
 * is made without it). 1 when written; 0 when it outgrew `size` or anything failed,
 * and the Python beat then writes it (a bigger file, a new one). */
static int record_write(int fd, PyObject *pieces, char nums[][RECORD_NUM],
                        const int *nlen, int n, Py_ssize_t size, PyObject *crc32) {
    const Py_ssize_t head = 20;  /* {"crc": "xxxxxxxx", */
    Py_ssize_t total = 0;
    for (int i = 0; i <= n; i++)
        total += PyBytes_GET_SIZE(PyTuple_GET_ITEM(pieces, i));
    for (int i = 0; i < n; i++)
        total += nlen[i];
    if (head + total + 1 > size)
        return 0;
    char *rec = PyMem_Malloc((size_t)size);
    if (rec == NULL)
        return 0;
    char *w = rec + head;
    for (int i = 0; i <= n; i++) {
        PyObject *piece = PyTuple_GET_ITEM(pieces, i);
        memcpy(w, PyBytes_AS_STRING(piece), (size_t)PyBytes_GET_SIZE(piece));
        w += PyBytes_GET_SIZE(piece);
        if (i < n) {
            memcpy(w, nums[i], (size_t)nlen[i]);
            w += nlen[i];
        }
    }
    PyObject *crc = PyObject_CallFunction(crc32, "y#", rec + head, total);
    unsigned long c = crc != NULL ? PyLong_AsUnsignedLong(crc) : 0;
    Py_XDECREF(crc);
    if (crc == NULL || PyErr_Occurred()) {
        PyErr_Clear();
        PyMem_Free(rec);
        return 0;
    }
    char crc_text[32];
    snprintf(crc_text, sizeof crc_text, "{\"crc\": \"%08lx\", ", c & 0xffffffffUL);
    memcpy(rec, crc_text, (size_t)head);
    *w++ = '\n';
    memset(w, ' ', (size_t)(size - (w - rec)));
    ssize_t put;
    Py_BEGIN_ALLOW_THREADS
    put = pwrite(fd, rec, (size_t)size, 0);
    Py_END_ALLOW_THREADS
    PyMem_Free(rec);
    return put == size;
}

#endif
