"""`python -m vtorque.hooks [--config PATH] SCHEDULER EVENT [ARGS...]`: what the shims in
contrib/ call. No argparse and no CLI imports on the path every job of the cluster takes."""

import os
import sys

from vtorque.hooks import main

# What the root side makes has the modes it asks for, whatever umask the batch system runs
# its hooks under (real Torque runs the mother superior's prologue under 077, which left
# the state directory closed to the QEMU of the job's owner).
os.umask(0o022)

argv = sys.argv[1:]
config = None
if len(argv) >= 2 and argv[0] == "--config":
    config, argv = argv[1], argv[2:]
if len(argv) < 2:
    print("usage: python -m vtorque.hooks [--config PATH] SCHEDULER EVENT [ARGS...]",
          file=sys.stderr)
    sys.exit(2)
sys.exit(main(argv[0], argv[1], argv[2:], config))
