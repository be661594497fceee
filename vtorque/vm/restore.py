"""Snapshot starts, carried out: build a node's template of a guest's shape once, and
start a job's guest from it. Decisions are in vm/snapshot.py, files in
vm/template_store.py, libvirt in vm/host.py.

Nothing here may fail a job: the lifecycle boots a guest whenever a template cannot be
had or a restore fails, and the node's log says why.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time

from vtorque import node
from vtorque.config import Config
from vtorque.errors import (
    HypervisorError,
    NodeError,
    ResourceError,
    SavedStateError,
    VtorqueError,
)
from vtorque.files import remove_file
from vtorque.images import Image
from vtorque.log import node_logger
from vtorque.vm import identity, readiness, snapshot
from vtorque.vm.host import Host
from vtorque.vm.render import domain_xml
from vtorque.vm.spec import GuestSpec
from vtorque.vm.template_store import Template, TemplateBusy, TemplateStore

# How much larger than the guest's RAM a save image can be (device state, header).
_STATE_SLACK_MIB = 64
TEMPLATE_PREFIX = "vtorque-template-"


class SnapshotUnavailable(NodeError):
    """No template for this guest now (off, not eligible, being built, failed recently):
    it boots."""


def template_for(spec: GuestSpec, image: Image, host: Host, config: Config) -> Template:
    """The node's template of `spec`'s shape, built now when there is none.
    SnapshotUnavailable when this guest must boot: not eligible, another job is building
    the template right now (its guests do not wait for it), or a build failed less than
    snapshots.retry_after ago (a failed build is recorded)."""
    reason = snapshot.not_eligible(spec, image, config) or host.restore_problem()
    if reason:
        raise SnapshotUnavailable(reason)
    shape = snapshot.shape_of(spec, image, host.versions())
    store = TemplateStore(config.state_dir)
    key = shape.key()
    try:
        with store.locked(key, timeout=0) as directory:
            found = store.find(shape)
            if found:
                store.mark_used(found)
                return found
            failure = store.recent_failure(key, config.snapshots.retry_after)
            if failure:
                raise SnapshotUnavailable(f"its template failed recently: {failure}")
            store.remove_stale(shape)
            store.prune(max(config.snapshots.keep - 1, 0))
            try:
                return _build(spec, shape, host, config, store, directory)
            except (NodeError, OSError) as exc:
                reason = str(exc) if isinstance(exc, NodeError) else \
                    f"{exc.filename or 'the template'}: {exc.strerror or exc}"
                store.discard(key)
                store.record_failure(key, reason, shape.image_name)
                raise SnapshotUnavailable(f"building its template failed: {reason}") \
                    from None
    except TemplateBusy:
        raise SnapshotUnavailable("another job on this node is building its template "
                                  "right now") from None


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
    except (VtorqueError, OSError) as exc:   # the store: untrusted, disk full
        node_logger(config).warning("job %s: no snapshot template, guests boot: %s",
                                    spec.job_id, exc)
        return None, str(exc)


def try_restore(spec: GuestSpec, image: Image, template: Template, host: Host,
                config: Config) -> str | None:
    """The UUID of `spec`'s guest restored from `template`, or None when it must boot:
    of another shape than the template (a job's guests may differ by rank: cells, a
    virtual function), or the restore failed (never the job's failure; a template QEMU
    could not load is dropped)."""
    if snapshot.not_eligible(spec, image, config) or \
            snapshot.shape_of(spec, image, host.versions()).key() != template.key:
        return None
    try:
        return start_guest(spec, template, host, config.timeouts.provision)
    except (VtorqueError, OSError) as exc:
        node_logger(config).warning("job %s guest %s: restoring from template %s failed, "
                                    "booting it instead: %s", spec.job_id, spec.name,
                                    template.key, exc)
        if isinstance(exc, SavedStateError):
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
    name = TEMPLATE_PREFIX + key[:12]
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
        readiness.wait_ready([template], config.snapshots.template_timeout, host.state,
                             line_of=lambda t: snapshot.template_ready_line(token))
        xml = host.definition(name)
        host.save(name, state)
        with open(state, "rb") as handle:
            header = handle.read(snapshot.SAVE_HEADER.size + (1 << 20))
        offset = snapshot.stream_offset(header)
        return store.publish(shape, directory, xml, offset, time.monotonic() - started)
    except BaseException:
        remove_file(state)
        raise
    finally:
        host.destroy(name)
        remove_file(console)


def start_guest(spec: GuestSpec, template: Template, host: Host, timeout: float) -> str:
    """Start `spec`'s guest from `template` and return its UUID: a new QEMU with the
    template's machine and the guest's own identity loads the saved state, gets the
    guest's seed, disks and NIC hot-plugged, and resumes. Raises on any failure
    (SavedStateError when QEMU refused the state), leaving no domain of that name.

    QEMU reads the state from a pipe root fills: it never holds a descriptor of the
    template's file (nor could a security module's rules for QEMU refuse one)."""
    own = domain_xml(spec)
    xml = snapshot.restored_domain_xml(template.xml, own)
    source = os.open(template.state, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(source)
        if (st.st_uid, st.st_size, st.st_ino) != (0, template.size, template.inode):
            raise HypervisorError("the template's state changed after it was checked")
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        feeder = threading.Thread(target=_feed, args=(source, template.offset, st.st_size,
                                                      write_end), daemon=True)
        feeder.start()
        try:
            uuid = host.start_restored(xml, read_end, timeout)
        finally:
            os.close(read_end)
            feeder.join(timeout=timeout)
    finally:
        os.close(source)
    try:
        for device in snapshot.hotplug_devices(own):
            host.attach(spec.name, device)
        host.resume(spec.name)
    except BaseException:
        try:
            host.destroy(spec.name)
        except VtorqueError:
            pass                    # the teardown of the job finds it by its tag
        raise
    return uuid


def _feed(source: int, offset: int, end: int, pipe: int) -> None:
    """Copy the template's migration stream into the pipe QEMU reads, then close it
    (QEMU sees the end). A reader that went away ends the copy."""
    try:
        while offset < end:
            sent = os.sendfile(pipe, source, offset, min(end - offset, 1 << 22))
            if sent == 0:
                break
            offset += sent
    except OSError:
        pass
    finally:
        os.close(pipe)


def forget(template: Template, config: Config, reason: str) -> None:
    """A template QEMU could not load is not used again: removed (if it is still the one
    that failed: another job may have rebuilt it meanwhile), and its shape boots for
    snapshots.retry_after before it is rebuilt. Never raises."""
    store = TemplateStore(config.state_dir)
    try:
        with store.locked(template.key, timeout=5):
            try:
                same = os.stat(template.state).st_ino == template.inode
            except FileNotFoundError:
                same = False
            if same:
                store.discard(template.key)
                store.record_failure(template.key, reason, template.image_name)
    except (VtorqueError, OSError) as exc:
        node_logger(config).warning("template %s: cannot record its failure: %s",
                                    template.key, exc)


def reap_templates(host: Host, config: Config) -> list[str]:
    """Destroy template guests left by a build that was killed (no process holds their
    template's lock); the names destroyed."""
    store = TemplateStore(config.state_dir)
    gone = []
    for name, key in host.template_domains():
        if re.fullmatch(r"[0-9a-f]{32}", key) and store.is_locked(key):
            continue                # being built right now
        host.destroy(name)
        gone.append(name)
    return gone
