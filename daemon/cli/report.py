"""The end-of-run report of `dropforge once`, in the format of the user's batch tool."""

from __future__ import annotations

from pathlib import Path

from daemon.errors import about
from daemon.runtime.once import OnceReport
from daemon.runtime.worker import Outcome

TAGS = {
    Outcome.done: "[SUCCESS]",
    Outcome.failed: "[FAILED] ",
    Outcome.waiting: "[WAITING]",
    Outcome.interrupted: "[STOPPED]",
}


def _short(path: str, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path


def texture_line(report: OnceReport) -> str:
    """``Enabled`` / ``Disabled`` for the meshes made, else for the configured default."""
    on, meshes = report.textures
    if meshes == 0:
        return "Enabled" if report.texture else "Disabled"
    if on == meshes:
        return "Enabled"
    return "Disabled" if on == 0 else f"Enabled for {on} of {meshes} meshes"


def format_report(report: OnceReport, base: Path) -> str:
    """Render the report: folders, counts, one line per job, totals and averages."""
    lines = ["Batch Generation Report", "======================="]
    for folder in report.folders:
        lines.append(f"Folder: {_short(folder, base)}")
    lines.append(f"Quality: {', '.join(report.presets)}")
    lines.append(f"Texture: {texture_line(report)}")
    lines.append("")
    lines.append(f"Inputs Found: {report.found}")
    lines.append(f"Skipped (existing): {report.skipped}")
    lines.append(f"Processed: {len(report.processed)}")
    if report.waiting:
        lines.append(f"Waiting: {len(report.waiting)}")
    lines.append("")
    lines.append("Results")
    lines.append("-------")
    if not report.results:
        lines.append("(nothing to do)")
    for r in report.results:
        tag = TAGS.get(r.outcome, f"[{r.outcome.value.upper()}]")
        if r.outcome is Outcome.done:
            lines.append(
                f"{tag} {r.rel} -> {_short(r.out_dir, base)} ({r.message}, {r.seconds:.1f} seconds)"
            )
        elif r.outcome is Outcome.failed:
            lines.append(f"{tag} {r.rel} -> Error: {about(r.rel, r.message)}")
        else:
            lines.append(f"{tag} {r.rel} -> {about(r.rel, r.message)}")
    if report.previously_failed:
        lines.append("")
        lines.append(
            "Still failed (unchanged since the last run; fix the input or `dropforge retry`)"
        )
        for rel, message in report.previously_failed:
            lines.append(f"[FAILED]  {rel} -> Error: {about(rel, message)}")
    if report.deferred:
        lines.append("")
        lines.append("Not ready (looked at again next run)")
        for rel, message in report.deferred:
            lines.append(f"[LATER]   {rel} -> {message}")
    if report.refused:
        lines.append("")
        lines.append("Refused")
        for path, message in report.refused:
            lines.append(f"[REFUSED] {_short(path, base)} -> {message}")
    done = [r for r in report.results if r.outcome is Outcome.done]
    lines.append("")
    lines.append("Summary")
    lines.append("-------")
    lines.append(f"Successful: {len(done)}")
    lines.append(f"Failed: {len(report.failed)}")
    if report.waiting:
        lines.append(f"Waiting: {len(report.waiting)}")
    lines.append(f"Total Time: {report.seconds / 60:.1f} minutes")
    if done:
        average = sum(r.seconds for r in done) / len(done)
        lines.append(f"Average Time: {average:.1f} seconds per job")
    return "\n".join(lines) + "\n"
