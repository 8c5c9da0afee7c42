"""An ``EvalReport`` as a terminal table, Markdown, JSON or one self-contained HTML page.

The HTML page has no scripts or links to load: styles are inline, so it opens offline, can be
mailed, and can be attached to a job as a result file.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from selftune.eval.core import METRICS, EvalReport, Prompt, as_messages, fmt


def _last_user(prompt: Prompt) -> str:
    return next((msg["content"] for msg in reversed(as_messages(prompt)) if msg["role"] == "user"), "")


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _stat(report: EvalReport, model: str, key: str) -> str:
    s = report.stats[model][key]
    return f"{fmt(key, s.mean)} [{fmt(key, s.low)}, {fmt(key, s.high)}]"


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{value:.0%}"


def _judge_rows(report: EvalReport) -> list[tuple[str, str]]:
    if not report.judge:
        return []
    rows = []
    for model, r in report.judge["results"].items():
        pos = r["first_position_rate"]
        rows.append(
            (
                model,
                f"wins {r['wins']}, losses {r['losses']}, ties {r['ties']}, unparsed {r['invalid']}; win rate "
                f"{_pct(r['win_rate'])} [{_pct(r['low'])}, {_pct(r['high'])}]"
                + (f"; picked answer A {pos:.0%} of the time" if pos is not None else ""),
            )
        )
    return rows


# --- terminal ---------------------------------------------------------------------------------------------


def print_report(report: EvalReport, console: Console, *, show: int = 10) -> None:
    n = len(report.examples)
    if show:
        side = Table(title=f"{min(show, n)} of {n} examples", show_lines=True)
        side.add_column("prompt", overflow="fold", ratio=2)
        side.add_column("reference", overflow="fold", ratio=2)
        for model in report.models:
            side.add_column(model, overflow="fold", ratio=2)
        for i, ex in enumerate(report.examples[:show]):
            cells = []
            for model in report.models:
                style = "green" if report.right(model, i) else "red"
                cells.append(f"[{style}]{escape(_short(report.outputs[model][i], 300))}[/]")
            side.add_row(escape(_short(_last_user(ex.prompt), 200)), escape(_short(ex.reference, 200)), *cells)
        console.print(side)

    table = Table(title=f"{report.data}: n={n}, mean [95% bootstrap interval]")
    table.add_column("metric")
    for model in report.models:
        table.add_column(model, overflow="fold")
    for key in report.metric_keys:
        name = METRICS[key][0] + (" *" if key == report.primary else "")
        table.add_row(name, *(_stat(report, model, key) for model in report.models))
    console.print(table)
    console.print(f"* the metric that decides right/wrong ({report.kind} answers)")
    for line in findings(report):
        console.print(escape(line), soft_wrap=True)
    console.print(report.summary(), soft_wrap=True)  # one line, to copy whole


def findings(report: EvalReport) -> list[str]:
    """What changed against the baseline (flips), the judge's verdicts, and notes, one line each."""
    out = []
    for model in report.models[1:]:
        f = report.flips(model)
        out.append(
            f"{model} vs {report.baseline}: fixed {_lines(report, f['fixed'])}, broke {_lines(report, f['broken'])}"
        )
    judge = report.judge["model"] if report.judge else ""
    out += [f"judge {judge} on {model} vs {report.baseline}: {text}" for model, text in _judge_rows(report)]
    return out + [f"note: {note}" for note in report.notes]


def _lines(report: EvalReport, idx: list[int], most: int = 12) -> str:
    """``3 (lines 4, 9, 12)``, or ``0`` when there are none."""
    if not idx:
        return "0"
    shown = ", ".join(str(report.examples[i].line) for i in idx[:most])
    return f"{len(idx)} (lines {shown}{' ...' if len(idx) > most else ''})"


# --- Markdown ---------------------------------------------------------------------------------------------


def _md(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def to_markdown(report: EvalReport, *, show: int | None = None) -> str:
    out = [f"# Evaluation: {', '.join(report.models)}", ""]
    out.append(f"Data: `{report.data}`, n={len(report.examples)}, {report.kind} answers, {_date(report)}.")
    out += ["", f"**{report.summary()}**", "", "| metric | " + " | ".join(report.models) + " |"]
    out.append("|---" * (len(report.models) + 1) + "|")
    for key in report.metric_keys:
        out.append(f"| {METRICS[key][0]} | " + " | ".join(_stat(report, m, key) for m in report.models) + " |")
    out += ["", "Intervals are 95% bootstrap intervals of the mean."]
    out += [f"- {line}" for line in findings(report)]
    rows = report.examples if show is None else report.examples[:show]
    out += ["", "| line | prompt | reference | " + " | ".join(report.models) + " |"]
    out.append("|---" * (len(report.models) + 3) + "|")
    for i, ex in enumerate(rows):
        answers = " | ".join(_md(report.outputs[m][i]) for m in report.models)
        out.append(f"| {ex.line} | {_md(_last_user(ex.prompt))} | {_md(ex.reference)} | {answers} |")
    return "\n".join(out) + "\n"


def to_json(report: EvalReport) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


def _date(report: EvalReport) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report.created_at))


# --- HTML -------------------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1c2430;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6675}.headline{font-size:17px;font-weight:600;margin:14px 0}
table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0001}
th,td{border:1px solid #dfe3e8;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.best{font-weight:700}.ci{color:#6b7684;font-size:12px}
.ok{background:#eaf7ee}.bad{background:#fdeeee}.ans{white-space:pre-wrap;word-break:break-word}
.role{color:#6b7684;font-size:12px;text-transform:uppercase}.tag{font-size:11px;color:#6b7684}
.flip{border-left:4px solid #d9822b}ul{margin:6px 0}
@media (max-width:700px){main{padding:10px}th,td{padding:4px;font-size:13px}}
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def to_html(report: EvalReport) -> str:
    models = report.models
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>selftune eval: {_e(', '.join(models))}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>Evaluation: {_e(' vs '.join(models))}</h1>",
        f"<div class=sub>{_e(report.data)} · n={len(report.examples)} · {_e(report.kind)} answers · "
        f"{_e(_date(report))}</div>",
        f"<div class=headline>{_e(report.summary())}</div>",
        "<h2>Metrics</h2><table><tr><th>metric</th>" + "".join(f"<th>{_e(m)}</th>" for m in models) + "</tr>",
    ]
    for key in report.metric_keys:
        means = [report.stats[m][key].mean for m in models]
        best = max((v for v in means if v == v), default=None)
        cells = []
        for model, mean in zip(models, means, strict=True):
            s = report.stats[model][key]
            cls = "num best" if len(models) > 1 and mean == best else "num"
            cells.append(
                f"<td class='{cls}'>{_e(fmt(key, mean))} <span class=ci>[{_e(fmt(key, s.low))}, "
                f"{_e(fmt(key, s.high))}]</span></td>"
            )
        star = " *" if key == report.primary else ""
        parts.append(f"<tr><td>{_e(METRICS[key][0])}{star}</td>{''.join(cells)}</tr>")
    parts.append(
        "</table><p class=sub>Mean over the examples, with a 95% bootstrap interval. * decides right or wrong "
        "below (green or red).</p>"
    )
    parts.append("<h2>What changed</h2><ul>")
    parts += [f"<li>{_e(line)}</li>" for line in findings(report)]
    parts.append("</ul>")
    if report.labels:
        for model in models:
            parts.append(f"<h2>Confusion matrix: {_e(model)}</h2><table><tr><th>true \\ predicted</th>")
            parts.append("".join(f"<th>{_e(c)}</th>" for c in [*report.labels, "(other)"]) + "</tr>")
            for label, row in zip(report.labels, report.confusion[model], strict=True):
                parts.append(f"<tr><th>{_e(label)}</th>" + "".join(f"<td class=num>{v}</td>" for v in row) + "</tr>")
            parts.append("</table>")
    parts.append(
        "<h2>Side by side</h2><table><tr><th>#</th><th>prompt</th><th>reference</th>"
        + "".join(f"<th>{_e(m)}</th>" for m in models)
        + "</tr>"
    )
    for i, ex in enumerate(report.examples):
        flipped = any(report.right(m, i) != report.right(report.baseline, i) for m in models[1:])
        prompt = "".join(
            f"<div><span class=role>{_e(msg['role'])}</span><div class=ans>{_e(msg['content'])}</div></div>"
            for msg in as_messages(ex.prompt)
        )
        answers = "".join(
            f"<td class='ans {'ok' if report.right(m, i) else 'bad'}'>{_e(report.outputs[m][i])}"
            f"<div class=tag>{_e(METRICS[report.primary][0])}: "
            f"{_e(fmt(report.primary, report.scores[m][report.primary][i]))}</div></td>"
            for m in models
        )
        parts.append(
            f"<tr{' class=flip' if flipped else ''}><td class=num>{ex.line}</td><td>{prompt}</td>"
            f"<td class=ans>{_e(ex.reference)}</td>{answers}</tr>"
        )
    parts.append("</table><p class=sub>Rows with an orange edge changed between the baseline and another model.")
    parts.append(" Made by <code>selftune eval</code>.</p></main></body></html>")
    return "\n".join(parts)
