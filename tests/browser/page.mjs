// Drive `stargan serve`'s page in Debian's chromium: upload a photo, change an attribute, wait for
// the result, compare it with the photo, save a screenshot. Prints one JSON line for tests/serve.rs.
//   node tests/browser/page.mjs URL PHOTO SCREENSHOT
import { chromium } from "playwright-core";

const [url, photoPath, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(url);
  await page.waitForFunction(() => document.querySelectorAll("#labels input[data-label]").length > 0);
  await page.setInputFiles("#file", photoPath);
  await page.waitForFunction(() => window.stargan.results >= 1 || window.stargan.lastError, null, { timeout: 60000 });
  // Change an attribute: the result is requested again.
  await page.click("#l_Male");
  await page.waitForFunction(() => window.stargan.results >= 2 || window.stargan.lastError, null, { timeout: 60000 });
  const v = await page.evaluate(async () => {
    if (window.stargan.lastError) return { error: window.stargan.lastError };
    const pixels = async (src) => {
      const bmp = await createImageBitmap(src);
      const c = document.createElement("canvas");
      c.width = bmp.width; c.height = bmp.height;
      const ctx = c.getContext("2d");
      ctx.drawImage(bmp, 0, 0);
      return ctx.getImageData(0, 0, c.width, c.height);
    };
    const a = await pixels(window.stargan.photo);
    const b = await pixels(document.getElementById("after"));
    if (a.width !== b.width || a.height !== b.height) return { error: `sizes ${a.width}x${a.height} vs ${b.width}x${b.height}` };
    const [x1, y1, x2, y2] = window.stargan.faces[0].box;
    const cx = (x1 + x2) / 2, cy = (y1 + y2) / 2, r = 1.5 * Math.max(x2 - x1, y2 - y1);
    let inside = 0, outside = 0;
    for (let y = 0; y < a.height; y++) {
      for (let x = 0; x < a.width; x++) {
        const i = 4 * (y * a.width + x);
        const changed = a.data[i] !== b.data[i] || a.data[i + 1] !== b.data[i + 1] || a.data[i + 2] !== b.data[i + 2];
        if (!changed) continue;
        if (x >= x1 && x <= x2 && y >= y1 && y <= y2) inside++;
        else if (Math.abs(x - cx) > r || Math.abs(y - cy) > r) outside++;
      }
    }
    return { faces: window.stargan.faces.length, results: window.stargan.results, inside_changed: inside, outside_changed: outside };
  });
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify(v));
  if (v.error) process.exitCode = 1;
} finally {
  await browser.close();
}
