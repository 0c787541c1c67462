// Drives the viewer page in headless Chromium (Debian's /usr/bin/chromium through npm playwright-core)
// for tests/test_viewer.py, and prints a JSON report on stdout.
//
//   node tests/viewer_browser.mjs URL SCREENSHOT_DIR [CHROMIUM]
//
// Loads URL (http:// or file://), waits until the page says it is ready (body[data-status]), and saves
// the 3D view's pixels: mesh.png (the last stage, as opened), empty.png (the same page with the mesh
// hidden), first-stage.png (after clicking the first stage's button), first-stage-again.png (clicking it
// again), no-texture.png (texture off), no-texture-last-stage.png (and the last stage), last-input.png (the last input of the list), last-input-no-normal-map.png (its normal map off, where it
// has one); and page.png, a
// screenshot of the whole page as opened. The report lists the console errors, page errors and failed requests, the
// stages offered and what the page's state said after each step. WebGL runs on SwiftShader (no GPU).

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openChromium } from './viewer_chromium.mjs';

const [url, shots, executablePath] = process.argv.slice(2);
const report = { console_errors: [], page_errors: [], failed_requests: [], steps: {} };

const { page, close } = await openChromium({ executablePath, viewport: { width: 1200, height: 700 } });
try {
  page.on('console', (m) => {
    if (m.type() === 'error') report.console_errors.push(m.text());
  });
  page.on('pageerror', (e) => report.page_errors.push(String(e)));
  // A request counts as failed when its URL never loaded: Chromium may report a fetch as aborted that the
  // page did receive (its loaded requests are listed too).
  const failed = [];
  const loaded = new Set();
  page.on('requestfailed', (r) => failed.push([r.url(), r.failure()?.errorText]));
  page.on('requestfinished', (r) => loaded.add(r.url()));
  report.loaded = loaded;
  report.failed = failed;

  const ready = () => page.waitForSelector('body[data-status="ready"], body[data-status="error"]', { timeout: 120000 });
  const step = async (name) => {
    await ready();
    // two animation frames: the last render is on screen
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    report.steps[name] = await page.evaluate(() => ({
      status: document.body.dataset.status,
      stage: window.facereconViewer?.state.stage,
      info: document.getElementById('info').textContent,
      message: document.getElementById('message').hidden ? null : document.getElementById('message').textContent,
      normal_map_available: !document.getElementById('normal-map').disabled,
      webgl_renderer: (() => {
        const gl = document.createElement('canvas').getContext('webgl2');
        const ext = gl && gl.getExtension('WEBGL_debug_renderer_info');
        return ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL) : null;
      })(),
    }));
    // The WebGL canvas alone (no overlaid text): rendered and read back in one task, so the drawing
    // buffer is still there.
    const png = await page.evaluate(() => {
      window.facereconViewer.render();
      return document.getElementById('view').toDataURL('image/png');
    });
    writeFileSync(join(shots, `${name}.png`), Buffer.from(png.split(',')[1], 'base64'));
  };

  await page.goto(url, { waitUntil: 'load', timeout: 120000 });
  await step('mesh');
  report.stages = await page.$$eval('#stages button', (bs) => bs.map((b) => b.dataset.stage));
  report.inputs = await page.$$eval('#inputs li', (ls) => ls.map((l) => l.textContent));
  report.photo_landmarks = await page.$$eval('#photo-landmarks circle', (cs) => cs.length);
  report.photo_loaded = await page.$eval('#photo', (img) => img.complete && img.naturalWidth > 0);
  await page.screenshot({ path: join(shots, 'page.png') });

  await page.evaluate(() => window.facereconViewer.setMeshVisible(false));
  await step('empty');
  await page.evaluate(() => window.facereconViewer.setMeshVisible(true));

  await page.locator('#stages button').first().click();
  await step('first-stage');

  await page.locator('#stages button').first().click();
  await step('first-stage-again');

  await page.locator('#texture').uncheck();
  await step('no-texture');
  await page.locator('#stages button').last().click();
  await step('no-texture-last-stage');
  await page.locator('#texture').check();

  await page.locator('#inputs li').last().click();
  await step('last-input');
  if (await page.locator('#normal-map').isEnabled()) {
    await page.locator('#normal-map').uncheck();
    await step('last-input-no-normal-map');
  }
} catch (error) {
  report.driver_error = String(error.stack || error);
} finally {
  await close();
}
report.failed_requests = report.failed.filter(([u]) => !report.loaded.has(u)).map(([u, e]) => `${u.slice(0, 200)}: ${e}`);
report.aborted_but_loaded = report.failed.filter(([u]) => report.loaded.has(u)).map(([u]) => u.slice(0, 200));
delete report.failed;
delete report.loaded;
console.log(JSON.stringify(report));
