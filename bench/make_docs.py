"""Regenerate the tables of ``docs/benchmarks.md`` from ``bench/results/*.json``.

Each result file (written by :func:`harness.write_result`) becomes one block between the markers
``<!-- results: NAME -->`` and ``<!-- /results: NAME -->``: its tables, and under them the command
that produced them, the machine, threads, torch version, date and load average from the JSON.
Text outside the markers is kept as written; a result without markers is appended at the end.

    python bench/make_docs.py [--results bench/results] [--docs docs/benchmarks.md] [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- results: (?P<name>[\w.-]+) -->\n.*?<!-- /results: (?P=name) -->", re.S)


def cell(value: Any, fmt: str) -> str:
    """One table cell: ``None`` as an en dash, numbers through ``fmt``, ``|`` escaped."""
    if value is None:
        return "–"
    if fmt and isinstance(value, (int, float)) and not isinstance(value, bool):
        text = format(value, fmt)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(spec: Mapping[str, Any]) -> str:
    columns = spec["columns"]
    lines = [
        f"**{spec['title']}**",
        "",
        "| " + " | ".join(c["header"] for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in spec["rows"]:
        lines.append("| " + " | ".join(cell(row.get(c["key"]), c.get("fmt", "")) for c in columns) + " |")
    if spec.get("notes"):
        lines += ["", spec["notes"]]
    return "\n".join(lines)


def provenance(env: Mapping[str, Any]) -> str:
    """One line: command, machine, threads, torch, date, load average before and after."""
    load = env.get("load_average") or [None]
    after = env.get("load_average_after") or [None]
    load_text = f"{load[0]:.2f} → {after[0]:.2f}" if load[0] is not None and after[0] is not None else "–"
    commit = f" at `{env['git_commit']}`" if env.get("git_commit") else ""
    return (
        f"*Produced by `{env.get('command', '?')}`{commit} on {env.get('device', '?')} "
        f"({env.get('threads', '?')} threads of {env.get('cpu_count', '?')} CPUs), torch {env.get('torch', '?')}, "
        f"{env.get('date', '?')}; 1-min load average {load_text}.*"
    )


def render_goals(result: Mapping[str, Any]) -> str:
    """The benchmark's goals in this run and in the run before it (``harness.goal``, ``previous``)."""
    previous = result.get("previous") or {}
    before = {g["goal"]: g for g in previous.get("goals", [])}
    when = f"{previous.get('date', '?')}, `{previous.get('git_commit', '?')}`" if previous else "none recorded"
    env = result.get("environment", {})
    lines = [
        "**Goals in this run and the one before**",
        "",
        f"| goal | target | previous run ({when}) | this run ({env.get('date', '?')}) | held in both |",
        "|---|---|---|---|---|",
    ]
    for g in result["goals"]:
        old = before.get(g["goal"], {})
        both = (
            "yes" if g["held"] and old.get("held") else "no" if g["held"] is False or old.get("held") is False else "–"
        )
        sign = "≥" if g.get("higher_is_better", True) else "≤"
        lines.append(
            f"| {g['goal']} | {sign} {g['target']:.2f} | {cell(old.get('value'), '.2f')} | "
            f"{cell(g['value'], '.2f')} | {both} |"
        )
    return "\n".join(lines)


def render_block(result: Mapping[str, Any]) -> str:
    name = result["name"]
    parts = [render_table(t) for t in result.get("tables", [])]
    if result.get("goals"):
        parts.append(render_goals(result))
    parts.append(provenance(result.get("environment", {})))
    body = "\n\n".join(parts)
    return f"<!-- results: {name} -->\n{body}\n<!-- /results: {name} -->"


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    results = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            data.setdefault("name", path.stem)
            if not isinstance(data.get("tables"), list):
                raise ValueError("no 'tables' list")
        except (ValueError, json.JSONDecodeError) as error:
            raise SystemExit(f"make_docs: {path}: not a benchmark result ({error})") from None
        results[data["name"]] = data
    return results


def update(text: str, results: Mapping[str, Mapping[str, Any]]) -> str:
    """``text`` with every marked block replaced and unmarked results appended."""
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in results:
            return match[0]  # a result file was removed: keep what the page said
        seen.add(name)
        return render_block(results[name])

    text = BLOCK.sub(replace, text)
    for name, result in results.items():
        if name not in seen:
            heading = result.get("title", name)
            text = text.rstrip("\n") + f"\n\n## {heading}\n\n{render_block(result)}\n"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is not up to date")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    old = args.docs.read_text() if args.docs.exists() else "# Benchmarks\n"
    new = update(old, results)
    if args.check:
        if new != old:
            print(f"{args.docs} is out of date: run python bench/make_docs.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(new)
    print(f"{args.docs}: {len(results)} result file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
