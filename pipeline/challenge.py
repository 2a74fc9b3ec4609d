"""Tables of runs: the Rijksmuseum Challenge 2014's metrics in its layout, the paper's Table 2 with the published
figures beside ours, and one row per run for comparing backbones (the paper's Stage 1)."""
from typing import Optional

__all__ = ["challenge_tables", "paper_table", "compare_runs", "comparison_markdown", "PAPER_TABLE_2"]

# OmniArt paper Table 2 (Rijks'14, challenge protocol): artist MCA@1 % on 374+u, 374, 300, 200, 100 creators;
# type and material iMAP %; period MAE in years
PAPER_ROWS = ("374+u", "374", "300", "200", "100", "type iMAP", "material iMAP", "year MAE")
PAPER_TABLE_2 = {
    "OmniArt (paper)": (52.2, 67.0, 70.8, 74.0, 78.5, 93.7, 98.0, 70.1),
    "Mensink et al. (paper)": (52.8, 66.5, 68.7, 72.1, 76.3, 91.4, 94.7, 72.4),
    "single-task CNN (paper)": (50.3, 63.9, 69.5, 72.5, 76.7, 91.7, 97.2, 71.2),
}


def _cell(value, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if percent else f"{value:.1f}"


def challenge_tables(result: dict, split: str = "test") -> str:
    """Markdown: creator MCA@1..5 per subset (with data usage), type/material interpolated mAP/imAP per class
    subset, year RMSE/MAE/within-50 against the training mean."""
    parts = []
    creator = result.get("creator")
    if creator:
        lines = [f"creators ({split}) | classes | data usage % | MCA@1 | MCA@2 | MCA@3 | MCA@4 | MCA@5",
                 "|".join(["---"] * 8)]
        for name, row in creator.items():
            label = f"{row['classes'] - 1}+u (all)" if name == "all" else name
            lines.append(" | ".join([label, str(row["classes"]), _cell(row["data_usage"])]
                                    + [_cell(row[f"mca@{k}"]) for k in range(1, 6)]))
        parts.append("\n".join("| " + line + " |" for line in lines))
    for task in ("type", "material"):
        if task in result:
            lines = [f"{task} ({split}) | classes | objects | mAP (11-pt) | imAP (11-pt) | imAP (11-pt, objects with "
                     "a positive) | mAP (plain) | imAP (plain)", "|".join(["---"] * 8)]
            for name, row in result[task].items():
                lines.append(" | ".join([name, str(row["classes"]), str(row["objects"]), _cell(row["map"]),
                                         _cell(row["imap"]), _cell(row["imap_labelled"]), _cell(row["map_plain"]),
                                         _cell(row["imap_plain"])]))
            parts.append("\n".join("| " + line + " |" for line in lines))
    year = result.get("year")
    if year and year["model"]:
        lines = [f"year ({split}, {year['objects']} objects) | RMSE (sqLoss) | MAE (absLoss) | within 50 years %",
                 "|".join(["---"] * 4)]
        for name, row in (("model", year["model"]), ("training mean", year["training_mean"])):
            lines.append(" | ".join([name, _cell(row["rmse"], False), _cell(row["mae"], False), _cell(row["within_50"])]))
        parts.append("\n".join("| " + line + " |" for line in lines))
    return "\n\n".join(parts)


def _ours(result: dict) -> tuple:
    creator, year = result.get("creator", {}), result.get("year") or {}

    def mca(name: str) -> Optional[float]:
        row = creator.get(name)
        return None if row is None else 100 * row["mca@1"]

    def imap(task: str) -> Optional[float]:
        row = result.get(task, {}).get("all")
        return None if row is None or row["imap"] is None else 100 * row["imap"]

    return (mca("all"), mca("374"), mca("300"), mca("200"), mca("100"), imap("type"), imap("material"),
            (year.get("model") or {}).get("mae"))


def paper_table(result: dict) -> str:
    """The paper's Table 2 rows with its OmniArt, Mensink et al. and single-task figures beside this run's."""
    columns = {"this run": _ours(result), **PAPER_TABLE_2}
    lines = ["| row | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for index, row in enumerate(PAPER_ROWS):
        cells = ["-" if values[index] is None else f"{values[index]:.1f}" for values in columns.values()]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(artist rows: creator MCA@1 %, on 374 creators + the rest class and on the top-N " \
                              "subsets; type/material: 11-point interpolated iMAP %; year: MAE in years)"


_COMPARED = (("artist", "accuracy", "artist accuracy"), ("type", "map", "type MAP"), ("material", "map", "material MAP"),
             ("year", "mae", "year MAE"))


def compare_runs(runs: list) -> list:
    """One row per run directory: its backbone, weights, feature size, shared size, test metrics (omniart's, and
    the challenge's creator MCA@1 / type and material imAP when the run has them) and training seconds."""
    import json
    from pathlib import Path

    from omniart.pipeline import PipelineError

    rows = []
    for run in runs:
        run = Path(run)
        try:
            info = json.loads((run / "config.json").read_text())
            metrics = json.loads((run / "metrics.json").read_text())
        except (OSError, ValueError) as error:
            raise PipelineError(f"{run} is not a readable run ({type(error).__name__}: {error}); pass --out folders of "
                                "`omni-heads fit`.") from error
        attrs, test = info.get("cache_attrs", {}), metrics.get("test", {})
        row = {"run": str(run), "backbone": attrs.get("backbone"), "weights": attrs.get("weights"),
               "feature_dim": attrs.get("feature_dim"), "shared_size": info.get("model", {}).get("shared_size"),
               "protocol": info.get("labels", {}).get("protocol", "omniart")}
        for task, metric, name in _COMPARED:
            row[name] = (test.get(task) or {}).get(metric)
        challenge = (metrics.get("rijks14_challenge") or {}).get("test")
        if challenge:
            row["MCA@1 374+u"] = challenge.get("creator", {}).get("all", {}).get("mca@1")
            for task in ("type", "material"):
                row[f"{task} iMAP (11-pt)"] = (challenge.get(task, {}).get("all") or {}).get("imap")
        row["train seconds"] = metrics.get("train_seconds")
        rows.append(row)
    return rows


def comparison_markdown(rows: list) -> str:
    """compare_runs' rows as one markdown table (columns present in any row)."""
    columns = list(dict.fromkeys(name for row in rows for name in row))

    def cell(value):
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(name)) for name in columns) + " |" for row in rows]
    return "\n".join(lines)
