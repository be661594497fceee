"""`vsub --help`: the usage, then every -vm key with this site's default and limits."""

from __future__ import annotations


def print_help() -> int:
    """The usage, then every -vm key with this site's default and limits."""
    from vtorque import config as config_mod
    from vtorque.errors import VtorqueError
    from vtorque.request import KEY_HELP, VM_KEYS
    from vtorque.submit import registry
    site: dict[str, str] = {}
    try:
        config, problem = config_mod.load(config_mod.resolve_path()), None
        system = registry.for_config(config).system
    except VtorqueError as exc:
        config, problem, system = None, exc, registry.FALLBACK
    if system == "slurm":
        out = [registry.SUBMITTERS["slurm"].usage, "",
               "Submits a batch job whose script runs inside virtual machines that exist",
               "only for the life of the job. Every sbatch option is passed to sbatch",
               "(script arguments and heterogeneous jobs are not supported). -vm (or --vm)",
               "requests may be repeated and may also be given as '#VSUB -vm key=value'",
               "lines in the script's leading comment block, next to its #SBATCH lines; a",
               "key may be given only once. The request travels in the job's comment",
               "(vtorque:...; a comment of yours is kept after it). vsub raises --mincpus",
               "and --mem (or --mem-per-cpu) so that each node holds the guests plus the",
               "host's reserve, and prints exactly what sbatch prints.", "",
               "vsub --interactive [salloc options] [-vm ...]... [-- COMMAND] allocates",
               "with salloc instead: once every node's guests are up, a shell (or COMMAND)",
               "runs in guest rank 0 (vtorque ssh) for the life of the allocation.", ""]
    else:
        out = [registry.SUBMITTERS["torque"].usage, "",
               "Submits a batch job whose script runs inside virtual machines that exist",
               "only for the life of the job. Every qsub option is passed to qsub",
               "(not -I: an interactive shell would run outside the guests; log into a",
               "running job's guest rank 0 with `vtorque ssh JOB`). -vm requests may be",
               "repeated and may",
               "also be given as '#PBS -vm key=value' lines in the script's leading",
               "directive block; a key may be given only once. vsub raises -l nodes/ppn and",
               "-l mem so that each node holds the guests plus the host's reserve, and",
               "prints exactly what qsub prints.", ""]
    if config is None:
        out.append(f"VM keys (site values are unavailable: {problem}):")
    else:
        site = _site_values(config)
        out.append(f"VM keys (site defaults and limits from {config.path}):")
    for key in VM_KEYS:
        out.append(f"  {key:<14}{KEY_HELP[key]}")
        if key in site:
            out.append(f"  {'':<14}{site[key]}")
    if "reserve" in site:
        out += ["", site["reserve"]]
    print("\n".join(out))
    return 0


def _site_values(config) -> dict[str, str]:
    from vtorque.config import ARCHES, FS_TYPES
    from vtorque.units import format_hugepages, format_mib
    d, lim = config.defaults, config.limits

    def yes_no(value: bool) -> str:
        return "yes" if value else "no"

    images = "unavailable"
    try:
        from vtorque.images import Catalog
        images = ", ".join(Catalog(config.image_pool).names()) or "none"
    except Exception:  # noqa: BLE001  (help must print whatever happens to the pool)
        pass
    return {
        "img": f"default: {d.img or 'none'}; images: {images}",
        "distro": f"default: {d.distro or 'none'}",
        "arch": f"default: {d.arch}; one of {', '.join(ARCHES)}",
        "vcpus": f"default: {d.vcpus}; at most {lim.vcpus}",
        "ram": f"default: {format_mib(d.ram)}; from {format_mib(lim.min_ram)} to "
               f"{format_mib(lim.ram)}",
        "vms_per_node": f"default: {d.vms_per_node}; at most {lim.vms_per_node}",
        "vcpu_pinning": f"default: {yes_no(d.vcpu_pinning)}",
        "disk": f"default: {format_mib(d.disk) if d.disk else '0 (none)'}; at most "
                f"{format_mib(lim.disk)}",
        "vm_prologue": "default: none",
        "vm_epilogue": "default: none",
        "vrdma": f"default: {yes_no(d.vrdma)}",
        "fs_type": f"default: {d.fs_type}; one of {', '.join(FS_TYPES)}",
        "hugepages": f"default: {format_hugepages(d.hugepages)}; page sizes 2M, 1G",
        "reserve": f"Each node also keeps {config.host_reserve.cores} core(s) and "
                   f"{format_mib(config.host_reserve.memory)} of memory for the host "
                   "(host_reserve).",
    }
