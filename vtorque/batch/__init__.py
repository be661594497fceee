"""batch layer (see ARCHITECTURE.md): one adapter per scheduler behind base.BatchSystem.

- base.py     JobContext, BatchSystem, register/get/detect, shared helpers
- torque.py   Torque 4/5/6 (qstat -f -x XML, pbs_python when present, pbsnodes -o -N)
- openpbs.py  OpenPBS / PBS Professional (qstat -f -F json -x, pbsnodes -o -C)
- slurm.py    Slurm (added separately; get('auto') picks it up once it exists)
"""
