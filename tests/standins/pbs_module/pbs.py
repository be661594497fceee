"""STAND-IN for PBS's hook module `pbs` (not PBS): only what vtorque's hook uses.

pbs_mom runs hook scripts in its embedded Python with this module importable; here the
tests put this file first on the path (or into sys.modules) and set the event. Written
from the documented hook interface, sources:
- openpbs doc/man1/pbs_module.7B: pbs.event(), the event type constants (EXECJOB_*),
  pbs.logmsg(class, message) with LOG_DEBUG/LOG_WARNING/LOG_ERROR, pbs.logjobmsg(job id,
  message), pbs.get_local_nodename(), pbs.pbs_conf[] and pbs.get_pbs_conf(), pbs.progname,
  pbs.argv[], pbs.env[], pbs.vnode_list[], pbs.ND_OFFLINE, pbs.hold_types("s"),
  job.rerun(), job.delete(); "SystemExit: Raised when accepting or rejecting an action";
- openpbs test/tests/functional/pbs_mom_hooks_test.py and pbs_hook_execjob_abort.py:
  e.job.id, e.job.in_ms_mom(), e.job.Variable_List[...], e.job.Hold_Types, e.hook_name,
  vnode_list[<name>].state / .comment (applied even when the hook rejects);
- pbs_multiple_execjob_launch_hook.py: e.progname = "...", e.argv = [...], e.env.
Real constant values differ; hooks compare against the names only. Python 2.7 and 3.
"""

EXECJOB_BEGIN = 101
EXECJOB_PROLOGUE = 102
EXECJOB_EPILOGUE = 103
EXECJOB_END = 104
EXECJOB_PRETERM = 105
EXECJOB_LAUNCH = 106
EXECJOB_ATTACH = 107
EXECJOB_ABORT = 108
EXECHOST_PERIODIC = 201

LOG_DEBUG = 4
LOG_WARNING = 5
LOG_ERROR = 6

ND_FREE = "free"
ND_OFFLINE = "offline"

EVENT_NAMES = {
    "execjob_begin": EXECJOB_BEGIN, "execjob_prologue": EXECJOB_PROLOGUE,
    "execjob_epilogue": EXECJOB_EPILOGUE, "execjob_end": EXECJOB_END,
    "execjob_preterm": EXECJOB_PRETERM, "execjob_launch": EXECJOB_LAUNCH,
    "execjob_attach": EXECJOB_ATTACH, "execjob_abort": EXECJOB_ABORT,
}

pbs_conf = {"PBS_HOME": "/var/spool/pbs", "PBS_EXEC": "/opt/pbs"}
LOGS = []              # (log class, message) from logmsg
JOB_LOGS = []          # (job id, message) from logjobmsg
_state = {"event": None, "local_node": "node1"}


class Vnode(object):
    def __init__(self, name, state=ND_FREE, comment=None):
        self.name = name
        self.state = state
        self.comment = comment


class Job(object):
    def __init__(self, job_id, euser=None, owner=None, variables=None, ms=True):
        self.id = job_id
        self.euser = euser
        self.Job_Owner = owner
        self.Variable_List = dict(variables or {})
        self.Hold_Types = None
        self._ms = ms
        self.delete_requested = False
        self.rerun_requested = False

    def in_ms_mom(self):
        return self._ms

    def delete(self):
        self.delete_requested = True

    def rerun(self):
        self.rerun_requested = True


class Event(object):
    def __init__(self, etype, job, progname=None, argv=None, env=None, vnode_list=None,
                 hook_name="vtorque"):
        self.type = etype
        self.job = job
        self.progname = progname
        self.argv = list(argv or [])
        self.env = dict(env or {})
        self.vnode_list = dict(vnode_list or {})
        self.hook_name = hook_name
        self.hook_type = "site"
        self.requestor = "pbs_mom"
        self.accepted = None            # True: accept(); False: reject()
        self.reject_message = None

    def accept(self):
        self.accepted = True
        raise SystemExit(0)

    def reject(self, message=""):
        self.accepted = False
        self.reject_message = message
        raise SystemExit(1)


def event():
    return _state["event"]


def set_event(ev, local_node=None):
    """Test helper (not in PBS): the event the next hook run sees."""
    _state["event"] = ev
    if local_node is not None:
        _state["local_node"] = local_node


def logmsg(log_class, message):
    LOGS.append((log_class, str(message)))


def logjobmsg(job_id, message):
    JOB_LOGS.append((str(job_id), str(message)))


def get_local_nodename():
    return _state["local_node"]


def get_pbs_conf():
    return dict(pbs_conf)


def hold_types(text):
    return str(text)
