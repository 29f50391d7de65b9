"""Results -> docs/benchmarks.md (tables) and docs/img/*.png (plots)."""

import os
import statistics
from typing import Any, Callable, Dict, List, Optional

NAMES = {
    "docs": "Uvicorn docs recipe (`[fcgi-program]` + `uvicorn --fd 0`)",
    "sf": "**supervisor-fastapi**",
    "uvicorn": "`uvicorn --workers N`",
    "gunicorn": "gunicorn + `uvicorn_worker.UvicornWorker`",
}
SHORT = {"docs": "docs recipe\n(--fd 0)", "sf": "supervisor-\nfastapi", "uvicorn": "uvicorn\n--workers",
         "gunicorn": "gunicorn +\nUvicornWorker"}
COLORS = {"docs": "#999999", "sf": "#1f77b4", "uvicorn": "#ff7f0e", "gunicorn": "#2ca02c"}


def median(values: List[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def get(rec: Dict[str, Any], path: str) -> Any:
    cur: Any = rec
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


class Summary:
    """Per contender: the values of each metric over the rounds, and their median."""

    def __init__(self, results: Dict[str, Any]) -> None:
        self.results = results
        self.keys: List[str] = results["contenders"]
        self.runs = results["runs"]

    def values(self, key: str, path: str) -> List[Any]:
        return [get(r, path) for r in self.runs if r["key"] == key and get(r, path) is not None]

    def med(self, key: str, path: str) -> Optional[float]:
        return median(self.values(key, path))

    def spread(self, key: str, path: str) -> Optional[tuple]:
        v = self.values(key, path)
        return (min(v), max(v)) if v else None

    def ratio(self, path: str, other: str) -> Optional[float]:
        a, b = self.med("sf", path), self.med(other, path)
        return a / b if a is not None and b else None

    def round_ratios(self, path: str, other: str) -> List[float]:
        """sf / other within each round (both measured minutes apart)."""
        out = []
        for r in range(max([x["round"] for x in self.runs] + [-1]) + 1):
            a = [get(x, path) for x in self.runs if x["key"] == "sf" and x["round"] == r and get(x, path) is not None]
            b = [get(x, path) for x in self.runs if x["key"] == other and x["round"] == r and get(x, path) is not None]
            if a and b and a[0] is not None and b[0]:
                out.append(a[0] / b[0])
        return out


def f_rps(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def f_ms(v: Optional[float]) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms"


def f_s(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.2f} s"


def f_mb(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v / 1e6:.0f} MB"


def f_ratio(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def f_us(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.0f} µs"


def f_pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def f_int(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def headline(s: Summary) -> List[str]:
    rows = []
    for k in s.keys:
        rows.append([
            NAMES[k],
            f_rps(s.med(k, "c64.rps")),
            "1.00x (itself)" if k == "sf" else f_ratio(s.ratio("c64.rps", k)),
            f_ms(s.med(k, "c1.latency_ms.50")),
            f_rps(s.med(k, "c1.rps")),
            f_int(s.med(k, "restart_close.load.failed")),
            f_int(s.med(k, "restart_keepalive.load.failed")),
            f_s(s.med(k, "kill9.answer_s")),
            f_mb(s.med(k, "memory.rss")),
        ])
    return table(["", "req/s, 64 conns", "supervisor-fastapi ÷ this", "p50, 1 keep-alive conn", "req/s, 1 conn",
                  "failed during restart (conn per request)", "failed during restart (keep-alive)",
                  "kill -9 → new worker answers", "RSS at rest"], rows)


def throughput_tables(s: Summary) -> List[str]:
    lines: List[str] = []
    for conns in (1, 64):
        rows = []
        for k in s.keys:
            p = f"c{conns}"
            per_round = ", ".join(f_rps(v) for v in s.values(k, f"{p}.rps"))
            rows.append([NAMES[k], f_rps(s.med(k, f"{p}.rps")), per_round,
                         "—" if k == "sf" else f_ratio(s.ratio(f"{p}.rps", k)),
                         "—" if k == "sf" else ", ".join(f_ratio(v) for v in s.round_ratios(f"{p}.rps", k)),
                         f_ms(s.med(k, f"{p}.latency_ms.50")), f_ms(s.med(k, f"{p}.latency_ms.90")),
                         f_ms(s.med(k, f"{p}.latency_ms.99")), f_int(s.med(k, f"{p}.failed")),
                         f_pct(s.med(k, f"{p}.busiest_worker_share")),
                         f_us(s.med(k, f"{p}.worker_cpu_us_per_request"))])
        lines += [f"### {conns} keep-alive connection{'s' if conns > 1 else ''}", ""]
        lines += table(["", "req/s (median)", "req/s per round", "supervisor-fastapi ÷ this",
                        "ratio per round", "p50", "p90", "p99", "failed", "busiest worker",
                        "worker CPU per request"], rows)
        lines.append("")
    return lines


def restart_rows(s: Summary) -> List[Dict[str, Any]]:
    """One entry per (contender, restart method): label, colour, and the result path per client kind."""
    rows = []
    for k in s.keys:
        method = next((r.get("restart_method") for r in s.runs if r["key"] == k and r.get("restart_method")), "n/a")
        rows.append({"key": k, "name": NAMES[k], "short": SHORT[k], "method": method,
                     "close": "restart_close", "keepalive": "restart_keepalive"})
        extra = sorted({m for r in s.runs if r["key"] == k for m in r.get("extra_restarts", {})})
        for m in extra:
            rows.append({"key": k, "name": NAMES[k], "short": f"{SHORT[k]}\n({m.replace('supervisorctl ', '')})",
                         "method": m, "close": f"extra_restarts.{m}", "keepalive": None})
    return rows


def restart_table(s: Summary, plan: Dict[str, Any]) -> List[str]:
    rows = []
    for row in restart_rows(s):
        k, method = row["key"], row["method"]
        for name, client in ((row["close"], "connection per request"), (row["keepalive"], "keep-alive")):
            if not name or not s.values(k, f"{name}.load.requests"):
                continue
            failed = s.values(k, f"{name}.load.failed")
            total = [a + b for a, b in zip(s.values(k, f"{name}.load.requests"), failed)]
            errs = s.values(k, f"{name}.load.errors")
            kinds = {e: median([x[e] for x in errs]) for e in ("connect", "read", "write", "timeout", "status")}
            kinds_text = ", ".join(f"{e} {v:g}" for e, v in kinds.items() if v) or "none"
            incomplete = sum(1 for w in s.values(k, f"{name}.within_load") if not w)
            rows.append([row["name"], f"`{method}`" if not method.startswith("supervisorctl restart web:web_NN")
                         else method, client, f_int(median(failed)), ", ".join(f_int(v) for v in failed),
                         f_int(median(total)), kinds_text, f_s(s.med(k, f"{name}.load.failure_window_s")),
                         f_ms(s.med(k, f"{name}.load.latency_max_ms")),
                         f_s(s.med(k, f"{name}.restart_s"))
                         + (f" ({incomplete} not done within the load)" if incomplete else "")])
    return table(["", "restart method", "clients", "failed (median)", "failed per round", "requests sent (median)",
                  "failure kinds (median)", "first to last failure", "slowest answered request",
                  "restart took"], rows)


def recovery_memory_table(s: Summary) -> List[str]:
    rows = []
    for k in s.keys:
        rows.append([NAMES[k], f_s(s.med(k, "kill9.spawn_s")), f_s(s.med(k, "kill9.answer_s")),
                     f_mb(s.med(k, "memory.rss")), f_mb(s.med(k, "memory.rss_manager")),
                     f_mb(s.med(k, "memory.rss_workers")), f_mb(s.med(k, "memory.rss_other")),
                     f_mb(s.med(k, "memory.pss")), f_int(s.med(k, "memory.processes")), f_s(s.med(k, "ready_s"))])
    return table(["", "kill -9 → new worker process", "kill -9 → new worker answers", "RSS at rest (sum)",
                  "of which manager", "of which workers", "of which other", "PSS at rest (sum)", "processes",
                  "start → all workers answer"], rows)


def done_means(s: Summary) -> List[str]:
    """The issues' Done-means figures, read off this run (reported, never asserted)."""
    lines = []
    r = s.ratio("c64.rps", "uvicorn")
    if r is not None:
        lines.append(f"- Throughput, 64 connections, supervisor-fastapi ÷ `uvicorn --workers`: **{r:.2f}x** "
                     f"(target ≥ 0.95x: {'met' if r >= 0.95 else 'NOT met'}; per round: "
                     f"{', '.join(f_ratio(v) for v in s.round_ratios('c64.rps', 'uvicorn'))}).")
    p50 = s.med("sf", "c1.latency_ms.50")
    if p50 is not None:
        docs = s.med("docs", "c1.latency_ms.50")
        lines.append(f"- p50 on one keep-alive connection: supervisor-fastapi **{f_ms(p50)}** "
                     f"(target < 2 ms: {'met' if p50 < 2 else 'NOT met'})"
                     + (f"; docs recipe {f_ms(docs)}." if docs is not None else "."))
    failed = s.values("sf", "restart_close.load.failed")
    if failed:
        lines.append(f"- Failed requests across supervisor-fastapi's restart, connection-per-request clients: "
                     f"**{', '.join(f_int(v) for v in failed)}** per round (target 0: "
                     f"{'met' if max(failed) == 0 else 'NOT met'}).")
    ka = s.values("sf", "restart_keepalive.load.failed")
    if ka:
        lines.append(f"- The same with keep-alive clients: {', '.join(f_int(v) for v in ka)} per round "
                     "(the HTTP keep-alive race: a request sent just as the server closes an idle connection).")
    return lines


# --- chaos and recovery (bench/chaos.py) ------------------------------------------------

CLIENTS = ("connection-per-request", "keep-alive")


def chaos_runs(results: Dict[str, Any], key: str, client: str) -> List[Dict[str, Any]]:
    return [r for r in results.get("chaos", {}).get("runs", []) if r["key"] == key and r["client"] == client]


def chaos_med(results: Dict[str, Any], key: str, client: str, field: str) -> Optional[float]:
    return median([r.get(field) for r in chaos_runs(results, key, client) if r["ok"]])


def chaos_ratio(results: Dict[str, Any], client: str, other: str = "uvicorn") -> Optional[float]:
    """sf's failed requests per kill divided by ``other``'s, same client kind, same run."""
    a, b = chaos_med(results, "sf", client, "failed_per_kill"), chaos_med(results, other, client, "failed_per_kill")
    if a is None or b is None:
        return None
    return a / b if b else (1.0 if a == 0 else float("inf"))


def chaos_table(results: Dict[str, Any]) -> List[str]:
    chaos = results["chaos"]
    rows = []
    for client in CLIENTS:
        for k in chaos["contenders"]:
            for r in chaos_runs(results, k, client):
                if not r["ok"]:
                    rows.append([NAMES[k], client, f"FAILED: `{r['error'].splitlines()[0]}`"] + [""] * 8)
                    continue
                errs = r["load"]["errors"]
                kinds = ", ".join(f"{e} {v:,}" for e, v in errs.items() if v) or "none"
                ratio = chaos_ratio(results, client) if k == "sf" else None
                back = r.get("restored_after_last_kill_s")
                idle = len(r["idle_ticks"])
                rows.append([
                    NAMES[k], client, f"{len(r['kills'])}"
                    + (f" ({idle} tick{'s' if idle > 1 else ''} found no worker to kill)" if idle else ""),
                    f"{r.get('replaced', 0)} of {len(r['kills'])}", f_int(r["sent"]), f_int(r["failed"]),
                    "n/a" if r["failed_per_kill"] is None else f"{r['failed_per_kill']:.1f}",
                    "—" if k != "sf" else f_ratio(ratio), kinds, f_s(r["max_gap_s"]),
                    f_s(back) if back is not None
                    else f"not within {chaos['plan']['restore_timeout']:g} s: " + "; ".join(r["manager_view"]),
                ])
    return table(["", "clients", "kills", "replacement spawned", "requests sent", "failed", "failed per kill",
                  "supervisor-fastapi ÷ uvicorn, failed per kill", "failure kinds",
                  "longest with no successful answer", "every worker back after the last kill"], rows)


def recovery_table(results: Dict[str, Any]) -> List[str]:
    rec = results["recovery"]
    rows = []
    for k in rec["contenders"]:
        runs = [r for r in rec["runs"] if r["key"] == k]
        ok = [r for r in runs if r["ok"]]
        answers = [r["answer_s"] for r in ok]
        rows.append([NAMES[k], f"**{f_s(median(answers))}**", ", ".join(f"{v:.2f}" for v in answers) or "n/a",
                     f_s(median([r.get("spawn_s") for r in ok])), f_s(median([r.get("restored_s") for r in ok])),
                     f"{len(runs) - len(ok)} of {len(runs)}"])
    return table(["", "kill -9 → new worker answers (median)", "per round, s", "kill -9 → new worker process",
                  "kill -9 → every worker answers", "rounds failed"], rows)


def provenance(results: Dict[str, Any], phase: str) -> str:
    """Which run a section's figures come from: this one, or an earlier one kept by ``--only``."""
    info = results.get("phase_info", {}).get(phase)
    if info:
        return f"from an earlier run ({info['date']}, commit `{info['commit']}`, `{info['command'].strip()}`)"
    return f"from this run ({results['info']['date']}, commit `{results['info']['commit']}`)"


def chaos_section(results: Dict[str, Any]) -> List[str]:
    lines = ["## Chaos: `kill -9` of a random worker every 2 s under load", ""]
    chaos = results.get("chaos")
    if not chaos:
        return lines + ["Not run (`--only` without `chaos`).", ""]
    p = chaos["plan"]
    lines += [f"Figures {provenance(results, 'chaos')}. A fresh deployment per contender and client kind "
              f"({', '.join(NAMES[k] for k in chaos['contenders'])}), {results['workers']} workers each. "
              f"{p['connections']} clients each send {p['rate']:g} requests a second on a fixed schedule "
              f"({p['connections'] * p['rate']:,.0f} req/s in all; bench/pyload.py `--rate`, so every scheduled "
              "request is counted once, answered or failed) for "
              f"{p['lead'] + p['duration'] + p['tail']:g} s: "
              f"{p['connections'] * p['rate'] * (p['lead'] + p['duration'] + p['tail']):,.0f} requests scheduled; "
              "fewer sent means the load generator could not keep to its schedule (a busy machine: it does not "
              f"catch up in bursts). After {p['lead']:g} s, every {p['interval']:g} s for "
              f"{p['duration']:g} s, one worker is killed with SIGKILL: a random one among those the manager "
              "lists (supervisord's `getAllProcessInfo` of the web group, STARTING or RUNNING, for "
              "supervisor-fastapi; the manager's child processes for uvicorn and gunicorn) that have answered "
              "a `GET /pid`, as an OOM killer picks a busy worker; a tick with no such worker kills nothing "
              "and is counted. A request waiting longer than "
              f"{p['timeout']:g} s has failed. \"Longest with no successful answer\" is the longest stretch in "
              "which no client got a 2xx answer, as the load client saw it (the stretch before the first answer "
              "and after the last one count). \"Replacement spawned\" counts kills after which a worker pid not "
              "seen before appeared. \"Every worker back\" runs from the last kill until N workers run, no "
              "killed pid is left and each has answered; it is watched for at most "
              f"{p['restore_timeout']:g} s, and when that runs out the manager's own view of the workers is "
              "shown. While a manager holds every worker down, ticks find nothing to kill: its failed requests "
              "per kill then grow with the length of the outage.", ""]
    lines += chaos_table(results) + [""]
    return lines


def recovery_section(results: Dict[str, Any]) -> List[str]:
    lines = ["## Recovery: `kill -9` of one worker until a new one answers", ""]
    rec = results.get("recovery")
    if not rec:
        return lines + ["Not run (`--only` without `recovery`).", ""]
    lines += [f"Figures {provenance(results, 'recovery')}. {rec['rounds']} round(s); in each, a fresh deployment "
              "per contender (order rotated from round to round), `kill -9` of one worker, then 4 new "
              "connections every few ms until a worker pid that did not exist before answers `GET /pid`. "
              "The next columns are the time until the manager has started a new worker process, and until "
              "every worker (N of them) has answered.", ""]
    return lines + recovery_table(results) + [""]


def chaos_done_means(results: Dict[str, Any]) -> List[str]:
    """Issue #8's figures from the chaos and recovery phases (reported, never asserted)."""
    lines = []
    for client in CLIENTS:
        ratio = chaos_ratio(results, client)
        gap = chaos_med(results, "sf", client, "max_gap_s")
        if ratio is None and gap is None:
            continue
        lines.append(f"- Chaos, {client} clients: supervisor-fastapi's failed requests per kill ÷ `uvicorn "
                     f"--workers`'s: **{f_ratio(ratio)}** (target ≤ 1.5x: "
                     f"{'n/a' if ratio is None else 'met' if ratio <= 1.5 else 'NOT met'}); longest time with no "
                     f"answer: **{f_s(gap)}** (target < 2 s: "
                     f"{'n/a' if gap is None else 'met' if gap < 2 else 'NOT met'}"
                     f"; uvicorn {f_s(chaos_med(results, 'uvicorn', client, 'max_gap_s'))}, gunicorn "
                     f"{f_s(chaos_med(results, 'gunicorn', client, 'max_gap_s'))}).")
    rec = results.get("recovery")
    if rec:
        m = median([r["answer_s"] for r in rec["runs"] if r["key"] == "sf" and r["ok"]])
        peers = ", ".join(f"{k} {f_s(median([r['answer_s'] for r in rec['runs'] if r['key'] == k and r['ok']]))}"
                          for k in rec["contenders"] if k != "sf")
        lines.append(f"- kill -9 → new worker answers, median of {rec['rounds']} round(s): supervisor-fastapi "
                     f"**{f_s(m)}** (target ≤ 1.0 s: {'n/a' if m is None else 'met' if m <= 1.0 else 'NOT met'}; "
                     f"{peers}).")
    return lines


# --- plots ------------------------------------------------------------------------------

def _bars(ax: Any, s: Summary, path: str, scale: Callable[[float], float], fmt: Callable[[float], str],
          title: str, ylabel: str, log: bool = False) -> None:
    keys = [k for k in s.keys if s.med(k, path) is not None]
    meds = [scale(s.med(k, path)) for k in keys]
    lows = [m - scale(s.spread(k, path)[0]) for k, m in zip(keys, meds)]
    highs = [scale(s.spread(k, path)[1]) - m for k, m in zip(keys, meds)]
    xs = range(len(keys))
    ax.bar(xs, meds, color=[COLORS[k] for k in keys], yerr=[lows, highs], capsize=4)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([SHORT[k] for k in keys], fontsize=9)
    ax.set_title(title, fontsize=11)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    top = max(meds) if meds else 1
    for x, m in zip(xs, meds):
        ax.annotate(fmt(m), (x, m), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=9,
                    fontweight="bold")
    if not log:
        ax.set_ylim(0, top * 1.18 if top > 0 else 1)
    ax.grid(axis="y", alpha=0.3)


def plots(s: Summary, img: str) -> List[str]:
    """Write the PNGs; returns their file names (empty if matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    os.makedirs(img, exist_ok=True)
    w = s.results["workers"]
    stamp = (f"{w} workers each; medians of {s.results['serve_rounds']} rounds (throughput, latency, memory) or "
             f"{s.results['rounds']} rounds (restarts, kill -9); bars = min..max; {s.results['info']['date']}")
    made = []

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    _bars(axes[0], s, "c64.rps", float, lambda v: f"{v:,.0f}", "Throughput, 64 keep-alive connections",
          "requests/s (higher is better)")
    _bars(axes[1], s, "c1.rps", float, lambda v: f"{v:,.0f}", "Throughput, 1 keep-alive connection",
          "requests/s (higher is better)")
    fig.suptitle(f"Same FastAPI app, {stamp}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(img, "bench-throughput.png"), dpi=110)
    plt.close(fig)
    made.append("bench-throughput.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, conns in zip(axes, (1, 64)):
        keys = [k for k in s.keys if s.med(k, f"c{conns}.latency_ms.50") is not None]
        width = 0.27
        for i, (pct, shade) in enumerate((("50", 1.0), ("90", 0.65), ("99", 0.35))):
            vals = [s.med(k, f"c{conns}.latency_ms.{pct}") for k in keys]
            xs = [x + (i - 1) * width for x in range(len(keys))]
            ax.bar(xs, vals, width, color=[COLORS[k] for k in keys], alpha=shade, label=f"p{pct}")
            for x, v in zip(xs, vals):
                ax.annotate(f"{v:.2g}", (x, v), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(list(range(len(keys))))
        ax.set_xticklabels([SHORT[k] for k in keys], fontsize=9)
        ax.set_ylabel("latency, ms, log scale (lower is better)")
        ax.set_title(f"Latency percentiles, {conns} keep-alive connection{'s' if conns > 1 else ''}", fontsize=11)
        ax.legend(fontsize=8, title="bars left to right", title_fontsize=8)
        ax.grid(axis="y", alpha=0.3, which="both")
    fig.suptitle(f"Same FastAPI app, {stamp}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(img, "bench-latency.png"), dpi=110)
    plt.close(fig)
    made.append("bench-latency.png")

    rows = restart_rows(s)
    fig, ax = plt.subplots(figsize=(max(10, 2.1 * len(rows)), 4.8))
    width = 0.38
    for i, (field, label, hatch) in enumerate((("close", "connection per request", ""),
                                               ("keepalive", "keep-alive", "//"))):
        shown = []
        for x, row in enumerate(rows):
            v = s.med(row["key"], f"{row[field]}.load.failed") if row[field] else None
            if v is not None:
                shown.append((x + (i - 0.5) * width, v, row["key"]))
        if not shown:
            continue
        ax.bar([x for x, _, _ in shown], [max(v, 0) for _, v, _ in shown], width,
               color=[COLORS[k] for _, _, k in shown], hatch=hatch, edgecolor="black", label=label)
        for x, v, _ in shown:
            ax.annotate(f"{v:,.0f}", (x, max(v, 0)), textcoords="offset points", xytext=(0, 2), ha="center",
                        fontsize=9, fontweight="bold")
    keys = [row["short"] for row in rows]
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_xticks(list(range(len(keys))))
    ax.set_xticklabels(keys, fontsize=9)
    ax.set_ylabel("failed requests (symlog; lower is better)")
    ax.set_title("Failed requests during a restart under load (each contender's own method, plus "
                 "supervisorctl restart web:* on supervisor-fastapi)", fontsize=11)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(stamp, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(img, "bench-restart.png"), dpi=110)
    plt.close(fig)
    made.append("bench-restart.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    _bars(axes[0], s, "kill9.answer_s", float, lambda v: f"{v:.2f} s",
          "kill -9 of one worker → a new worker answers", "seconds (lower is better)")
    _bars(axes[1], s, "memory.rss", lambda v: v / 1e6, lambda v: f"{v:.0f} MB",
          "Memory at rest: RSS summed over the process tree", "MB (lower is better)")
    fig.suptitle(stamp, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(img, "bench-recovery-memory.png"), dpi=110)
    plt.close(fig)
    made.append("bench-recovery-memory.png")
    return made


# --- the document -----------------------------------------------------------------------

def write(results: Dict[str, Any], md: str, img: str, raw: str) -> None:
    s = Summary(results)
    made = plots(s, img)
    info = results["info"]
    plan = results["plan"]
    rel_img = os.path.relpath(img, os.path.dirname(os.path.abspath(md)))
    rel_raw = os.path.relpath(raw, os.path.dirname(os.path.abspath(md)))
    pk = info["packages"]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by bench/run.py; do not edit by hand: rerun it. -->",
        "",
        f"supervisor-fastapi side by side with the usual ways to run a FastAPI app, each serving the same app "
        f"(`bench/app.py`: `/` returns a small JSON document) with **{results['workers']} workers** on "
        f"127.0.0.1, measured in one run.",
        "The claims are the **ratios** between contenders measured in the same run: absolute numbers depend on "
        "the machine and on what else runs on it.",
    ]
    if results["smoke"]:
        lines += ["", "> **Smoke run**: very short durations, one round. These numbers mean nothing; "
                      "they only show that every step ran."]
    lines += ["", "## Headline", ""] + headline(s) + [""]
    lines += [f"Medians over {results['serve_rounds']} round(s) for throughput, latency and memory, "
              f"{results['rounds']} round(s) for restarts and kill -9. \"supervisor-fastapi ÷ this\" is this package's "
              "throughput divided by the contender's (above 1 means this package is faster). "
              "A failed request is any request that got no 2xx/3xx answer: refused or reset connection, "
              "read/write error, timeout, or error status.", ""]
    dm = done_means(s) + chaos_done_means(results)
    if dm:
        lines += ["Figures the project's issues ask for (read off this run, not asserted by the script):", ""]
        lines += dm + [""]
    errors = [r for r in s.runs if not r["ok"]] + [
        dict(r, phase=p, round=r.get("round", 0)) for p in ("chaos", "recovery")
        for r in results.get(p, {}).get("runs", []) if not r["ok"]]
    if errors:
        lines += ["**Failures in this run:**", ""]
        lines += sorted({f"- {r['phase']} round {r['round'] + 1}, {NAMES[r['key']]}: `{r['error'].splitlines()[0]}`"
                         for r in errors})
        lines.append("")
    if made:
        lines += [f"![throughput]({rel_img}/bench-throughput.png)", "",
                  f"![latency]({rel_img}/bench-latency.png)", "",
                  f"![restart]({rel_img}/bench-restart.png)", "",
                  f"![recovery and memory]({rel_img}/bench-recovery-memory.png)", ""]
    lines += ["## Machine and versions", "",
              f"- Date: {info['date']}; commit `{info['commit']}`",
              f"- CPU: {info['cpu']}, {info['cores']} cores; RAM {info['ram_gb']} GB; {info['os']}",
              f"- Load average when the run started: {', '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}",
              f"- Python {info['python']}; uvicorn {pk['uvicorn']}; supervisor {pk['supervisor']}; "
              f"gunicorn {pk['gunicorn']}; uvicorn-worker {pk['uvicorn-worker']}; fastapi {pk['fastapi']}; "
              f"starlette {pk['starlette']}; uvloop {pk['uvloop']}; httptools {pk['httptools']}; "
              f"supervisor-fastapi {pk['supervisor-fastapi']}",
              f"- Event loop and HTTP parser, same for every contender: {info['stack']}",
              f"- Access log: {'on' if results['access_log'] else 'off'} for every contender",
              f"- Load generator: {info['load_generator']}"
              + ("" if "wrk" in info["load_generator"] else
                 " — **wrk was not installed**; this Python generator saturates a CPU of its own, so throughput "
                 "figures are lower bounds"),
              f"- Whole run took {results['elapsed_s'] / 60:.1f} min"]
    kept = results.get("phase_info", {})
    if kept:
        lines += ["- Phases kept from an earlier run (this one ran with `--only`): "
                  + "; ".join(f"{p} ({i['date']}, commit `{i['commit']}`)" for p, i in sorted(kept.items()))]
    lines += [""]
    lines += ["## Reproduce", "", "```sh",
              "sudo apt-get install -y wrk           # Debian/Ubuntu; without it a slower Python generator is used",
              "pip install -e '.[bench]'             # fastapi, gunicorn, uvicorn-worker, uvloop, httptools, "
              "psutil, matplotlib",
              results["command"].rstrip() if not results["smoke"] else "python bench/run.py",
              "```", "",
              "Options: `--workers N`, `--serve-rounds R` (throughput rounds), `--rounds R` (restart rounds), "
              "`--duration S` (each throughput run), `--restart-duration S`, "
              "`--only serve,resilience,listener,chaos,recovery` (a subset; the others are kept from the previous "
              "`bench/results.json`, and the report says from which run), `--chaos-duration S`, "
              "`--chaos-interval S`, `--recovery-rounds N`, "
              "`--contenders docs,sf,uvicorn,gunicorn`, `--stack asyncio-h11` (force the pure-Python loop and "
              "parser on every contender), `--access-log`, `--load python`. `python bench/run.py --smoke` runs "
              "every step briefly (a few minutes), prints the headline table and keeps no files; CI runs it. "
              "Exit status is non-zero when a contender fails to start or a step fails; no performance "
              "threshold is asserted. Raw figures of the run below: "
              f"[`{os.path.basename(raw)}`]({rel_raw}).", ""]
    lines += ["## The contenders", "",
              "| | how it runs | restart method measured |", "|---|---|---|"]
    methods = {k: next((r.get("restart_method") for r in s.runs if r["key"] == k and r.get("restart_method")),
                       "n/a") for k in s.keys}
    how = {
        "docs": "supervisord with the `[fcgi-program:uvicorn]` section from the Uvicorn docs (`socket=tcp://…`, "
                "`command=uvicorn --fd 0 app:app`, `numprocs=N`), plus `[unix_http_server]`, `[supervisord]`, "
                "`[rpcinterface:supervisor]`, `[supervisorctl]` so supervisorctl works, and `directory=` so the "
                "app imports",
        "sf": "a spec (`app.asgi`, `server.bind`, `server.workers`) rendered by `supervisor-fastapi render`, run "
              "by `supervisord -n -c` the generated conf",
        "uvicorn": "`uvicorn app:app --host 127.0.0.1 --port P --workers N`",
        "gunicorn": "`gunicorn app:app -w N -k uvicorn_worker.UvicornWorker -b 127.0.0.1:P`",
    }
    for k in s.keys:
        lines.append(f"| {NAMES[k]} | {how[k]} | {methods[k]} |")
    lines += ["", "## Throughput and latency", "",
              "Every contender is up at once (idle ones cost next to no CPU); each round runs wrk against "
              "one after the other, in an order rotated from round to round, so the ratios compare runs "
              f"minutes apart at most. {plan['duration']:g} s per run after a {plan['warmup']:g} s warm-up; "
              "1 connection with 1 wrk thread, 64 connections with 2. Every connection is keep-alive. "
              "\"Busiest worker\" is that worker's share of all worker CPU time during the 64-connection run "
              "(50% is an even split over 2 workers): the kernel hands each new connection to whichever "
              "worker accepts first, so keep-alive connections can be spread unevenly. \"Worker CPU per "
              "request\" is the workers' CPU time (user + system) divided by the requests served: it is less "
              "sensitive than req/s to whatever else the machine runs.", ""]
    lines += throughput_tables(s)
    lines += alt_stack_section(results)
    lines += ["## Failed requests during a restart under load", "",
              f"{plan['restart_connections']} clients each send {plan['restart_rate']:g} requests a second on a "
              f"fixed schedule ({plan['restart_connections'] * plan['restart_rate']:,.0f} req/s in all) for "
              f"{plan['restart_duration']:g} s; after {plan['restart_lead']:g} s the contender's own restart method "
              "is run. Every scheduled request is counted once, answered or failed (bench/pyload.py `--rate`: "
              "wrk retries a refused connection in a tight loop, so its error count would measure how fast it "
              "loops). \"Connection per request\" clients send `Connection: close` and open a new connection "
              "for each request; keep-alive clients reuse theirs and reconnect after an error or a "
              "`Connection: close` answer. A request waiting in the listen backlog while no worker accepts is "
              "not failed, it is slow: see the slowest answered request. \"Restart took\" runs from issuing "
              "the restart until every old worker is gone and N new ones run.", ""]
    lines += restart_table(s, plan) + [""]
    lines += ["## Recovery from `kill -9` and memory", "",
              "`kill -9` of one worker, then new connections every few ms until a worker that did not exist "
              "before answers, on a fresh deployment. Memory is the sum over the deployment's whole process "
              "tree (the manager: supervisord, uvicorn's parent or gunicorn's arbiter, plus the workers, plus, "
              "for supervisor-fastapi, its event listener), measured with every deployment idle after each "
              "round of load. RSS counts shared pages once per process; PSS shares them out. \"Start\" is "
              "from launching the manager until every worker has answered a request.", ""]
    lines += recovery_memory_table(s) + [""]
    lines += chaos_section(results)
    lines += recovery_section(results)
    lines += listener_section(results.get("listener"), provenance(results, "listener"))
    os.makedirs(os.path.dirname(os.path.abspath(md)), exist_ok=True)
    with open(md, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")


def alt_stack_section(results: Dict[str, Any]) -> List[str]:
    """The same throughput/latency runs on the other event loop and HTTP parser, when they were made."""
    alt = results.get("alt")
    if not alt:
        return []
    s = Summary({"contenders": alt["contenders"], "runs": alt["runs"], "rounds": alt["serve_rounds"]})
    lines = [f"### The same without uvloop and httptools (`--stack {alt['stack']}`)", "",
             f"{alt['stack_text']}: what a plain `pip install uvicorn` (without `[standard]`) runs. "
             f"{alt['serve_rounds']} round(s) of {alt['plan']['duration']:g} s runs, alternated the same way.", ""]
    lines += [line.replace("### ", "#### ", 1) if line.startswith("### ") else line for line in throughput_tables(s)]
    p50 = s.med("uvicorn", "c1.latency_ms.50")
    if p50 is not None and p50 > 20:
        lines += [f"`uvicorn --workers N` has a {f_ms(p50)} median here too: it binds the socket itself with "
                  "`socket.socket(family=...)`, whose `proto` is 0, and asyncio sets TCP_NODELAY only on sockets "
                  "whose `proto` is TCP, so Nagle's algorithm meets delayed ACKs on every keep-alive response. "
                  "uvloop sets TCP_NODELAY regardless, which is why the uvloop figures above do not show it. "
                  "The supervisor-fastapi worker opens fd 0 with `socket.socket(fileno=0)`, which reads the real "
                  "family and protocol, and sets TCP_NODELAY on the listener itself.", ""]
    return lines


def listener_section(listener: Optional[Dict[str, Any]], source: str = "from this run") -> List[str]:
    lines = ["## Event listener: acknowledgement latency and RSS", ""]
    if not listener:
        return lines + ["Not run (`--only` without `listener`).", ""]
    if not listener.get("ran"):
        return lines + [f"Not measured: {listener.get('note')}.", ""]
    # The script's path as the repository names it, wherever the run was made from.
    args = " ".join(f"bench/{os.path.basename(a)}" if os.path.isabs(a) else a for a in listener["argv"][1:])
    lines += [f"Printed by `python {args}`, the listener's own benchmark (it drives the real listener over "
              "supervisord's event protocol with every alert channel unreachable); figures "
              f"{source}"
              + (f"; its own floor check said {listener['verdict']}." if listener.get("verdict") else "."), ""]
    out = listener.get("output", "").strip()
    if listener.get("ok"):
        body = [line.replace("### ", "### ", 1) for line in out.splitlines()
                if not line.startswith(("PASS", "FAIL"))]
        lines += body + [""]
    else:
        lines += ["**It failed:**", "", "```", out[-4000:], "```", ""]
    return lines
