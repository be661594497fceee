"""What crosses a job's nodes: the hand-off of each node's status (handoff.py) and the
job-wide pieces they share, made by the first node and released by the last
(jobwide.py)."""
