"""Screenshots of a running hub's pages, for the README and docs/web.md.

    python scripts/screenshots.py --url http://127.0.0.1:8000 \\
        /:catalog.png /demo/upper-reverse:adapter.png

Drives Debian's Chromium (/usr/bin/chromium) with Playwright; it never
downloads a browser of its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="The hub's URL.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "screenshots")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--full-page", action="store_true", help="Capture the whole page, not the first screen.")
    parser.add_argument("pages", nargs="+", metavar="PATH:FILE")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        for item in args.pages:
            path, _, name = item.rpartition(":")
            page.goto(args.url.rstrip("/") + path)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(args.out / name), full_page=args.full_page)
            print(f"{path} -> {args.out / name}")
        browser.close()


if __name__ == "__main__":
    main()
