"""`python -m vtorque.jobshell [--config PATH] [SCRIPT]`: what the installed job shell
(contrib/torque_hooks/job-shell.in) runs, as the job's owner."""

import sys

from vtorque.jobshell import main

argv = sys.argv[1:]
config = None
if len(argv) >= 2 and argv[0] == "--config":
    config, argv = argv[1], argv[2:]
sys.exit(main(argv, config))
