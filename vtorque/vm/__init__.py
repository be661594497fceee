"""Guests on one node: decide (spec), render (templates), apply (host, lifecycle)."""
