"""Where a node keeps its snapshot templates: state_dir/templates, root's alone.

    templates/                 0711: QEMU may pass through to empty/, nothing more
      empty/                   0755, empty: the source of a template's shares
      <key>/                   0700, one per template shape (vm/snapshot.py)
        state                  0600, libvirt's save image of the template guest
        domain.xml             0600, the template's definition (its PCI addresses)
        meta.json              0600, the shape, the stream offset, sizes, times
        failed                 0600, why the last build or restore failed, and when
        lock                   held while the template is built or checked

A template is used only when every file is root's, not writable by anyone else, and its
meta names the exact shape asked for; anything else is not a template (and is rebuilt).
A restored QEMU never opens these files: root opens the state and hands QEMU the open
descriptor.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass

from vtorque.errors import NodeError
from vtorque.files import (
    FILE,
    atomic_write,
    ensure_trusted_dir,
    flock_within,
    path_problem,
    read_trusted,
    remove_tree,
)
from vtorque.vm.snapshot import TemplateShape

LOCK_TIMEOUT = 300.0
_META_LIMIT = 1 << 16
_XML_LIMIT = 1 << 20


class TemplateBusy(NodeError):
    """Another process holds the template's lock."""


@dataclass(frozen=True)
class Template:
    key: str
    state: str              # path of the save image
    xml: str                # the template's definition
    offset: int             # where QEMU's migration stream begins in `state`
    size: int               # bytes of `state`
    image_name: str
    inode: int = 0          # of `state` when it was found: a rebuilt one is another


class TemplateStore:
    def __init__(self, state_dir: str):
        self.root = os.path.join(state_dir, "templates")

    @property
    def empty_dir(self) -> str:
        return os.path.join(self.root, "empty")

    def directory(self, key: str) -> str:
        return os.path.join(self.root, key)

    def prepare(self) -> None:
        """The store's directories, made or verified (NodeError when not trusted)."""
        ensure_trusted_dir(os.path.dirname(self.root), 0o755)
        ensure_trusted_dir(self.root, 0o711)
        ensure_trusted_dir(self.empty_dir, 0o755)

    @contextlib.contextmanager
    def locked(self, key: str, timeout: float = LOCK_TIMEOUT):
        """Hold the template's lock: one builder per shape, no reader of a half-made one.
        TemplateBusy when another process holds it for longer than `timeout` (0: at once)."""
        self.prepare()
        directory = ensure_trusted_dir(self.directory(key), 0o700)
        fd = os.open(os.path.join(directory, "lock"),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if not flock_within(fd, timeout, poll=0.1):
                raise TemplateBusy(f"template {key} is being built or checked by another "
                                   "vtorque process on this node")
            yield directory
        finally:
            os.close(fd)

    def is_locked(self, key: str) -> bool:
        """Whether a process holds the template's lock now (a build in progress)."""
        path = os.path.join(self.directory(key), "lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if flock_within(fd, 0):
                fcntl.flock(fd, fcntl.LOCK_UN)
                return False
            return True
        finally:
            os.close(fd)

    def find(self, shape: TemplateShape) -> Template | None:
        """The template of exactly this shape, or None (missing, incomplete, not root's
        alone, or of another shape)."""
        directory = self.directory(shape.key())
        try:
            meta = json.loads(read_trusted(os.path.join(directory, "meta.json"),
                                           "template meta", limit=_META_LIMIT, private=True))
            xml = read_trusted(os.path.join(directory, "domain.xml"), "template XML",
                               limit=_XML_LIMIT, private=True).decode()
        except (FileNotFoundError, NodeError, ValueError, UnicodeDecodeError):
            return None
        state = os.path.join(directory, "state")
        if not isinstance(meta, dict) or meta.get("shape") != shape.to_dict() or \
                path_problem(state, FILE, private=True, single_link=True):
            return None
        try:
            st = os.stat(state, follow_symlinks=False)
        except OSError:
            return None
        offset = meta.get("offset")
        if st.st_size != meta.get("size") or not isinstance(offset, int) or \
                not 0 < offset < st.st_size:
            return None
        return Template(shape.key(), state, xml, offset, st.st_size, shape.image_name,
                        st.st_ino)

    def publish(self, shape: TemplateShape, directory: str, xml: str, offset: int,
                build_seconds: float) -> Template:
        """Record a template whose save image is already at directory/state."""
        state = os.path.join(directory, "state")
        os.chown(state, 0, 0)
        os.chmod(state, 0o600)
        st = os.stat(state)
        size = st.st_size
        atomic_write(os.path.join(directory, "domain.xml"), xml, mode=0o600)
        atomic_write(os.path.join(directory, "meta.json"), json.dumps({
            "shape": shape.to_dict(), "offset": offset, "size": size,
            "created": time.time(), "build_seconds": round(build_seconds, 3)}), mode=0o600)
        self.clear_failure(shape.key())
        return Template(shape.key(), state, xml, offset, size, shape.image_name, st.st_ino)

    def discard(self, key: str) -> None:
        """Drop a template's state (the lock and the failure record stay)."""
        directory = self.directory(key)
        for name in ("meta.json", "domain.xml", "state"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))

    def record_failure(self, key: str, reason: str, image_name: str) -> None:
        atomic_write(os.path.join(self.directory(key), "failed"),
                     json.dumps({"at": time.time(), "reason": reason[:500],
                                 "image_name": image_name}), mode=0o600)

    def clear_failure(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory(key), "failed"))

    def _failure(self, key: str) -> dict:
        try:
            data = json.loads(read_trusted(os.path.join(self.directory(key), "failed"),
                                           "template failure", limit=_META_LIMIT,
                                           private=True))
        except (FileNotFoundError, NodeError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def recent_failure(self, key: str, retry_after: float) -> str | None:
        """Why this shape's template failed less than `retry_after` seconds ago."""
        data = self._failure(key)
        try:
            at, reason = float(data["at"]), str(data["reason"])
        except (KeyError, TypeError, ValueError):
            return None
        return reason if time.time() - at < retry_after else None

    def mark_used(self, template: Template) -> None:
        """Note a use (the least recently used templates are pruned first)."""
        with contextlib.suppress(OSError):
            os.utime(os.path.join(self.directory(template.key), "meta.json"))

    def prune(self, keep: int) -> list[str]:
        """Keep the `keep` most recently used templates; remove the others not being
        built or checked right now. The keys removed."""
        used = []
        for key, meta in self.entries():
            if meta is None:
                continue
            with contextlib.suppress(OSError):
                used.append((os.stat(os.path.join(self.directory(key),
                                                  "meta.json")).st_mtime, key))
        removed = []
        for _mtime, key in sorted(used, reverse=True)[keep:]:
            if not self.is_locked(key):
                self.remove(key)
                removed.append(key)
        return removed

    def entries(self) -> list[tuple[str, dict | None]]:
        """(key, meta or None) of every template directory."""
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name == "empty" or not os.path.isdir(os.path.join(self.root, name)):
                continue
            try:
                meta = json.loads(read_trusted(os.path.join(self.root, name, "meta.json"),
                                               "template meta", limit=_META_LIMIT,
                                               private=True))
            except (FileNotFoundError, NodeError, ValueError):
                meta = None
            found.append((name, meta if isinstance(meta, dict) else None))
        return found

    def remove(self, key: str) -> None:
        remove_tree(self.directory(key))

    def remove_image(self, image_name: str) -> list[str]:
        """Remove every template of `image_name`, failed ones included; the keys removed."""
        removed = []
        for key, meta in self.entries():
            name = (meta or {}).get("shape", {}).get("image_name") if meta else \
                self._failure(key).get("image_name")
            if name == image_name:
                self.remove(key)
                removed.append(key)
        return removed

    def remove_stale(self, shape: TemplateShape) -> list[str]:
        """Remove the templates of `shape`'s image made from other files or by another
        QEMU or libvirt: no guest can use them any more."""
        current = (shape.image_files, shape.hypervisor_version, shape.libvirt_version,
                   shape.format)
        removed = []
        for key, meta in self.entries():
            old = (meta or {}).get("shape") or {}
            if key == shape.key() or old.get("image_name") != shape.image_name:
                continue
            files = tuple(tuple(f) for f in old.get("image_files", ()))
            if (files, old.get("hypervisor_version"), old.get("libvirt_version"),
                    old.get("format")) != current:
                self.remove(key)
                removed.append(key)
        return removed

    def bytes_used(self) -> int:
        total = 0
        for key, _meta in self.entries():
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(self.root, key, "state")).st_size
        return total
