"""Which RDMA a job's guests get on this node, and what Open MPI in them is told (pure).

SR-IOV passthrough when the node has an adapter with functions to give, Soft-RoCE
(rdma_rxe on the guests' virtio NIC) where the site allows it, a refusal otherwise. The
job environment names the transport, so users' scripts and Open MPI need no site
knowledge: on SR-IOV functions `mpirun` picks UCX (or the openib BTL) by itself.
"""

from __future__ import annotations

from vtorque.errors import RequestError
from vtorque.ibverbs import sysfs
from vtorque.ibverbs.guids import FULL_MEMBER

SRIOV = "sriov"
SOFT_ROCE = "soft-roce"
# The Soft-RoCE device the guests create on eth0 (the test guest's /init and the
# cloud-init commands below use this name).
RXE_DEVICE = "rxe0"
# Guest commands that set Soft-RoCE up on a cloud image (cloud-init runcmd), before the
# ready line. crc32_generic first: see reference/verified-here.md.
RXE_COMMANDS = (
    ["modprobe", "-a", "crc32_generic", "ib_uverbs", "rdma_ucm", "rdma_rxe"],
    ["rdma", "link", "add", RXE_DEVICE, "type", "rxe", "netdev", "eth0"],
)


def choose(vrdma: bool, hcas: list[sysfs.Hca], ibverbs) -> str | None:
    """The transport for this node's guests of a job, or None when none was asked.

    Raises RequestError (the job is refused, not requeued) when neither SR-IOV hardware
    nor the Soft-RoCE fallback is available here: running the job again would not help.
    A node whose adapters' functions are merely all taken still answers SRIOV: the
    assignment then fails with a ResourceError and the job is requeued.
    """
    if not vrdma:
        return None
    if ibverbs.sriov and sysfs.usable(hcas, ibverbs.devices):
        return SRIOV
    if ibverbs.soft_roce:
        return SOFT_ROCE
    if ibverbs.sriov and hcas:
        why = "its adapters have no active port with SR-IOV functions (" + \
            ", ".join(h.name for h in hcas) + ")"
    elif ibverbs.sriov:
        why = "it has no InfiniBand or RoCE adapter"
    else:
        why = "SR-IOV passthrough is off (ibverbs.sriov)"
    raise RequestError(f"vrdma=yes cannot be served on this node: {why}, and the Soft-RoCE "
                       "fallback is not allowed (ibverbs.soft_roce)", key="vrdma")


def job_environment(transport: str | None, mpi: str, pkey: int | None = None
                    ) -> tuple[tuple[str, str], ...]:
    """Variables every login in the job's guests gets, for `transport` and the site's
    choice of Open MPI path `mpi` (ucx or verbs) on SR-IOV functions."""
    if transport is None:
        return ()
    env = [("VTORQUE_RDMA", transport)]
    if transport == SOFT_ROCE:
        # Open MPI over rdma_rxe: libfabric's verbs provider (with ofi_rxm for reliable
        # messages) through the OFI MTL, the one RDMA path of Debian 12's Open MPI 4.1
        # that works on kernel 6.1's rxe (measured in guests). UCX's UD and RC endpoints
        # time out there, and the openib BTL has no rdmacm, which Ethernet ports need;
        # left to itself Open MPI would pick UCX and abort. rxm sizes its completion
        # queue as (rx + tx queue) x FI_UNIVERSE_SIZE, and rxe's hold at most 32767
        # entries: the default universe of 256 fails, 32 fits.
        return tuple(env + [("VTORQUE_RDMA_DEVICE", RXE_DEVICE),
                            ("OMPI_MCA_pml", "cm"), ("OMPI_MCA_mtl", "ofi"),
                            ("OMPI_MCA_mtl_ofi_provider_include", "verbs;ofi_rxm"),
                            ("OMPI_MCA_osc", "pt2pt"), ("OMPI_MCA_btl", "tcp,vader,self"),
                            ("FI_UNIVERSE_SIZE", "32")])
    if mpi == "ucx":
        env += [("OMPI_MCA_pml", "ucx"), ("OMPI_MCA_osc", "ucx"),
                # The openib BTL would probe the device too and warn; UCX owns it.
                ("OMPI_MCA_btl", "^openib")]
        if pkey is not None:
            env.append(("UCX_IB_PKEY", f"0x{FULL_MEMBER | pkey:04x}"))
    else:
        env += [("OMPI_MCA_pml", "ob1"), ("OMPI_MCA_btl", "openib,vader,self"),
                ("OMPI_MCA_btl_openib_allow_ib", "1")]
        if pkey is not None:
            env.append(("OMPI_MCA_btl_openib_pkey", f"0x{FULL_MEMBER | pkey:04x}"))
    return tuple(env)
