"""Snapshot starts, carried out: build a node's template of a guest's shape once, and
start a job's guest from it. Decisions are in vm/snapshot.py, files in
vm/template_store.py, libvirt in vm/host.py.

Nothing here may fail a job: the lifecycle boots a guest whenever a template cannot be
had or a restore fails (SnapshotUnavailable or any VtorqueError), and says so in the
node's log.
"""

from __future__ import annotations

import os
import secrets
import time

from vtorque import node
from vtorque.config import Config
from vtorque.errors import HypervisorError, NodeError, ResourceError, VtorqueError
from vtorque.files import remove_file
from vtorque.images import Image
from vtorque.log import node_logger
from vtorque.vm import identity, readiness, snapshot
from vtorque.vm.host import Host
from vtorque.vm.render import domain_xml
from vtorque.vm.spec import GuestSpec
from vtorque.vm.template_store import Template, TemplateStore

# How much larger than the guest's RAM a save image can be (device state, header).
_STATE_SLACK_MIB = 64


class SnapshotUnavailable(NodeError):
    """No template for this guest now (off, not eligible, failed recently): it boots."""


def template_for(spec: GuestSpec, image: Image, host: Host, config: Config) -> Template:
    """The node's template of `spec`'s shape, built now when there is none (under its
    lock: concurrent jobs build it once). SnapshotUnavailable when this guest must boot;
    a failed build is recorded, and the shape boots for snapshots.retry_after."""
    reason = snapshot.not_eligible(spec, image, config)
    if reason:
        raise SnapshotUnavailable(reason)
    shape = snapshot.shape_of(spec, image, host.versions())
    store = TemplateStore(config.state_dir)
    key = shape.key()
    # A job waits for another job's build of the same template at most as long as a build
    # may take; then its guests boot.
    with store.locked(key, config.snapshots.template_timeout + 30) as directory:
        found = store.find(shape)
        if found:
            return found
        failure = store.recent_failure(key, config.snapshots.retry_after)
        if failure:
            raise SnapshotUnavailable(f"its template failed recently: {failure}")
        store.remove_stale(shape)
        try:
            return _build(spec, shape, host, config, store, directory)
        except NodeError as exc:
            store.discard(key)
            store.record_failure(key, str(exc))
            raise SnapshotUnavailable(f"building its template failed: {exc}") from None


def template_or_reason(spec: GuestSpec, image: Image, host: Host, config: Config
                       ) -> tuple[Template | None, str | None]:
    """The node's template for a job's guests (built now if need be), or None and, when
    the image opted in, why its guests boot (also in the node's log)."""
    try:
        return template_for(spec, image, host, config), None
    except SnapshotUnavailable as exc:
        if not image.snapshot or not config.snapshots.enabled:
            return None, None
        node_logger(config).warning("job %s: guests boot instead of starting from a "
                                    "template: %s", spec.job_id, exc)
        return None, str(exc)
    except (VtorqueError, OSError) as exc:   # the store: locked, untrusted, disk full
        node_logger(config).warning("job %s: no snapshot template, guests boot: %s",
                                    spec.job_id, exc)
        return None, str(exc)


def try_restore(spec: GuestSpec, template: Template, host: Host, config: Config
                ) -> str | None:
    """The UUID of `spec`'s guest restored from `template`, or None when that failed:
    never the job's failure, the guest boots instead and the template is dropped."""
    try:
        return start_guest(spec, template, host, config.timeouts.provision)
    except (VtorqueError, OSError) as exc:
        node_logger(config).warning("job %s guest %s: restoring from template %s failed, "
                                    "booting it instead: %s", spec.job_id, spec.name,
                                    template.key, exc)
        forget(template, config, str(exc))
        return None


def _build(spec: GuestSpec, shape: snapshot.TemplateShape, host: Host, config: Config,
           store: TemplateStore, directory: str) -> Template:
    need = config.min_free_space + shape.memory_mib + _STATE_SLACK_MIB
    free = node.free_space_mib(directory)
    if free < need:
        raise ResourceError(f"not enough free space for a template in {store.root}: "
                            f"{free} MiB free, {need} MiB needed")
    started = time.monotonic()
    key = shape.key()
    name = f"vtorque-template-{key[:12]}"
    token = secrets.token_hex(8)
    console = os.path.join(directory, "console.log")
    state = os.path.join(directory, "state")
    qemu = identity.of_config(config)
    template = snapshot.template_spec(spec, shape, name=name, token=token,
                                      console_log=console, placeholder_dir=store.empty_dir,
                                      qemu_uid=qemu.uid, qemu_gid=qemu.gid)
    host.destroy(name)              # left by a build that was killed
    remove_file(state)
    try:
        host.start_transient(domain_xml(template))
        _wait_for(template, snapshot.template_ready_line(token), host,
                  config.snapshots.template_timeout)
        xml = host.definition(name)
        host.save(name, state)
        with open(state, "rb") as handle:
            header = handle.read(snapshot.SAVE_HEADER.size + (1 << 20))
        offset = snapshot.stream_offset(header)
        return store.publish(shape, directory, xml, offset, time.monotonic() - started)
    finally:
        host.destroy(name)
        remove_file(console)


def _wait_for(spec: GuestSpec, line: str, host: Host, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    next_check = 0.0
    while not readiness.console_has(spec.console_log, line):
        now = time.monotonic()
        if now > deadline:
            tail = readiness.console_tail(spec.console_log)
            raise HypervisorError(f"the template guest did not reach its snapshot point "
                                  f"within {timeout:g} s" + (f"; console: {tail}" if tail
                                                              else ""))
        if now >= next_check:
            next_check = now + 0.5
            if host.state(spec.name) != "running":
                raise HypervisorError("the template guest stopped before its snapshot point")
        time.sleep(readiness.POLL_SECONDS)


def start_guest(spec: GuestSpec, template: Template, host: Host, timeout: float) -> str:
    """Start `spec`'s guest from `template` and return its UUID: a new QEMU with the
    template's machine and the guest's own identity loads the saved state, gets the
    guest's seed, disks and NIC hot-plugged, and resumes. Raises on any failure, leaving
    no domain of that name."""
    own = domain_xml(spec)
    xml = snapshot.restored_domain_xml(template.xml, own)
    fd = os.open(template.state, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_size != template.size:
            raise HypervisorError("the template's state changed after it was checked")
        os.lseek(fd, template.offset, os.SEEK_SET)
        uuid = host.start_restored(xml, fd, timeout)
    finally:
        os.close(fd)
    try:
        for device in snapshot.hotplug_devices(own):
            host.attach(spec.name, device)
        host.resume(spec.name)
    except BaseException:
        host.destroy(spec.name)
        raise
    return uuid


def forget(template: Template, config: Config, reason: str) -> None:
    """A template that failed to restore is not used again: removed, and its shape boots
    for snapshots.retry_after before it is rebuilt."""
    store = TemplateStore(config.state_dir)
    store.discard(template.key)
    store.record_failure(template.key, reason)
