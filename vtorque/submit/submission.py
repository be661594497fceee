"""What vsub submits, whatever the batch system: the footprint each node must hold and
the submission (the submit command's arguments and the script it gets)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Footprint:
    """What one allocated node must offer: the guests plus the host's reserve."""
    cores: int
    memory_mib: int
    vcpus: int = 0
    vms_per_node: int = 0
    reserve_cores: int = 0


def footprint(vcpus: int, ram_mib: int, vms_per_node: int, reserve_cores: int,
              reserve_mib: int, guests_mib: int | None = None) -> Footprint:
    """`guests_mib`: what the node's guests take from the job (their RAM plus QEMU's
    overhead, as the nodes count it: request.guests_memory_mib); default their RAM."""
    if guests_mib is None:
        guests_mib = ram_mib * vms_per_node
    return Footprint(cores=vcpus * vms_per_node + reserve_cores,
                     memory_mib=guests_mib + reserve_mib,
                     vcpus=vcpus, vms_per_node=vms_per_node, reserve_cores=reserve_cores)


@dataclass(frozen=True)
class Submission:
    """What to run: `args` then the script (a file or stdin)."""
    command: str                      # the batch command's name: qsub, sbatch
    args: tuple[str, ...]             # options, without the script
    script_path: str | None = None    # the user's script file, passed unchanged
    script_copy: str | None = None    # script text to pass as a file named like the user's
    stdin: str | None = None          # script text to pass on stdin
    notes: tuple[str, ...] = ()       # one-line remarks for stderr
    copy_name: str | None = None      # file name for script_copy (default: the script's)
    wait: bool = False                # the command waits for the job (sbatch --wait)

    def argv(self, command_path: str, copy_path: str | None = None) -> list[str]:
        """The full argv; copy_path is where the caller wrote script_copy."""
        tail: list[str] = []
        if self.script_copy is not None:
            if copy_path is None:
                raise ValueError("script_copy needs a copy_path")
            tail = [copy_path]
        elif self.script_path is not None:
            tail = [self.script_path]
        return [command_path, *self.args, *tail]
