"""`vtorque metrics [--write]`: this node's metrics in Prometheus text format, as the
hooks write them after each job event for node_exporter's textfile collector
(vtorque.events). The gauges are read now; counters and histograms are what the hooks
counted."""

from __future__ import annotations


def cmd_metrics(args) -> int:
    from vtorque import config as config_mod
    from vtorque import events
    config = config_mod.load(args.config)
    if args.write:
        print(f"wrote {events.write_metrics(config)}")
        return 0
    print(events.render_metrics(config), end="")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("metrics", help="this node's metrics (Prometheus text format)",
                       description="The hooks rewrite the file after each job event; "
                       "--write rewrites it now (gauges refreshed), e.g. from the reaper's "
                       "timer.")
    p.add_argument("--write", action="store_true",
                   help="rewrite the textfile collector's file instead of printing")
    p.set_defaults(func=cmd_metrics)
