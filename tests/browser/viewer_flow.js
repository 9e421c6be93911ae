// Drives the OHIF viewer served by pacscore in a real Chromium (playwright-core, the
// system's /usr/bin/chromium: no browser download).  Started by tests/test_viewer_browser.py:
//   node viewer_flow.js BASE_URL USER PASSWORD STUDY_UID PATIENT_NAME OUT_DIR [EXTRAS_JSON]
// EXTRAS_JSON: {"share": LINK, "other": STUDY_UID, "us": STUDY_UID, "mg": STUDY_UID,
// "mgSigmoid": STUDY_UID} (issue 20.3 and 20.6 checks).  Prints one JSON line: what it
// saw and how long it took; screenshots go to OUT_DIR.
'use strict';
const path = require('path');
const { VIEWPORT, drawnInPage, loggedIn, openStudy, saveCanvas, skipTour,
        viewportState } = require('./common.js');

const [base, user, password, study, patientName, out, extrasArg] = process.argv.slice(2);
const extras = JSON.parse(extrasArg || '{}');

function canvasSum() {
  // A cheap fingerprint of the first viewport's pixels (changes when the frame does).
  const c = document.querySelector('canvas.cornerstone-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = 0;
  for (let i = 0; i < d.length; i += 4 * 7) s = (s * 31 + d[i]) % 1000000007;
  return s;
}

async function cine(page) {
  // OHIF shows its cine player on a multi-frame US: play, sample the frame shown (and
  // the pixels) every 100 ms for 2 s, pause, and check it stays.
  const play = page.locator('[data-cy="cine-player-play-pause"]');
  await play.waitFor({ timeout: 30000 });
  await play.click();
  const samples = [];
  const started = Date.now();
  for (let i = 0; i < 20; i += 1) {
    samples.push({ ms: Date.now() - started,
                   index: (await page.evaluate(viewportState)).index,
                   pixels: await page.evaluate(canvasSum) });
    await page.waitForTimeout(100);
  }
  const playing = await page.evaluate(() => window.services.cineService.getState().isCineEnabled);
  await play.click();
  await page.waitForTimeout(500);
  const paused = (await page.evaluate(viewportState)).index;
  await page.waitForTimeout(700);
  return { samples, playing, paused, stillPaused: (await page.evaluate(viewportState)).index };
}

const result = { steps: [] };
loggedIn({ base, user, password, out, result }, async ({ browser, context, page }) => {
  // 1. The viewer asks for a login first (result.loginUrl).
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
  await skipTour(page);
  result.drawn = await page.evaluate(drawnInPage);
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
  result.steps.push('image');
  // 20.6: a window preset (OHIF's hotkey 2: lung) changes the VOI of the same slice.
  result.beforePreset = await page.evaluate(viewportState);
  await page.keyboard.press('2');
  await page.waitForTimeout(1000);
  result.afterPreset = await page.evaluate(viewportState);
  await saveCanvas(page, path.join(out, 'preset-lung.png'));
  result.steps.push('preset');
  if (extras.us) {  // multi-frame colour US: frames by the wheel, then cine
    await openStudy(page, base, extras.us);
    result.usFirst = await page.evaluate(viewportState);
    await saveCanvas(page, path.join(out, 'us-first.png'));
    for (let i = 0; i < 5; i += 1) { await page.mouse.wheel(0, 120); await page.waitForTimeout(300); }
    await page.waitForTimeout(800);
    result.usScrolled = await page.evaluate(viewportState);
    await saveCanvas(page, path.join(out, 'us-scrolled.png'));
    result.steps.push('us');
    result.cine = await cine(page);
    result.steps.push('cine');
  }
  for (const [key, uid] of [['mg', extras.mg], ['mgSigmoid', extras.mgSigmoid]]) {
    if (!uid) continue;  // mammograms: the full matrix, not a reduced resolution
    await openStudy(page, base, uid);
    result[key] = await page.evaluate(viewportState);
    await saveCanvas(page, path.join(out, `${key}.png`));
    result.steps.push(key);
  }
  // 5. Cold: a new browser context (empty cache) with the same session opens the
  //    viewer URL directly: OHIF's assets, configuration, QIDO, metadata, frames.
  const cold = await browser.newContext({ viewport: VIEWPORT });
  await cold.addCookies(await context.cookies());
  const coldPage = await cold.newPage();
  const coldStart = Date.now();
  await coldPage.goto(`${base}/viewer/viewer?StudyInstanceUIDs=${study}`);
  await coldPage.waitForFunction(drawnInPage, null, { timeout: 60000, polling: 50 });
  result.coldFirstImageMs = Date.now() - coldStart;
  await cold.close();
  if (extras.share) {  // 20.3: a share link opens its study with no login, only it
    const shared = await browser.newContext({ viewport: VIEWPORT });
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
});
