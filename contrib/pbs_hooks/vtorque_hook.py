# vtorque hook for OpenPBS / PBS Professional: one body for the events execjob_begin,
# execjob_prologue, execjob_launch, execjob_epilogue, execjob_end and execjob_abort.
#
# contrib/pbs_hooks/install.sh fills in the constants below and imports the result with
# qmgr; the server copies it to every MoM, which runs it as root (hook user pbsadmin)
# inside pbs_mom's embedded Python with the `pbs` module. The hook stays a thin shim: it
# reads the event, runs
#     VTORQUE_PYTHON -E -s -m vtorque.hooks --config VTORQUE_CONFIG \
#         openpbs <event> <job id> <user> <ms|sister> <this MoM's node name>
# as a subprocess (an argv list, never a shell; a minimal fixed environment; its own
# process group, killed on a timeout kept below the hook's alarm) and maps the exit
# status onto accept/reject. vtorque re-reads the job from the server and decides.
#
#   begin     every MoM: vtorque brings up this node's guests and reports through the
#             hand-off; this node at fault (status + OFFLINE): its vnodes go offline;
#             always accepts (the primary's prologue decides).
#   prologue  the primary MoM (sisters accept): the job's comment and log line from
#             vtorque's `vtorque-note:` line on stdout (the image
#             the job runs on, or why it did not start), then:
#             0 accept; 1 (the job's request is at fault) job.delete() + reject: the job
#             is deleted, not rerun; 2 (this node is at fault) job.rerun() + reject: PBS
#             requeues the job (a rejecting prologue reruns by default; the delete request
#             turns that into a delete: openpbs src/resmom/start_exec.c, errcode
#             PBSE_HOOK_REJECT_DELETEJOB; test_execjob_prolo_reject_del_job in
#             test/tests/functional/pbs_mom_hooks_test.py).
#   launch    the primary MoM, first task of a VM job: the job's program becomes the job
#             shell vtorque names, with the job script as its argument; other jobs and
#             tasks are left alone.
#   epilogue  nothing.
#   end/abort teardown on this MoM; a failure offlines this MoM's vnodes (vnode_list) and
#             rejects.
# Non-VM jobs (no VTORQUE_VM in the event's Variable_List) skip the subprocess in begin,
# prologue and launch; the event's values are only ever used to skip, never to act.
#
# Keep this file ASCII (qmgr imports it with the 7-bit "default" encoding) and valid
# Python 2.7 and 3 (PBS Pro 18/19 embed Python 2.7, OpenPBS 20 and later Python 3).

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pbs

# --- filled in by contrib/pbs_hooks/install.sh: keep each on one line, NAME = value ----
VTORQUE_PYTHON = "/opt/vtorque/.venv/bin/python"
VTORQUE_CONFIG = "/etc/vtorque/vtorque.yaml"
HOOK_ALARM = 540
# ---------------------------------------------------------------------------------------

# Seconds left for the hook itself after vtorque's time is up (start-up, reading output,
# rejecting): the subprocess always ends before PBS's alarm would fire.
MARGIN = max(1, min(30, HOOK_ALARM // 5))
TIMEOUTS = {
    "begin": HOOK_ALARM - MARGIN,                       # this node's provisioning
    "prologue": HOOK_ALARM - MARGIN,                    # waiting for every node
    "launch": min(60, HOOK_ALARM - MARGIN),             # qstat + a few checks
    "end": min(180, HOOK_ALARM - MARGIN),               # teardown (timeouts.teardown 60)
    "abort": min(180, HOOK_ALARM - MARGIN),
}
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
VM_VARIABLE = "VTORQUE_VM"
OUTPUT_MAX = 65536
# vtorque's exit status carries this bit when this node is at fault and must go offline
# (through the event's vnode list: no server privileges needed).
OFFLINE = 8
MESSAGE_MAX = 400
NOTE_PREFIX = "vtorque-note: "         # vtorque's line for the job's comment (stdout)
EVENTS = (("EXECJOB_BEGIN", "begin"), ("EXECJOB_PROLOGUE", "prologue"),
          ("EXECJOB_LAUNCH", "launch"),
          ("EXECJOB_EPILOGUE", "epilogue"), ("EXECJOB_END", "end"),
          ("EXECJOB_ABORT", "abort"))            # execjob_abort: PBS Pro 19.1 and later

_JOB_ID = re.compile(r"^[0-9][A-Za-z0-9._\[\]@+-]{0,254}$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_PATH = re.compile(r"^/[A-Za-z0-9._/+-]{1,4095}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_clock = getattr(time, "monotonic", time.time)


def _log(level, message):
    try:
        pbs.logmsg(level, "vtorque: " + message)
    except Exception:
        pass


def _joblog(job_id, message):
    try:
        pbs.logjobmsg(job_id, message)
    except Exception:
        pass


def _event_kind(etype):
    for name, kind in EVENTS:
        const = getattr(pbs, name, None)
        if const is not None and etype == const:
            return kind
    return None


def _owner(job):
    """The job's user: euser, else the user part of Job_Owner (user@host)."""
    for value in (getattr(job, "euser", None), getattr(job, "Job_Owner", None)):
        if value:
            return str(value).split("@", 1)[0].strip()
    return ""


def _maybe_vm_job(job, env=None):
    """False only when the event shows for sure the job asked for no VMs."""
    try:
        variables = job.Variable_List
        if variables is None:
            return False
        try:
            if variables[VM_VARIABLE]:
                return True
        except KeyError:
            pass
        if env is not None:
            try:
                return bool(env[VM_VARIABLE])
            except KeyError:
                return False
        return False
    except Exception:
        return True            # cannot tell: ask vtorque, which asks the server


def _clean(text):
    text = _CONTROL.sub(" ", text).strip()
    if len(text) > MESSAGE_MAX:
        text = text[:MESSAGE_MAX - 3].rstrip() + "..."
    return text


def _read(handle):
    handle.seek(0)
    data = handle.read(OUTPUT_MAX)
    if not isinstance(data, str):
        data = data.decode("utf-8", "replace")
    return data


def _run(argv, timeout):
    """Run argv (no shell) in its own session; return (status, stdout, stderr, timed_out).
    status None: it could not be started (stderr says why) or was killed on the timeout."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    devnull = open(os.devnull, "rb")
    kwargs = {}
    if sys.version_info >= (3, 2):
        kwargs["start_new_session"] = True
    else:
        kwargs["preexec_fn"] = os.setsid
    try:
        try:
            child = subprocess.Popen(argv, stdin=devnull, stdout=out, stderr=err,
                                     env=dict(ENV), cwd="/", close_fds=True, **kwargs)
        except OSError as exc:
            return None, "", "cannot execute %s: %s" % (argv[0], exc.strerror), False
        deadline = _clock() + timeout
        timed_out = False
        while child.poll() is None:
            if _clock() >= deadline:
                timed_out = True
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except OSError:
                    pass
                child.wait()
                break
            time.sleep(0.05)
        status = None if timed_out else child.returncode
        return status, _read(out), _read(err), timed_out
    finally:
        devnull.close()
        out.close()
        err.close()


def _local_node():
    """This MoM's node name (several MoMs may share a host); '' when PBS cannot say."""
    try:
        name = str(pbs.get_local_nodename() or "")
    except Exception:
        return ""
    return name if _NODE.match(name) else ""


def _vtorque(kind, job_id, user, role):
    node = _local_node()
    config = VTORQUE_CONFIG
    if "{node}" in config:                  # each MoM's own config (several on one host)
        if not node:
            return None, "", ("vtorque: the config path %s names the node, but PBS gives "
                              "no local node name" % config), False
        config = config.replace("{node}", node)
    argv = [VTORQUE_PYTHON, "-E", "-s", "-m", "vtorque.hooks", "--config", config,
            "openpbs", kind, job_id, user, role]
    if node:
        argv.append(node)
    timeout = TIMEOUTS[kind]
    started = _clock()
    status, out, err, timed_out = _run(argv, timeout)
    _log(pbs.LOG_DEBUG, "%s %s (%s, %s): status %s after %.1f s"
         % (kind, job_id, user, role, status, _clock() - started))
    if timed_out:
        message = ("vtorque %s hook for job %s did not finish within %d s and was killed "
                   "(hook alarm %d s)" % (kind, job_id, timeout, HOOK_ALARM))
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        message = lines[-1] if lines else ""
        if not message and status:
            message = "vtorque %s hook for job %s failed with exit status %s" % (
                kind, job_id, status)
    return status, out, _clean(message), timed_out


def _offline_here(event, reason):
    """Take this MoM's vnodes offline through the event (needs no server privileges)."""
    if not reason.startswith("vtorque"):
        reason = "vtorque: " + reason
    comment = _clean(reason)[:200]
    try:
        local = pbs.get_local_nodename()
        vnodes = event.vnode_list
        names = [n for n in vnodes.keys() if n == local or str(n).startswith(local + "[")]
        if not names:
            names = [local]
        for name in names:
            vnodes[name].state = pbs.ND_OFFLINE
            vnodes[name].comment = comment
        _log(pbs.LOG_ERROR, "took vnode(s) %s offline: %s" % (", ".join(names), reason))
        return True
    except Exception as exc:
        _log(pbs.LOG_ERROR, "could not take this node offline (%r): %s" % (exc, reason))
        return False


def _accept(event):
    """Accept; PBS ends the hook here (SystemExit), callers return right after anyway."""
    event.accept()


def _reject(event, message):
    event.reject(message)


def _delete_and_reject(event, job_id, message):
    """The job's request is at fault: delete the job instead of the default rerun."""
    _joblog(job_id, message)
    try:
        event.job.delete()
    except Exception as exc:
        _log(pbs.LOG_ERROR, "job.delete() failed for %s: %r" % (job_id, exc))
    _reject(event, message)


def _rerun_and_reject(event, job_id, message, hold=False):
    """This node is at fault: requeue the job (held for an admin with hold=True)."""
    _joblog(job_id, message)
    try:
        if hold:
            event.job.Hold_Types = pbs.hold_types("s")
        event.job.rerun()
    except Exception as exc:
        _log(pbs.LOG_ERROR, "job.rerun() failed for %s: %r" % (job_id, exc))
    _reject(event, message)


def _is_first_task(event):
    """The job's own program (task 1), not a task spawned later through TM (pbsdsh,
    mpiexec): PBS sets PBS_TASKNUM to 1 (decimal) for the first and to the hex task id
    (40000001, ...) for spawned tasks."""
    try:
        value = str(event.env["PBS_TASKNUM"]).strip()
        return int(value, 16) == 1
    except Exception:
        return False


def _job_script(job_id):
    """The job script pbs_mom keeps for the job: PBS_HOME/mom_priv/jobs/<job id>.SC."""
    home = None
    try:
        home = pbs.pbs_conf["PBS_HOME"]
    except Exception:
        try:
            home = pbs.get_pbs_conf()["PBS_HOME"]
        except Exception:
            home = os.environ.get("PBS_HOME")
    if not home:
        return None
    path = os.path.join(str(home), "mom_priv", "jobs", job_id + ".SC")
    return path if os.path.isfile(path) else None


def _take_offline_bit(event, status, message):
    """vtorque says "this node is at fault" with OFFLINE added to 0, 1 or 2: take this
    MoM's vnodes offline and return the rest. Any other status is returned as it is."""
    if status in (OFFLINE, OFFLINE + 1, OFFLINE + 2):
        _offline_here(event, message)
        return status - OFFLINE
    return status


def _begin(event, job, job_id, user, role):
    """Every MoM at once: vtorque starts this node's guests and reports how it went; a
    node at fault goes offline. The job's fate is decided in the primary's prologue."""
    if not _maybe_vm_job(job):
        return _accept(event)
    status, _, message, timed_out = _vtorque("begin", job_id, user, role)
    status = _take_offline_bit(event, status, message)
    if status == 0:
        return _accept(event)
    if status is None and not timed_out:
        _offline_here(event, message)   # vtorque cannot even start: no VM jobs here
    return _rerun_and_reject(event, job_id, message)


def _note_job(event, job_id, out):
    """The job's comment from vtorque's note line: the image a job runs on, or why it did
    not start (qstat -f shows it to the owner while the job waits or runs; a MoM's root
    cannot qalter the job). The server writes its own comment when the job ends, so the
    note also goes to the job's log (tracejob)."""
    for line in out.splitlines():
        if line.startswith(NOTE_PREFIX):
            note = _clean(line[len(NOTE_PREFIX):])
            _joblog(job_id, note)
            try:
                event.job.comment = note
            except Exception as exc:
                _log(pbs.LOG_ERROR, "cannot set the comment of %s: %r" % (job_id, exc))


def _prologue(event, job, job_id, user, role):
    if role != "ms" or not _maybe_vm_job(job):
        return _accept(event)           # sisters: their guests came up in execjob_begin
    status, out, message, timed_out = _vtorque("prologue", job_id, user, role)
    _note_job(event, job_id, out)
    status = _take_offline_bit(event, status, message)
    if status == 0:
        return _accept(event)
    if status == 1:
        return _delete_and_reject(event, job_id, message)
    if status is None and not timed_out:
        # vtorque cannot even start here: this node cannot run VM jobs.
        _offline_here(event, message)
    return _rerun_and_reject(event, job_id, message)


def _launch(event, job, job_id, user, role):
    if role != "ms" or not _is_first_task(event) or not _maybe_vm_job(job, event.env):
        return _accept(event)
    status, out, message, _ = _vtorque("launch", job_id, user, role)
    status = _take_offline_bit(event, status, message)
    if status == 1:
        return _delete_and_reject(event, job_id, message)
    if status != 0:
        return _rerun_and_reject(event, job_id, message)
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    if not lines:
        return _accept(event)       # the server says: not a VM job
    shell = lines[-1]
    if not _PATH.match(shell) or ".." in shell.split("/"):
        return _rerun_and_reject(event, job_id, "vtorque named an unusable job shell %r; "
                                 "job held" % shell, hold=True)
    script = _job_script(job_id)
    if script is None:
        return _rerun_and_reject(event, job_id, "vtorque: the job script of %s is not in "
                                 "PBS_HOME/mom_priv/jobs on this node; job held" % job_id,
                                 hold=True)
    event.progname = shell
    event.argv = [shell, script]
    _log(pbs.LOG_DEBUG, "job %s runs in its guests: %s %s" % (job_id, shell, script))
    return _accept(event)


def _teardown(event, kind, job_id, user, role):
    status, _, message, timed_out = _vtorque(kind, job_id, user, role)
    if status == 0:
        return _accept(event)
    _joblog(job_id, message)
    if status is not None or timed_out:
        # Teardown ran and could not finish: guests or files may be left on this node.
        _offline_here(event, message)
    else:
        _log(pbs.LOG_ERROR, message)    # vtorque could not start: nothing was done here
    return _reject(event, message)


def _dispatch(event, kind):
    job = event.job
    job_id = str(job.id)
    user = _owner(job)
    try:
        role = "ms" if job.in_ms_mom() else "sister"
    except Exception:
        role = "sister"
    if not _JOB_ID.match(job_id) or ".." in job_id:
        _log(pbs.LOG_ERROR, "unusable job id %r" % job_id)
        return _reject(event, "vtorque: unusable job id %r" % job_id)
    if not _USER.match(user):
        if kind in ("end", "abort"):
            user = "unknown"            # teardown does not need the owner
        elif not _maybe_vm_job(job, event.env if kind == "launch" else None):
            return _accept(event)
        else:
            return _rerun_and_reject(event, job_id, "vtorque: job %s has an unusable "
                                     "owner %r" % (job_id, user))
    try:
        if kind == "begin":
            return _begin(event, job, job_id, user, role)
        if kind == "prologue":
            return _prologue(event, job, job_id, user, role)
        if kind == "launch":
            return _launch(event, job, job_id, user, role)
        return _teardown(event, kind, job_id, user, role)
    except Exception as exc:    # SystemExit (accept/reject) is not an Exception
        message = "vtorque %s hook for job %s: internal error %r" % (kind, job_id, exc)
        _log(pbs.LOG_ERROR, message)
        if kind in ("end", "abort"):
            _offline_here(event, message)
            return _reject(event, message)
        return _rerun_and_reject(event, job_id, message)


def main():
    event = pbs.event()
    kind = _event_kind(event.type)
    if kind is None or kind == "epilogue":
        return _accept(event)
    return _dispatch(event, kind)


main()
