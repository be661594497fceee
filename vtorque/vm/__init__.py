"""Guests on one node: decide (spec), render (templates), apply (host, lifecycle).

Kept free of imports here: the epilogue of every job checks HUGEPAGE_LEDGER's existence."""

# Huge pages held for guests being started on this node, in config.state_dir
# (see hugepage_reservations.py).
HUGEPAGE_LEDGER = ".hugepage-reservations.json"
