"""Commands in a running guest as the job owner, over the job's SSH trust, from inside
the test namespace (where the guests' addresses live)."""

from __future__ import annotations

import pwd
import subprocess

from tests.e2e.accounts import JOB_USER
from tests.e2e.conftest import NETNS


def in_guest(user_dir: str, guest: str, command: str,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `command` in `guest` (its host name) with the ssh_config of the job's user
    directory (written by write_user_files)."""
    account = pwd.getpwnam(JOB_USER)
    return subprocess.run(
        ["ip", "netns", "exec", NETNS, "setpriv", f"--reuid={account.pw_uid}",
         f"--regid={account.pw_gid}", "--init-groups", "--", "/usr/bin/ssh", "-F",
         f"{user_dir}/ssh_config", guest, command],
        capture_output=True, text=True, timeout=timeout)
