"""qsub's option table as data: the option letters of Torque 6.1 (`GETOPT_ARGS` in
src/cmds/qsub_functions.c: "a:A:b:c:C:d:D:e:EfF:hi:Ij:J:k:K:l:L:m:M:nN:o:p:P:q:r:S:t:T:u:v:V
w:W:Xxz-:") joined with OpenPBS's (`-R o|e|oe` takes an argument, `-G` is a flag)."""

# Option letters that take an argument / that are flags (Torque 6.1 and OpenPBS together).
ARG_LETTERS = frozenset("aAbcCdDeFijJkKlLmMNopPqrRStTuvwW")
FLAG_LETTERS = frozenset("EfGhInVXxz")
VM_OPTION = "-vm"
PASS_THROUGH_LONG = ("--version", "--about")
DEFAULT_PREFIX = "#PBS"
NEUTRAL_MARK = "# vsub: "

TRUE_WORDS = ("true", "t", "yes", "y", "1")
BLANK = " \t\r\f\v"                    # C isspace() without the newline
