"""The only module that talks to libvirt. It turns libvirtError into vtorque errors and
treats "already gone" as success when destroying (as nova's host.py does)."""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt
import libvirt_qemu

from vtorque.errors import HypervisorError, SavedStateError
from vtorque.vm.spec import METADATA_NS

_GONE = {libvirt.VIR_ERR_NO_DOMAIN}
_NOT_RUNNING = {libvirt.VIR_ERR_OPERATION_INVALID}

# libvirt prints every error to stderr by default; we report errors ourselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


@dataclass(frozen=True)
class TaggedDomain:
    name: str
    uuid: str
    job_id: str
    rank: int
    state: str
    persistent: bool
    node: str = ""


class Host:
    """A libvirt connection with the handful of operations vtorque needs."""

    def __init__(self, uri: str, retries: int = 3, retry_delay: float = 1.0):
        self.uri = uri
        self._lock = threading.Lock()
        self._versions: tuple[int, int] | None = None
        last = None
        for attempt in range(retries):
            try:
                self._conn = libvirt.open(uri)
                break
            except libvirt.libvirtError as exc:
                last = exc
                if attempt + 1 < retries:
                    time.sleep(retry_delay)
        else:
            raise HypervisorError(f"cannot connect to libvirt at {uri}: "
                                  f"{_message(last)}") from None

    def close(self) -> None:
        try:
            self._conn.close()
        except libvirt.libvirtError:
            pass

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def domain_types(self) -> set[str]:
        """Domain types this hypervisor offers for x86_64 (e.g. {'qemu', 'kvm'})."""
        caps = ET.fromstring(self._conn.getCapabilities())
        types = set()
        for guest in caps.findall("guest"):
            if guest.findtext("arch/emulator") is None and guest.find("arch") is None:
                continue
            for dom in guest.findall("arch/domain"):
                types.add(dom.get("type"))
        return types

    def ensure_filters(self, filters: list[tuple[str, str]]) -> None:
        """Define the network filters (name, XML) that are missing; existing ones stay."""
        for name, xml in filters:
            try:
                self._conn.nwfilterLookupByName(name)
                continue
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NWFILTER:
                    raise HypervisorError(f"cannot look up network filter {name}: "
                                          f"{_message(exc)}") from None
            try:
                self._conn.nwfilterDefineXML(xml)
            except libvirt.libvirtError as exc:
                raise HypervisorError(f"cannot define network filter {name}: "
                                      f"{_message(exc)}") from None

    def start_transient(self, xml: str, attempts: int = 3) -> str:
        """Create and start a transient domain; return its UUID.

        Under load, QEMU now and then exits right after libvirt spawned it, with nothing
        in its log ("process exited while connecting to monitor", seen here with several
        guests starting at once under TCG). That one error is retried, bounded; every
        other refusal fails at once."""
        for attempt in range(attempts):
            try:
                return self._conn.createXML(xml, 0).UUIDString()
            except libvirt.libvirtError as exc:
                retry = exc.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR and \
                    "connecting to monitor" in (exc.get_error_message() or "")
                if not retry or attempt + 1 == attempts:
                    raise HypervisorError(f"libvirt refused to start the guest: "
                                          f"{_message(exc)}") from None
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def versions(self) -> tuple[int, int]:
        """(hypervisor, libvirt) versions as libvirt reports them (major*1e6 + minor*1e3
        + release): a saved guest state is only loaded by the QEMU that saved it. Asked
        once per connection (every guest of a job compares its shape)."""
        if self._versions is None:
            try:
                self._versions = (self._conn.getVersion(), self._conn.getLibVersion())
            except libvirt.libvirtError as exc:
                raise HypervisorError(f"cannot read the hypervisor's version: "
                                      f"{_message(exc)}") from None
        return self._versions

    def definition(self, name: str) -> str:
        """The domain's definition (VIR_DOMAIN_XML_INACTIVE) with the PCI addresses
        libvirt assigned; for a transient domain it still carries device aliases, which
        libvirt ignores when given them back."""
        try:
            return self._conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot read guest {name}'s XML: {_message(exc)}") from None

    def save(self, name: str, path: str) -> None:
        """Save the running domain's state to `path` (libvirt's save image); the domain
        is gone afterwards."""
        try:
            self._conn.lookupByName(name).save(path)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot save guest {name}: {_message(exc)}") from None

    def restore_problem(self) -> str | None:
        """Why this libvirt cannot start guests from saved state (None: it can)."""
        if not hasattr(libvirt_qemu, "qemuMonitorCommandWithFiles"):
            return "libvirt-python is older than 8.2 (no qemuMonitorCommandWithFiles)"
        return None

    def start_restored(self, xml: str, state_fd: int, timeout: float) -> str:
        """Create a paused domain from `xml` (which makes QEMU wait for incoming state),
        load the saved state QEMU reads from `state_fd` (a pipe carrying the migration
        stream), and return its UUID, still paused. SavedStateError when QEMU refuses
        the state. A failure destroys the domain."""
        try:
            dom = self._conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"libvirt refused to start the restored guest: "
                                  f"{_message(exc)}") from None
        try:
            self._qmp(dom, "getfd", {"fdname": "vtorque-state"}, files=[state_fd])
            try:
                self._load(dom, timeout)
            except SavedStateError:
                raise
            except HypervisorError as exc:
                # QEMU exits when it cannot load incoming state: the monitor is gone.
                raise SavedStateError(f"QEMU could not load the saved state: {exc}") \
                    from None
            return dom.UUIDString()
        except BaseException:
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
            raise

    def _load(self, dom, timeout: float) -> None:
        """Have QEMU read the state from the descriptor it was given, until it is in."""
        self._qmp(dom, "migrate-incoming", {"uri": "fd:vtorque-state"})
        deadline = time.monotonic() + timeout
        while True:
            status = self._qmp(dom, "query-migrate").get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise SavedStateError(f"QEMU could not load the saved state ({status})")
            if time.monotonic() > deadline:
                raise SavedStateError(f"loading the saved state took more than "
                                      f"{timeout:g} s")
            time.sleep(0.02)

    def attach(self, name: str, device_xml: str) -> None:
        """Hot-plug a device into the running (or paused) domain."""
        try:
            self._conn.lookupByName(name).attachDeviceFlags(
                device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot hot-plug a device into guest {name}: "
                                  f"{_message(exc)}") from None

    def resume(self, name: str) -> None:
        """Let a paused domain run."""
        try:
            self._conn.lookupByName(name).resume()
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot resume guest {name}: {_message(exc)}") from None

    @staticmethod
    def _qmp(dom, command: str, arguments: dict | None = None,
             files: list[int] | None = None) -> dict:
        """One QEMU monitor command through libvirt (the domain is then marked tainted
        as 'custom-monitor' in libvirt's log: vtorque uses it only to load saved state)."""
        text = json.dumps({"execute": command, "arguments": arguments or {}})
        try:
            if files:
                reply, _ = libvirt_qemu.qemuMonitorCommandWithFiles(dom, text, files, 0)
            else:
                reply = libvirt_qemu.qemuMonitorCommand(dom, text, 0)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"QEMU refused {command}: {_message(exc)}") from None
        try:
            answer = json.loads(reply)
        except ValueError:
            raise HypervisorError(f"QEMU's answer to {command} is not JSON") from None
        if not isinstance(answer, dict) or "error" in answer:
            detail = answer.get("error", {}).get("desc", "") if isinstance(answer, dict) else ""
            raise HypervisorError(f"QEMU refused {command}: {str(detail)[:200]}")
        result = answer.get("return", {})
        return result if isinstance(result, dict) else {}

    def state(self, name: str) -> str | None:
        """'running', 'shutoff', ... or None when no such domain exists."""
        try:
            dom = self._conn.lookupByName(name)
            return STATE_NAMES.get(dom.state()[0], "unknown")
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _GONE:
                return None
            raise HypervisorError(f"cannot query guest {name}: {_message(exc)}") from None

    def destroy(self, name: str) -> None:
        """Force off and undefine `name`; a missing, stopped or vanished domain is fine."""
        try:
            dom = self._conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _GONE:
                return
            raise HypervisorError(f"cannot look up guest {name}: {_message(exc)}") from None
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in _GONE | _NOT_RUNNING:
                raise HypervisorError(f"cannot destroy guest {name}: {_message(exc)}") \
                    from None
        try:
            if not dom.isPersistent():
                return  # transient: gone with destroy
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _GONE:
                return
            raise HypervisorError(f"cannot query guest {name}: {_message(exc)}") from None
        # vtorque starts transient guests; a persistent one was defined by someone else
        # under our tag, or by an older version: remove it with whatever the driver allows.
        for flags in (libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                      | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE, 0):
            try:
                dom.undefineFlags(flags)
                return
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _GONE:
                    return
                last = exc
        raise HypervisorError(f"cannot undefine guest {name}: {_message(last)}") from None

    def tagged_domains(self, job_id: str | None = None,
                       node: str | None = None) -> list[TaggedDomain]:
        """Every domain carrying our job tag (of `job_id` only, compared exactly; of
        `node` only when given, for hypervisors that serve several batch nodes)."""
        found = []
        for dom in self._all_domains():
            tag = _job_tag(dom)
            if tag is None or (job_id is not None and tag[0] != job_id):
                continue
            if node is not None and tag[2] and tag[2] != node:
                continue
            try:
                state = STATE_NAMES.get(dom.state()[0], "unknown")
                found.append(TaggedDomain(dom.name(), dom.UUIDString(), tag[0], tag[1],
                                          state, bool(dom.isPersistent()), tag[2]))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _GONE:
                    continue  # vanished between list and query
                raise HypervisorError(f"cannot query guest: {_message(exc)}") from None
        return sorted(found, key=lambda d: (d.job_id, d.rank, d.name))

    def _all_domains(self) -> list:
        try:
            return self._conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot list guests: {_message(exc)}") from None

    def template_domains(self) -> list[tuple[str, str]]:
        """(name, template key) of every snapshot template guest vtorque started."""
        found = []
        for dom in self._all_domains():
            try:
                text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
                elem = ET.fromstring(text)
                if elem.tag.endswith("template"):
                    found.append((dom.name(), elem.attrib.get("key", "")))
            except (libvirt.libvirtError, ET.ParseError):
                continue
        return sorted(found)

    def qemu_pid(self, name: str) -> int | None:
        """PID of the domain's QEMU process, read from libvirt's pid file when present."""
        for run_dir in ("/run/libvirt/qemu", "/var/run/libvirt/qemu"):
            try:
                with open(f"{run_dir}/{name}.pid") as handle:
                    return int(handle.read().strip())
            except (OSError, ValueError):
                continue
        return None


def _job_tag(dom) -> tuple[str, int, str] | None:
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
    except libvirt.libvirtError:
        return None  # no metadata of ours: not a vtorque domain (or already gone)
    try:
        elem = ET.fromstring(text)
        return elem.attrib["id"], int(elem.attrib.get("rank", "-1")), elem.attrib.get("node", "")
    except (ET.ParseError, KeyError, ValueError):
        return None


def _message(exc: BaseException | None) -> str:
    if isinstance(exc, libvirt.libvirtError):
        return (exc.get_error_message() or str(exc)).strip()
    return str(exc)
