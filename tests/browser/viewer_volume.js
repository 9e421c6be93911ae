// Issue 20.6 on a CT volume, in a real Chromium (see common.js).  Started by
// tests/test_viewer_browser.py:
//   node viewer_volume.js BASE_URL USER PASSWORD STUDY_UID OUT_DIR
// 1. A length measurement drawn on the first slice, tracked, and saved by OHIF's
//    "Create SR" (STOW-RS of a DICOM SR); QIDO then lists the SR series.
// 2. The study opened again in a new page: the SR's thumbnail, its viewport shows the
//    measurement, and OHIF takes it back into its measurement list.
// 3. OHIF's MPR layout: three orthographic viewports (axial, sagittal, coronal), each
//    canvas saved with its camera for comparing with a reformat of the volume.
// Prints one JSON line; screenshots go to OUT_DIR.
'use strict';
const fs = require('fs');
const path = require('path');
const { loggedIn, openStudy, watch } = require('./common.js');

const [base, user, password, study, out] = process.argv.slice(2);
const REPORT = 'pacscore browser test';

function lengths() {
  // OHIF's measurements: tool, the length cornerstone computed (mm), the text shown.
  return window.services.measurementService.getMeasurements().map(m => ({
    tool: m.toolName, text: (m.displayText && m.displayText.primary) || [],
    series: m.referenceSeriesUID,
    mm: Object.values(m.data || {}).map(d => d.length).find(v => typeof v === 'number'),
  }));
}

function cameras() {
  return window.cornerstone.getEnabledElements().map(e => {
    const vp = e.viewport;
    const cam = vp.getCamera();
    return { id: vp.id, type: vp.type, voi: vp.getProperties().voiRange,
             normal: cam.viewPlaneNormal, up: cam.viewUp, focalPoint: cam.focalPoint,
             width: vp.canvas.width, height: vp.canvas.height };
  });
}

async function drawAndSave(page, result) {
  const box = await openStudy(page, base, study);
  await page.locator('[data-cy="Length"]').first().click();
  const x = box.x + box.width / 2, y = box.y + box.height / 2;
  await page.mouse.move(x - 80, y);
  await page.mouse.down();
  await page.mouse.move(x, y, { steps: 5 });
  await page.mouse.move(x + 80, y, { steps: 5 });
  await page.mouse.up();
  await page.getByRole('button', { name: 'Yes', exact: true }).click();  // track it
  await page.locator('[data-cy="trackedMeasurements-btn"]').click();
  await page.waitForTimeout(500);
  result.drawn = await page.evaluate(lengths);
  await page.getByRole('button', { name: 'Create SR', exact: true }).click();
  await page.fill('input[placeholder="Report name"]', REPORT);
  const stored = page.waitForResponse(r => r.request().method() === 'POST' &&
                                          r.url().endsWith('/dicom-web/studies'));
  await page.getByRole('button', { name: 'Save', exact: true }).click();
  const stow = await stored;
  result.stow = { status: stow.status(), contentType: stow.request().headers()['content-type'] };
  result.steps.push('sr stored');
  result.qido = await page.evaluate(async uid => {
    const r = await fetch(`/dicom-web/studies/${uid}/series?Modality=SR`);
    const series = r.status === 200 ? await r.json() : [];
    return { status: r.status, series: series.map(s => ({
      uid: s['0020000E'].Value[0], description: (s['0008103E'] || {}).Value,
      instances: (s['00201209'] || {}).Value })) };
  }, study);
}

async function reopen(context, result) {
  const page = await context.newPage();
  watch(page, result);
  await openStudy(page, base, study);
  const sr = page.getByText(REPORT).first();
  await sr.waitFor({ timeout: 30000 });
  await sr.dblclick();  // the SR into the viewport
  const prompt = page.getByRole('button', { name: 'Yes', exact: true });
  await prompt.waitFor({ timeout: 30000 });
  await page.waitForTimeout(1500);
  result.reopened = await page.evaluate(() => ({
    viewport: Array.from(window.services.viewportGridService.getState().viewports.values())
      .map(v => (v.displaySetInstanceUIDs || []).map(
        u => (window.services.displaySetService.getDisplaySetByUID(u) || {}).Modality)).flat(),
    // the measurement drawn over the image (SVG annotation layer) by the SR viewport
    shown: Array.from(document.querySelectorAll('[data-cy="viewport-pane"] svg text'))
      .map(t => t.textContent.trim()).filter(Boolean),
  }));
  await page.screenshot({ path: path.join(out, 'sr-reopened.png') });
  await prompt.click();  // "continue tracking": OHIF takes the SR's measurements back
  await page.waitForTimeout(2000);
  result.restored = await page.evaluate(lengths);
  result.steps.push('sr reopened');
  return page;
}

async function mpr(page, result) {
  await page.locator('[data-cy="Layout"]').click();
  await page.getByText('MPR', { exact: true }).first().click();
  await page.waitForFunction(() => {
    const els = window.cornerstone.getEnabledElements();
    return els.length === 3 && els.every(e => e.viewport.type === 'orthographic');
  }, null, { timeout: 60000, polling: 100 });
  // every voxel loaded, then the views settle
  await page.waitForFunction(() => {
    const vp = window.cornerstone.getEnabledElements()[0].viewport;
    const vol = vp.getImageData && vp.getImageData();
    const id = vp.getVolumeId && vp.getVolumeId();
    const v = id && window.cornerstone.cache.getVolume(id);
    return vol && v && v.loadStatus && v.loadStatus.loaded;
  }, null, { timeout: 60000, polling: 200 });
  await page.waitForTimeout(2000);
  result.mpr = await page.evaluate(cameras);
  for (const { id } of result.mpr) {
    const url = await page.evaluate(vid => window.cornerstone.getEnabledElements()
      .find(e => e.viewport.id === vid).viewport.canvas.toDataURL('image/png'), id);
    fs.writeFileSync(path.join(out, `${id}.png`), Buffer.from(url.split(',')[1], 'base64'));
  }
  await page.screenshot({ path: path.join(out, 'mpr.png') });
  result.steps.push('mpr');
}

const result = { steps: [] };
loggedIn({ base, user, password, out, result }, async ({ context, page }) => {
  await drawAndSave(page, result);
  await page.close();
  result.page = await reopen(context, result);
  await mpr(result.page, result);
});
