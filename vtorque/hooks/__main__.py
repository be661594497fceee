"""`python -m vtorque.hooks [--config PATH] SCHEDULER EVENT [ARGS...]`: what the shims in
contrib/ call. No argparse and no CLI imports on the path every job of the cluster takes."""

import sys

from vtorque.hooks import main

argv = sys.argv[1:]
config = None
if len(argv) >= 2 and argv[0] == "--config":
    config, argv = argv[1], argv[2:]
if len(argv) < 2:
    print("usage: python -m vtorque.hooks [--config PATH] SCHEDULER EVENT [ARGS...]",
          file=sys.stderr)
    sys.exit(2)
sys.exit(main(argv[0], argv[1], argv[2:], config))
