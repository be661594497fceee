"""Render frozen guest specs into libvirt domain XML (Jinja2, strict, escaped)."""

from __future__ import annotations

import jinja2

from vtorque.vm.spec import HOSTROOT_TAG, METADATA_NS, GuestSpec

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("vtorque.vm", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=True,          # every value is XML-escaped: job names, paths, ids
    keep_trailing_newline=True,
)


def domain_xml(spec: GuestSpec) -> str:
    """The domain XML of one guest."""
    return _ENV.get_template("domain.xml.j2").render(spec=spec, ns=METADATA_NS,
                                                    hostroot_tag=HOSTROOT_TAG)


# The job-isolation filters, defined once per node (order: referenced ones first).
FILTERS = ("vtorque-job-peers", "nwfilter-job-peers.xml"), ("vtorque-job", "nwfilter-job.xml")


def network_filters() -> list[tuple[str, str]]:
    """(name, XML) of the network filters guests with isolated NICs refer to."""
    return [(name, _ENV.loader.get_source(_ENV, template)[0]) for name, template in FILTERS]
