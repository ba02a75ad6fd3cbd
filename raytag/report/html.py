"""The run report: one self-contained HTML page built from whatever a run directory holds.

The page embeds its figures as base64 PNG data URIs and its CSS inline, and has no
JavaScript, so it opens offline, can be mailed as one file, and survives being copied out
of the run directory. Every section reads its own files; a stage that has not run yet
shows the command that runs it, and a file that cannot be read shows why, so a partial
run still gets a useful page. Every string that comes from a file is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from raytag.io import atomic_write_bytes
from raytag.report import plots
from raytag.select.verification import verification_metrics

# Keys of groups_eval.json["strategies"] the report knows, in display order.
STRATEGY_LABELS = {
    "raytag_groups": "raytag groups",
    "all_in_one": "all-in-one",
    "all_in_one_best_epoch": "all-in-one, per-task best epoch",
    "single_task": "single-task",
    "random_groups": "random groups (same sizes)",
    "ppr": "personalized PageRank",
}
RAYTAG_STRATEGY = "raytag_groups"
NON_LEARNED_STRATEGIES = frozenset({"ppr"})

# validation.json metrics: (key, label, what it says, True when higher is better).
VALIDATION_METRICS = (
    ("within_task_spearman", "within-task Spearman", "per task, rank correlation of true vs estimated loss across the subsets containing it — what grouping uses", True),
    ("delta_relative_error", "relative error of the loss change", "error on (loss − loss at θ*), relative to the change's size", False),
    ("affinity_spearman", "affinity Spearman", "rank correlation of true vs estimated affinity entries", True),
    ("mean_relative_error", "pooled relative error", "the papers' metric; dominated by which task a pair belongs to", False),
    ("spearman", "pooled Spearman", "rank correlation over all (subset, task) pairs", True),
)
VALIDATION_BASELINES = (("no_change", "no change (loss at θ*)"), ("task_mean", "task's mean loss"))
VALIDATION_DETAILS = (
    ("estimator", "estimator"),
    ("projector", "projector"),
    ("d", "projection dimension d"),
    ("n_subsets", "validated subsets"),
    ("flops_ratio", "FLOPs, estimate / true fine-tunes"),
    ("time_ratio", "wall time, estimate / true fine-tunes"),
    ("rerun_max_abs_diff", "truth determinism: max |Δ loss| between two reruns"),
    ("stochastic_within_task_spearman", "within-task Spearman between two minibatch-Adam seeds (noise floor of stochastic truth)"),
)


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report/report.html`` (plus its PNG figures) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run_dir: {str(run_dir)!r} is not a directory; pass the --run-dir of a raytag run")
    report = _Report(run_dir)
    body = [
        report.section("summary", "Summary", _summary),
        report.section("recommendation", "Does splitting help?", _recommendation),
        report.section("strategies", "Grouping vs baselines (test split)", _strategies),
        report.section("affinity", "Task affinity and groups", _affinity_and_groups),
        report.section("select", "Target-task source selection", _source_selection),
        report.section("validation", "Estimator validation", _validation),
        report.section("training", "Multitask training (θ*)", _training),
        report.section("tasks", "Tasks", _tasks),
        report.section("settings", "Run settings and timings", _settings),
    ]
    page = _page(run_dir, report.toc, "\n".join(body))
    return atomic_write_bytes(report.report_dir / "report.html", page.encode("utf-8"))


class _Report:
    """Run-directory reader plus figure writer shared by the sections."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.report_dir = run_dir / "report"
        self.toc: list[tuple[str, str]] = []
        self._json_cache: dict[str, Any] = {}

    def json(self, relative: str) -> Any | None:
        """Parsed ``run_dir/relative``, or None when the stage that writes it has not run."""
        if relative not in self._json_cache:
            path = self.run_dir / relative
            if not path.is_file():
                return None
            with open(path, encoding="utf-8") as handle:
                self._json_cache[relative] = json.load(handle)
        return self._json_cache[relative]

    def not_run(self, stage: str, produces: str) -> str:
        return (
            f'<p class="missing">{escape(produces)}: not run yet — '
            f"<code>raytag {escape(stage)} --run-dir {escape(str(self.run_dir))}</code></p>"
        )

    def figure(self, filename: str, png: bytes, alt: str) -> str:
        """Save the PNG next to the report and return an <img> that embeds it."""
        atomic_write_bytes(self.report_dir / filename, png)
        data = base64.b64encode(png).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'

    def section(self, anchor: str, title: str, render: Callable[[_Report], str]) -> str:
        self.toc.append((anchor, title))
        try:
            content = render(self)
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            # A malformed file must not cost the user the rest of the page.
            content = f'<p class="error">Could not render this section: {escape(type(error).__name__)}: {escape(str(error))}</p>'
        return f'<section id="{anchor}"><h2>{escape(title)}</h2>\n{content}\n</section>'


# --------------------------------------------------------------------------- formatting


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return escape(str(value))
        if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return escape(str(value))


def _signed(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return _num(value)
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(value, 60)
    if minutes < 60:
        return f"{int(minutes)} min {seconds:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], css: str = "") -> str:
    """HTML table; header cells are escaped here, row cells must already be HTML."""
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _key_values(pairs: Sequence[tuple[str, str]]) -> str:
    """Two-column table of (escaped label, HTML value)."""
    rows = "\n".join(f"<tr><th>{escape(label)}</th><td>{value}</td></tr>" for label, value in pairs)
    return f'<table class="kv"><tbody>\n{rows}\n</tbody></table>'


def _names(names: Sequence[Any]) -> str:
    return ", ".join(escape(str(name)) for name in names)


def _details(summary: str, content: str) -> str:
    return f"<details><summary>{escape(summary)}</summary>\n{content}\n</details>"


def _number(value: Any) -> float | None:
    """A JSON number as float; None for null, booleans, strings (files may hold any of them)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- strategies


def _strategy_order(strategies: Mapping[str, Any]) -> list[str]:
    known = [key for key in STRATEGY_LABELS if key in strategies]
    return known + sorted(key for key in strategies if key not in STRATEGY_LABELS)


def _strategy_label(key: str) -> str:
    label = STRATEGY_LABELS.get(key, key.replace("_", " "))
    return f"{label} (non-learned)" if key in NON_LEARNED_STRATEGIES else label


def _comparison(strategies: Mapping[str, Any], key: str, other: str, noise: float | None = None) -> str | None:
    """One sentence comparing two strategies' mean test AP and F1, with the seed noise: ``noise``
    (groups_eval.json's pooled seed std) when given, else the larger of the two strategies' stds;
    as groups_eval.json says, a margin under twice the noise is within it."""
    if key not in strategies or other not in strategies:
        return None
    a, b = strategies[key], strategies[other]
    ap_a, ap_b = _number(a.get("mean_test_ap")), _number(b.get("mean_test_ap"))
    if ap_a is None or ap_b is None:
        return None
    f1_a, f1_b = _number(a.get("mean_test_f1")), _number(b.get("mean_test_f1"))
    delta = ap_a - ap_b
    verdict = "beats" if delta > 0 else "does not beat"
    text = (
        f"{escape(_strategy_label(key))} {verdict} {escape(_strategy_label(other))}: "
        f"test AP {_num(ap_a)} vs {_num(ap_b)} (<b>{_signed(delta)}</b>)"
    )
    if f1_a is not None and f1_b is not None:
        text += f", test F1 {_num(f1_a)} vs {_num(f1_b)} ({_signed(f1_a - f1_b)})"
    if noise is None:
        noise = max((_number(s.get("std_test_ap")) or 0.0) for s in (a, b))
    if noise > 0:
        within = "within" if abs(delta) <= 2 * noise else "larger than"
        text += f"; the AP difference is {within} twice the seed-to-seed spread (±{_num(noise, 4)})"
    return text + "."


def _pooled_ap_noise(evaluation: Mapping[str, Any] | None) -> float | None:
    """groups_eval.json's pooled seed-to-seed std of a strategy's mean test AP (None without it)."""
    return _number(((evaluation or {}).get("noise") or {}).get("test_ap"))


def _single_task_comparison(evaluation: Mapping[str, Any], noise: float | None) -> str | None:
    """Against single-task training on the tasks it covered (``groups.single_task_limit`` may leave
    most out, and a mean over other tasks would compare task difficulty, not strategies)."""
    same_tasks = (evaluation.get("margins") or {}).get("vs_single_task_same_tasks")
    if not same_tasks:
        return _comparison(evaluation["strategies"], RAYTAG_STRATEGY, "single_task", noise)
    ap, f1 = _number(same_tasks.get("test_ap")), _number(same_tasks.get("test_f1"))
    if ap is None:
        return None
    covered = len(evaluation["strategies"]["single_task"].get("per_task") or {})
    verdict = "beats" if ap > 0 else "does not beat"
    return (f"{escape(_strategy_label(RAYTAG_STRATEGY))} {verdict} {escape(_strategy_label('single_task'))} on the "
            f"{covered} tasks single-task training covered: mean per-task test AP difference <b>{_signed(ap)}</b>"
            + (f", test F1 {_signed(f1)}" if f1 is not None else "") + ".")


def _non_learned_warning(strategies: Mapping[str, Any]) -> str | None:
    def best(keys):
        scored = [(_number(strategies[k].get("mean_test_ap")), k) for k in keys]
        scored = [(ap, k) for ap, k in scored if ap is not None]
        return max(scored) if scored else None

    learned = best(k for k in strategies if k not in NON_LEARNED_STRATEGIES)
    non_learned = best(k for k in strategies if k in NON_LEARNED_STRATEGIES)
    if learned is None or non_learned is None or non_learned[0] <= learned[0]:
        return None
    label = _strategy_label(non_learned[1])
    return (
        f'<p class="alert"><b>A non-learned baseline beats every learned model.</b> '
        f"{escape(label[:1].upper() + label[1:])} reaches test AP {_num(non_learned[0])}, above the best learned "
        f"strategy ({escape(_strategy_label(learned[1]))}, {_num(learned[0])}). Try it before training anything.</p>"
    )


def _strategies(report: _Report) -> str:
    evaluation = report.json("groups_eval.json")
    if evaluation is None:
        return report.not_run("groups", "groups_eval.json")
    strategies = evaluation["strategies"]
    order = _strategy_order(strategies)
    parts = []
    noise = _pooled_ap_noise(evaluation)
    sentences = [
        s
        for s in (
            _comparison(strategies, RAYTAG_STRATEGY, "all_in_one", noise),
            _comparison(strategies, RAYTAG_STRATEGY, "all_in_one_best_epoch", noise),
            _comparison(strategies, RAYTAG_STRATEGY, "random_groups", noise),
            _single_task_comparison(evaluation, noise),
        )
        if s
    ]
    if sentences:
        parts.append("<ul>" + "".join(f"<li>{s}</li>" for s in sentences) + "</ul>")
    warning = _non_learned_warning(strategies)
    if warning:
        parts.append(warning)
    reference = _number(strategies.get("all_in_one", {}).get("mean_test_ap"))
    rows = []
    for key in order:
        s = strategies[key]
        ap = _number(s.get("mean_test_ap"))
        std = _number(s.get("std_test_ap"))
        ap_text = _num(ap) + (f" ± {_num(std)}" if std is not None else "")
        delta = _signed(ap - reference) if ap is not None and reference is not None and key != "all_in_one" else "—"
        label = escape(_strategy_label(key))
        rows.append([f"<b>{label}</b>" if key == RAYTAG_STRATEGY else label, ap_text, delta, _num(s.get("mean_test_f1"))])
    parts.append(_table(["strategy", "mean test AP (± std over seeds)", "Δ AP vs all-in-one", "mean test F1"], rows, "numeric"))
    train = report.json("metrics/train.json")
    base_rate = _number(((train or {}).get("test") or {}).get("mean_base_rate"))
    kinds = ["raytag" if k == RAYTAG_STRATEGY else "non-learned" if k in NON_LEARNED_STRATEGIES else "baseline" for k in order]
    png = plots.strategy_bars(
        [_strategy_label(k) for k in order],
        [_number(strategies[k].get("mean_test_ap")) for k in order],
        [_number(strategies[k].get("std_test_ap")) for k in order],
        [_number(strategies[k].get("mean_test_f1")) for k in order],
        kinds,
        base_rate,
    )
    parts.append(report.figure("strategies.png", png, "mean test AP and F1 per strategy"))
    notes = [f"seeds: {_num(evaluation.get('seeds'))}"]
    settings = evaluation.get("settings") or {}
    if settings.get("epochs") is not None:
        notes.append(f"each model: {_num(settings.get('epochs'))} Adam epochs at lr {_num(settings.get('lr'))} "
                     f"{_init_label(settings.get('init'))}")
    if evaluation.get("notes"):
        listed = evaluation["notes"] if isinstance(evaluation["notes"], list) else [evaluation["notes"]]
        notes.append("; ".join(escape(str(note)) for note in listed))
    parts.append(f'<p class="note">{" — ".join(notes)}. F1 uses each task\'s threshold chosen on validation.</p>')
    parts.append(_estimator_regime(evaluation.get("estimator_regime")))
    parts.append(_per_task_table(strategies, order))
    return "\n".join(parts)


def _estimator_regime(regime: Mapping[str, Any] | None) -> str:
    """The same comparison under the fine-tune the estimates model (deterministic GD)."""
    if not regime:
        return ""
    settings, wins = regime.get("settings") or {}, regime.get("tasks_better_than_random") or {}
    rows = [[escape(_strategy_label(key)), _num(values.get("mean_val_loss"), 4), _num(values.get("mean_test_ap")),
             _num(values.get("mean_test_f1"))] for key, values in (regime.get("strategies") or {}).items()]
    return (f"<p>Under the fine-tune the estimates model ({_num(settings.get('steps'))} full-batch gradient-descent "
            f"steps at lr {_num(settings.get('lr'))}; random groups: mean of {_num(settings.get('random_draws'))} "
            f"draws), raytag's groups have a lower validation loss than random groups for {_num(wins.get('val_loss'))}"
            f"/{_num(wins.get('of'))} tasks and a higher test AP for {_num(wins.get('test_ap'))}:</p>"
            + _table(["strategy", "mean validation loss", "mean test AP", "mean test F1"], rows, "numeric"))


def _per_task_table(strategies: Mapping[str, Any], order: Sequence[str]) -> str:
    tasks: list[str] = []
    for key in order:
        for task in strategies[key].get("per_task") or {}:
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        return ""
    rows = []
    for task in tasks:
        row = [escape(str(task))]
        for key in order:
            scores = (strategies[key].get("per_task") or {}).get(task) or {}
            row.append(f"{_num(scores.get('test_ap'))} / {_num(scores.get('test_f1'))}")
        rows.append(row)
    header = ["task"] + [_strategy_label(k) for k in order]
    return _details(f"Per-task test AP / F1 ({len(tasks)} tasks)", _table(header, rows, "numeric small"))


# --------------------------------------------------------------------------- recommendation


def _recommendation(report: _Report) -> str:
    groups = report.json("groups.json")
    evaluation = report.json("groups_eval.json")
    parts = []
    recommendation = (groups or {}).get("recommendation")
    if groups is None:
        parts.append(report.not_run("cluster", "groups.json"))
    elif not recommendation:
        parts.append('<p class="missing">groups.json holds no recommendation (predicted gain of splitting).</p>')
    else:
        split = bool(recommendation.get("split"))
        gain = _number(recommendation.get("predicted_gain"))
        k = groups.get("k", len(groups.get("groups", [])))
        headline = f"Split the tasks into {_num(k)} groups" if split else "Keep one all-task model"
        if split and recommendation.get("groups_beat_random") is False:
            headline += " — any grouping of these sizes does about as well"
        gain_text = f" Predicted gain over one all-task model: <b>{_signed(gain, 4)}</b>." if gain is not None else ""
        reason = str(recommendation.get("reason", "")).strip()
        if reason and reason[-1] not in ".!?":
            reason += "."
        parts.append(
            f'<div class="verdict {"good" if split else "warn"}"><div class="headline">{headline}</div>'
            f"<div>{escape(reason)}{gain_text}</div></div>"
        )
        per_task = {str(k): _number(v) for k, v in (recommendation.get("per_task_gain") or {}).items()}
        if per_task:
            ranked = sorted(per_task.items(), key=lambda item: -math.inf if item[1] is None else item[1], reverse=True)
            rows = [[escape(task), _signed(gain, 4)] for task, gain in ranked]
            table = _table(["task", "predicted gain of its group over all-in-one"], rows, "numeric small")
            parts.append(_details(f"Predicted gain per task ({len(rows)} tasks, largest first)", table))
    strategies = (evaluation or {}).get("strategies") or {}
    noise = _pooled_ap_noise(evaluation)
    measured = _comparison(strategies, RAYTAG_STRATEGY, "all_in_one", noise)
    if measured:
        against_random = _comparison(strategies, RAYTAG_STRATEGY, "random_groups", noise)
        parts.append(f"<p><b>Measured:</b> {measured}</p>"
                     + (f"<p><b>Measured against random groups of the same sizes</b> (does the choice of "
                        f"tasks matter, not just splitting?): {against_random}</p>" if against_random else ""))
        if recommendation:
            raytag_ap = _number(strategies[RAYTAG_STRATEGY].get("mean_test_ap"))
            all_ap = _number(strategies["all_in_one"].get("mean_test_ap"))
            if raytag_ap is not None and all_ap is not None and (raytag_ap > all_ap) != bool(recommendation.get("split")):
                parts.append('<p class="alert">The measured test result disagrees with the prediction.</p>')
    elif evaluation is None:
        parts.append(report.not_run("groups", "measured comparison (groups_eval.json)"))
    return "\n".join(parts)


# --------------------------------------------------------------------------- affinity and groups


def _affinity_and_groups(report: _Report) -> str:
    groups = report.json("groups.json")
    meta = report.json("affinity.json")
    matrix_path = report.run_dir / "affinity.npy"
    parts = []
    affinity = names = None
    if matrix_path.is_file() and meta is not None:
        affinity = np.load(matrix_path, allow_pickle=False)
        names = [str(name) for name in meta["tasks"]]
        if affinity.shape != (len(names), len(names)):
            raise ValueError(f"affinity.npy has shape {affinity.shape} but affinity.json lists {len(names)} tasks")
        group_lists = [[str(n) for n in g] for g in (groups or {}).get("groups", [])]
        png = plots.affinity_heatmap(affinity, names, group_lists)
        parts.append(report.figure("affinity_heatmap.png", png, "task affinity heatmap ordered by group"))
        settings = meta.get("settings") or {}
        if settings:
            parts.append(_details("Affinity settings", _key_values([(str(k), _num(v)) for k, v in settings.items()])))
    else:
        parts.append(report.not_run("affinity", "affinity.npy + affinity.json"))
    if groups is None:
        parts.append(report.not_run("cluster", "groups.json"))
        return "\n".join(parts)
    parts.append(
        _key_values(
            [
                ("method", _num(groups.get("method"))),
                ("solver", _num(groups.get("solver"))),
                ("k (groups)", _num(groups.get("k", len(groups.get("groups", []))))),
                ("objective (average within-group density)", _num(groups.get("objective"), 4)),
                ("clustering time", _seconds(groups.get("seconds"))),
            ]
        )
    )
    index = {name: i for i, name in enumerate(names or [])}
    rows = []
    for number, group in enumerate(groups.get("groups", []), start=1):
        members = [str(name) for name in group]
        rows.append([str(number), str(len(members)), _within_group(affinity, index, members), _names(members)])
    parts.append(_table(["group", "size", "mean within-group affinity", "tasks"], rows, "groups"))
    sweep = groups.get("k_sweep") or []
    if sweep:
        extra = sorted({key for row in sweep for key in row} - {"k", "objective"})
        sweep_rows = [[_num(row.get("k")), _num(row.get("objective"), 4)] + [_num(row.get(key), 4) for key in extra] for row in sweep]
        points = [(row["k"], row["objective"]) for row in sweep if _number(row.get("k")) is not None and _number(row.get("objective")) is not None]
        sweep_html = _table(["k", "objective"] + extra, sweep_rows, "numeric")
        if points:
            ks, objectives = zip(*sorted(points))
            png = plots.k_sweep(ks, objectives, _number(groups.get("k")))
            sweep_html = f'<div class="row">{report.figure("k_sweep.png", png, "objective per k")}{sweep_html}</div>'
        parts.append(f"<h3>Choosing k</h3>\n{sweep_html}")
    return "\n".join(parts)


def _within_group(affinity: np.ndarray | None, index: Mapping[str, int], members: Sequence[str]) -> str:
    """Mean off-diagonal affinity inside one group (what the clustering maximizes)."""
    rows = [index[m] for m in members if m in index]
    if affinity is None or len(rows) < 2:
        return "—"
    block = affinity[np.ix_(rows, rows)]
    return _num(float(block[~np.eye(len(rows), dtype=bool)].mean()))


# --------------------------------------------------------------------------- source selection


def _source_selection(report: _Report) -> str:
    paths = sorted(report.run_dir.glob("select_*.json"))
    if not paths:
        return report.not_run("select --target TASK", "select_<task>.json")
    if len(paths) == 1:
        return _one_selection(report, paths[0])
    selections = [report.json(path.name) for path in paths]
    init = next((s["verify_settings"].get("init") for s in selections if s.get("verify_settings")), None)
    verifies = [s.get("verify") or {} for s in selections]
    start = _init_label(init, text=verification_metrics(verifies)[0][0] == "test_accuracy")
    summaries = [_selection_summary(verifies, f"seeded minibatch Adam fine-tunes {start} (groups.epochs, groups.lr)"),
                 _selection_summary([s.get("verify_estimator_regime") or {} for s in selections],
                                    "the fine-tune the estimates model (deterministic full-batch gradient descent)")]
    details = [_details(f"Target {path.stem.removeprefix('select_')}", _one_selection(report, path)) for path in paths]
    return "\n".join([*summaries, *details])


def _init_label(init: str | None, text: bool = False) -> str:
    """How ``groups.init`` reads in a sentence (runs written before the setting existed started
    from θ*); a text run's fresh start is new LoRA weights on the same base."""
    if init != "scratch":
        return "from θ*"
    return "from fresh LoRA weights" if text else "from scratch (fresh weights)"


def _metric_text(value: Any, name: str) -> str:
    """A verification metric as the tables show it: losses to 4 decimals, scores to 3."""
    return _num(value, 4 if name.endswith("loss") else 3)


def _selection_summary(verifies: Sequence[Mapping[str, Any]], regime: str) -> str:
    """Across verified targets: each training set's mean test AP/F1 (and validation loss where
    measured) and on how many targets the chosen sources beat it — one target's fine-tune is too
    noisy to judge a selection rule."""
    verified = [v for v in verifies if v]
    if len(verified) < 2:
        return ""
    strategies = list(dict.fromkeys(key for verify in verified for key in verify))
    (primary, primary_label, _), (secondary, secondary_label, _) = metrics = verification_metrics(verified)
    with_loss = any("val_loss" in entry for verify in verified for entry in verify.values())
    rows = []
    def metric(verify: Mapping[str, Any], key: str, name: str) -> float | None:
        return _number((verify.get(key) or {}).get(name))

    def mean_of(key: str, name: str) -> str:
        values = [x for x in (metric(v, key, name) for v in verified) if x is not None]
        return _metric_text(float(np.mean(values)), name) if values else "—"

    def versus(key: str, name: str, lower_is_better: bool = False) -> str:
        margins = [metric(v, "chosen", name) - metric(v, key, name) for v in verified
                   if metric(v, "chosen", name) is not None and metric(v, key, name) is not None]
        if key == "chosen" or not margins:
            return "—"
        wins = sum((m < 0) if lower_is_better else (m > 0) for m in margins)
        return f"{_signed(float(np.mean(margins)))} ({wins}/{len(margins)})"

    for key in strategies:
        targets = sum(metric(v, key, primary) is not None for v in verified)
        row = [escape(key), str(targets), mean_of(key, primary), mean_of(key, secondary),
               versus(key, primary, lower_is_better=not metrics[0][2])]
        if with_loss:
            row += [mean_of(key, "val_loss"), versus(key, "val_loss", lower_is_better=True)]
        rows.append(row)
    better = "higher" if metrics[0][2] else "lower"
    headers = ["training set", "targets", f"mean {primary_label}", f"mean {secondary_label}",
               f"chosen − this, {primary_label} (targets where chosen is {better})"]
    if with_loss:
        headers += ["mean validation loss", "chosen − this, loss (targets where chosen is lower)"]
    return (f"<p>Across {len(verified)} verified targets, {escape(regime)} (mean of each target's metrics):</p>"
            + _table(headers, rows, "numeric"))


def _one_selection(report: _Report, path: Path) -> str:
    selection = report.json(path.name)
    target = escape(str(selection.get("target", path.stem.removeprefix("select_"))))
    chosen = [str(name) for name in selection.get("chosen", [])]
    gains = {str(k): v for k, v in (selection.get("estimated_gains") or {}).items()}
    parts = [f"<h3>Target: {target}</h3>", f"<p>Budget {_num(selection.get('budget'))}; chosen sources: <b>{_names(chosen) or '—'}</b></p>"]
    rows = [[escape(name), _num(_number(gains.get(name)), 4)] for name in chosen]
    table = _table(["chosen source", "estimated gain"], rows, "numeric") if rows else ""
    numeric_gains = {name: float(g) for name, g in gains.items() if _number(g) is not None}
    if numeric_gains:
        names = list(numeric_gains)
        png = plots.source_gains(names, [numeric_gains[n] for n in names], chosen)
        figure = report.figure(f"{path.stem}_gains.png", png, f"estimated source gains for {selection.get('target', '')}")
        parts.append(f'<div class="row">{figure}{table}</div>')
    elif table:
        parts.append(table)
    verify = selection.get("verify")
    if verify:
        metrics = verification_metrics([verify])
        key, label, higher_is_better = metrics[0]
        def ranked(name: str) -> float:
            value = _number(verify[name].get(key))
            return -math.inf if value is None else value if higher_is_better else -value

        best = max(verify, key=ranked)
        verify_rows = [[f"<b>{escape(k)}</b>" if k == best else escape(k),
                        *(_metric_text(v.get(name), name) for name, _, _ in metrics)]
                       for k, v in verify.items()]
        init = _init_label((selection.get("verify_settings") or {}).get("init"), text=key == "test_accuracy")
        parts.append(f"<p>Verified by fine-tuning {init} (target task's test metrics; best {label} in bold):</p>")
        parts.append(_table(["training set", *(name for _, name, _ in metrics)], verify_rows, "numeric"))
    regime = selection.get("verify_estimator_regime")
    if regime:
        metrics = verification_metrics([regime])
        rows = [[escape(k), _num(v.get("val_loss"), 4),
                 *(_metric_text(v.get(name), name) for name, _, _ in metrics)]
                for k, v in regime.items()]
        parts.append("<p>Under the fine-tune the estimates model (deterministic gradient descent from θ*):</p>")
        parts.append(_table(["training set", "validation loss", *(name for _, name, _ in metrics)], rows, "numeric"))
    if not verify and not regime:
        parts.append(f'<p class="missing">Not verified yet — <code>raytag select --run-dir {escape(str(report.run_dir))} --target {target} --verify</code></p>')
    return "\n".join(parts)


# --------------------------------------------------------------------------- validation


def _validation(report: _Report) -> str:
    validation = report.json("validation.json")
    if validation is None:
        return report.not_run("validate", "validation.json")
    baselines = validation.get("baselines") or {}
    rows = []
    for key, label, meaning, higher_is_better in VALIDATION_METRICS:
        values = [_number(validation.get(key))] + [_number((baselines.get(name) or {}).get(key)) for name, _ in VALIDATION_BASELINES]
        present = [v for v in values if v is not None]
        best = (max(present) if higher_is_better else min(present)) if present else None
        cells = [f"<b>{_num(v)}</b>" if v is not None and v == best else _num(v) for v in values]
        direction = "higher is better" if higher_is_better else "lower is better"
        rows.append([f'{escape(label)}<div class="note">{escape(meaning)}; {direction}</div>'] + cells)
    parts = [
        _table(["metric", "raytag estimator"] + [label for _, label in VALIDATION_BASELINES], rows, "numeric"),
        '<p class="note">Both baselines come from the same run; an estimator that does not beat them on the '
        "within-task and change metrics does not rank subsets usefully.</p>",
        _key_values([(label, _num(validation.get(key), 4)) for key, label in VALIDATION_DETAILS if key in validation]),
    ]
    pairs = report.json("validation_pairs.json")
    if pairs is not None:
        png = plots.validation_scatter(pairs["true"], pairs["estimated"], pairs.get("base"))
        parts.append(report.figure("validation_scatter.png", png, "true vs estimated losses"))
    return "\n".join(parts)


# --------------------------------------------------------------------------- training


def _training(report: _Report) -> str:
    train = report.json("metrics/train.json")
    if train is None:
        return report.not_run("train", "metrics/train.json")
    parts = []
    epochs = train.get("epochs") or []
    if epochs:
        png = plots.training_curves(epochs, _number(train.get("best_epoch")))
        parts.append(report.figure("training_curves.png", png, "training loss and validation metrics per epoch"))
    test = train.get("test") or {}
    ppr = train.get("ppr_baseline") or {}
    parts.append(
        _key_values(
            [
                ("best epoch (by validation)", _num(train.get("best_epoch"))),
                ("mean test AP", _num(test.get("mean_test_ap"))),
                ("mean test F1", _num(test.get("mean_test_f1"))),
                ("mean base rate (AP of a random scorer)", _num(test.get("mean_base_rate"))),
                ("personalized PageRank test AP (non-learned)", _num(ppr.get("mean_test_ap"))),
                ("personalized PageRank test F1 (non-learned)", _num(ppr.get("mean_test_f1"))),
            ]
        )
    )
    model_ap, ppr_ap = _number(test.get("mean_test_ap")), _number(ppr.get("mean_test_ap"))
    if model_ap is not None and ppr_ap is not None and ppr_ap > model_ap:
        parts.append(
            f'<p class="alert">Personalized PageRank from the training seeds ({_num(ppr_ap)} AP) beats the trained '
            f"multitask model ({_num(model_ap)} AP).</p>"
        )
    if epochs:
        rows = [[_num(e.get("epoch")), _num(e.get("loss"), 4), _num(e.get("val_ap")), _num(e.get("val_f1"))] for e in epochs]
        parts.append(_details(f"Per-epoch values ({len(epochs)} epochs)", _table(["epoch", "loss", "val AP", "val F1"], rows, "numeric small")))
    return "\n".join(parts)


# --------------------------------------------------------------------------- tasks and settings


def _tasks(report: _Report) -> str:
    tasks = report.json("tasks.json")
    if tasks is None:
        return report.not_run("prepare", "tasks.json")
    items = tasks.get("tasks") or []
    # Show whatever per-task counts the prepare stage recorded, in its order.
    columns = list(dict.fromkeys(key for task in items for key in task if key != "name"))
    pairs = [(key.replace("_", " "), _num(value)) for key, value in tasks.items() if key != "tasks" and not isinstance(value, (dict, list))]
    pairs.append(("tasks listed", _num(len(items))))
    size_key = next((key for key in ("size", "members") if key in columns), None)
    sizes = np.array([t[size_key] for t in items if _number(t.get(size_key)) is not None], dtype=np.float64) if size_key else np.array([])
    if sizes.size:
        median = float(np.median(sizes))
        median_text = _num(int(median)) if median.is_integer() else _num(median, 1)
        pairs.append((f"task {size_key} min / median / max", f"{_num(int(sizes.min()))} / {median_text} / {_num(int(sizes.max()))}"))
    rows = [[escape(str(t.get("name")))] + [_num(t.get(key)) for key in columns] for t in items]
    table = _table(["task"] + [key.replace("_", " ") for key in columns], rows, "numeric small")
    return _key_values(pairs) + "\n" + (_details(f"All {len(items)} tasks", table) if len(items) > 12 else table)


def _settings(report: _Report) -> str:
    parts = ["<h3>Timings</h3>"]
    timings = report.json("timings.json")
    if timings is None:
        parts.append(report.not_run("run CONFIG", "timings.json"))
    else:
        numeric = {str(k): float(v) for k, v in timings.items() if _number(v) is not None}
        longest = max(numeric.values(), default=0.0) or 1.0
        rows = [
            [escape(stage), _seconds(seconds), f'<div class="bar" style="width:{100 * seconds / longest:.1f}%"></div>']
            for stage, seconds in numeric.items()
        ]
        rows.append(["<b>total</b>", f"<b>{_seconds(sum(numeric.values()))}</b>", ""])
        parts.append(_table(["stage", "wall time", ""], rows, "timings"))
    parts.append("<h3>config.yaml</h3>")
    config_path = report.run_dir / "config.yaml"
    if config_path.is_file():
        parts.append(f"<pre>{escape(config_path.read_text(encoding='utf-8'))}</pre>")
    else:
        parts.append(report.not_run("run CONFIG", "config.yaml"))
    return "\n".join(parts)


# --------------------------------------------------------------------------- summary and page


def _summary(report: _Report) -> str:
    tasks = report.json("tasks.json")
    groups = report.json("groups.json")
    evaluation = report.json("groups_eval.json")
    validation = report.json("validation.json")
    cards = []
    if tasks is not None:
        cards.append(("tasks", _num(len(tasks.get("tasks") or [])), f"regime: {_num(tasks.get('regime'))}"))
    if groups is not None:
        recommendation = groups.get("recommendation") or {}
        advice = ("—" if not recommendation else "keep all-in-one" if not recommendation.get("split")
                  else "split (any grouping)" if recommendation.get("groups_beat_random") is False else "split")
        cards.append(("groups", _num(groups.get("k", len(groups.get("groups", [])))), f"{_num(groups.get('method'))}; advice: {advice}"))
    strategies = (evaluation or {}).get("strategies") or {}
    if RAYTAG_STRATEGY in strategies:
        ap = _number(strategies[RAYTAG_STRATEGY].get("mean_test_ap"))
        reference = _number(strategies.get("all_in_one", {}).get("mean_test_ap"))
        delta = f"{_signed(ap - reference)} vs all-in-one" if ap is not None and reference is not None else ""
        cards.append(("raytag groups test AP", _num(ap), delta))
    if validation is not None:
        no_change = _number(((validation.get("baselines") or {}).get("no_change") or {}).get("within_task_spearman"))
        cards.append(
            (
                "within-task Spearman",
                _num(validation.get("within_task_spearman")),
                f"no-change baseline: {_num(no_change)}" if no_change is not None else "estimate vs true fine-tunes",
            )
        )
    if not cards:
        return '<p class="missing">No stage outputs found in this run directory yet.</p>'
    html_cards = "".join(
        f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{value}</div><div class="note">{note}</div></div>'
        for label, value, note in cards
    )
    warning = _non_learned_warning(strategies) or ""
    return f'<div class="cards">{html_cards}</div>{warning}'


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2733;
       margin: 0; background: #f4f6f8; line-height: 1.45; }
header { background: #1d2733; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 22px; }
header .meta { color: #b8c2cc; font-size: 13px; margin-top: 4px; word-break: break-all; }
nav { padding: 8px 32px; background: #fff; border-bottom: 1px solid #dde3e9; font-size: 14px; }
nav a { margin-right: 14px; color: #1f5f99; text-decoration: none; white-space: nowrap; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 24px 48px; }
section { background: #fff; border: 1px solid #dde3e9; border-radius: 8px; padding: 6px 24px 18px; margin-top: 18px; }
h2 { font-size: 19px; border-bottom: 1px solid #e6eaee; padding-bottom: 6px; }
h3 { font-size: 16px; margin-top: 22px; }
img { max-width: 100%; height: auto; display: block; margin: 10px 0; }
table { border-collapse: collapse; margin: 10px 0; font-size: 14px; }
th, td { border-bottom: 1px solid #e6eaee; padding: 5px 10px; text-align: left; vertical-align: top; }
thead th { background: #f0f3f6; font-weight: 600; }
table.numeric td + td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.small { font-size: 12.5px; }
table.kv th { background: none; font-weight: 500; color: #4a5866; width: 46%; }
table.groups td:last-child { font-size: 13px; }
table.timings td:last-child { width: 320px; }
.bar { background: #1f77b4; height: 10px; border-radius: 2px; min-width: 1px; }
pre { background: #f0f3f6; padding: 12px; border-radius: 6px; overflow: auto; max-height: 520px; font-size: 12.5px; }
code { background: #f0f3f6; padding: 1px 5px; border-radius: 4px; font-size: 13px; }
.missing { color: #6b7785; font-style: italic; }
.missing code { font-style: normal; }
.error { color: #a12a2a; background: #fdeeee; padding: 8px 12px; border-radius: 6px; }
.alert { background: #fff4e0; border-left: 4px solid #e8a33d; padding: 8px 12px; border-radius: 4px; }
.note { color: #6b7785; font-size: 12.5px; }
.verdict { border-radius: 8px; padding: 14px 18px; margin: 12px 0; font-size: 15px; }
.verdict .headline { font-size: 21px; font-weight: 700; margin-bottom: 4px; }
.verdict.good { background: #e6f4ea; border: 1px solid #8cc79b; }
.verdict.warn { background: #fff4e0; border: 1px solid #e8c27a; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { flex: 1 1 200px; border: 1px solid #dde3e9; border-radius: 8px; padding: 10px 14px; background: #fafbfc; }
.card .label { color: #4a5866; font-size: 13px; }
.card .value { font-size: 26px; font-weight: 700; margin: 2px 0; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.row img { flex: 0 1 auto; max-width: 640px; }
details { margin: 10px 0; }
summary { cursor: pointer; color: #1f5f99; }
"""


def _page(run_dir: Path, toc: Sequence[tuple[str, str]], body: str) -> str:
    generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    nav = "".join(f'<a href="#{anchor}">{escape(title)}</a>' for anchor, title in toc)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>raytag report — {escape(run_dir.name)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>raytag report</h1><div class="meta">{escape(str(run_dir.resolve()))} · generated {escape(generated)}</div></header>
<nav>{nav}</nav>
<main>
{body}
</main>
</body>
</html>
"""
