"""Stand-ins for a reaper test of a node whose job left files but no guests: a libvirt
host with no domains, and a batch server that knows no job."""

from __future__ import annotations

from typing import Any

from vtorque.errors import UnknownJobError


class ForgetfulServer:
    """A batch server to which every job is unknown (it ended long ago)."""

    def job(self, job_id: str) -> Any:
        raise UnknownJobError("fake", job_id)


class NoHost:
    """A libvirt host without domains (no libvirt is reached)."""

    def __init__(self, uri: str) -> None: ...

    def __enter__(self) -> NoHost:
        return self

    def __exit__(self, *exc: object) -> None: ...

    def tagged_domains(self, job_id: str | None = None, node: str | None = None) -> list:
        return []

    def state(self, name: str) -> None:
        return None
