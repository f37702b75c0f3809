"""Screenshot of App.py's page after a prediction, taken in headless Chromium (docs/app.png).

    python App.py --CHECKPOINT=logs/demo/best.pt &          # the page, on 127.0.0.1:7860
    python tools/screenshot_app.py --out docs/app.png

Drives the page as a user would, over the Chrome DevTools protocol: picks the first example
(Test/example.png with its instance map), clicks a segment of the map at --point (x, y in the
photo's pixels), waits for the answer and saves the page as a PNG reduced to 256 colours.
Needs Debian's `chromium` and `pip install websocket-client` (not in requirements.txt: only
this tool uses it).
"""
import argparse
import base64
import io
import json
import os
import subprocess
import tempfile
import time
import urllib.request

import websocket
from PIL import Image


class Page:
    """One Chromium tab over the DevTools protocol (commands answered in order)."""

    def __init__(self, debug_port):
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json"))
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def send(self, method, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression, what, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"page: {what} did not appear within {timeout} s")

    def click(self, x, y):
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def point_on_image(page, selector, x, y):
    """Page coordinates of pixel (x, y) of the image shown in `selector`."""
    return page.evaluate(f"""(() => {{
        const img = document.querySelector('{selector} img');
        img.scrollIntoView({{block: 'center'}});
        const r = img.getBoundingClientRect();
        return [r.left + ({x} + 0.5) * r.width / img.naturalWidth,
                r.top + ({y} + 0.5) * r.height / img.naturalHeight];
    }})()""")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--out", default="docs/app.png")
    parser.add_argument("--point", default="69,158", help="x,y of the segment to click, in photo pixels")
    parser.add_argument("--size", default="1280,1000", help="browser window width,height")
    parser.add_argument("--chromium", default="chromium")
    parser.add_argument("--debug-port", type=int, default=9333)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split(","))
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            [args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--remote-debugging-port={args.debug_port}", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)
            page = Page(args.debug_port)
            page.send("Page.enable")
            page.send("Page.navigate", url=args.url)
            page.wait_for("!!document.querySelector('#examples button, #examples tr')", "the examples")
            page.evaluate("document.querySelector('#examples button, #examples tr').click()")
            page.wait_for("(() => { const i = document.querySelector('#map-view img');"
                          " const busy = document.querySelector('#map-view [data-testid=status-tracker]');"
                          " return i && i.complete && i.naturalWidth > 0 && busy.classList.contains('hide'); })()",
                          "the instance map")
            page.click(*point_on_image(page, "#map-view", *(int(v) for v in args.point.split(","))))
            page.wait_for("document.querySelector('#message').innerText.includes(' s')", "the answer")
            time.sleep(2)   # images fade in
            full = page.send("Page.getLayoutMetrics")["cssContentSize"]
            shot = page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                             clip={"x": 0, "y": 0, "width": width, "height": full["height"], "scale": 1})
        finally:
            browser.terminate()
            browser.wait(timeout=30)
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    image.quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out} ({image.width}x{image.height}, {os.path.getsize(args.out) // 1024} KB)")


if __name__ == "__main__":
    main()
