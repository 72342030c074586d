"""A self-contained HTML page for a report: summary, charts (inline SVG), per-layer tables.

No script, no font, no stylesheet and no image is fetched: the page is one file that opens
offline and can be attached to a CI run as an artifact. ``render(report_dict)`` returns it.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Iterable

from onnxslim.errors import UsageError
from onnxslim.reporting.charts import CHARTS, details, require_matplotlib
from onnxslim.stats import human, human_bytes

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a202c;margin:0;background:#f7fafc}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e2e8f0;padding-bottom:4px}
.sub{color:#4a5568;margin:0 0 16px} code{background:#edf2f7;padding:1px 4px;border-radius:3px;font-size:12px;word-break:break-all}
table{border-collapse:collapse;background:#fff;font-size:12px;margin:6px 0} th,td{padding:3px 8px;border:1px solid #e2e8f0;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums} th{background:#edf2f7}
figure{background:#fff;border:1px solid #e2e8f0;border-radius:6px;margin:10px 0;padding:8px}
figure svg{max-width:100%;height:auto;display:block} figcaption{font-weight:600;margin-bottom:4px}
.note{color:#4a5568;font-size:12px;margin:4px 0 0} .ok{color:#2f855a;font-weight:600} .bad{color:#c53030;font-weight:600} .empty{color:#718096;font-style:italic}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:0 16px}
details{margin:6px 0} summary{cursor:pointer;font-weight:600}
"""
MAX_TABLE_ROWS = 500


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return _e(value)


def _table(header: list[str], rows: Iterable[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        if i >= MAX_TABLE_ROWS:
            body.append(f'<tr><td colspan="{len(header)}" class="empty">… more rows in report.json</td></tr>')
            break
        cells = "".join(f'<td class="n">{_num(c)}</td>' if j in numeric else f"<td>{_e(c)}</td>" for j, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _change(before: float, after: float) -> str:
    return "" if not before else f"{(after - before) / before * 100:+.1f}%"


def _summary(report: dict[str, Any]) -> str:
    stats = report.get("stats") or {}
    b, a = stats.get("before"), stats.get("after")
    if not b or not a:
        return '<p class="empty">No statistics recorded.</p>'
    rows = [
        ["nodes", b["nodes"], a["nodes"], _change(b["nodes"], a["nodes"])],
        ["parameters", human(b["parameters"]), human(a["parameters"]), _change(b["parameters"], a["parameters"])],
        ["MACs" + ("" if a.get("macs_exact", True) else " (approx.)"), human(b["macs"]), human(a["macs"]), _change(b["macs"], a["macs"])],
        ["weight bytes", human_bytes(b["constant_bytes"]), human_bytes(a["constant_bytes"]), _change(b["constant_bytes"], a["constant_bytes"])],
    ]
    fin, fout = report.get("input") or {}, report.get("output") or {}
    if fin.get("bytes") and fout.get("bytes"):
        x, y = fin.get("total_bytes", fin["bytes"]), fout.get("total_bytes", fout["bytes"])
        rows.append(["file bytes", human_bytes(x), human_bytes(y), _change(x, y)])
    return _table(["", "before", "after", "change"], rows, {1, 2, 3})


def _verification(report: dict[str, Any]) -> str:
    v = report.get("verification")
    if not v:
        return '<p class="empty">Outputs were not compared (--no-verify).</p>'
    status = v.get("status", "?")
    cls = "bad" if status == "failed" else ("ok" if status in ("passed", "measured") else "empty")
    parts = [f'<p>Verification: <span class="{cls}">{_e(status)}</span> ({_e(v.get("mode", "exact"))}, '
             f'{_e(v.get("samples", 0))} sample(s)) {_e(v.get("reason", ""))}</p>']
    if v.get("fidelity"):
        parts.append(_table(["output", "cosine", "SQNR dB", "rel L2", "max abs", "top-1 agreement"],
                            [[f["name"], f["cosine"], f["sqnr_db"], f["rel_l2"], f["max_abs"], f.get("top1_agreement") or ""]
                             for f in v["fidelity"]], {1, 2, 3, 4, 5}))
    elif v.get("outputs"):
        parts.append(_table(["output", "shape", "max abs", "max rel", "tolerance", "ok"],
                            [[o["name"], o["shape"], o["max_abs"], o["max_rel"], o["tolerance"], "yes" if o["ok"] else f"NO {o.get('problem', '')}"]
                             for o in v["outputs"]], {2, 3, 4}))
    return "".join(parts)


def _fail_if(report: dict[str, Any]) -> str:
    rows = report.get("fail_if") or []
    if not rows:
        return ""
    return "<h2>CI conditions (--fail-if)</h2>" + _table(
        ["condition", "holds", "measured"], [[r["condition"], "HOLDS (exit 1)" if r["holds"] else "no", r["value"]] for r in rows])


def _charts(report: dict[str, Any]) -> str:
    out = []
    for chart_id, (title, make, note) in CHARTS.items():
        svg = make(report)
        body = f'{svg}<p class="note">{_e(note)}</p>' if svg else '<p class="empty">Nothing to show: this run has no data for it.</p>'
        out.append(f'<figure id="{chart_id}"><figcaption>{_e(title)}</figcaption>{body}</figure>')
    return "".join(out)


def _detail_tables(report: dict[str, Any]) -> str:
    out = []
    for pass_name, title in (("prune_channels", "Pruning groups"), ("factorize_svd", "SVD layers"), ("insert_qdq", "Quantization")):
        rows = details(report, pass_name)
        if not rows:
            continue
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_kind.setdefault(str(r.get("detail", "layer")), []).append(r)
        for kind, kind_rows in by_kind.items():
            keys: list[str] = []
            for r in kind_rows:
                keys += [k for k in r if k != "detail" and k not in keys]
            numeric = {i for i, k in enumerate(keys) if all(isinstance(r.get(k), (int, float)) for r in kind_rows if r.get(k) is not None)}
            table = _table(keys, [[r.get(k, "") for k in keys] for r in kind_rows], numeric)
            out.append(f"<details><summary>{_e(title)}: {_e(kind)} ({len(kind_rows)} rows)</summary>{table}</details>")
    passes = [p for p in report.get("passes") or [] if p.get("changed") or p.get("seconds", 0) > 0.05]
    if passes:
        table = _table(["pass", "round", "changed", "seconds", "nodes before", "nodes after", "MACs after", "counters"],
                       [[p["name"], p["round"], "yes" if p["changed"] else "", p["seconds"], p["nodes_before"], p["nodes_after"],
                         human(p["stats"]["after"]["macs"]) if p.get("stats") else "",
                         ", ".join(f"{k}={v}" for k, v in (p.get("counters") or {}).items())] for p in passes],
                       {1, 3, 4, 5})
        out.append(f"<details><summary>Passes that changed the graph or took time ({len(passes)})</summary>{table}</details>")
    notes = report.get("notes") or []
    if notes:
        table = _table(["pass", "where", "reason"], [[n.get("pass", ""), n.get("where", ""), n.get("reason", "")] for n in notes])
        out.append(f"<details><summary>Rewrites that did not apply ({len(notes)})</summary>{table}</details>")
    return "".join(out)


def render(report: dict[str, Any]) -> str:
    """The HTML page of a report dict (``Report.to_dict()`` or a loaded report.json)."""
    require_matplotlib()
    fin, fout = report.get("input") or {}, report.get("output") or {}
    title = f"onnxslim report: {Path(fin.get('path', 'model')).name}"
    versions = ", ".join(f"{k} {v}" for k, v in (report.get("versions") or {}).items())
    files = "".join(f"<tr><th>{label}</th><td>{_e(d.get('path', ''))}</td><td class=\"n\">{_e(human_bytes(d.get('total_bytes', d.get('bytes', 0))))}</td>"
                    f"<td><code>{_e(str(d.get('sha256', ''))[:16])}</code></td></tr>" for label, d in (("input", fin), ("output", fout)) if d)
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{_e(title)}</title><style>{_CSS}</style></head>",
        f"<body><main><h1>{_e(title)}</h1><p class=\"sub\">{_e(report.get('schema', ''))} · {_e(versions)}</p>",
        f"<table>{files}</table>" if files else "",
        f"<p>Pipeline: <code>{_e(report.get('pipeline', ''))}</code></p>",
        "<h2>Summary</h2>", _summary(report), _verification(report), _fail_if(report),
        "<h2>Charts</h2>", _charts(report),
        "<h2>Per-layer tables</h2>", _detail_tables(report) or '<p class="empty">No per-layer rows in this run.</p>',
        "</main></body></html>\n",
    ])


def write_html(report: dict[str, Any], path: str | os.PathLike, source: str | os.PathLike | None = None) -> None:
    """Render and write atomically (like every other output).

    ``source``: the report.json ``report`` was loaded from. A field in it that the page cannot
    read (missing, or of another kind) is then a UsageError naming the file; without ``source``
    (a run's own report) it propagates, since that is a bug of ours."""
    from onnxslim.io import staged

    if source is None:
        text = render(report)
    else:
        try:
            text = render(report)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
            raise UsageError(f"{source}: malformed report: {_reason(exc)}") from None
    path = Path(path)
    with staged(path) as tmp:
        tmp_file = tmp / path.name
        tmp_file.write_text(text, encoding="utf-8")
        os.replace(tmp_file, path)


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"field {exc.args[0]!r} is missing"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
