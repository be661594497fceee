"""Slurm: read a job back from slurmctld, take a node out of service, act on a job.

The job comes from `scontrol show job -dd ID` (Slurm 22.05, Debian 12, has no `--json`;
the text is parsed, and output that is JSON, as newer Slurm prints with `--json` or a site
wrapper might, is parsed as JSON). Parsing is pure (parse_show_job, expand_hostlist,
request_from_comment in slurm_record.py and hostlist.py) so the tests cover it without
subprocesses; tests/data/slurm-22.05-* were captured from Slurm 22.05.8.

The VM request travels in the job's Comment
-----------------------------------------------
`scontrol show job` does not show a job's environment, so the request cannot travel as a
job variable as it does with Torque. vsub puts it into the comment:

    --comment='vtorque:img=deb12;vcpus=2'            (request.encode_pairs after the marker)
    --comment='vtorque:img=deb12;vcpus=2 my own words' (a comment of the user's kept after
                                                        one space)

The root side reads the text after `vtorque:` up to the first white space and ignores the
rest. Why the comment: every Slurm version prints it (`Comment=`), sbatch takes it as is,
it touches neither scheduling nor accounting, and slurmd hands it to the Prolog as
SLURM_JOB_COMMENT (which makes a fast path possible). The owner can change it while the
job waits (`scontrol update jobid=N comment=...`), exactly as qalter can change Torque's
VTORQUE_VM: every node re-validates it against the site's config and image catalog, so an
altered request is as safe as a submitted one. `--extra` exists only from 23.02 on (in
22.05 `--extra` is an abbreviation of `--extra-node-info`), and `--constraint` or
`--licenses` would steer the scheduler and need site configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from vtorque import jobid, proc
from vtorque.batch.base import (
    QUERY_ENV,
    BatchSystem,
    JobContext,
    check_node_name,
    node_note,
    note,
)
from vtorque.batch.registry import register
from vtorque.batch.slurm_record import SlurmJob, parse_show_job
from vtorque.text import one_line

NOTE_MAX = 400                      # AdminComment we write (a job note, not a node note)


def job_note(reason: str, previous: str | None = None) -> str:
    """An AdminComment: one line, prefixed, bounded; an admin's earlier note is kept."""
    text = note(reason, NOTE_MAX)
    if previous and not previous.startswith("vtorque:"):
        text = one_line(f"{text} | earlier: {previous}", NOTE_MAX)
    return text


@register
class Slurm(BatchSystem):
    """Slurm: scontrol show job to read jobs; scontrol update / requeuehold and scancel to
    act. Commands come from bin_dir; SLURM_CONF (set by slurmd for Prolog and Epilog) is
    passed on so a non-default slurm.conf is found."""

    name = "slurm"
    commands = ("sbatch", "scontrol")
    # src/scontrol/info_job.c: 'Invalid job id specified' (stderr), 'Job N not found'.
    unknown_job_patterns = (r"invalid job id specified", r"job \S+ not found")

    def __init__(self, bin_dir: str, timeout: float = 30.0,
                 environ: Mapping[str, str] | None = None):
        super().__init__(bin_dir, timeout)
        env = os.environ if environ is None else environ
        conf = env.get("SLURM_CONF", "")
        self.extra_env = ({"SLURM_CONF": conf}
                          if conf.startswith("/") and "\n" not in conf else {})

    def query_env(self) -> dict[str, str]:
        return proc.clean_env({**QUERY_ENV, **self.extra_env})

    # -- reading ------------------------------------------------------------------------------
    def job(self, job_id: str) -> JobContext:
        return self.read_job(job_id).ctx

    def read_job(self, job_id: str) -> SlurmJob:
        jobid.check(job_id, self.name)
        text = self.query([self.command("scontrol"), "show", "job", "-dd", job_id], job_id)
        return parse_show_job(text, job_id)

    # -- acting ---------------------------------------------------------------------------------
    def offline_node(self, node: str, reason: str) -> None:
        """Drain the node (running jobs finish, no new ones start): `sinfo -R` shows the
        reason, and Slurm keeps it when a failed Prolog drains the node again."""
        check_node_name(node, self.name)
        self.run([self.command("scontrol"), "update", f"nodename={node}", "state=drain",
                  f"reason={node_note(reason)}"])

    def note_job(self, job_id: str, reason: str, previous: str | None = None) -> bool:
        """Put `reason` where `scontrol show job` (and sacct) show it: AdminComment, which
        only an administrator (root here) can set, so the user cannot fake or erase it."""
        jobid.check(job_id, self.name)
        self.run([self.command("scontrol"), "update", f"jobid={job_id}",
                  f"admincomment={job_note(reason, previous)}"])
        return True

    def cancel_job(self, job_id: str) -> None:
        """End the job (CANCELLED); -Q: a job that already ended is no error."""
        jobid.check(job_id, self.name)
        self.run([self.command("scancel"), "-Q", job_id])

    def requeue_hold(self, job_id: str) -> None:
        """Back to the queue, held (an admin releases it): `requeuehold Incomplete`, so a
        job that has ended already (cancelled by another node) is left as it is. Fails
        (CommandError) for a job submitted with --no-requeue."""
        jobid.check(job_id, self.name)
        self.run([self.command("scontrol"), "requeuehold", "Incomplete", job_id])
