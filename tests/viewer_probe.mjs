// Drives the viewer page in headless Chromium through a few clicks, for the edge cases of tests/test_viewer.py
// (a stage whose mesh does not load, a browser without WebGL), and prints a JSON report on stdout.
//
//   node tests/viewer_probe.mjs URL [--no-webgl] [stage:NAME | input:INDEX]...
//
// After the page opens and after each click it waits for body[data-status] to be ready or error, and
// records the status, the stage chosen, the info line, the message shown (null when hidden), the entries
// and stages listed, whether the normal-map and landmarks toggles are enabled, the photo's status (shown or
// missing, once it is no longer loading) and the note shown instead of it, and how many pixels of the 3D view
// differ from its background (0: nothing drawn). The report also lists the console errors and page errors. WebGL runs on SwiftShader; --no-webgl turns it off.

import { openChromium } from './viewer_chromium.mjs';

const [url, ...rest] = process.argv.slice(2);
const noWebgl = rest.includes('--no-webgl');
const actions = rest.filter((a) => a !== '--no-webgl');
const report = { console_errors: [], page_errors: [], steps: [] };

const { page, close } = await openChromium({ viewport: { width: 1000, height: 600 }, webgl: !noWebgl });
try {
  page.on('console', (m) => {
    if (m.type() === 'error') report.console_errors.push(m.text());
  });
  page.on('pageerror', (e) => report.page_errors.push(String(e)));
  const step = async (action) => {
    await page.waitForSelector('body[data-status="ready"], body[data-status="error"]', { timeout: 60000 });
    await page.waitForSelector('#photo-box:not([data-status="loading"])', { state: 'attached', timeout: 60000 });
    report.steps.push({
      action,
      ...(await page.evaluate(() => {
        const message = document.getElementById('message');
        let drawn = null;
        if (window.facereconViewer) { // the 3D view's pixels that are not the background colour
          window.facereconViewer.render();
          const view = document.getElementById('view');
          const flat = Object.assign(document.createElement('canvas'), { width: view.width, height: view.height });
          const context2d = flat.getContext('2d');
          context2d.drawImage(view, 0, 0);
          const pixels = context2d.getImageData(0, 0, flat.width, flat.height).data;
          drawn = 0;
          for (let i = 0; i < pixels.length; i += 4) {
            if (Math.abs(pixels[i] - pixels[0]) + Math.abs(pixels[i + 1] - pixels[1]) + Math.abs(pixels[i + 2] - pixels[2]) > 24) drawn++;
          }
        }
        return {
          status: document.body.dataset.status,
          stage: window.facereconViewer?.state.stage ?? null,
          info: document.getElementById('info').textContent,
          message: message.hidden ? null : message.textContent,
          inputs: [...document.querySelectorAll('#inputs li')].map((li) => li.textContent),
          stages: [...document.querySelectorAll('#stages button')].map((b) => b.dataset.stage),
          normal_map_available: !document.getElementById('normal-map').disabled,
          landmarks_available: !document.getElementById('landmarks').disabled,
          photo: document.getElementById('photo-box').dataset.status ?? null,
          photo_note: document.getElementById('photo-note').hidden ? null : document.getElementById('photo-note').textContent,
          drawn,
        };
      })),
    });
  };
  await page.goto(url, { waitUntil: 'load', timeout: 120000 });
  await step('open');
  for (const action of actions) {
    const [kind, value] = action.split(':');
    if (kind === 'stage') await page.locator(`#stages button[data-stage="${value}"]`).click();
    else if (kind === 'input') await page.locator('#inputs li').nth(Number(value)).click();
    else throw new Error(`unknown action ${action}`);
    // the click starts a load: wait for the page to leave the previous state's status
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await step(action);
  }
} catch (error) {
  report.driver_error = String(error.stack || error);
} finally {
  await close();
}
console.log(JSON.stringify(report));
