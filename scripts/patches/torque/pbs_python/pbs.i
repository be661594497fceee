/* SWIG interface of pbs_python's `pbs` module for Python 3 and SWIG 4, written for vtorque's
 * build (scripts/lib/pbs_python_build.py): the pbs_python tarball ships only the wrapper SWIG 2.0.7
 * generated for Python 2 (src/C++/pbs_wrap.cxx, pbs.py), not its interface file. This one
 * gives the same Python API as that wrapper, read from it:
 *
 *   - an attribute list argument (struct attrl *, struct attropl *) is a Python list of
 *     attrl/attropl objects (from new_attrl(n) / new_attropl(n)), or the string "NULL";
 *   - a returned struct batch_status * / struct attrl * / struct attropl * is a Python list
 *     of the elements of the C linked list; a returned char ** (pbs_selectjob) a list of str;
 *   - str(attrl) is "(name,resource,value)"; attrlArray is a carrays.i array class;
 *   - get_error() is pbs_errno; error() gives (number, text); get_mom_values() asks a mom
 *     (openrm/addreq/getreq) for its resources; version and version_info.
 *
 * The headers SWIG reads are pbs_python's own copies (src/C++/ *.h, Torque 4 era, trimmed for
 * SWIG); the wrapper compiles against the installed Torque headers. Differences from the
 * SWIG 2 wrapper: no debug printf on stdout; returned attrl objects do not own their memory
 * (it is libtorque's: pbs_statfree frees it); strings are str.
 */

%module pbs

%{
#include "pbs_ifl.h"
#include "pbs_error.h"
#include "rm.h"
#include "log.h"

#include <string.h>

/* Length of a Python attribute list argument: the list's, 0 for the string "NULL", -1 else. */
static int Get_List_Size(PyObject *src)
  {
  if (PyList_Check(src))
    return((int)PyList_Size(src));

  if (PyUnicode_Check(src))
    {
    const char *text = PyUnicode_AsUTF8(src);

    if ((text != NULL) && (strcmp(text, "NULL") == 0))
      return(0);
    }

  return(-1);
  }

/* number attrl, linked in order, in one block, with empty name/resource/value buffers
 * (new[]: the SWIG setters of char * members delete[] the old value). */
struct attrl *new_attrl(int number)
  {
  struct attrl *ptr;

  if (number <= 0)
    return(NULL);

  ptr = (struct attrl *)calloc(number, sizeof(struct attrl));

  for (int i = 0; i < number; i++)
    {
    ptr[i].name     = new char[MAXNAMLEN]();
    ptr[i].resource = new char[MAXNAMLEN]();
    ptr[i].value    = new char[MAXNAMLEN]();
    ptr[i].next     = (i + 1 < number) ? &ptr[i + 1] : NULL;
    }

  return(ptr);
  }

struct attropl *new_attropl(int number)
  {
  struct attropl *ptr;

  if (number <= 0)
    return(NULL);

  ptr = (struct attropl *)calloc(number, sizeof(struct attropl));

  for (int i = 0; i < number; i++)
    {
    ptr[i].name     = new char[MAXNAMLEN]();
    ptr[i].resource = new char[MAXNAMLEN]();
    ptr[i].value    = new char[MAXNAMLEN]();
    ptr[i].next     = (i + 1 < number) ? &ptr[i + 1] : NULL;
    }

  return(ptr);
  }

/* Not used, only returned (as in pbs_python). */
struct batch_status *new_batch_status(void)
  {
  return((struct batch_status *)calloc(1, sizeof(struct batch_status)));
  }

int get_error(void)
  {
  return(pbs_errno);
  }
%}

/* ---------------------------------------------------------------- Python -> C lists */

%define LIST_TO_C(TYPE, NAME, SWIGTYPE_NAME)
%typemap(in) TYPE *NAME {
  int size = Get_List_Size($input);
  struct TYPE *prev = NULL;

  if (size == -1)
    {
    PyErr_SetString(PyExc_TypeError, "not a list");
    SWIG_fail;
    }

  $1 = NULL;

  for (int i = 0; i < size; i++)
    {
    struct TYPE *ptr = NULL;
    PyObject *item = PyList_GetItem($input, i);

    if (!SWIG_IsOK(SWIG_ConvertPtr(item, (void **)&ptr, SWIGTYPE_NAME, 0)))
      {
      PyErr_Format(PyExc_TypeError, "list item %d has wrong type", i);
      SWIG_fail;
      }

    /* the list's order makes the C linked list */
    if (prev == NULL)
      $1 = ptr;
    else
      prev->next = ptr;

    ptr->next = NULL;
    prev = ptr;
    }
}
%enddef

/* By parameter name, as the headers name them: not `self` of the attrl methods. */
LIST_TO_C(attrl, ATTRL, SWIGTYPE_p_attrl)
LIST_TO_C(attropl, ATTROPL, SWIGTYPE_p_attropl)
LIST_TO_C(batch_status, BATCH_STATUS, SWIGTYPE_p_batch_status)

/* ---------------------------------------------------------------- C lists -> Python */

%define LIST_TO_PYTHON(TYPE, SWIGTYPE_NAME)
%typemap(out) TYPE * {
  Py_ssize_t len = 0;
  struct TYPE *ptr;

  for (ptr = $1; ptr != NULL; ptr = ptr->next)
    len++;

  $result = PyList_New(len);

  ptr = $1;

  for (Py_ssize_t i = 0; i < len; i++, ptr = ptr->next)
    PyList_SetItem($result, i, SWIG_NewPointerObj((void *)ptr, SWIGTYPE_NAME, 0));
}
%enddef

LIST_TO_PYTHON(attrl, SWIGTYPE_p_attrl)
LIST_TO_PYTHON(attropl, SWIGTYPE_p_attropl)
LIST_TO_PYTHON(batch_status, SWIGTYPE_p_batch_status)

%typemap(out) char ** {
  Py_ssize_t len = 0;

  if ($1 != NULL)
    while ($1[len] != NULL)
      len++;

  $result = PyList_New(len);

  for (Py_ssize_t i = 0; i < len; i++)
    PyList_SetItem($result, i, PyUnicode_FromString($1[i]));
}

/* ---------------------------------------------------------------- the structures */

%include "carrays.i"
%array_class(struct attrl, attrlArray);

%nodefaultctor attrl;
%nodefaultctor attropl;
%nodefaultctor batch_status;

%extend attrl {
  char *__str__() {
    static char temp[4 * 255];
    snprintf(temp, sizeof(temp), "(%s,%s,%s)", $self->name, $self->resource, $self->value);
    return &temp[0];
  }
  ~attrl() {
    /* libtorque's memory, or new_attrl's block: never freed element by element */
  }
}

%extend attropl {
  char *__str__() {
    static char temp[4 * 255];
    snprintf(temp, sizeof(temp), "(%s,%s,%s)", $self->name, $self->resource, $self->value);
    return &temp[0];
  }
  ~attropl() {
  }
}

struct attrl *new_attrl(int number);
struct attropl *new_attropl(int number);
struct batch_status *new_batch_status(void);
int get_error(void);

/* Not in Torque 6.1's libtorque (its pbs_submit_hash_ext takes other types). */
%ignore pbs_submit_hash;

%include "pbs_ifl.h"
%include "pbs_error.h"
%include "rm.h"
%include "log.h"

%pythoncode %{

# Default linux resources to get from the mom
default_linux_res = [
    "availmem",     # available memory size in KB
    "ideal_load",   # static ideal_load value
    "loadave",      # the current load average
    "max_load",     # static max_load value
    "ncpus",        # number of cpus
    "physmem",      # physical memory size in KB
    "resi",         # resident memory size for a pid or session in KB
    "totmem",       # total memory size in KB
    "walltime",     # wall clock time for a pid
]

# Default irix6 resources to get from the mom
default_irix6_res = [
    "availmem", "loadave", "ncpus", "physmem", "resi", "walltime", "quota",
]

default_mom_res = [
    "arch",         # the architecture of the machine
    "uname",        # the architecture of the machine
    "cput",         # cpu time for a pid or session
    "idletime",     # seconds of idle time
    "mem",          # memory size for a pid or session in KB
    "sessions",     # list of sessions in the system
    "pids",         # list of pids in a session
    "nsessions",    # number of sessions in the system
    "nusers",       # number of users in the system
    "size",         # size of a file or filesystem
    "host",         # Name of host on which job should be run
    "nodes",        # Number and/or type of nodes to be reserved for exclusive use by the job
    "other",        # Allows a user to specify site specific information
    "software",     # Allows a user to specify software required by the job
]


def check_resp(dict, str):
    """Check the mom's answer: None when we may not ask, '?' for an unknown keyword."""
    if not str:
        return
    # Value can contain the '=' char
    l = str.split('=')
    key = l[0].strip()
    if len(l) > 2:
        val = '='.join(l[1:]).strip()
    else:
        val = l[1].strip()
    if not val[0] == '?':
        dict[key] = val


def use_default_keywords(id, d):
    """Get the default values from the mom daemon."""
    for res in default_mom_res:
        addreq(id, res)
        resp = getreq(id)
        check_resp(d, resp)
    if not d:
        return
    if d['arch'] == 'linux':
        for res in default_linux_res:
            addreq(id, res)
            resp = getreq(id)
            check_resp(d, resp)


def use_user_keywords(id, d, l):
    for res in l:
        if isinstance(res, str):
            addreq(id, res)
            resp = getreq(id)
            check_resp(d, resp)
        else:
            raise TypeError('Expected a string got %s :%s' % (type(res), res))


def get_mom_values(id, list=None):
    """Ask the mom (a connection from openrm) for the default keywords and the
    arch-dependent ones (linux, irix6), or for the keywords in list."""
    d = {}
    if not list:
        use_default_keywords(id, d)
    else:
        use_user_keywords(id, d, list)
    return d


version_info = (4, 4, 1)
version = 'SARA pbs_python version 4.4.1'


def error():
    """(pbs_errno, its text)."""
    e = get_error()
    text = pbse_to_txt(e) if e else 'no error'
    return (e, text if text else "Could not find a text for this error, uhhh")
%}
