// Times the OHIF viewer in a real Chromium (playwright-core, /usr/bin/chromium): from
// opening the viewer URL to the first image painted on the canvas, and to every frame of
// the series received.  Started by benches/test_viewer_bench.py:
//   node viewer_timing.js BASE_URL STUDY_UID FRAMES RUNS [COOKIE_NAME COOKIE_VALUE]
// Each run is a new browser context (an empty HTTP cache, as Chromium's contexts are):
// "cold" opens the viewer URL at once; "warm" first shows the study list (OHIF's files
// then in the cache, a radiologist's normal case) and then opens the viewer URL.  Frames
// are never cached between runs.  Prints one JSON line.
'use strict';
const { chromium } = require(process.env.PACSCORE_PLAYWRIGHT || 'playwright-core');

const [base, study, framesArg, runsArg, cookieName, cookieValue] = process.argv.slice(2);
const frames = Number(framesArg);
const runs = Number(runsArg);
const executablePath = process.env.PACSCORE_CHROMIUM || '/usr/bin/chromium';
const gated = process.env.PACSCORE_VIEWER_PROBE !== 'full';

function drawnInPage(gated) {
  // The first image is painted once the viewport's canvas holds a picture (not one flat
  // colour).  Reading the canvas back (getImageData) is costly under SwiftShader and runs
  // on the page's main thread, the one that paints: polled every 20 ms from the first
  // canvas on, it took 40-100 % of that thread until the paint (V8 CPU profile,
  // 2026-12-04) and so slowed what it measured.  Gated (the default), the canvas is read
  // only once cornerstone's viewport holds an image (a few property reads before).
  // PACSCORE_VIEWER_PROBE=full polls the canvas from the start, as before.
  if (gated) {
    const cs = window.cornerstone;
    const el = cs && cs.getEnabledElements && cs.getEnabledElements()[0];
    const vp = el && el.viewport;
    if (!vp || !vp.getImageData || !vp.getImageData()) return false;
  }
  const c = document.querySelector('canvas.cornerstone-canvas');
  if (!c || !c.width || !c.height) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let min = 255, max = 0;
  for (let i = 0; i < d.length; i += 4 * 97) { min = Math.min(min, d[i]); max = Math.max(max, d[i]); }
  return max - min > 40;
}

async function once(browser, warm) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  if (cookieName) {
    await context.addCookies([{ name: cookieName, value: cookieValue, url: base }]);
  }
  const page = await context.newPage();
  const seen = new Set();
  let bytes = 0;
  let allAt = null;
  let started = null;
  page.on('requestfinished', async (req) => {
    const url = req.url();
    if (!url.includes('/frames/') || started === null) return;
    const sizes = await req.sizes().catch(() => null);
    if (sizes) bytes += sizes.responseBodySize;
    seen.add(url);
    if (seen.size >= frames && allAt === null) allAt = Date.now();
  });
  if (warm) {
    await page.goto(`${base}/viewer/`);
    await page.waitForLoadState('networkidle').catch(() => {});
  }
  started = Date.now();
  await page.goto(`${base}/viewer/viewer?StudyInstanceUIDs=${study}`);
  await page.waitForFunction(drawnInPage, gated, { timeout: 120000, polling: 20 });
  const first = Date.now() - started;
  const deadline = Date.now() + 180000;
  while (allAt === null && Date.now() < deadline) await page.waitForTimeout(50);
  const result = { warm, firstImageMs: first, allFramesMs: allAt && allAt - started,
                   framesReceived: seen.size, frameBytes: bytes };
  await context.close();
  return result;
}

(async () => {
  const out = { runs: [] };
  const browser = await chromium.launch({
    executablePath, headless: true,
    args: ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
           '--ignore-gpu-blocklist'],
  });
  try {
    for (let i = 0; i < runs; i += 1) {
      out.runs.push(await once(browser, false));
      out.runs.push(await once(browser, true));
    }
  } catch (e) {
    out.error = String(e && e.stack || e);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
})();
