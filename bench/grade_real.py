"""Defect typing on real data: DeepPCB's annotated defects against the types the grader gives.

Every tested image of a DeepPCB-layout folder is inspected against its own template (the golden-template
mode of ``defectscan inspect --pairs``), and every annotated box (``annotations/<id>.txt``: ``x1 y1 x2 y2
type``, 1 open, 2 short, 3 mousebite, 4 spur, 5 spurious copper, 6 pin-hole) is matched with the graded
defect region that overlaps it most. Per DeepPCB type the script prints how many boxes were found
(any region overlapping), the types our rules gave them, and the mean severity.

Which of our types is "right" for a PCB defect is a judgement, stated here once: a broken or bridged
trace (open, short), a bite out of a trace (mousebite) and a spur change the shape of the copper at its
edges: ``structural``. Spurious copper is new copper on the substrate (``structural`` when it touches a
trace's edge, ``other`` when it lies alone on the substrate); a pin-hole is a hole inside the copper
(``color_scratch``: within the structure, or ``structural`` when it opens at an edge).

    .venv/bin/python bench/grade_real.py ../shared/datasets/deeppcb [--limit 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from defectscan.pipeline.images import decode_image  # noqa: E402
from defectscan.pipeline.inspection import inspect_pair  # noqa: E402
from defectscan.pipeline.pairs import PairComparer  # noqa: E402
from defectscan.worker.datasets import read_pairs  # noqa: E402
from defectscan.worker.storage import read_local  # noqa: E402

DEEPPCB_TYPES = {1: "open", 2: "short", 3: "mousebite", 4: "spur", 5: "copper", 6: "pin-hole"}
EXPECTED = {
    "open": {"structural"},
    "short": {"structural"},
    "mousebite": {"structural"},
    "spur": {"structural"},
    "copper": {"structural", "other"},
    "pin-hole": {"color_scratch", "structural"},
}


def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Intersection area of two ``x, y, w, h`` boxes."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pairs = read_pairs(args.root / "test_pairs.csv")[: args.limit]
    comparer = PairComparer(image_size=args.image_size)
    found: dict[str, int] = Counter()
    total: dict[str, int] = Counter()
    given: dict[str, Counter[str]] = defaultdict(Counter)
    severity: dict[str, list[float]] = defaultdict(list)
    for item in pairs:
        template = decode_image(read_local(item.template), str(item.template))
        result = inspect_pair(read_local(item.path), item.path.name, template, item.template.name, comparer)
        defects = [d for i in result.verdict.instances for d in i.defects]
        stem = item.path.name.split("_")[0]
        for line in (args.root / "annotations" / f"{stem}.txt").read_text().split("\n"):
            if not line.strip():
                continue
            x1, y1, x2, y2, code = (int(v) for v in line.split())
            kind = DEEPPCB_TYPES[code]
            total[kind] += 1
            box = (x1, y1, x2 - x1, y2 - y1)
            best = max(defects, key=lambda d: overlap(box, d.box), default=None)
            if best is None or overlap(box, best.box) == 0:
                given[kind]["not found"] += 1
                continue
            found[kind] += 1
            given[kind][best.type] += 1
            severity[kind].append(best.severity)
    report = {}
    print(f"{'DeepPCB type':10} {'boxes':>5} {'found':>6} {'as expected':>11} {'severity':>8}  our types")
    for kind in DEEPPCB_TYPES.values():
        if not total[kind]:
            continue
        right = sum(n for t, n in given[kind].items() if t in EXPECTED[kind])
        mean_sev = sum(severity[kind]) / max(len(severity[kind]), 1)
        report[kind] = {
            "boxes": total[kind],
            "found": found[kind] / total[kind],
            "typed_as_expected": right / max(found[kind], 1),
            "mean_severity": mean_sev,
            "types": dict(given[kind]),
        }
        row = report[kind]
        print(
            f"{kind:10} {total[kind]:5d} {row['found']:6.3f} {row['typed_as_expected']:11.3f} "
            f"{mean_sev:8.1f}  {dict(given[kind].most_common())}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
