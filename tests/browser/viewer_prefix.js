// The viewer behind a reverse proxy at a path, in a real Chromium (see common.js).
// Started by tests/test_viewer_browser.py:
//   node viewer_prefix.js SERVER_PORT USER PASSWORD STUDY_UID OUT_DIR
// Listens on a free loopback port as the proxy: /pacs/... is forwarded to the server
// without /pacs (as nginx's `location /pacs/ { proxy_pass http://server/; }`), anything
// else is answered 404 and counted as a miss.  Then logs in at /pacs/viewer/ and opens
// the study.  Prints one JSON line (the first line on stdout is the proxy's port).
'use strict';
const http = require('http');
const { drawnInPage, loggedIn, openStudy, viewportState } = require('./common.js');

const [serverPort, user, password, study, out] = process.argv.slice(2);
const result = { steps: [], misses: [] };

const proxy = http.createServer((req, res) => {
  if (!req.url.startsWith('/pacs/')) {
    result.misses.push(req.url);
    res.writeHead(404);
    res.end('not under /pacs');
    return;
  }
  const forward = http.request({ host: '127.0.0.1', port: Number(serverPort),
                                 path: req.url.slice('/pacs'.length), method: req.method,
                                 headers: req.headers }, answer => {
    res.writeHead(answer.statusCode, answer.headers);
    answer.pipe(res);
  });
  forward.on('error', e => { res.writeHead(502); res.end(String(e)); });
  req.pipe(forward);
});

proxy.listen(0, '127.0.0.1', async () => {
  const base = `http://127.0.0.1:${proxy.address().port}/pacs`;
  await loggedIn({ base, user, password, out, result }, async ({ page }) => {
    result.afterLogin = new URL(page.url()).pathname;
    await openStudy(page, base, study);
    result.drawn = await page.evaluate(drawnInPage);
    result.state = await page.evaluate(viewportState);
    result.steps.push('drawn');
  });
  proxy.close();
});
