"""`alma-regen stage`: a MOUS's archive files into its member folder (alma_regen.staging)."""
from __future__ import annotations

import os
import signal

from .common import print_json


def register(sub) -> None:
    from ..config import settings
    # A stage gives up on a source trickling below this (bytes/s over the window; the settings
    # stage_min_rate_bps / stage_min_rate_window_s): about 10 KB/s for two minutes is a dead
    # link, not a slow one (the request handler serves MB/s).
    min_rate_bps, min_rate_window_s = settings().stage_min_rate_bps, settings().stage_min_rate_window_s
    s = sub.add_parser("stage", help="stage a MOUS (README, auxiliary, products, raw ASDMs) into a workdir")
    s.add_argument("mous", help="MOUS uid, uid://A001/X.../X...")
    s.add_argument("--source", required=True,
                   help="http(s)://host:port (request handler; user:password@ for basic auth, "
                        "cookie from $ALMA_REQUEST_HANDLER_COOKIE) or s3://bucket/prefix "
                        "(boto3 environment; AWS_ENDPOINT_URL for a mirror)")
    s.add_argument("--workdir", required=True, help="the member folder is created inside")
    s.add_argument("--parallel", type=int, default=2, help="EBs downloaded at once (default 2)")
    s.add_argument("--lock-timeout", type=float, default=3600.0,
                   help="seconds to wait for another run staging the same file (default 3600)")
    s.add_argument("--progress-interval", type=float, default=5.0, help="seconds between progress lines")
    s.add_argument("--s3-workers", type=int, default=4,
                   help="parallel ranged GETs per file of 32 MiB or more from S3 (default 4; 1 = one stream)")
    s.add_argument("--min-rate", type=float, default=min_rate_bps, metavar="BYTES_PER_S",
                   help=f"give up on a file whose source sends less than this over --min-rate-window "
                        f"(a transient error; run again to resume; 0: never; default {min_rate_bps:.0f})")
    s.add_argument("--min-rate-window", type=float, default=min_rate_window_s, metavar="SECONDS",
                   help=f"the window of --min-rate (default {min_rate_window_s:.0f})")
    s.add_argument("--require-all-ebs", action="store_true",
                   help="a PPR EB the archive lacks is an error (default: a warning, the run goes on with the other EBs and is published as partial, as scriptForPI does)")
    s.set_defaults(func=cmd_stage)


def cmd_stage(a) -> None:
    from ..staging.sources import open_source
    from ..staging.stage import StageOptions, stage_mous

    if a.source.startswith("s3://"):
        source = open_source(a.source, workers=a.s3_workers)
    else:
        source = open_source(a.source, cookie=os.environ.get("ALMA_REQUEST_HANDLER_COOKIE", ""))
    opts = StageOptions(parallel=a.parallel, lock_timeout=a.lock_timeout, progress_interval=a.progress_interval,
                        min_rate_bps=max(a.min_rate, 0.0), min_rate_window_s=max(a.min_rate_window, 1.0),
                        require_all_ebs=a.require_all_ebs)
    # SIGTERM (a scheduler or `kill`) stops like Ctrl-C: transfers stop, partial data stay for a resume.
    signal.signal(signal.SIGTERM, _interrupt)
    print_json(stage_mous(a.mous, source, a.workdir, opts))


def _interrupt(signum, frame):
    raise KeyboardInterrupt
