"""Rebuild the vendored BIG-bench task files (run once by a maintainer; not used at run time).

    pip download --no-deps bigbench==1.0.0 && tar xzf bigbench-1.0.0.tar.gz
    python raytag/lm/data/vendor_bigbench.py bigbench-1.0.0/bigbench/benchmark_tasks

Keeps, per task, up to ``PER_TASK`` seeded examples whose input has at most ``MAX_INPUT_CHARS``
characters, as JSONL lines ``{"input", "target", "choices"}`` (target = the highest-scoring choice).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TASKS = ("sports_understanding", "strategyqa", "implicatures", "navigate", "metaphor_boolean", "hyperbaton",
         "winowhy", "logical_fallacy_detection", "epistemic_reasoning", "social_support", "presuppositions_as_nli",
         "vitaminc_fact_verification", "movie_dialog_same_or_different", "social_iqa")
PER_TASK = 300
MAX_INPUT_CHARS = 400
SEED = 0


def vendor(source: Path, target: Path) -> None:
    for index, name in enumerate(TASKS):
        task = json.loads((source / name / "task.json").read_text())
        examples = [e for e in task["examples"] if isinstance(e.get("target_scores"), dict)
                    and len(e["input"].strip()) <= MAX_INPUT_CHARS and len(e["target_scores"]) >= 2]
        rng = np.random.default_rng((SEED, index))
        keep = np.sort(rng.choice(len(examples), size=min(PER_TASK, len(examples)), replace=False))
        lines = []
        for i in keep:
            scores = examples[i]["target_scores"]
            best = max(scores.values())
            winners = [c for c, s in scores.items() if s == best]
            if len(winners) != 1:
                continue  # ties have no single verbalized label
            lines.append(json.dumps({"input": " ".join(examples[i]["input"].split()), "target": winners[0].strip(),
                                     "choices": [c.strip() for c in scores]}, ensure_ascii=False))
        (target / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        print(name, len(lines))


if __name__ == "__main__":
    vendor(Path(sys.argv[1]), Path(__file__).parent / "bigbench")
