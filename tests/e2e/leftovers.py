"""What of a job is still on the nodes of a test cluster: the one check every real
cluster's tests run after a job ends ("nothing left on any node")."""

from __future__ import annotations

import os
from collections.abc import Mapping

from vtorque import markers
from vtorque.journal import JobPaths
from vtorque.vm.host import Host


def on_nodes(job_id: str, configs: Mapping[str, object]) -> list[str]:
    """The job's guests (by their libvirt tag, on the one libvirtd), and on each node
    (name -> its Config) its job, owner's, ramdisk and lock paths, its epilogue mark and
    the virtual functions assigned to it."""
    from vtorque.ibverbs import pool
    found = []
    with Host("qemu:///system") as host:       # the real one, even while a test breaks a config
        found += [d.name for d in host.tagged_domains(job_id)]
    for node, cfg in configs.items():
        paths = JobPaths.for_job(job_id, cfg.state_dir, cfg.ramdisk_dir)
        found += [f"{node}:{p}" for p in (paths.job_dir, paths.user_dir, paths.lock,
                                          paths.ramdisk_dir) if os.path.lexists(p)]
        if markers.marked(cfg, job_id):
            found.append(f"{node}: the job's epilogue mark")
        found += [f"{node}: function {a.pci}" for a in pool.assignments(cfg)
                  if a.job_id == job_id]
    return found
