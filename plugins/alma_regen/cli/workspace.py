"""`alma-regen clean` and `alma-regen raw-cache`: the working space of published MOUSes
(the library: alma_regen.workspace)."""
import sys
import time

from .common import member_step


def cmd_clean(a):
    from .. import s3
    from ..config import Settings
    from ..mous_lock import CLI_DAG
    from ..staging.progress import human
    from ..workspace import NotPublished, _member, clean, plan_clean, published_manifest, verify_published
    member, mous = _member(a.member_dir)
    to = a.products or Settings.from_env().products_url
    if not to:
        raise NotPublished("no products location: give --products s3://bucket/prefix (or set "
                           "ALMA_REGEN_PRODUCTS_URL); nothing removed")
    with member_step(member, "clean") as run_id:
        manifest = published_manifest(s3.s3_client(), to, mous)
        if manifest is None:
            raise NotPublished(f"{mous} is not published under {to} (no latest.json with a manifest): "
                               "nothing removed")
        verify_published(manifest, member)
        plan = plan_clean(member, a.keep)
        verb = "remove" if a.yes else "would remove"
        for e in plan.remove:
            print(f"{verb:12} {human(e.bytes):>10}  {member / e.name}{'  (link only)' if e.kind == 'link' else ''}")
        tail = " and the member folder itself" if plan.whole else ""
        if not a.yes:
            print(f"would free {human(plan.total_bytes)} in {len(plan.remove)} path(s){tail} (keep={plan.keep}, "
                  f"published as {manifest['location']}); add --yes to remove them")
            return 0
        result = clean(plan, manifest=manifest, holder=(CLI_DAG, run_id))
    print(f"freed {human(result['bytes_freed'])} in {len(result['removed'])} path(s){tail} (keep={plan.keep})")
    sys.stdout.flush()
    return 0


def cmd_raw_cache(a):
    from ..config import Settings
    from ..staging.progress import human
    from ..workspace import evict, raw_cache
    quota_gb = Settings.from_env().raw_cache_gb if a.quota_gb is None else a.quota_gb
    cache = raw_cache(a.workdir)
    for c in reversed(cache):
        print(f"{human(c.bytes):>10}  {time.strftime('%Y-%m-%d %H:%M', time.gmtime(c.used))}  {c.member}")
    total = sum(c.bytes for c in cache)
    print(f"raw cache: {len(cache)} member folder(s), {human(total)}" +
          (f", quota {quota_gb:g} GB" if quota_gb > 0 else ", no quota (raw_cache_gb = 0)"))
    if quota_gb <= 0:
        return 0
    gone = evict(a.workdir, int(quota_gb * 1e9), dry_run=not a.yes)
    verb = "removed" if a.yes else "would remove"
    for c in gone:
        print(f"{verb:12} {human(c.bytes):>10}  {c.member}")
    if not a.yes and gone:
        print("add --yes to remove them")
    return 0


def register(sub):
    s = sub.add_parser("clean", help="free the working space of a published MOUS (dry run without --yes)")
    s.add_argument("member_dir")
    s.add_argument("--keep", required=True, choices=["raw", "nothing"],
                   help="raw: keep what staging brought (raw/, script/, calibration/, qa/, log/, product/, README); "
                        "nothing: remove the whole member folder")
    s.add_argument("--products", default=None,
                   help="s3://bucket/prefix the MOUS is published under (default: ALMA_REGEN_PRODUCTS_URL)")
    s.add_argument("--yes", action="store_true", help="remove; without it, only list what would go")
    s.set_defaults(func=cmd_clean)
    r = sub.add_parser("raw-cache", help="the raw data kept for reruns (keep=raw) and what the quota evicts "
                                         "(dry run without --yes)")
    r.add_argument("workdir")
    r.add_argument("--quota-gb", type=float, default=None,
                   help="the cache's size limit (default: the setting raw_cache_gb)")
    r.add_argument("--yes", action="store_true", help="remove; without it, only list what would go")
    r.set_defaults(func=cmd_raw_cache)
