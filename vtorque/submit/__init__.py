"""Submitting VM jobs: the `vsub` command (vsub.py) and what it reads and writes.

    registry.py                     batch system -> submit command and submitter
    qsub_table.py, qsub_args.py     qsub's options and #PBS directives (Torque, OpenPBS)
    pbs_resources.py, pbs_submit.py -l raised for the guests; the qsub submission
    sbatch_table.py, sbatch_args.py sbatch's options and #SBATCH / #VSUB directives
    sbatch_resources.py, slurm_submit.py   --mincpus/--mem raised; the sbatch submission
    submission.py                   what is submitted, whatever the batch system
    common.py, help.py              reading the script, checking the request, running it
"""
