"""The summary page of a published run (index.html): the images, their fidelity, the files."""
import html
from pathlib import Path


def summary_html(mous: str, run: str, imaging: dict | None, fidelity: dict | None, keys: list) -> str:
    """The products' page: per image its preview (regenerated, delivered, difference on sky
    axes; alma_regen.previews) with alt text, the fidelity numbers and verdict, peak, rms, beam."""
    from ..previews import numbers
    e = html.escape
    sections = []
    for entry in (fidelity or {}).get("images", []):
        s = entry.get("regenerated", {})
        beam = s.get("beam") or {}
        pv = entry.get("preview") or {}
        src = f"thumbnails/{Path(pv['path']).name}" if pv.get("path") else ""
        thumb = f"thumbnails/{Path(s['thumbnail']).name}" if s.get("thumbnail") else ""
        if src in keys:
            fig = f'<figure><img src="{e(src)}" alt="{e(pv.get("alt", ""))}" loading="lazy"></figure>'
        elif thumb in keys:
            fig = f'<figure><img src="{e(thumb)}" alt="{e("Regenerated image " + entry["image"])}"></figure>'
        else:
            fig = ""
        n = numbers(entry)
        status = entry.get("status", "")
        ratio = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731 - 1.0000, not "1"
        cells = [("peak ratio (regenerated / delivered)", ratio(n["peak_ratio"])),
                 ("peak offset", f"{_fmt(n['offset_arcsec'], 3)} arcsec ({_fmt(n['offset_beams'], 2)} beams)"),
                 ("rms ratio", ratio(n["rms_ratio"])),
                 ("max |difference| / rms", _fmt(n["diff_max_sigma"], 3)
                  + (f" (limit {_fmt(n['diff_limit_sigma'], 3)})" if n["diff_limit_sigma"] is not None else "")),
                 ("rms of the difference / rms", _fmt(n["diff_rms_sigma"], 3))] if entry.get("counterpart") else []
        cells += [("peak", f"{_fmt(s.get('peak'))} {e(s.get('unit') or '')}"),
                  ("rms", f"{_fmt(s.get('rms'))} {e(s.get('unit') or '')}"),
                  ("beam", f"{_fmt(beam.get('major_arcsec'), 3)} x {_fmt(beam.get('minor_arcsec'), 3)} arcsec, "
                           f"PA {_fmt(beam.get('pa_deg'), 3)} deg")]
        rows = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in cells)
        notes = "; ".join(entry.get("failures", [])) or entry.get("note", "") or entry.get("delivered_as", "")
        against = (f"<a href=\"products/{e(entry['image'])}\">The regenerated FITS</a>, compared with the delivered "
                   f"<code>{e(entry['counterpart'])}</code>" if entry.get("counterpart")
                   else f'<a href="products/{e(entry["image"])}">the regenerated FITS</a>')
        sections.append(
            f'<section class="image"><h2><code>{e(entry["image"])}</code> '
            f'<span class="verdict {e(status.replace(" ", "-"))}">{e(status)}</span></h2>{fig}'
            f'<p>{against}</p><table class="numbers">{rows}</table>'
            + (f'<p class="notes">{e(notes)}</p>' if notes else "") + "</section>")
    if not sections:
        sections = [f'<p><a href="{e(k)}">{e(k)}</a>: no fidelity check was run</p>'
                    for k in keys if k.startswith("products/")]
    engine = (imaging or {}).get("engine", "?")
    casa = ((imaging or {}).get("casa") or {}).get("version", "?")
    summary = (fidelity or {}).get("summary") or {}
    verdict = ", ".join(f"{v} {k}" for k, v in summary.items() if v) or "not checked"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(mous)} run {e(run)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:14px/1.5 Inter,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:16px 24px;color:#111}}
h1{{font-size:20px;margin:0 0 4px}}h2{{font-size:15px;margin:0 0 8px}}section.image{{border-top:1px solid #e4e4e7;
padding:16px 0}}figure{{margin:0 0 8px}}figure img{{max-width:100%;height:auto}}
table.numbers th{{text-align:left;font-weight:500;color:#52525b;padding:2px 16px 2px 0}}
.verdict{{border-radius:999px;padding:1px 10px;font-size:12px;color:#fff;background:#71717a}}
.verdict.pass{{background:#16a34a}}.verdict.fail{{background:#dc2626}}.notes{{color:#b91c1c}}</style></head>
<body><h1>{e(mous)}</h1><p>run {e(run)}: imaging engine {e(engine)}, CASA {e(casa)}; fidelity: {e(verdict)};
<a href="manifest.json">manifest.json</a>, <a href="fidelity.json">fidelity.json</a></p>
<p>Each image: the regenerated one, the delivered one on the same colour scale, and their difference in
units of the delivered rms; the ellipse in a corner is the restoring beam.</p>
{chr(10).join(sections)}
</body></html>
"""


def _fmt(v, digits=4):
    return "-" if v is None else f"{v:.{digits}g}"
