"""MkDocs hook: the command-line reference (`cli.md`) is generated from the parser itself, so the
page and `acdc-bench --help` can never disagree. A page marks the place with ``<!-- cli-reference -->``."""

from __future__ import annotations

MARKER = "<!-- cli-reference -->"


def _reference() -> str:
    import argparse
    import os

    from acdc_bench.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the page is the same on every machine

    parser = build_parser()
    parts = ["### acdc-bench", "", "```text", parser.format_help().rstrip(), "```", ""]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        parts += [f"### acdc-bench {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, _reference())
    return markdown
