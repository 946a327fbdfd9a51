// What the portal's browser scripts share: the step's arguments (JSON, the first argument),
// headless Debian Chromium through npm `playwright-core` (loaded from
// $TETHER_PLAYWRIGHT_DIR/node_modules; scripts/install-test-deps.sh installs both), a page,
// screenshots into `args.screens`, and the way a step fails ("FAILED: …", exit 1) or runs.

import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

export const fail = (message) => {
  console.error(`FAILED: ${message}`);
  process.exit(1);
};

export let args;
try {
  args = JSON.parse(process.argv[2] ?? '');
} catch (e) {
  fail(`the first argument must be the step as JSON (${e.message})`);
}

/** Starts the browser; `extraArgs` go to Chromium; `storageState` (a file) restores cookies. */
export async function start({ extraArgs = [], storageState } = {}) {
  const dir = process.env.TETHER_PLAYWRIGHT_DIR;
  if (!dir) fail('TETHER_PLAYWRIGHT_DIR is not set (scripts/install-test-deps.sh installs playwright-core)');
  let chromium;
  try {
    ({ chromium } = createRequire(join(dir, 'package.json'))('playwright-core'));
  } catch (e) {
    fail(`playwright-core is not installed in ${dir}: run scripts/install-test-deps.sh (${e.message})`);
  }
  mkdirSync(args.screens, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.TETHER_CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      ...extraArgs,
    ],
  });
  // The gateways' certificates are signed by their own CAs, which this throwaway browser does not trust.
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1000, height: 800 },
    ...(storageState ? { storageState } : {}),
  });
  context.setDefaultTimeout(15000);
  const page = await context.newPage();

  let shot = 0;
  const screenshot = async (name) => {
    shot += 1;
    await page.screenshot({ path: join(args.screens, `${args.step}-${shot}-${name}.png`), fullPage: true });
  };
  /** Fails unless the page's visible text holds `text`. */
  const expectText = async (text, what) => {
    const body = await page.innerText('body');
    if (!body.includes(text)) fail(`${what}: "${text}" is not on ${page.url()}:\n${body.slice(0, 1500)}`);
  };
  /** Fails if the page's visible text holds `text`. */
  const expectNoText = async (text, what) => {
    const body = await page.innerText('body');
    if (body.includes(text)) fail(`${what}: "${text}" is on ${page.url()}:\n${body.slice(0, 1500)}`);
  };
  return { browser, context, page, screenshot, expectText, expectNoText };
}

/** Runs the step named `args.step` from `steps`, then closes the browser. */
export async function run(session, steps) {
  try {
    const step = steps[args.step];
    if (!step) fail(`unknown step ${JSON.stringify(args.step)}`);
    await step();
  } catch (e) {
    await session.screenshot('failure').catch(() => {});
    fail(`${args.step}: ${e.message}`);
  } finally {
    await session.browser.close();
  }
}
