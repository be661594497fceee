"""Every path of the config that the root side relies on, checked as the hooks check it:
owned by root, not writable by group or others, no symlink a user could change on the
way (files.path_problem). `vtorque config check` prints these problems; the hooks refuse
the same paths when they use them."""

from __future__ import annotations

import os

from vtorque.files import DIR, FILE, path_problem

# Commands of the batch systems that root runs, when they are in bin_dir.
BATCH_COMMANDS = ("qsub", "qstat", "qmgr", "pbsnodes", "sbatch", "scontrol", "scancel")


def path_problems(config) -> list[str]:
    """One line per path the root side would refuse or must not trust, naming its key.
    Directories root makes on first use (state, ramdisk, shared state, log) may be
    missing, as long as what would hold them is trusted."""
    checks: list[tuple[str, str, str, dict]] = [
        ("config file", config.path, FILE, {}),
        ("secret_file", config.secret_file, FILE, {"private": True}),
        ("image_pool", config.image_pool, DIR, {}),
        ("state_dir", config.state_dir, DIR, {"missing_ok": True}),
        ("state_dir", os.path.join(config.state_dir, ".locks"), DIR, {"missing_ok": True}),
        ("state_dir", os.path.join(config.state_dir, ".checksums"), DIR,
         {"missing_ok": True}),
        ("ramdisk_dir", config.ramdisk_dir, DIR, {"missing_ok": True}),
        ("log_file", os.path.dirname(config.log_file), DIR, {"missing_ok": True}),
        ("log_file", config.log_file, FILE,
         {"missing_ok": True, "single_link": True, "follow_last": False}),
        ("batch.shared_state_dir", config.batch.shared_state_dir, DIR, {"missing_ok": True}),
        ("batch.bin_dir", config.batch.bin_dir, DIR, {}),
        ("batch.job_shell", config.batch.job_shell, FILE, {"missing_ok": True}),
        ("ibverbs.sysfs_root", config.ibverbs.sysfs_root, DIR, {}),
    ]
    if config.ibverbs.partitions_dir:
        checks.append(("ibverbs.partitions_dir", config.ibverbs.partitions_dir, DIR,
                       {"missing_ok": True}))
    for name in BATCH_COMMANDS:
        path = os.path.join(config.batch.bin_dir, name)
        if os.path.lexists(path):
            checks.append(("batch.bin_dir", path, FILE, {}))
    problems: list[str] = []
    refused: list[str] = []
    for key, path, kind, options in checks:
        if any(path.startswith(bad + "/") for bad in refused):
            continue                    # what holds it is reported already
        problem = path_problem(path, kind, **options)
        if problem:
            refused.append(path)
            problems.append(f"{key}: {problem}")
    return problems
