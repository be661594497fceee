"""The `vtorque` command for admins and users (cli.py), and what it runs that no batch
hook does: the reaper of jobs that no longer run (reaper.py)."""
