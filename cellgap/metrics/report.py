"""A readable plain-text table of a `MetricsReport`, as `cellgap evaluate` prints it."""
from __future__ import annotations

from cellgap.metrics.instance import INSTANCE_METRICS
from cellgap.metrics.results import MetricsReport

_LABELS = {"pq": "PQ", "dq": "DQ", "sq": "SQ", "aji": "AJI", "aji_plus": "AJI+", "dice1": "DICE1", "dice2": "DICE2"}


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def format_report(report: MetricsReport) -> str:
    """Instance scores with the images each used, pooled detection, per-class table, CoNIC and PanNuke."""
    n = report.n_images
    lines = [f"{n} image{'s' if n != 1 else ''}, {len(report.class_names)} classes", ""]
    inst = report.instance
    lines.append("Instance (HoVer-Net definitions, mean over images)")
    lines += _table(["metric", "value", "images used"],
                    [[_LABELS[m], _value(getattr(inst, m)), f"{inst.n_used[m]}/{n}"] for m in INSTANCE_METRICS])
    det = report.detection
    lines += ["", f"Detection (HoVer-Net, pooled over images, radius {det.radius:g} px)"]
    lines += _table(["F_d", "precision", "recall", "type accuracy"],
                    [[_value(det.f1_d), _value(det.precision_d), _value(det.recall_d), _value(det.acc_type)]])
    if report.class_names:
        lines += ["", "Per class"]
        rows = [[f"{key} {name}", _value(det.f_c.get(key)), _value(report.conic.pq_plus.get(key)),
                 _value(report.pannuke.pq_per_class.get(key)), _value(report.conic.r2_per_class.get(key))]
                for key, name in report.class_names.items()]
        lines += _table(["class", "F_c", "PQ+ (CoNIC)", "PQ (PanNuke)", "R^2 (counts)"], rows)
    lines += ["", f"CoNIC: mPQ+ {_value(report.conic.mpq_plus)}   multi-class R^2 {_value(report.conic.r2)}",
              f"PanNuke: mPQ {_value(report.pannuke.mpq)}   bPQ {_value(report.pannuke.bpq)}"]
    if report.pannuke.tissue:
        lines += _table(["tissue", "mPQ", "bPQ"],
                        [[name, _value(t.mpq), _value(t.bpq)] for name, t in report.pannuke.tissue.items()])
    return "\n".join(lines) + "\n"
