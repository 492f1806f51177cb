"""Reports: metrics.json and report.md on disk, a summary table on the terminal."""

from llmdistill.report.markdown import print_summary, render_markdown, summary_rows, write_report

__all__ = ["print_summary", "render_markdown", "summary_rows", "write_report"]
