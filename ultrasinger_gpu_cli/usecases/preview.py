"""``ugpu preview``: a chart drawn as a piano roll (:mod:`..preview`), from a song folder or a
chart file, with the run's pitch track where the folder has it and another chart over it."""

from __future__ import annotations

from pathlib import Path

from ultrasinger_gpu_cli.song import preview
from ultrasinger_gpu_cli.song.evaluation import Evaluation, chart_files, load_chart

def find_chart(target: Path) -> Path:
    """The chart a path means: a chart file itself, or the one chart in a song folder."""
    if not target.exists():
        raise preview.PreviewError(f"{target}: no such song folder or chart")
    if target.is_file():
        return target
    charts = chart_files(target, recursive=False)
    if len(charts) == 1:
        return charts[0]
    if not charts:
        raise preview.PreviewError(f"{target}: the folder holds no UltraStar chart (.txt with #BPM)",
                                   hint="give a song folder ugpu run wrote, or the chart's .txt")  # fmt: skip
    raise preview.PreviewError(f"{target}: the folder holds {len(charts)} charts ({', '.join(p.name for p in charts[:4])})",
                               hint="give the chart's .txt")  # fmt: skip


def preview_chart(target: Path, output: Path | None = None, *, reference: Path | None = None,
                  row_s: float = preview.ROW_S) -> list[preview.Page]:  # fmt: skip
    """Draw the chart at ``target`` into ``output`` (default: ``preview.png`` beside the chart)."""
    chart_path = find_chart(target)
    chart = load_chart(chart_path)
    reference_path = find_chart(reference) if reference is not None else None
    other = load_chart(reference_path) if reference_path is not None else None
    out = output if output is not None else chart_path.parent / preview.PREVIEW_NAME
    label = "reference" if reference_path is None else f"reference: {reference_path.name}"
    return preview.render(chart, out, pitch=preview.pitch_track_of(chart_path), reference=other, reference_label=label,
                          row_s=row_s)  # fmt: skip


def write_overlays(evaluation: Evaluation, folder: Path) -> list[Path]:
    """``ugpu eval --overlay``: each scored chart drawn with its reference over it, one image per
    song (per singer of a duet) in ``folder``; returns the images written."""
    from ultrasinger_gpu_cli.song.ultrastar import P1, P2, safe_name

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise preview.PreviewError(f"{folder}: cannot make the overlay folder ({exc.strerror})") from exc
    written: list[Path] = []
    for s in evaluation.scores:
        generated, reference = load_chart(Path(s.generated)), load_chart(Path(s.reference))
        if s.singer is not None:
            section = P1 if s.singer == "P1" else P2
            generated, reference = generated.part(section), reference.part(section)
        pages = preview.render(generated, folder / f"{safe_name(s.name)}.png", reference=reference, title=s.name,
                               pitch=preview.pitch_track_of(Path(s.generated)),
                               reference_label=f"reference: {Path(s.reference).name}")  # fmt: skip
        written += [page.path for page in pages]
    return written
