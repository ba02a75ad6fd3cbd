"""The HTML run report: complete runs, partial runs, escaping, malformed files, figure embedding."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from raytag.report import build_report
from raytag.report.plots import order_by_groups

VOID_TAGS = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _StrictParser(HTMLParser):
    """Collects text and <img> sources and checks every non-void tag is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in VOID_TAGS:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _StrictParser:
    parser = _StrictParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.errors == [] and parser.stack == [], (parser.errors, parser.stack)
    return parser


def _section(html: str, name: str) -> str:
    """The inside of the report's ``<section id=name>``."""
    return re.search(rf'<section id="{name}">(.*?)</section>', html, flags=re.S).group(1)


def _table_rows(table: str) -> dict[str, list[str]]:
    """``{first cell: other cells}`` of each body row of one HTML table."""
    rows = (re.findall(r"<td>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", table))
    return {cells[0]: cells[1:] for cells in rows if cells}


def _write_verified_selections(run: Path, verified: dict, metrics: tuple[str, str], **fields) -> None:
    """``select_<target>.json`` per target of ``verified`` (``{target: {training set: metric
    values}}``), budget 2, chosen a and b, plus ``fields``."""
    for target, verify in verified.items():
        (run / f"select_{target}.json").write_text(json.dumps({
            "target": target, "budget": 2, "chosen": ["a", "b"], **fields,
            "verify": {key: dict(zip(metrics, values)) for key, values in verify.items()}}))


def write_fake_run(run_dir: Path, n_tasks: int = 12, k: int = 3, seed: int = 0, ppr_ap: float = 0.19) -> dict:
    """A run directory holding every file the report reads, with plausible planted values."""
    rng = np.random.default_rng(seed)
    names = [f"community_{i:03d}" for i in range(n_tasks)]
    truth = np.arange(n_tasks) % k  # planted groups, interleaved so ordering matters
    affinity = np.where(truth[:, None] == truth[None, :], 1.0, -0.5) + 0.3 * rng.standard_normal((n_tasks, n_tasks))
    affinity = (affinity + affinity.T) / 2
    np.fill_diagonal(affinity, 0.0)
    groups = [[names[i] for i in np.flatnonzero(truth == g)] for g in range(k)]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics").mkdir(exist_ok=True)
    (run_dir / "config.yaml").write_text("data:\n  dataset: dblp\n  regime: seeds\n  num_tasks: %d\nestimate:\n  subsets: 2000\n" % n_tasks)

    def dump(name: str, obj) -> None:
        (run_dir / name).write_text(json.dumps(obj))

    dump("timings.json", {"prepare": 12.5, "train": 95.0, "project": 410.2, "estimate": 61.0, "affinity": 0.8, "cluster": 3.1})
    dump(
        "tasks.json",
        {
            "regime": "seeds",
            "tasks": [{"name": n, "size": int(300 + 40 * i), "train": 10, "val": 60 + i, "test": 230 + 30 * i} for i, n in enumerate(names)],
        },
    )
    epochs = [{"epoch": e, "loss": 0.7 * 0.8**e, "val_ap": 0.03 + 0.07 * (1 - 0.7**e), "val_f1": 0.05 + 0.1 * (1 - 0.7**e)} for e in range(15)]
    dump(
        "metrics/train.json",
        {
            "epochs": epochs,
            "best_epoch": 11,
            "test": {"mean_test_ap": 0.092, "mean_test_f1": 0.16, "mean_base_rate": 0.024},
            "ppr_baseline": {"mean_test_ap": ppr_ap, "mean_test_f1": 0.25},
        },
    )
    np.save(run_dir / "affinity.npy", affinity)
    dump("affinity.json", {"tasks": names, "settings": {"score": "neg_val_loss_z", "subsets": 2000, "subset_size": 10}})
    dump(
        "groups.json",
        {
            "groups": groups,
            "method": "sdp",
            "k": k,
            "objective": 0.8123,
            "solver": "CLARABEL",
            "seconds": 1.7,
            "k_sweep": [{"k": kk, "objective": 0.5 + 0.1 * kk - 0.02 * kk**2, "predicted_gain": 0.001 * kk} for kk in range(2, 8)],
            "recommendation": {
                "split": True,
                "reason": "7 of 12 tasks are predicted to gain from their group",
                "predicted_gain": 0.0123,
                "per_task_gain": {n: 0.001 * (i - 5) for i, n in enumerate(names)},
            },
        },
    )

    def per_task(base: float) -> dict:
        return {n: {"test_ap": base + 0.01 * (i % 3), "test_f1": base + 0.05} for i, n in enumerate(names)}

    dump(
        "groups_eval.json",
        {
            "strategies": {
                "raytag_groups": {"mean_test_ap": 0.107, "mean_test_f1": 0.19, "std_test_ap": 0.004, "per_task": per_task(0.1)},
                "all_in_one": {"mean_test_ap": 0.092, "mean_test_f1": 0.16, "std_test_ap": 0.003, "per_task": per_task(0.09)},
                "all_in_one_best_epoch": {"mean_test_ap": 0.095, "mean_test_f1": 0.17, "per_task": per_task(0.09)},
                "single_task": {"mean_test_ap": 0.126, "mean_test_f1": 0.2, "std_test_ap": 0.005, "per_task": per_task(0.12)},
                "random_groups": {"mean_test_ap": 0.096, "mean_test_f1": 0.165, "std_test_ap": 0.005, "per_task": per_task(0.095)},
                "ppr": {"mean_test_ap": ppr_ap, "mean_test_f1": 0.25, "per_task": per_task(ppr_ap)},
            },
            "seeds": 2,
            "notes": "best epoch per task chosen on its own validation AP",
        },
    )
    metrics = {"within_task_spearman": 0.87, "delta_relative_error": 0.4, "affinity_spearman": 0.8, "mean_relative_error": 0.021, "spearman": 0.97}
    dump(
        "validation.json",
        {
            **metrics,
            "baselines": {
                "no_change": {"within_task_spearman": None, "delta_relative_error": 1.0, "affinity_spearman": None, "mean_relative_error": 0.05, "spearman": 0.95},
                "task_mean": {"within_task_spearman": 0.0, "delta_relative_error": 0.9, "affinity_spearman": 0.1, "mean_relative_error": 0.002, "spearman": 0.98},
            },
            "rerun_max_abs_diff": 0.0,
            "stochastic_within_task_spearman": 0.85,
            "flops_ratio": 0.03,
            "time_ratio": 0.05,
            "n_subsets": 40,
            "estimator": "linearized_gd",
            "projector": "kfac_eigen",
            "d": 400,
        },
    )
    base = 0.2 + 0.3 * rng.random(200)
    true = base - 0.02 * rng.random(200)
    dump("validation_pairs.json", {"true": true.tolist(), "estimated": (true + 0.003 * rng.standard_normal(200)).tolist(), "base": base.tolist()})
    target = names[0]
    gains = {n: float(0.01 * np.cos(i)) for i, n in enumerate(names[1:], start=1)}
    chosen = sorted(gains, key=gains.get, reverse=True)[:3]
    dump(
        f"select_{target}.json",
        {
            "target": target,
            "budget": 3,
            "chosen": chosen,
            "estimated_gains": gains,
            "verify": {"target_only": {"test_ap": 0.11, "test_f1": 0.2}, "chosen": {"test_ap": 0.131, "test_f1": 0.22}, "random": {"test_ap": 0.1, "test_f1": 0.19}},
        },
    )
    return {"names": names, "groups": groups, "chosen": chosen}


def test_full_run_builds_a_self_contained_page(tmp_path):
    fake = write_fake_run(tmp_path / "run")
    path = build_report(tmp_path / "run")
    assert path == tmp_path / "run" / "report" / "report.html"
    parsed = _parse(path)
    text = path.read_text(encoding="utf-8")
    for name in fake["names"]:
        assert name in text
    for label in ("raytag groups", "all-in-one", "all-in-one, per-task best epoch", "single-task", "random groups", "personalized PageRank"):
        assert label in text
    assert "not run yet" not in text and "Could not render" not in text
    assert "Split the tasks into 3 groups" in text
    # Per-task predicted gains, largest first: community_011 (+0.0060) leads, community_000 (-0.0050) trails.
    gains = re.findall(r"<tr><td>(community_\d+)</td><td>([+-]\d\.\d{4})</td></tr>", text)
    assert gains[0] == ("community_011", "+0.0060") and gains[-1] == ("community_000", "-0.0050") and len(gains) == 12
    # raytag groups 0.107 vs all-in-one 0.092: the measured comparison is stated with its sign.
    assert "test AP 0.107 vs 0.092 (<b>+0.015</b>)" in text
    assert "A non-learned baseline beats every learned model" in text
    # Every figure is embedded as a data URI whose bytes equal the PNG written next to the page.
    written = {p.name: p.read_bytes() for p in path.parent.glob("*.png")}
    select_png = f"select_{fake['names'][0]}_gains.png"
    assert set(written) == {"strategies.png", "affinity_heatmap.png", "k_sweep.png", select_png, "validation_scatter.png", "training_curves.png"}
    assert all(src.startswith("data:image/png;base64,") for src in parsed.images)
    embedded = [base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in parsed.images]
    assert all(png.startswith(PNG_MAGIC) for png in embedded)
    assert sorted(embedded) == sorted(written.values())
    # Offline: no scripts, no external resources.
    assert "<script" not in text and "http://" not in text and "https://" not in text


def test_group_order_and_within_group_affinity(tmp_path):
    fake = write_fake_run(tmp_path / "run", n_tasks=9, k=3)
    text = build_report(tmp_path / "run").read_text(encoding="utf-8")
    affinity = np.load(tmp_path / "run" / "affinity.npy")
    names = fake["names"]
    for group in fake["groups"]:
        rows = [names.index(n) for n in group]
        block = affinity[np.ix_(rows, rows)]
        expected = block.sum() / (len(rows) * (len(rows) - 1))  # diagonal is zero in the fake run
        assert f"<td>{expected:.3f}</td>" in text


def test_order_by_groups_matches_hand_computed_permutation():
    names = ["a", "b", "c", "d", "e", "f"]
    order, spans = order_by_groups(names, [["d", "a"], ["f", "b", "a"], ["zz"]])
    # "a" stays with its first group, "zz" is unknown, "c" and "e" are ungrouped and go last.
    assert order.tolist() == [3, 0, 5, 1, 2, 4]
    assert spans == [(0, 2), (2, 4)]
    matrix = np.arange(36).reshape(6, 6)
    reordered = matrix[np.ix_(order, order)]
    assert reordered[0, 1] == matrix[3, 0] and reordered[2, 3] == matrix[5, 1]


def test_only_config_still_builds_with_commands_for_missing_stages(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: <script>alert(1)</script> & co\n")
    path = build_report(run)
    _parse(path)
    text = path.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text and "<script>" not in text
    for stage in ("prepare", "train", "affinity", "cluster", "groups", "validate", "select --target TASK"):
        assert f"<code>raytag {stage} --run-dir {run}</code>" in text
    assert "Could not render" not in text
    assert list(path.parent.glob("*.png")) == []


def test_strings_from_files_are_escaped(tmp_path):
    run = tmp_path / "run"
    write_fake_run(run, n_tasks=4, k=2)
    groups = json.loads((run / "groups.json").read_text())
    evil = '<img src=x onerror="alert(1)">'
    groups["groups"][0].append(evil)
    groups["recommendation"]["reason"] = "<b>bold</b> & more"
    (run / "groups.json").write_text(json.dumps(groups))
    text = build_report(run).read_text(encoding="utf-8")
    assert evil not in text and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in text


def test_malformed_file_costs_only_its_section(tmp_path):
    run = tmp_path / "run"
    write_fake_run(run)
    (run / "groups_eval.json").write_text("{not json")
    np.save(run / "affinity.npy", np.zeros((3, 3)))  # disagrees with affinity.json's 12 tasks
    path = build_report(run)
    _parse(path)
    text = path.read_text(encoding="utf-8")
    sections = dict(re.findall(r'<section id="(\w+)">(.*?)</section>', text, flags=re.S))
    assert "Could not render this section: JSONDecodeError" in sections["strategies"]
    assert "affinity.npy has shape (3, 3) but affinity.json lists 12 tasks" in sections["affinity"]
    assert "Could not render" not in sections["validation"] and "Could not render" not in sections["training"]


def test_validation_table_marks_the_best_value_by_direction(tmp_path):
    run = tmp_path / "run"
    write_fake_run(run)
    text = build_report(run).read_text(encoding="utf-8")
    section = _section(text, "validation")

    def cells(label: str) -> list[str]:
        row = re.search(rf"<tr><td>{label}<div.*?</tr>", section, flags=re.S).group(0)
        return re.findall(r"<td>(.*?)</td>", row, flags=re.S)[1:]

    # Higher is better for Spearman: the estimator's 0.870 beats task-mean's 0.000; no-change has none.
    assert cells("within-task Spearman") == ["<b>0.870</b>", "—", "0.000"]
    # Lower is better for errors: the pooled relative error is won by the task-mean baseline.
    assert cells("pooled relative error") == ["0.021", "0.050", "<b>0.002</b>"]


def test_non_learned_warning_only_when_it_wins(tmp_path):
    run = tmp_path / "run"
    write_fake_run(run, ppr_ap=0.05)
    text = build_report(run).read_text(encoding="utf-8")
    assert "A non-learned baseline beats every learned model" not in text
    assert "personalized PageRank (non-learned)" in text


def test_missing_run_dir_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="run_dir.*not a directory"):
        build_report(tmp_path / "nope")


def test_tasks_section_shows_the_counts_prepare_recorded(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    tasks = [
        {"name": "c1", "members": 1389, "train_positives": 10, "train_negatives": 24791},
        {"name": "c2", "members": 7556, "train_positives": 10, "train_negatives": 25112},
        {"name": "c3", "members": 2000, "train_positives": 10, "train_negatives": 25000},
    ]
    (run / "tasks.json").write_text(json.dumps({"regime": "seeds", "num_nodes": 131511, "tasks": tasks}))
    text = build_report(run).read_text(encoding="utf-8")
    section = _section(text, "tasks")
    assert "<th>num nodes</th><td>131,511</td>" in section
    assert "<td>1,389 / 2,000 / 7,556</td>" in section  # min / median / max of members
    assert "<th>train negatives</th>" in section and "<td>25,112</td>" in section


def test_selection_summary_averages_verified_targets(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    verified = {"t1": {"chosen": (0.30, 0.40), "target_alone": (0.20, 0.30), "random_sources": (0.35, 0.45)},
                "t2": {"chosen": (0.10, 0.20), "target_alone": (0.12, 0.22), "random_sources": (0.05, 0.15)}}
    _write_verified_selections(run, verified, ("test_ap", "test_f1"))
    (run / "select_t3.json").write_text(json.dumps({"target": "t3", "budget": 2, "chosen": ["a", "b"]}))
    text = build_report(run).read_text(encoding="utf-8")
    section = _section(text, "select")
    assert "Across 2 verified targets" in section  # t3 was never verified
    assert section.count("Not verified yet") == 1  # only t3's details say so
    assert [f"<details><summary>Target t{i}</summary>" in section for i in (1, 2, 3)] == [True] * 3  # folded per target
    summary = re.search(r"<table.*?</table>", section, flags=re.S).group(0)  # first table, before the per-target ones
    rows = _table_rows(summary)
    assert rows["chosen"] == ["2", "0.200", "0.300", "—"]
    # chosen − alone: (+0.10, −0.02) → mean +0.040, higher on 1 of 2 targets
    assert rows["target_alone"] == ["2", "0.160", "0.260", "+0.040 (1/2)"]
    assert rows["random_sources"] == ["2", "0.200", "0.300", "+0.000 (1/2)"]


def test_margins_use_pooled_noise_and_single_task_on_its_own_tasks(tmp_path):
    run = tmp_path / "run"
    write_fake_run(run)
    evaluation = json.loads((run / "groups_eval.json").read_text())
    strategies = evaluation["strategies"]
    strategies["random_groups"]["mean_test_ap"] = 0.105  # 0.002 below raytag groups: under 2 × the pooled 0.0015
    strategies["single_task"]["per_task"] = dict(list(strategies["single_task"]["per_task"].items())[:2])
    evaluation["noise"] = {"test_ap": 0.0015, "test_f1": 0.002}
    evaluation["margins"] = {"vs_single_task_same_tasks": {"test_ap": 0.0024, "test_f1": -0.0037}}
    (run / "groups_eval.json").write_text(json.dumps(evaluation))
    section = _section(build_report(run).read_text(encoding="utf-8"), "strategies")
    assert ("test AP 0.107 vs 0.105 (<b>+0.002</b>), test F1 0.190 vs 0.165 (+0.025); the AP difference is within "
            "twice the seed-to-seed spread (±0.0015)") in section
    assert "test AP 0.107 vs 0.092 (<b>+0.015</b>)" in section and "larger than twice the seed-to-seed spread (±0.0015)" in section
    assert ("raytag groups beats single-task on the 2 tasks single-task training covered: mean per-task test AP "
            "difference <b>+0.002</b>, test F1 -0.004.") in section
    verdict = _section(build_report(run).read_text(encoding="utf-8"), "recommendation")
    assert re.search(r"Measured against random groups.*test AP 0\.107 vs 0\.105 .*within twice the seed-to-seed",
                     verdict, flags=re.S)


def test_estimator_regime_tables_for_groups_and_selection(tmp_path):
    run = tmp_path / "run"
    write_fake_run(run)
    evaluation = json.loads((run / "groups_eval.json").read_text())
    evaluation["estimator_regime"] = {
        "settings": {"optimizer": "full-batch gradient descent", "lr": 0.05, "steps": 10, "random_draws": 2},
        "strategies": {"raytag_groups": {"mean_val_loss": 1.9402, "mean_test_ap": 0.189, "mean_test_f1": 0.258},
                       "random_groups": {"mean_val_loss": 1.9661, "mean_test_ap": 0.188, "mean_test_f1": 0.257}},
        "tasks_better_than_random": {"val_loss": 91, "test_ap": 61, "test_f1": 58, "of": 100}}
    (run / "groups_eval.json").write_text(json.dumps(evaluation))
    for target, (chosen, random) in {"t1": (1.0, 1.2), "t2": (2.0, 1.9)}.items():
        (run / f"select_{target}.json").write_text(json.dumps({
            "target": target, "budget": 2, "chosen": ["a", "b"],
            "verify_estimator_regime": {"chosen": {"val_loss": chosen, "test_ap": 0.3, "test_f1": 0.4},
                                        "random_sources": {"val_loss": random, "test_ap": 0.2, "test_f1": 0.3}}}))
    text = build_report(run).read_text(encoding="utf-8")
    groups = _section(text, "strategies")
    assert "lower validation loss than random groups for 91/100 tasks and a higher test AP for 61" in groups
    assert "<td>1.9402</td>" in groups
    select = _section(text, "select")
    assert "Across 2 verified targets, the fine-tune the estimates model" in select
    summary = re.search(r"the fine-tune the estimates model.*?(<table.*?</table>)", select, flags=re.S).group(1)
    rows = _table_rows(summary)
    # chosen − random loss: (−0.2, +0.1) → mean −0.050, lower on 1 of 2 targets
    assert rows["random_sources"][-2:] == ["1.5500", "-0.050 (1/2)"]


def test_text_selection_shows_accuracy_and_loss_and_the_fine_tune_start(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    verified = {"t1": {"chosen": (0.70, 0.61), "target_alone": (0.60, 0.65), "random_sources": (0.65, 0.60)},
                "t2": {"chosen": (0.50, 0.70), "target_alone": (0.55, 0.72), "random_sources": (0.40, 0.75)}}
    _write_verified_selections(run, verified, ("test_accuracy", "test_loss"),
                               verify_settings={"init": "scratch", "epochs": 30, "lr": 0.003})
    section = _section(build_report(run).read_text(encoding="utf-8"), "select")
    assert "Across 2 verified targets, seeded minibatch Adam fine-tunes from fresh LoRA weights" in section
    assert "test AP" not in section
    summary = re.search(r"<table.*?</table>", section, flags=re.S).group(0)
    assert "<th>mean test accuracy</th><th>mean test loss</th>" in summary
    rows = _table_rows(summary)
    # chosen − random accuracy: (+0.05, +0.10) → +0.075, higher on both targets; mean loss (0.60 + 0.75) / 2
    assert rows["random_sources"] == ["2", "0.525", "0.6750", "+0.075 (2/2)"]
    first = re.search(r"<summary>Target t1</summary>(.*?)</details>", section, flags=re.S).group(1)
    assert "Verified by fine-tuning from fresh LoRA weights" in first and "best test accuracy in bold" in first
    assert "<td><b>chosen</b></td><td>0.700</td><td>0.6100</td>" in first


def test_groups_note_says_where_the_group_models_start(tmp_path):
    run = tmp_path / "run"
    write_fake_run(run)
    evaluation = json.loads((run / "groups_eval.json").read_text())
    evaluation["settings"] = {"init": "scratch", "epochs": 30, "lr": 0.003}
    (run / "groups_eval.json").write_text(json.dumps(evaluation))
    section = _section(build_report(run).read_text(encoding="utf-8"), "strategies")
    assert "each model: 30 Adam epochs at lr 0.003 from scratch (fresh weights)" in section
    evaluation["settings"] = {"epochs": 10, "lr": 0.003}  # written before groups.init existed
    (run / "groups_eval.json").write_text(json.dumps(evaluation))
    section = _section(build_report(run).read_text(encoding="utf-8"), "strategies")
    assert "each model: 10 Adam epochs at lr 0.003 from θ*" in section


def test_recommendation_headline_says_when_any_grouping_does_as_well(tmp_path):
    run = tmp_path / "run"
    write_fake_run(run)
    groups = json.loads((run / "groups.json").read_text())

    def headline(**fields) -> tuple[str, str]:
        groups["recommendation"].update(fields)
        (run / "groups.json").write_text(json.dumps(groups))
        text = build_report(run).read_text(encoding="utf-8")
        verdict = re.search(r'<section id="recommendation">.*?<div class="headline">(.*?)</div>', text, flags=re.S).group(1)
        card = re.search(r"advice: ([^<]*)", text).group(1)
        return verdict, card

    k = groups["k"]
    assert headline(split=True, groups_beat_random=True) == (f"Split the tasks into {k} groups", "split")
    assert headline(split=True, groups_beat_random=False) == (
        f"Split the tasks into {k} groups — any grouping of these sizes does about as well", "split (any grouping)")
    assert headline(split=False, groups_beat_random=False) == ("Keep one all-task model", "keep all-in-one")
