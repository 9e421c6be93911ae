// Drives the OHIF viewer served by pacscore in a real Chromium (playwright-core, the
// system's /usr/bin/chromium: no browser download).  Started by tests/test_viewer_browser.py:
//   node viewer_flow.js BASE_URL USER PASSWORD STUDY_UID PATIENT_NAME OUT_DIR [EXTRAS_JSON]
// EXTRAS_JSON: {"share": LINK, "other": STUDY_UID, "us": STUDY_UID, "mg": STUDY_UID}
// (issue 20.3 and 20.6 checks).  Prints one JSON line: what it saw and how long it took;
// screenshots go to OUT_DIR.
'use strict';
const path = require('path');
const { chromium } = require(process.env.PACSCORE_PLAYWRIGHT || 'playwright-core');

const [base, user, password, study, patientName, out, extrasArg] = process.argv.slice(2);
const extras = JSON.parse(extrasArg || '{}');
const executablePath = process.env.PACSCORE_CHROMIUM || '/usr/bin/chromium';

function drawnInPage() {
  // The viewport's 2D canvas holds a picture (not one flat colour) once an image is drawn.
  const c = document.querySelector('canvas.cornerstone-canvas');
  if (!c || !c.width || !c.height) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let min = 255, max = 0;
  for (let i = 0; i < d.length; i += 4 * 97) { min = Math.min(min, d[i]); max = Math.max(max, d[i]); }
  return max - min > 40;
}

async function canvasDrawn(page) {
  return page.evaluate(drawnInPage);
}

function viewportState() {
  // What cornerstone (window.cornerstone, set by OHIF) holds for the first viewport.
  const cs = window.cornerstone;
  if (!cs || !cs.getEnabledElements) return null;
  const el = cs.getEnabledElements()[0];
  if (!el || !el.viewport) return null;
  const vp = el.viewport;
  const props = vp.getProperties ? vp.getProperties() : {};
  const data = vp.getImageData ? vp.getImageData() : null;
  return { voi: props.voiRange || null,
           index: vp.getCurrentImageIdIndex ? vp.getCurrentImageIdIndex() : null,
           count: vp.getImageIds ? vp.getImageIds().length : null,
           dimensions: data && data.dimensions ? Array.from(data.dimensions) : null };
}

async function openStudy(page, uid) {
  await page.goto(`${base}/viewer/viewer?StudyInstanceUIDs=${uid}`);
  await page.waitForSelector('canvas.cornerstone-canvas', { timeout: 60000 });
  await page.waitForFunction(drawnInPage, null, { timeout: 60000, polling: 50 });
  await page.waitForTimeout(1500);
  const box = await (await page.$('canvas.cornerstone-canvas')).boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
}

async function saveCanvas(page, file) {
  // The viewport's own pixels (toDataURL): no HTML overlays, tours or annotations.
  const url = await page.evaluate(
    () => document.querySelector('canvas.cornerstone-canvas').toDataURL('image/png'));
  require('fs').writeFileSync(file, Buffer.from(url.split(',')[1], 'base64'));
}

(async () => {
  const result = { steps: [] };
  const browser = await chromium.launch({
    executablePath, headless: true,
    args: ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
           '--ignore-gpu-blocklist'],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const failed = [];
    const consoleErrors = [];
    result.failedRequests = failed;
    result.consoleErrors = consoleErrors;
    page.on('response', r => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`); });
    page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text().slice(0, 1200)); });
    page.on('pageerror', e => consoleErrors.push(String(e).slice(0, 300)));
    result.page = page;
    // 1. The viewer asks for a login first.
    await page.goto(`${base}/viewer/`);
    result.loginUrl = new URL(page.url()).pathname;
    await page.fill('input[name=username]', user);
    await page.fill('input[name=password]', password);
    await Promise.all([page.waitForURL(u => new URL(u).pathname.startsWith('/viewer/')),
                       page.click('button[type=submit]')]);
    result.steps.push('logged in');
    // 2. The study list shows the archive's study (QIDO-RS with the session cookie).
    await page.getByText(patientName, { exact: true }).first().waitFor({ timeout: 60000 });
    result.studyListShowsPatient = true;
    // Search by patient name (the list's first filter): a prefix finds it, another hides it.
    const filter = page.locator('input').first();
    await filter.fill('NOBODY');
    await page.getByText(patientName, { exact: true }).first().waitFor({ state: 'detached', timeout: 30000 });
    await filter.fill(patientName.slice(0, 4));
    await page.getByText(patientName, { exact: true }).first().waitFor({ timeout: 30000 });
    result.searchFinds = true;
    await page.screenshot({ path: path.join(out, 'study-list.png') });
    result.steps.push('study list');
    // 3. Open the CT in the viewer; time to the first image drawn.
    const started = Date.now();
    await page.goto(`${base}/viewer/viewer?StudyInstanceUIDs=${study}`);
    await page.waitForSelector('canvas.cornerstone-canvas', { timeout: 60000 });
    await page.waitForFunction(drawnInPage, null, { timeout: 60000, polling: 50 });
    result.firstImageMs = Date.now() - started;
    await page.waitForTimeout(1500);  // let progressive loading and overlays settle
    const skipTour = page.getByText('Skip all');  // OHIF's first-visit tour, if shown
    if (await skipTour.count()) await skipTour.first().click().catch(() => {});
    result.drawn = await canvasDrawn(page);
    await saveCanvas(page, path.join(out, 'slice-first.png'));
    await page.screenshot({ path: path.join(out, 'viewer.png') });
    // 4. Scroll to the last slice with the mouse wheel over the image.
    const box = await (await page.$('canvas.cornerstone-canvas')).boundingBox();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    for (let i = 0; i < 4; i += 1) {
      await page.mouse.wheel(0, 120);
      await page.waitForTimeout(400);
    }
    await page.waitForTimeout(1000);
    await saveCanvas(page, path.join(out, 'slice-scrolled.png'));
    result.canvas = await page.evaluate(() => {
      const c = document.querySelector('canvas.cornerstone-canvas');
      const r = c.getBoundingClientRect();
      return { width: c.width, height: c.height, cssWidth: r.width, cssHeight: r.height };
    });
    result.steps.push('image');
    // 20.6: a window preset (OHIF's hotkey 2: lung) changes the VOI of the same slice.
    result.beforePreset = await page.evaluate(viewportState);
    await page.keyboard.press('2');
    await page.waitForTimeout(1000);
    result.afterPreset = await page.evaluate(viewportState);
    await saveCanvas(page, path.join(out, 'preset-lung.png'));
    result.steps.push('preset');
    if (extras.us) {  // multi-frame colour US: frames by the wheel, then cine
      await openStudy(page, extras.us);
      result.usFirst = await page.evaluate(viewportState);
      await saveCanvas(page, path.join(out, 'us-first.png'));
      for (let i = 0; i < 5; i += 1) { await page.mouse.wheel(0, 120); await page.waitForTimeout(300); }
      await page.waitForTimeout(800);
      result.usScrolled = await page.evaluate(viewportState);
      await saveCanvas(page, path.join(out, 'us-scrolled.png'));
      result.steps.push('us');
    }
    if (extras.mg) {  // a mammogram: the full matrix, not a reduced resolution
      await openStudy(page, extras.mg);
      result.mg = await page.evaluate(viewportState);
      await saveCanvas(page, path.join(out, 'mg.png'));
      result.steps.push('mg');
    }
    // 5. Cold: a new browser context (empty cache) with the same session opens the
    //    viewer URL directly: OHIF's assets, configuration, QIDO, metadata, frames.
    const cold = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await cold.addCookies(await context.cookies());
    const coldPage = await cold.newPage();
    const coldStart = Date.now();
    await coldPage.goto(`${base}/viewer/viewer?StudyInstanceUIDs=${study}`);
    await coldPage.waitForFunction(drawnInPage, null, { timeout: 60000, polling: 50 });
    result.coldFirstImageMs = Date.now() - coldStart;
    await cold.close();
    if (extras.share) {  // 20.3: a share link opens its study with no login, only it
      const shared = await browser.newContext({ viewport: { width: 1280, height: 900 } });
      const sp = await shared.newPage();
      const statuses = [];
      sp.on('response', r => { if (r.url().includes('/dicom-web/')) statuses.push(r.status()); });
      await sp.goto(extras.share);
      await sp.waitForFunction(drawnInPage, null, { timeout: 60000, polling: 50 });
      result.shareOpened = new URL(sp.url()).pathname + new URL(sp.url()).search;
      result.shareStatuses = [...new Set(statuses)].sort();
      result.shareOther = await sp.evaluate(async (uid) => {
        const r = await fetch(`/dicom-web/studies/${uid}/metadata`);
        const q = await fetch('/dicom-web/studies');
        return { metadata: r.status, studies: (await q.json()).map(s => s['0020000D'].Value[0]) };
      }, extras.other);
      await shared.close();
    }
  } catch (e) {
    result.error = String(e && e.stack || e);
    if (result.page) await result.page.screenshot({ path: path.join(out, 'error.png') }).catch(() => {});
  } finally {
    await browser.close();
  }
  delete result.page;
  console.log(JSON.stringify(result));
})();
