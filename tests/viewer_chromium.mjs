// Headless Chromium for the viewer's browser drivers (viewer_browser.mjs, viewer_probe.mjs): Debian's
// /usr/bin/chromium (or the path given) through npm playwright-core, WebGL on SwiftShader (no GPU), a fresh
// profile that close() removes. webgl: false turns WebGL off (a browser without it).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export async function openChromium({ executablePath = '/usr/bin/chromium', viewport, webgl = true }) {
  const profile = mkdtempSync(join(tmpdir(), 'facerecon-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-gl=angle', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
      ...(webgl ? [] : ['--disable-webgl', '--disable-3d-apis']),
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { page, close };
}
