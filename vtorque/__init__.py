"""vtorque: HPC batch jobs inside virtual machines that live exactly as long as the job."""

__version__ = "0.1.0"
