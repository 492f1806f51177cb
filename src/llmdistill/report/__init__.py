"""Reports: metrics.json, report.md and report.html on disk, a summary table on the terminal.

The HTML report needs matplotlib (the `report` extra), so its functions are imported on first
use: reading metrics or writing Markdown never pays for, or depends on, matplotlib.
"""

from typing import Any

from llmdistill.report.markdown import print_summary, render_markdown, summary_rows, write_report

__all__ = ["print_summary", "render_html", "render_markdown", "rerender", "summary_rows",
           "write_html", "write_report"]
_HTML = ("render_html", "rerender", "write_html")


def __getattr__(name: str) -> Any:
    if name in _HTML:
        from llmdistill.report import html

        return getattr(html, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
