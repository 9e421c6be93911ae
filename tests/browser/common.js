// What the browser scripts of tests/test_viewer_browser.py share: launching Debian's
// /usr/bin/chromium through npm playwright-core (no browser download), logging in,
// opening a study, reading what cornerstone shows and saving a viewport's own pixels.
'use strict';
const fs = require('fs');
const { chromium } = require(process.env.PACSCORE_PLAYWRIGHT || 'playwright-core');

const executablePath = process.env.PACSCORE_CHROMIUM || '/usr/bin/chromium';
const VIEWPORT = { width: 1280, height: 900 };

async function launch() {
  return chromium.launch({
    executablePath, headless: true,
    args: ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
           '--ignore-gpu-blocklist'],
  });
}

function watch(page, result) {
  // Every answer >= 400 and every console error of the page go into result.
  result.failedRequests = result.failedRequests || [];
  result.consoleErrors = result.consoleErrors || [];
  page.on('response', r => { if (r.status() >= 400) result.failedRequests.push(`${r.status()} ${r.url()}`); });
  page.on('console', m => { if (m.type() === 'error') result.consoleErrors.push(m.text().slice(0, 1200)); });
  page.on('pageerror', e => result.consoleErrors.push(String(e).slice(0, 300)));
}

async function login(page, base, user, password) {
  await page.goto(`${base}/viewer/`);
  const asked = new URL(page.url()).pathname;
  await page.fill('input[name=username]', user);
  await page.fill('input[name=password]', password);
  const viewer = new URL(`${base}/viewer/`).pathname;  // under a proxy's path too
  await Promise.all([page.waitForURL(u => new URL(u).pathname.startsWith(viewer)),
                     page.click('button[type=submit]')]);
  return asked;
}

function drawnInPage() {
  // The viewport's 2D canvas holds a picture (not one flat colour) once an image is drawn.
  const c = document.querySelector('canvas.cornerstone-canvas');
  if (!c || !c.width || !c.height) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let min = 255, max = 0;
  for (let i = 0; i < d.length; i += 4 * 97) { min = Math.min(min, d[i]); max = Math.max(max, d[i]); }
  return max - min > 40;
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
  return { voi: props.voiRange || null, voiFunction: props.VOILUTFunction || null,
           index: vp.getCurrentImageIdIndex ? vp.getCurrentImageIdIndex() : null,
           count: vp.getImageIds ? vp.getImageIds().length : null,
           dimensions: data && data.dimensions ? Array.from(data.dimensions) : null };
}

async function skipTour(page) {
  const skip = page.getByText('Skip all');  // OHIF's first-visit tour, if shown
  if (await skip.count()) await skip.first().click().catch(() => {});
}

async function openStudy(page, base, uid) {
  await page.goto(`${base}/viewer/viewer?StudyInstanceUIDs=${uid}`);
  await page.waitForSelector('canvas.cornerstone-canvas', { timeout: 60000 });
  await page.waitForFunction(drawnInPage, null, { timeout: 60000, polling: 50 });
  await page.waitForTimeout(1500);
  await skipTour(page);
  const box = await (await page.$('canvas.cornerstone-canvas')).boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  return box;
}

async function saveCanvas(page, file) {
  // The viewport's own pixels (toDataURL): no HTML overlays, tours or annotations.
  const url = await page.evaluate(
    () => document.querySelector('canvas.cornerstone-canvas').toDataURL('image/png'));
  fs.writeFileSync(file, Buffer.from(url.split(',')[1], 'base64'));
}

function finish(result) {
  // The script's one line of output.
  delete result.page;
  console.log(JSON.stringify(result));
}

async function loggedIn({ base, user, password, out, result }, steps) {
  // What every script does around its own steps: launch Chromium, a new context and
  // page watched into result, log in (result.loginUrl: where the login page was asked
  // at), then steps({ browser, context, page }).  A failure goes into result.error with
  // a screenshot OUT_DIR/error.png of result.page (the page steps last named); the
  // browser is closed and the one line printed in any case.
  const browser = await launch();
  try {
    const context = await browser.newContext({ viewport: VIEWPORT });
    const page = await context.newPage();
    watch(page, result);
    result.page = page;
    result.loginUrl = await login(page, base, user, password);
    await steps({ browser, context, page });
  } catch (e) {
    result.error = String(e && e.stack || e);
    if (result.page) await result.page.screenshot({ path: `${out}/error.png` }).catch(() => {});
  } finally {
    await browser.close();
  }
  finish(result);
}

module.exports = { VIEWPORT, drawnInPage, finish, launch, loggedIn, login, openStudy,
                   saveCanvas, skipTour, viewportState, watch };
