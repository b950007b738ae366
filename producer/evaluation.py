"""The metrics table that ``defectscan evaluate`` prints."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_metrics(result: dict[str, object], console: Console) -> None:
    model = result["model"]
    assert isinstance(model, dict)
    described = " ".join(f"{k} {v}" for k, v in model.items() if v is not None)
    table = Table(title=escape(f"{described}; TTA {','.join(result['tta'])}"))  # type: ignore[arg-type]
    table.add_column("metric")
    table.add_column("value", justify="right")

    def fmt(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    for key in ("images", "good", "defective", "image_auroc", "pixel_auroc", "aupro", "f1_at_threshold"):
        if key in result:
            table.add_row(key, fmt(result[key]))
    per_type = result.get("per_type", {})
    assert isinstance(per_type, dict)
    for kind, values in per_type.items():
        table.add_row(escape(f"image_auroc[{kind}] (n={values['count']})"), fmt(values["image_auroc"]))
    timings = result.get("timings", {})
    assert isinstance(timings, dict)
    table.add_row("ms per image", fmt(timings.get("ms_per_image")))
    console.print(table)
