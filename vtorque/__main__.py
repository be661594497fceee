"""`python -m vtorque ...`: the `vtorque` command (vtorque.admin.cli)."""

import sys

from vtorque.admin.cli import main

sys.exit(main())
