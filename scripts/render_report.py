"""Screenshot a run's HTML report with headless Chromium, to look at it without a browser window.

    python scripts/render_report.py RUN_DIR [--out PNG] [--height PX]   (default PNG: RUN_DIR/report/screenshot.png)

Needs the `chromium` binary (Debian/Ubuntu: apt-get install chromium); the project itself does not.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1400, 4000


def find_chromium() -> str | None:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def render(report: Path, out: Path, binary: str, height: int = HEIGHT, timeout: float = 120.0) -> None:
    """Write a screenshot of the top WIDTH x height pixels of report (an HTML file) to out."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="render-report-") as profile:
        command = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{height}",
            "--hide-scrollbars",
            f"--screenshot={out.resolve()}",
            report.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not out.exists():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"chromium failed (exit {result.returncode}): {last}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory holding report/index.html")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default RUN_DIR/report/screenshot.png)")
    parser.add_argument(
        "--height",
        type=int,
        default=HEIGHT,
        help=f"window height in pixels (default {HEIGHT}); the page below it is cut",
    )
    args = parser.parse_args(argv)
    report = args.run_dir / "report" / "index.html"
    if not report.is_file():
        print(
            f"error: {report}: no report (run the report stage or pipeline.report.write_report first)", file=sys.stderr
        )
        return 2
    binary = find_chromium()
    if binary is None:
        print("error: chromium is not installed (Debian/Ubuntu: apt-get install chromium)", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "report" / "screenshot.png"
    try:
        render(report, out, binary, args.height)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
