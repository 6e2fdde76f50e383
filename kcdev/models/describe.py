"""A dry run of fetch-model: what a real run would fetch, from where, into where.

Only metadata is looked up (the Hub's file list, the package index's wheels): no file is written,
and a source that cannot be asked now is said to be so rather than failing the dry run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kcdev import paths
from kcdev.console import human_size
from kcdev.errors import UserError
from kcdev.models.download import SourceFailed
from kcdev.models.hub import select_snapshot
from kcdev.models.plan import FilePlan, HubSource, Plan, SnapshotPlan
from kcdev.models.sources import Sources


def describe(plan: Plan, sources: Sources, env_file: Path, no_env: bool) -> list[str]:
    """The dry run's lines, first to last."""
    lines = [f"would fetch {plan.what}"]
    if plan.licence:
        lines.append(f"  licence: {plan.licence}")
    if isinstance(plan, FilePlan):
        lines += _describe_file(plan, sources)
    else:
        lines += _describe_snapshot(plan, sources)
    key, value = plan.env
    lines.append(
        f"  {env_file.name}: left as it is (--no-env)"
        if no_env
        else f"  {env_file.name}: would set {key}={value}"
    )
    lines.append("dry run: nothing was downloaded or changed")
    return lines


def _describe_file(plan: FilePlan, sources: Sources) -> list[str]:
    lines = []
    if plan.digest is None and isinstance(source := plan.sources[0], HubSource):
        try:
            found = sources.hub.file(source.repo, source.path, source.revision)
            plan = dataclasses.replace(plan, digest=found.digest, size=found.size)
        except SourceFailed as exc:
            lines.append(f"  size and checksum: unknown now ({exc})")
    if plan.digest is not None:
        size = f"{human_size(plan.size)} ({plan.size} bytes), " if plan.size else ""
        lines.append(f"  {size}{plan.digest}")
    there = " (already there)" if plan.dest.exists() else ""
    lines.append(f"  into {paths.shown(plan.dest)}{there}")
    lines.append("  from the first of these that delivers it:")
    for i, source in enumerate(plan.sources, 1):
        lines += [f"    {i}. {line}" if n == 0 else f"       {line}"
                  for n, line in enumerate(sources.describe(source))]  # fmt: skip
    return lines


def _describe_snapshot(plan: SnapshotPlan, sources: Sources) -> list[str]:
    try:
        commit, files = sources.hub.snapshot(plan.repo, plan.revision)
        chosen = select_snapshot(files, plan.repo, plan.patterns, plan.allow_pickle)
    except UserError as exc:  # SourceFailed, or a repo that is no vLLM model
        return [f"  files: cannot list them now ({exc})", f"  into {paths.shown(plan.dest)}"]
    total = sum(f.size for f in chosen)
    lines = [f"  {len(chosen)} files at {commit[:12]}, {human_size(total)}:"]
    lines += [f"    {f.url} ({human_size(f.size)})" for f in chosen]
    there = " (already there)" if plan.dest.exists() else ""
    lines.append(f"  into {paths.shown(plan.dest)}{there}")
    return lines
