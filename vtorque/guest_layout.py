"""Where vtorque puts a job's files inside its guests: the same paths in every Linux
image, for the seed that writes them, the prologue that names them in the job's
environment and the job shell that points the job at them. A leaf module."""

DIR = "/etc/vtorque"
NODEFILE = f"{DIR}/nodefile"                  # PBS_NODEFILE of the whole job
HOSTFILE = f"{DIR}/hostfile"                  # Open MPI hostfile of the whole job
KNOWN_HOSTS = f"{DIR}/known_hosts"            # every guest's pinned host key
USER_KEY = f"{DIR}/user_key"                  # the job's private key, owned by the owner
AUTHORIZED_KEYS = f"{DIR}/authorized_keys"    # one file per user (sshd AuthorizedKeysFile)
SSH_CLIENT_CONFIG = "/etc/ssh/ssh_config.d/00-vtorque.conf"
SSHD_CONFIG = "/etc/ssh/sshd_config.d/vtorque.conf"
